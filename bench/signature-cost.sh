#!/usr/bin/env bash
# What checking an image's signature costs: the same image staged unsigned,
# with an OpenPGP signature (gpg --detach-sign, ed25519) and with a minisign
# signature, on the same scratch loop disk (never a real one; needs root),
# for a raw and a zstd-compressed image, ROUNDS rounds each, interleaved.
# The signature is checked in the same pass (a thread hashing the source's
# bytes beside the staging), so the cost is CPU, not a second read.
# Usage: sudo bash bench/signature-cost.sh [MIB] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
size_mib=${1:-1024}
rounds=${2:-3}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
source scripts/scratch-disk.sh
dd if=/dev/zero of="$work/disk.img" bs=4M count=$(( (size_mib * 3 / 2 + 128) / 4 )) status=none
sgdisk -n 1:2048:0 -t 1:8300 "$work/disk.img" >/dev/null
attach_scratch_disk --direct-io=on
mkfs.ext4 -q -E nodiscard "${loopdev}p1"
mkdir -p "$work/host"; mount "${loopdev}p1" "$work/host"

export GNUPGHOME="$work/gnupg"; mkdir -m 700 "$GNUPGHOME"
trap 'gpgconf --kill gpg-agent 2>/dev/null || true; cleanup_scratch' EXIT
gpg -q --batch --pinentry-mode loopback --passphrase '' --quick-gen-key "Bench <bench@example.org>" ed25519 sign never 2>/dev/null
mkdir "$work/keys"
gpg -q --armor --export bench@example.org > "$work/keys/bench.asc"
minisign -q -G -W -p "$work/keys/bench.pub" -s "$work/minisign.key" >/dev/null
mkdir "$work/images"
head -c $((size_mib << 20)) /dev/urandom > "$work/images/random.img"
zstd -q -T0 -3 "$work/images/random.img" -o "$work/images/random.img.zst"
for f in random.img random.img.zst; do
  mkdir -p "$work/pgp" "$work/minisign" "$work/unsigned"
  for k in pgp minisign unsigned; do ln -f "$work/images/$f" "$work/$k/$f"; done
  gpg -q --batch --detach-sign -o "$work/pgp/$f.sig" "$work/images/$f"
  minisign -q -S -s "$work/minisign.key" -m "$work/minisign/$f" -x "$work/minisign/$f.minisig"
done
cat "$work"/images/* > /dev/null   # page cache for everyone

printf '%-14s %-9s %-5s %8s %9s %9s\n' image signature round stage_s vs_unsigned peak_rss
for f in random.img random.img.zst; do
  for r in $(seq 1 "$rounds"); do
    for k in unsigned pgp minisign; do
      sync
      t0=$(date +%s.%N)
      /usr/bin/time -f %M -o "$work/rss" "$lr" --json stage "$work/$k/$f" --name bench --dir "$work/host" --trusted-keys "$work/keys" > "$work/out.json"
      t=$(echo "$(date +%s.%N) - $t0" | bc -l)
      grep -q '"format":"' "$work/out.json" || [ "$k" = unsigned ] || { echo "$k: not verified" >&2; exit 1; }
      [ "$k" = unsigned ] && base=$t
      printf '%-14s %-9s %-5s %8.2f %9.3f %5s MiB\n' "$f" "$k" "$r" "$t" "$(echo "$t / $base" | bc -l)" "$(( $(cat "$work/rss") >> 10 ))"
      echo "$f $k $t" >> "$work/times"
      "$lr" discard bench >/dev/null
    done
  done
done
echo
echo "all rounds together (stage time with the signature / without):"
awk '{s[$1" "$2]+=$3} END{for (f in s) {split(f,a," "); if (a[2]!="unsigned") printf "%-14s %-9s %.3f\n", a[1], a[2], s[f]/s[a[1]" unsigned"]}}' "$work/times" | sort
