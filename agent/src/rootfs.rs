//! Building the container's root: layers stacked read-only under a tmpfs
//! upper with overlayfs, then the container's /proc, /sys, /dev and tmpfs
//! mounts, and the switch into it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::sys::{self, mount};

const RDONLY: libc::c_ulong = libc::MS_RDONLY;
const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

fn mkdir(p: &str) -> Result<(), String> {
    fs::create_dir_all(p).map_err(|e| format!("creating {p}: {e}"))
}

fn mnt(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), String> {
    mkdir(target)?;
    mount(src, target, fstype, flags, data)
        .map_err(|e| format!("mounting {fstype} on {target}: {e}"))
}

/// The block devices hull attached as layers, bottom layer first: disks
/// whose serial is `layerN`, or the single disk with serial `rootfs`.
fn find_layer_disks() -> Result<Vec<String>, String> {
    let mut layers: Vec<(u32, String)> = Vec::new();
    let entries = fs::read_dir("/sys/block").map_err(|e| format!("reading /sys/block: {e}"))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let serial = fs::read_to_string(e.path().join("serial")).unwrap_or_default();
        let serial = serial.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        let index = match serial.strip_prefix("layer") {
            Some(n) => n.parse().ok(),
            None if serial == "rootfs" => Some(0),
            None => None,
        };
        if let Some(i) = index {
            layers.push((i, format!("/dev/{name}")));
        }
    }
    if layers.is_empty() {
        return Err("no root filesystem disk (serial rootfs or layerN) attached".into());
    }
    layers.sort();
    Ok(layers.into_iter().map(|(_, d)| d).collect())
}

/// Stacks `lowers` (bottom first) under a writable upper in `rw` at `root`.
fn overlay(lowers: &[String], rw: &str, root: &str) -> Result<(), String> {
    let upper = format!("{rw}/upper");
    let work = format!("{rw}/work");
    mkdir(&upper)?;
    mkdir(&work)?;
    let lowerdir: Vec<&str> = lowers.iter().rev().map(String::as_str).collect();
    let data = format!(
        "lowerdir={},upperdir={upper},workdir={work}",
        lowerdir.join(":")
    );
    mnt("overlay", root, "overlay", 0, &data)
}

/// The mounts every container gets, under `root`.
fn container_mounts(root: &str, devtmpfs: bool) -> Result<(), String> {
    mnt(
        "proc",
        &format!("{root}/proc"),
        "proc",
        NOSUID_NODEV_NOEXEC,
        "",
    )?;
    let sys_flags = NOSUID_NODEV_NOEXEC | if devtmpfs { 0 } else { RDONLY };
    mnt("sysfs", &format!("{root}/sys"), "sysfs", sys_flags, "")?;
    let dev = format!("{root}/dev");
    if devtmpfs {
        mnt("devtmpfs", &dev, "devtmpfs", libc::MS_NOSUID, "mode=0755")?;
    } else {
        mnt("tmpfs", &dev, "tmpfs", libc::MS_NOSUID, "mode=0755")?;
        for d in ["null", "zero", "full", "random", "urandom", "tty"] {
            let target = format!("{dev}/{d}");
            fs::write(&target, b"").map_err(|e| format!("creating {target}: {e}"))?;
            mount(&format!("/dev/{d}"), &target, "", libc::MS_BIND, "")
                .map_err(|e| format!("binding /dev/{d}: {e}"))?;
        }
    }
    mnt(
        "devpts",
        &format!("{dev}/pts"),
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    let ptmx = format!("{dev}/ptmx");
    let _ = fs::remove_file(&ptmx);
    let _ = std::os::unix::fs::symlink("pts/ptmx", &ptmx);
    mnt(
        "shm",
        &format!("{dev}/shm"),
        "tmpfs",
        NOSUID_NODEV_NOEXEC,
        "mode=1777",
    )?;
    mnt(
        "tmpfs",
        &format!("{root}/run"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    )?;
    mnt(
        "tmpfs",
        &format!("{root}/tmp"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )?;
    Ok(())
}

/// In the VM: mount the layer disks, stack them, switch into the result.
pub fn vm_setup() -> Result<(), String> {
    mnt("proc", "/proc", "proc", 0, "")?;
    mnt("sysfs", "/sys", "sysfs", 0, "")?;
    mnt("devtmpfs", "/dev", "devtmpfs", 0, "")?;
    mnt("tmpfs", "/run", "tmpfs", 0, "mode=0755")?;
    let disks = find_layer_disks()?;
    let mut lowers = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let dir = format!("/run/hull/layers/{i}");
        mkdir(&dir)?;
        mount(disk, &dir, "erofs", RDONLY, "")
            .or_else(|_| mount(disk, &dir, "ext4", RDONLY, "noload"))
            .map_err(|e| format!("mounting {disk} (erofs or ext4): {e}"))?;
        lowers.push(dir);
    }
    let root = "/run/hull/root";
    overlay(&lowers, "/run/hull/rw", root)?;
    container_mounts(root, true)?;
    std::env::set_current_dir(root).map_err(|e| format!("entering {root}: {e}"))?;
    // The initramfs cannot be pivoted away from: move the new root over it.
    mount(".", "/", "", libc::MS_MOVE, "").map_err(|e| format!("moving the root: {e}"))?;
    sys::chroot_here().map_err(|e| format!("entering the root: {e}"))
}

/// On the host, in fresh namespaces: stack host directories, pivot into them.
pub fn ns_setup(scratch: &Path, lowers: &[PathBuf]) -> Result<(), String> {
    mount("", "/", "", libc::MS_REC | libc::MS_PRIVATE, "")
        .map_err(|e| format!("making mounts private: {e}"))?;
    let s = scratch.display().to_string();
    mnt("tmpfs", &s, "tmpfs", 0, "mode=0755")?;
    let root = format!("{s}/root");
    let lowers: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
    overlay(&lowers, &format!("{s}/rw"), &root)?;
    container_mounts(&root, false)?;
    let old = format!("{root}/.hull-old-root");
    mkdir(&old)?;
    sys::pivot_root(&root, &old).map_err(|e| format!("pivot_root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    sys::umount_detach("/.hull-old-root").map_err(|e| format!("detaching the old root: {e}"))?;
    let _ = fs::remove_dir("/.hull-old-root");
    Ok(())
}
