#!/usr/bin/env bash
# Install what liverestore's build, demo and tests need on Debian (idempotent).
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root (it installs packages and uses loop devices)" >&2; exit 1; }
pkgs=(xfsprogs gdisk btrfs-progs e2fsprogs util-linux fdisk bc time zstd xz-utils qemu-utils android-sdk-libsparse-utils bmap-tools
      qemu-system-x86 kmod dmsetup dosfstools cpio ovmf mtools openssh-client grub-common grub-pc-bin grub-efi-amd64-bin)
missing=()
for p in "${pkgs[@]}"; do
  # "install ok installed", not merely known to dpkg (removed packages are)
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  # The whole list in one transaction: installing only the missing ones
  # once made apt remove an installed qemu-utils of an older version to
  # upgrade qemu-system-x86's common files.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  for p in "${pkgs[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || { echo "install-deps: $p did not install" >&2; exit 1; }
  done
fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
modprobe loop 2>/dev/null || true
[ -e /dev/loop-control ] || { echo "no loop device support in this kernel" >&2; exit 1; }
# The QEMU test guest's kernel (Debian's package, unpacked into target/vm).
bash scripts/vm-kernel.sh
