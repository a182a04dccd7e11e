#!/usr/bin/env python3
"""OCI runtime benchmark: `docker run --rm --runtime R busybox true` and
`podman --runtime R run --rm busybox true` for R = runc, hull-runtime with
the namespace backend (hull-ns) and hull-runtime with microVMs (hull),
interleaved run by run, p50/p90 over N runs and the ratio to runc.

The engines are Debian's (dockerd 20.10, podman 4.3), each with its own
dirs and socket, inside a network and mount namespace this script makes
(nothing of the machine's own engines is touched); the image is a busybox
rootfs (Debian's busybox-static) imported into podman and loaded into
dockerd. Needs root, hull-runtime built (cargo build -p hull), hull's
static agent (HULL_AGENT or agent/build-static.sh) and, for `hull`, a
hardware /dev/kvm: run the whole script inside tests/kvm-host/run.

    python3 tests/bench/runtime.py [-n RUNS] [--runtimes runc,hull-ns,hull]
        [--engines docker,podman] [--runtime-bin PATH]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGE = "localhost/busybox:latest"
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def rootfs_tar(dir):
    root = os.path.join(dir, "rootfs")
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "root"]:
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True).stdout
    for a in applets.split():
        if a != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", a))
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")
    with open(os.path.join(root, "etc/group"), "w") as f:
        f.write("root:x:0:\n")
    tar = os.path.join(dir, "busybox.tar")
    subprocess.run(["tar", "-C", root, "-cf", tar, "."], check=True)
    return tar


class Netns:
    """A network+mount namespace held by a sleep; engines' scratch dirs private."""

    def __init__(self, scratch):
        script = (
            "set -e; ip link set lo up; "
            "for d in /var/lib/cni /var/cache/containers; do mkdir -p $d 2>/dev/null || true; "
            "mount -t tmpfs tmpfs $d; done; "
            f"mkdir -p {scratch}/vartmp; mount --bind {scratch}/vartmp /var/tmp; "
            "echo ready; exec sleep 100000"
        )
        self.holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE, text=True)
        assert self.holder.stdout.readline().strip() == "ready"

    def cmd(self, *args):
        return ["nsenter", "-t", str(self.holder.pid), "-n", "-m", "-r", "-w", "--", *args]

    def close(self):
        self.holder.kill()
        self.holder.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=10)
    ap.add_argument("--runtimes", default="runc,hull-ns,hull")
    ap.add_argument("--engines", default="docker,podman")
    ap.add_argument("--runtime-bin", default=os.path.join(REPO, "target/release/hull-runtime"))
    a = ap.parse_args()
    bin = os.path.abspath(a.runtime_bin)
    if not os.path.exists(bin):
        sys.exit(f"{bin} is missing: cargo build --release -p hull (or --runtime-bin PATH)")
    runtimes = a.runtimes.split(",")
    engines = a.engines.split(",")
    work = tempfile.mkdtemp(prefix="hull-rtbench-")
    ns = Netns(work)
    dockerd = None
    try:
        tar = rootfs_tar(work)
        hroot = os.path.join(work, "hrt")
        paths = {"runc": shutil.which("runc"), "hull": bin, "hull-ns": bin}
        flags = {"runc": [], "hull": ["--root", hroot], "hull-ns": ["--root", hroot, "--isolation", "ns"]}
        pm = ns.cmd("podman", "--root", f"{work}/pm/root", "--runroot", f"{work}/pm/run",
                    "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                    "--events-backend", "file")
        subprocess.run(pm + ["import", tar, IMAGE], check=True, capture_output=True)
        archive = os.path.join(work, "busybox-docker.tar")
        subprocess.run(pm + ["save", "--format", "docker-archive", "-o", archive, IMAGE],
                       check=True, capture_output=True)
        dk = None
        if "docker" in engines:
            d = os.path.join(work, "dk")
            os.makedirs(d)
            conf = {"runtimes": {r: {"path": paths[r], "runtimeArgs": flags[r]}
                                 for r in runtimes if r != "runc"}}
            with open(os.path.join(d, "daemon.json"), "w") as f:
                json.dump(conf, f)
            sock = os.path.join(d, "docker.sock")
            dockerd = subprocess.Popen(ns.cmd(
                "dockerd", "--data-root", f"{d}/data", "--exec-root", f"{d}/exec",
                "--pidfile", f"{d}/docker.pid", "-H", f"unix://{sock}", "--iptables=false",
                "--ip6tables=false", "--storage-driver", "vfs", "--config-file",
                f"{d}/daemon.json"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            dk = ns.cmd("/usr/bin/docker", "-H", f"unix://{sock}")
            for _ in range(300):
                if subprocess.run(dk + ["version"], capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)
            subprocess.run(dk + ["load", "-i", archive], check=True, capture_output=True)

        def command(engine, r):
            if engine == "docker":
                return dk + ["run", "--rm", "--network", "none", "--runtime", r, IMAGE, "true"]
            # --runtime-flag takes name=value: pair the flags up.
            rf = []
            it = iter(flags[r])
            for k in it:
                rf += ["--runtime-flag", f"{k.lstrip('-')}={next(it)}"]
            return pm + ["--runtime", paths[r], *rf, "run", "--rm", "--network", "none",
                         *ULIMITS, IMAGE, "true"]

        times = {(e, r): [] for e in engines for r in runtimes}
        # One warm-up each, then interleaved runs.
        for i in range(a.n + 1):
            for e in engines:
                for r in runtimes:
                    t0 = time.monotonic()
                    p = subprocess.run(command(e, r), capture_output=True, text=True)
                    ms = (time.monotonic() - t0) * 1000
                    if p.returncode != 0:
                        sys.exit(f"{e} --runtime {r}: exit {p.returncode}: {p.stderr.strip()}")
                    if i > 0:
                        times[(e, r)].append(ms)
                    print(f"run {i}/{a.n} {e} {r}: {ms:.0f} ms", file=sys.stderr, flush=True)
        print(f"| engine | runtime | p50 ms | p90 ms | p50 ratio to runc |")
        print("|---|---|---:|---:|---:|")
        for e in engines:
            base = statistics.median(times[(e, "runc")]) if "runc" in runtimes else None
            for r in runtimes:
                v = sorted(times[(e, r)])
                p50 = statistics.median(v)
                p90 = v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]
                ratio = f"{p50 / base:.2f}" if base else "-"
                print(f"| {e} | {r} | {p50:.0f} | {p90:.0f} | {ratio} |")
    finally:
        if dockerd:
            dockerd.terminate()
            try:
                dockerd.wait(30)
            except subprocess.TimeoutExpired:
                dockerd.kill()
        ns.close()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
