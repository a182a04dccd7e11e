#!/usr/bin/env python3
"""File system benchmark of volumes: a sequential write then read of 256 MiB,
and a metadata workload (create, stat and unlink 10 000 small files), timed
inside the container, on:

  ns-bind     --isolation ns, a host directory bound at /data
  vm-volume   --isolation vm, the same host directory over virtio-fs (the
              default cache setting, auto: the guest caches what it reads,
              write-only opens go straight to the host file)
  vm-volume-consistent
              vm-volume mounted -v DIR:/data:consistent (cache=never: every
              read and write goes to the host file, none is cached in the
              guest)
  vm-overlay  --isolation vm, the microVM's own overlay root (its upper is a
              tmpfs in guest RAM: an upper bound, not a disk)
  vm-volume-dax
              vm-volume with a DAX window of --dax MiB per virtio-fs device
              (HULL_FS_DAX_MIB; the guest mounts with dax=always and reads
              and writes the host file in place); --dax 0 leaves it out

and, with options:

  --baseline DIR   vm-volume-base: vm-volume with the hull-vmm and
                   hull-agent found in DIR (an older build, to measure a
                   change before and after in one run)
  --qemu           the device alone, no container around it: the same guest
                   kernel and a busybox initramfs whose init mounts the share
                   and runs the same workload, in a bare hull-vmm
                   (hull-vmm-bare) and in QEMU microvm with a
                   vhost-user-fs-device served by virtiofsd
                   (qemu-virtiofsd: guest RAM a shared memfd, as vhost-user
                   needs; QEMU 7.2's own virtiofsd, /usr/lib/qemu/virtiofsd
                   from Debian's qemu-system-common, cache=auto), and
                   hull-vmm-bare-dax (the bare hull-vmm with --fs-dax);
                   hull-vmm-bare-never and qemu-virtiofsd-never are the two
                   with no data cached in the guest (hull-vmm's cache=never,
                   virtiofsd's cache=none), compared with each other
  --huge-share     also the DAX arms with the shared directory on a tmpfs
                   mounted huge=always (the host's page cache in 2 MiB
                   folios, which KVM can map into the DAX window whole):
                   vm-volume-dax-huge and, with --qemu, hull-vmm-bare-dax-huge
                   and hull-vmm-bare-huge (no DAX, same share)
  --cold-boot      also vm-volume-cold and vm-overlay-cold (and, with
                   --huge-share, vm-volume-dax-huge-cold): cold-booted
                   microVMs (HULL_COLD_BOOT=1; guest RAM in huge pages)
                   instead of ones restored from a template (guest RAM
                   mapped private from the template's file, 4 KiB pages)
  --vmm-b PATH     with --qemu: each bare hull-vmm arm again with this
                   hull-vmm (NAME-b, same rounds: a change A/B in one run)
  --only NAMES     only these targets (comma-separated; ns-bind always runs,
                   as the ratios are against it)
  --boot N         also the boot-time cost of a virtio-fs device: N boots of
                   a bare hull-vmm to init with and without one (the guest
                   kernel always has FUSE and virtiofs built in), with a DAX
                   window, and, with --kernel-base K, with the older kernel K
                   (interleaved: what the new kernel options cost)

Each round runs every target once, one after the other (interleaved), so
load drift hits every target alike. The report gives each target's median
over the rounds, and, per round, each target's time against ns-bind's in the
same round, with the median of those per-round ratios: the figure that
survives a machine whose load changes during the run. The write
ends with fsync (conv=fsync); before the read the guest drops its page cache
(vm: the guest's own cache; ns: the host's cache is not dropped, as that
would disturb the machine: the ns read is a page-cache read). The reread
reads the file again at once, from whatever cache the first read left
(vm: the guest's page cache, if the file's data outlives a close).

Run by hand, not in CI, where /dev/kvm can boot a stock guest: directly on
hardware KVM, or here through the emulated KVM host:

    cargo build -p hull -p hull-vmm && agent/build-static.sh
    HULL_KERNEL=$(guest-kernel/build.sh | tail -n1) \\
        tests/kvm-host/run -- tests/bench/fs.py [-n ROUNDS] [--mib 256] [--files 10000] \\
            [--qemu] [--huge-share] [--only NAMES]

Figures inside the emulated host are inflated; only ratios within one run
mean anything. With RUST_LOG=hull_vmm::devices::virtio::fs=debug, the
vm-volume runs print where the device's time went (per opcode) on stderr.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import boot  # noqa: E402

REPO = boot.REPO
PHASES = ("write", "read", "reread", "create", "stat", "unlink")

# Timed phases, each printed as "NAME MILLISECONDS" by the container (busybox
# date has no %N: /proc/uptime, 10 ms resolution; the hundredths without a
# leading zero, which shell arithmetic would read as octal: 0.08 s is 80 ms).
SCRIPT = r"""
set -e
cd {dir}
t() {{ read up rest < /proc/uptime; f=${{up#*.}}; echo $((${{up%%.*}} * 1000 + ${{f#0}} * 10)); }}
a=$(t); dd if=/dev/zero of=big bs=1M count={mib} conv=fsync 2>/tmp/dd.err || {{ cat /tmp/dd.err >&2; exit 1; }}; b=$(t)
echo write $((b-a))
sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
a=$(t); dd if=big of=/dev/null bs=1M 2>/tmp/dd.err || {{ cat /tmp/dd.err >&2; exit 1; }}; b=$(t)
echo read $((b-a))
a=$(t); dd if=big of=/dev/null bs=1M 2>/tmp/dd.err || {{ cat /tmp/dd.err >&2; exit 1; }}; b=$(t)
echo reread $((b-a))
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


def phases(out):
    """The workload's "PHASE MILLISECONDS" lines in `out`, as seconds."""
    got = {}
    for line in out.splitlines():
        w = line.strip().split()
        if len(w) == 2 and w[0] in PHASES and w[1].isdigit():
            got[w[0]] = int(w[1]) / 1e3
    return got


def one(hull_bin, state, rootfs, iso, flags, workdir, mib, files, env_extra=None):
    cmd = [hull_bin, "--state-dir", state, "run", "--rm", "--isolation", iso,
           "--memory", "1024", "--rootfs", rootfs] + flags + \
          ["sh", "-c", SCRIPT.format(dir=workdir, mib=mib, files=files)]
    # Guest RAM in huge pages even in the emulated KVM host (README,
    # "Devices"), as disk.py measures: the 4 KiB default there emulates
    # every nested page walk, which would swamp what is measured here.
    env = dict(os.environ, HULL_VMM_HUGE_PAGES="force", **(env_extra or {}))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    got = phases(out.stdout)
    if out.returncode != 0 or len(got) != len(PHASES):
        sys.exit("%s %s failed (%d): %s %s" % (iso, flags, out.returncode, out.stdout.strip(),
                                             out.stderr.strip()))
    return got


# The bare guest's /init: the share at /data with the read-ahead hull's agent
# gives a virtio-fs mount, the workload, the phases on the console.
BARE_INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /data /tmp
mount -t virtiofs -o dax=always vol /data 2>/dev/null || mount -t virtiofs vol /data || echo MOUNT-FAILED
echo 1024 > /sys/class/bdi/$(awk '$5 == "/data" {print $3}' /proc/self/mountinfo)/read_ahead_kb
sh /bench.sh
echo BENCH-END $?
reboot -f
"""


def bare_initrd(tmp, mib, files):
    d = os.path.join(tmp, "bare")
    os.makedirs(d)
    boot.initramfs(d, BARE_INIT)
    with open(os.path.join(d, "root", "bench.sh"), "w") as f:
        f.write(SCRIPT.format(dir="/data", mib=mib, files=files))
    initrd = os.path.join(d, "initramfs.cpio")
    subprocess.run("cd %s/root && find . | cpio -o -H newc --quiet > %s" % (d, initrd),
                   shell=True, check=True)
    return initrd


def bare_run(name, cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=7200)
    got = phases(out.stdout)
    if len(got) != len(PHASES):
        sys.exit("%s failed (exit %d): %s %s" % (name, out.returncode, out.stdout[-2000:],
                                                 out.stderr[-2000:]))
    return got


def hull_vmm_bare(vmm, kernel, initrd, vol, dax=0, cache="auto"):
    env = dict(os.environ, HULL_VMM_HUGE_PAGES="force")
    extra = ["--fs-dax", str(dax)] if dax else []
    return bare_run("hull-vmm-bare", [vmm, "--kernel", kernel, "--initrd", initrd, "--mem",
                                      "1024", "--fs", "tag=vol,path=%s,cache=%s" % (vol, cache)]
                    + extra, env)


def qemu_virtiofsd(kernel, initrd, vol, tmp, cache="auto"):
    """QEMU microvm with virtiofsd; `cache` is virtiofsd's (auto: the guest
    caches data, none: every read and write goes to virtiofsd)."""
    sock = os.path.join(tmp, "vfsd.sock")
    vfsd = subprocess.Popen(["/usr/lib/qemu/virtiofsd", "--socket-path=" + sock,
                             "-o", "source=" + vol, "-o", "cache=" + cache],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            if vfsd.poll() is not None or time.monotonic() > deadline:
                sys.exit("virtiofsd did not start: %s" % vfsd.stderr.read().decode()[-2000:])
            time.sleep(0.05)
        return bare_run("qemu-virtiofsd", [
            "qemu-system-x86_64",
            "-M", "microvm,x-option-roms=off,rtc=off,acpi=off,memory-backend=mem",
            "-enable-kvm", "-cpu", "host", "-m", "1024", "-smp", "1",
            "-object", "memory-backend-memfd,id=mem,size=1024M,share=on",
            "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "stdio", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
            "-append", boot.CMDLINE + " reboot=t",
            "-global", "virtio-mmio.force-legacy=false",
            "-chardev", "socket,id=vfs,path=" + sock,
            "-device", "vhost-user-fs-device,chardev=vfs,tag=vol,queue-size=1024"])
    finally:
        if vfsd.poll() is None:
            vfsd.terminate()
        vfsd.wait()


def boot_cost(vmm, kernel, tmp, n, dax, kernel_base=None):
    """Median time to init of a bare hull-vmm without and with a virtio-fs
    device, with a DAX window, and with `kernel_base` instead (ms)."""
    d = os.path.join(tmp, "boot")
    os.makedirs(d)
    initrd = boot.initramfs(d)
    share = os.path.join(tmp, "bootshare")
    os.makedirs(share)
    base = [vmm, "--kernel", kernel, "--initrd", initrd, "--mem", str(boot.MEM_MIB),
            "--vcpus", "1"]
    fs = ["--fs", "tag=vol,path=" + share]
    arms = {"no fs device": base, "one fs device": base + fs}
    if dax:
        arms["one fs device with a DAX window"] = base + fs + ["--fs-dax", str(dax)]
    if kernel_base:
        old = [vmm, "--kernel", kernel_base] + base[3:]
        arms["base kernel, no fs device"] = old
        arms["base kernel, one fs device"] = old + fs
    t = {k: [] for k in arms}
    for _ in range(n):
        for k, cmd in arms.items():
            t[k].append(boot.one_run(cmd, boot.MEM_MIB)[0])
    return {k: statistics.median(v) for k, v in t.items()}


def huge_tmpfs(path, mib):
    """A tmpfs at `path` whose files live in 2 MiB folios where they can
    (huge=always), big enough for the workload; unmounted by the caller."""
    os.makedirs(path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "huge=always,size=%dm" % (2 * mib + 64),
                    "hfshuge", path], check=True)


def per_round_ratios(runs, base_name):
    """{target: {phase: [time / base's time in the same round, ...]}}."""
    base = runs[base_name]
    return {name: {k: [r[k] / max(b[k], 0.01) for r, b in zip(rs, base)] for k in PHASES}
            for name, rs in runs.items()}


def print_ratios(title, ratios, base_name):
    print(title)
    for name, by_phase in ratios.items():
        if name == base_name:
            continue
        print("%-22s " % name + "  ".join(
            "%s %.2fx (%s)" % (k, statistics.median(v), "/".join("%.2f" % x for x in v))
            for k, v in by_phase.items()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=3, metavar="ROUNDS",
                    help="rounds; each runs every target once (interleaved)")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--baseline", metavar="DIR",
                    help="also vm-volume with DIR/hull-vmm and DIR/hull-agent (an older build)")
    ap.add_argument("--qemu", action="store_true",
                    help="also a bare hull-vmm against QEMU microvm with virtiofsd")
    ap.add_argument("--boot", type=int, default=0, metavar="N",
                    help="also N boots each with and without a virtio-fs device")
    ap.add_argument("--dax", type=int, default=1024, metavar="MIB",
                    help="the DAX window of vm-volume-dax and hull-vmm-bare-dax (0: no DAX arms)")
    ap.add_argument("--huge-share", action="store_true",
                    help="also the DAX arms on a share in huge pages (tmpfs huge=always)")
    ap.add_argument("--cold-boot", action="store_true",
                    help="also vm-volume and vm-overlay cold-booted (HULL_COLD_BOOT=1)")
    ap.add_argument("--vmm-b", metavar="PATH",
                    help="with --qemu: each bare hull-vmm arm again with this hull-vmm (NAME-b)")
    ap.add_argument("--only", metavar="NAMES",
                    help="only these targets, comma-separated (and ns-bind)")
    ap.add_argument("--kernel-base", metavar="VMLINUX",
                    help="with --boot: also boot this (older) kernel, interleaved")
    ap.add_argument("--kernel", default=os.environ.get("HULL_KERNEL") or
                    os.path.expanduser("~/.cache/hull/kernel/vmlinux"))
    args = ap.parse_args()
    hull_bin = hull()
    vmm = os.environ.get("HULL_VMM") or os.path.join(os.path.dirname(hull_bin), "hull-vmm")
    tmp = tempfile.mkdtemp(prefix="hfs")
    huge = os.path.join(tmp, "volhuge")
    try:
        rootfs = os.path.join(tmp, "rootfs")
        busybox_rootfs(rootfs)
        vol = os.path.join(tmp, "vol")
        os.makedirs(vol)
        if args.huge_share and args.dax:
            huge_tmpfs(huge, args.mib)
        state = os.path.join(tmp, "s")
        def container(iso, flags, wd, env_extra=None):
            return lambda: one(hull_bin, state, rootfs, iso, flags, wd, args.mib, args.files,
                               env_extra)
        dax_env = {"HULL_FS_DAX_MIB": str(args.dax)}
        targets = [("ns-bind", container("ns", ["-v", vol + ":/data"], "/data"))]
        if args.baseline:
            base = {"HULL_VMM": os.path.join(args.baseline, "hull-vmm"),
                    "HULL_AGENT": os.path.join(args.baseline, "hull-agent")}
            targets.append(("vm-volume-base", container("vm", ["-v", vol + ":/data"], "/data",
                                                        base)))
        targets += [("vm-volume", container("vm", ["-v", vol + ":/data"], "/data")),
                    ("vm-volume-consistent",
                     container("vm", ["-v", vol + ":/data:consistent"], "/data"))]
        if args.dax:
            targets.append(("vm-volume-dax", container("vm", ["-v", vol + ":/data"], "/data",
                                                       dax_env)))
            if args.huge_share:
                targets.append(("vm-volume-dax-huge",
                                container("vm", ["-v", huge + ":/data"], "/data", dax_env)))
        targets.append(("vm-overlay", container("vm", [], "/work")))
        if args.cold_boot:
            cold = {"HULL_COLD_BOOT": "1"}
            targets += [("vm-volume-cold", container("vm", ["-v", vol + ":/data"], "/data", cold)),
                        ("vm-overlay-cold", container("vm", [], "/work", cold))]
            if args.dax and args.huge_share:
                targets.append(("vm-volume-dax-huge-cold",
                                container("vm", ["-v", huge + ":/data"], "/data",
                                          dict(dax_env, **cold))))
        if args.qemu:
            if os.environ.get("HULL_IN_KVM_HOST") == "1":
                # QEMU's RAM is a shared memfd (shmem): huge pages for it,
                # as hull-vmm's are, where QEMU asks for them (MADV_HUGEPAGE).
                # Only in the emulated host, which is thrown away after.
                with open("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "w") as f:
                    f.write("advise")
            initrd = bare_initrd(tmp, args.mib, args.files)
            bare = [("hull-vmm-bare", vol, 0, "auto"), ("hull-vmm-bare-never", vol, 0, "never")]
            if args.dax:
                bare.append(("hull-vmm-bare-dax", vol, args.dax, "auto"))
                if args.huge_share:
                    bare += [("hull-vmm-bare-huge", huge, 0, "auto"),
                             ("hull-vmm-bare-dax-huge", huge, args.dax, "auto")]
            def bare_arm(binary, share, dax, cache):
                return lambda: hull_vmm_bare(binary, args.kernel, initrd, share, dax, cache)
            targets += [("qemu-virtiofsd", lambda: qemu_virtiofsd(args.kernel, initrd, vol,
                                                                  tmp)),
                        ("qemu-virtiofsd-never",
                         lambda: qemu_virtiofsd(args.kernel, initrd, vol, tmp, "none"))]
            for name, share, dax, cache in bare:
                targets.append((name, bare_arm(vmm, share, dax, cache)))
                if args.vmm_b:
                    # Another build's twin, in the same rounds.
                    targets.append((name + "-b", bare_arm(args.vmm_b, share, dax, cache)))
        if args.only:
            only = set(args.only.split(",")) | {"ns-bind"}
            unknown = only - {name for name, _ in targets}
            if unknown:
                sys.exit("--only: no such target (with these options): " + ",".join(sorted(unknown)))
            targets = [(name, run) for name, run in targets if name in only]
        runs = {name: [] for name, _ in targets}
        # Interleaved, so load drift hits every target alike.
        for r in range(args.n):
            for name, run in targets:
                t0 = time.monotonic()
                runs[name].append(run())
                print("round %d %s: %s (%.0f s)" % (r + 1, name, runs[name][-1],
                                                    time.monotonic() - t0), file=sys.stderr)
        boots = boot_cost(vmm, args.kernel, tmp, args.boot, args.dax,
                          args.kernel_base) if args.boot else None
        med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]}
               for name, rs in runs.items()}
        print("medians over %d rounds" % args.n)
        print("%-22s %12s %12s %13s %10s %10s %10s" %
              ("target", "write MiB/s", "read MiB/s", "reread MiB/s", "create s", "stat s",
               "unlink s"))
        for name, m in med.items():
            print("%-22s %12.1f %12.1f %13.1f %10.2f %10.2f %10.2f" %
                  (name, args.mib / m["write"], args.mib / m["read"],
                   args.mib / max(m["reread"], 0.01), m["create"], m["stat"], m["unlink"]))
        ratios = {"ns-bind": per_round_ratios(runs, "ns-bind")}
        print_ratios("time against ns-bind in the same round (>1 is slower): "
                     "median (each round)", ratios["ns-bind"], "ns-bind")
        # The bare hull-vmm arms against QEMU's with the same cache policy
        # (cache=never against virtiofsd's cache=none), and all against
        # QEMU's default.
        for base, pick in (("qemu-virtiofsd", lambda k: True),
                           ("qemu-virtiofsd-never", lambda k: k.endswith("-never"))):
            if base not in runs:
                continue
            bare = {k: v for k, v in runs.items()
                    if (k.startswith("hull-vmm-bare") and pick(k)) or k == base}
            ratios[base] = per_round_ratios(bare, base)
            print_ratios("time against %s in the same round (>1 is slower): "
                         "median (each round)" % base, ratios[base], base)
        if boots:
            print("boot to init, median of %d: " % args.boot +
                  ", ".join("%s %.0f ms" % kv for kv in boots.items()))
        print(json.dumps({"rounds": args.n, "mib": args.mib, "files": args.files,
                          "median_s": med, "runs_s": runs, "ratios": ratios,
                          "boot_ms": boots}))
    finally:
        if os.path.ismount(huge):
            subprocess.run(["umount", huge])
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
