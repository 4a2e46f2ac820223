#!/usr/bin/env bash
# Real Debian 12 systems for the guest tests (tests/guest/debian.rs), built
# with debootstrap from the Debian mirror this machine's apt uses, and
# cached in DIR (default target/distros):
#   DIR/initramfs-tools/  systemd, udev, dmsetup, lvm2, linux-image-amd64,
#                         initramfs-tools, e2fsprogs, rsync, and GRUB for
#                         UEFI; with LIVERESTORE_SLOW_TESTS=1 also dbus,
#                         python3 and openssh-server (Ansible's managed
#                         host, for the Debian run driven by Ansible; sshd
#                         is not started at boot: the test starts it; they
#                         cost the other runs 2-3 minutes: python's files
#                         copied and hashed, D-Bus at every boot)
#                         (grub-efi-amd64-bin, grub2-common, efibootmgr,
#                         and for Secure Boot shim-signed and
#                         grub-efi-amd64-signed);
#                         its initrd zstd-compressed with an uncompressed
#                         early archive in front (as the CPU microcode
#                         packages add one)
#   DIR/dracut/           the same system with its initrd made by dracut
#                         (what Fedora/RHEL-family systems boot with),
#                         xz-compressed
# Each tree has a real fstab (root by UUID, written by the tests when they
# make its filesystem), `lr-scenario.service` (runs /usr/local/sbin/lr-scenario
# once the boot has started multi-user.target, output to the console), a
# root password "liverestore", rsync (for `snapshot`) and GRUB set up for a
# serial console. To stage, hash and boot faster under emulation, only the
# kernel modules a virtual machine of these tests can use are kept (dpkg's
# path-exclude and path-include, as minimal Debian and cloud images do):
# of the drivers, the buses, block, virtio (virtio_net too), the e1000 network card, md
# (device-mapper), watchdogs, input, ACPI and firmware ones; of the
# filesystems, ext4, xfs, btrfs, FAT, efivarfs, FUSE, ISO 9660 and their
# helpers; no networking modules but virtio_net's and e1000's. 170 MB of 450 go, and
# the initrds shrink with them (they take most of the modules there are).
# apt's package lists, the documentation and the translations go too,
# and boot units no test machine uses are masked (below).
# Needs root, debootstrap, network to the mirror. Idempotent; one build at a
# time (flock). Mounts happen only inside private mount namespaces
# (unshare), so nothing stays mounted in the trees, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-target/distros}
suite=bookworm
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
# what the trees are; a change rebuilds them (and the old system's disk)
# Ansible's managed host: only for the slow tests (above)
managed=""
[ "${LIVERESTORE_SLOW_TESTS:-}" = 1 ] && managed=",dbus,python3,openssh-server"
version="14: managed [$managed]: dpkg unsafe-io; dbus and logind on demand, ssh.service off, binfmt masked; e1000; lvm2 (its monitor masked); initramfs-tools zstd with an early archive in front; dracut xz; signed shim and GRUB; rsync; only the modules of virtual machines (kept by name), no apt lists, no docs; unused boot units masked, daily timers off, no kvm"
[ "$(cat "$dir/done" 2>/dev/null)" = "$version" ] && exit 0

# The mirror apt uses here for $suite (deb822 .sources or sources.list).
mirror=$(
  { cat /etc/apt/sources.list.d/*.sources 2>/dev/null; echo; } | awk -v s="$suite" '
    /^URIs:/ { u = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) found = u }
    /^$/ { if (found) { print found; exit } u = "" }'
)
[ -n "$mirror" ] || mirror=$(awk -v s="$suite" '$1 == "deb" && $3 == s { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || { echo "no Debian mirror for $suite in the apt sources" >&2; exit 1; }

# Run "$@" chrooted into tree $1 with /proc, /sys and a small /dev mounted
# in a private mount namespace: they vanish with the namespace.
in_tree() {
  local tree=$1; shift
  unshare --mount --propagation private -- sh -c '
    t=$1; shift
    mount -t proc proc "$t/proc"
    mount -t sysfs sys "$t/sys"
    mount -t tmpfs -o mode=755 dev "$t/dev"
    for n in null zero full random urandom tty; do
      touch "$t/dev/$n"; mount --bind "/dev/$n" "$t/dev/$n"
    done
    mkdir -p "$t/dev/pts" "$t/dev/shm"
    ln -s /proc/self/fd "$t/dev/fd"
    exec chroot "$t" "$@"' sh "$tree" "$@"
}

work="$dir/build"
rm -rf "$work" && mkdir -p "$work"
base="$work/base"
echo "debian-systems: debootstrap $suite from $mirror" >&2
# Stage one only (unpack); the rest is installed by dpkg in the tree, which
# then honours the path-exclude rules.
debootstrap --foreign --variant=minbase \
  --include=systemd-sysv,udev,dmsetup,lvm2$managed,rsync,kmod,e2fsprogs,zstd,xz-utils,initramfs-tools,linux-image-amd64,grub-efi-amd64-bin,grub-efi-amd64-signed,shim-signed,grub2-common,efibootmgr \
  "$suite" "$base" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
mkdir -p "$base/etc/dpkg/dpkg.cfg.d"
cat >"$base/etc/dpkg/dpkg.cfg.d/liverestore-tests" <<'EOF'
# no fsync after every file: these trees are built beside the test build
# (the fsyncs slowed it), and a tree interrupted is built again anyway
force-unsafe-io
# only what virtual machines (q35, virtio, OVMF) and these tests use
path-exclude=/lib/modules/*/kernel/sound/*
# (udev loads kvm for -cpu max's virtualization flags: nothing here runs VMs)
path-exclude=/lib/modules/*/kernel/arch/x86/kvm/*
path-exclude=/lib/modules/*/kernel/drivers/*
path-include=/lib/modules/*/kernel/drivers/acpi/*
path-include=/lib/modules/*/kernel/drivers/base/*
path-include=/lib/modules/*/kernel/drivers/block/*
path-include=/lib/modules/*/kernel/drivers/char/*
path-include=/lib/modules/*/kernel/drivers/cpufreq/*
path-include=/lib/modules/*/kernel/drivers/crypto/*
path-include=/lib/modules/*/kernel/drivers/firmware/*
path-include=/lib/modules/*/kernel/drivers/i2c/*
path-include=/lib/modules/*/kernel/drivers/input/*
path-include=/lib/modules/*/kernel/drivers/md/*
path-include=/lib/modules/*/kernel/drivers/mfd/*
path-include=/lib/modules/*/kernel/drivers/pci/*
path-include=/lib/modules/*/kernel/drivers/powercap/*
path-include=/lib/modules/*/kernel/drivers/rtc/*
path-include=/lib/modules/*/kernel/drivers/tty/*
path-include=/lib/modules/*/kernel/drivers/virtio/*
path-include=/lib/modules/*/kernel/drivers/watchdog/*
path-include=/lib/modules/*/kernel/drivers/net/virtio_net.ko*
path-include=/lib/modules/*/kernel/drivers/net/net_failover.ko*
path-include=/lib/modules/*/kernel/drivers/net/ethernet/intel/e1000/*
path-exclude=/lib/modules/*/kernel/fs/*
path-include=/lib/modules/*/kernel/fs/autofs/*
path-include=/lib/modules/*/kernel/fs/btrfs/*
path-include=/lib/modules/*/kernel/fs/efivarfs/*
path-include=/lib/modules/*/kernel/fs/ext4/*
path-include=/lib/modules/*/kernel/fs/fat/*
path-include=/lib/modules/*/kernel/fs/fuse/*
path-include=/lib/modules/*/kernel/fs/isofs/*
path-include=/lib/modules/*/kernel/fs/jbd2/*
path-include=/lib/modules/*/kernel/fs/nls/*
path-include=/lib/modules/*/kernel/fs/xfs/*
path-include=/lib/modules/*/kernel/fs/mbcache.ko*
path-exclude=/lib/modules/*/kernel/net/*
path-include=/lib/modules/*/kernel/net/core/*
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/info/*
EOF
in_tree "$base" /debootstrap/debootstrap --second-stage >>"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
echo "deb $mirror $suite main" >"$base/etc/apt/sources.list"

# What every test system has.
echo "root:liverestore" | in_tree "$base" chpasswd
echo debian >"$base/etc/hostname"
cat >"$base/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0,115200"
GRUB_TERMINAL=console
GRUB_DISABLE_OS_PROBER=true
EOF
cat >"$base/etc/systemd/system/lr-scenario.service" <<'EOF'
[Unit]
Description=liverestore test scenario
After=multi-user.target
ConditionPathExists=/usr/local/sbin/lr-scenario

[Service]
Type=exec
# to the console as it is (not a terminal: no progress bars)
ExecStart=/bin/sh -c '/usr/local/sbin/lr-scenario 2>&1 | cat >/dev/console'

[Install]
WantedBy=multi-user.target
EOF
in_tree "$base" systemctl enable lr-scenario.service >/dev/null 2>&1
# What no test machine uses, done at every boot, each about a second of
# emulated CPU on a single virtual CPU (`systemd-analyze blame` in a guest:
# e2scrub_reap 2.3 s, each mount 1 s): e2scrub's clean-up of LVM
# snapshots, and the hugepages, POSIX queue, debugfs and tracefs mounts.
# And the daily timers of apt, dpkg, e2scrub and fstrim: one firing in the
# middle of a test would be a failed unit there (no network, no mirror).
# And LVM's monitoring of mirrors and snapshots (dmeventd), which no
# volume of these tests has; binfmt_misc, which python3 registers with
# (its module is not kept: a failed unit at every boot).
in_tree "$base" systemctl mask e2scrub_reap.service dev-hugepages.mount dev-mqueue.mount \
  sys-kernel-debug.mount sys-kernel-tracing.mount lvm2-monitor.service systemd-binfmt.service \
  proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount >/dev/null 2>&1
# D-Bus and logind only when something asks for them (as `shutdown`, which
# Ansible's reboot runs, asks logind): socket and bus activation, not at
# every boot (2-3 s of emulated CPU each).
rm -f "$base/lib/systemd/system/multi-user.target.wants/dbus.service" \
  "$base/lib/systemd/system/multi-user.target.wants/systemd-logind.service"
in_tree "$base" systemctl disable apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
  e2scrub_all.timer fstrim.timer >/dev/null 2>&1
if [ -n "$managed" ]; then
  in_tree "$base" systemctl disable ssh.service >/dev/null 2>&1
fi
in_tree "$base" apt-get clean
# The documentation and translations debootstrap's first stage unpacked
# before dpkg's path-exclude rules were there (40 MB).
rm -rf "$base"/usr/share/doc/* "$base"/usr/share/man/* "$base"/usr/share/info/*
find "$base/usr/share/locale" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
# the package lists too (49 MB), as Debian's container and cloud images do
rm -rf "$base"/var/lib/apt/lists/*

# The dracut system: the same, with dracut instead of initramfs-tools
# (apt removes initramfs-tools; dracut's kernel hook makes the initrd).
cp -a "$base" "$work/dracut"
mkdir -p "$work/dracut/etc/dracut.conf.d"
# a generic initrd (no host-only: this tree is not on the disk it boots
# from), xz-compressed
printf 'hostonly="no"\ncompress="xz"\n' >"$work/dracut/etc/dracut.conf.d/10-liverestore-tests.conf"
in_tree "$work/dracut" sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dracut >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*' \
  >>"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
ls "$work/dracut"/boot/initrd.img-* >/dev/null || { echo "dracut made no initrd" >&2; exit 1; }
if grep -q "falling back to default" "$work/debootstrap.log"; then
  echo "dracut could not compress as configured" >&2; exit 1
fi

# The initramfs-tools system's initrd: zstd (Debian's default, now that
# zstd is there), with an uncompressed archive in front, added the way
# intel-microcode's and amd64-microcode's hooks add theirs
# (prepend_earlyinitramfs; its file is no real microcode, which the
# kernel would try to load).
sed -i 's/^COMPRESS=.*/COMPRESS=zstd/' "$base/etc/initramfs-tools/initramfs.conf"
cat >"$base/etc/initramfs-tools/hooks/lr-early-archive" <<'HOOK'
#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
d=$(mktemp -d)
mkdir -p "$d/kernel/x86/microcode"
echo "liverestore tests: an early archive in front" >"$d/kernel/x86/microcode/LiverestoreTests.bin"
(cd "$d" && find . | cpio -H newc -o --quiet) >"$d.cpio"
prepend_earlyinitramfs "$d.cpio"
rm -rf "$d" "$d.cpio"
HOOK
chmod 755 "$base/etc/initramfs-tools/hooks/lr-early-archive"
in_tree "$base" update-initramfs -u -k all >>"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

rm -rf "$dir/initramfs-tools" "$dir/dracut" "$dir/old-system"
mv "$base" "$dir/initramfs-tools"
mv "$work/dracut" "$dir/dracut"
rm -rf "$work"
echo "$version" >"$dir/done"
echo "debian-systems: $(du -sh "$dir/initramfs-tools" | cut -f1) and $(du -sh "$dir/dracut" | cut -f1) in $dir" >&2
