#!/usr/bin/env bash
# What a warm standby costs: `snapshot` of a real Debian 12 system (the
# tree the guest tests boot, scripts/debian-systems.sh) from its own ext4
# partition into a staging on another, then `snapshot --refresh` after 1 %
# of its files changed, then `export` of the standby against
# `zstd -T0 -3` of the same partition's raw bytes. A scratch loop disk
# (never a real one); needs root.
# Usage: sudo bash bench/standby-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
tree=target/distros/initramfs-tools
[ -d "$tree" ] || bash scripts/debian-systems.sh target/distros
source scripts/scratch-disk.sh
dd if=/dev/zero of="$work/disk.img" bs=4M count=$(( (1024 + 2048 + 8) / 4 )) status=none
sgdisk -n 1:2048:+1024M -t 1:8300 -n 2:0:+2048M -t 2:8300 "$work/disk.img" >/dev/null
attach_scratch_disk --direct-io=on
mkfs.ext4 -q -E nodiscard "${loopdev}p1"
mkfs.ext4 -q -E nodiscard "${loopdev}p2"
mkdir -p "$work/src" "$work/host"
mount "${loopdev}p1" "$work/src"
mount "${loopdev}p2" "$work/host"
trap 'umount "$work/src" 2>/dev/null || true; cleanup_scratch' EXIT
cp -a "$tree"/. "$work/src/"
sync
now() { date +%s.%N; }
field() { tail -1 "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)$2)"; }
files=$(find "$work/src" -xdev -type f | wc -l)
echo "source: $(du -sh --apparent-size "$work/src" | cut -f1) in $files files ($(df --output=used -B1M "$work/src" | tail -1 | tr -d ' ') MiB used)"

t0=$(now)
"$lr" --json snapshot --name bench --dir "$work/host" --source-root "$work/src" > "$work/snap.json"
t=$(echo "$(now) - $t0" | bc -l)
printf 'snapshot: %.1f s, %s MiB of file data copied, standby %s MiB\n' "$t" \
  "$(( $(field "$work/snap.json" '["bytes_copied"]') >> 20 ))" "$(( $(field "$work/snap.json" '["size"]') >> 20 ))"

# 1 % of the files changed: every 100th regular file gets a line more
find "$work/src" -xdev -type f | awk 'NR % 100 == 0' | while read -r f; do echo "changed" >> "$f"; done
t0=$(now)
"$lr" --json snapshot --refresh bench > "$work/refresh.json"
t=$(echo "$(now) - $t0" | bc -l)
printf 'refresh after changing %d files: %.1f s, %s KiB of file data copied, %s of %s chunks changed\n' \
  "$(( files / 100 ))" "$t" "$(( $(field "$work/refresh.json" '["bytes_copied"]') >> 10 ))" \
  "$(field "$work/refresh.json" '["chunks_changed"]')" "$(field "$work/refresh.json" '["chunks"]')"

umount "$work/src"
size=$(field "$work/snap.json" '["size"]')
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now)
dd if="${loopdev}p1" bs=4M count=$(( size >> 22 )) iflag=direct status=none | zstd -q -T0 -3 -c > "$work/peer.zst"
tp=$(echo "$(now) - $t0" | bc -l)
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now)
"$lr" export bench --output "$work/bench.img.zst" > /dev/null
te=$(echo "$(now) - $t0" | bc -l)
printf 'export of the %s MiB standby: %.1f s (%s MiB) against dd|zstd -T0 of as many raw bytes: %.1f s (%s MiB): ratio %.2f\n' \
  "$(( size >> 20 ))" "$te" "$(( $(stat -c %s "$work/bench.img.zst") >> 20 ))" "$tp" \
  "$(( $(stat -c %s "$work/peer.zst") >> 20 ))" "$(echo "$te / $tp" | bc -l)"
"$lr" discard bench > /dev/null
