//! `hull rm [-f] ID...`: remove containers and everything hull kept for them.

use std::path::Path;

use anyhow::bail;
use clap::Args;

use crate::state::{StateDir, Status};

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
    let dir = StateDir::open(state_dir)?;
    let mut status = 0;
    for key in &args.containers {
        match remove_one(&dir, key, args.force) {
            Ok(()) => println!("{key}"),
            Err(e) => {
                eprintln!("hull: {e:#}");
                status = 1;
            }
        }
    }
    Ok(status)
}

fn remove_one(dir: &StateDir, key: &str, force: bool) -> anyhow::Result<()> {
    let mut c = dir.resolve(key)?;
    if c.status == Status::Running {
        if !force {
            bail!(
                "container {} is running: stop it first, or use rm -f",
                c.short_id()
            );
        }
        c.kill_and_wait()?;
        dir.save(&c)?;
    }
    crate::sandbox::cleanup_leftovers(&dir.dir(&c.id));
    dir.remove(&c)?;
    Ok(())
}
