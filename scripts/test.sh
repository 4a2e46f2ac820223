#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests on scratch
# loop-backed disks and in QEMU guests (never this machine's own disks).
# Needs root. Tests that need root are #[ignore]d with the reason, so a
# plain `cargo test` as any user runs the rest; this runs them all.
# LIVERESTORE_SLOW_TESTS=1 also runs the 15-minute real 4 GiB vfat staging.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
skip=(--skip vfat_4gib_image_splits_for_real)
[ "${LIVERESTORE_SLOW_TESTS:-}" = 1 ] && skip=()
cargo test --all-targets --locked -- --include-ignored --test-threads=2 "${skip[@]}"
