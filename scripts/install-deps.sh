#!/usr/bin/env bash
# Installs the Debian packages hull, its tests and its benchmarks use.
# Safe to re-run: only missing packages are installed.
set -euo pipefail

packages=(
  # guest kernel build (guest-kernel/build.sh)
  linux-source-6.1 flex bison bc libelf-dev libssl-dev make gcc
  # layer disks and rootfs images
  erofs-utils e2fsprogs cpio zstd file kmod
  # the emulated KVM host (tests/kvm-host/run) and the QEMU baseline
  qemu-system-x86 busybox-static
  # real peers for the image tests and the namespace baselines
  docker-registry skopeo umoci runc crun
  # the peer hull build's output is compared with (tests/build.rs)
  buildah
  # benchmarks
  hyperfine
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present" >&2
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
