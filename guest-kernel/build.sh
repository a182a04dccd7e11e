#!/bin/bash
# Build hull's guest kernel: an uncompressed ELF vmlinux (PVH entry point) from
# Debian's linux-source-6.1 package, configured as `make tinyconfig` + hull.config.
#
# Result: ${XDG_CACHE_HOME:-$HOME/.cache}/hull/kernel/<hash>/vmlinux, where <hash>
# covers hull.config, this script and the linux-source package version; the symlink
# .../hull/kernel/vmlinux points at the newest build. A cached result is reused.
# Progress goes to stderr; the last line of stdout is the vmlinux path.
#
# Environment:
#   HULL_KERNEL_JOBS        make -j value (default: nproc)
#   HULL_KERNEL_KEEP_BUILD  1 = keep the build tree (under the cache) after success
set -euo pipefail

SRC_PKG=linux-source-6.1
SRC_TARBALL=/usr/src/linux-source-6.1.tar.xz
BUILD_DEPS=(flex bison bc libelf-dev libssl-dev make gcc)

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fragment="$here/hull.config"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/hull/kernel"
jobs="${HULL_KERNEL_JOBS:-$(nproc)}"
start=$SECONDS

say() { echo "[guest-kernel] $*" >&2; }
die() {
    echo "[guest-kernel] error: $*" >&2
    exit 1
}
elapsed() { printf '%dm%02ds' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)); }

# --- build dependencies -------------------------------------------------------
missing=()
for pkg in "$SRC_PKG" "${BUILD_DEPS[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || die "missing packages (${missing[*]}); run as root or: apt-get install ${missing[*]}"
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
fi
[[ -f "$SRC_TARBALL" ]] || die "$SRC_TARBALL missing (is $SRC_PKG installed correctly?)"
src_version="$(dpkg-query -W -f='${Version}' "$SRC_PKG")"

# --- cache key -----------------------------------------------------------------
hash="$({
    cat "$fragment" "${BASH_SOURCE[0]}"
    echo "$SRC_PKG=$src_version"
} | sha256sum | cut -c1-16)"
out_dir="$cache/$hash"
link="$cache/vmlinux"

publish_link() {
    ln -sfn "$hash/vmlinux" "$cache/.vmlinux.link.$$"
    mv -T "$cache/.vmlinux.link.$$" "$link"
}

if [[ -f "$out_dir/vmlinux" ]]; then
    say "cached: $out_dir/vmlinux ($SRC_PKG $src_version)"
    publish_link
    echo "$out_dir/vmlinux"
    exit 0
fi

mkdir -p "$cache"
# One build at a time per cache: a second caller waits, then finds the result.
exec 9>"$cache/.lock"
if ! flock -n 9; then
    say "another build holds $cache/.lock; waiting"
    flock 9
fi
if [[ -f "$out_dir/vmlinux" ]]; then
    say "built meanwhile by another run: $out_dir/vmlinux"
    publish_link
    echo "$out_dir/vmlinux"
    exit 0
fi
# Anything left in tmp.* is from an interrupted run (we hold the lock): never trusted.
rm -rf "$cache"/tmp.*

work="$cache/tmp.$hash.$$"
cleanup() {
    if [[ "${HULL_KERNEL_KEEP_BUILD:-0}" != 1 || ! -f "$out_dir/vmlinux" ]]; then
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$work"

say "building $hash from $SRC_PKG $src_version with -j$jobs in $work"
say "unpacking $SRC_TARBALL"
tar -xf "$SRC_TARBALL" -C "$work"
ksrc="$work/$SRC_PKG"
[[ -f "$ksrc/Makefile" ]] || die "unexpected tarball layout: no $ksrc/Makefile"
log="$work/build.log"

kmake() { make -C "$ksrc" ARCH=x86_64 "$@"; }

# --- configure -------------------------------------------------------------------
say "configuring: tinyconfig + $(basename "$fragment")"
{
    kmake tinyconfig
    (cd "$ksrc" && ARCH=x86_64 scripts/kconfig/merge_config.sh -m .config "$fragment")
    kmake olddefconfig
} >>"$log" 2>&1 || {
    tail -n 30 "$log" >&2
    die "configuration failed (log above)"
}

# Every option the fragment names must have survived olddefconfig.
lost=()
while IFS= read -r line; do
    if [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        grep -qxF "$line" "$ksrc/.config" || {
            got="$(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$ksrc/.config" || echo "absent")"
            lost+=("${BASH_REMATCH[1]} (wanted ${BASH_REMATCH[2]}, got: $got)")
        }
    elif [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        if grep -qE "^${BASH_REMATCH[1]}=" "$ksrc/.config"; then
            lost+=("${BASH_REMATCH[1]} (wanted off, got: $(grep -E "^${BASH_REMATCH[1]}=" "$ksrc/.config"))")
        fi
    fi
done <"$fragment"
if ((${#lost[@]})); then
    for l in "${lost[@]}"; do say "  not as requested: $l"; done
    die "${#lost[@]} option(s) of $(basename "$fragment") did not survive olddefconfig (missing dependencies?)"
fi
say "configuration verified ($(grep -cE '^CONFIG_.*=' "$ksrc/.config") options set)"

# --- build -------------------------------------------------------------------------
say "make -j$jobs vmlinux (full log: $log)"
count=0
set +e
kmake -j"$jobs" vmlinux 2>&1 | tee -a "$log" | while IFS= read -r line; do
    case "$line" in
    "  CC "* | "  AS "* | "  LD "* | "  AR "*)
        count=$((count + 1))
        if ((count % 100 == 0)); then say "  $count objects compiled ($(elapsed))"; fi
        ;;
    esac
done
status=${PIPESTATUS[0]}
set -e
if ((status != 0)) || [[ ! -f "$ksrc/vmlinux" ]]; then
    grep -E 'error|Error' "$log" | tail -n 20 >&2 || true
    die "make vmlinux failed (status $status)"
fi

# --- publish atomically ----------------------------------------------------------
stage="$cache/tmp.out.$hash.$$"
mkdir -p "$stage"
cp "$ksrc/vmlinux" "$stage/vmlinux"
cp "$ksrc/.config" "$stage/config"
{
    echo "source=$SRC_PKG $src_version"
    echo "kernelrelease=$(kmake -s kernelrelease 2>/dev/null)"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ) in $(elapsed) with -j$jobs"
} >"$stage/build-info"
rm -rf "$out_dir"
mv -T "$stage" "$out_dir"
publish_link
if [[ "${HULL_KERNEL_KEEP_BUILD:-0}" == 1 ]]; then
    say "kept build tree: $work"
fi
say "done in $(elapsed): $out_dir/vmlinux ($(du -h "$out_dir/vmlinux" | cut -f1))"
echo "$out_dir/vmlinux"
