#!/usr/bin/env bash
# Run every cargo-fuzz target for SECONDS (default 60) each, then minimize
# the corpora kept in fuzz/corpus/. Uses the stable toolchain with
# RUSTC_BOOTSTRAP=1 for the sanitizer flags (no nightly is needed).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for t in $(cargo fuzz list); do
  mkdir -p "corpus/$t"
  echo "== $t ($secs s)"
  cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=16384 -len_control=0 2>&1 | grep -E '^Done|SUMMARY|panicked' || true
  cargo fuzz cmin -O "$t" "corpus/$t" >/dev/null 2>&1
done
