//! `create` and `start`. `create` records the container, forks its monitor
//! and returns once the sandbox is up; the monitor (the pid in
//! `--pid-file`: the engine's subreaper waits for it) enters the
//! container's network namespace, runs the prestart and createRuntime
//! hooks, launches the sandbox, then waits on the start fifo; `start`
//! releases it, and the monitor runs the process and exits with its
//! status.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use hull::client::{self, Sinks, Times};
use hull::container::Session;
use hull::{Container, pty, sys};

use crate::Global;
use crate::record::{self, Record, START_FIFO};
use crate::spec::{self, NetPlan};

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The bundle directory (config.json and the root filesystem).
    #[arg(short, long, default_value = "")]
    pub bundle: PathBuf,
    /// Where to write the pid of the process the container lives as.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// A Unix socket to send the terminal's master to (process.terminal).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Accepted and ignored (runc's: hull does not pivot on the host).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted and ignored (runc's: no session keyring is made).
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Extra fds to pass into the container: only 0 is supported.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

pub fn create(g: &Global, args: CreateArgs) -> anyhow::Result<i32> {
    if args.preserve_fds > 0 {
        bail!(
            "--preserve-fds {}: passing extra fds into a container is not supported",
            args.preserve_fds
        );
    }
    let bundle = spec::load(&args.bundle)?;
    let plan = spec::plan(&bundle, &args.id, g.isolation)?;
    let state_dir = g.state_dir();
    if Container::load(&state_dir, &args.id).is_ok() {
        bail!("container {} exists already", args.id);
    }
    let container = Container::create(&state_dir, &plan.config)?;
    g.index(&args.id);
    let dir = container.dir();
    let hooks = bundle.spec.hooks().clone().unwrap_or_default();
    let record = Record {
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs.clone(),
        created: record::now_rfc3339(),
        annotations: bundle.spec.annotations().clone().unwrap_or_default(),
        poststart: hooks.poststart().clone().unwrap_or_default(),
        poststop: hooks.poststop().clone().unwrap_or_default(),
        seccomp: plan
            .start
            .privileges
            .as_ref()
            .map(|p| p.seccomp.clone())
            .unwrap_or_default(),
    };
    #[allow(deprecated)] // prestart: docker 20.10 still sets its network up from one
    let early: Vec<_> = hooks
        .prestart()
        .iter()
        .flatten()
        .chain(hooks.create_runtime().iter().flatten())
        .cloned()
        .collect();
    let prepared = (|| -> anyhow::Result<Option<OwnedFd>> {
        record.save(&dir)?;
        pty::mkfifo(&dir.join(START_FIFO)).context("making the start fifo")?;
        if !plan.terminal {
            return Ok(None);
        }
        let socket = args
            .console_socket
            .as_ref()
            .context("process.terminal is set but no --console-socket was given")?;
        let (master, slave) = pty::open_pty().context("opening a pty")?;
        pty::send_fd(socket, &master, "/dev/ptmx")
            .with_context(|| format!("sending the terminal to {}", socket.display()))?;
        Ok(Some(slave))
    })();
    let slave = match prepared {
        Ok(s) => s,
        Err(e) => {
            let _ = container.delete(true);
            Global::unindex(&args.id);
            return Err(e);
        }
    };
    client::block_signals();
    let (mut r, w) = sys::pipe().context("making a pipe for the monitor")?;
    // SAFETY: hull-runtime has started no thread (the netlink work of the
    // library runs later, in the monitor).
    match unsafe { sys::fork() }.context("forking the monitor")? {
        sys::Fork::Child => {
            drop(r);
            let code = monitor(g, container, plan, slave, w, &early, &record);
            std::process::exit(code);
        }
        sys::Fork::Parent => {
            drop(w);
            drop(slave);
            let mut msg = String::new();
            let _ = r.read_to_string(&mut msg);
            if let Some(pid) = msg.strip_prefix("ok ") {
                if let Some(f) = &args.pid_file {
                    write_pid_file(f, pid.trim())?;
                }
                return Ok(0);
            }
            let why = msg
                .strip_prefix("err ")
                .unwrap_or("the monitor ended before the container was created");
            // The monitor is gone or going: take back what it made.
            if let Ok(c) = Container::load(&state_dir, &args.id) {
                let _ = c.delete(true);
            }
            Global::unindex(&args.id);
            bail!("{}", why.trim());
        }
    }
}

/// Writes `pid` to `path` atomically (engines read it as soon as create
/// returns).
pub fn write_pid_file(path: &Path, pid: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("hull-tmp");
    std::fs::write(&tmp, pid).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The monitor: returns the container's exit status, or 125 when it could
/// not be created (told to `create` through `notify`).
fn monitor(
    g: &Global,
    mut container: Container,
    mut plan: spec::Plan,
    slave: Option<OwnedFd>,
    mut notify: std::fs::File,
    early: &[oci_spec::runtime::Hook],
    record: &Record,
) -> i32 {
    let prepared = (|| -> anyhow::Result<()> {
        match &slave {
            Some(s) => pty::become_terminal_owner(s).context("taking the terminal")?,
            None => pty::new_session().context("starting a session")?,
        }
        match &plan.net {
            NetPlan::Host => {}
            NetPlan::New => sys::unshare_net().context("making a network namespace")?,
            NetPlan::Join(p) => {
                let f =
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
                sys::setns_net(&f)
                    .with_context(|| format!("joining the network namespace {}", p.display()))?;
            }
        }
        let mut state = record::state_json(&container, record);
        state["pid"] = pty::own_pid().into();
        state["status"] = "created".into();
        record::run_hooks("prestart", early, &state)?;
        plan.reread_etc();
        container.start_with(&|w| g.log_line("info", w))?;
        Ok(())
    })();
    if let Err(e) = prepared {
        let _ = write!(notify, "err {e:#}");
        return hull::EXIT_HULL_ERROR;
    }
    let _ = write!(notify, "ok {}", pty::own_pid());
    drop(notify);
    drop(slave);
    if let Err(e) = wait_for_start(&container.dir().join(START_FIFO)) {
        let reason = format!("{e:#}");
        let _ = container.finish(hull::EXIT_HULL_ERROR, Some(reason));
        return hull::EXIT_HULL_ERROR;
    }
    if let Some(resolver) = spec::loopback_nameserver(&plan) {
        relay_dns(g, &container, resolver);
    }
    let warn = |w: &str| g.log_line("warning", w);
    let session = Session {
        sinks: Sinks::terminal(),
        stdin: true,
        raw_terminal: plan.terminal,
        times: &mut Times::default(),
        warn: &warn,
    };
    let result = container.attach(&plan.start, session);
    let (status, reason) = match &result {
        Ok(o) => (o.status(), o.failure().map(str::to_string)),
        Err(e) => {
            eprintln!("hull-runtime: {}", hull::error::chain(e));
            g.log_line("error", &hull::error::chain(e));
            (hull::EXIT_HULL_ERROR, Some(hull::error::chain(e)))
        }
    };
    let _ = container.finish(status, reason);
    status
}

/// Serves a microVM's DNS queries to `resolver`, on the engine's loopback
/// where the guest cannot reach it, on a thread of the monitor (in the
/// engine's network namespace) for the sandbox's life: the guest's
/// resolv.conf names the same address, which the agent takes in the guest.
fn relay_dns(g: &Global, container: &Container, resolver: std::net::Ipv4Addr) {
    let Ok(c) = g.load(container.id()) else {
        return;
    };
    let g = g.clone();
    std::thread::spawn(move || {
        g.log_line("info", &format!("relaying DNS queries to {resolver}"));
        match c.relay_dns(resolver, resolver) {
            Ok(()) => g.log_line("info", "the DNS relay ended"),
            Err(e) => g.log_line("warning", &hull::error::chain(&e)),
        }
    });
}

/// Blocks until `start` opens the fifo, then tells it the container goes.
fn wait_for_start(fifo: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(fifo)
        .with_context(|| format!("opening {}", fifo.display()))?;
    f.write_all(b"s").context("answering start")?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    pub id: String,
}

/// `start`: releases a created container and runs its poststart hooks.
pub fn start(g: &Global, args: StartArgs) -> anyhow::Result<i32> {
    let c = g.load(&args.id)?;
    let status = record::oci_status(&c);
    if status != "created" {
        bail!("container {} is {status}, not created", args.id);
    }
    let fifo = c.dir().join(START_FIFO);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .with_context(|| format!("opening {}", fifo.display()))?;
    let mut byte = [0u8; 1];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match f.read(&mut byte) {
            Ok(1) => break,
            Ok(_) | Err(_) if std::time::Instant::now() > deadline => {
                bail!(
                    "container {}: its monitor did not answer within 30 s",
                    args.id
                )
            }
            _ => {}
        }
        if !c.state().monitor.is_some_and(|m| m.is_alive()) {
            bail!("container {}: its monitor is gone", args.id);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = std::fs::remove_file(&fifo);
    let record = Record::load(&c.dir())?;
    let c = g.load(&args.id)?;
    let state = record::state_json(&c, &record);
    if let Err(e) = record::run_hooks("poststart", &record.poststart, &state) {
        // runtime-spec: a failing poststart hook is a warning.
        g.log_line("warning", &format!("{e:#}"));
    }
    Ok(0)
}
