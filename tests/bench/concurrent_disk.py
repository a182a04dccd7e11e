#!/usr/bin/env python3
"""Concurrent bare boots: N hull-vmm processes at once, each guest reading a
small read-only virtio-blk disk end to end, then rebooting.

This is the load that wedged the emulated KVM host (issue 19) when guest RAM
was advised for huge pages. It prints how long the N boots took, whether all
of them succeeded, the host's transparent huge page settings and how the
THP and compaction counters in /proc/vmstat moved during the run.

    tests/kvm-host/run -- python3 -u tests/bench/concurrent_disk.py -n 8 [--no-huge-pages]

--trace FILE appends a vmstat sample every second while the boots run (a
share of the outer host survives a wedge of the emulated one).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boot  # noqa: E402  (same directory: command line and paths)
import disk_common  # noqa: E402

THP = "/sys/kernel/mm/transparent_hugepage"
COUNTERS = ("thp_fault_alloc", "thp_fault_fallback", "thp_collapse_alloc",
            "compact_stall", "compact_fail", "compact_success",
            "compact_migrate_scanned", "compact_free_scanned", "compact_isolated",
            "pgmigrate_success", "thp_split_pmd", "nr_anon_transparent_hugepages")


def init_script(disk_mib):
    return """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
n=$(/bin/busybox dd if=/dev/vda of=/dev/null bs=1M 2>&1 | /bin/busybox grep -c "^%d+0 records in")
/bin/busybox echo "DISK-READ $n"
/bin/busybox reboot -f
""" % disk_mib


def vmstat():
    out = {}
    with open("/proc/vmstat") as f:
        for line in f:
            k, v = line.split()
            out[k] = int(v)
    return out


def thp_settings():
    out = {}
    for name in ("enabled", "defrag", "khugepaged/defrag", "khugepaged/pages_to_scan",
                 "khugepaged/scan_sleep_millisecs"):
        try:
            with open(os.path.join(THP, name)) as f:
                out[name] = f.read().strip()
        except OSError:
            out[name] = "?"
    return out


def meminfo():
    want = ("MemTotal", "MemFree", "MemAvailable", "AnonHugePages")
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            if k in want:
                out[k] = int(v.split()[0]) // 1024
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=8, help="VMMs at once (default 8)")
    ap.add_argument("--mem", type=int, default=256, help="guest MiB (default 256)")
    ap.add_argument("--disk-mib", type=int, default=8, help="disk size (default 8)")
    ap.add_argument("--no-huge-pages", action="store_true")
    ap.add_argument("--qemu", action="store_true",
                    help="QEMU microvm instead of hull-vmm (its guest RAM is 2 MiB-aligned "
                         "and advised for huge pages too)")
    ap.add_argument("--vmm-arg", action="append", default=[],
                    help="another hull-vmm argument (repeatable)")
    ap.add_argument("--timeout", type=int, default=600)
    ap.add_argument("--trace", help="append vmstat samples to this file")
    disk_common.add_vmm_arguments(ap)
    args = ap.parse_args()
    disk_common.require_hull_vmm(args)
    tmp = tempfile.mkdtemp()
    initrd = boot.initramfs(tmp, init_script(args.disk_mib))
    disk = disk_common.random_disk(tmp, args.disk_mib)
    cmd = [args.hull_vmm, "--kernel", args.kernel, "--initrd", initrd,
           "--mem", str(args.mem), "--vcpus", "1", "--disk", disk + ",ro"]
    if args.no_huge_pages:
        cmd.append("--no-huge-pages")
    if args.qemu:
        # As tests/bench/disk.py runs it: virtio-mmio disk, reboot ends it.
        cmd = ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off,acpi=off",
               "-enable-kvm", "-cpu", "host", "-m", str(args.mem), "-smp", "1",
               "-nodefaults", "-no-user-config", "-display", "none",
               "-serial", "stdio", "-no-reboot", "-kernel", args.kernel,
               "-initrd", initrd, "-append", boot.CMDLINE + " reboot=t",
               "-drive", "file=%s,format=raw,if=none,id=d0,readonly=on" % disk,
               "-device", "virtio-blk-device,drive=d0"]
    cmd += args.vmm_arg
    print("thp:", thp_settings())
    print("memory (MiB):", meminfo())
    print("command:", " ".join(cmd))
    sys.stdout.flush()

    stop = threading.Event()

    def sampler():
        t0 = time.monotonic()
        with open(args.trace, "a") as f:
            while not stop.is_set():
                v = vmstat()
                f.write("%.1f %s %s\n" % (time.monotonic() - t0, meminfo(),
                                          " ".join("%s=%d" % (k, v.get(k, 0)) for k in COUNTERS)))
                f.flush()
                os.fsync(f.fileno())
                time.sleep(1)

    if args.trace:
        threading.Thread(target=sampler, daemon=True).start()
    before = vmstat()
    t0 = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for _ in range(args.n)]
    ok = 0
    for p in procs:
        try:
            out, _ = p.communicate(timeout=max(1, args.timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        if p.returncode == 0 and b"DISK-READ 1" in out:
            ok += 1
        else:
            print("failed (exit %s): %r" % (p.returncode, out[-300:]))
    secs = time.monotonic() - t0
    stop.set()
    after = vmstat()
    print("%d of %d succeeded in %.1f s" % (ok, args.n, secs))
    print("vmstat deltas:", " ".join("%s=%+d" % (k, after.get(k, 0) - before.get(k, 0))
                                      for k in COUNTERS))
    subprocess.run(["rm", "-rf", tmp])
    sys.exit(0 if ok == args.n else 1)


if __name__ == "__main__":
    main()
