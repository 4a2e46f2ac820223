#!/usr/bin/env bash
# The DDI server the `ddi` tests talk to: goosebit (a hawkBit DDI server)
# from PyPI, in a virtualenv under target/goosebit (made once; one maker
# at a time: scripts/test.sh makes it beside the guests, and a test that
# needs it runs this, which waits for that).
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.2.12
venv=target/goosebit/venv
mkdir -p target/goosebit
exec 9>target/goosebit/.lock
flock 9
if [ "$("$venv/bin/pip" show goosebit 2>/dev/null | sed -n 's/^Version: //p')" != "$version" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "goosebit==$version"
fi
