#!/usr/bin/env python3
"""File system benchmark of volumes: a sequential write then read of 256 MiB,
and a metadata workload (create, stat and unlink 10 000 small files), timed
inside the container, on:

  ns-bind     --isolation ns, a host directory bound at /data
  vm-volume   --isolation vm, the same host directory over virtio-fs
  vm-overlay  --isolation vm, the microVM's own overlay root (its upper is a
              tmpfs in guest RAM: an upper bound, not a disk)

Each figure is the median of N runs; ratios are against ns-bind. The write
ends with fsync (conv=fsync); before the read the guest drops its page cache
(vm: the guest's own cache; ns: the host's cache is not dropped, as that
would disturb the machine: the ns read is a page-cache read).

QEMU microvm with virtiofsd is not measured: no virtiofsd is installed on
these machines (Debian 12 does not package it).

Run by hand, not in CI, where /dev/kvm can boot a stock guest: directly on
hardware KVM, or here through the emulated KVM host:

    cargo build -p hull -p hull-vmm && agent/build-static.sh
    HULL_KERNEL=$(guest-kernel/build.sh | tail -n1) \\
        tests/kvm-host/run -- tests/bench/fs.py [-n RUNS] [--mib 256] [--files 10000]

Figures inside the emulated host are inflated; only ratios within one run
mean anything.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Timed phases, each printed as "NAME MILLISECONDS" by the container (busybox
# date has no %N: /proc/uptime, 10 ms resolution).
SCRIPT = r"""
set -e
cd {dir}
t() {{ read up rest < /proc/uptime; echo ${{up%%.*}}${{up#*.}}0; }}
a=$(t); dd if=/dev/zero of=big bs=1M count={mib} conv=fsync 2>/tmp/dd.err || {{ cat /tmp/dd.err >&2; exit 1; }}; b=$(t)
echo write $((b-a))
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
a=$(t); dd if=big of=/dev/null bs=1M 2>/tmp/dd.err || {{ cat /tmp/dd.err >&2; exit 1; }}; b=$(t)
echo read $((b-a))
rm -f big
mkdir small
a=$(t); i=0; while [ $i -lt {files} ]; do : > small/f$i; i=$((i+1)); done; b=$(t)
echo create $((b-a))
a=$(t); ls -l small > /dev/null; b=$(t)
echo stat $((b-a))
a=$(t); rm -rf small; b=$(t)
echo unlink $((b-a))
"""


def hull():
    for d in ("release", "debug"):
        p = os.path.join(REPO, "target", d, "hull")
        if os.path.exists(p):
            return p
    sys.exit("hull is not built: cargo build -p hull -p hull-vmm")


def busybox_rootfs(root):
    os.makedirs(os.path.join(root, "bin"))
    for d in ("etc", "proc", "sys", "dev", "tmp", "root", "work"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    for applet in subprocess.run(["/bin/busybox", "--list"], capture_output=True,
                                 text=True, check=True).stdout.split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", applet))
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\n")


def one(hull_bin, state, rootfs, iso, flags, workdir, mib, files):
    cmd = [hull_bin, "--state-dir", state, "run", "--rm", "--isolation", iso,
           "--memory", "1024", "--rootfs", rootfs] + flags + \
          ["sh", "-c", SCRIPT.format(dir=workdir, mib=mib, files=files)]
    # Guest RAM in huge pages even in the emulated KVM host (README,
    # "Devices"), as disk.py measures: the 4 KiB default there emulates
    # every nested page walk, which would swamp what is measured here.
    env = dict(os.environ, HULL_VMM_HUGE_PAGES="force")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit("%s %s failed (%d): %s %s" % (iso, flags, out.returncode, out.stdout.strip(),
                                             out.stderr.strip()))
    return {k: int(v) / 1e3 for k, v in (l.split() for l in out.stdout.split("\n") if l.strip())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=10000)
    args = ap.parse_args()
    hull_bin = hull()
    tmp = tempfile.mkdtemp(prefix="hfs")
    try:
        rootfs = os.path.join(tmp, "rootfs")
        busybox_rootfs(rootfs)
        vol = os.path.join(tmp, "vol")
        os.makedirs(vol)
        state = os.path.join(tmp, "s")
        targets = [
            ("ns-bind", "ns", ["-v", vol + ":/data"], "/data"),
            ("vm-volume", "vm", ["-v", vol + ":/data"], "/data"),
            ("vm-overlay", "vm", [], "/work"),
        ]
        runs = {name: [] for name, *_ in targets}
        # Interleaved, so load drift hits every target alike.
        for _ in range(args.n):
            for name, iso, flags, wd in targets:
                runs[name].append(one(hull_bin, state, rootfs, iso, flags, wd,
                                      args.mib, args.files))
        med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for name, rs in runs.items()}
        base = med["ns-bind"]
        print("%-11s %12s %12s %10s %10s %10s" %
              ("target", "write MiB/s", "read MiB/s", "create s", "stat s", "unlink s"))
        for name, m in med.items():
            print("%-11s %12.1f %12.1f %10.2f %10.2f %10.2f" %
                  (name, args.mib / m["write"], args.mib / m["read"], m["create"],
                   m["stat"], m["unlink"]))
        print("ratios to ns-bind (time, >1 is slower):")
        for name, m in med.items():
            print("%-11s " % name + " ".join("%s %.2fx" % (k, m[k] / base[k]) for k in m))
        print(json.dumps({"runs": args.n, "mib": args.mib, "files": args.files,
                          "median_s": med}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
