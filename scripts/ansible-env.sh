#!/usr/bin/env bash
# The Ansible the collection's tests run: ansible-core from PyPI in a
# virtualenv under target/ansible (made once), and a HOME of its own for
# ansible-test, whose sanity tests make virtualenvs of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.19.14
root=target/ansible
venv=$root/venv
# one maker at a time: scripts/test.sh makes it beside the guests, and a
# test that needs it runs this, which waits for that
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [ "$("$venv/bin/ansible" --version 2>/dev/null | head -1)" != "ansible [core $version]" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "ansible-core==$version"
fi
# ansible-test bootstraps pip in its virtualenvs with a get-pip.py it
# downloads from a host outside the package registries; this stand-in
# does the same from the interpreter's bundled pip and PyPI.
cache=$root/home/.ansible/test/cache
mkdir -p "$cache"
cat > "$cache/get_pip_24_2.py" <<'PY'
# Stand-in for pip's get-pip.py bootstrap (scripts/ansible-env.sh): the
# interpreter's bundled pip (ensurepip), then the pip asked for from PyPI,
# with the machine's pip configuration (ensurepip turns it off for itself).
import os
import subprocess
import sys
import ensurepip

env = dict(os.environ)
ensurepip.bootstrap(upgrade=True)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "--upgrade"] + args, env=env))
PY
# --sanity-venvs: also make the virtualenvs `ansible-test sanity` makes on
# its first run (pip installs: ~40 s of CPU), by running it once on a copy
# of the collection; its result is not looked at here (the host test
# `the_collection_builds_and_passes_ansible_test_sanity` runs it again and
# checks it). scripts/test.sh runs this at the lowest priority beside the
# guests, so that the host tests, after them, do not wait for it.
# (the virtualenv is made: a test waiting for it need not wait for these)
exec 9>&-
if [ "${1:-}" = --sanity-venvs ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  dest=$tmp/ansible_collections/liverestore/liverestore
  mkdir -p "$(dirname "$dest")"
  cp -a ansible "$dest"
  python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  home=$(cd "$root/home" && pwd)
  test_bin=$(cd "$venv/bin" && pwd)/ansible-test
  (cd "$dest" && HOME=$home "$test_bin" sanity --color no --python "$python" >/dev/null 2>&1) || true
fi
