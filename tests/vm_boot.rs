//! hull-vmm boots the guest kernel: end to end, through real KVM (directly on
//! hardware KVM, inside tests/kvm-host elsewhere; see tests/support/vmtest.rs).

#[path = "support/vmtest.rs"]
mod vmtest;

use std::process::Command;
use vmtest::{Failed, Trial, check, text};

const MARKER: &str = "HULL-BOOT-MARKER";

fn vmm(dir: &std::path::Path, init: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let initrd = vmtest::busybox_initramfs(dir, init);
    let out = Command::new(vmtest::hull_vmm())
        .arg("--kernel")
        .arg(vmtest::kernel())
        .arg("--initrd")
        .arg(initrd)
        .args(extra)
        .output()
        .expect("running hull-vmm");
    text(&out)
}

fn boots_to_init_and_exits_cleanly() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let (code, out, err) = vmm(dir.path(), &format!("echo {MARKER}; reboot -f"), &[]);
    check(code == Some(0), || format!("exit {code:?}, stderr: {err}"))?;
    check(out.contains(MARKER), || {
        format!("no marker on serial:\n{out}")
    })
}

fn guest_sees_cpus_and_memory() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let init = "mount -t proc proc /proc\n\
                echo \"cpus=$(nproc) kib=$(awk '/MemTotal/ {print $2}' /proc/meminfo)\"\n\
                reboot -f";
    let (code, out, err) = vmm(dir.path(), init, &["--vcpus", "2", "--mem", "256"]);
    check(code == Some(0), || format!("exit {code:?}, stderr: {err}"))?;
    check(out.contains("cpus=2 "), || {
        format!("guest does not see 2 CPUs:\n{out}")
    })?;
    let kib: u64 = out
        .split("kib=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no MemTotal in output:\n{out}"))?;
    // The kernel keeps some for itself; what is left must be most of 256 MiB.
    check((200 * 1024..=256 * 1024).contains(&kib), || {
        format!("MemTotal {kib} KiB is not ~256 MiB")
    })
}

fn guest_panic_is_an_error() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    // init exiting makes the kernel panic ("Attempted to kill init").
    let (code, _out, err) = vmm(dir.path(), "exit 0", &["--serial", "none"]);
    check(code == Some(3), || {
        format!("expected exit 3, got {code:?}: {err}")
    })?;
    check(err.contains("guest kernel panicked"), || {
        format!("stderr: {err}")
    })?;
    check(err.contains("Attempted to kill init"), || {
        format!("stderr: {err}")
    })
}

fn missing_kernel_is_one_line() -> Result<(), Failed> {
    let out = Command::new(vmtest::hull_vmm())
        .args(["--kernel", "/nonexistent/vmlinux"])
        .output()?;
    let (code, _, err) = text(&out);
    check(code == Some(1), || format!("exit {code:?}"))?;
    check(err.lines().count() == 1, || format!("not one line: {err}"))?;
    check(err.contains("/nonexistent/vmlinux"), || {
        format!("path not named: {err}")
    })
}

fn bzimage_or_garbage_is_not_elf() -> Result<(), Failed> {
    let dir = tempfile::tempdir()?;
    let bogus = dir.path().join("bzImage");
    std::fs::write(&bogus, vec![0x4du8; 4096])?;
    let out = Command::new(vmtest::hull_vmm())
        .arg("--kernel")
        .arg(&bogus)
        .output()?;
    let (code, _, err) = text(&out);
    check(code == Some(1), || format!("exit {code:?}: {err}"))?;
    check(err.contains("not a bootable ELF vmlinux"), || {
        format!("stderr: {err}")
    })
}

fn main() {
    vmtest::run_vm_tests(vec![
        Trial::test(
            "boots_to_init_and_exits_cleanly",
            boots_to_init_and_exits_cleanly,
        ),
        Trial::test("guest_sees_cpus_and_memory", guest_sees_cpus_and_memory),
        Trial::test("guest_panic_is_an_error", guest_panic_is_an_error),
        Trial::test("missing_kernel_is_one_line", missing_kernel_is_one_line),
        Trial::test(
            "bzimage_or_garbage_is_not_elf",
            bzimage_or_garbage_is_not_elf,
        ),
    ]);
}
