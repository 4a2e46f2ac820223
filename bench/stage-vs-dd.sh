#!/usr/bin/env bash
# Benchmark: `liverestore stage` against `dd oflag=direct` writing the same
# image to the same loop-backed disk in the same run. Prints times, ratios,
# bytes written to the device (from /sys/block/<dev>/stat) and peak RSS.
# Usage: sudo bench/stage-vs-dd.sh [IMAGE_MIB] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
rounds=${2:-3}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/scratch-disk.sh

host_mib=$((size_mib * 3 / 2 + 64))
raw_mib=$((size_mib + 16))
truncate -s $(( (host_mib + raw_mib + 4) ))M "$work/disk.img"
sgdisk -n 1:2048:+${host_mib}M -t 1:8300 -n 2:0:+${raw_mib}M -t 2:8300 "$work/disk.img" >/dev/null
attach_scratch_disk --direct-io=on
mkfs.ext4 -q -E nodiscard "${loopdev}p1"
mkdir "$work/host" && mount "${loopdev}p1" "$work/host"
dev=$(basename "$loopdev")

echo "image: ${size_mib} MiB of random data; disk: $loopdev (direct-io loop over $(df --output=source "$work" | tail -1))"
head -c $((size_mib << 20)) /dev/urandom > "$work/image.raw"
cat "$work/image.raw" > /dev/null   # both tools read it from the page cache

sectors_written() { awk '{print $7}' "/sys/block/$dev/stat"; }
now() { date +%s.%N; }
timeit() { local t0; t0=$(now); "$@"; echo "$(now) - $t0" | bc -l; }
has_time=$([ -x /usr/bin/time ] && echo 1 || echo 0)

printf '%-6s %10s %10s %8s %14s %10s\n' round dd_s stage_s ratio stage_written peak_rss
for r in $(seq 1 "$rounds"); do
  sync
  t_dd=$(timeit dd if="$work/image.raw" of="${loopdev}p2" bs=4M oflag=direct conv=fsync status=none)
  w0=$(sectors_written)
  if [ "$has_time" = 1 ]; then
    t0=$(now)
    /usr/bin/time -f %M -o "$work/rss" "$lr" stage "$work/image.raw" --name bench --dir "$work/host" >/dev/null
    t_lr=$(echo "$(now) - $t0" | bc -l)
    rss="$(cat "$work/rss") KiB"
  else
    t_lr=$(timeit "$lr" stage "$work/image.raw" --name bench --dir "$work/host" >/dev/null)
    rss="-"
  fi
  w1=$(sectors_written)
  written_pct=$(echo "($w1 - $w0) * 512 * 100 / ($size_mib * 1048576)" | bc -l)
  printf '%-6s %10.2f %10.2f %8.3f %13.1f%% %10s\n' "$r" "$t_dd" "$t_lr" "$(echo "$t_lr / $t_dd" | bc -l)" "$written_pct" "$rss"
  "$lr" discard bench >/dev/null
done
echo "ratio = stage time / dd time (lower is better; 1.00 = as fast as dd oflag=direct)"
echo "stage_written = bytes written to the device by stage, as % of the image (header + image)"
