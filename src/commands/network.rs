//! `hull network create|ls|inspect|rm|prune|connect|disconnect`: networks
//! as docker has them.

use std::path::Path;

use std::net::IpAddr;

use clap::{Args, Subcommand};
use hull::Container;
use hull::network::{self, Network, NetworkSpec, Networks, Subnet, Subnet6};
use hull::state::Status;

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
    /// Join a running container to a network (ns; not a microVM).
    Connect(ConnectArgs),
    /// Take a running container off a network.
    Disconnect(DisconnectArgs),
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Another name the container answers to on the network.
    #[arg(long = "alias", value_name = "NAME")]
    pub alias: Vec<String>,
    /// The container's IPv6 address on a network made with --ipv6.
    #[arg(long)]
    pub ip6: Option<std::net::Ipv6Addr>,
    pub network: String,
    /// A container name, id or unique id prefix.
    pub container: String,
}

#[derive(Debug, Args)]
pub struct DisconnectArgs {
    pub network: String,
    /// A container name, id or unique id prefix.
    pub container: String,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The subnet, A.B.C.D/N (default: a free one from docker's pools); with
    /// --ipv6 once more for the IPv6 one, ADDR/N (default: a unique local /64).
    #[arg(long, value_parser = parse_subnet)]
    pub subnet: Vec<AnySubnet>,
    /// The bridge's address (default: the subnet's first); with --ipv6 once
    /// more for the IPv6 one.
    #[arg(long)]
    pub gateway: Vec<IpAddr>,
    /// No traffic in or out of the network, only between its containers.
    #[arg(long)]
    pub internal: bool,
    /// Dual stack: containers get an IPv6 address too.
    #[arg(long)]
    pub ipv6: bool,
    pub name: String,
}

/// An IPv4 or an IPv6 `--subnet`.
#[derive(Debug, Clone, Copy)]
pub enum AnySubnet {
    V4(Subnet),
    V6(Subnet6),
}

fn parse_subnet(s: &str) -> Result<AnySubnet, String> {
    if s.contains(':') {
        s.parse().map(AnySubnet::V6)
    } else {
        s.parse().map(AnySubnet::V4)
    }
}

impl CreateArgs {
    /// The library's spec: at most one subnet and one gateway per family.
    fn spec(self) -> anyhow::Result<NetworkSpec> {
        let mut spec = NetworkSpec {
            name: self.name,
            internal: self.internal,
            ipv6: self.ipv6,
            ..Default::default()
        };
        for s in self.subnet {
            let twice = match s {
                AnySubnet::V4(s) => spec.subnet.replace(s).is_some(),
                AnySubnet::V6(s) => spec.subnet6.replace(s).is_some(),
            };
            anyhow::ensure!(!twice, "one --subnet per address family");
        }
        for g in self.gateway {
            let twice = match g {
                IpAddr::V4(g) => spec.gateway.replace(g).is_some(),
                IpAddr::V6(g) => spec.gateway6.replace(g).is_some(),
            };
            anyhow::ensure!(!twice, "one --gateway per address family");
        }
        Ok(spec)
    }
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

/// The running container `key` names.
fn running(state_dir: &Path, key: &str) -> anyhow::Result<Container> {
    let c = Container::load(state_dir, key)?;
    anyhow::ensure!(
        c.state().status == Status::Running,
        "container {} is not running",
        c.state().name
    );
    Ok(c)
}

pub fn run(state_dir: &Path, cmd: NetworkCommand) -> anyhow::Result<i32> {
    // Connect and disconnect take the networks lock themselves.
    match cmd {
        NetworkCommand::Connect(a) => {
            let c = running(state_dir, &a.container)?;
            let s = c.state();
            network::connect(
                state_dir,
                &c.dir(),
                &s.id,
                &s.name,
                s.isolation,
                &network::Join {
                    network: a.network,
                    aliases: a.alias,
                    ip6: a.ip6,
                },
            )?;
            Ok(0)
        }
        NetworkCommand::Disconnect(a) => {
            let c = running(state_dir, &a.container)?;
            network::disconnect(state_dir, &c.dir(), &c.state().name, &a.network)?;
            Ok(0)
        }
        other => manage(state_dir, other),
    }
}

/// The commands on networks themselves, under the networks lock.
fn manage(state_dir: &Path, cmd: NetworkCommand) -> anyhow::Result<i32> {
    let nets = Networks::open(state_dir)?;
    match cmd {
        NetworkCommand::Connect(_) | NetworkCommand::Disconnect(_) => Ok(0),
        NetworkCommand::Create(a) => {
            let n = nets.create(&a.spec()?)?;
            println!("{}", n.id);
            Ok(0)
        }
        NetworkCommand::Ls(a) => {
            let all = nets.list()?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!(
                    "{:<14}{:<20}{:<20}{:<10}IPV6 SUBNET",
                    "NETWORK ID", "NAME", "SUBNET", "INTERNAL"
                );
                for n in &all {
                    println!(
                        "{:<14}{:<20}{:<20}{:<10}{}",
                        &n.id[..12],
                        n.name,
                        n.subnet.to_string(),
                        n.internal,
                        n.subnet6.map(|s| s.to_string()).unwrap_or_default()
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
