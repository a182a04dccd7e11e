//! Building the container's root: layers stacked read-only under a tmpfs
//! upper with overlayfs, then the container's /proc, /sys, /dev and tmpfs
//! mounts, and the switch into it.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::sys::{self, mount};
use hull_agent::protocol::{Mount, MountKind, VM_SETUP_ENV, VmSetup};

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

/// The block devices hull attached, found by their serials: the layers
/// (`layerN`, or the single disk `rootfs`), bottom first, and the writable
/// `upper`.
#[derive(Debug, Default)]
struct RootDevices {
    layers: Vec<String>,
    upper: Option<String>,
}

/// Reads /sys/block once. A disk of zero sectors (an empty slot of a guest
/// restored from a template, or one whose new size the driver has not
/// taken yet) is left out, and its serial not read: each serial read is a
/// request to the device, and a template has 16 slots.
fn root_devices() -> Result<RootDevices, String> {
    let mut found = RootDevices::default();
    let mut layers: Vec<(u32, String)> = Vec::new();
    let entries = fs::read_dir("/sys/block").map_err(|e| format!("reading /sys/block: {e}"))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if sectors(&name) == 0 {
            continue;
        }
        let serial = fs::read_to_string(e.path().join("serial")).unwrap_or_default();
        let serial = serial.trim_matches(|c: char| c == '\0' || c.is_whitespace());
        let index = match serial.strip_prefix("layer") {
            Some(n) => n.parse().ok(),
            None if serial == "rootfs" => Some(0),
            None => None,
        };
        if let Some(i) = index {
            layers.push((i, format!("/dev/{name}")));
        } else if serial == "upper" {
            found.upper = Some(format!("/dev/{name}"));
        }
    }
    layers.sort();
    found.layers = layers.into_iter().map(|(_, d)| d).collect();
    Ok(found)
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

/// The mounts every container gets, under `root`; a default tmpfs at a path
/// in `taken` (the user mounted something there) is left out.
fn container_mounts(root: &str, devtmpfs: bool, taken: &[String]) -> Result<(), String> {
    mnt(
        "proc",
        &format!("{root}/proc"),
        "proc",
        NOSUID_NODEV_NOEXEC,
        "",
    )?;
    let sys_flags = NOSUID_NODEV_NOEXEC | if devtmpfs { 0 } else { RDONLY };
    let sys = format!("{root}/sys");
    mkdir(&sys)?;
    if let Err(e) = mount("sysfs", &sys, "sysfs", sys_flags, "") {
        // A user namespace may not mount sysfs for a network namespace it
        // does not own (the one hull prepared, joined before it): bind the
        // host's /sys read-only instead, as runc does.
        if devtmpfs || e.raw_os_error() != Some(libc::EPERM) {
            return Err(format!("mounting sysfs on {sys}: {e}"));
        }
        mount("/sys", &sys, "", libc::MS_BIND | libc::MS_REC, "")
            .map_err(|e| format!("binding /sys on {sys}: {e}"))?;
        let ro = libc::MS_REMOUNT | libc::MS_BIND | RDONLY | NOSUID_NODEV_NOEXEC;
        mount("", &sys, "", ro, "").map_err(|e| format!("making {sys} read-only: {e}"))?;
    }
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
    if !taken.iter().any(|t| t == "/run") {
        mnt(
            "tmpfs",
            &format!("{root}/run"),
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        )?;
    }
    if !taken.iter().any(|t| t == "/tmp") {
        mnt(
            "tmpfs",
            &format!("{root}/tmp"),
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        )?;
    }
    Ok(())
}

/// What hull put on the kernel command line for this VM (nothing: the
/// layers, no mounts).
fn vm_setup_request() -> Result<VmSetup, String> {
    match std::env::var(VM_SETUP_ENV) {
        Ok(hex) => VmSetup::from_hex(&hex).map_err(|e| format!("{VM_SETUP_ENV}: {e}")),
        Err(_) => Ok(VmSetup::default()),
    }
}

/// In the VM: mount the root (the layer disks stacked, or a virtio-fs
/// share), the user's mounts in it, switch into the result.
pub fn vm_setup() -> Result<(), String> {
    vm_base()?;
    vm_root(&vm_setup_request()?, root_devices()?)
}

/// The guest's own /proc, /sys, /dev and /run (before any disk).
pub fn vm_base() -> Result<(), String> {
    mnt("proc", "/proc", "proc", 0, "")?;
    mnt("sysfs", "/sys", "sysfs", 0, "")?;
    mnt("devtmpfs", "/dev", "devtmpfs", 0, "")?;
    mnt("tmpfs", "/run", "tmpfs", 0, "mode=0755")
}

/// Read-ahead of a virtio-fs mount, KiB: hull-vmm answers READs of up to
/// 1 MiB (FUSE's max_pages), and the kernel's default window (128 KiB)
/// would split a sequential read into requests of 128 KiB, each a round
/// trip to the VMM.
const VIRTIOFS_READ_AHEAD_KB: u32 = 1024;

/// Whether the virtio-fs devices have DAX windows: the driver claimed one
/// (a /proc/iomem region named after a device the virtiofs driver holds).
/// hull-vmm gives a window to every fs device of a VM or to none.
fn virtiofs_dax_offered() -> bool {
    static OFFERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFFERED.get_or_init(|| {
        let Ok(devices) = fs::read_dir("/sys/bus/virtio/drivers/virtiofs") else {
            return false;
        };
        let names: Vec<String> = devices
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("virtio"))
            .collect();
        let iomem = fs::read_to_string("/proc/iomem").unwrap_or_default();
        iomem.lines().any(|l| {
            l.rsplit_once(" : ")
                .is_some_and(|(_, name)| names.iter().any(|n| n == name))
        })
    })
}

/// Mounts the virtio-fs share `tag` at `target` and widens its read-ahead
/// (its backing device's read_ahead_kb in /sys; a hint: where that fails
/// the mount still serves).
///
/// Where the VMM gave the virtio-fs devices a DAX window, the share is
/// mounted with `dax=always`: file data is read and written in place in
/// host memory mapped into the window, not copied through the queue and the
/// guest's page cache. Without a window (or if that mount fails) it is
/// mounted without.
fn mount_virtiofs(tag: &str, target: &str, flags: libc::c_ulong) -> std::io::Result<()> {
    if !(virtiofs_dax_offered() && mount(tag, target, "virtiofs", flags, "dax=always").is_ok()) {
        mount(tag, target, "virtiofs", flags, "")?;
    }
    if let Ok(st) = fs::metadata(target) {
        use std::os::unix::fs::MetadataExt;
        let dev = st.dev();
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
        let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
        let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
        let _ = fs::write(knob, VIRTIOFS_READ_AHEAD_KB.to_string());
    }
    Ok(())
}

/// Sectors of the block device `/dev/NAME` as the guest kernel knows them.
fn sectors(dev: &str) -> u64 {
    let name = dev.trim_start_matches("/dev/");
    fs::read_to_string(format!("/sys/block/{name}/size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// In a guest restored from a template: waits (up to `limit`) until the
/// disks hull gave the template's empty slots have their serials and sizes
/// (the driver takes a new capacity from a configuration-change interrupt,
/// on a work queue), then mounts them as [`vm_setup`] does.
pub fn vm_root_after_restore(
    disks: &hull_agent::protocol::RootDisks,
    limit: std::time::Duration,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let found = root_devices()?;
        let upper_ok = !disks.upper || found.upper.is_some();
        if found.layers.len() == disks.layers as usize && upper_ok {
            return vm_root(&disks.setup, found);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the guest has {} of the {} layer disks{} after {limit:?} (restored from a template)",
                found.layers.len(),
                disks.layers,
                if upper_ok { "" } else { " and no upper disk" },
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Mounts the root (the layer disks stacked, or a virtio-fs share), the
/// user's mounts in it, and switches into the result.
fn vm_root(setup: &VmSetup, disks: RootDevices) -> Result<(), String> {
    let root = "/run/hull/root";
    match &setup.root_tag {
        Some(tag) => {
            mkdir(root)?;
            mount_virtiofs(tag, root, 0)
                .map_err(|e| format!("mounting the root share {tag} (virtiofs): {e}"))?;
        }
        None => layered_root(root, &disks)?,
    }
    for m in &setup.mounts {
        user_mount(root, m, None)?;
    }
    let mut taken: Vec<String> = setup.mounts.iter().map(|m| m.target.clone()).collect();
    if disks.upper.is_some() {
        // A build step: /tmp is the image's own, as in docker's and
        // buildah's RUN, not a tmpfs.
        taken.push("/tmp".to_string());
    }
    container_mounts(root, true, &taken)?;
    std::env::set_current_dir(root).map_err(|e| format!("entering {root}: {e}"))?;
    if setup.read_only {
        writable_etc_files()?;
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        mount("", ".", "", flags, "").map_err(|e| format!("making the root read-only: {e}"))?;
    }
    // The initramfs cannot be pivoted away from: move the new root over it.
    mount(".", "/", "", libc::MS_MOVE, "").map_err(|e| format!("moving the root: {e}"))?;
    sys::chroot_here().map_err(|e| format!("entering the root: {e}"))
}

/// The layer disks stacked under a writable upper at `root`.
fn layered_root(root: &str, disks: &RootDevices) -> Result<(), String> {
    if disks.layers.is_empty() {
        return Err("no root filesystem disk (serial rootfs or layerN) attached".into());
    }
    let mut lowers = Vec::new();
    for (i, disk) in disks.layers.iter().enumerate() {
        let dir = format!("/run/hull/layers/{i}");
        mkdir(&dir)?;
        mount(disk, &dir, "erofs", RDONLY, "")
            .or_else(|_| mount(disk, &dir, "ext4", RDONLY, "noload"))
            .map_err(|e| format!("mounting {disk} (erofs or ext4): {e}"))?;
        lowers.push(dir);
    }
    // A writable disk with serial `upper` (hull build) holds the upper and
    // work dirs instead of the tmpfs (a step may write more than guest RAM);
    // the agent sends the upper's changes to the host as a tar (export.rs).
    if let Some(disk) = &disks.upper {
        mkdir("/run/hull/rw")?;
        mount(disk, "/run/hull/rw", "ext4", 0, "")
            .map_err(|e| format!("mounting the upper disk {disk} (ext4): {e}"))?;
    }
    overlay(&lowers, "/run/hull/rw", root)?;
    if disks.upper.is_some() {
        crate::export::keep_upper("/run/hull/rw/upper")?;
    }
    Ok(())
}

/// Read-only, id-mapped detached copies of `lowers` for the user namespace
/// `userns` (host root stays outside it: a layer file owned by host root is
/// owned by the container's root inside).
pub fn idmapped_layers(lowers: &[PathBuf], userns: &OwnedFd) -> Result<Vec<OwnedFd>, String> {
    lowers
        .iter()
        .map(|l| {
            let path = l.display().to_string();
            let mnt = sys::clone_mount(&path).map_err(|e| format!("cloning {path}: {e}"))?;
            sys::idmap_mount(&mnt, userns, true).map_err(|e| {
                format!("id-mapping {path} (its filesystem must support idmapped mounts): {e}")
            })?;
            Ok(mnt)
        })
        .collect()
}

/// The layers of an ns sandbox: host directories, or id-mapped mounts of
/// them with the host id that root maps to.
pub enum Layers<'a> {
    Host(&'a [PathBuf]),
    Mapped { mounts: Vec<OwnedFd>, root_id: u32 },
}

/// The container's root, in the scratch tmpfs.
const ROOT: &str = "root";

/// On the host, in a mount namespace of the agent's own (still outside any
/// user namespace): a tmpfs at `scratch` holding the writable upper, the
/// layers stacked under it, and the working directory moved into the result.
/// What follows works on relative paths, so a process in a user namespace
/// need not reach host directories it has no rights on. With `upper`, the
/// writable layer lives in that host directory instead (upper/, work/).
pub fn ns_prepare(
    scratch: &Path,
    upper: Option<&Path>,
    layers: Layers<'_>,
    mounts: &[Mount],
    userns: Option<&OwnedFd>,
) -> Result<(), String> {
    sys::unshare(libc::CLONE_NEWNS).map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    mount("", "/", "", libc::MS_REC | libc::MS_PRIVATE, "")
        .map_err(|e| format!("making mounts private: {e}"))?;
    let s = scratch.display().to_string();
    mnt("tmpfs", &s, "tmpfs", 0, "mode=0755")?;
    let (lowers, owner) = match layers {
        Layers::Host(dirs) => (dirs.iter().map(|p| p.display().to_string()).collect(), None),
        Layers::Mapped { mounts, root_id } => {
            let mut lowers = Vec::new();
            for (i, m) in mounts.iter().enumerate() {
                let dir = format!("{s}/layers/{i}");
                mkdir(&dir)?;
                sys::attach_mount(m, &dir).map_err(|e| format!("attaching layer {i}: {e}"))?;
                lowers.push(dir);
            }
            (lowers, Some(root_id))
        }
    };
    let rw = match upper {
        Some(dir) => dir.display().to_string(),
        None => format!("{s}/rw"),
    };
    if let Some(id) = owner {
        // The container's root owns the upper (and so the root directory).
        let upper = format!("{rw}/upper");
        mkdir(&upper)?;
        std::os::unix::fs::chown(&upper, Some(id), Some(id))
            .map_err(|e| format!("chown {upper}: {e}"))?;
    }
    let root = format!("{s}/{ROOT}");
    overlay(&lowers, &rw, &root)?;
    for m in mounts {
        user_mount(&root, m, userns.zip(owner))?;
    }
    std::env::set_current_dir(&root).map_err(|e| format!("entering {root}: {e}"))
}

/// The directory (or, for a file bind, the file) at the container path
/// `target` under `root`, made where missing. A `..` or a component that is
/// a symlink in the image is refused: a mount must land inside the root.
fn mount_point(root: &str, target: &str, file: bool) -> Result<String, String> {
    let mut at = PathBuf::from(root);
    let parts: Vec<&str> = target
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for (i, part) in parts.iter().enumerate() {
        if *part == ".." {
            return Err(format!("mount target {target}: \"..\" is not allowed"));
        }
        at.push(part);
        let last = i + 1 == parts.len();
        match fs::symlink_metadata(&at) {
            Ok(md) if md.file_type().is_symlink() => {
                return Err(format!(
                    "mount target {target}: {} is a symlink in the image",
                    at.display()
                ));
            }
            Ok(_) => {}
            Err(_) if last && file => {
                fs::write(&at, b"").map_err(|e| format!("creating {}: {e}", at.display()))?;
            }
            Err(_) => {
                fs::create_dir(&at).map_err(|e| format!("creating {}: {e}", at.display()))?;
            }
        }
    }
    Ok(at.display().to_string())
}

/// One of the user's mounts (`-v`, `--mount`, `--tmpfs`) at its target
/// under `root`. With `mapped` (the container's user namespace and the host
/// id its root maps to), a bind is id-mapped through that namespace and a
/// tmpfs belongs to the container's root.
fn user_mount(root: &str, m: &Mount, mapped: Option<(&OwnedFd, u32)>) -> Result<(), String> {
    match &m.kind {
        MountKind::Bind { source } => {
            let file = fs::metadata(source)
                .map(|md| !md.is_dir())
                .map_err(|e| format!("bind source {source}: {e}"))?;
            let target = mount_point(root, &m.target, file)?;
            match mapped {
                Some((ns, _)) => {
                    let mnt =
                        sys::clone_mount(source).map_err(|e| format!("cloning {source}: {e}"))?;
                    sys::idmap_mount(&mnt, ns, m.readonly).map_err(|e| {
                        format!(
                            "id-mapping {source} (its filesystem must support idmapped mounts): {e}"
                        )
                    })?;
                    sys::attach_mount(&mnt, &target)
                        .map_err(|e| format!("attaching {source} at {}: {e}", m.target))?;
                }
                None => {
                    mount(source, &target, "", libc::MS_BIND | libc::MS_REC, "")
                        .map_err(|e| format!("binding {source} at {}: {e}", m.target))?;
                    if m.readonly {
                        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                        mount("", &target, "", flags, "")
                            .map_err(|e| format!("making {} read-only: {e}", m.target))?;
                    }
                }
            }
        }
        MountKind::Virtiofs { tag } => {
            let target = mount_point(root, &m.target, false)?;
            let ro = if m.readonly { RDONLY } else { 0 };
            mount_virtiofs(tag, &target, ro)
                .map_err(|e| format!("mounting share {tag} at {} (virtiofs): {e}", m.target))?;
        }
        MountKind::Tmpfs { size, mode } => {
            let target = mount_point(root, &m.target, false)?;
            let mut data = format!("mode={:o}", mode.unwrap_or(0o1777));
            if let Some(size) = size {
                data.push_str(&format!(",size={size}"));
            }
            if let Some((_, id)) = mapped {
                data.push_str(&format!(",uid={id},gid={id}"));
            }
            let ro = if m.readonly { RDONLY } else { 0 };
            mount(
                "tmpfs",
                &target,
                "tmpfs",
                libc::MS_NOSUID | libc::MS_NODEV | ro,
                &data,
            )
            .map_err(|e| format!("mounting a tmpfs at {}: {e}", m.target))?;
        }
    }
    Ok(())
}

/// The files the container's network setup writes at start (see
/// network.rs), kept writable under a read-only root as docker keeps them:
/// each bound onto itself, so it is a mount of its own that the root's
/// read-only remount leaves alone. Made empty where the image has none; left
/// as they are where /etc or the file is a symlink or not a plain file (a
/// mount must not follow the image out of the root).
fn writable_etc_files() -> Result<(), String> {
    match fs::symlink_metadata("etc") {
        Ok(md) if md.is_dir() => {}
        _ => return Ok(()),
    }
    for file in ["etc/hosts", "etc/resolv.conf"] {
        match fs::symlink_metadata(file) {
            Ok(md) if md.is_file() => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs::write(file, "") {
                Ok(()) => {}
                // A root that is read-only already (a microVM's read-only
                // host directory root): no file to keep writable.
                Err(e) if e.raw_os_error() == Some(libc::EROFS) => continue,
                Err(e) => return Err(format!("creating /{file}: {e}")),
            },
            _ => continue,
        }
        mount(file, file, "", libc::MS_BIND, "")
            .map_err(|e| format!("binding /{file} for --read-only: {e}"))?;
    }
    Ok(())
}

/// As PID 1 of the new namespaces, in the root ns_prepare made: the
/// container's mounts, then the root pivoted onto the working directory.
/// `taken`: the container paths the user mounted something at (ns_prepare
/// mounted them; the recursive bind below carries them along, locked to the
/// root); `read_only`: the root itself is made read-only (`--read-only`).
pub fn ns_enter(taken: &[String], read_only: bool) -> Result<(), String> {
    // A mount copied from the agent's first mount namespace into one of a
    // user namespace is locked, and pivot_root refuses a locked new root:
    // bind the root onto itself here, and step into the bind (up to the
    // scratch tmpfs and down again: the host path above is not ours).
    mount(".", ".", "", libc::MS_BIND | libc::MS_REC, "")
        .map_err(|e| format!("binding the root: {e}"))?;
    std::env::set_current_dir(format!("../{ROOT}"))
        .map_err(|e| format!("entering the root: {e}"))?;
    container_mounts(".", false, taken)?;
    if read_only {
        writable_etc_files()?;
        // After the mount points above exist; the mounts on them stay as
        // they are (a remount changes only the root's own mount).
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        mount("", ".", "", flags, "").map_err(|e| format!("making the root read-only: {e}"))?;
    }
    sys::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    // The old root now sits on top of the new one at "/": detach it.
    sys::umount_detach(".").map_err(|e| format!("detaching the old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))
}
