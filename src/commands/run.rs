//! `hull run`: a command in a container, in its own microVM (default) or in
//! namespaces on the host, with docker's flags and exit statuses.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use hull::client::{self, Outcome, Sinks, Times};
use hull::container::Session;
use hull::image::Source;
use hull::monitor::{self, Notifier, Role};
use hull::volume::{self, MountSource, MountSpec, MountSpecError, VolumeStore};
use hull::{Container, ContainerConfig, Isolation, network};
use hull_agent::protocol::{Start, User};
use hull_images::config::RunConfig;

use super::source;

/// What a process in a container gets: shared by `run` and `exec`.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// Keep stdin open and relay it to the container.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the process a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to take it from here).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines).
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// USER[:GROUP], names or numbers.
    #[arg(short, long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
}

impl ProcessArgs {
    /// The agent's Start message for `argv`.
    /// The agent's Start message for `argv`; the image's config gives the
    /// defaults (env first, so -e overrides it; workdir; user).
    pub fn start(
        &self,
        argv: Vec<String>,
        main: bool,
        hostname: Option<String>,
        image: Option<&RunConfig>,
    ) -> anyhow::Result<Start> {
        let image_user = image.map(|c| c.user.as_str()).filter(|u| !u.is_empty());
        let (user, group) = match self.user.as_deref().or(image_user) {
            Some(u) => match u.split_once(':') {
                Some((u, g)) => (u.to_string(), Some(g.to_string())),
                None => (u.to_string(), None),
            },
            None => ("0".to_string(), None),
        };
        let (rows, cols) = client::terminal_size().unwrap_or((24, 80));
        let mut env: Vec<String> = image.map(|c| c.env.clone()).unwrap_or_default();
        env.extend(env_entries(self)?);
        let image_cwd = image
            .map(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty());
        Ok(Start {
            main,
            argv,
            env,
            cwd: self
                .workdir
                .clone()
                .or(image_cwd)
                .unwrap_or_else(|| "/".into()),
            user: User { user, group },
            hostname,
            tty: self.tty,
            rows,
            cols,
            stdin: self.interactive,
            rlimits: Vec::new(),
            freshen: None,
            network: None,
            export_upper: false,
            root_disks: None,
            privileges: None,
        })
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Run in the background and print the container id.
    #[arg(short, long)]
    pub detach: bool,
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Container host name.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Container name.
    #[arg(long)]
    pub name: Option<String>,
    /// vCPUs (vm) or CPU quota (ns).
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory in MiB: guest RAM (vm) or cgroup limit (ns).
    #[arg(long, default_value = "256", value_parser = parse_memory)]
    pub memory: u64,
    /// Guest kernel (default: the one guest-kernel/build.sh built).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Isolation boundary.
    #[arg(long, value_enum, default_value = "vm")]
    pub isolation: Isolation,
    /// Boot the microVM's kernel (vm) instead of restoring the template
    /// (one booted, saved guest per kernel, agent, vCPUs and memory, made
    /// on first need); HULL_COLD_BOOT=1 makes it the default.
    #[arg(long)]
    pub cold_boot: bool,
    /// Guest RAM in 4 KiB pages only (vm): a few MiB less host memory per
    /// VM where transparent huge pages are `madvise`, slower guest memory.
    #[arg(long)]
    pub no_huge_pages: bool,
    /// User namespace (ns): `auto` gives the container host ids of its own
    /// where the host allows it, `private` insists on it, `host` shares the
    /// host's ids (root inside is root outside).
    #[arg(long, value_enum, default_value = "auto")]
    pub userns: hull::userns::Mode,
    #[command(flatten)]
    pub net: NetArgs,
    /// Sandboxes that may be starting at once on this host; more wait for a
    /// slot (0: no limit; default two per CPU).
    #[arg(long, env = "HULL_MAX_STARTING", value_name = "N")]
    pub max_starting: Option<u32>,
    /// MiB of guest RAM that running microVMs may commit on this host, in
    /// all; a run past it is refused (0: no limit; default twice MemTotal).
    #[arg(long, env = "HULL_MAX_GUEST_MEMORY", value_name = "MIB")]
    pub max_guest_memory: Option<u64>,
    /// Run a root filesystem directory instead of an image.
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Bind mount a host directory or mount a named volume:
    /// HOSTDIR:CTRPATH[:ro], NAME:CTRPATH[:ro], or CTRPATH (anonymous volume).
    #[arg(short, long = "volume", value_name = "SRC:DST[:ro]")]
    pub volume: Vec<String>,
    /// A mount, docker's syntax:
    /// type=bind|volume|tmpfs,src=..,dst=..[,readonly][,tmpfs-size=..].
    #[arg(long, value_name = "type=..,src=..,dst=..")]
    pub mount: Vec<String>,
    /// A tmpfs at PATH, of at most N bytes (k, m, g suffixes).
    #[arg(long, value_name = "PATH[:size=N]")]
    pub tmpfs: Vec<String>,
    /// A read-only root filesystem: only volumes and tmpfs mounts are writable.
    #[arg(long)]
    pub read_only: bool,
    /// Replace the image's ENTRYPOINT ("" clears it; the image's CMD is then
    /// not used either, as with docker).
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// IMAGE [CMD [ARG...]], or CMD [ARG...] with --rootfs.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "IMAGE|CMD"
    )]
    pub args: Vec<String>,
}

/// The container's network, as docker's flags say it.
#[derive(Debug, Args)]
pub struct NetArgs {
    /// `none` (only lo), `bridge` (the default network), a network's name,
    /// or `host` (ns only). Default: bridge, as docker's (or HULL_NETWORK).
    #[arg(
        long,
        env = "HULL_NETWORK",
        default_value = network::DEFAULT_NETWORK,
        value_name = "NETWORK"
    )]
    pub network: String,
    /// Another name the container answers to on its network.
    #[arg(long = "network-alias", value_name = "NAME")]
    pub network_alias: Vec<String>,
    /// The container's IPv4 address (inside its network's subnet).
    #[arg(long, value_name = "IP")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// The container's IPv6 address (a network made with --ipv6, inside
    /// its IPv6 subnet).
    #[arg(long, value_name = "IPV6")]
    pub ip6: Option<std::net::Ipv6Addr>,
    /// The container's MAC address.
    #[arg(long = "mac-address", value_name = "MAC")]
    pub mac_address: Option<String>,
    /// A DNS server for the container's /etc/resolv.conf.
    #[arg(long, value_name = "IP")]
    pub dns: Vec<std::net::Ipv4Addr>,
    /// NAME:IP, added to the container's /etc/hosts.
    #[arg(long = "add-host", value_name = "NAME:IP", value_parser = parse_add_host)]
    pub add_host: Vec<(String, std::net::Ipv4Addr)>,
    /// Publish a port: [HOSTIP:][HOSTPORT:]CTRPORT[/tcp|/udp], ranges too.
    #[arg(short = 'p', long = "publish", value_name = "PORT")]
    pub publish: Vec<String>,
    /// Publish every port the image EXPOSEs on a free host port.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
}

fn parse_add_host(s: &str) -> Result<(String, std::net::Ipv4Addr), String> {
    let bad = || format!("invalid --add-host {s:?}: want NAME:IP");
    let (name, ip) = s.split_once(':').ok_or_else(bad)?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok((name.to_string(), ip.parse().map_err(|_| bad())?))
}

impl NetArgs {
    /// The library's network request; `exposed` are the image's EXPOSE
    /// entries (`80/tcp`), published with -P.
    fn request(
        &self,
        name: &str,
        hostname: &str,
        exposed: &[String],
    ) -> anyhow::Result<network::Request> {
        let mode = network::Mode::parse(&self.network);
        let mut ports = Vec::new();
        for p in &self.publish {
            ports.extend(network::ports::parse(p).map_err(anyhow::Error::msg)?);
        }
        if self.publish_all {
            for e in exposed {
                ports.extend(network::ports::parse(e).map_err(anyhow::Error::msg)?);
            }
        }
        if !matches!(mode, network::Mode::Network(_))
            && (!ports.is_empty()
                || self.ip.is_some()
                || self.ip6.is_some()
                || !self.network_alias.is_empty())
        {
            anyhow::bail!(
                "-p, --ip, --ip6 and --network-alias need a network: --network bridge (the default) or a network's name"
            );
        }
        Ok(network::Request {
            mode,
            ip: self.ip,
            ip6: self.ip6,
            mac: self.mac_address.clone(),
            aliases: self.network_alias.clone(),
            dns: self.dns.clone(),
            extra_hosts: self.add_host.clone(),
            ports,
            hostname: hostname.to_string(),
            name: name.to_string(),
        })
    }
}

/// A flag hull does not know, given before the image: clap hands it over
/// as the first of IMAGE [CMD...] (they may start with '-' after the image),
/// and neither an image nor a command starts with '-'. Docker reports it
/// the same way.
fn unknown_flag(args: &[String]) -> Option<&str> {
    args.first()
        .map(String::as_str)
        .filter(|a| a.starts_with('-') && *a != "-")
}

/// `256`, `256m`, `1g`: MiB by default, as docker's suffixes otherwise.
fn parse_memory(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = match lower.chars().last() {
        Some('g') => (&lower[..lower.len() - 1], 1024.0),
        Some('m') => (&lower[..lower.len() - 1], 1.0),
        Some('k') => (&lower[..lower.len() - 1], 1.0 / 1024.0),
        _ => (lower.as_str(), 1.0),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid memory size {s:?}: use MiB, or a number with k, m or g"))?;
    let mib = (n * mult).round();
    if !(32.0..=1_048_576.0).contains(&mib) {
        return Err(format!("memory {s:?} out of range: 32 MiB to 1 TiB"));
    }
    Ok(mib as u64)
}

fn env_entries(args: &ProcessArgs) -> anyhow::Result<Vec<String>> {
    let mut env = Vec::new();
    for file in &args.env_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--env-file {}", file.display()))?;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            env.push(line.to_string());
        }
    }
    env.extend(args.env.iter().cloned());
    Ok(env
        .into_iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e)
            } else {
                std::env::var(&e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect())
}

pub fn run(state_dir: &Path, data_dir: &Path, args: RunArgs) -> anyhow::Result<i32> {
    if let Some(flag) = unknown_flag(&args.args) {
        anyhow::bail!("unknown flag: {flag} (see hull run --help)");
    }
    client::block_signals();
    hull::trace::mark("run");
    let t0 = Instant::now();
    let specs = mount_specs(&args)?;
    let src = source::source(data_dir, &args)?;
    hull::trace::mark("source");
    let store = VolumeStore::new(data_dir);
    let mounts = volume::resolve(&store, &specs, &src.layers)?;
    // docker's --rm takes the container's anonymous volumes with it.
    let anonymous: Vec<String> = specs
        .iter()
        .zip(&mounts)
        .filter(|(s, _)| matches!(s.source, MountSource::Volume { name: None, .. }))
        .filter_map(|(_, m)| match &m.source {
            MountSource::Volume { name, .. } => name.clone(),
            _ => None,
        })
        .collect();
    let mut container = Container::create(state_dir, &container_config(&args, &src, mounts))?;
    hull::trace::mark("created");
    let hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| container.short_id().to_string());
    let exposed = src
        .config
        .as_ref()
        .map(|c| c.exposed_ports.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default();
    let name = container.state().name.clone();
    if let Err(e) = args
        .net
        .request(&name, &hostname, &exposed)
        .and_then(|r| Ok(container.set_network(r)?))
    {
        let _ = container.delete(true);
        return Err(e);
    }
    let start = match args
        .process
        .start(src.argv, true, Some(hostname), src.config.as_ref())
    {
        Ok(s) => s,
        Err(e) => {
            let _ = container.delete(true);
            return Err(e);
        }
    };
    // -d: the rest runs in a background monitor; we report how it starts.
    let detached = if args.detach {
        match monitor::fork_monitor(container.id())? {
            Role::Caller(code) => return Ok(code),
            Role::Monitor(n) => Some(n),
        }
    } else {
        None
    };
    let warn = |w: &str| match &detached {
        Some(n) => n.warn(w),
        None => eprintln!("hull: {w}"),
    };
    let mut times = Times::default();
    hull::trace::mark("start");
    let t_prepare = Instant::now();
    let mut t_create = t_prepare;
    let result = container.start_with(&warn).and_then(|()| {
        t_create = Instant::now();
        let session = Session {
            sinks: sinks(detached.as_ref()),
            stdin: args.process.interactive && detached.is_none(),
            raw_terminal: args.process.tty && detached.is_none(),
            times: &mut times,
            warn: &warn,
        };
        container.attach(&start, session)
    });
    let t_end = Instant::now();
    hull::trace::mark("attach returned");
    let (status, reason) = match &result {
        Ok(o) => (o.status(), o.failure().map(str::to_string)),
        Err(e) => (hull::EXIT_HULL_ERROR, Some(hull::error::chain(e))),
    };
    if let Some(n) = &detached {
        // Only says something when the process never started.
        n.failed(status, reason.as_deref().unwrap_or("the container ended"));
    }
    container.finish(status, reason)?;
    hull::trace::mark("finished");
    if args.rm {
        container.delete(false)?;
        hull::trace::mark("deleted");
        if !anonymous.is_empty() {
            let in_use = volume::volumes_in_use(state_dir)?;
            for name in &anonymous {
                let _ = store.remove(name, &in_use);
            }
        }
    }
    let _: Outcome = result?;
    if let Ok(path) = std::env::var(hull::bench::hull_cli::TIMINGS_ENV) {
        write_timings(
            &path,
            t0,
            t_prepare,
            t_create,
            &times,
            t_end,
            args.isolation,
        );
    }
    Ok(status)
}

/// The container `args` ask for, running `src`.
fn container_config(args: &RunArgs, src: &Source, mounts: Vec<MountSpec>) -> ContainerConfig {
    ContainerConfig {
        name: args.name.clone(),
        image: src.image.clone(),
        command: src.argv.clone(),
        isolation: args.isolation,
        layers: src.layers.clone(),
        disks: src.disks.clone(),
        vcpus: args.cpus,
        memory_mib: args.memory,
        kernel: args.kernel.clone(),
        userns: args.userns,
        huge_pages: !args.no_huge_pages,
        mounts,
        read_only: args.read_only,
        rootfs: hull::sandbox::RootFs::Layers,
        network: None,
        upper: None,
        max_starting: args.max_starting,
        max_guest_memory_mib: args.max_guest_memory,
        cold_boot: args.cold_boot,
        inherit_netns: false,
    }
}

/// The mounts `-v`, `--mount` and `--tmpfs` ask for, checked as docker
/// checks them (a missing host directory: `-v` makes it, `--mount` refuses).
fn mount_specs(args: &RunArgs) -> Result<Vec<MountSpec>, MountSpecError> {
    let mut specs = Vec::new();
    for v in &args.volume {
        let spec = MountSpec::parse_volume(v)?;
        spec.check_source(true)?;
        specs.push(spec);
    }
    for m in &args.mount {
        let spec = MountSpec::parse_mount(m)?;
        spec.check_source(false)?;
        specs.push(spec);
    }
    for t in &args.tmpfs {
        specs.push(MountSpec::parse_tmpfs(t)?);
    }
    volume::spec::check_targets(&specs)?;
    Ok(specs)
}

/// Where the main process's output goes: our terminal, or (detached) only
/// the logs, telling the waiting caller when the process has started.
fn sinks(detached: Option<&Notifier>) -> Sinks {
    match detached {
        None => Sinks::terminal(),
        Some(n) => Sinks {
            on_started: Some(n.on_started()),
            ..Sinks::default()
        },
    }
}

/// Per-phase milliseconds for `hull bench` (see bench::Phase).
fn write_timings(
    path: &str,
    t0: Instant,
    prepare: Instant,
    create: Instant,
    t: &Times,
    end: Instant,
    iso: Isolation,
) {
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
    let hello = t.hello.unwrap_or(create);
    let started = t.started.unwrap_or(hello);
    let exit = t.exit.unwrap_or(end);
    let first = t.first_output.unwrap_or(exit).min(exit);
    let mut phases = std::collections::BTreeMap::new();
    phases.insert("prepare", ms(t0, prepare));
    phases.insert("create", ms(prepare, create));
    if iso == Isolation::Vm {
        phases.insert("boot", ms(create, hello));
        phases.insert("start", ms(hello, started));
    } else {
        phases.insert("start", ms(create, started));
    }
    phases.insert("first_output", ms(started, first));
    phases.insert("exit", ms(first, exit));
    phases.insert("teardown", ms(exit, end));
    let json = serde_json::json!({ "phases_ms": phases });
    let _ = std::fs::write(path, json.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("256").unwrap(), 256);
        assert_eq!(parse_memory("1g").unwrap(), 1024);
        assert_eq!(parse_memory("512M").unwrap(), 512);
        assert!(parse_memory("12").is_err());
        assert!(
            parse_memory("lots")
                .unwrap_err()
                .contains("invalid memory size")
        );
    }
}
