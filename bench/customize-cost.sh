#!/usr/bin/env bash
# What customize costs next to verify, on a 512 MiB staged ext4 system on a
# scratch loop disk (never a real one; needs root): customize = verify +
# mount, edit, unmount + a full re-hash, so about twice a verify.
# Usage: sudo bash bench/customize-cost.sh   (after cargo build --release)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/scratch-disk.sh
truncate -s 1200M "$work/disk.img"
sgdisk -n 1:2048:0 -t 1:8300 "$work/disk.img" >/dev/null
attach_scratch_disk
mkfs.ext4 -q -F "${loopdev}p1"
mkdir -p "$work/host"; mount "${loopdev}p1" "$work/host"
mkdir -p "$work/tree/etc" "$work/tree/data"
echo old > "$work/tree/etc/hostname"
head -c 300M /dev/urandom > "$work/tree/data/blob"
mkfs.ext4 -q -F -d "$work/tree" "$work/sys.ext4" 512M
export LIVERESTORE_STATE_DIR="$work/state"
$lr stage "$work/sys.ext4" --name m --dir "$work/host" >/dev/null 2>&1
/usr/bin/time -f "verify: %e s, %M KiB max RSS" $lr verify m >/dev/null
/usr/bin/time -f "customize --hostname: %e s, %M KiB max RSS" $lr customize m --hostname measured >/dev/null
/usr/bin/time -f "verify after: %e s" $lr verify m >/dev/null
$lr discard m >/dev/null
