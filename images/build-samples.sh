#!/usr/bin/env bash
# Builds hull's sample images from Debian packages (no registry needed) as OCI
# image layouts with umoci, and imports them into hull's store:
#   busybox        from busybox-static: /bin/busybox, its applets, /etc/passwd
#   debian-python  (with --python) a debootstrap minbase of Debian 12 with python3
# Images already in the store are left alone (--force rebuilds them).
# Usage: images/build-samples.sh [--python] [--force]; HULL=path/to/hull.
# The layouts are kept under ${HULL_CACHE:-~/.cache/hull}/samples/.
set -euo pipefail
cd "$(dirname "$0")/.."

hull="${HULL:-target/release/hull}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/hull/samples"
python=0 force=0
for a in "$@"; do
  case "$a" in
    --python) python=1 ;;
    --force) force=1 ;;
    *) echo "build-samples: unknown option $a" >&2; exit 2 ;;
  esac
done
mkdir -p "$cache"

have() { [ "$force" = 0 ] && "$hull" image inspect "$1" >/dev/null 2>&1; }

# new_image LAYOUT TAG ROOTFS_SETUP_FUNCTION: one layer made by the function
# in the bundle's rootfs, repacked and configured.
new_image() {
  local layout="$1" tag="$2" setup="$3" bundle
  rm -rf "$layout"
  bundle="$(mktemp -d "$cache/bundle.XXXXXX")"
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  umoci unpack --image "$layout:$tag" "$bundle/b" >/dev/null
  "$setup" "$bundle/b/rootfs"
  umoci repack --image "$layout:$tag" "$bundle/b"
  rm -rf "$bundle"
}

busybox_rootfs() {
  local r="$1"
  mkdir -p "$r"/{bin,etc,root,tmp,home/user,proc,sys,dev}
  chmod 1777 "$r/tmp"
  cp /bin/busybox "$r/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$r/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n' >"$r/etc/group"
  chown 1000:1000 "$r/home/user"
}

if have busybox:latest; then
  echo "build-samples: busybox:latest is already in the store" >&2
else
  echo "build-samples: busybox (from busybox-static)" >&2
  new_image "$cache/busybox" latest busybox_rootfs
  umoci config --image "$cache/busybox:latest" \
    --config.cmd sh --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --os linux --architecture amd64
  "$hull" import --tag busybox:latest "$cache/busybox"
fi

python_rootfs() {
  local r="$1" suite=bookworm
  echo "build-samples: debootstrap $suite (minbase + python3); this downloads ~40 MB" >&2
  debootstrap --variant=minbase --include=python3-minimal,python3 "$suite" "$r" >&2
  rm -rf "$r"/var/cache/apt/archives/*.deb "$r"/var/lib/apt/lists/*
}

if [ "$python" = 1 ]; then
  if have debian-python:latest; then
    echo "build-samples: debian-python:latest is already in the store" >&2
  else
    command -v debootstrap >/dev/null || { echo "build-samples: apt-get install debootstrap" >&2; exit 1; }
    new_image "$cache/debian-python" latest python_rootfs
    umoci config --image "$cache/debian-python:latest" --config.cmd python3 \
      --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --os linux --architecture amd64
    "$hull" import --tag debian-python:latest "$cache/debian-python"
  fi
fi
