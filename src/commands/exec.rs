//! `hull exec [-i] [-t] [-e K=V] [-w DIR] [-u USER] ID CMD...`: another
//! process in a running container, through the same agent and protocol as
//! its main process (vsock in a VM, a Unix socket in namespaces).

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, bail};
use clap::Args;

use super::run::ProcessArgs;
use crate::client::{self, RawMode, Sinks, Times};
use crate::sandbox::{self, Isolation};
use crate::state::{StateDir, Status};

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Container name, id or unique id prefix.
    pub container: String,
    /// CMD [ARG...]
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

pub fn run(state_dir: &Path, args: ExecArgs) -> anyhow::Result<i32> {
    client::block_signals();
    let dir = StateDir::open(state_dir)?;
    let c = dir.resolve(&args.container)?;
    if c.status != Status::Running {
        bail!("container {} is not running", c.short_id());
    }
    let isolation = match c.isolation.as_str() {
        "vm" => Isolation::Vm,
        "ns" => Isolation::Ns,
        other => bail!(
            "container {} has an unknown isolation {other:?}",
            c.short_id()
        ),
    };
    let socket = sandbox::agent_socket(isolation, &dir.dir(&c.id));
    let stream = sandbox::connect_agent(isolation, &socket)
        .with_context(|| format!("container {}: its agent does not answer", c.short_id()))?;
    let start = args
        .process
        .start(args.command.clone(), false, None, None)?;
    let mut raw = (args.process.tty && std::io::stdin().is_terminal()).then(RawMode::enable);
    let outcome = client::run_session(
        stream,
        &start,
        args.process.interactive,
        &mut Sinks::terminal(),
        &mut Times::default(),
    );
    if let Some(r) = raw.as_mut() {
        r.restore();
    }
    let outcome = outcome.with_context(|| format!("exec in {}", c.short_id()))?;
    if let client::Outcome::Exited(e) = &outcome {
        if let Some(reason) = &e.reason {
            eprintln!("hull: {reason}");
        }
    }
    Ok(outcome.status())
}
