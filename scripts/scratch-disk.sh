# Sourced by demo.sh and bench/: a scratch work dir and, later, one loop
# device over a file in it. The EXIT trap unmounts exactly "$work/host" and
# detaches exactly "$loopdev" (what these scripts created), then removes the
# work dir. Sets: work, loopdev (empty until attach_scratch_disk), lr.
bash scripts/install-deps.sh
cargo build --release --locked --quiet
lr="$PWD/target/release/liverestore"
work=$(mktemp -d /tmp/liverestore-scratch.XXXXXX)
loopdev=""
cleanup_scratch() {
  mountpoint -q "$work/host" && umount "$work/host"
  [ -n "$loopdev" ] && { partx -d "$loopdev" 2>/dev/null || true; losetup -d "$loopdev"; }
  rm -rf "$work"
}
trap cleanup_scratch EXIT
export LIVERESTORE_STATE_DIR="$work/state"

# attach_scratch_disk [losetup options…]: attach "$work/disk.img", make sure
# its partition nodes exist, and set loopdev.
attach_scratch_disk() {
  loopdev=$(losetup -f --show "$@" "$work/disk.img")
  [ -e "${loopdev}p1" ] || partx -a "$loopdev"
}
