#!/usr/bin/env python3
"""Build benchmark: `hull build` (RUN steps in namespaces, or in microVMs)
against `buildah bud` (Debian's buildah, chroot isolation, vfs storage of its
own), the same five-step Dockerfile and context, cold (no cache) and with a
warm layer cache.

The Dockerfile: a first stage whose RUN writes 200 files, then a COPY of a
tree of real files (zoneinfo), a RUN that writes 100 files, and a multi-stage
COPY --from of the first stage's output. The base image is busybox (Debian's
busybox-static, packed with umoci) in both stores.

Medians over N runs and the ratio to buildah; nothing fails on noise. Needs
root, umoci, skopeo and buildah (scripts/install-deps.sh), and hull's static
agent (HULL_AGENT or agent/build-static.sh). `vm` needs hardware KVM, or run
the whole script inside tests/kvm-host/run.

    python3 tests/bench/build.py [-n RUNS] [--backends ns,vm,buildah] [--hull PATH]
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DOCKERFILE = """\
FROM busybox AS gen
RUN mkdir -p /out && for i in $(seq 1 200); do echo "file $i" > /out/f$i; done
FROM busybox
COPY tree/ /app/tree/
RUN for i in $(seq 1 100); do echo "row $i" > /app/r$i; done
COPY --from=gen /out /app/gen
"""


def sh(cmd, **kw):
    return subprocess.run(cmd, shell=True, check=True, **kw)


def busybox_layout(work):
    """An OCI layout with busybox-static and its applets, as `busybox:latest`."""
    layout, bundle = f"{work}/busybox-oci", f"{work}/bundle"
    sh(f"umoci init --layout {layout} && umoci new --image {layout}:latest"
       f" && umoci unpack --image {layout}:latest {bundle} >/dev/null")
    root = f"{bundle}/rootfs"
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"]:
        os.makedirs(f"{root}/{d}", exist_ok=True)
    shutil.copy("/bin/busybox", f"{root}/bin/busybox")
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout
    for a in applets.split():
        if a != "busybox":
            os.symlink("busybox", f"{root}/bin/{a}")
    with open(f"{root}/etc/passwd", "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    sh(f"umoci repack --image {layout}:latest {bundle} && umoci config --image {layout}:latest"
       " --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin --config.cmd sh"
       " --os linux --architecture amd64")
    return layout


def timed(cmd, env=None):
    t = time.monotonic()
    subprocess.run(cmd, shell=True, check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.monotonic() - t) * 1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("-n", type=int, default=3)
    p.add_argument("--backends", default="ns,buildah")
    p.add_argument("--hull", default=f"{REPO}/target/release/hull")
    p.add_argument("--work-dir", default="/dev/shm")
    a = p.parse_args()
    backends = a.backends.split(",")
    work = tempfile.mkdtemp(prefix="hull-bench-build-", dir=a.work_dir)
    state = tempfile.mkdtemp(prefix="hbs-", dir="/run")
    try:
        layout = busybox_layout(work)
        ctx = f"{work}/ctx"
        os.makedirs(ctx)
        shutil.copytree("/usr/share/zoneinfo", f"{ctx}/tree", symlinks=True)
        with open(f"{ctx}/Dockerfile", "w") as f:
            f.write(DOCKERFILE)
        data = f"{work}/data"
        hull = f"{a.hull} --data-dir {data} --state-dir {state}"
        sh(f"{hull} import --tag busybox {layout} >/dev/null")
        broot = f"{work}/buildah"
        buildah = (f"buildah --root {broot}/root --runroot {broot}/run --storage-driver vfs")
        if "buildah" in backends:
            sh(f"skopeo copy --quiet oci:{layout}:latest"
               f" 'containers-storage:[vfs@{broot}/root+{broot}/run]localhost/busybox:latest'")
        cmds = {
            "ns": (f"{hull} build -q --isolation ns --no-cache -t b {ctx}",
                   f"{hull} build -q --isolation ns -t b {ctx}"),
            "vm": (f"{hull} build -q --isolation vm --no-cache -t b {ctx}",
                   f"{hull} build -q --isolation vm -t b {ctx}"),
            "buildah": (f"{buildah} bud -q --layers --no-cache --isolation chroot --pull-never -t b {ctx}",
                        f"{buildah} bud -q --layers --isolation chroot --pull-never -t b {ctx}"),
        }
        results = {}
        for b in backends:
            cold = [timed(cmds[b][0]) for _ in range(a.n)]
            warm = [timed(cmds[b][1]) for _ in range(a.n)]
            results[b] = (statistics.median(cold), statistics.median(warm))
        base = results.get("buildah")
        print(f"five-step Dockerfile, {a.n} runs, medians (ms); ratio to buildah")
        print(f"{'builder':<10}{'cold':>10}{'ratio':>8}{'cached':>10}{'ratio':>8}")
        for b, (c, w) in results.items():
            rc = f"{c / base[0]:.2f}" if base else "-"
            rw = f"{w / base[1]:.2f}" if base else "-"
            print(f"{b:<10}{c:>10.1f}{rc:>8}{w:>10.1f}{rw:>8}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
