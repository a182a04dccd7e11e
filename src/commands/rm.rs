//! `hull rm [-f] ID...`: remove containers and everything hull kept for them.

use std::path::Path;

use clap::Args;
use hull::Container;

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Kill a running container first (SIGKILL to its sandbox).
    #[arg(short, long)]
    pub force: bool,
    /// Container names, ids or unique id prefixes.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub fn run(state_dir: &Path, args: RmArgs) -> anyhow::Result<i32> {
    Ok(super::for_each(&args.containers, |key| {
        Container::load(state_dir, key)?.delete(args.force)
    }))
}
