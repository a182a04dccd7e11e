#!/usr/bin/env bash
# Installs the Debian packages hull, its tests and its benchmarks use.
# Safe to re-run: only missing packages are installed, and a package the user
# has is never removed or downgraded without being named first (see below).
set -euo pipefail

packages=(
  # guest kernel build (guest-kernel/build.sh)
  linux-source-6.1 flex bison bc libelf-dev libssl-dev make gcc
  # layer disks and rootfs images
  erofs-utils e2fsprogs cpio zstd file kmod
  # the emulated KVM host (tests/kvm-host/run) and the QEMU baseline; its
  # qemu-system-common brings QEMU 7.2's virtiofsd (/usr/lib/qemu/virtiofsd),
  # the virtio-fs baseline of tests/bench/fs.py --qemu
  qemu-system-x86 busybox-static
  # real peers for the image tests and the namespace baselines
  docker-registry skopeo umoci runc crun
  # container networks: hull's nftables table; the network tests' namespaces
  # and fetches
  nftables iproute2 curl
  # the peer hull build's output is compared with (tests/build.rs)
  buildah
  podman
  # benchmarks
  hyperfine
  # the OCI engines hull-runtime is tested under (tests/runtime_*.rs); their
  # services are never started by this script: the tests start their own
  podman conmon docker.io containerd docker-compose
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
apt-get update -qq
# Never replace what the user installed without saying so: a dry run first;
# any package apt would remove or downgrade is named, and nothing changes
# unless HULL_DEPS_REPLACE=1 says it may.
plan="$(apt-get install -s --no-install-recommends "${missing[@]}" 2>&1)" || {
  echo "install-deps: apt-get cannot install ${missing[*]}:" >&2
  echo "$plan" | grep -E '^(E:|W:| )' >&2 || true
  exit 1
}
replaced="$(echo "$plan" | sed -n -E 's/^Remv ([^ ]+).*/\1 (removed)/p; s/^Inst ([^ ]+) \[([^]]+)\] \(([^ ]+).*/\1 \2 -> \3/p' |
  while read -r name old arrow new; do
    if [ "$old" = "(removed)" ]; then echo "$name (removed)";
    elif dpkg --compare-versions "$new" lt "$old"; then echo "$name $old -> $new (downgraded)"; fi
  done)"
if [ -n "$replaced" ] && [ "${HULL_DEPS_REPLACE:-0}" != 1 ]; then
  echo "install-deps: installing ${missing[*]} would replace packages you have:" >&2
  echo "$replaced" | sed 's/^/  /' >&2
  echo "install-deps: nothing changed; install the missing ones yourself, or run again with HULL_DEPS_REPLACE=1 to let apt replace them" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
[ -z "$replaced" ] || { echo "install-deps: HULL_DEPS_REPLACE=1: replacing:" >&2; echo "$replaced" | sed 's/^/  /' >&2; }
remove_flag=(--no-remove)
[ -z "$replaced" ] || remove_flag=(--allow-downgrades)
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${remove_flag[@]}" "${missing[@]}" >&2
