#!/usr/bin/env bash
# Builds hull-agent as a static binary (the guest's PID 1 needs no libraries).
# The toolchain here has only the gnu target, so: glibc with crt-static. The
# flags go through the target-specific variable so build scripts and proc macros
# stay dynamic. Progress goes to stderr; the last line of stdout is the path.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-gnu
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
cargo build --quiet -p hull-agent --release --target "$target" >&2

target_dir="$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
bin="$target_dir/$target/release/hull-agent"
if ! file -b "$bin" | grep -q 'statically linked\|static-pie linked'; then
    echo "agent/build-static.sh: $bin is not statically linked" >&2
    exit 1
fi
echo "$bin"
