# Sourced by demo.sh and bench/: a scratch work dir and, later, one loop
# device over a file in it. The EXIT trap unmounts exactly "$work/host" and
# detaches exactly "$loopdev" (what these scripts created), then removes the
# work dir. Sets: work, loopdev (empty until attach_scratch_disk), lr.
bash scripts/install-deps.sh
cargo build --release --locked --quiet
lr="$PWD/target/x86_64-unknown-linux-gnu/release/liverestore"
work=$(mktemp -d /tmp/liverestore-scratch.XXXXXX)
loopdev=""
cleanup_scratch() {
  mountpoint -q "$work/host" && umount "$work/host"
  [ -n "$loopdev" ] && { partx -d "$loopdev" 2>/dev/null || true; losetup -d "$loopdev"; }
  rm -rf "$work"
}
trap cleanup_scratch EXIT
export LIVERESTORE_STATE_DIR="$work/state"

# attach_scratch_disk [losetup options…]: attach "$work/disk.img", make the
# kernel's partitions of it match its table, and set loopdev. (`partx -u`,
# not "add if /dev/loopNp1 is missing": without udev a node, or even a
# kernel partition, can be left over from an earlier user of loopN.)
attach_scratch_disk() {
  loopdev=$(losetup -f --show "$@" "$work/disk.img")
  partx -u "$loopdev"
  # A regular file where a partition node belongs (left by a write to a node
  # that did not exist yet) would swallow writes in RAM: refuse it.
  local n
  for n in $(partx -g -o NR "$loopdev"); do
    [ -b "${loopdev}p$n" ] || { echo "${loopdev}p$n is not a block device (a stray file?); remove it and retry" >&2; exit 1; }
  done
}

# two_partition_disk HOST_MIB RAW_MIB: "$work/disk.img" written (not
# sparse: writes into holes of the backing file cost the loop device's
# flush a journal commit, which would penalise whoever writes to fresh
# blocks; a real disk has no holes) with partition 1 of HOST_MIB as ext4
# mounted at "$work/host" and partition 2 of RAW_MIB left raw (the
# peers' device, "$peer_dev"), attached with direct I/O.
two_partition_disk() {
  dd if=/dev/zero of="$work/disk.img" bs=4M count=$(( ($1 + $2 + 4) / 4 + 1 )) status=none
  sgdisk -n 1:2048:+"$1"M -t 1:8300 -n 2:0:+"$2"M -t 2:8300 "$work/disk.img" >/dev/null
  attach_scratch_disk --direct-io=on
  mkfs.ext4 -q -E nodiscard "${loopdev}p1"
  mkdir "$work/host" && mount "${loopdev}p1" "$work/host"
  peer_dev="${loopdev}p2"
}
