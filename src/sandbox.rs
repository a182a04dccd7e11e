//! Sandbox backends: the same agent and protocol, two isolation boundaries.
//! - `vm`: `hull-vmm` with the guest kernel, the agent's initramfs, the root
//!   filesystem as a read-only erofs disk, and vsock to the agent;
//! - `ns`: `hull-agent ns` as PID 1 of new namespaces on the host, with the
//!   same root filesystem stacked read-only, over a Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cgroups::{Cgroup, CgroupLimits};
use crate::{initramfs, paths, userns};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the guest kernel is not built: run guest-kernel/build.sh (or pass --kernel PATH)")]
    NoKernel,
    #[error("hull-vmm not found: cargo build --release -p hull-vmm (or set HULL_VMM)")]
    NoVmm,
    #[error("the static hull-agent is not built: run agent/build-static.sh (or set HULL_AGENT)")]
    NoAgent,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("building the root filesystem disk: {0}")]
    Disk(String),
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
}

/// Makes `cmd`'s process die with hull: a sandbox never outlives the CLI
/// that relays it by accident (a killed hull takes its VMM with it). It
/// starts with no signals blocked: hull blocks the ones it forwards, and a
/// mask survives exec.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG), sigemptyset and sigprocmask are
    // async-signal-safe and touch only the local set.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// A SIGINT, SIGTERM or SIGHUP that arrived while it was blocked.
pub fn pending_stop_signal() -> Option<i32> {
    // SAFETY: sigset_t is plain data; sigpending fills it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to `set`.
    unsafe { libc::sigpending(&mut set) };
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
        .into_iter()
        // SAFETY: valid pointer to `set` and valid signal numbers.
        .find(|&s| unsafe { libc::sigismember(&set, s) } == 1)
}

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
}

/// The container's cgroup (ns), as JSON in its state dir.
const CGROUP_FILE: &str = "cgroup.json";

/// Kills what is left in `cg` and removes it (retrying while the kernel
/// still counts exiting members).
fn remove_cgroup(cg: &Cgroup) {
    for pid in cg.pids().unwrap_or_default() {
        // SAFETY: kill(2) on pids from the container's own cgroup.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    for _ in 0..200 {
        if cg.remove().is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Removes what a sandbox in state dir `dir` may have left on the host when
/// its monitor could not clean up (killed): its cgroup, and its claim on a
/// user namespace id range.
pub fn cleanup_leftovers(dir: &Path) {
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
            Isolation::Vm => launch_vm(spec),
            Isolation::Ns => launch_ns(spec),
        }
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
            if let Some(sig) = pending_stop_signal() {
                self.kill();
                return Err(SandboxError::Interrupted(sig));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(SandboxError::Timeout(timeout.as_secs()));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(50));
        }
    }

    fn try_connect(&self) -> Option<UnixStream> {
        if self.isolation == Isolation::Vm {
            // Connect once the agent says (on the guest console) that it
            // listens: earlier attempts would only be refused by the guest.
            let console = std::fs::read(&self.console).ok()?;
            let ready = hull_agent::protocol::READY_LINE.as_bytes();
            if !console.windows(ready.len()).any(|w| w == ready) {
                return None;
            }
        }
        connect_agent(self.isolation, &self.socket)
    }

    fn failure_detail(&self, status: ExitStatus) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
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
        if self.isolation == Isolation::Vm {
            "hull-vmm"
        } else {
            "hull-agent"
        }
    }

    /// Why the sandbox ended, if it ended badly (from its log).
    pub fn error_message(&self) -> Option<String> {
        let log = std::fs::read_to_string(&self.log).ok()?;
        log.lines()
            .rev()
            .find(|l| l.starts_with("hull-vmm: ") && !l.contains("boot-timer"))
            .map(|l| l.trim().to_string())
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
        use std::os::fd::AsRawFd;
        let mut byte = 0u8;
        // SAFETY: recv writes at most one byte into `byte`.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK,
            )
        };
        if n <= 0 {
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

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
        self.cleanup();
    }
}

fn launch_vm(spec: &Spec<'_>) -> Result<Sandbox, SandboxError> {
    let kernel = spec
        .kernel
        .clone()
        .or_else(paths::kernel)
        .filter(|k| k.is_file())
        .ok_or(SandboxError::NoKernel)?;
    let vmm = paths::vmm_binary().ok_or(SandboxError::NoVmm)?;
    let agent = paths::agent_binary()
        .filter(|a| a.is_file())
        .ok_or(SandboxError::NoAgent)?;
    let cache = paths::cache_dir().unwrap_or_else(|| spec.dir.to_path_buf());
    let initrd = initramfs::for_agent(&agent, &cache.join("initramfs"))?;
    let mut disks = Vec::new();
    for (i, layer) in spec.layers.iter().enumerate() {
        let img = match spec.disks.get(i) {
            Some(d) => d.clone(),
            None => {
                let img = spec.dir.join(format!("layer{i}.erofs"));
                erofs_image(layer, &img)?;
                img
            }
        };
        disks.push(format!("{},ro,id=layer{i}", img.display()));
    }
    let socket = agent_socket(Isolation::Vm, spec.dir);
    let console = spec.dir.join("console.log");
    let log = spec.dir.join("vmm.log");
    let logf = std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
    let mut cmd = Command::new(&vmm);
    cmd.arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--vcpus", &spec.vcpus.to_string()])
        .args(["--mem", &spec.memory_mib.to_string()])
        .args(["--vsock-cid", &GUEST_CID.to_string()])
        .arg("--vsock-uds")
        .arg(&socket)
        .arg("--serial")
        .arg(&console)
        .arg("--boot-timer")
        .arg("--rng");
    for d in &disks {
        cmd.args(["--disk", d]);
    }
    if !spec.huge_pages {
        cmd.arg("--no-huge-pages");
    }
    if std::env::var_os("HULL_AGENT_DEBUG").is_some() {
        // The kernel hands unknown KEY=VALUE words to init's environment.
        cmd.args(["--cmdline", "HULL_AGENT_DEBUG=1"]);
    }
    die_with_parent(&mut cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .map_err(io(format!("starting {}", vmm.display())))?;
    Ok(Sandbox {
        isolation: Isolation::Vm,
        child,
        socket,
        log,
        console,
        cgroup: None,
        userns_owner: None,
    })
}

/// Makes a read-only erofs image of `dir` (Debian's erofs-utils).
fn erofs_image(dir: &Path, img: &Path) -> Result<(), SandboxError> {
    let out = Command::new("mkfs.erofs")
        .arg(img)
        .arg(dir)
        .output()
        .map_err(|e| {
            SandboxError::Disk(format!(
                "running mkfs.erofs (apt-get install erofs-utils): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(SandboxError::Disk(format!(
            "mkfs.erofs {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn launch_ns(spec: &Spec<'_>) -> Result<Sandbox, SandboxError> {
    let agent = paths::agent_binary()
        .filter(|a| a.is_file())
        .ok_or(SandboxError::NoAgent)?;
    let socket = agent_socket(Isolation::Ns, spec.dir);
    let scratch = spec.dir.join("scratch");
    std::fs::create_dir_all(&scratch).map_err(io(format!("creating {}", scratch.display())))?;
    let log = spec.dir.join("agent.log");
    let logf = std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
    let limits = CgroupLimits {
        memory_bytes: Some(spec.memory_mib << 20),
        cpus: Some(f64::from(spec.vcpus)),
        pids: None,
    };
    let cgroup = Cgroup::create(&format!("ns-{}", spec.name), &limits)?;
    // Recorded so that `rm -f` and `kill` can remove it when the monitor
    // that would have is gone.
    if let Ok(json) = serde_json::to_vec(&cgroup) {
        let _ = std::fs::write(spec.dir.join(CGROUP_FILE), json);
    }
    let mut cmd = Command::new(&agent);
    cmd.arg("ns")
        .arg("--listen")
        .arg(&socket)
        .arg("--scratch")
        .arg(&scratch);
    for l in &spec.layers {
        cmd.arg("--lower").arg(l);
    }
    // A launch that fails takes back what it made: the cgroup, the range.
    let abandon = |owner: Option<&Path>| {
        let _ = cgroup.remove();
        if let Some(owner) = owner {
            userns::release(owner);
        }
    };
    let userns_owner = match (spec.userns, userns::host_refuses()) {
        (userns::Mode::Host, _) => None,
        (userns::Mode::Private, Some(why)) => {
            abandon(None);
            return Err(userns::UsernsError::Disabled(why).into());
        }
        (userns::Mode::Auto, Some(why)) => {
            eprintln!("hull: warning: no user namespace ({why}): the container runs with host ids");
            None
        }
        (mode, None) => {
            let range = userns::claim(spec.dir).inspect_err(|_| abandon(None))?;
            cmd.args(["--userns", &range.arg()]);
            if mode == userns::Mode::Auto {
                cmd.arg("--userns-optional");
            }
            Some(spec.dir.to_path_buf())
        }
    };
    // The agent waits for a byte on stdin before it forks into the new
    // namespaces, so it is in its cgroup before any container process exists.
    cmd.env("HULL_AGENT_SYNC", "1");
    die_with_parent(&mut cmd);
    let child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .map_err(io(format!("starting {}", agent.display())));
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            abandon(userns_owner.as_deref());
            return Err(e);
        }
    };
    let go = cgroup.add_process(child.id());
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"g");
    }
    if let Err(e) = go {
        let _ = child.kill();
        let _ = child.wait();
        abandon(userns_owner.as_deref());
        return Err(e.into());
    }
    Ok(Sandbox {
        isolation: Isolation::Ns,
        child,
        socket,
        console: PathBuf::new(),
        log,
        cgroup: Some(cgroup),
        userns_owner,
    })
}
