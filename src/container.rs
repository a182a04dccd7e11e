//! A container's life, as every front end drives it: [`Container::create`]
//! records it (state.json says `created`), [`Container::start`] launches its
//! sandbox (`running`), [`Container::attach`] runs its main process over the
//! agent session, [`Container::finish`] records how it ended (`exited`);
//! [`Container::kill`], [`Container::stop`], [`Container::wait`],
//! [`Container::exec`] and [`Container::delete`] act on a container another
//! process created.
//!
//! The process that calls `start` is the container's monitor: it holds the
//! sandbox (the VMM, or the agent at the root of the namespaces), which dies
//! with it, and relays the session into the container's logs.

use std::io::IsTerminal;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_agent::protocol::{Freshen, Start};
use serde::{Deserialize, Serialize};

use crate::admission::{AdmissionError, Limits, MemoryReservation, StartSlot};
use crate::client::{self, ClientError, Outcome, RawMode, Sinks, Times};
use crate::network::{self, NetworkError};
use crate::process::{self, ProcessId};
use crate::sandbox::{self, Isolation, Sandbox, SandboxError, Spec};
use crate::state::{ContainerState, STDERR_LOG, STDOUT_LOG, StateDir, StateError, Status};
use crate::sys;
use crate::userns;

/// What a container is made of, as `create` records it (config.json in its
/// state dir) for `start`, which may run in another process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// The name to claim; a generated one when None.
    pub name: Option<String>,
    /// What `ps` shows as the image.
    pub image: String,
    /// The main process's argv, as `ps` shows it.
    pub command: Vec<String>,
    pub isolation: Isolation,
    /// Root filesystem layers, bottom first (directories).
    pub layers: Vec<PathBuf>,
    /// The same layers as read-only disks (vm), where the image store made
    /// them; the VM backend makes the missing ones.
    pub disks: Vec<PathBuf>,
    /// vCPUs (vm) or CPU quota (ns).
    pub vcpus: u32,
    /// Guest RAM (vm) or cgroup limit (ns), MiB.
    pub memory_mib: u64,
    /// The guest kernel (vm); the built one when None.
    pub kernel: Option<PathBuf>,
    /// User namespace (ns).
    pub userns: userns::Mode,
    /// Guest RAM laid out for transparent huge pages (vm).
    pub huge_pages: bool,
    /// Volumes, bind mounts and tmpfs mounts, resolved (named volumes
    /// exist; see [`crate::volume::resolve`]).
    #[serde(default)]
    pub mounts: Vec<crate::volume::MountSpec>,
    /// A read-only root filesystem (`--read-only`): only mounts and tmpfs
    /// mounts are writable.
    #[serde(default)]
    pub read_only: bool,
    /// Where the root filesystem comes from: the image's `layers` (the
    /// default), or a host directory shared into the microVM
    /// ([`sandbox::RootFs::HostDir`], vm only; docs/volumes.md).
    #[serde(default, skip_serializing_if = "is_layers")]
    pub rootfs: sandbox::RootFs,
    /// The container's network; None: a namespace of its own with only
    /// `lo`, the image's /etc files untouched.
    #[serde(default)]
    pub network: Option<network::Request>,
    /// The writable layer, for `hull build` to read a step's changes from
    /// its upper/ afterwards: a host directory (ns), or an ext4 disk image
    /// (vm); a tmpfs when None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<PathBuf>,
    /// Host-wide admission: sandboxes starting at once, and microVM guest
    /// memory committed in all (None: derived from the host; 0: no limit).
    #[serde(default)]
    pub max_starting: Option<u32>,
    #[serde(default)]
    pub max_guest_memory_mib: Option<u64>,
    /// Boot the microVM's kernel instead of restoring a template (vm;
    /// `--cold-boot`).
    #[serde(default)]
    pub cold_boot: bool,
    /// The sandbox stays in the network namespace of the process that
    /// starts it (an OCI engine's, which `hull-runtime`'s monitor entered)
    /// instead of one of its own; `network` is then None.
    #[serde(default)]
    pub inherit_netns: bool,
}

impl ContainerConfig {
    /// A container of `image` running `command`: one vCPU and 128 MiB, no
    /// layers, mounts or network, the user namespace chosen automatically.
    /// Callers set what differs with struct update syntax.
    pub fn new(image: impl Into<String>, command: Vec<String>, isolation: Isolation) -> Self {
        ContainerConfig {
            name: None,
            image: image.into(),
            command,
            isolation,
            layers: Vec::new(),
            disks: Vec::new(),
            vcpus: 1,
            memory_mib: 128,
            kernel: None,
            userns: userns::Mode::Auto,
            huge_pages: true,
            mounts: Vec::new(),
            read_only: false,
            rootfs: sandbox::RootFs::Layers,
            network: None,
            upper: None,
            max_starting: None,
            max_guest_memory_mib: None,
            cold_boot: false,
            inherit_netns: false,
        }
    }
}

fn is_layers(r: &sandbox::RootFs) -> bool {
    *r == sandbox::RootFs::Layers
}

/// The container's configuration, as JSON in its state dir.
const CONFIG_FILE: &str = "config.json";
/// How long a started sandbox has to get its agent answering.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a killed container's processes have to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("reading the configuration of container {id}")]
    Config { id: String, source: std::io::Error },
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("container {0} was started already")]
    AlreadyStarted(String),
    #[error("container {0} is running: stop it first, or use rm -f")]
    Running(String),
    #[error(
        "container {0} has no live monitor to deliver the signal: use `hull kill` (SIGKILL) or `hull rm -f`"
    )]
    NoMonitor(String),
    #[error("signalling the monitor of {id}")]
    Signal { id: String, source: std::io::Error },
    #[error("container {0}: still alive {secs} s after SIGKILL", secs = KILL_TIMEOUT.as_secs())]
    StillAlive(String),
    #[error("container {0}: its agent does not answer")]
    AgentGone(String),
    #[error("exec in {id}")]
    Exec { id: String, source: ClientError },
    #[error("signalling every process of {id}")]
    SignalAll { id: String, source: ClientError },
    #[error("relaying the DNS queries of {id}")]
    DnsRelay { id: String, source: ClientError },
    /// The sandbox ended the session; its own words when it left any.
    #[error("{0}")]
    SandboxEnded(String),
    #[error(transparent)]
    Session(#[from] ClientError),
    #[error(transparent)]
    Admission(#[from] AdmissionError),
}

/// How a session's stdio is relayed.
pub struct Session<'a> {
    /// Where the process's output goes (attach adds the container's logs).
    pub sinks: Sinks,
    /// Relay our stdin.
    pub stdin: bool,
    /// Put our terminal in raw mode for the session (`-t` on a terminal).
    pub raw_terminal: bool,
    /// When things happened (for `hull bench`).
    pub times: &'a mut Times,
    /// Where warnings go (the terminal, or a detached run's caller).
    pub warn: &'a dyn Fn(&str),
}

/// One container, by its state.
pub struct Container {
    states: StateDir,
    state: ContainerState,
    /// The sandbox, in the process that started it, until it ended.
    sandbox: Option<Sandbox>,
    /// What the agent sets up for the container's network (from `start`).
    network_setup: Option<hull_agent::protocol::NetworkSetup>,
    /// A start slot, held from launch until the agent answers.
    start_slot: Option<StartSlot>,
    /// The microVM's guest memory, committed while its sandbox lives.
    memory: Option<MemoryReservation>,
    /// The userland proxy of its published ports on IPv6 (`::1`), in the
    /// monitor, while they are published.
    proxy: Option<network::Proxy>,
}

impl Container {
    /// Records a new container in `state_dir`: its id, directory, name and
    /// configuration; nothing runs yet (status `created`).
    pub fn create(state_dir: &Path, config: &ContainerConfig) -> Result<Container, ContainerError> {
        // A bad setting in the environment fails before anything is recorded.
        if config.isolation == Isolation::Vm {
            sandbox::fs_dax_mib()?;
        }
        let states = StateDir::open(state_dir)?;
        let state = states.create(
            config.name.as_deref(),
            &config.image,
            &config.command,
            config.isolation,
        )?;
        let c = Container {
            states,
            state,
            sandbox: None,
            network_setup: None,
            start_slot: None,
            memory: None,
            proxy: None,
        };
        let path = c.dir().join(CONFIG_FILE);
        let json = serde_json::to_vec_pretty(config).expect("a ContainerConfig serializes");
        if let Err(source) = std::fs::write(&path, json) {
            let _ = c.states.remove(&c.state);
            return Err(StateError::Io {
                what: "writing",
                path,
                source,
            }
            .into());
        }
        Ok(c)
    }

    /// The container `key` names (a name, an id or a unique id prefix),
    /// checked against its processes: one recorded as running whose
    /// processes are all gone is recorded as exited.
    pub fn load(state_dir: &Path, key: &str) -> Result<Container, ContainerError> {
        let states = StateDir::open(state_dir)?;
        let state = states.resolve(key)?;
        let mut c = Container {
            states,
            state,
            sandbox: None,
            network_setup: None,
            start_slot: None,
            memory: None,
            proxy: None,
        };
        c.reconcile()?;
        Ok(c)
    }

    /// Every container in `state_dir`, oldest first, checked as `load` does.
    pub fn list(state_dir: &Path) -> Result<Vec<ContainerState>, ContainerError> {
        let states = StateDir::open(state_dir)?;
        let mut all = Vec::new();
        for state in states.list()? {
            let mut c = Container {
                states: states.clone(),
                state,
                sandbox: None,
                network_setup: None,
                start_slot: None,
                memory: None,
                proxy: None,
            };
            match c.reconcile() {
                // Removed while we looked (`rm -f`): not a container any more.
                Err(ContainerError::State(StateError::NotFound(_))) => continue,
                Err(e) => log::warn!("{}", crate::error::chain(&e)),
                Ok(()) => {}
            }
            all.push(c.state);
        }
        Ok(all)
    }

    pub fn state(&self) -> &ContainerState {
        &self.state
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    pub fn short_id(&self) -> &str {
        self.state.short_id()
    }

    /// The container's state directory (state.json, sockets, logs).
    pub fn dir(&self) -> PathBuf {
        self.states.dir(&self.state.id)
    }

    /// The configuration `create` recorded.
    pub fn config(&self) -> Result<ContainerConfig, ContainerError> {
        let path = self.dir().join(CONFIG_FILE);
        let data = std::fs::read(&path).map_err(|source| ContainerError::Config {
            id: self.short_id().to_string(),
            source,
        })?;
        serde_json::from_slice(&data).map_err(|e| ContainerError::Config {
            id: self.short_id().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Sets the network of a container not started yet (recorded in its
    /// configuration, for `start`).
    pub fn set_network(&mut self, request: network::Request) -> Result<(), ContainerError> {
        if self.state.status != Status::Created {
            return Err(ContainerError::AlreadyStarted(self.short_id().into()));
        }
        let mut config = self.config()?;
        config.network = Some(request);
        let path = self.dir().join(CONFIG_FILE);
        let json = serde_json::to_vec_pretty(&config).expect("a ContainerConfig serializes");
        std::fs::write(&path, json).map_err(|source| StateError::Io {
            what: "writing",
            path,
            source,
        })?;
        Ok(())
    }

    /// The container's network attachment (address, published ports), if
    /// it is on a network.
    pub fn network(&self) -> Option<network::Attachment> {
        network::attachment(&self.dir())
    }

    /// Launches the container's sandbox; this process becomes its monitor
    /// (status `running`). The sandbox launches here, for both backends.
    pub fn start(&mut self) -> Result<(), ContainerError> {
        self.start_with(&|_| {})
    }

    /// `start`, telling `on_wait` when the host's start slots are all taken
    /// and the launch waits for one (see [`crate::admission`]). A microVM
    /// whose guest memory would over-commit the host is refused.
    pub fn start_with(&mut self, on_wait: &dyn Fn(&str)) -> Result<(), ContainerError> {
        if self.state.status != Status::Created || self.sandbox.is_some() {
            return Err(ContainerError::AlreadyStarted(self.short_id().into()));
        }
        let config = self.config()?;
        let limits = Limits::resolve(config.max_starting, config.max_guest_memory_mib);
        let memory = (config.isolation == Isolation::Vm)
            .then(|| MemoryReservation::acquire(&limits, config.memory_mib))
            .transpose()?;
        let waiting = |n, m| {
            on_wait(&format!(
                "waiting for a start slot ({n} starting, limit {m})"
            ))
        };
        crate::trace::mark("admission memory");
        let slot = StartSlot::acquire(&limits, waiting, || {
            sys::SignalSet::first_pending(&sandbox::STOP_SIGNALS)
        })?;
        crate::trace::mark("admission slot");
        let dir = self.dir();
        let name = self.short_id().to_string();
        let prepared = match &config.network {
            Some(req) => Some(network::prepare(
                self.states.root(),
                &dir,
                &self.state.id,
                req,
                config.isolation,
            )?),
            None => None,
        };
        // The proxy of the published ports on IPv6 goes with them: dropped
        // (closed) on the errors below, and at `finish`.
        let proxy = match (&prepared, network::attachment(&dir)) {
            (Some(_), Some(att)) => match network::Proxy::start(&att) {
                Ok(p) => p,
                Err(e) => {
                    network::release(self.states.root(), &dir);
                    return Err(NetworkError::from(e).into());
                }
            },
            _ => None,
        };
        let (netns, tap) = match prepared {
            // A microVM in an engine's namespace takes over the engine's
            // veth through a tap (the guest gets its MAC and address).
            None if config.inherit_netns && config.isolation == Isolation::Vm => {
                match network::adopt_engine_link().map_err(NetworkError::from)? {
                    Some((fd, mac, interface)) => {
                        self.network_setup = Some(hull_agent::protocol::NetworkSetup {
                            interface: Some(interface),
                            hosts: None,
                            resolv_conf: None,
                        });
                        (sandbox::NetNs::Host, Some((fd, mac)))
                    }
                    None => (sandbox::NetNs::Host, None),
                }
            }
            None if config.inherit_netns => (sandbox::NetNs::Host, None),
            None => (sandbox::NetNs::New, None),
            Some(p) => {
                self.network_setup = Some(p.setup);
                let netns = match (p.netns, &config.network) {
                    (Some(path), _) => sandbox::NetNs::Path(path),
                    (None, Some(r)) if r.mode == network::Mode::Host => sandbox::NetNs::Host,
                    (None, _) => sandbox::NetNs::New,
                };
                (netns, p.tap)
            }
        };
        let spec = Spec {
            isolation: config.isolation,
            dir: &dir,
            layers: config.layers,
            disks: config.disks,
            vcpus: config.vcpus,
            memory_mib: config.memory_mib,
            kernel: config.kernel,
            name: &name,
            userns: config.userns,
            huge_pages: config.huge_pages,
            mounts: config.mounts,
            read_only: config.read_only,
            rootfs: config.rootfs,
            netns,
            tap,
            upper: config.upper,
            cold_boot: config.cold_boot,
            progress: on_wait,
        };
        crate::trace::mark("launch");
        let sandbox = match Sandbox::launch(&spec) {
            Ok(s) => s,
            Err(e) => {
                network::release(self.states.root(), &dir);
                return Err(e.into());
            }
        };
        crate::trace::mark("launched");
        self.state.status = Status::Running;
        self.state.sandbox = ProcessId::of(sandbox.pid() as i32);
        self.state.boot = sandbox.boot();
        self.state.boot_reason = sandbox.cold_boot_reason().map(str::to_string);
        self.state.monitor = ProcessId::of(std::process::id() as i32);
        // On an error the sandbox is dropped: killed and cleaned up.
        if let Err(e) = self.states.save(&self.state) {
            drop(sandbox);
            network::release(self.states.root(), &dir);
            return Err(e.into());
        }
        crate::trace::mark("state saved");
        self.sandbox = Some(sandbox);
        self.start_slot = Some(slot);
        self.memory = memory;
        self.proxy = proxy;
        Ok(())
    }

    /// Runs the container's main process `start` in the sandbox `start`
    /// launched, relaying its stdio as `session` says, and returns how it
    /// ended once the sandbox has ended too. Call `finish` next.
    pub fn attach(
        &mut self,
        start: &Start,
        session: Session<'_>,
    ) -> Result<Outcome, ContainerError> {
        let Some(mut sandbox) = self.sandbox.take() else {
            return Err(ContainerError::NotRunning(self.short_id().into()));
        };
        for w in sandbox.take_warnings() {
            (session.warn)(&w);
        }
        let mut start = start.clone();
        match (&mut start.network, &self.network_setup) {
            (None, setup) => start.network = setup.clone(),
            // The caller's /etc files, the interface hull set up.
            (Some(n), Some(setup)) if n.interface.is_none() => {
                n.interface = setup.interface.clone();
            }
            _ => {}
        }
        if let Some(disks) = sandbox.restored_disks() {
            // A clone of a template: its own entropy and clock, its disks.
            start.freshen = Freshen::now().ok();
            start.root_disks = Some(disks);
        }
        let start = &start;
        let connected = sandbox.connect(CONNECT_TIMEOUT);
        // Started (or failed to): the next launch may go.
        self.start_slot = None;
        let stream = connected?;
        crate::trace::mark("connected");
        if let Some(map) = sandbox.id_map(&stream) {
            let wanted = self.config().map(|c| c.userns).ok();
            if userns::is_host_map(&map) && wanted != Some(userns::Mode::Host) {
                if let Some(w) = sandbox.userns_warning() {
                    (session.warn)(&w);
                }
            }
            self.state.id_map = Some(map);
            self.states.save(&self.state)?;
        }
        let dir = self.dir();
        let session = Session {
            sinks: session
                .sinks
                .with_logs(&dir.join(STDOUT_LOG), &dir.join(STDERR_LOG)),
            ..session
        };
        crate::trace::mark("relay");
        let outcome = match relay(stream, start, session) {
            Ok(o) => o,
            Err(e) => {
                use std::os::unix::process::ExitStatusExt;
                let status = sandbox.wait(Duration::from_secs(5));
                let killed = status.and_then(|s| s.signal()).map(|sig| {
                    format!(
                        "{} died unexpectedly (killed by signal {sig})",
                        sandbox.name()
                    )
                });
                return Err(
                    match status.and_then(|s| sandbox.error_message(s)).or(killed) {
                        Some(why) => ContainerError::SandboxEnded(why),
                        None => e.into(),
                    },
                );
            }
        };
        crate::trace::mark("session ended");
        sandbox.end(Duration::from_secs(30));
        sandbox.cleanup();
        crate::trace::mark("sandbox ended, cleaned up");
        Ok(outcome)
    }

    /// Records that the container ended with `status` (and why, when it is
    /// not simply its process exiting).
    pub fn finish(&mut self, status: i32, reason: Option<String>) -> Result<(), ContainerError> {
        self.sandbox = None;
        self.proxy = None;
        network::release(self.states.root(), &self.dir());
        self.start_slot = None;
        self.memory = None;
        self.state.mark_exited(status, reason);
        self.states.save(&self.state)?;
        Ok(())
    }

    /// A new connection to the running container's agent.
    fn agent(&self) -> Result<std::os::unix::net::UnixStream, ContainerError> {
        if self.state.status != Status::Running {
            return Err(ContainerError::NotRunning(self.short_id().into()));
        }
        let isolation = self.state.isolation;
        let socket = sandbox::agent_socket(isolation, &self.dir());
        sandbox::connect_agent(isolation, &socket)
            .ok_or_else(|| ContainerError::AgentGone(self.short_id().into()))
    }

    /// Runs another process in the running container.
    pub fn exec(&self, start: &Start, session: Session<'_>) -> Result<Outcome, ContainerError> {
        let stream = self.agent()?;
        relay(stream, start, session).map_err(|source| ContainerError::Exec {
            id: self.short_id().into(),
            source,
        })
    }

    /// Sends `signal` to the container: SIGKILL ends its sandbox (and with
    /// it every process of the container) at once; any other signal goes to
    /// its main process through its monitor.
    pub fn kill(&mut self, signal: i32) -> Result<(), ContainerError> {
        if self.state.status != Status::Running {
            return Err(ContainerError::NotRunning(self.short_id().into()));
        }
        if signal == libc::SIGKILL {
            return self.kill_now();
        }
        let Some(monitor) = self.state.monitor.filter(ProcessId::is_alive) else {
            return Err(ContainerError::NoMonitor(self.short_id().into()));
        };
        monitor
            .signal(signal)
            .map_err(|source| ContainerError::Signal {
                id: self.short_id().into(),
                source,
            })
    }

    /// Sends `signal` to every process of the running container through
    /// its agent (SIGKILL: [`Container::kill`] ends the sandbox instead).
    pub fn signal_all(&mut self, signal: i32) -> Result<(), ContainerError> {
        if signal == libc::SIGKILL {
            return self.kill(signal);
        }
        let stream = self.agent()?;
        client::signal_all(stream, signal).map_err(|source| ContainerError::SignalAll {
            id: self.short_id().into(),
            source,
        })
    }

    /// Relays the DNS queries the container's processes send to `listen`
    /// (port 53, in the guest) to `resolver` (port 53) in the calling
    /// thread's network namespace, until the sandbox ends: how a microVM
    /// reaches a resolver an engine put on its namespace's loopback.
    ///
    /// The relay may start while the guest still boots: the agent is asked
    /// again (every 100 ms) until it answers, for as long as a start waits
    /// for it.
    pub fn relay_dns(&self, listen: Ipv4Addr, resolver: Ipv4Addr) -> Result<(), ContainerError> {
        let isolation = self.state.isolation;
        let socket = sandbox::agent_socket(isolation, &self.dir());
        let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
        let stream = loop {
            if let Some(s) = sandbox::connect_agent(isolation, &socket) {
                break s;
            }
            if std::time::Instant::now() > deadline {
                return Err(ContainerError::AgentGone(self.short_id().into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        client::dns_relay(stream, listen, resolver).map_err(|source| ContainerError::DnsRelay {
            id: self.short_id().into(),
            source,
        })
    }

    /// SIGTERM to the main process, then SIGKILL to the sandbox when it is
    /// still running after `timeout`. A container not running is left as is.
    pub fn stop(&mut self, timeout: Duration) -> Result<(), ContainerError> {
        if self.state.status != Status::Running {
            return Ok(());
        }
        self.kill(libc::SIGTERM)?;
        if self.wait(Some(timeout))?.is_none() {
            log::info!(
                "{} did not stop within {} s: killing it",
                self.short_id(),
                timeout.as_secs()
            );
            self.kill_now()?;
        }
        Ok(())
    }

    /// Waits until the container has exited (at most `timeout`) and returns
    /// its exit status; None when it still runs at the timeout.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Result<Option<i32>, ContainerError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.state.status {
                Status::Exited => return Ok(Some(self.state.exit_code.unwrap_or(-1))),
                Status::Created => return Err(ContainerError::NotRunning(self.short_id().into())),
                Status::Running => {}
            }
            // A sandbox that is gone has ended the container even before
            // its monitor records it.
            if !process::alive(self.state.sandbox) && !process::alive(self.state.monitor) {
                self.reconcile()?;
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
            self.state = self.states.load(&self.state.id)?;
        }
    }

    /// Removes the container and everything hull kept for it; a running
    /// one only with `force` (killed first).
    pub fn delete(mut self, force: bool) -> Result<(), ContainerError> {
        if self.state.status == Status::Running {
            if !force {
                return Err(ContainerError::Running(self.short_id().into()));
            }
            self.kill_now()?;
        }
        // Drops (kills) a sandbox this process still holds.
        crate::trace::mark("leftovers cleaned");
        self.sandbox = None;
        sandbox::cleanup_leftovers(&self.dir());
        self.states.remove(&self.state)?;
        Ok(())
    }

    /// Kills the sandbox and the monitor, waits for both to be gone, removes
    /// what the sandbox left on the host, and records the container killed.
    fn kill_now(&mut self) -> Result<(), ContainerError> {
        let procs: Vec<ProcessId> = [self.state.sandbox, self.state.monitor]
            .into_iter()
            .flatten()
            .filter(|p| p.pid != std::process::id() as i32)
            .collect();
        if !process::kill_and_wait(&procs, KILL_TIMEOUT) {
            return Err(ContainerError::StillAlive(self.short_id().into()));
        }
        self.sandbox = None;
        sandbox::cleanup_leftovers(&self.dir());
        self.finish(137, Some("killed".into()))
    }

    /// A container recorded as running whose sandbox and monitor processes
    /// are gone died without anyone recording it (kill -9 of hull and the
    /// VMM, a crash of both): record it as exited.
    fn reconcile(&mut self) -> Result<(), ContainerError> {
        if self.state.status != Status::Running {
            return Ok(());
        }
        // While its monitor lives, the monitor records how it ended: the
        // sandbox may have just exited with the status on its way.
        if process::alive(self.state.sandbox) || process::alive(self.state.monitor) {
            return Ok(());
        }
        // The monitor may have recorded the end and exited since this state
        // was read: never overwrite its record with "died unexpectedly".
        self.state = self.states.load(&self.state.id)?;
        if self.state.status != Status::Running {
            return Ok(());
        }
        let what = self.state.isolation.process_name();
        match self.finish(137, Some(format!("{what} died unexpectedly"))) {
            // Removed meanwhile (`rm -f` killed it and is taking its dir:
            // state.json goes before the directory does).
            Err(_) if !self.dir().join("state.json").is_file() => {
                Err(StateError::NotFound(self.state.id.clone()).into())
            }
            r => r,
        }
    }
}

/// Runs one session over `stream`, with our terminal raw while it lasts
/// when the session asks for it and stdin is a terminal; why the process
/// ended, when the agent says, goes to its stderr.
fn relay(
    stream: std::os::unix::net::UnixStream,
    start: &Start,
    mut session: Session<'_>,
) -> Result<Outcome, ClientError> {
    let mut raw = (session.raw_terminal && std::io::stdin().is_terminal()).then(RawMode::enable);
    let outcome = client::run_session(
        stream,
        start,
        session.stdin,
        &mut session.sinks,
        session.times,
    );
    if let Some(r) = raw.as_mut() {
        r.restore();
    }
    if let Ok(Outcome::Exited(e)) = &outcome {
        if let Some(reason) = &e.reason {
            session
                .sinks
                .write_stderr(format!("hull: {reason}\n").as_bytes());
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ContainerConfig {
        ContainerConfig::new("i", vec!["true".into()], Isolation::Vm)
    }

    #[test]
    fn created_is_recorded_until_start_and_deleted_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let c = Container::create(t.path(), &config()).unwrap();
        let back = Container::load(t.path(), c.id()).unwrap();
        assert_eq!(back.state().status, Status::Created);
        assert_eq!(back.config().unwrap(), config());
        let raw = std::fs::read_to_string(c.dir().join("state.json")).unwrap();
        assert!(raw.contains("\"status\": \"created\""), "{raw}");
        assert!(raw.contains("\"isolation\": \"vm\""), "{raw}");
        let dir = c.dir();
        back.delete(false).unwrap();
        assert!(!dir.exists());
        assert!(Container::list(t.path()).unwrap().is_empty());
    }

    #[test]
    fn dead_sandbox_is_reconciled_as_exited() {
        let t = tempfile::tempdir().unwrap();
        let mut c = Container::create(t.path(), &config()).unwrap();
        c.state.status = Status::Running;
        c.state.sandbox = Some(ProcessId {
            pid: std::process::id() as i32,
            start_time: 1, // not this process's start time: a recycled pid
        });
        c.states.save(&c.state).unwrap();
        let back = Container::load(t.path(), c.id()).unwrap();
        assert_eq!(back.state().status, Status::Exited);
        assert_eq!(
            back.state().exit_reason.as_deref(),
            Some("hull-vmm died unexpectedly")
        );
        // And it was persisted.
        let raw: ContainerState =
            serde_json::from_slice(&std::fs::read(c.dir().join("state.json")).unwrap()).unwrap();
        assert_eq!(raw.status, Status::Exited);
    }

    #[test]
    fn a_created_container_cannot_be_killed_or_waited_for() {
        let t = tempfile::tempdir().unwrap();
        let mut c = Container::create(t.path(), &config()).unwrap();
        assert!(matches!(
            c.kill(libc::SIGTERM),
            Err(ContainerError::NotRunning(_))
        ));
        assert!(matches!(c.wait(None), Err(ContainerError::NotRunning(_))));
    }
}
