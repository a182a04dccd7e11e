//! `hull inspect ID...`: the full state of containers as a JSON array.

use std::path::Path;

use clap::Args;

use hull::Container;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Container names, ids or unique id prefixes.
    #[arg(required = true)]
    pub containers: Vec<String>,
}

pub fn run(state_dir: &Path, args: InspectArgs) -> anyhow::Result<i32> {
    let mut found = Vec::new();
    let mut status = 0;
    for key in &args.containers {
        match Container::load(state_dir, key) {
            Ok(c) => {
                let mut v = serde_json::to_value(c.state())?;
                v["state_dir"] = c.dir().display().to_string().into();
                found.push(v);
            }
            Err(e) => {
                eprintln!("hull: {}", hull::error::chain(&e));
                status = 1;
            }
        }
    }
    println!("{}", serde_json::to_string_pretty(&found)?);
    Ok(status)
}
