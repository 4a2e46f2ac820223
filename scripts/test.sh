#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests on scratch
# loop-backed disks and in QEMU guests (never this machine's own disks).
# Needs root. Tests that need root are #[ignore]d with the reason, so a
# plain `cargo test` as any user runs the rest; this runs them all.
# LIVERESTORE_SLOW_TESTS=1 also runs the 15-minute real 4 GiB vfat staging.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
# The guests' liverestore (with simulated power loss), built first with
# the tests' profile and flags (.cargo/config.toml: static), so the tests'
# build reuses every dependency it compiled.
cargo build --locked --quiet --features failpoints --bin liverestore
mkdir -p target/guest
# stripped: the guests copy it into initramfs and image files
strip -o target/guest/liverestore target/x86_64-unknown-linux-gnu/debug/liverestore
export LIVERESTORE_GUEST_BIN="$PWD/target/guest/liverestore"
skip=(--skip vfat_4gib_image_splits_for_real)
[ "${LIVERESTORE_SLOW_TESTS:-}" = 1 ] && skip=()
cargo test --all-targets --locked -- --include-ignored --test-threads=2 "${skip[@]}"
