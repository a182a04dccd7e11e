#!/usr/bin/env bash
# hull's "set up and run" command (README.md): installs what hull needs, builds
# hull, the guest kernel, the static agent and the sample images, then runs a
# container from the busybox sample image in a microVM and prints its output.
# Where /dev/kvm cannot boot a stock Linux guest (PVM, or none), the microVM
# runs inside the emulated KVM host (tests/kvm-host/run).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }
data_dir="${HULL_DATA_DIR:-/var/lib/hull}"
export HULL_DATA_DIR="$data_dir"

step "host packages"
scripts/install-deps.sh

step "hull and hull-runtime (release build)"
# hull-runtime, the OCI runtime for podman, docker and containerd, is built
# beside hull (docs/runtime.md).
cargo build --release --quiet -p hull -p hull-vmm
hull="$PWD/target/release/hull"
export HULL_VMM="$PWD/target/release/hull-vmm"

step "guest kernel"
HULL_KERNEL="$(guest-kernel/build.sh | tail -n 1)"
export HULL_KERNEL

step "static agent"
HULL_AGENT="$(agent/build-static.sh | tail -n 1)"
export HULL_AGENT

step "sample images"
HULL="$hull" images/build-samples.sh
"$hull" images

step "hull doctor"
"$hull" doctor || true

# --network none: the greeting needs no network, and the script leaves the
# machine's network as it is (without it, hull run joins the default network
# `bridge`, as docker run does, and sets up its bridge and nftables table).
cmd=("$hull" run --rm --network none busybox sh -c 'echo "hello from $(hostname), kernel $(uname -r), $(nproc) CPU(s)"')
step "${cmd[*]#"$PWD/"}"
hardware_kvm() {
    [[ -e /dev/kvm && ! -e /sys/module/kvm_pvm ]] &&
        [[ -e /sys/module/kvm_intel || -e /sys/module/kvm_amd ]]
}
if hardware_kvm; then
    exec "${cmd[@]}"
fi
echo "(this /dev/kvm cannot boot a stock Linux guest: running inside the emulated KVM host)" >&2
mkdir -p "$data_dir"
exec tests/kvm-host/run --share "$data_dir" -- "${cmd[@]}"
