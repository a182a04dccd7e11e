//! `hull-runtime`: an OCI runtime with runc's command line, so podman,
//! dockerd and containerd run containers in hull microVMs (or, with the
//! annotation `hull.isolation=ns`, in hull's namespace sandbox). Each
//! subcommand translates its arguments into calls of the `hull` library;
//! docs/runtime.md says what is supported.

mod create;
mod exec;
mod ops;
mod record;
mod seccomp;
mod spec;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use hull::Isolation;

/// An OCI runtime (runc's command line) that runs containers in KVM microVMs.
#[derive(Debug, Parser)]
#[command(name = "hull-runtime", version, about, args_override_self = true)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// The flags engines pass before the subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Where the containers' state lives.
    #[arg(long, global = true, default_value = "/run/hull-runtime")]
    root: PathBuf,
    /// Append errors (and warnings) to this file too.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// `text` or `json` (one object a line: level, msg, time), as runc.
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    /// Accepted: hull makes its own cgroups (cgroupfs) whatever the engine
    /// uses; see docs/runtime.md.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// More log output.
    #[arg(long, global = true)]
    debug: bool,
    /// The backend when the bundle has no `hull.isolation` annotation.
    #[arg(
        long,
        global = true,
        env = "HULL_RUNTIME_ISOLATION",
        value_enum,
        default_value = "vm"
    )]
    isolation: Isolation,
}

/// The longest state dir whose containers' agent sockets still fit a Unix
/// socket address (108 bytes): `DIR/containers/<64 hex>/agent.sock`.
const MAX_STATE_DIR: usize = 20;

impl Global {
    /// hull's state dir for `--root`: the root itself when short enough,
    /// else a short directory named by the root's hash.
    pub fn state_dir(&self) -> PathBuf {
        let root = std::path::absolute(&self.root).unwrap_or_else(|_| self.root.clone());
        if root.as_os_str().len() <= MAX_STATE_DIR {
            return root;
        }
        // FNV-1a: stable across builds, short.
        let mut h: u32 = 0x811c_9dc5;
        for b in root.as_os_str().as_encoded_bytes() {
            h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
        PathBuf::from(format!("/run/hrt/{h:08x}"))
    }

    /// The container `id`: under `--root`, else where the id index says
    /// (podman's cleanup runs `delete` without the runtime flags it gave
    /// `create`).
    pub fn load(&self, id: &str) -> Result<hull::Container, hull::ContainerError> {
        match hull::Container::load(&self.state_dir(), id) {
            Err(e @ hull::ContainerError::State(hull::state::StateError::NotFound(_))) => {
                match std::fs::read_link(Path::new(ID_INDEX).join(id)) {
                    Ok(dir) if dir != self.state_dir() => hull::Container::load(&dir, id),
                    _ => Err(e),
                }
            }
            r => r,
        }
    }

    /// Records which state dir holds container `id` (see [`Global::load`]).
    pub fn index(&self, id: &str) {
        let link = Path::new(ID_INDEX).join(id);
        let _ = std::fs::create_dir_all(ID_INDEX);
        let _ = std::fs::remove_file(&link);
        let _ = std::os::unix::fs::symlink(self.state_dir(), link);
    }

    /// Forgets container `id`'s index entry.
    pub fn unindex(id: &str) {
        let _ = std::fs::remove_file(Path::new(ID_INDEX).join(id));
    }
}

/// Container id -> the state dir that holds it, for commands an engine
/// runs without its runtime flags.
const ID_INDEX: &str = "/run/hull-runtime/ids";

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a container from a bundle (its process waits for `start`).
    Create(create::CreateArgs),
    /// Start a created container's process.
    Start(create::StartArgs),
    /// Print a container's state as JSON.
    State(ops::IdArgs),
    /// Send a signal to a container's process.
    Kill(ops::KillArgs),
    /// Remove a container.
    Delete(ops::DeleteArgs),
    /// Run another process in a running container.
    Exec(exec::ExecArgs),
    /// List a container's host processes.
    Ps(ops::PsArgs),
    /// List the containers under --root.
    List,
    /// Print what this runtime supports, as JSON.
    Features,
}

fn main() {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() { 2 } else { 0 })
    });
    let level = if cli.global.debug { "debug" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    ensure_home();
    let g = &cli.global;
    let result = match cli.command {
        Command::Create(a) => create::create(g, a),
        Command::Start(a) => create::start(g, a),
        Command::State(a) => ops::state(g, a),
        Command::Kill(a) => ops::kill(g, a),
        Command::Delete(a) => ops::delete(g, a),
        Command::Exec(a) => exec::exec(g, a),
        Command::Ps(a) => ops::ps(g, a),
        Command::List => ops::list(g),
        Command::Features => ops::features(),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("hull-runtime: {msg}");
            g.log_line("error", &msg);
            std::process::exit(1);
        }
    }
}

impl Global {
    /// Appends `msg` at `level` to `--log` (nothing without it): the
    /// monitors' warnings go there, never into the container's stderr.
    pub fn log_line(&self, level: &str, msg: &str) {
        log_to(self, level, msg)
    }
}

fn log_to(g: &Global, level: &str, msg: &str) {
    let Some(path) = &g.log else { return };
    let line = if g.log_format == "json" {
        serde_json::json!({"level": level, "msg": msg, "time": record::now_rfc3339()}).to_string()
    } else {
        format!(
            "time=\"{}\" level={level} msg=\"{}\"",
            record::now_rfc3339(),
            msg.replace('"', "\\\"")
        )
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Engines may run the runtime without HOME (containerd's shim): hull finds
/// the guest kernel under $HOME/.cache, so take the user's home from
/// /etc/passwd then.
fn ensure_home() {
    if std::env::var_os("HOME").is_some() {
        return;
    }
    let uid = hull::sys::euid().to_string();
    let home = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[2] == uid).then(|| f[5].to_string())
        })
    });
    if let Some(h) = home {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("HOME", h) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(root: &str) -> Global {
        Global {
            root: root.into(),
            log: None,
            log_format: "json".into(),
            systemd_cgroup: false,
            debug: false,
            isolation: Isolation::Vm,
        }
    }

    #[test]
    fn a_long_root_maps_to_a_short_state_dir_that_fits_the_agents_socket() {
        assert_eq!(
            global("/run/hull-runtime").state_dir(),
            Path::new("/run/hull-runtime")
        );
        let long = "/var/run/docker/runtime-hull/moby-with-a-long-name";
        let dir = global(long).state_dir();
        assert!(dir.starts_with("/run/hrt/"), "{}", dir.display());
        assert_eq!(dir, global(long).state_dir(), "stable");
        assert_ne!(dir, global("/var/run/other/long/runtime/root").state_dir());
        let socket = dir
            .join("containers")
            .join("a".repeat(64))
            .join("agent.sock");
        assert!(socket.as_os_str().len() <= 107);
    }
}
