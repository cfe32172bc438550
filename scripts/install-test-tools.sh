#!/usr/bin/env bash
# The storage clients the NBD tests drive (Debian packages): nbdinfo and nbdcopy (libnbd-bin),
# qemu-img and qemu-io (qemu-utils), fio, and nbdkit for the baseline in docs/nbd.md; jq and
# setsid (util-linux), which the tutorials' commands use (TutorialTests runs them).
# Installs only what is missing; needs root (apt-get).
set -euo pipefail
missing=()
for pair in nbdinfo:libnbd-bin nbdcopy:libnbd-bin qemu-io:qemu-utils qemu-img:qemu-utils fio:fio nbdkit:nbdkit jq:jq setsid:util-linux; do
  type -P "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
packages=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
if [ "$(id -u)" -ne 0 ]; then
  echo "the NBD tests need these Debian packages: ${packages}(run: sudo apt-get install -y ${packages})" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${packages} >/dev/null
