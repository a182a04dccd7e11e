#!/usr/bin/env python3
"""What the VMM's jail costs at start: `hull bench --backends vm` phases with
the jail on (the default) and off (`HULL_NO_JAIL=1`), trials alternating in
one run (on, off, on, off, ...) so that load from other work on the machine
falls on both sides alike.

Each trial is one `hull bench --backends vm -n 1 --concurrency 1 --json F`
of `true` in a busybox root filesystem (Debian's busybox-static). Prints the
median of each phase over the trials of each side, the difference and the
ratio; nothing fails on noise. Needs root, hull's static agent (HULL_AGENT
or agent/build-static.sh) and the guest kernel (HULL_KERNEL or
guest-kernel/build.sh); on a host without hardware KVM run the whole script
inside tests/kvm-host/run.

    python3 tests/bench/jail.py [-n PAIRS] [--hull PATH] [--memory MIB]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PHASES = ["prepare", "create", "boot", "start", "first_output", "teardown", "total"]


def busybox_rootfs(root):
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp"]:
        os.makedirs(f"{root}/{d}", exist_ok=True)
    shutil.copy("/bin/busybox", f"{root}/bin/busybox")
    for a in ["sh", "true"]:
        os.symlink("busybox", f"{root}/bin/{a}")


def trial(hull, state, rootfs, memory, jail, out):
    env = dict(os.environ)
    if jail:
        env.pop("HULL_NO_JAIL", None)
    else:
        env["HULL_NO_JAIL"] = "1"
    subprocess.run(
        [hull, "--state-dir", state, "bench", "--backends", "vm", "-n", "1",
         "--concurrency", "1", "--memory", str(memory), "--json", out,
         "--rootfs", rootfs, "true"],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(out) as f:
        report = json.load(f)
    phases = report["backends"][0]["phases"]
    return {p: phases[p]["p50_ms"] for p in PHASES if p in phases}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=8, help="pairs of trials (on, off)")
    ap.add_argument("--hull", default=f"{REPO}/target/debug/hull")
    ap.add_argument("--memory", type=int, default=128)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="hull-jail-bench-")
    try:
        rootfs = f"{work}/rootfs"
        busybox_rootfs(rootfs)
        samples = {True: [], False: []}
        for i in range(args.n):
            for jail in (True, False):
                s = trial(args.hull, f"{work}/state", rootfs, args.memory, jail,
                          f"{work}/r.json")
                samples[jail].append(s)
                print(f"pair {i + 1}/{args.n} jail {'on ' if jail else 'off'}: "
                      + " ".join(f"{p}={v:.0f}" for p, v in s.items()), flush=True)
        print(f"\nmedians over {args.n} trials each, ms")
        print(f"{'phase':<14}{'jail on':>10}{'jail off':>10}{'on-off':>10}{'on/off':>8}")
        for p in PHASES:
            on = [s[p] for s in samples[True] if p in s]
            off = [s[p] for s in samples[False] if p in s]
            if not on or not off:
                continue
            a, b = statistics.median(on), statistics.median(off)
            print(f"{p:<14}{a:>10.1f}{b:>10.1f}{a - b:>+10.1f}{a / b if b else 0:>8.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
