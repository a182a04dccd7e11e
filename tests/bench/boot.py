#!/usr/bin/env python3
"""Boot benchmark: hull-vmm against QEMU's microvm, same kernel, same initramfs.

Each run starts the VMM, waits for the marker the guest's /init prints (time
to init), lets the guest idle for a moment to sample the VMM's memory, and
waits for the guest's reboot to end the VMM (time to exit). The VMM's own
memory is its RSS minus the guest RAM mapping's RSS (from /proc/PID/smaps).

Run it where /dev/kvm can boot a stock guest: directly on hardware KVM, or
here through the emulated KVM host:

    tests/kvm-host/run -- tests/bench/boot.py [-n RUNS]

Figures inside the emulated host are inflated (software-emulated CPU); only
the ratios between the two VMMs of one run mean anything.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = b"HULL-BENCH-INIT"
MEM_MIB = 128
CMDLINE = "console=ttyS0 reboot=k panic=-1 pci=off nomodules 8250.nr_uarts=1 " \
          "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd tsc=reliable " \
          "no_timer_check cryptomgr.notests quiet"


def initramfs(tmp, init=None):
    """A busybox initramfs whose /init is `init` (default: print the marker,
    idle a second, reboot)."""
    if init is None:
        init = ("#!/bin/busybox sh\n/bin/busybox echo %s\n/bin/busybox sleep 1\n"
                "/bin/busybox reboot -f\n" % MARKER.decode())
    root = os.path.join(tmp, "root")
    for d in ("bin", "proc", "sys", "dev"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    with open(os.path.join(root, "init"), "w") as f:
        f.write(init)
    os.chmod(os.path.join(root, "init"), 0o755)
    out = os.path.join(tmp, "initramfs.cpio")
    subprocess.run("cd %s && find . | cpio -o -H newc --quiet > %s" % (root, out),
                   shell=True, check=True)
    return out


def guest_rss_kib(pid, mem_mib):
    """(total RSS, RSS of the guest RAM mapping) in KiB."""
    total = guest = 0
    size = None
    try:
        with open("/proc/%d/smaps" % pid) as f:
            for line in f:
                parts = line.split()
                if len(parts) > 1 and parts[0] == "Size:":
                    size = int(parts[1])
                elif len(parts) > 1 and parts[0] == "Rss:":
                    rss = int(parts[1])
                    total += rss
                    if size is not None and size >= mem_mib * 1024:
                        guest += rss
    except OSError:
        pass
    return total, guest


def one_run(cmd, mem_mib):
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    t_init = None
    buf = b""
    while t_init is None:
        chunk = os.read(p.stdout.fileno(), 4096)
        if not chunk:
            break
        buf += chunk
        if MARKER in buf:
            t_init = time.monotonic() - start
    time.sleep(0.3)  # the guest idles (sleep 1) while we sample
    total, guest = guest_rss_kib(p.pid, mem_mib)
    p.stdout.read()
    try:
        rc = p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        raise RuntimeError("%s did not exit after the guest rebooted" % cmd[0])
    t_exit = time.monotonic() - start
    if t_init is None or rc != 0:
        raise RuntimeError("%s failed (exit %s), output: %r" % (cmd[0], rc, buf[-500:]))
    return t_init * 1000, t_exit * 1000, (total - guest) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=10, help="runs per VMM (default 10)")
    ap.add_argument("--kernel", default=os.environ.get("HULL_KERNEL") or
                    os.path.expanduser("~/.cache/hull/kernel/vmlinux"))
    ap.add_argument("--hull-vmm", default=os.path.join(REPO, "target/release/hull-vmm"))
    args = ap.parse_args()
    if not os.path.exists(args.hull_vmm):
        sys.exit("%s missing: cargo build --release -p hull-vmm" % args.hull_vmm)
    tmp = tempfile.mkdtemp()
    initrd = initramfs(tmp)
    vmms = {
        "hull-vmm": [args.hull_vmm, "--kernel", args.kernel, "--initrd", initrd,
                     "--mem", str(MEM_MIB), "--vcpus", "1"],
        "qemu-microvm": ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off",
                         "-enable-kvm", "-cpu", "host", "-m", str(MEM_MIB), "-smp", "1",
                         "-nodefaults", "-no-user-config", "-display", "none",
                         "-serial", "stdio", "-no-reboot", "-kernel", args.kernel,
                         "-initrd", initrd,
                         # microvm has no i8042: reboot by triple fault, which
                         # -no-reboot turns into an exit.
                         "-append", CMDLINE + " reboot=t"],
    }
    results = {}
    for i in range(args.n):
        for name, cmd in vmms.items():  # interleaved, so drift hits both
            results.setdefault(name, []).append(one_run(cmd, MEM_MIB))
    shutil.rmtree(tmp)
    med = {n: [statistics.median(r[k] for r in rs) for k in range(3)]
           for n, rs in results.items()}
    base = med["qemu-microvm"]
    print("boot benchmark: %d runs each, 1 vCPU, %d MiB, kernel %s" % (args.n, MEM_MIB, args.kernel))
    print("%-14s %14s %14s %16s" % ("vmm", "to init (ms)", "to exit (ms)", "VMM RSS (MiB)"))
    for n, m in med.items():
        print("%-14s %14.1f %14.1f %16.1f" % (n, m[0], m[1], m[2]))
    h = med["hull-vmm"]
    print("ratio hull/qemu %13.2f %14.2f %16.2f" % (h[0] / base[0], h[1] / base[1], h[2] / base[2]))


if __name__ == "__main__":
    main()
