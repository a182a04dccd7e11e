#!/usr/bin/env python3
"""Boot benchmark: hull-vmm against QEMU's microvm and, given a binary,
Firecracker; same kernel, same initramfs, same command line, 1 vCPU, 128 MiB.

Each run starts the VMM, waits for the marker the guest's /init prints (time
to init), lets the guest idle for a moment to sample the VMM's memory, and
waits for the guest's reboot to end the VMM (time to exit). The VMM's own
memory is its RSS minus the guest RAM mapping's RSS (from /proc/PID/smaps).
Runs are interleaved (one of each VMM per round) so drift hits all of them.

Run it where /dev/kvm can boot a stock guest: directly on hardware KVM, or
here through the emulated KVM host:

    tests/kvm-host/run -- python3 -u tests/bench/boot.py [-n RUNS] \\
        [--firecracker PATH] [--vmms hull-vmm,firecracker] [--restore [--hull-devices]]

(a Firecracker binary outside the repository needs --share DIR on the
runner so the emulated host sees it).

Figures inside the emulated host are inflated (software-emulated CPU); only
the ratios between the VMMs of one run mean anything.

Finding where the time goes:
  --dmesg DIR   /init also prints the kernel log (printk times) after the
                marker; the last run's console of each VMM goes to DIR/VMM.log
  --exits       counts the guest's VM exits by reason for one run of each VMM
                (the kvm:kvm_exit tracepoint's histogram, needs tracefs)
  --extra ARGS  appended to every VMM's kernel command line (initcall_debug)

Restore instead of cold boot (--restore): each VMM first boots the guest
once to a snapshot point and saves it (hull-vmm --snapshot-at-ready, which
pauses at the guest's "hull-agent: ready" console line; Firecracker through
its API: PATCH /vm Paused, PUT /snapshot/create, Full), both to the
emulated host's tmpfs. Then every run starts a fresh VMM from that snapshot
(hull-vmm --restore DIR; Firecracker --api-sock, PUT /snapshot/load with
resume_vm) and times the VMM's start to the first console line the resumed
guest prints (its /init loops printing a marker after the ready line): the
same point for both. Firecracker's figure includes its API round trip, as
every Firecracker user's does.
"""
import argparse
import collections
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = b"HULL-BENCH-INIT"
# What a resumed guest prints, over and over (restore mode).
RESUMED = b"HULL-BENCH-RESUMED"
# hull-vmm's snapshot point (hull_vmm::snapshot::SNAPSHOT_LINE).
READY_LINE = "hull-agent: ready"
MEM_MIB = 128
# hull-vmm always starts its guest's command line with these words
# (vmm/src/config.rs DEFAULT_CMDLINE): the other VMMs get the same ones.
CMDLINE = "console=ttyS0 reboot=k panic=-1 pci=off nomodules 8250.nr_uarts=1 " \
          "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd tsc=reliable " \
          "no_timer_check cryptomgr.notests quiet"
TRACEFS = "/sys/kernel/tracing"


def initramfs(tmp, init=None, dmesg=False, files=(), restore=False):
    """A busybox initramfs whose /init is `init`, with `files` (host paths)
    copied to its root. By default /init prints the marker (and with `dmesg`
    the kernel log), idles a second and reboots; with `restore`, it prints
    the ready line after the marker and then the RESUMED marker in a loop
    (the shell's own echo: no fork), never ending."""
    show = "/bin/busybox dmesg\n" if dmesg else ""
    if init is None and restore:
        init = ("#!/bin/busybox sh\n/bin/busybox echo %s\n/bin/busybox echo %s\n"
                "while :; do echo %s; done\n" % (MARKER.decode(), READY_LINE, RESUMED.decode()))
    elif init is None:
        init = ("#!/bin/busybox sh\n/bin/busybox echo %s\n%s/bin/busybox sleep 1\n"
                "/bin/busybox reboot -f\n" % (MARKER.decode(), show))
    root = os.path.join(tmp, "root")
    for d in ("bin", "proc", "sys", "dev"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    for f in files:
        shutil.copy(f, root)
    with open(os.path.join(root, "init"), "w") as f:
        f.write(init)
    os.chmod(os.path.join(root, "init"), 0o755)
    out = os.path.join(tmp, "initramfs.cpio")
    subprocess.run("cd %s && find . | cpio -o -H newc --quiet > %s" % (root, out),
                   shell=True, check=True)
    return out


def reap(p, timeout):
    """Waits up to `timeout` s for process `p` to end, then kills it."""
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


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


def reap(p, timeout=120):
    """Waits for `p` (at most `timeout` s); returns its exit code and its
    resource usage (minor page faults, CPU time: the guest's included)."""
    end = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return p.returncode, usage
        if time.monotonic() > end:
            raise subprocess.TimeoutExpired(p.args, timeout)
        time.sleep(0.005)


def one_run(cmd, mem_mib):
    """(ms to init, ms to exit, VMM MiB outside guest RAM, minor faults,
    CPU ms, console bytes)."""
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
    buf += p.stdout.read()
    try:
        rc, usage = reap(p)
    except subprocess.TimeoutExpired:
        p.kill()
        raise RuntimeError("%s did not exit after the guest rebooted" % cmd[0])
    t_exit = time.monotonic() - start
    if t_init is None or rc != 0:
        raise RuntimeError("%s failed (exit %s), output: %r" % (cmd[0], rc, buf[-500:]))
    cpu = (usage.ru_utime + usage.ru_stime) * 1000
    return t_init * 1000, t_exit * 1000, (total - guest) / 1024, usage.ru_minflt, cpu, buf


def firecracker_cmd(binary, tmp, kernel, initrd, cmdline):
    """Firecracker without its API socket, configured by a file. It adds
    `pci=off` itself, so the shared command line goes without it."""
    args = " ".join(w for w in cmdline.split() if w != "pci=off")
    config = {
        "boot-source": {"kernel_image_path": kernel, "initrd_path": initrd,
                        "boot_args": args},
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": MEM_MIB, "smt": False},
    }
    path = os.path.join(tmp, "firecracker.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return [binary, "--no-api", "--config-file", path, "--level", "Error"]


class Console:
    """A VMM's console (its stdout), read on a thread so the VMM never
    blocks on a full pipe; records when `marker` first appeared."""

    def __init__(self, proc, start, marker):
        import threading
        self.buf = b""
        self.seen = None
        self._start = start
        self._marker = marker
        self._event = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _read(self, pipe):
        while True:
            chunk = os.read(pipe.fileno(), 65536)
            if not chunk:
                break
            if self.seen is None:
                self.buf += chunk
                if self._marker in self.buf:
                    self.seen = time.monotonic() - self._start
                    self._event.set()
        self._event.set()

    def wait(self, timeout=120):
        """Seconds from start to the marker, or None if the VMM ended first."""
        self._event.wait(timeout)
        return self.seen


def api(sock_path, method, path, body, timeout=60):
    """One request to Firecracker's API on its Unix socket; returns the
    status code (and raises with the body for anything but 2xx)."""
    data = json.dumps(body).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        s.sendall(b"%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (method.encode(), path.encode(), len(data), data))
        resp = b""
        while b"\r\n\r\n" not in resp:
            chunk = s.recv(4096)
            if not chunk:
                break
            resp += chunk
        head, _, rest = resp.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        m = re.search(rb"(?i)content-length:\s*(\d+)", head)
        want = int(m.group(1)) if m else 0
        while len(rest) < want:
            chunk = s.recv(4096)
            if not chunk:
                break
            rest += chunk
    if status // 100 != 2:
        raise RuntimeError("firecracker %s %s: %d %s" % (method, path, status, rest.decode(errors="replace")))
    return status


def wait_for_socket(path, proc, timeout=60):
    """Polls until the API socket accepts a connection (every 0.5 ms)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError("firecracker exited (%s) before its API came up" % proc.returncode)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(path)
            return
        except OSError:
            time.sleep(0.0005)
    raise RuntimeError("firecracker's API socket %s never came up" % path)


def stop(proc):
    """Kills `proc`; returns its resource usage."""
    proc.kill()
    return reap(proc)[1]


def hull_devices(snap_dir, on):
    """With --hull-devices, the devices of one of hull's templates: an
    entropy device, vsock (its socket beside the snapshot, fresh each run)
    and 16 empty disk slots."""
    if not on:
        return []
    sock = os.path.join(os.path.dirname(snap_dir), os.path.basename(snap_dir) + ".vsock")
    if os.path.exists(sock):
        os.unlink(sock)
    return ["--rng", "--disk-slots", "16", "--vsock-cid", "3", "--vsock-uds", sock]


def hull_snapshot(hull_vmm, kernel, initrd, extra, snap_dir, devices=False):
    """Boots to the ready line and saves a snapshot in `snap_dir`."""
    cmd = [hull_vmm, "--kernel", kernel, "--initrd", initrd, "--mem", str(MEM_MIB),
           "--vcpus", "1", "--snapshot-at-ready", snap_dir, "--serial", "none"] + \
          (["--cmdline", extra] if extra else []) + hull_devices(snap_dir, devices)
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    if r.returncode != 0:
        raise RuntimeError("hull-vmm --snapshot-at-ready failed (%d): %s" % (r.returncode, r.stderr.decode()[-500:]))


def hull_restore_run(hull_vmm, snap_dir, devices=False):
    """(ms from hull-vmm's start to the resumed guest's first marker, None,
    its resource usage once killed)."""
    dev = hull_devices(snap_dir, devices)
    start = time.monotonic()
    p = subprocess.Popen([hull_vmm, "--restore", snap_dir] + dev, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    con = Console(p, start, RESUMED)
    seen = con.wait()
    usage = stop(p)
    if seen is None:
        raise RuntimeError("hull-vmm --restore: no resumed guest: %s" % p.stderr.read().decode()[-500:])
    return seen * 1000, None, usage


def firecracker_snapshot(binary, config, tmp, snap, mem):
    """Boots Firecracker to the ready line, pauses it and saves a full
    snapshot (`snap` state, `mem` memory)."""
    sock = os.path.join(tmp, "fc-snap.sock")
    p = subprocess.Popen([binary, "--api-sock", sock, "--config-file", config, "--level", "Error"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        con = Console(p, time.monotonic(), READY_LINE.encode())
        if con.wait() is None:
            raise RuntimeError("firecracker ended before the guest's ready line")
        wait_for_socket(sock, p)
        api(sock, "PATCH", "/vm", {"state": "Paused"})
        api(sock, "PUT", "/snapshot/create", {"snapshot_type": "Full", "snapshot_path": snap,
                                              "mem_file_path": mem})
    finally:
        stop(p)
        if os.path.exists(sock):
            os.unlink(sock)


def firecracker_restore_run(binary, tmp, snap, mem):
    """(ms from Firecracker's start to the resumed guest's first marker,
    ms to the end of its PUT /snapshot/load, its resource usage)."""
    sock = os.path.join(tmp, "fc-restore.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    start = time.monotonic()
    p = subprocess.Popen([binary, "--api-sock", sock, "--level", "Error"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        con = Console(p, start, RESUMED)
        wait_for_socket(sock, p)
        api(sock, "PUT", "/snapshot/load", {"snapshot_path": snap, "resume_vm": True,
                                            "mem_backend": {"backend_type": "File",
                                                            "backend_path": mem}})
        loaded = time.monotonic() - start
        seen = con.wait()
    finally:
        usage = stop(p)
    if seen is None:
        raise RuntimeError("firecracker: no resumed guest after /snapshot/load")
    return seen * 1000, loaded * 1000, usage


def spread(values):
    """'min-max, IQR lo-hi' of `values`."""
    v = sorted(values)
    if len(v) < 4:
        return "min %.0f max %.0f" % (v[0], v[-1])
    q = statistics.quantiles(v, n=4)
    return "min %.0f, IQR %.0f-%.0f, max %.0f" % (v[0], q[0], q[2], v[-1])


def restore_bench(args, tmp, kernel):
    """The --restore mode: see the module's docs."""
    initrd = initramfs(tmp, restore=True)
    runs = {}
    snap_root = tempfile.mkdtemp(prefix="boot-snap-")
    hulls = {"hull-vmm": args.hull_vmm}
    if args.hull_vmm_b:
        hulls["hull-vmm-b"] = args.hull_vmm_b
    for name, binary in hulls.items():
        d = os.path.join(snap_root, name)
        hull_snapshot(binary, kernel, initrd, args.extra, d, args.hull_devices)
        runs[name] = lambda b=binary, d=d: hull_restore_run(b, d, args.hull_devices)
    if args.firecracker:
        cmdline = (CMDLINE + " " + args.extra).strip()
        config = firecracker_cmd(args.firecracker, tmp, kernel, initrd, cmdline)[3]
        snap, mem = os.path.join(snap_root, "fc.state"), os.path.join(snap_root, "fc.mem")
        firecracker_snapshot(args.firecracker, config, tmp, snap, mem)
        runs["firecracker"] = lambda: firecracker_restore_run(args.firecracker, tmp, snap, mem)
    if args.vmms:
        runs = {k: v for k, v in runs.items() if k in args.vmms.split(",")}
    def used(paths):  # bytes the files take (hull-vmm leaves zero pages as holes)
        return sum(os.stat(p).st_blocks * 512 for p in paths)
    sizes = {n: used(os.path.join(snap_root, n, f) for f in os.listdir(os.path.join(snap_root, n)))
             for n in hulls}
    if args.hull_devices:
        print("hull-vmm guests with hull's template devices: rng, vsock, 16 empty disk slots")
    if args.firecracker:
        sizes["firecracker"] = used([snap, mem])
    print("restore benchmark: %d runs each, 1 vCPU, %d MiB; snapshot size in tmpfs: %s"
          % (args.n, MEM_MIB, ", ".join("%s %d KiB" % (n, b // 1024) for n, b in sizes.items())))
    results = {}
    for _ in range(args.n):
        for name, run in runs.items():
            results.setdefault(name, []).append(run())
    shutil.rmtree(snap_root)
    # Faults and CPU time run to the kill, a moment after the marker.
    print("%-14s %18s %14s %8s %8s   spread" % ("vmm", "to resumed (ms)", "load API (ms)",
                                              "minflt", "CPU ms"))
    for n, rs in results.items():
        loads = [r[1] for r in rs if r[1] is not None]
        print("%-14s %18.1f %14s %8.0f %8.0f   %s" % (
            n, statistics.median(r[0] for r in rs),
            "%.1f" % statistics.median(loads) if loads else "-",
            statistics.median(r[2].ru_minflt for r in rs),
            statistics.median((r[2].ru_utime + r[2].ru_stime) * 1000 for r in rs),
            spread([r[0] for r in rs])))
        print("  runs: %s" % " ".join("%.0f" % r[0] for r in rs))
    h, f = results.get("hull-vmm"), results.get("firecracker")
    if h and f:
        print("ratio hull/fc  %18.2f" % (statistics.median(r[0] for r in h) /
                                         statistics.median(r[0] for r in f)))
        print("  median of per-round ratios: %.2f"
              % statistics.median(x[0] / y[0] for x, y in zip(h, f)))
    b = results.get("hull-vmm-b")
    if h and b:
        print("hull-vmm against hull-vmm-b: ratio of medians %.2f, median of per-round "
              "ratios %.2f, median of per-round differences %+.1f ms"
              % (statistics.median(r[0] for r in h) / statistics.median(r[0] for r in b),
                 statistics.median(x[0] / y[0] for x, y in zip(h, b)),
                 statistics.median(x[0] - y[0] for x, y in zip(h, b))))


class ExitCounter:
    """Counts KVM exits by reason (kvm:kvm_exit) and port I/O by port
    (kvm:kvm_pio) through the tracepoints' histogram triggers, one count
    per run. Exit reasons are the hardware's codes (on AMD: 0x7b port I/O,
    0x400 nested page fault, 0x60 interrupt, 0x64 interrupt window)."""

    HISTS = {"kvm_exit": "exit_reason", "kvm_pio": "port"}

    def __init__(self):
        if not os.path.isdir(os.path.join(TRACEFS, "events")):
            subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS], check=True)
        if not os.path.exists(os.path.join(TRACEFS, "events/kvm/kvm_exit/trigger")):
            sys.exit("--exits: no kvm:kvm_exit tracepoint under %s (is kvm loaded?)" % TRACEFS)

    def _set(self, event, key, on):
        with open(os.path.join(TRACEFS, "events/kvm", event, "trigger"), "w") as f:
            f.write("%shist:keys=%s.hex:sort=hitcount.descending:size=256\n"
                    % ("" if on else "!", key))

    def start(self):
        for event, key in self.HISTS.items():
            self._set(event, key, True)

    def stop(self):
        """{event: Counter(key -> hits)}."""
        out = {}
        for event, key in self.HISTS.items():
            with open(os.path.join(TRACEFS, "events/kvm", event, "hist")) as f:
                text = f.read()
            self._set(event, key, False)
            counts = collections.Counter()
            for m in re.finditer(key + r":\s*(\S+).*?hitcount:\s*(\d+)", text):
                counts[m.group(1)] += int(m.group(2))
            out[event] = counts
        return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=10, help="runs per VMM (default 10)")
    ap.add_argument("--kernel", default=os.environ.get("HULL_KERNEL") or
                    os.path.expanduser("~/.cache/hull/kernel/vmlinux"))
    ap.add_argument("--hull-vmm", default=os.path.join(REPO, "target/release/hull-vmm"))
    ap.add_argument("--hull-vmm-b", metavar="PATH",
                    help="a second hull-vmm (a build before a change), run as hull-vmm-b")
    ap.add_argument("--firecracker", metavar="PATH",
                    help="a firecracker binary to compare with")
    ap.add_argument("--vmms", help="comma-separated subset of hull-vmm,hull-vmm-b,firecracker,"
                    "qemu-microvm (default: all that are available)")
    ap.add_argument("--extra", default="", help="words appended to every command line")
    ap.add_argument("--dmesg", metavar="DIR", help="keep each VMM's console with the kernel log")
    ap.add_argument("--exits", action="store_true", help="count VM exits by reason (one run each)")
    ap.add_argument("--restore", action="store_true",
                    help="time restores from a snapshot instead of cold boots (hull-vmm, firecracker)")
    ap.add_argument("--hull-devices", action="store_true",
                    help="with --restore: hull-vmm's guests get the devices of hull's templates "
                         "(rng, vsock, 16 empty disk slots); Firecracker's none")
    args = ap.parse_args()
    if not os.path.exists(args.hull_vmm):
        sys.exit("%s missing: cargo build --release -p hull-vmm" % args.hull_vmm)
    if args.firecracker and not os.access(args.firecracker, os.X_OK):
        sys.exit("--firecracker %s: not an executable file" % args.firecracker)
    cmdline = (CMDLINE + " " + args.extra).strip()
    tmp = tempfile.mkdtemp()
    if args.restore:
        restore_bench(args, tmp, args.kernel)
        shutil.rmtree(tmp)
        return
    initrd = initramfs(tmp, dmesg=bool(args.dmesg))
    vmms = {
        # hull-vmm prepends CMDLINE itself; only the extra words are passed.
        "hull-vmm": [args.hull_vmm, "--kernel", args.kernel, "--initrd", initrd,
                     "--mem", str(MEM_MIB), "--vcpus", "1"] +
                    (["--cmdline", args.extra] if args.extra else []),
    }
    if args.hull_vmm_b:
        vmms["hull-vmm-b"] = [args.hull_vmm_b] + vmms["hull-vmm"][1:]
    if args.firecracker:
        vmms["firecracker"] = firecracker_cmd(args.firecracker, tmp, args.kernel,
                                              initrd, cmdline)
    if shutil.which("qemu-system-x86_64"):
        vmms["qemu-microvm"] = [
            "qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off",
            "-enable-kvm", "-cpu", "host", "-m", str(MEM_MIB), "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "stdio", "-no-reboot", "-kernel", args.kernel,
            "-initrd", initrd,
            # microvm has no i8042: reboot by triple fault, which
            # -no-reboot turns into an exit.
            "-append", cmdline + " reboot=t"]
    if args.vmms:
        wanted = args.vmms.split(",")
        missing = [w for w in wanted if w not in vmms]
        if missing:
            sys.exit("--vmms: %s not available (known: %s)" % (",".join(missing), ",".join(vmms)))
        vmms = {k: v for k, v in vmms.items() if k in wanted}

    print("boot benchmark: %d runs each, 1 vCPU, %d MiB, kernel %s" % (args.n, MEM_MIB, args.kernel))
    print("command line (all VMMs): %s" % cmdline)
    if args.exits:
        counter = ExitCounter()
        for name, cmd in vmms.items():
            counter.start()
            try:
                one_run(cmd, MEM_MIB)
            finally:
                counts = counter.stop()
            for event, c in counts.items():
                print("%s %s: %d in all; %s" % (event, name, sum(c.values()), ", ".join(
                    "%s %d" % kv for kv in c.most_common(12))))
    results = {}
    guest = {}
    for _ in range(args.n):
        for name, cmd in vmms.items():
            t_init, t_exit, rss, faults, cpu, console = one_run(cmd, MEM_MIB)
            results.setdefault(name, []).append((t_init, t_exit, rss, faults, cpu))
            m = re.search(rb"\[\s*(\d+\.\d+)\] Run /init as init process", console)
            if m:
                guest.setdefault(name, []).append(float(m.group(1)) * 1000)
            if args.dmesg:
                os.makedirs(args.dmesg, exist_ok=True)
                with open(os.path.join(args.dmesg, name + ".log"), "wb") as f:
                    f.write(console)
    shutil.rmtree(tmp)
    if not results:
        return
    med = {n: [statistics.median(r[k] for r in rs) for k in range(5)]
           for n, rs in results.items()}
    # Load on the machine only ever adds time: the fastest run of each VMM
    # is a second estimate, less noisy than the median on a busy machine.
    print("%-14s %14s %14s %16s %14s %10s %9s" % ("vmm", "to init (ms)", "to exit (ms)",
                                                  "VMM RSS (MiB)", "min init (ms)",
                                                  "minflt", "CPU ms"))
    for n, m in med.items():
        print("%-14s %14.1f %14.1f %16.1f %14.1f %10.0f %9.0f"
              % (n, m[0], m[1], m[2], min(r[0] for r in results[n]), m[3], m[4]))
        print("  runs to init: %s" % " ".join("%.0f" % r[0] for r in results[n]))
        print("  spread to init: %s" % spread([r[0] for r in results[n]]))
    for n, g in guest.items():
        # The kernel's clock starts with kvm-clock, just after it gets
        # control: the rest of the time to init is the VMM's start and the
        # guest's first instructions.
        print("%-14s guest kernel to /init p50 %.1f ms (printk time), the rest %.1f ms"
              % (n, statistics.median(g), med[n][0] - statistics.median(g)))
    h = med.get("hull-vmm")
    for base in ("firecracker", "qemu-microvm"):
        b = med.get(base)
        if h and b:
            label = "hull/%s" % ("fc" if base == "firecracker" else "qemu")
            print("ratio %-9s %14.2f %14.2f %16.2f" % (label, h[0] / b[0], h[1] / b[1], h[2] / b[2]))
            # Both ran in the same round, under the same load: the median
            # of the per-round ratios follows the machine's drift less.
            paired = [x[0] / y[0] for x, y in zip(results["hull-vmm"], results[base])]
            print("  to init, median of per-round ratios: %.2f" % statistics.median(paired))


if __name__ == "__main__":
    main()
