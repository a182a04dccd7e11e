//! microVM templates (docs/snapshots.md): one guest booted to "agent
//! ready" with no container, saved by `hull-vmm --snapshot-at-ready`, per
//! (hull-vmm, kernel, agent initramfs, vCPUs, memory, huge pages, kernel
//! command line). Made on first need under the cache dir, under a lock so
//! that concurrent first runs make it once; checked before each use (the
//! snapshot's own check: format, checksum, sizes, kernel and initrd by
//! SHA-256) and made again when refused.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hull_vmm::config::{MAX_DISKS, MacAddr, NetConfig, SerialOutput, VmConfig, VsockConfig};
use hull_vmm::snapshot::{Expected, Snapshot};
use sha2::{Digest, Sha256};

use super::GUEST_CID;
use crate::sys;

/// Empty disk slots every template declares: as many disks as a cold-booted
/// microVM may have (the layers and the writable upper together).
pub const DISK_SLOTS: usize = MAX_DISKS;
/// Empty virtio-fs slots of a template for containers with shares
/// (volumes, bind mounts, a host-directory root), which then has
/// [`DISK_SLOTS_WITH_FS`] disk slots: the IOAPIC's 19 pins for virtio
/// devices hold 12 disks, 4 shares, rng, vsock and a network device.
pub const FS_SLOTS: usize = 4;
pub const DISK_SLOTS_WITH_FS: usize = DISK_SLOTS - FS_SLOTS;
/// Set to 1, runs cold-boot every microVM (as `hull run --cold-boot`).
pub const COLD_BOOT_ENV: &str = "HULL_COLD_BOOT";
/// How long making a template may take (a cold boot in an emulated host
/// takes seconds; a stuck guest must not hold the lock forever).
const MAKE_TIMEOUT: Duration = Duration::from_secs(300);
/// Bumped when what a template holds changes in a way its inputs do not show.
const FORMAT: &str = "hull-template 2";
/// The MAC of a networked template's virtio-net device. A restored clone
/// keeps it in the device (a restore must show the guest the device it
/// saw) and its agent gives eth0 the container's MAC.
pub const TEMPLATE_MAC: [u8; 6] = [0x02, 0x68, 0x75, 0x6c, 0x6c, 0x00];
/// The tap a networked template is made with, in a network namespace of
/// its own that ends with the template's VMM (no frame ever crosses it).
const TEMPLATE_TAP: &str = "hulltpl0";
/// Templates kept under the cache dir when one is made: the most recently
/// used (a template is touched at each use), and any used in the last
/// [`PRUNE_GRACE`] besides (a run may be about to restore it).
pub const KEEP_TEMPLATES: usize = 8;
const PRUNE_GRACE: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("making the microVM template in {}: hull-vmm {detail}", dir.display())]
    Make { dir: PathBuf, detail: String },
}

pub(super) fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let path = path.to_path_buf();
    move |source| TemplateError::Io { what, path, source }
}

/// Removes `dir` (and `root`/`name`.lock) unless somebody holds that lock;
/// whether it was removed.
pub(super) fn remove_unlocked(root: &Path, name: &str, dir: &Path) -> bool {
    let lock_path = root.join(format!("{name}.lock"));
    let Ok(lock) = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
    else {
        return false;
    };
    if !matches!(sys::try_lock_exclusive(&lock), Ok(true)) || std::fs::remove_dir_all(dir).is_err()
    {
        return false;
    }
    let _ = std::fs::remove_file(&lock_path);
    true
}

/// `root`/`name`.lock, created if missing and held exclusively (waiting for
/// whoever holds it) until the returned file is dropped.
pub(super) fn lock(root: &Path, name: &str) -> Result<std::fs::File, TemplateError> {
    let lock_path = root.join(format!("{name}.lock"));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("opening", &lock_path))?;
    sys::lock_exclusive(&lock).map_err(io("locking", &lock_path))?;
    Ok(lock)
}

/// What a template is made from (and what a restore must match).
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub vmm: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub huge_pages: bool,
    /// Appended to hull-vmm's default command line (the guest keeps it).
    pub cmdline: &'a str,
    /// A virtio-net device (for containers on a network).
    pub net: bool,
    /// Empty virtio-fs slots (0, or [`FS_SLOTS`] for containers with
    /// shares; fewer disk slots then).
    pub fs_slots: usize,
    /// The DAX window of each fs slot, MiB (0: none): the guest maps it
    /// when it probes the slot, so a restore must bring the same.
    pub fs_dax_mib: u64,
}

impl Inputs<'_> {
    /// The template's directory name: a digest of every input (files by
    /// path, size, inode and modification time: a rebuilt kernel or agent
    /// gets a template of its own; the snapshot's check compares their
    /// SHA-256 too).
    fn key(&self) -> String {
        let mut h = Sha256::new();
        h.update(FORMAT);
        for f in [self.vmm, self.kernel, self.initrd] {
            h.update(f.as_os_str().as_encoded_bytes());
            if let Ok(m) = std::fs::metadata(f) {
                h.update(format!(
                    ":{}:{}:{}:{}",
                    m.size(),
                    m.ino(),
                    m.mtime(),
                    m.mtime_nsec()
                ));
            }
            h.update([0]);
        }
        h.update(format!(
            "{}:{}:{}:{}:{}:{}:{}",
            self.vcpus,
            self.mem_mib,
            self.huge_pages,
            self.disk_slots(),
            self.fs_slots,
            self.net,
            self.cmdline
        ));
        // Only a window changes the key: templates without one keep theirs.
        if self.fs_dax_mib > 0 {
            h.update(format!(":dax{}", self.fs_dax_mib));
        }
        let d = h.finalize();
        d[..12].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The template's empty disk slots.
    pub fn disk_slots(&self) -> usize {
        if self.fs_slots > 0 {
            DISK_SLOTS_WITH_FS
        } else {
            DISK_SLOTS
        }
    }

    fn expected(&self) -> Expected {
        Expected {
            kernel: Some(self.kernel.to_path_buf()),
            initrd: Some(self.initrd.to_path_buf()),
            vcpus: Some(self.vcpus),
            mem_mib: Some(self.mem_mib),
        }
    }
}

/// Whether the user asked for cold boots through the environment.
pub fn cold_boot_by_env() -> bool {
    std::env::var(COLD_BOOT_ENV).as_deref() == Ok("1")
}

/// Why the template in `dir` cannot be restored (None: it can).
fn refusal(dir: &Path, inputs: &Inputs<'_>) -> Option<String> {
    match Snapshot::open(dir, &inputs.expected()) {
        Ok(_) => None,
        Err(e) => Some(crate::error::chain(&e)),
    }
}

/// The template for `inputs` under `cache`, made (or made again, when the
/// one there is refused) first; `progress` hears, in one line each, that
/// it is being made and why an old one was not used.
pub fn ensure(
    cache: &Path,
    inputs: &Inputs<'_>,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, TemplateError> {
    let root = cache.join("templates");
    let dir = root.join(inputs.key());
    if dir.exists() && refusal(&dir, inputs).is_none() {
        touch(&dir);
        return Ok(dir);
    }
    std::fs::create_dir_all(&root).map_err(io("creating", &root))?;
    let lock = lock(&root, &inputs.key())?;
    // Another run may have made it while this one waited.
    if dir.exists() {
        match refusal(&dir, inputs) {
            None => return Ok(dir),
            Some(why) => {
                progress(&format!(
                    "the microVM template {} is refused ({why}): making it again",
                    dir.display()
                ));
                std::fs::remove_dir_all(&dir).map_err(io("removing", &dir))?;
            }
        }
    }
    progress(&format!(
        "making the microVM template for {} vCPU, {} MiB (once per kernel, agent and size)",
        inputs.vcpus, inputs.mem_mib
    ));
    // Unique even among hosts sharing the cache (the lock does not reach
    // across a 9p share, and pids repeat between hosts).
    let tmp = root.join(format!("{}.tmp{}", inputs.key(), unique_suffix()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io("creating", &tmp))?;
    let made = make(&tmp, inputs).and_then(|()| match std::fs::rename(&tmp, &dir) {
        // Another host made the same template meanwhile: use that one.
        Err(_) if refusal(&dir, inputs).is_none() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        r => r.map_err(io("renaming the template to", &dir)),
    });
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    drop(lock);
    if made.is_ok() {
        prune(&root, KEEP_TEMPLATES, PRUNE_GRACE);
    }
    made.map(|()| dir)
}

/// The pid and the clock's nanoseconds: a temporary name no other process
/// picks, here or on another machine sharing the directory.
fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// Marks the template in `dir` as used now (its modification time).
fn touch(dir: &Path) {
    let now = std::fs::FileTimes::new().set_modified(std::time::SystemTime::now());
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.set_times(now);
    }
}

/// Removes the templates under `root` past the `keep` most recently used
/// (templates of older kernels, agents, hull-vmm binaries or sizes), but
/// none used within `grace`; and what failed makings left behind (a
/// `KEY.tmpPID-NANOS` whose process is gone here and that is older than
/// `grace`: a machine sharing the cache directory may be making it, under a
/// pid this one does not have). A template someone holds the lock of (being
/// made again) is left alone. Returns the names removed.
pub fn prune(root: &Path, keep: usize, grace: Duration) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now();
    let mut templates = Vec::new();
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let used = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        let idle = now.duration_since(used).unwrap_or_default() >= grace;
        if let Some((_, suffix)) = name.split_once(".tmp") {
            let pid = suffix.split('-').next().unwrap_or_default();
            let gone = pid.parse::<i32>().is_ok_and(
                |p| matches!(sys::kill(p, 0), Err(e) if e.raw_os_error() == Some(libc::ESRCH)),
            );
            if gone && idle && std::fs::remove_dir_all(&path).is_ok() {
                removed.push(name);
            }
            continue;
        }
        if name.contains('.') || !path.is_dir() {
            continue;
        }
        templates.push((used, name, path));
    }
    templates.sort_by_key(|t| std::cmp::Reverse(t.0));
    for (used, name, path) in templates.into_iter().skip(keep) {
        if now.duration_since(used).unwrap_or_default() < grace {
            continue;
        }
        if remove_unlocked(root, &name, &path) {
            removed.push(name);
        }
    }
    removed
}

/// The template's VM: no disks yet (empty slots), the agent told it is a
/// template, paused and saved in `dir` once the agent is ready. Its vsock
/// socket (never connected to) is `uds`: not in the cache dir, whose
/// filesystem may not hold sockets (a 9p share does not).
fn template_config(dir: &Path, uds: &Path, inputs: &Inputs<'_>) -> VmConfig {
    let mut c = VmConfig::new(inputs.kernel.to_path_buf());
    c.initrd = Some(inputs.initrd.to_path_buf());
    c.cmdline = format!(
        "{} {}=1",
        inputs.cmdline,
        hull_agent::protocol::TEMPLATE_ENV
    )
    .trim()
    .to_string();
    c.vcpus = inputs.vcpus;
    c.mem_mib = inputs.mem_mib;
    c.huge_pages = inputs.huge_pages;
    c.serial = SerialOutput::File(dir.join("console.log"));
    c.boot_timer = true;
    c.rng = true;
    c.disk_slots = inputs.disk_slots();
    c.fs_slots = inputs.fs_slots;
    if inputs.fs_slots > 0 {
        c.fs_dax_mib = inputs.fs_dax_mib;
    }
    c.vsock = Some(VsockConfig {
        cid: GUEST_CID,
        uds: uds.to_path_buf(),
    });
    if inputs.net {
        c.nets = vec![NetConfig {
            tap: Some(TEMPLATE_TAP.into()),
            fd: None,
            mac: Some(MacAddr(TEMPLATE_MAC)),
        }];
    }
    c.snapshot_at_ready = Some(dir.to_path_buf());
    c
}

fn make(dir: &Path, inputs: &Inputs<'_>) -> Result<(), TemplateError> {
    let uds = std::env::temp_dir().join(format!("hull-template-{}.sock", std::process::id()));
    let made = make_with(dir, &uds, inputs);
    let _ = std::fs::remove_file(&uds);
    made
}

fn make_with(dir: &Path, uds: &Path, inputs: &Inputs<'_>) -> Result<(), TemplateError> {
    let config = template_config(dir, uds, inputs);
    let config_path = dir.join("vmm.json");
    let json = serde_json::to_vec_pretty(&config).expect("a VmConfig serializes");
    std::fs::write(&config_path, json).map_err(io("writing", &config_path))?;
    let log = dir.join("vmm.log");
    let logf = std::fs::File::create(&log).map_err(io("creating", &log))?;
    let mut cmd = Command::new(inputs.vmm);
    cmd.arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf);
    sys::die_with_parent(&mut cmd);
    if inputs.net {
        // Its tap in a namespace of its own: nothing on the host's network.
        sys::in_new_netns(&mut cmd);
    }
    let mut child = cmd.spawn().map_err(io("starting", inputs.vmm))?;
    let deadline = Instant::now() + MAKE_TIMEOUT;
    let failed = |detail: String| TemplateError::Make {
        dir: dir.to_path_buf(),
        detail,
    };
    let status = loop {
        match child.try_wait().map_err(io("waiting for", inputs.vmm))? {
            Some(s) => break s,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "did not reach the agent's ready line in {} s",
                    MAKE_TIMEOUT.as_secs()
                )));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    let last = said
        .lines()
        .rev()
        .find(|l| l.starts_with("hull-vmm: ") && !l.contains("snapshot written"))
        .map(|l| l.trim_start_matches("hull-vmm: ").to_string());
    if !status.success() || !dir.join(hull_vmm::snapshot::STATE_FILE).is_file() {
        return Err(failed(last.unwrap_or_else(|| format!("ended ({status})"))));
    }
    // What only served the making goes; the snapshot stays.
    let _ = std::fs::remove_file(dir.join("vmm.json"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(p: &'a Path) -> Inputs<'a> {
        Inputs {
            vmm: p,
            kernel: p,
            initrd: p,
            vcpus: 1,
            mem_mib: 256,
            huge_pages: true,
            cmdline: "",
            net: false,
            fs_slots: 0,
            fs_dax_mib: 0,
        }
    }

    #[test]
    fn every_input_changes_the_key() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("k");
        std::fs::write(&f, b"kernel").unwrap();
        let base = inputs(&f);
        let key = base.key();
        assert_eq!(key, inputs(&f).key(), "the same inputs, the same template");
        let other = t.path().join("k2");
        std::fs::write(&other, b"kernel").unwrap();
        let variants = [
            Inputs {
                vcpus: 2,
                ..base.clone()
            },
            Inputs {
                mem_mib: 512,
                ..base.clone()
            },
            Inputs {
                huge_pages: false,
                ..base.clone()
            },
            Inputs {
                cmdline: "HULL_AGENT_DEBUG=1",
                ..base.clone()
            },
            Inputs {
                net: true,
                ..base.clone()
            },
            Inputs {
                fs_dax_mib: 1024,
                ..base.clone()
            },
            Inputs {
                kernel: &other,
                ..base.clone()
            },
        ];
        for v in &variants {
            assert_ne!(v.key(), key, "{v:?}");
        }
        // A rewritten kernel (new size) is another template.
        std::fs::write(&f, b"kernel, rebuilt").unwrap();
        assert_ne!(inputs(&f).key(), key);
    }

    #[test]
    fn the_template_has_empty_slots_for_every_disk_and_no_network() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("k");
        let c = template_config(t.path(), &t.path().join("v.sock"), &inputs(&f));
        c.validate().unwrap();
        assert_eq!((c.disks.len(), c.block_devices()), (0, MAX_DISKS));
        assert!(c.nets.is_empty());
        assert!(c.cmdline.ends_with("HULL_TEMPLATE=1"), "{}", c.cmdline);
        assert_eq!(c.snapshot_at_ready.as_deref(), Some(t.path()));
        // A networked template: one virtio-net device on a tap of its own,
        // with the MAC every restored clone's device keeps.
        let c = template_config(
            t.path(),
            &t.path().join("v.sock"),
            &Inputs {
                net: true,
                ..inputs(&f)
            },
        );
        c.validate().unwrap();
        assert_eq!(c.nets.len(), 1);
        assert_eq!(c.nets[0].tap.as_deref(), Some(TEMPLATE_TAP));
        assert_eq!(c.nets[0].mac, Some(MacAddr(TEMPLATE_MAC)));
        // One for containers with shares: empty fs slots, fewer disk slots.
        let c = template_config(
            t.path(),
            &t.path().join("v.sock"),
            &Inputs {
                net: true,
                fs_slots: FS_SLOTS,
                ..inputs(&f)
            },
        );
        c.validate().unwrap();
        assert_eq!((c.fs.len(), c.fs_devices()), (0, FS_SLOTS));
        assert_eq!(c.block_devices(), DISK_SLOTS_WITH_FS);
    }

    /// Old templates go and the most recently used stay, and so does one
    /// being made again (locked); a dead making's leftovers go, a live
    /// one's stay.
    #[test]
    fn pruning_keeps_the_newest_templates() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let hour = Duration::from_secs(3600);
        let now = std::time::SystemTime::now();
        let make = |name: &str, age: Duration| {
            let d = root.join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("state"), b"x").unwrap();
            let f = std::fs::File::open(&d).unwrap();
            f.set_times(std::fs::FileTimes::new().set_modified(now - age))
                .unwrap();
        };
        for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            make(name, hour * (i as u32 + 1));
        }
        make("fresh", Duration::ZERO);
        // "e", the oldest, is being made again by another run.
        let lock = std::fs::File::create(root.join("e.lock")).unwrap();
        assert!(sys::try_lock_exclusive(&lock).unwrap());
        // A making whose process is gone (no pid is this large), an hour
        // old; and one as fresh, which a machine sharing the directory may
        // be making right now.
        make("f.tmp2147483646-17", hour);
        make("h.tmp2147483645-18", Duration::ZERO);
        let mine = format!("g.tmp{}-19", std::process::id());
        make(&mine, hour);
        let mut removed = prune(root, 2, Duration::from_secs(600));
        removed.sort();
        assert_eq!(removed, ["b", "c", "d", "f.tmp2147483646-17"]);
        let mut left: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["a", "e", "fresh", mine.as_str(), "h.tmp2147483645-18"]
        );
        // Used again, "e" is among the two newest; "a" is then past them.
        drop(lock);
        touch(&root.join("e"));
        // With no grace, the fresh leftover of a gone process goes too.
        let mut removed = prune(root, 2, Duration::ZERO);
        removed.sort();
        assert_eq!(removed, ["a", "h.tmp2147483645-18"]);
    }

    #[test]
    fn a_missing_or_broken_template_is_refused_in_one_line() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("k");
        std::fs::write(&f, b"kernel").unwrap();
        let why = refusal(t.path(), &inputs(&f)).unwrap();
        assert!(!why.contains('\n'), "{why}");
        std::fs::write(t.path().join("state"), b"hull-snapshot 1 sha256=00\n{}").unwrap();
        let why = refusal(t.path(), &inputs(&f)).unwrap();
        assert!(!why.contains('\n'), "{why}");
    }
}
