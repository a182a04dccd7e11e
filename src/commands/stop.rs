//! `hull stop [-t SECS] ID...` and `hull kill [-s SIG] ID...`.
//!
//! A running container has a monitor: the `hull run` process that holds the
//! connection to the agent. It forwards every signal it can catch to the
//! container's main process, so stopping is a signal to the monitor; what
//! cannot be delivered that way (SIGKILL, a dead monitor, a stop timeout)
//! ends the sandbox itself: the VMM, or the agent at the root of the
//! namespaces, which takes every process of the container with it.

use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use hull::Container;

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
    let timeout = Duration::from_secs(args.time);
    Ok(super::for_each(&args.containers, |key| {
        Container::load(state_dir, key)?.stop(timeout)
    }))
}

pub fn run_kill(state_dir: &Path, args: KillArgs) -> anyhow::Result<i32> {
    let signal = parse_signal(&args.signal)?;
    Ok(super::for_each(&args.containers, |key| {
        Container::load(state_dir, key)?.kill(signal)
    }))
}

/// `TERM`, `SIGTERM`, `term` or `15` (hull::process::signal_number).
pub fn parse_signal(s: &str) -> anyhow::Result<i32> {
    match (hull::process::signal_number(s), s.parse::<i32>()) {
        (Some(n), _) => Ok(n),
        (None, Ok(n)) => bail!("invalid signal number {n}"),
        (None, Err(_)) => bail!("unknown signal {s:?}"),
    }
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
