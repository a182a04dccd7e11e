#!/usr/bin/env python3
"""vsock benchmark: 64 MiB each way between a host program and a guest
program, hull-vmm (virtio-vsock, host side a Unix socket) against QEMU
microvm (vhost-vsock-device, host side AF_VSOCK), same kernel, same guest
program (tests/support/vsock_probe.c).

    tests/kvm-host/run -- python3 -u tests/bench/vsock.py [-n RUNS]

The emulated KVM host loads vhost_vsock for QEMU. Only the ratio of one run
means anything there. A third arm runs hull-vmm --no-huge-pages, for scale.
"""
import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boot  # noqa: E402

SIZE = 64 << 20
PORT = 1024
CID = 3
INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/vsock_probe stream %d %d
/bin/busybox reboot -f
""" % (PORT, SIZE)


def build_probe(tmp):
    out = os.path.join(tmp, "vsock_probe")
    src = os.path.join(boot.REPO, "tests/support/vsock_probe.c")
    subprocess.run(["gcc", "-static", "-O2", "-o", out, src], check=True)
    return out


def connect_hull(uds):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(uds)
    s.sendall(b"CONNECT %d\n" % PORT)
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            raise ConnectionError("closed")
        line += b
    if not line.startswith(b"OK "):
        raise ConnectionError(line)
    return s


def connect_vhost(_):
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.connect((CID, PORT))
    return s


def transfer(connect, target, deadline):
    """Both directions' MB/s through one connection, once the guest listens."""
    while True:
        try:
            s = connect(target)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    chunk = os.urandom(1 << 16)
    t = time.monotonic()
    for _ in range(SIZE // len(chunk)):
        s.sendall(chunk)
    up = time.monotonic() - t
    t = time.monotonic()
    got = 0
    while got < SIZE:
        b = s.recv(1 << 16)
        if not b:
            raise ConnectionError("guest closed after %d bytes" % got)
        got += len(b)
    down = time.monotonic() - t
    s.close()
    mb = SIZE / 1e6
    return mb / up, mb / down


def one_run(cmd, connect, target):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return transfer(connect, target, time.monotonic() + 300)
    finally:
        boot.reap(p, 120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--kernel", default=os.environ.get("HULL_KERNEL") or
                    os.path.expanduser("~/.cache/hull/kernel/vmlinux"))
    ap.add_argument("--hull-vmm", default=os.path.join(boot.REPO, "target/release/hull-vmm"))
    args = ap.parse_args()
    if not os.path.exists("/dev/vhost-vsock"):
        sys.exit("/dev/vhost-vsock is missing (modprobe vhost_vsock) for QEMU's side")
    tmp = tempfile.mkdtemp()
    try:
        probe = build_probe(tmp)
        initrd = boot.initramfs(tmp, INIT, files=[probe])
        uds = os.path.join(tmp, "v.sock")
        vmms = {
            "hull-vmm": ([args.hull_vmm, "--kernel", args.kernel, "--initrd", initrd,
                          "--mem", "256", "--vsock-cid", str(CID), "--vsock-uds", uds],
                         connect_hull, uds),
            # Guest RAM in 4 KiB pages (hull-vmm --no-huge-pages), for scale.
            "hull-vmm-4k": ([args.hull_vmm, "--kernel", args.kernel, "--initrd", initrd,
                             "--mem", "256", "--vsock-cid", str(CID), "--vsock-uds", uds,
                             "--no-huge-pages"],
                            connect_hull, uds),
            "qemu-microvm": (["qemu-system-x86_64", "-M",
                              "microvm,x-option-roms=off,rtc=off,acpi=off",
                              "-enable-kvm", "-cpu", "host", "-m", "256", "-smp", "1",
                              "-nodefaults", "-no-user-config", "-display", "none",
                              "-serial", "none", "-no-reboot", "-kernel", args.kernel,
                              "-initrd", initrd, "-append", boot.CMDLINE + " reboot=t",
                              "-device", "vhost-vsock-device,guest-cid=%d" % CID],
                             connect_vhost, None),
        }
        results = {}
        for _ in range(args.n):
            for name, (cmd, connect, target) in vmms.items():
                results.setdefault(name, []).append(one_run(cmd, connect, target))
    finally:
        shutil.rmtree(tmp)
    print("vsock benchmark: 64 MiB each way, %d runs each, medians (MB/s)" % args.n)
    med = {}
    for n, rs in results.items():
        med[n] = (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
        print("%-15s host->guest %8.1f   guest->host %8.1f" % (n, med[n][0], med[n][1]))
    h, q = med["hull-vmm"], med["qemu-microvm"]
    print("ratio hull/qemu  host->guest %6.2f   guest->host %6.2f" % (h[0] / q[0], h[1] / q[1]))


if __name__ == "__main__":
    main()
