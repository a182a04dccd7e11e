//! Sandbox backends: the same agent and protocol, two isolation boundaries.
//! - `vm`: `hull-vmm` with the guest kernel, the agent's initramfs, the root
//!   filesystem as a read-only erofs disk, and vsock to the agent;
//! - `ns`: `hull-agent ns` as PID 1 of new namespaces on the host, with the
//!   same root filesystem stacked read-only, over a Unix socket.

pub mod layer_cache;
mod ns;
pub mod template;
pub mod template_local;
mod vm;
pub use vm::{FS_DAX_ENV, fs_dax_mib};
pub mod vm_jail;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cgroups::Cgroup;
use crate::{initramfs, sys, userns};

/// The isolation boundary of a container; `vm` and `ns` in state.json and
/// on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Vm,
    Ns,
}

impl Isolation {
    pub fn name(self) -> &'static str {
        match self {
            Isolation::Vm => "vm",
            Isolation::Ns => "ns",
        }
    }

    /// The process that holds a sandbox of this kind, as messages name it.
    pub fn process_name(self) -> &'static str {
        match self {
            Isolation::Vm => "hull-vmm",
            Isolation::Ns => "hull-agent",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the guest kernel is not built: run guest-kernel/build.sh (or pass --kernel PATH)")]
    NoKernel,
    #[error("the guest kernel {0} is not a file (--kernel PATH or HULL_KERNEL)")]
    KernelNotFound(PathBuf),
    #[error("hull-vmm not found: cargo build --release -p hull-vmm (or set HULL_VMM)")]
    NoVmm,
    #[error("the static hull-agent is not built: run agent/build-static.sh (or set HULL_AGENT)")]
    NoAgent,
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("running mkfs.erofs to build a layer disk (apt-get install erofs-utils)")]
    ErofsTool(#[source] std::io::Error),
    #[error("building the layer disk of {dir}: mkfs.erofs: {stderr}")]
    Erofs { dir: PathBuf, stderr: String },
    #[error("writing the VM configuration {path}")]
    VmConfig {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
    #[error("{what} exited before the agent answered{detail}")]
    DiedEarly { what: &'static str, detail: String },
    #[error("the agent did not answer within {0} s")]
    Timeout(u64),
    #[error("interrupted by signal {0}")]
    Interrupted(i32),
    #[error(transparent)]
    Userns(#[from] userns::UsernsError),
    #[error(
        "{0}: {1} bytes is too long for a Unix socket path: use a shorter --state-dir (HULL_STATE_DIR)"
    )]
    SocketPath(PathBuf, usize),
    #[error(
        "{0}: a microVM shares directories, not single files (virtio-fs): mount its directory, or use --isolation ns"
    )]
    VmFileMount(PathBuf),
    #[error("{0} shared directories: a microVM takes at most {max}", max = hull_vmm::config::MAX_FS)]
    TooManyShares(usize),
    #[error("a host directory as the root filesystem needs --isolation vm")]
    HostDirRootNs,
    #[error("the volume for {0} was not resolved (hull::volume::resolve)")]
    UnresolvedMount(String),
    #[error(transparent)]
    Template(#[from] template::TemplateError),
    #[error(
        "{env}={0:?}: a DAX window is a whole number of MiB, a multiple of 2, at most {max} (0: none)",
        env = vm::FS_DAX_ENV,
        max = hull_vmm::config::MAX_FS_DAX_MIB
    )]
    FsDaxEnv(String),
}

/// How much of the console hull reads looking for the agent's ready line.
const CONSOLE_SCAN: u64 = 1 << 20;

/// Signals that end a launch while hull waits for the agent.
pub(crate) const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// What a sandbox is made of.
pub struct Spec<'a> {
    pub isolation: Isolation,
    /// The container's state directory (sockets, logs, scratch).
    pub dir: &'a Path,
    /// Root filesystem layers, bottom first (directories).
    pub layers: Vec<PathBuf>,
    /// The layers as read-only disk images, when already made (vm);
    /// otherwise the VM backend makes them from `layers`.
    pub disks: Vec<PathBuf>,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: Option<PathBuf>,
    /// Name for the ns backend's cgroup.
    pub name: &'a str,
    /// User namespace (ns).
    pub userns: userns::Mode,
    /// Guest RAM laid out for transparent huge pages (vm).
    pub huge_pages: bool,
    /// Resolved volumes, bind and tmpfs mounts.
    pub mounts: Vec<crate::volume::MountSpec>,
    /// A read-only root filesystem.
    pub read_only: bool,
    /// Where the root filesystem comes from: `layers`, or a host directory.
    pub rootfs: RootFs,
    /// The network namespace hull prepared (ns: the agent joins it; None:
    /// a new empty one), or the host's (`--network host`).
    pub netns: NetNs,
    /// The tap for the microVM's virtio-net device and the guest's MAC
    /// (vm; handed to hull-vmm as an fd).
    pub tap: Option<(std::os::fd::OwnedFd, String)>,
    /// The writable layer instead of a tmpfs: a host directory (ns), or an
    /// ext4 disk image (vm) whose upper/ and work/ the agent uses.
    pub upper: Option<PathBuf>,
    /// Boot the microVM's kernel instead of restoring a template (vm).
    pub cold_boot: bool,
    /// Hears what takes time before the sandbox runs (making a template).
    pub progress: &'a dyn Fn(&str),
}

/// How a microVM started: restored from a template, or booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Boot {
    Restore,
    Cold,
}

/// Where a container's root filesystem comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum RootFs {
    /// The image's layers (`layers`, `disks`) under a writable overlay.
    #[default]
    Layers,
    /// A host directory used as it is, an OCI bundle's `root.path` (vm
    /// only): shared into the microVM over virtio-fs and mounted as the
    /// root; what the container writes lands in it (with `read_only`, the
    /// share refuses writes on the host side). `layers` and `disks` are
    /// not used.
    HostDir(PathBuf),
}

/// Which network namespace an ns sandbox runs in.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetNs {
    /// A new one of its own, with only `lo`.
    #[default]
    New,
    /// The host's (`--network host`).
    Host,
    /// The one held at this path.
    Path(PathBuf),
}

/// The container's cgroup (ns), as JSON in its state dir.
const CGROUP_FILE: &str = "cgroup.json";

/// Kills what is left in `cg` and removes it (retrying while the kernel
/// still counts exiting members).
fn remove_cgroup(cg: &Cgroup) {
    for pid in cg.pids().unwrap_or_default() {
        let _ = sys::kill(pid as i32, libc::SIGKILL);
    }
    for _ in 0..1000 {
        if cg.remove().is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Removes what a sandbox in state dir `dir` may have left on the host when
/// its monitor could not clean up (killed): its network (lease, veth,
/// namespace, port rules), its cgroup, and its claim on a user namespace id
/// range.
pub fn cleanup_leftovers(dir: &Path) {
    if let Some(state_dir) = dir.parent().and_then(Path::parent) {
        crate::network::release(state_dir, dir);
    }
    if let Ok(json) = std::fs::read(dir.join(CGROUP_FILE)) {
        if let Ok(cg) = serde_json::from_slice::<Cgroup>(&json) {
            remove_cgroup(&cg);
        }
    }
    userns::release(dir);
}

/// Where the agent of a sandbox in `dir` listens (for the host).
pub fn agent_socket(isolation: Isolation, dir: &Path) -> PathBuf {
    dir.join(match isolation {
        Isolation::Vm => "vsock.sock",
        Isolation::Ns => "agent.sock",
    })
}

/// One connection to a listening agent: directly (ns), or through the VMM's
/// vsock socket with `CONNECT <port>` (vm). None while it does not answer.
pub fn connect_agent(isolation: Isolation, socket: &Path) -> Option<UnixStream> {
    let mut s = UnixStream::connect(socket).ok()?;
    if isolation == Isolation::Ns {
        return Some(s);
    }
    s.write_all(format!("CONNECT {}\n", hull_agent::protocol::AGENT_PORT).as_bytes())
        .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    // Byte by byte up to the newline: the agent's first frame follows at
    // once and must stay in the socket.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) if line.len() < 64 => line.push(byte[0]),
            _ => return None, // reset: the agent is not listening (yet)
        }
    }
    s.set_read_timeout(None).ok()?;
    line.starts_with(b"OK ").then_some(s)
}

/// A running sandbox.
pub struct Sandbox {
    pub isolation: Isolation,
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    /// The guest console (vm): where the agent says it is ready.
    console: PathBuf,
    cgroup: Option<Cgroup>,
    /// The state dir, when the sandbox holds a user namespace id range.
    userns_owner: Option<PathBuf>,
    /// What the launch has to tell the user (see `take_warnings`).
    warnings: Vec<String>,
    /// Restored from a template (vm): the disks its slots were given.
    restored: Option<hull_agent::protocol::RootDisks>,
    /// Why a microVM cold-booted.
    cold_reason: Option<String>,
    /// Nothing of the sandbox outlives its main process (vm: no writable
    /// disk, no shared directory): once that process's exit is read, the
    /// sandbox may be killed instead of waited for.
    discardable: bool,
}

/// The guest CID hull gives every VM (each VM has its own vsock device).
const GUEST_CID: u64 = 3;

impl Sandbox {
    pub fn launch(spec: &Spec<'_>) -> Result<Sandbox, SandboxError> {
        // sockaddr_un holds 108 bytes with the NUL.
        let socket = agent_socket(spec.isolation, spec.dir);
        let len = socket.as_os_str().len();
        if len > 107 {
            return Err(SandboxError::SocketPath(socket, len));
        }
        match spec.isolation {
            Isolation::Vm => vm::launch(spec),
            Isolation::Ns if spec.rootfs != RootFs::Layers => Err(SandboxError::HostDirRootNs),
            Isolation::Ns => ns::launch(spec),
        }
    }

    /// What the launch has to tell the user (e.g. no user namespace here),
    /// once.
    pub fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// How the microVM started (None: not a microVM).
    pub fn boot(&self) -> Option<Boot> {
        match (self.isolation, &self.restored) {
            (Isolation::Ns, _) => None,
            (Isolation::Vm, Some(_)) => Some(Boot::Restore),
            (Isolation::Vm, None) => Some(Boot::Cold),
        }
    }

    /// The disks a restored microVM's agent mounts (its main Start says so).
    pub fn restored_disks(&self) -> Option<hull_agent::protocol::RootDisks> {
        self.restored.clone()
    }

    /// Why the microVM cold-booted (None: restored, or not a microVM).
    pub fn cold_boot_reason(&self) -> Option<&str> {
        self.cold_reason.as_deref()
    }

    /// The process that holds the sandbox (VMM, or the agent's parent).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Connects to the agent, retrying while it starts.
    pub fn connect(&mut self, timeout: Duration) -> Result<UnixStream, SandboxError> {
        let deadline = Instant::now() + timeout;
        let mut delay = Duration::from_millis(2);
        loop {
            if let Some(status) = self.child.try_wait().map_err(io("checking the sandbox"))? {
                return Err(SandboxError::DiedEarly {
                    what: self.name(),
                    detail: self.failure_detail(status),
                });
            }
            if let Some(s) = self.try_connect() {
                return Ok(s);
            }
            if let Some(sig) = sys::SignalSet::first_pending(&STOP_SIGNALS) {
                self.kill();
                return Err(SandboxError::Interrupted(sig));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(SandboxError::Timeout(timeout.as_secs()));
            }
            std::thread::sleep(delay);
            // A restored agent answers within a few hundred ms of the
            // VMM's start (its socket appears then): poll it closely.
            let cap = if self.restored.is_some() { 10 } else { 50 };
            delay = (delay * 2).min(Duration::from_millis(cap));
        }
    }

    fn try_connect(&self) -> Option<UnixStream> {
        if self.isolation == Isolation::Vm && self.restored.is_none() {
            // (A restored guest's agent listened before the template was
            // saved.) Connect once the agent says (on the guest console) that it
            // listens: earlier attempts would only be refused by the guest.
            // Only the console's first MiB: the agent says it is ready right
            // after boot, and a guest flooding its console must not make
            // hull read (and hold) all of it on every poll.
            let mut console = Vec::new();
            std::io::Read::read_to_end(
                &mut std::io::Read::take(std::fs::File::open(&self.console).ok()?, CONSOLE_SCAN),
                &mut console,
            )
            .ok()?;
            let ready = hull_agent::protocol::READY_LINE.as_bytes();
            if !console.windows(ready.len()).any(|w| w == ready) {
                return None;
            }
        }
        connect_agent(self.isolation, &self.socket)
    }

    fn failure_detail(&self, status: ExitStatus) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if let Some(why) = seccomp_death(&log, status) {
            return format!(": {why}");
        }
        let msg = log
            .lines()
            .rev()
            .find(|l| l.contains("hull-vmm:") || l.contains("hull-agent"))
            .unwrap_or("")
            .trim()
            .to_string();
        if msg.is_empty() {
            format!(" ({status})")
        } else {
            format!(": {msg}")
        }
    }

    /// The sandbox process, as messages name it.
    pub fn name(&self) -> &'static str {
        self.isolation.process_name()
    }

    /// Why the sandbox ended, if it ended badly (from its log).
    pub fn error_message(&self, status: ExitStatus) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        if let Some(why) = seccomp_death(&log, status) {
            return Some(why);
        }
        log.lines()
            .rev()
            .find(|l| l.starts_with("hull-vmm: ") && !l.contains("boot-timer"))
            .map(|l| l.trim().to_string())
    }

    /// Ends a sandbox whose main process has exited: kills it at once when
    /// nothing in it outlives that process (a microVM's guest would only
    /// flush a RAM upper and reset), or waits for it to end by itself.
    pub fn end(&mut self, timeout: Duration) {
        if self.discardable {
            self.kill();
        } else {
            self.wait(timeout);
        }
    }

    /// Waits for the sandbox to end by itself (the agent resets the VM or
    /// exits when the main process is done); kills it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                _ => {
                    self.kill();
                    return None;
                }
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The ids the sandbox runs under (ns; see userns::map_of). Waits for
    /// the agent's first message on `stream` (left unread): the socket
    /// accepts before the agent has entered its user namespace.
    pub fn id_map(&self, stream: &UnixStream) -> Option<String> {
        if self.isolation != Isolation::Ns {
            return None;
        }
        if !sys::peek_byte(stream) {
            return None;
        }
        userns::map_of(self.child.id())
    }

    /// The warning the ns agent gave when it could not make a user
    /// namespace (`--userns auto`).
    pub fn userns_warning(&self) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        log.lines()
            .find(|l| l.starts_with("hull-agent ns: warning: no user namespace"))
            .map(|l| l.trim_start_matches("hull-agent ns: ").to_string())
    }

    /// Removes what the sandbox left on the host (its cgroup, its claim on
    /// an id range).
    pub fn cleanup(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            remove_cgroup(&cg);
        }
        if let Some(owner) = self.userns_owner.take() {
            userns::release(&owner);
        }
    }
}

/// The line hull-vmm's SIGSYS handler writes before it dies
/// (hull_vmm::seccomp).
const SECCOMP_LINE: &str = "hull-vmm: killed by its seccomp filter (syscall ";

/// "hull-vmm was killed by its seccomp filter (syscall N)" when the VMM
/// died of SIGSYS (the number from its last words in `log`).
fn seccomp_death(log: &str, status: ExitStatus) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    let said = log.lines().rev().find_map(|l| {
        let rest = l.strip_prefix(SECCOMP_LINE)?.strip_suffix(')')?;
        rest.split(',').next()?.parse::<i64>().ok()
    });
    match (status.signal() == Some(libc::SIGSYS), said) {
        (_, Some(nr)) => Some(format!(
            "hull-vmm was killed by its seccomp filter (syscall {nr})"
        )),
        (true, None) => Some("hull-vmm was killed by SIGSYS (a seccomp filter?)".into()),
        (false, None) => None,
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
        self.cleanup();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seccomp_death_is_reported_with_the_syscall() {
        use std::os::unix::process::ExitStatusExt;
        let sigsys = ExitStatus::from_raw(libc::SIGSYS);
        let log = "hull-vmm warning: x\nhull-vmm: killed by its seccomp filter (syscall 110, vcpu thread)\n";
        assert_eq!(
            seccomp_death(log, sigsys).as_deref(),
            Some("hull-vmm was killed by its seccomp filter (syscall 110)")
        );
        assert_eq!(
            seccomp_death("", sigsys).as_deref(),
            Some("hull-vmm was killed by SIGSYS (a seccomp filter?)")
        );
        let exited = ExitStatus::from_raw(2 << 8);
        assert_eq!(seccomp_death("hull-vmm: the VM failed: x\n", exited), None);
        // A line with something else than a number is not the handler's.
        let forged = "hull-vmm: killed by its seccomp filter (syscall x)\n";
        assert_eq!(seccomp_death(forged, exited), None);
    }

    #[test]
    fn isolation_reads_and_writes_as_before() {
        assert_eq!(serde_json::to_string(&Isolation::Vm).unwrap(), "\"vm\"");
        let ns: Isolation = serde_json::from_str("\"ns\"").unwrap();
        assert_eq!(ns, Isolation::Ns);
        assert!(serde_json::from_str::<Isolation>("\"kvm\"").is_err());
        assert_eq!(
            agent_socket(Isolation::Ns, Path::new("/s")),
            Path::new("/s/agent.sock")
        );
    }
}
