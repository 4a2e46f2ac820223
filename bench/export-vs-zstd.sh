#!/usr/bin/env bash
# Benchmark: `liverestore export` (read through the map, chunk hashes
# checked, zstd on every core) against what a user would run instead,
# `dd iflag=direct` of the same bytes from a raw partition of the same
# scratch loop disk piped into `zstd -T0 -3`, and against fio's best
# sequential read of that device in the same run. Never a real disk;
# needs root.
#
# Image (MIB, default 1024): an ext4 filesystem a quarter full of random
# files (the rest zeros), as a system image is.
# Usage: sudo bash bench/export-vs-zstd.sh [MIB] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
rounds=${2:-3}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/scratch-disk.sh

two_partition_disk $((size_mib * 3 / 2 + 64)) $((size_mib + 16))

mkdir "$work/tree" "$work/out"
for i in $(seq 1 $((size_mib / 4 / 16))); do head -c 16M /dev/urandom > "$work/tree/f$i"; done
mkfs.ext4 -q -F -E nodiscard -d "$work/tree" "$work/ext4.img" "${size_mib}M"
rm -rf "$work/tree"
"$lr" stage "$work/ext4.img" --name bench --dir "$work/host" >/dev/null
dd if="$work/ext4.img" of="$peer_dev" bs=4M oflag=direct conv=fsync status=none
rm "$work/ext4.img"
count=$((size_mib / 4))

read_bw() { # iodepth -> bytes/s
  fio --name=limit --filename="$peer_dev" --rw=read --bs=4M --direct=1 --ioengine=libaio \
      --iodepth="$1" --size="${size_mib}M" --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["read"]["bw_bytes"]))'
}
fio_read=0
for qd in 1 32; do
  r=$(read_bw "$qd"); [ "$r" -gt "$fio_read" ] && fio_read=$r
done
now() { date +%s.%N; }
bytes=$((size_mib << 20))
printf '%-5s %8s %9s %7s %10s %11s %9s %10s\n' round peer_s export_s ratio peer_MiB export_MiB peak_rss export/fio
for r in $(seq 1 "$rounds"); do
  sync; echo 3 > /proc/sys/vm/drop_caches
  t0=$(now)
  dd if="$peer_dev" bs=4M count="$count" iflag=direct status=none | zstd -q -T0 -3 -c > "$work/out/peer.zst"
  t_peer=$(echo "$(now) - $t0" | bc -l)
  sync; echo 3 > /proc/sys/vm/drop_caches
  t0=$(now)
  /usr/bin/time -f %M -o "$work/rss" "$lr" export bench --output "$work/out/bench.img.zst" >/dev/null
  t_lr=$(echo "$(now) - $t0" | bc -l)
  printf '%-5s %8.2f %9.2f %7.3f %10s %11s %6s MiB %10.2f\n' "$r" "$t_peer" "$t_lr" "$(echo "$t_lr / $t_peer" | bc -l)" \
    "$(( $(stat -c %s "$work/out/peer.zst") >> 20 ))" "$(( $(stat -c %s "$work/out/bench.img.zst") >> 20 ))" \
    "$(( $(cat "$work/rss") >> 10 ))" "$(echo "$bytes / $t_lr / $fio_read" | bc -l)"
  echo "$t_peer $t_lr" >> "$work/times"
  rm -f "$work/out/"*
done
awk '{p+=$1; s+=$2} END{printf "ratio of totals (export / dd|zstd -T0): %.3f\n", s/p}' "$work/times"
printf 'fio best sequential read on this device: %.0f MiB/s; export/fio = image bytes per second / that\n' \
  "$(echo "$fio_read / 1048576" | bc -l)"
"$lr" discard bench >/dev/null
