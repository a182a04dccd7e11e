#!/usr/bin/env bash
# hull's test command (README.md "Run the tests"; .ci/run runs exactly this).
# Installs what the tests need, builds the guest kernel and the static agent,
# checks formatting and lints, then runs every test with cargo. VM tests run on
# /dev/kvm where it is hardware KVM, otherwise inside the emulated KVM host
# (tests/kvm-host/run); HULL_SKIP_VM_TESTS=1 reports them as ignored instead.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "host packages"
scripts/install-deps.sh

step "guest kernel"
HULL_KERNEL="$(guest-kernel/build.sh | tail -n 1)"
export HULL_KERNEL
echo "kernel: $HULL_KERNEL" >&2

step "static agent"
HULL_AGENT="$(agent/build-static.sh | tail -n 1)"
export HULL_AGENT
echo "agent: $HULL_AGENT" >&2

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "tests"
# Every suite runs even when one fails, so one run shows every failure.
cargo test --workspace --no-fail-fast "$@"
