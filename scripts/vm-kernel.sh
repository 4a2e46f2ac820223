#!/usr/bin/env bash
# Fetch Debian's kernel package (linux-image-amd64's current dependency) and
# unpack it for the QEMU test guest: DIR/kernel/vmlinuz and
# DIR/kernel/lib/modules/VERSION with a modules.dep made by depmod; and a
# static busybox (DIR/busybox, from busybox-static, unpacked rather than
# installed: installing it would replace the system's busybox). Idempotent;
# DIR defaults to target/vm.
# Needs: apt-get, dpkg-deb, depmod (kmod). No root needed once apt works.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/vm}
if [ ! -x "$dir/busybox" ]; then
  bb=$(mktemp -d)
  (cd "$bb" && apt-get download -q busybox-static >/dev/null 2>&1) || { echo "apt-get download busybox-static failed" >&2; rm -rf "$bb"; exit 1; }
  dpkg-deb -x "$bb"/busybox-static_*.deb "$bb/root"
  mkdir -p "$dir" && cp "$bb/root/bin/busybox" "$dir/busybox"
  rm -rf "$bb"
fi
if [ -e "$dir/kernel/vmlinuz" ] && ls "$dir"/kernel/lib/modules/*/modules.dep >/dev/null 2>&1; then
  exit 0
fi
pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
[ -n "$pkg" ] || { echo "cannot resolve linux-image-amd64 to a kernel package (apt-get update?)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1) || { echo "apt-get download $pkg failed" >&2; exit 1; }
dpkg-deb -x "$tmp"/*.deb "$tmp/root"
version=$(ls "$tmp/root/lib/modules")
depmod -b "$tmp/root" "$version"
rm -rf "$dir/kernel.new" && mkdir -p "$dir/kernel.new/lib/modules"
mv "$tmp/root/boot/vmlinuz-$version" "$dir/kernel.new/vmlinuz"
mv "$tmp/root/lib/modules/$version" "$dir/kernel.new/lib/modules/"
rm -rf "$dir/kernel" && mv "$dir/kernel.new" "$dir/kernel"
echo "guest kernel $version in $dir/kernel"
