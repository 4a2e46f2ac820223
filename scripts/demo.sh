#!/usr/bin/env bash
# Install what is needed, build liverestore, and show it staging a real
# filesystem image onto a scratch loop-backed disk whose ext4 filesystem
# stays mounted throughout. Touches nothing but what it creates in a temp dir.
#   --boot  then the point of it all, in a QEMU guest (a few minutes): a
#           scratch disk's "old system" stages and activates a small
#           system, the restored system boots, falls back, is activated
#           again and commits, starts by default, rolls back; one line per
#           boot (tests/guest/uefi.rs, under OVMF).
set -euo pipefail
cd "$(dirname "$0")/.."
boot=0
case "${1:-}" in
  --boot) boot=1 ;;
  "") ;;
  *) echo "usage: $0 [--boot]" >&2; exit 2 ;;
esac
source scripts/scratch-disk.sh
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "a scratch 1 GiB disk with a GPT and a mounted ext4 'running system'"
truncate -s 1G "$work/disk.img"
sgdisk -n 1:2048:0 -t 1:8300 "$work/disk.img" >/dev/null
attach_scratch_disk
mkfs.ext4 -q -L host "${loopdev}p1"
mkdir "$work/host" && mount "${loopdev}p1" "$work/host"
echo "precious data" > "$work/host/precious.txt"
lsblk -o NAME,SIZE,FSTYPE,MOUNTPOINT "$loopdev"

say "an image to restore: a 256 MiB ext4 filesystem with some files"
mkdir "$work/content" && seq 1 200000 > "$work/content/numbers.txt" && echo "restored system" > "$work/content/motd"
truncate -s 256M "$work/restore.img"
mkfs.ext4 -q -L restored -d "$work/content" "$work/restore.img"

say "liverestore plan (writes nothing)"
"$lr" plan "$work/restore.img" --dir "$work/host"

say "liverestore stage (the host filesystem stays mounted)"
"$lr" stage "$work/restore.img" --name demo --dir "$work/host"

say "liverestore list / verify / map"
"$lr" list
"$lr" verify demo
"$lr" map demo

say "read the restored filesystem back from the raw disk through the map, and fsck it"
"$lr" map demo --json | python3 -c '
import json, sys
m = json.load(sys.stdin)
with open(m["disk"], "rb") as d, open(sys.argv[1], "wb") as out:
    for e in m["extents"]:
        d.seek(e["disk_offset"]); out.seek(e["image_offset"]); out.write(d.read(e["length"]))
' "$work/readback.img"
cmp "$work/restore.img" "$work/readback.img" && echo "read back == image"
e2fsck -fn "$work/readback.img" | tail -1

say "liverestore test-restore: attach, fsck, mount and look inside, without rebooting (read-only via FUSE on a kernel without device-mapper)"
"$lr" test-restore demo --run 'ls "$LIVERESTORE_ROOT"'

say "liverestore customize: give the restored system a name of its own before its first boot, and keep a file of this one"
mkdir -p "$work/keep" && echo "kept from the running system" > "$work/keep/note.txt"
"$lr" customize demo --hostname demo-restored --preserve "$work/keep"
"$lr" verify demo
"$lr" test-restore demo --run "cat \"\$LIVERESTORE_ROOT/etc/hostname\" \"\$LIVERESTORE_ROOT$work/keep/note.txt\""

say "the host filesystem is untouched"
cat "$work/host/precious.txt"
"$lr" discard demo
umount "$work/host"
e2fsck -fn "${loopdev}p1" | tail -1
echo
echo "demo done: everything it created is being removed"
if [ "$boot" = 1 ]; then
  say "the restored system booted for real: six boots of a scratch disk in a QEMU guest under UEFI firmware (a few minutes under emulation)"
  log="$work/boot.log"
  if cargo test --locked --quiet --test guest -- --include-ignored --exact \
      uefi::uefi_trial_boot_then_back_to_the_old_system --nocapture >"$log" 2>&1; then
    grep '^boot [0-9]:' "$log"
    echo "booted, fell back, committed and rolled back: the guest test's checks passed"
  else
    tail -40 "$log"; echo "the boot demo failed (its log is above)" >&2; exit 1
  fi
fi
