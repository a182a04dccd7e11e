//! A busybox root filesystem for tests, from Debian's busybox-static.

#![allow(dead_code)] // each test target uses its own subset

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where Debian's busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Builds a minimal rootfs in `dir`: /bin/busybox and a link per applet,
/// /etc/passwd and /etc/group with root and an unprivileged user, and the
/// empty directories a container runtime mounts over.
pub fn rootfs(dir: &Path) -> PathBuf {
    let bb = Path::new(BUSYBOX);
    assert!(
        bb.exists(),
        "{BUSYBOX} is missing: install Debian's busybox-static (scripts/install-deps.sh)"
    );
    for d in [
        "bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "root",
        "home/user",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(bb, dir.join("bin/busybox")).unwrap();
    let out = std::process::Command::new(bb)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = symlink("busybox", dir.join("bin").join(applet));
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\nuser:x:1000:\nextra:x:2000:user\n",
    )
    .unwrap();
    dir.to_path_buf()
}

/// A [`rootfs`] built once per test binary, in a temp dir, for every trial
/// that only reads it.
pub fn shared_rootfs() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| {
        let d = tempfile::tempdir().expect("tempdir");
        rootfs(d.path());
        d
    })
    .path()
}
