//! hull-vmm on this host as it is (no emulated KVM host): on a PVM host it
//! must refuse a stock kernel at once with a message that says what to do,
//! instead of crawling through KVM's instruction emulator.

#[path = "support/vmtest.rs"]
mod vmtest;

use std::process::Command;

fn hull_vmm() -> std::path::PathBuf {
    vmtest::build_binaries();
    vmtest::hull_vmm()
}

#[test]
fn pvm_host_refuses_a_stock_kernel_quickly() {
    let pvm = std::path::Path::new("/sys/module/kvm_pvm").exists();
    let dir = tempfile::tempdir().unwrap();
    // A file that is not a PVM-enabled kernel (nor any kernel at all).
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF not really").unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(hull_vmm())
        .arg("--kernel")
        .arg(&kernel)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    if pvm {
        assert!(
            err.contains("PVM") && err.contains("tests/kvm-host/run"),
            "PVM host not explained: {err}"
        );
        assert!(
            started.elapsed().as_secs() < 10,
            "refusal took {:?}",
            started.elapsed()
        );
    } else {
        eprintln!("not a PVM host: checking that hull-vmm does not claim it is");
        assert!(!err.contains("is PVM"), "{err}");
    }
}

#[test]
fn bad_flags_are_one_line_errors() {
    for (args, want) in [
        (&["--kernel", "/k", "--vcpus", "33"][..], "--vcpus 33"),
        (&["--kernel", "/k", "--mem", "4"][..], "--mem 4"),
        (&[][..], "no kernel given"),
        (
            &["--kernel", "/k", "--net", "fd=4", "--net", "fd=4"][..],
            "fd 4 is given to more than one network device",
        ),
    ] {
        let out = Command::new(hull_vmm()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
}
