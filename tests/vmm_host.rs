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

/// hull-vmm with `args`, JSON `config` on its stdin; returns exit code and
/// stderr.
fn vmm_with_stdin(args: &[&str], config: &str) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = Command::new(hull_vmm())
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(config.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), err)
}

#[test]
fn config_fd_passes_the_whole_config() {
    // The kernel named only in the JSON is the one hull-vmm tries to read,
    // and a flag given as well overrides the JSON.
    let (code, err) = vmm_with_stdin(
        &["--config-fd", "0"],
        r#"{"kernel": "/nonexistent/from-fd/vmlinux", "vcpus": 2, "serial": "none"}"#,
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.trim(),
        "hull-vmm: cannot read the kernel /nonexistent/from-fd/vmlinux: No such file or directory (os error 2)"
    );
    let (code, err) = vmm_with_stdin(
        &["--config-fd", "0", "--vcpus", "33"],
        r#"{"kernel": "/nonexistent/vmlinux", "vcpus": 2}"#,
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--vcpus 33"), "{err}");
}

#[test]
fn a_bad_config_fd_is_a_one_line_error() {
    let (code, err) = vmm_with_stdin(&["--config-fd", "0"], r#"{"kernel": "/k", "cpus": 2}"#);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with(
            "hull-vmm: the configuration in fd 0 is not a valid VmConfig: unknown field `cpus`"
        ),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let out = Command::new(hull_vmm())
        .args(["--config-fd", "987"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        "hull-vmm: --config-fd 987: no such open file descriptor"
    );

    // Standard error (a pipe's write end here) cannot be read, and stays
    // open for the message that says so.
    let out = Command::new(hull_vmm())
        .args(["--config-fd", "2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("hull-vmm: reading the configuration from fd 2: "),
        "{err}"
    );
}
