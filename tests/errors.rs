//! hull's own errors, as a user reads them: one line, `hull: ` and the
//! chain of what failed, each cause said once (a variant shows its cause in
//! its message or exposes it as `source`, never both). These run the real
//! failure paths of the `hull` binary; the permission one needs root (to
//! drop to an unprivileged uid with setpriv) and fails saying so otherwise.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn hull() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hull"));
    // No network: `run` defaults to the bridge network, which must not be
    // built on the machine's own network.
    c.env_remove("HULL_STATE_DIR")
        .env_remove("HULL_KERNEL")
        .env("HULL_NETWORK", "none")
        .env("RUST_LOG", "off");
    c
}

/// The one line hull printed for its error (exit status 125).
fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {stderr}");
    let line = lines[0];
    assert!(line.starts_with("hull: "), "{line}");
    line.to_string()
}

/// No part of the chain is said twice.
fn assert_no_repeated_cause(line: &str) {
    assert!(
        line.matches("os error").count() <= 1,
        "a cause repeats: {line}"
    );
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(p),
            "{p:?} is said twice in: {line}"
        );
    }
}

#[test]
fn a_file_where_the_state_dir_goes_is_one_cause() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let out = hull()
        .arg("--state-dir")
        .arg(file.join("state"))
        .arg("ps")
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(
        line.contains("creating") && line.contains("Not a directory"),
        "{line}"
    );
    assert_no_repeated_cause(&line);
}

#[test]
fn permission_denied_on_the_state_dir_is_one_cause_needs_root() {
    assert_eq!(
        hull::sys::euid(),
        0,
        "this test needs root: it runs hull as uid 65534 (setpriv) against a root-owned 0500 directory"
    );
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A copy of hull that uid 65534 can reach and run.
    let exe = t.path().join("hull");
    std::fs::copy(env!("CARGO_BIN_EXE_hull"), &exe).unwrap();
    let locked = t.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .arg(&exe)
        .arg("--state-dir")
        .arg(locked.join("state"))
        .arg("ps")
        .env("RUST_LOG", "off")
        .output()
        .expect("setpriv (util-linux) runs");
    let line = error_line(&out);
    assert!(line.contains("Permission denied"), "{line}");
    assert_no_repeated_cause(&line);
}

#[test]
fn a_missing_kernel_is_one_line_and_leaves_no_container() {
    // Short: the agent's socket path goes under it (108 bytes at most).
    let t = tempfile::Builder::new().prefix("h").tempdir().unwrap();
    let state = t.path().join("s");
    let rootfs = t.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let out = run_vm_without_kernel(&state, &rootfs, &[], &[]);
    let line = error_line(&out);
    assert!(
        line.contains("guest kernel /nonexistent is not a file"),
        "{line}"
    );
    assert_no_repeated_cause(&line);
    assert!(
        empty_dir(&state.join("containers")),
        "--rm left a container"
    );
}

#[test]
fn no_built_kernel_says_how_to_build_one() {
    let t = tempfile::Builder::new().prefix("h").tempdir().unwrap();
    let rootfs = t.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let out = hull()
        .env("XDG_CACHE_HOME", t.path().join("cache"))
        .arg("--state-dir")
        .arg(t.path().join("s"))
        .args(["run", "--rm", "--isolation", "vm", "--rootfs"])
        .arg(&rootfs)
        .arg("true")
        .output()
        .unwrap();
    let line = error_line(&out);
    assert!(line.contains("guest-kernel/build.sh"), "{line}");
    assert_no_repeated_cause(&line);
}

#[test]
fn a_bad_dax_window_setting_is_one_line_before_anything_starts() {
    let t = tempfile::Builder::new().prefix("h").tempdir().unwrap();
    let state = t.path().join("s");
    let rootfs = t.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    for bad in ["abc", "3", "131072"] {
        // A missing kernel too: without the check, that is what hull reports.
        let volume = format!("{}:/data", rootfs.display());
        let out = run_vm_without_kernel(
            &state,
            &rootfs,
            &[("HULL_FS_DAX_MIB", bad)],
            &["-v", &volume],
        );
        let line = error_line(&out);
        assert!(
            line.starts_with(&format!("hull: HULL_FS_DAX_MIB=\"{bad}\": ")),
            "{line}"
        );
        assert!(
            empty_dir(&state.join("containers")),
            "HULL_FS_DAX_MIB={bad} left a container"
        );
    }
}

/// `hull run --rm --isolation vm --kernel /nonexistent [EXTRA] --rootfs
/// ROOTFS true` with `env` set: what fails before the kernel is looked at
/// fails first.
fn run_vm_without_kernel(
    state: &Path,
    rootfs: &Path,
    env: &[(&str, &str)],
    extra: &[&str],
) -> std::process::Output {
    hull()
        .envs(env.iter().copied())
        .arg("--state-dir")
        .arg(state)
        .args([
            "run",
            "--rm",
            "--isolation",
            "vm",
            "--kernel",
            "/nonexistent",
        ])
        .args(extra)
        .arg("--rootfs")
        .arg(rootfs)
        .arg("true")
        .output()
        .unwrap()
}

fn empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn a_flag_hull_does_not_know_before_the_image_is_an_unknown_flag() {
    let t = tempfile::Builder::new().prefix("h").tempdir().unwrap();
    let state = t.path().join("s");
    let out = hull()
        .arg("--state-dir")
        .arg(&state)
        .args(["run", "--publish-everything", "8080:80", "busybox"])
        .output()
        .unwrap();
    let line = error_line(&out);
    assert_eq!(
        line,
        "hull: unknown flag: --publish-everything (see hull run --help)"
    );
    assert!(
        empty_dir(&state.join("containers")),
        "an unknown flag left a container"
    );
}

#[test]
fn a_listing_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let t = tempfile::Builder::new().prefix("h").tempdir().unwrap();
    // `hull images | head -0`: the reader is gone before hull writes its header.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = hull()
        .arg("--data-dir")
        .arg(t.path())
        .arg("images")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "hull panicked: {stderr}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "status {:?}, stderr: {stderr}",
        out.status
    );
}
