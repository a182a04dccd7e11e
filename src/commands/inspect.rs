//! `hull inspect ID...`: the full state of containers as a JSON array.

use std::path::Path;

use clap::Args;

use crate::state::StateDir;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Container names, ids or unique id prefixes.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub fn run(state_dir: &Path, args: InspectArgs) -> anyhow::Result<i32> {
    let dir = StateDir::open(state_dir)?;
    let mut found = Vec::new();
    let mut status = 0;
    for key in &args.containers {
        match dir.resolve(key) {
            Ok(c) => {
                let mut v = serde_json::to_value(&c)?;
                v["state_dir"] = dir.dir(&c.id).display().to_string().into();
                found.push(v);
            }
            Err(e) => {
                eprintln!("hull: {e}");
                status = 1;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&found)?);
    Ok(status)
}
