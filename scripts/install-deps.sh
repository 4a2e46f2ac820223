#!/usr/bin/env bash
# Install what liverestore's build, demo and tests need on Debian (idempotent).
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root (it installs packages and uses loop devices)" >&2; exit 1; }
# (lvm2: its `lvm` is copied into the LVM guest test; with no
# device-mapper in this kernel nothing is activated on this machine)
pkgs=(xfsprogs gdisk btrfs-progs e2fsprogs util-linux fdisk bc time zstd xz-utils qemu-utils android-sdk-libsparse-utils bmap-tools
      qemu-system-x86 kmod dmsetup dosfstools cpio ovmf mtools openssh-client grub-common grub-pc-bin grub-efi-amd64-bin
      debootstrap prometheus-node-exporter prometheus openssh-server python3-venv fio gpg gpg-agent minisign rsync acl attr
      lvm2)
missing_packages() {
  local p
  for p in "${pkgs[@]}"; do
    # "install ok installed", not merely known to dpkg (removed packages are)
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || echo "$p"
  done
}
# Twice: apt may remove one package to install another (a newer
# qemu-utils from backports breaks bookworm's qemu-system-x86); the second
# pass puts back the version that fits.
updated=0
for _ in 1 2; do
  mapfile -t missing < <(missing_packages)
  [ ${#missing[@]} -eq 0 ] && break
  echo "installing: ${missing[*]}"
  [ $updated = 1 ] || { apt-get update -qq; updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
mapfile -t missing < <(missing_packages)
[ ${#missing[@]} -eq 0 ] || { echo "install-deps: could not install ${missing[*]}" >&2; exit 1; }
# --packages: Debian's packages only (scripts/test.sh starts building the
# test systems with debootstrap as soon as it is there, then runs the rest)
[ "${1:-}" = --packages ] && exit 0
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
modprobe loop 2>/dev/null || true
[ -e /dev/loop-control ] || { echo "no loop device support in this kernel" >&2; exit 1; }
# ansible-core for the collection's tests (PyPI, in target/ansible).
bash scripts/ansible-env.sh
# The QEMU test guest's kernel (Debian's package, unpacked into target/vm).
bash scripts/vm-kernel.sh
