#!/usr/bin/env bash
# Benchmark: `liverestore stage` against the tool a user would pick instead,
# writing the same image to the same direct-I/O loop-backed disk in the same
# run. Prints times, ratios (stage / peer; lower is better), bytes written
# to the device (from /sys/block/<dev>/stat) minus what stage zeroed with
# BLKZEROOUT (which the kernel counts as writes too), and peak RSS.
#
# Cases (MIB = image size, default 1024):
#   raw     MIB of random data          vs dd if=IMG of=DEV bs=4M oflag=direct
#   zstd    the same, zstd-compressed   vs zstd -dc IMG | dd … oflag=direct
#   ext4    ext4 image, 25 % used       vs dd of the full image
#   bmap    that ext4 image + its bmap  vs bmaptool copy
#   qcow2   that ext4 image as qcow2    vs qemu-img convert -n -t none
# Also fio's sequential write and read (4 MiB, queue depth 1 and 32) on the
# same device, and stage and verify as a fraction of fio's best.
# Usage: sudo [CASES="raw zstd"] bench/stage-vs-peers.sh [MIB] [ROUNDS]
# (CASES picks cases; default all.)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
rounds=${2:-3}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/scratch-disk.sh

two_partition_disk $((size_mib * 3 / 2 + 64)) $((size_mib + 16))
dev=$(basename "$loopdev")

echo "building images (${size_mib} MiB each) on $(df --output=source "$work" | tail -1)…"
head -c $((size_mib << 20)) /dev/urandom > "$work/random.img"
zstd -q -T0 -3 "$work/random.img" -o "$work/random.img.zst"
mkdir "$work/tree"
for i in $(seq 1 $((size_mib / 4 / 16))); do head -c 16M /dev/urandom > "$work/tree/f$i"; done
mkfs.ext4 -q -F -E nodiscard -d "$work/tree" "$work/ext4.img" "${size_mib}M"
rm -rf "$work/tree"
bmaptool -q create -o "$work/ext4.img.bmap" "$work/ext4.img"
cp --sparse=always "$work/ext4.img" "$work/bmapped.img" && mv "$work/ext4.img.bmap" "$work/bmapped.img.bmap"
qemu-img convert -q -O qcow2 "$work/ext4.img" "$work/ext4.qcow2"
used=$(du -m "$work/ext4.img" | cut -f1)
echo "ext4 image: ${used} MiB allocated of ${size_mib} MiB"
cat "$work"/*.img "$work"/*.zst "$work"/*.qcow2 > /dev/null   # page cache for everyone

sectors_written() { awk '{print $7}' "/sys/block/$dev/stat"; }
now() { date +%s.%N; }
peer() { # peer CASE: the peer's command for CASE
  case $1 in
    raw) dd if="$work/random.img" of="$peer_dev" bs=4M oflag=direct conv=fsync status=none ;;
    zstd) zstd -q -dc "$work/random.img.zst" | dd of="$peer_dev" bs=4M iflag=fullblock oflag=direct conv=fsync status=none ;;
    ext4) dd if="$work/ext4.img" of="$peer_dev" bs=4M oflag=direct conv=fsync status=none ;;
    bmap) bmaptool -q copy "$work/bmapped.img" "$peer_dev" ;;
    qcow2) qemu-img convert -q -n -t none -O raw "$work/ext4.qcow2" "$peer_dev" ;;
  esac
}
image_of() {
  case $1 in raw) echo random.img ;; zstd) echo random.img.zst ;; ext4) echo ext4.img ;;
             bmap) echo bmapped.img ;; qcow2) echo ext4.qcow2 ;; esac
}

# The device's own limit, measured by fio on the peers' partition in the
# same run: sequential direct I/O with 4 MiB blocks, one request in flight
# and 32 (libaio); the best of each direction is what stage (writes) and
# verify (reads) are held against below.
fio_bw() { # rw iodepth -> bytes/s
  fio --name=limit --filename="$peer_dev" --rw="$1" --bs=4M --direct=1 --ioengine=libaio \
      --iodepth="$2" --size="${size_mib}M" --time_based=0 --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; print(int(j["write" if sys.argv[1].endswith("write") else "read"]["bw_bytes"]))' "$1"
}
fio_write=0; fio_read=0
for qd in 1 32; do
  w=$(fio_bw write "$qd"); r=$(fio_bw read "$qd")
  printf 'fio  qd %-2s  write %7.1f MiB/s  read %7.1f MiB/s\n' "$qd" "$(echo "$w / 1048576" | bc -l)" "$(echo "$r / 1048576" | bc -l)"
  [ "$w" -gt "$fio_write" ] && fio_write=$w
  [ "$r" -gt "$fio_read" ] && fio_read=$r
done

printf '%-6s %-5s %8s %8s %7s %10s %10s %9s %9s %9s\n' case round peer_s stage_s ratio written zeroed peak_rss stage/fio verify/fio
for c in ${CASES:-raw zstd ext4 bmap qcow2}; do
  for r in $(seq 1 "$rounds"); do
    sync
    t0=$(now); peer "$c"; t_peer=$(echo "$(now) - $t0" | bc -l)
    w0=$(sectors_written)
    t0=$(now)
    /usr/bin/time -f %M -o "$work/rss" "$lr" --json stage "$work/$(image_of "$c")" --name bench --dir "$work/host" > "$work/out.json"
    t_lr=$(echo "$(now) - $t0" | bc -l)
    w1=$(sectors_written)
    zeroed=$(tail -1 "$work/out.json" | sed -n 's/.*"disk_zeroed":\([0-9]*\).*/\1/p')
    written_mib=$(echo "(($w1 - $w0) * 512 - $zeroed) / 1048576" | bc)
    t0=$(now); "$lr" verify bench >/dev/null; t_verify=$(echo "$(now) - $t0" | bc -l)
    # throughput of the image's bytes, as a fraction of the device's best
    size_bytes=$(stat -c %s "$work/$(image_of "$c")")
    [ "$c" = zstd ] && size_bytes=$((size_mib << 20))
    [ "$c" = qcow2 ] || [ "$c" = bmap ] && size_bytes=$(stat -c %s "$work/ext4.img")
    printf '%-6s %-5s %8.2f %8.2f %7.3f %7s MiB %6s MiB %6s MiB %9.2f %9.2f\n' "$c" "$r" "$t_peer" "$t_lr" \
      "$(echo "$t_lr / $t_peer" | bc -l)" "$written_mib" "$((zeroed >> 20))" "$(( $(cat "$work/rss") >> 10 ))" \
      "$(echo "$size_bytes / $t_lr / $fio_write" | bc -l)" "$(echo "$size_bytes / $t_verify / $fio_read" | bc -l)"
    "$lr" discard bench >/dev/null
    echo "$c $t_peer $t_lr" >> "$work/times"
    echo "$c $t_peer $t_lr $written_mib $((zeroed >> 20)) $(( $(cat "$work/rss") >> 10 )) $(echo "$size_bytes / $t_lr / $fio_write" | bc -l) $(echo "$size_bytes / $t_verify / $fio_read" | bc -l)" >> "$work/rows"
  done
done
echo "ratio   = stage time / peer time (lower is better)"
echo "stage/fio, verify/fio = the image's bytes per second as a fraction of fio's best sequential write / read on this device (higher is better; the sparse cases exceed 1: zeros are not written)"
echo
echo "per case, all rounds together (this VM's timings vary a lot from run to run):"
awk '{p[$1]+=$2; s[$1]+=$3; if(!($1 in seen)){seen[$1]=1; order[++n]=$1}}
     END{for(i=1;i<=n;i++){c=order[i]; printf "%-6s peer %6.2f s  stage %6.2f s  ratio of totals %.3f\n", c, p[c], s[c], s[c]/p[c]}}' "$work/times"
echo "written = bytes the device received from stage minus what it zeroed (header included)"

# The same as a Markdown table (docs/guide.md#speed is this, pasted).
echo
echo "### $(date -u +%Y-%m-%d), $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), ${size_mib} MiB images, ${rounds} rounds"
echo
printf 'fio best: write %.0f MiB/s, read %.0f MiB/s (4 MiB blocks, queue depth 1 or 32, on the same loop device)\n\n' \
  "$(echo "$fio_write / 1048576" | bc -l)" "$(echo "$fio_read / 1048576" | bc -l)"
echo "| case | peer s | stage s | ratio of totals | written MiB | zeroed MiB | peak RSS MiB | stage/fio | verify/fio |"
echo "|---|---|---|---|---|---|---|---|---|"
awk '{c=$1; if(!(c in seen)){seen[c]=1; order[++n]=c}
      p[c]=p[c] (p[c]==""?"":" / ") sprintf("%.2f",$2); s[c]=s[c] (s[c]==""?"":" / ") sprintf("%.2f",$3)
      tp[c]+=$2; ts[c]+=$3; w[c]=$4; z[c]=$5; if($6>r[c]) r[c]=$6
      sf[c]=sf[c] (sf[c]==""?"":" / ") sprintf("%.2f",$7); vf[c]=vf[c] (vf[c]==""?"":" / ") sprintf("%.2f",$8)}
     END{for(i=1;i<=n;i++){c=order[i]; printf "| %s | %s | %s | **%.3f** | %s | %s | %s | %s | %s |\n", c, p[c], s[c], ts[c]/tp[c], w[c], z[c], r[c], sf[c], vf[c]}}' "$work/rows"
