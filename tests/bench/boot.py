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
        [--firecracker PATH] [--vmms hull-vmm,firecracker]

Figures inside the emulated host are inflated (software-emulated CPU); only
the ratios between the VMMs of one run mean anything.

Finding where the time goes:
  --dmesg DIR   /init also prints the kernel log (printk times) after the
                marker; the last run's console of each VMM goes to DIR/VMM.log
  --exits       counts the guest's VM exits by reason for one run of each VMM
                (the kvm:kvm_exit tracepoint's histogram, needs tracefs)
  --extra ARGS  appended to every VMM's kernel command line (initcall_debug)
"""
import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MARKER = b"HULL-BENCH-INIT"
MEM_MIB = 128
# hull-vmm always starts its guest's command line with these words
# (vmm/src/config.rs DEFAULT_CMDLINE): the other VMMs get the same ones.
CMDLINE = "console=ttyS0 reboot=k panic=-1 pci=off nomodules 8250.nr_uarts=1 " \
          "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd tsc=reliable " \
          "no_timer_check cryptomgr.notests quiet"
TRACEFS = "/sys/kernel/tracing"


def initramfs(tmp, init=None, dmesg=False, files=()):
    """A busybox initramfs whose /init is `init` (default: print the marker,
    with `dmesg` the kernel log, idle a second, reboot), with `files` (host
    paths) copied to its root."""
    if init is None:
        show = "/bin/busybox dmesg\n" if dmesg else ""
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


def one_run(cmd, mem_mib):
    """(ms to init, ms to exit, VMM MiB outside guest RAM, console bytes)."""
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
        rc = p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        raise RuntimeError("%s did not exit after the guest rebooted" % cmd[0])
    t_exit = time.monotonic() - start
    if t_init is None or rc != 0:
        raise RuntimeError("%s failed (exit %s), output: %r" % (cmd[0], rc, buf[-500:]))
    return t_init * 1000, t_exit * 1000, (total - guest) / 1024, buf


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
    args = ap.parse_args()
    if not os.path.exists(args.hull_vmm):
        sys.exit("%s missing: cargo build --release -p hull-vmm" % args.hull_vmm)
    if args.firecracker and not os.access(args.firecracker, os.X_OK):
        sys.exit("--firecracker %s: not an executable file" % args.firecracker)
    cmdline = (CMDLINE + " " + args.extra).strip()
    tmp = tempfile.mkdtemp()
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
            t_init, t_exit, rss, console = one_run(cmd, MEM_MIB)
            results.setdefault(name, []).append((t_init, t_exit, rss))
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
    med = {n: [statistics.median(r[k] for r in rs) for k in range(3)]
           for n, rs in results.items()}
    # Load on the machine only ever adds time: the fastest run of each VMM
    # is a second estimate, less noisy than the median on a busy machine.
    print("%-14s %14s %14s %16s %14s" % ("vmm", "to init (ms)", "to exit (ms)",
                                         "VMM RSS (MiB)", "min init (ms)"))
    for n, m in med.items():
        print("%-14s %14.1f %14.1f %16.1f %14.1f"
              % (n, m[0], m[1], m[2], min(r[0] for r in results[n])))
        print("  runs to init: %s" % " ".join("%.0f" % r[0] for r in results[n]))
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


if __name__ == "__main__":
    main()
