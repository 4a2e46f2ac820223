#!/usr/bin/env bash
# Build the Debian package: target/debian/liverestore_<version>_amd64.deb
#   /usr/sbin/liverestore               static (it is also /lr/init at boot)
#   /usr/share/man/man8/liverestore*.8.gz   one page per command (clap_mangen)
#   bash, zsh and fish completions      (clap_complete)
#   /var/lib/liverestore                the state directory (0700)
#   /lib/systemd/system/*               the units in packaging/systemd/, if any
#   /usr/share/doc/liverestore/         README, command reference, JSON schema
# Install it with: apt install ./target/debian/liverestore_*.deb
# Needs cargo and dpkg-deb; no root.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
triple=x86_64-unknown-linux-gnu
# .cargo/config.toml makes every build static. LIVERESTORE_BIN packages a
# binary built already (the test suite packages its own build's).
if [ -n "${LIVERESTORE_BIN:-}" ]; then
  bin=$LIVERESTORE_BIN
else
  cargo build --release --locked --quiet --bin liverestore
  bin="target/$triple/release/liverestore"
fi
ldd "$bin" 2>&1 | grep -qE "not a dynamic executable|statically linked" \
  || { echo "package: $bin is not statically linked" >&2; exit 1; }

out=target/debian
root=$(mktemp -d "${TMPDIR:-/tmp}/liverestore-deb.XXXXXX")
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$bin" "$root/usr/sbin/liverestore"
strip "$root/usr/sbin/liverestore"
"$root/usr/sbin/liverestore" generate-docs --man "$root/usr/share/man/man8" >/dev/null
gzip -9n "$root"/usr/share/man/man8/*.8
install -d "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
  "$root/usr/share/fish/vendor_completions.d"
"$root/usr/sbin/liverestore" completions bash > "$root/usr/share/bash-completion/completions/liverestore"
"$root/usr/sbin/liverestore" completions zsh > "$root/usr/share/zsh/vendor-completions/_liverestore"
"$root/usr/sbin/liverestore" completions fish > "$root/usr/share/fish/vendor_completions.d/liverestore.fish"
install -d -m 0700 "$root/var/lib/liverestore"
if compgen -G "packaging/systemd/*" >/dev/null; then
  install -D -m 0644 -t "$root/lib/systemd/system" packaging/systemd/*
fi
install -D -m 0644 -t "$root/usr/share/doc/liverestore" README.md docs/commands.md docs/json-output.md \
  docs/json-output.schema.json
cat > "$root/usr/share/doc/liverestore/copyright" <<'COPY'
liverestore: see the project's repository for its license and authors.
COPY
install -d "$root/DEBIAN"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" packaging/control.in > "$root/DEBIAN/control"
mkdir -p "$out"
deb="$out/liverestore_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
