#!/usr/bin/env python3
"""Image benchmark: hull against the tools users already have, same image.

1. Pull: `hull pull` of a ~50 MB three-layer image from a local
   docker-registry (Debian's, on 127.0.0.1) against `skopeo copy` of the same
   image to an OCI layout. Each run starts from an empty store / layout.
2. Layers to disks: `hull image unpack` (unpack every layer and build its
   erofs disk) against `tar -x` of the same compressed layer blobs, and
   `hull image unpack --no-disks` (unpack only, what `--isolation ns` needs).

Medians over N runs and the ratio to the baseline; nothing fails on noise.
Everything is written under --work-dir (default /dev/shm), for both sides.
Needs root (layer owners), and docker-registry, skopeo, umoci, erofs-utils
(scripts/install-deps.sh installs them).

    python3 tests/bench/images.py [-n RUNS] [--hull target/release/hull]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Three layers of real files from this machine, about 50 MB in all.
LAYERS = [
    ("busybox base", ["/bin/busybox"]),
    ("python stdlib", ["/usr/lib/python3.11"]),
    ("zoneinfo and perl", ["/usr/share/zoneinfo", "/usr/lib/x86_64-linux-gnu/perl-base"]),
]


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


def timed(cmd):
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return (time.monotonic() - t) * 1000.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_image(work):
    """A three-layer OCI layout built with umoci; returns LAYOUT:TAG."""
    layout = os.path.join(work, "layout")
    bundle = os.path.join(work, "bundle")
    sh(f"umoci init --layout {layout} && umoci new --image {layout}:bench")
    for name, paths in LAYERS:
        sh(f"rm -rf {bundle} && umoci unpack --image {layout}:bench {bundle} >/dev/null")
        root = os.path.join(bundle, "rootfs")
        for p in paths:
            dest = os.path.join(root, p.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if os.path.isdir(p):
                shutil.copytree(p, dest, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(p, dest)
        sh(f"umoci repack --image {layout}:bench {bundle}")
        print(f"  layer: {name}", file=sys.stderr)
    sh(f"umoci config --image {layout}:bench --config.cmd /bin/busybox "
       "--os linux --architecture amd64")
    return f"{layout}:bench"


class Registry:
    def __init__(self, work):
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        cfg = os.path.join(work, "registry.yml")
        with open(cfg, "w") as f:
            f.write("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {work}/registry\nhttp:\n  addr: {self.addr}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("docker-registry did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=5)
    ap.add_argument("--hull", default=os.path.join(REPO, "target/release/hull"))
    ap.add_argument("--json", help="write the figures as JSON here")
    ap.add_argument("--work-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where stores, layouts and trees go (default /dev/shm: memory, "
                         "so the shared disk's writeback does not drown the figures)")
    args = ap.parse_args()
    for tool in ["docker-registry", "skopeo", "umoci", "mkfs.erofs", args.hull]:
        if not shutil.which(tool) and not os.path.exists(tool):
            raise SystemExit(f"{tool} is missing (scripts/install-deps.sh; cargo build --release)")
    if os.geteuid() != 0:
        raise SystemExit("run as root (layer owners)")

    work = tempfile.mkdtemp(prefix="hull-bench-images-", dir=args.work_dir)
    reg = None
    try:
        print("building the image with umoci", file=sys.stderr)
        src = build_image(work)
        reg = Registry(work)
        ref = f"{reg.addr}/bench/py:latest"
        sh(f"skopeo copy -q --dest-tls-verify=false oci:{src} docker://{ref}")
        blobs = os.path.join(work, "registry/docker/registry/v2/blobs")
        size = sum(os.path.getsize(os.path.join(d, f))
                   for d, _, fs in os.walk(blobs) for f in fs)
        manifest = json.loads(subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
            check=True, capture_output=True).stdout)
        layer_digests = [l["digest"].split(":", 1)[1] for l in manifest["layers"]]
        print(f"image {ref}: {len(layer_digests)} layers, {size / 1e6:.1f} MB in the registry",
              file=sys.stderr)

        figures = {"pull": {"hull": [], "skopeo": []},
                   "unpack": {"hull_disks": [], "hull_no_disks": [], "tar": []}}
        for i in range(args.runs):
            store = os.path.join(work, f"store{i}")
            figures["pull"]["hull"].append(timed(
                [args.hull, "--data-dir", store, "pull", "-q", ref]))
            oci = os.path.join(work, f"oci{i}")
            figures["pull"]["skopeo"].append(timed(
                ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{oci}:x"]))
            figures["unpack"]["hull_no_disks"].append(timed(
                [args.hull, "--data-dir", store, "image", "unpack", "--no-disks", ref]))
            # Disks from already unpacked layers would not count the unpack:
            # a fresh store again for the full unpack + mkfs figure.
            store2 = os.path.join(work, f"store{i}b")
            subprocess.run([args.hull, "--data-dir", store2, "pull", "-q", ref], check=True)
            figures["unpack"]["hull_disks"].append(timed(
                [args.hull, "--data-dir", store2, "image", "unpack", ref]))
            tree = os.path.join(work, f"tar{i}")
            os.makedirs(tree)
            t = time.monotonic()
            for d in layer_digests:
                subprocess.run(["tar", "-xzf", os.path.join(oci, "blobs/sha256", d), "-C", tree],
                               check=True)
            figures["unpack"]["tar"].append((time.monotonic() - t) * 1000.0)
            for p in (store, store2, oci, tree):
                shutil.rmtree(p, ignore_errors=True)
            print(f"  run {i + 1}/{args.runs} done", file=sys.stderr)

        pull_h, pull_s = median(figures["pull"]["hull"]), median(figures["pull"]["skopeo"])
        un_d, un_n, un_t = (median(figures["unpack"][k]) for k in ("hull_disks", "hull_no_disks", "tar"))
        print(f"\nimage: {len(layer_digests)} layers, {size / 1e6:.1f} MB compressed; "
              f"{args.runs} runs, medians")
        print(f"{'':34} {'ms':>9} {'ratio':>7}")
        print(f"{'pull: skopeo copy to OCI layout':34} {pull_s:9.1f} {1.0:7.2f}")
        print(f"{'pull: hull pull':34} {pull_h:9.1f} {pull_h / pull_s:7.2f}")
        print(f"{'layers: tar -xzf (baseline)':34} {un_t:9.1f} {1.0:7.2f}")
        print(f"{'layers: hull unpack, no disks':34} {un_n:9.1f} {un_n / un_t:7.2f}")
        print(f"{'layers: hull unpack + mkfs.erofs':34} {un_d:9.1f} {un_d / un_t:7.2f}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"runs": args.runs, "compressed_bytes": size,
                           "layers": len(layer_digests), "ms": figures}, f, indent=2)
    finally:
        if reg:
            reg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
