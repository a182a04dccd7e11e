//! `hull port CONTAINER`: the container's published ports, as docker
//! shows them (`80/tcp -> 0.0.0.0:8080`).

use std::path::Path;

use clap::Args;
use hull::Container;

#[derive(Debug, Args)]
pub struct PortArgs {
    /// A container name, id or unique id prefix.
    pub container: String,
}

pub fn run(state_dir: &Path, args: PortArgs) -> anyhow::Result<i32> {
    let c = Container::load(state_dir, &args.container)?;
    for p in c.network().map(|a| a.ports).unwrap_or_default() {
        println!("{p}");
    }
    Ok(0)
}
