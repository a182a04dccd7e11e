//! `exec`: another process in a running container, over the same agent
//! session as `hull exec`. With `--detach` a forked exec monitor runs it
//! (its pid in `--pid-file`, exiting with the process's status), as the
//! engines' shims expect.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use hull::client::{self, Sinks, Times};
use hull::container::Session;
use hull::{Container, pty, sys};
use oci_spec::runtime::Process;

use crate::Global;
use crate::create::write_pid_file;
use crate::record;
use crate::spec;

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The process, as the OCI process JSON (instead of ARGS).
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    /// Return at once; the process runs on in an exec monitor.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Give the process a terminal (with ARGS).
    #[arg(short, long)]
    pub tty: bool,
    /// Working directory (with ARGS).
    #[arg(long)]
    pub cwd: Option<String>,
    /// KEY=VALUE (with ARGS).
    #[arg(short, long)]
    pub env: Vec<String>,
    /// UID[:GID] (with ARGS).
    #[arg(short, long)]
    pub user: Option<String>,
    /// Accepted and ignored.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn exec(g: &Global, args: ExecArgs) -> anyhow::Result<i32> {
    let container = g.load(&args.id)?;
    let status = record::oci_status(&container);
    if status != "running" {
        bail!("container {} is {status}, not running", args.id);
    }
    let mut start = match &args.process {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let p: Process = serde_json::from_str(&text)
                .with_context(|| format!("{} is not an OCI process", path.display()))?;
            spec::start_of(&p, false)?
        }
        None => {
            let mut p = Process::default();
            // oci-spec's defaults cut the capabilities and set
            // no_new_privs; `exec ID ARGS` keeps the agent's own.
            p.set_capabilities(None);
            p.set_no_new_privileges(None);
            p.set_args(Some(args.args.clone()));
            p.set_terminal(Some(args.tty));
            if let Some(cwd) = &args.cwd {
                p.set_cwd(cwd.into());
            }
            let mut env = p.env().clone().unwrap_or_default();
            env.extend(args.env.iter().cloned());
            p.set_env(Some(env));
            let mut s = spec::start_of(&p, false)?;
            if let Some(u) = &args.user {
                let (user, group) = u.split_once(':').unwrap_or((u, "0"));
                s.user.user = user.to_string();
                s.user.group = Some(group.to_string());
            }
            s
        }
    };
    // runc gives an exec process the container's seccomp filters.
    if let Some(p) = start.privileges.as_mut() {
        p.seccomp = crate::record::Record::load(&container.dir())?.seccomp;
    }
    let slave = if start.tty {
        let socket = args
            .console_socket
            .as_ref()
            .context("a terminal was asked for but no --console-socket was given")?;
        let (master, slave) = pty::open_pty().context("opening a pty")?;
        pty::send_fd(socket, &master, "/dev/ptmx")
            .with_context(|| format!("sending the terminal to {}", socket.display()))?;
        Some(slave)
    } else {
        None
    };
    client::block_signals();
    if !args.detach {
        if let Some(f) = &args.pid_file {
            write_pid_file(f, &pty::own_pid().to_string())?;
        }
        if let Some(s) = &slave {
            pty::become_terminal_owner(s).context("taking the terminal")?;
        }
        return run(g, &container, &start);
    }
    let (mut r, mut w) = sys::pipe().context("making a pipe for the exec monitor")?;
    // SAFETY: hull-runtime has started no thread yet.
    match unsafe { sys::fork() }.context("forking the exec monitor")? {
        sys::Fork::Child => {
            drop(r);
            let taken = match &slave {
                Some(s) => pty::become_terminal_owner(s),
                None => pty::new_session(),
            };
            let _ = write!(w, "{}", pty::own_pid());
            drop(w);
            drop(slave);
            let code = match taken
                .context("taking the terminal")
                .and_then(|()| run(g, &container, &start))
            {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("hull-runtime: {e:#}");
                    hull::EXIT_HULL_ERROR
                }
            };
            std::process::exit(code);
        }
        sys::Fork::Parent => {
            drop(w);
            let mut pid = String::new();
            let _ = r.read_to_string(&mut pid);
            if pid.trim().is_empty() {
                bail!("the exec monitor ended before it started");
            }
            if let Some(f) = &args.pid_file {
                write_pid_file(f, pid.trim())?;
            }
            Ok(0)
        }
    }
}

/// Runs `start` in `container`, relaying our stdio; its exit status.
fn run(
    g: &Global,
    container: &Container,
    start: &hull_agent::protocol::Start,
) -> anyhow::Result<i32> {
    let session = Session {
        sinks: Sinks::terminal(),
        stdin: true,
        raw_terminal: start.tty,
        times: &mut Times::default(),
        warn: &|w| g.log_line("warning", w),
    };
    Ok(container.exec(start, session)?.status())
}
