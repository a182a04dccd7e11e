//! The host side of the VMM's jail (hull_vmm::jail): an unprivileged id
//! from the user-namespace pool, a cgroup of its own, the per-VM jail and
//! run directories, and the flags that tell `hull-vmm` to enter it. On by
//! default; `HULL_NO_JAIL=1` runs the VMM as root in the host's namespaces
//! (a debugging aid, said loudly).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use hull_vmm::config::{SerialOutput, VmConfig};

use super::{CGROUP_FILE, SandboxError, Spec, io};
use crate::cgroups::{Cgroup, CgroupLimits};
use crate::userns;

/// Turns the jail off (debugging; README).
pub const NO_JAIL_ENV: &str = "HULL_NO_JAIL";
/// Memory the VMM may use beyond guest RAM: its own heap (the kernel and
/// initrd it reads), thread stacks, page tables and the page cache of
/// the layer disks it reads.
pub const VMM_OVERHEAD_MIB: u64 = 128;
/// Threads and processes of one jailed VMM (main, waiter, device loop and
/// up to 32 vCPUs, with room).
pub const VMM_PIDS: u64 = 64;

/// What a jailed launch made on the host, for the Sandbox to remove.
pub struct Jail {
    pub cgroup: Cgroup,
    pub owner: PathBuf,
}

pub fn enabled() -> bool {
    std::env::var(NO_JAIL_ENV).as_deref() != Ok("1")
}

/// Makes the jail for the VM of `spec` and adds its flags to `cmd`: the
/// vsock socket and the console move to the run dir (`DIR/run`, which the
/// VMM sees as /run), with links from where hull looks for them.
pub fn prepare(
    spec: &Spec<'_>,
    config: &mut VmConfig,
    cmd: &mut Command,
) -> Result<Jail, SandboxError> {
    let range = userns::claim(spec.dir)?;
    let (uid, gid) = (range.base, range.base);
    let limits = CgroupLimits {
        memory_bytes: Some((spec.memory_mib + VMM_OVERHEAD_MIB) << 20),
        cpus: Some(f64::from(spec.vcpus)),
        pids: Some(VMM_PIDS),
    };
    let cgroup = match Cgroup::create(&format!("vm-{}", spec.name), &limits) {
        Ok(c) => c,
        Err(e) => {
            userns::release(spec.dir);
            return Err(e.into());
        }
    };
    let jail = Jail {
        cgroup,
        owner: spec.dir.to_path_buf(),
    };
    if let Ok(json) = serde_json::to_vec(&jail.cgroup) {
        let _ = std::fs::write(spec.dir.join(CGROUP_FILE), json);
    }
    let dir = spec.dir.join("jail");
    let run = spec.dir.join("run");
    let made = (|| {
        std::fs::create_dir_all(dir.join("root"))?;
        std::fs::create_dir_all(&run)?;
        std::os::unix::fs::chown(&run, Some(uid), Some(gid))?;
        // A writable disk (hull build's upper) is this container's own file:
        // the VM's id must be able to write it.
        for d in config.disks.iter().filter(|d| !d.read_only) {
            std::os::unix::fs::chown(&d.path, Some(uid), Some(gid))?;
        }
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))
    })();
    if let Err(e) = made {
        jail.abandon();
        return Err(io(format!("making the jail in {}", spec.dir.display()))(e));
    }
    if let Some(v) = config.vsock.as_mut() {
        v.uds = relink(&v.uds, &run);
    }
    if let SerialOutput::File(p) = &config.serial {
        config.serial = SerialOutput::File(relink(p, &run));
    }
    cmd.arg("--jail")
        .arg(&dir)
        .arg("--uid")
        .arg(uid.to_string())
        .arg("--gid")
        .arg(gid.to_string());
    for d in &jail.cgroup.dirs {
        cmd.arg("--cgroup-procs").arg(d.join("cgroup.procs"));
    }
    Ok(jail)
}

impl Jail {
    /// Takes back what `prepare` made (a launch that failed).
    pub fn abandon(&self) {
        let _ = self.cgroup.remove();
        userns::release(&self.owner);
    }
}

/// `path`'s file name in `run`, with a link from `path` to it (hull and
/// users keep finding it where it was); returns the new path.
fn relink(path: &Path, run: &Path) -> PathBuf {
    let Some(name) = path.file_name() else {
        return path.to_path_buf();
    };
    let inside = run.join(name);
    let _ = std::fs::remove_file(path);
    let _ = std::os::unix::fs::symlink(&inside, path);
    inside
}

/// The one-line warning of an unjailed VMM.
pub fn warning() -> String {
    format!(
        "{NO_JAIL_ENV}=1: hull-vmm runs as root in the host's namespaces, without its jail (debugging only)"
    )
}

/// The pid of the jailed VMM (in the host's pid namespace) of the
/// container in `dir`, once it started.
pub fn vmm_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("jail/vmm.pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}
