#!/usr/bin/env python3
"""Network benchmark: TCP throughput host->guest and guest->host (MB/s) and
1-byte request/response latency (p50/p99, microseconds) for hull-vmm's
virtio-net, QEMU microvm's virtio-net-device on the same tap with vhost off
(and with vhost on where /dev/vhost-net exists), and a network namespace
behind a veth (the ns backend's link), with the same peer program
(tests/support/net_probe.c) and the same guest kernel.

    tests/kvm-host/run -- python3 -u tests/bench/net.py [-n RUNS] [--exits]

It re-runs itself under `unshare --net`: the tap, the veth and their
addresses (10.99.0.0/24, 10.98.0.0/24) live and die in a network namespace
of its own. Arms run interleaved, RUNS times each; only the ratios of one
run mean anything inside the emulated KVM host. Both VMMs get the tap
itself (no bridge, no tc redirect): this compares devices, not hull's
whole container path. With --exits, one more boot of each VMM counts its
VM exits by reason and the interrupts it injected, for one leg each way.
"""
import argparse
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boot  # noqa: E402

INNER = "HULL_NET_BENCH_INNER"
PORT = 5001
TAP, TAP_HOST, TAP_GUEST = "hnb0", "10.99.0.1", "10.99.0.2"
VETH, VETH_PEER, VETH_HOST, VETH_NS = "hnv0", "hnv1", "10.98.0.1", "10.98.0.2"
MAC = "02:00:0a:63:00:02"
INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox ip link set lo up
/bin/busybox ip link set eth0 up
/bin/busybox ip addr add %s/24 dev eth0
/net_probe
/bin/busybox reboot -f
""" % TAP_GUEST


def ip(*args):
    r = subprocess.run(["ip"] + list(args), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("ip %s: %s" % (" ".join(args), r.stderr.strip()))


def connect(addr, deadline):
    while True:
        try:
            s = socket.create_connection((addr, PORT), timeout=5)
            s.settimeout(60)
            return s
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def upload(addr, secs):
    """host -> peer, MB/s: send for `secs`, then the peer's byte count."""
    s = connect(addr, time.monotonic() + 30)
    s.sendall(b"U")
    chunk = b"x" * (1 << 16)
    t = time.monotonic()
    end = t + secs
    while time.monotonic() < end:
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while len(got) < 8:
        b = s.recv(8 - len(got))
        if not b:
            raise ConnectionError("no byte count from the peer")
        got += b
    dt = time.monotonic() - t
    s.close()
    return struct.unpack(">Q", got)[0] / dt / 1e6


def download(addr, secs):
    """peer -> host, MB/s: the peer sends for `secs`."""
    s = connect(addr, time.monotonic() + 30)
    s.sendall(b"D" + struct.pack(">I", int(secs * 1000)))
    t = time.monotonic()
    total = 0
    while True:
        b = s.recv(1 << 16)
        if not b:
            break
        total += len(b)
    dt = time.monotonic() - t
    s.close()
    return total / dt / 1e6


def pingpong(addr, n):
    """1-byte round trips: (p50, p99) in microseconds."""
    s = connect(addr, time.monotonic() + 30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"P")
    rtts = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(b"p")
        if s.recv(1) != b"p":
            raise ConnectionError("ping-pong broke")
        rtts.append((time.perf_counter() - t) * 1e6)
    s.close()
    rtts.sort()
    return rtts[len(rtts) // 2], rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]


def measure(addr, args):
    # The first connection waits for the peer to listen (a guest boots).
    connect(addr, time.monotonic() + 300).close()
    up = upload(addr, args.secs)
    down = download(addr, args.secs)
    p50, p99 = pingpong(addr, args.pings)
    try:
        connect(addr, time.monotonic() + 10).sendall(b"Q")
    except OSError:
        pass
    return up, down, p50, p99


class NetCounter(boot.ExitCounter):
    """VM exits by reason and interrupts injected by GSI (kvm:kvm_set_irq:
    irqfd writes, one per interrupt the device raises)."""

    HISTS = {"kvm_exit": "exit_reason", "kvm_set_irq": "gsi"}


def counted(addr, args, name):
    """One leg each way with the exits and interrupts counted."""
    counter = NetCounter()
    connect(addr, time.monotonic() + 300).close()
    for leg, fn in (("host->guest", upload), ("guest->host", download)):
        counter.start()
        try:
            mb = fn(addr, args.secs)
        finally:
            counts = counter.stop()
        for event, c in counts.items():
            print("%s %s %.1f MB/s, %s: %d in all; %s" % (
                name, leg, mb, event, sum(c.values()),
                ", ".join("%s %d" % kv for kv in c.most_common(8))))
    try:
        connect(addr, time.monotonic() + 10).sendall(b"Q")
    except OSError:
        pass


def run_vmm(cmd, args, count_as=None):
    # A counted hull-vmm also logs its device's own counts (virtio-net's
    # debug lines: frames, tap reads and used entries per interrupt, kicks).
    log = None
    env = None
    if count_as and count_as.startswith("hull-vmm"):
        log = tempfile.TemporaryFile()
        env = dict(os.environ, RUST_LOG="hull_vmm::devices::virtio::net=debug")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env,
                         stderr=log if log else subprocess.DEVNULL)
    try:
        if count_as:
            return counted(TAP_GUEST, args, count_as)
        return measure(TAP_GUEST, args)
    finally:
        boot.reap(p, 120)
        if log:
            log.seek(0)
            for line in log.read().decode(errors="replace").splitlines():
                if "virtio-net over" in line:
                    print("%s device: %s" % (count_as, line[line.index("virtio-net over"):]))
            log.close()


def run_ns(probe, args):
    """The probe in a network namespace of its own behind a veth."""
    script = ("while ! ip link show %s >/dev/null 2>&1; do sleep 0.05; done; "
              "ip link set lo up; ip addr add %s/24 dev %s; ip link set %s up; exec %s"
              % (VETH_PEER, VETH_NS, VETH_PEER, VETH_PEER, probe))
    p = subprocess.Popen(["unshare", "--net", "--", "sh", "-c", script],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ip("link", "add", VETH, "type", "veth", "peer", "name", VETH_PEER)
        ip("link", "set", VETH_PEER, "netns", str(p.pid))
        ip("addr", "add", VETH_HOST + "/24", "dev", VETH)
        ip("link", "set", VETH, "up")
        return measure(VETH_NS, args)
    finally:
        boot.reap(p, 30)
        subprocess.run(["ip", "link", "del", VETH], capture_output=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=3, help="runs per arm (default 3)")
    ap.add_argument("--secs", type=float, default=3.0, help="seconds per throughput leg")
    ap.add_argument("--pings", type=int, default=2000, help="round trips per latency leg")
    ap.add_argument("--kernel", default=os.environ.get("HULL_KERNEL") or
                    os.path.expanduser("~/.cache/hull/kernel/vmlinux"))
    ap.add_argument("--hull-vmm", default=os.path.join(boot.REPO, "target/release/hull-vmm"))
    ap.add_argument("--arms", default="hull-vmm,qemu-vhost-off,qemu-vhost-on,ns-veth",
                    help="which arms to run (comma-separated; default all)")
    ap.add_argument("--hull-vmm-base", metavar="PATH",
                    help="another hull-vmm build (before a change) as arm hull-vmm-base, "
                    "interleaved with the others")
    ap.add_argument("--exits", action="store_true",
                    help="after the runs, one more boot of each VMM arm with its VM exits by "
                    "reason and its interrupts (kvm_set_irq by GSI) counted for a leg each way")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("net.py needs root (a network namespace, a tap, a veth)")
    if not os.path.exists(args.hull_vmm):
        sys.exit("%s missing: cargo build --release -p hull-vmm" % args.hull_vmm)
    if os.environ.get(INNER) is None:
        env = dict(os.environ, **{INNER: "1"})
        cmd = ["unshare", "--net", "--", sys.executable, "-u"] + sys.argv
        sys.exit(subprocess.run(cmd, env=env).returncode)
    ip("link", "set", "lo", "up")
    ip("tuntap", "add", "dev", TAP, "mode", "tap")
    ip("addr", "add", TAP_HOST + "/24", "dev", TAP)
    ip("link", "set", TAP, "up")
    tmp = tempfile.mkdtemp()
    try:
        probe = os.path.join(tmp, "net_probe")
        subprocess.run(["gcc", "-static", "-O2", "-o", probe,
                        os.path.join(boot.REPO, "tests/support/net_probe.c")], check=True)
        initrd = boot.initramfs(tmp, INIT, files=[probe])

        def qemu(vhost):
            return ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off,acpi=off",
                    "-enable-kvm", "-cpu", "host", "-m", "256", "-smp", "1",
                    "-nodefaults", "-no-user-config", "-display", "none",
                    "-serial", "none", "-no-reboot", "-kernel", args.kernel,
                    "-initrd", initrd, "-append", boot.CMDLINE + " reboot=t",
                    "-netdev", "tap,id=n0,ifname=%s,script=no,downscript=no,vhost=%s"
                    % (TAP, vhost),
                    "-device", "virtio-net-device,netdev=n0,mac=%s" % MAC]
        def hull_vmm(binary):
            return [binary, "--kernel", args.kernel, "--initrd", initrd, "--mem", "256",
                    "--net", "tap=%s,mac=%s" % (TAP, MAC)]

        vmms = {"hull-vmm": hull_vmm(args.hull_vmm), "qemu-vhost-off": qemu("off")}
        if args.hull_vmm_base:
            vmms["hull-vmm-base"] = hull_vmm(args.hull_vmm_base)
        vhost = os.path.exists("/dev/vhost-net")
        if vhost:
            vmms["qemu-vhost-on"] = qemu("on")
        wanted = args.arms.split(",") + ["hull-vmm-base"]
        vmms = {n: c for n, c in vmms.items() if n in wanted}
        arms = {n: (lambda c=c: run_vmm(c, args)) for n, c in vmms.items()}
        if "ns-veth" in wanted:
            arms["ns-veth"] = lambda: run_ns(probe, args)
        results = {}
        for _ in range(args.n):
            for name, arm in arms.items():
                results.setdefault(name, []).append(arm())
        if args.exits:
            for name, cmd in vmms.items():
                run_vmm(cmd, args, count_as=name)
    finally:
        shutil.rmtree(tmp)
    print("network benchmark: %d runs each, %.0f s per throughput leg, %d round trips, medians"
          % (args.n, args.secs, args.pings))
    if not vhost and "qemu-vhost-on" in wanted:
        print("(no /dev/vhost-net here: QEMU with vhost on left out)")
    med = {n: tuple(statistics.median(r[i] for r in rs) for i in range(4))
           for n, rs in results.items()}
    print("%-15s %14s %14s %10s %10s" % ("", "host->guest", "guest->host", "p50 us", "p99 us"))
    for n, m in med.items():
        print("%-15s %9.1f MB/s %9.1f MB/s %10.0f %10.0f" % ((n,) + m))
    print("every run (host->guest MB/s, guest->host MB/s, p50 us, p99 us):")
    for n, rs in results.items():
        print("%-15s %s" % (n, "  ".join("%.1f/%.1f/%.0f/%.0f" % r for r in rs)))
    h = med.get("hull-vmm")
    for base in [b for b in ("hull-vmm-base", "qemu-vhost-off", "qemu-vhost-on", "ns-veth")
                 if h and b in med]:
        q = med[base]
        print("hull-vmm/%-14s throughput %5.2fx %5.2fx   latency p50 %5.2fx p99 %5.2fx"
              % (base, h[0] / q[0], h[1] / q[1], h[2] / q[2], h[3] / q[3]))


if __name__ == "__main__":
    main()
