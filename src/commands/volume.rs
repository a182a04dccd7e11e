//! `hull volume create|ls|inspect|rm|prune`: named volumes under the data
//! dir, as docker's local driver keeps them.

use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};
use hull::volume::{self, Volume, VolumeStore};

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (a random name when none is given); prints its name.
    Create(CreateArgs),
    /// List volumes.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show volumes as JSON.
    Inspect(InspectArgs),
    /// Remove volumes (one a container refers to stays).
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Remove every volume no container refers to.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only the names.
    #[arg(short, long)]
    pub quiet: bool,
    /// A JSON array, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Do not ask (hull never asks: accepted for docker's scripts).
    #[arg(short, long)]
    pub force: bool,
    /// The removed names as a JSON array.
    #[arg(long)]
    pub json: bool,
}

pub fn run(state_dir: &Path, data_dir: &Path, cmd: VolumeCommand) -> anyhow::Result<i32> {
    let store = VolumeStore::new(data_dir);
    match cmd {
        VolumeCommand::Create(a) => {
            let name = match a.name {
                Some(n) => n,
                None => random_name()?,
            };
            let (v, _) = store.create(&name, false)?;
            println!("{}", v.name);
        }
        VolumeCommand::Ls(a) => {
            let vols = store.list()?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&vols)?);
            } else if a.quiet {
                vols.iter().for_each(|v| println!("{}", v.name));
            } else {
                println!("DRIVER    VOLUME NAME");
                vols.iter().for_each(|v| println!("local     {}", v.name));
            }
        }
        VolumeCommand::Inspect(a) => {
            let mut found: Vec<Volume> = Vec::new();
            let mut status = 0;
            for n in &a.names {
                match store.inspect(n) {
                    Ok(v) => found.push(v),
                    Err(e) => {
                        eprintln!("hull: {e}");
                        status = 1;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&found)?);
            return Ok(status);
        }
        VolumeCommand::Rm(a) => {
            let in_use = volume::volumes_in_use(state_dir).context("listing the containers")?;
            let mut status = 0;
            for n in &a.names {
                match store.remove(n, &in_use) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("hull: {e}");
                        status = 1;
                    }
                }
            }
            return Ok(status);
        }
        VolumeCommand::Prune(a) => {
            let in_use = volume::volumes_in_use(state_dir).context("listing the containers")?;
            let removed = store.prune(&in_use)?;
            if a.json {
                println!("{}", serde_json::to_string(&removed)?);
            } else {
                removed.iter().for_each(|n| println!("{n}"));
            }
        }
    }
    Ok(0)
}

fn random_name() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    hull::sys::getrandom(&mut bytes).context("naming the volume")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
