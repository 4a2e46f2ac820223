#!/usr/bin/env bash
# The Ansible the collection's tests run: ansible-core from PyPI in a
# virtualenv under target/ansible (made once), and a HOME of its own for
# ansible-test, whose sanity tests make virtualenvs of their own.
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.19.14
root=target/ansible
venv=$root/venv
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
