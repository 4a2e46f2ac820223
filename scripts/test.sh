#!/usr/bin/env bash
# The whole test suite: unit tests, and integration tests on scratch
# loop-backed disks (never this machine's own disks). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --all-targets --locked -- --test-threads=2
