#!/usr/bin/env python3
"""Disk benchmark: a guest's sequential read of a 256 MiB virtio-blk disk,
hull-vmm against QEMU's microvm (virtio-blk-device), same kernel, same
initramfs, same disk file.

The guest's /init reads /dev/vda end to end with `dd bs=1M` and prints the
time it took by /proc/uptime; MB/s is the disk size over that time. Runs
alternate between the VMMs; medians and the ratio are printed. A third arm,
hull-vmm --no-huge-pages, shows what guest RAM in 4 KiB pages costs.

    tests/kvm-host/run -- python3 -u tests/bench/disk.py [-n RUNS]

Inside the emulated KVM host the figures are far below hardware; only the
ratio of one run means something.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boot  # noqa: E402  (same directory: command line and paths)
import disk_common  # noqa: E402

DISK_MIB = 256
MEM_MIB = 256
INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs dev /dev
read a rest < /proc/uptime
n=$(/bin/busybox dd if=/dev/vda of=/dev/null bs=1M 2>&1 | /bin/busybox grep -c "^256+0 records in")
read b rest < /proc/uptime
/bin/busybox echo "DISK-READ $n $a $b"
/bin/busybox reboot -f
"""


def one_run(cmd, env):
    out = subprocess.run(cmd, capture_output=True, timeout=900, env=env)
    m = re.search(rb"DISK-READ 1 ([0-9.]+) ([0-9.]+)", out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError("%s failed or read less than the whole disk (exit %s): %r"
                           % (cmd[0], out.returncode, out.stdout[-400:]))
    secs = float(m.group(2)) - float(m.group(1))
    return DISK_MIB * 1.048576 / max(secs, 0.01)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=3, help="runs per VMM (default 3)")
    disk_common.add_vmm_arguments(ap)
    args = ap.parse_args()
    disk_common.require_hull_vmm(args)
    tmp = tempfile.mkdtemp()
    try:
        initrd = boot.initramfs(tmp, INIT)
        disk = disk_common.random_disk(tmp, DISK_MIB)
        vmms = {
            "hull-vmm": [args.hull_vmm, "--kernel", args.kernel, "--initrd", initrd,
                         "--mem", str(MEM_MIB), "--vcpus", "1", "--disk", disk + ",ro"],
            # Guest RAM in 4 KiB pages (hull-vmm --no-huge-pages), for scale.
            "hull-vmm-4k": [args.hull_vmm, "--kernel", args.kernel, "--initrd", initrd,
                            "--mem", str(MEM_MIB), "--vcpus", "1", "--disk", disk + ",ro",
                            "--no-huge-pages"],
            # acpi=off: QEMU then announces the virtio-mmio disk on the kernel
            # command line, as hull-vmm does (the guest kernel has no ACPI).
            "qemu-microvm": ["qemu-system-x86_64", "-M",
                             "microvm,x-option-roms=off,rtc=off,acpi=off",
                             "-enable-kvm", "-cpu", "host", "-m", str(MEM_MIB), "-smp", "1",
                             "-nodefaults", "-no-user-config", "-display", "none",
                             "-serial", "stdio", "-no-reboot", "-kernel", args.kernel,
                             "-initrd", initrd, "-append", boot.CMDLINE + " reboot=t",
                             "-drive", "file=%s,format=raw,if=none,id=d0,readonly=on" % disk,
                             "-device", "virtio-blk-device,drive=d0"],
        }
        # hull-vmm keeps guest RAM in 4 KiB pages where the CPU is
        # software-emulated (issue 19); forced here so that the first arm is
        # always the huge-page layout and the second the 4 KiB one.
        env = dict(os.environ, HULL_VMM_HUGE_PAGES="force")
        results = {}
        for _ in range(args.n):
            for name, cmd in vmms.items():  # interleaved, so drift hits both
                results.setdefault(name, []).append(one_run(cmd, env))
    finally:
        shutil.rmtree(tmp)
    med = {n: statistics.median(r) for n, r in results.items()}
    print("disk benchmark: guest sequential read of %d MiB, dd bs=1M, %d runs each, medians"
          % (DISK_MIB, args.n))
    for n, m in med.items():
        print("%-14s %10.1f MB/s" % (n, m))
    print("ratio hull/qemu %9.2f" % (med["hull-vmm"] / med["qemu-microvm"]))
    print("ratio hull-4k/qemu %6.2f" % (med["hull-vmm-4k"] / med["qemu-microvm"]))


if __name__ == "__main__":
    main()
