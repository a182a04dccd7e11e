//! The podman command line the tests share: a root and run root of the
//! test's own, and the flags this machine needs (storage on vfs, cgroups
//! through cgroupfs, events in a file).

use std::path::Path;
use std::process::Command;

/// `podman` (the program `cmd` runs) with its root and run root under `dir`.
pub fn with_own_storage(mut cmd: Command, dir: &Path) -> Command {
    cmd.arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
    cmd
}
