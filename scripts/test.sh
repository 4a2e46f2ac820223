#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests on scratch
# loop-backed disks and in QEMU guests (never this machine's own disks).
# Needs root. Tests that need root are #[ignore]d with the reason, so a
# plain `cargo test` as any user runs the rest; this runs them all.
# LIVERESTORE_SLOW_TESTS=1 also runs the 15-minute real 4 GiB vfat staging.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --packages
# The real Debian systems the guest tests boot (scripts/debian-systems.sh;
# cached in target/distros) take minutes to build, mostly waiting on the
# mirror and dpkg: built beside the rest of the set-up, the compilation
# and the first guests. The tests that need them wait for this build (its
# lock) and, should it fail, build them again themselves and fail with
# its error.
mkdir -p target
setsid bash scripts/debian-systems.sh target/distros >target/debian-systems.log 2>&1 </dev/null &
systems=$!
trap 'kill -TERM -- -"$systems" 2>/dev/null || true' EXIT
bash scripts/install-deps.sh
skip=(--skip vfat_4gib_image_splits_for_real)
[ "${LIVERESTORE_SLOW_TESTS:-}" = 1 ] && skip=()
# Unit tests and the QEMU guests: two at a time (each guest keeps a core
# busy). The host tests: four at a time (the Ansible ones mostly wait on
# their hosts and servers).
cargo test --locked --lib --bins --test guest -- --include-ignored --test-threads=2 "${skip[@]}"
cargo test --locked --test host -- --include-ignored --test-threads=4 "${skip[@]}"
wait "$systems" || true
