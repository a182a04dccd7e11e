//! `hull stop [-t SECS] ID...` and `hull kill [-s SIG] ID...`.
//!
//! A running container has a monitor: the `hull run` process that holds the
//! connection to the agent. It forwards every signal it can catch to the
//! container's main process, so stopping is a signal to the monitor; what
//! cannot be delivered that way (SIGKILL, a dead monitor, a stop timeout)
//! ends the sandbox itself: the VMM, or the agent at the root of the
//! namespaces, which takes every process of the container with it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::state::{ContainerState, StateDir, Status};

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait after SIGTERM before killing the container.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    /// Container names, ids or unique id prefixes.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    /// Signal to send: a name (TERM, SIGHUP) or a number.
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    /// Container names, ids or unique id prefixes.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub fn run_stop(state_dir: &Path, args: StopArgs) -> anyhow::Result<i32> {
    let dir = StateDir::open(state_dir)?;
    for_each(&args.containers, |key| {
        let mut c = dir.resolve(key)?;
        if c.status != Status::Running {
            return Ok(());
        }
        signal(&c, libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(args.time);
        while Instant::now() < deadline {
            c = dir.load(&c.id)?;
            if c.status != Status::Running || !sandbox_alive(&c) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        log::info!(
            "{} did not stop within {} s: killing it",
            c.short_id(),
            args.time
        );
        c.kill_and_wait()?;
        crate::sandbox::cleanup_leftovers(&dir.dir(&c.id));
        dir.save(&c)?;
        Ok(())
    })
}

pub fn run_kill(state_dir: &Path, args: KillArgs) -> anyhow::Result<i32> {
    let sig = parse_signal(&args.signal)?;
    let dir = StateDir::open(state_dir)?;
    for_each(&args.containers, |key| {
        let mut c = dir.resolve(key)?;
        if c.status != Status::Running {
            bail!("container {} is not running", c.short_id());
        }
        if sig == libc::SIGKILL {
            c.kill_and_wait()?;
            crate::sandbox::cleanup_leftovers(&dir.dir(&c.id));
            dir.save(&c)?;
        } else {
            signal(&c, sig)?;
        }
        Ok(())
    })
}

/// Runs `f` for every key, printing each key that succeeded (as docker does)
/// and each error; exit status 1 when any failed.
fn for_each(keys: &[String], mut f: impl FnMut(&str) -> anyhow::Result<()>) -> anyhow::Result<i32> {
    let mut status = 0;
    for key in keys {
        match f(key) {
            Ok(()) => println!("{key}"),
            Err(e) => {
                eprintln!("hull: {e:#}");
                status = 1;
            }
        }
    }
    Ok(status)
}

fn sandbox_alive(c: &ContainerState) -> bool {
    c.sandbox.is_some_and(|p| p.is_alive())
}

/// Delivers `sig` to the container's main process through its monitor.
fn signal(c: &ContainerState, sig: i32) -> anyhow::Result<()> {
    let Some(monitor) = c.monitor.filter(|m| m.is_alive()) else {
        bail!(
            "container {} has no live monitor to deliver the signal: use `hull kill` (SIGKILL) or `hull rm -f`",
            c.short_id()
        );
    };
    // SAFETY: kill(2) with a pid and signal number; no memory involved.
    if unsafe { libc::kill(monitor.pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("signalling the monitor of {}", c.short_id()));
    }
    Ok(())
}

/// `TERM`, `SIGTERM`, `term` or `15`.
pub fn parse_signal(s: &str) -> anyhow::Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
        bail!("invalid signal number {n}");
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let n = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "WINCH" => libc::SIGWINCH,
        _ => bail!("unknown signal {s:?}"),
    };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("TERM").unwrap(), 15);
        assert_eq!(parse_signal("sigkill").unwrap(), 9);
        assert_eq!(parse_signal("1").unwrap(), 1);
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("BOGUS").is_err());
    }
}
