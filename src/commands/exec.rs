//! `hull exec [-i] [-t] [-e K=V] [-w DIR] [-u USER] ID CMD...`: another
//! process in a running container, through the same agent and protocol as
//! its main process (vsock in a VM, a Unix socket in namespaces).

use std::path::Path;

use clap::Args;
use hull::Container;
use hull::client::{self, Sinks, Times};
use hull::container::Session;

use super::run::ProcessArgs;

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
    let container = Container::load(state_dir, &args.container)?;
    let start = args
        .process
        .start(args.command.clone(), false, None, None)?;
    let session = Session {
        sinks: Sinks::terminal(),
        stdin: args.process.interactive,
        raw_terminal: args.process.tty,
        times: &mut Times::default(),
        warn: &|w| eprintln!("hull: {w}"),
    };
    Ok(container.exec(&start, session)?.status())
}
