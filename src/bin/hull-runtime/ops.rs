//! `state`, `kill`, `delete`, `ps`, `features`: each loads the container
//! and calls the library.

use anyhow::bail;
use hull::Container;
use hull::state::StateError;

use crate::Global;
use crate::record::{self, Record};

#[derive(Debug, clap::Args)]
pub struct IdArgs {
    pub id: String,
}

pub fn state(g: &Global, args: IdArgs) -> anyhow::Result<i32> {
    let c = g.load(&args.id)?;
    let record = Record::load(&c.dir())?;
    println!(
        "{}",
        serde_json::to_string_pretty(&record::state_json(&c, &record))?
    );
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Signal every process of the container, through the agent (SIGKILL
    /// ends the sandbox, and with it all of them, either way).
    #[arg(short, long)]
    pub all: bool,
    pub id: String,
    /// A number, or a name with or without SIG.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

pub fn kill(g: &Global, args: KillArgs) -> anyhow::Result<i32> {
    let signal = parse_signal(&args.signal)?;
    let mut c = g.load(&args.id)?;
    match record::oci_status(&c) {
        // Nothing runs yet but the sandbox: any signal ends it, as a
        // signal ends runc's waiting init.
        "created" | "creating" => c.kill(libc::SIGKILL)?,
        "stopped" => bail!("container {} is not running", args.id),
        _ if args.all => c.signal_all(signal)?,
        _ => c.kill(signal)?,
    }
    Ok(0)
}

/// `9`, `KILL`, `SIGKILL` (hull::process::signal_number).
pub fn parse_signal(s: &str) -> anyhow::Result<i32> {
    hull::process::signal_number(s).ok_or_else(|| anyhow::anyhow!("invalid signal {s}"))
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Kill a running container first; a missing one is no error.
    #[arg(short, long)]
    pub force: bool,
    pub id: String,
}

pub fn delete(g: &Global, args: DeleteArgs) -> anyhow::Result<i32> {
    let c = match g.load(&args.id) {
        Ok(c) => c,
        Err(hull::ContainerError::State(StateError::NotFound(_))) if args.force => return Ok(0),
        Err(hull::ContainerError::State(StateError::NotFound(_))) => {
            bail!("container {} does not exist", args.id)
        }
        Err(e) => return Err(e.into()),
    };
    let record = Record::load(&c.dir()).unwrap_or_default();
    let status = record::oci_status(&c);
    if status == "running" && !args.force {
        bail!(
            "container {} is running: stop it first, or delete --force",
            args.id
        );
    }
    let mut state = record::state_json(&c, &record);
    c.delete(true)?;
    Global::unindex(&args.id);
    state["status"] = "stopped".into();
    if let Err(e) = record::run_hooks("poststop", &record.poststop, &state) {
        // runtime-spec: a failing poststop hook is a warning.
        g.log_line("warning", &format!("{e:#}"));
    }
    Ok(0)
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// `table` or `json` (a list of host pids).
    #[arg(short, long, default_value = "table")]
    pub format: String,
    pub id: String,
}

/// The host processes the container is: its monitor and its sandbox (the
/// VMM, or the agent at the root of the namespaces, whose descendants are
/// the container's processes).
pub fn ps(g: &Global, args: PsArgs) -> anyhow::Result<i32> {
    let c = g.load(&args.id)?;
    let mut pids: Vec<i32> = [c.state().monitor, c.state().sandbox]
        .into_iter()
        .flatten()
        .filter(|p| p.is_alive())
        .map(|p| p.pid)
        .collect();
    pids.dedup();
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            println!("PID");
            for p in pids {
                println!("{p}");
            }
        }
        f => bail!("invalid --format {f}: table or json"),
    }
    Ok(0)
}

/// `list`: the containers under `--root`, one line each (id, status,
/// monitor pid, bundle), as runc lists them.
pub fn list(g: &Global) -> anyhow::Result<i32> {
    let dir = g.state_dir();
    if !dir.join("containers").is_dir() {
        return Ok(0);
    }
    for s in Container::list(&dir)? {
        let Ok(c) = Container::load(&dir, &s.id) else {
            continue;
        };
        let record = Record::load(&c.dir()).unwrap_or_default();
        let st = record::state_json(&c, &record);
        println!(
            "{}\t{}\t{}\t{}",
            s.name,
            st["status"].as_str().unwrap_or(""),
            st["pid"],
            record.bundle.display()
        );
    }
    Ok(0)
}

/// runtime-spec's features document: what this runtime understands.
pub fn features() -> anyhow::Result<i32> {
    let doc = serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.1.0",
        "hooks": ["prestart", "createRuntime", "poststart", "poststop"],
        "mountOptions": ["bind", "rbind", "ro", "rw", "size", "mode"],
        "linux": {
            "namespaces": ["mount", "pid", "network", "ipc", "uts", "user", "cgroup"],
            "capabilities": [],
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {"enabled": false},
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.github.hull.isolation": "hull.isolation=vm|ns picks the backend"
        }
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(parse_signal("9").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("SIGTERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("hup").unwrap(), libc::SIGHUP);
        assert!(parse_signal("0").is_err());
        assert!(
            parse_signal("SIGNOPE")
                .unwrap_err()
                .to_string()
                .contains("SIGNOPE")
        );
    }
}
