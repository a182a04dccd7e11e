"""What the disk benchmarks share (tests/bench/disk.py and
concurrent_disk.py): the kernel and hull-vmm arguments, and the disk file
of random bytes the guests read end to end."""
import os
import sys

import boot  # same directory: REPO


def add_vmm_arguments(ap):
    """--kernel and --hull-vmm, defaulting to the cached kernel and the
    release hull-vmm."""
    ap.add_argument("--kernel", default=os.environ.get("HULL_KERNEL") or
                    os.path.expanduser("~/.cache/hull/kernel/vmlinux"))
    ap.add_argument("--hull-vmm", default=os.path.join(boot.REPO, "target/release/hull-vmm"))


def require_hull_vmm(args):
    """Exits saying how to build hull-vmm when it is not there."""
    if not os.path.exists(args.hull_vmm):
        sys.exit("%s missing: cargo build --release -p hull-vmm" % args.hull_vmm)


def random_disk(tmp, mib):
    """A disk file of `mib` MiB of random bytes in `tmp`; its path."""
    disk = os.path.join(tmp, "disk.img")
    with open(disk, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))
    return disk
