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
# Unit tests and the QEMU guests: two at a time (each guest keeps a core
# busy). The host tests: four at a time (the Ansible ones mostly wait on
# their hosts and servers).
cargo test --locked --lib --bins --test guest -- --include-ignored --test-threads=2 "${skip[@]}"
cargo test --locked --test host -- --include-ignored --test-threads=4 "${skip[@]}"
