//! `hull network create|ls|inspect|rm|prune`: networks as docker has them.

use std::path::Path;

use clap::{Args, Subcommand};
use hull::network::{Network, NetworkSpec, Networks, Subnet};

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// Show networks as JSON.
    Inspect(NamesArgs),
    /// Remove networks.
    #[command(alias = "remove")]
    Rm(NamesArgs),
    /// Remove every network no container uses.
    Prune,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The subnet, A.B.C.D/N (default: a free one from docker's pools).
    #[arg(long, value_parser = |s: &str| s.parse::<Subnet>())]
    pub subnet: Option<Subnet>,
    /// The bridge's address (default: the subnet's first).
    #[arg(long)]
    pub gateway: Option<std::net::Ipv4Addr>,
    /// No traffic in or out of the network, only between its containers.
    #[arg(long)]
    pub internal: bool,
    pub name: String,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// JSON, one array.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct NamesArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

pub fn run(state_dir: &Path, cmd: NetworkCommand) -> anyhow::Result<i32> {
    let nets = Networks::open(state_dir)?;
    match cmd {
        NetworkCommand::Create(a) => {
            let n = nets.create(&NetworkSpec {
                name: a.name,
                subnet: a.subnet,
                gateway: a.gateway,
                internal: a.internal,
            })?;
            println!("{}", n.id);
            Ok(0)
        }
        NetworkCommand::Ls(a) => {
            let all = nets.list()?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!(
                    "{:<14}{:<20}{:<20}{:<10}",
                    "NETWORK ID", "NAME", "SUBNET", "INTERNAL"
                );
                for n in &all {
                    println!(
                        "{:<14}{:<20}{:<20}{:<10}",
                        &n.id[..12],
                        n.name,
                        n.subnet.to_string(),
                        n.internal
                    );
                }
            }
            Ok(0)
        }
        NetworkCommand::Inspect(a) => {
            let mut out: Vec<serde_json::Value> = Vec::new();
            let attached = nets.attachments();
            let mut status = 0;
            for name in &a.names {
                match nets.get(name) {
                    Ok(n) => out.push(inspect(&n, &attached)),
                    Err(e) => {
                        eprintln!("hull: {}", hull::error::chain(&e));
                        status = 1;
                    }
                }
            }
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(status)
        }
        NetworkCommand::Rm(a) => {
            let mut status = 0;
            for name in &a.names {
                match nets.remove(name) {
                    Ok(()) => println!("{name}"),
                    Err(e) => {
                        eprintln!("hull: {}", hull::error::chain(&e));
                        status = 1;
                    }
                }
            }
            Ok(status)
        }
        NetworkCommand::Prune => {
            for name in nets.prune()? {
                println!("{name}");
            }
            Ok(0)
        }
    }
}

/// A network and the containers on it.
fn inspect(n: &Network, attached: &[hull::network::Attachment]) -> serde_json::Value {
    let mut v = serde_json::to_value(n).expect("a Network serializes");
    let containers: Vec<_> = attached.iter().filter(|a| a.network == n.name).collect();
    v["containers"] = serde_json::to_value(containers).expect("attachments serialize");
    v
}
