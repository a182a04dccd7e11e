//! `hull`: run OCI container images in KVM microVMs, or in namespaces.
//! The command line only: each subcommand translates its arguments into
//! calls of the `hull` library.

mod commands;

use clap::{Parser, Subcommand};

/// Run OCI container images in KVM microVMs, or in namespaces, side by side.
#[derive(Debug, Parser)]
#[command(name = "hull", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    dirs: Dirs,
    #[command(subcommand)]
    command: Command,
}

/// The options every subcommand takes.
#[derive(Debug, clap::Args)]
struct Dirs {
    /// Per-container runtime state (sockets, logs, state.json).
    #[arg(long, global = true, env = "HULL_STATE_DIR", default_value = hull::state::DEFAULT_STATE_DIR, value_name = "DIR")]
    state_dir: std::path::PathBuf,
    /// Images: blobs, records, unpacked layers and layer disks.
    #[arg(long, global = true, env = "HULL_DATA_DIR", default_value = hull_images::store::DEFAULT_DATA_DIR, value_name = "DIR")]
    data_dir: std::path::PathBuf,
}

/// `hull run`'s command line alone, the same as in [`Cli`]: parsing it
/// builds none of the other subcommands' arguments (clap builds every
/// subcommand of a tree it parses: 170-420 ms of a run's start in the
/// emulated host, docs/snapshots.md).
#[derive(Debug, Parser)]
#[command(name = "hull", version, about, propagate_version = true)]
struct RunCli {
    #[command(flatten)]
    dirs: Dirs,
    #[command(subcommand)]
    command: RunOnly,
}

#[derive(Debug, Subcommand)]
enum RunOnly {
    /// Run a command in a new container.
    Run(Box<commands::run::RunArgs>),
}

impl From<RunCli> for Cli {
    fn from(c: RunCli) -> Cli {
        let RunOnly::Run(args) = c.command;
        Cli {
            dirs: c.dirs,
            command: Command::Run(args),
        }
    }
}

/// The command line, parsed with [`RunCli`] when it starts with `hull run`.
fn parse() -> Result<Cli, clap::Error> {
    if std::env::args_os().nth(1).is_some_and(|a| a == "run") {
        RunCli::try_parse().map(Cli::from)
    } else {
        Cli::try_parse()
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check this host: KVM, guest kernel, host tools.
    Doctor(commands::doctor::DoctorArgs),
    /// Measure the same image and command under several isolation backends.
    Bench(commands::bench::BenchArgs),
    /// Run a command in a new container.
    Run(Box<commands::run::RunArgs>),
    /// Build an image from a Dockerfile.
    Build(commands::build::BuildArgs),
    /// Push an image to a registry.
    Push(commands::push::PushArgs),
    /// Write an image as a docker save tarball or an OCI layout.
    Save(commands::push::SaveArgs),
    /// Give an image another name.
    Tag(commands::history::TagArgs),
    /// Pull an image from a registry.
    Pull(commands::images::PullArgs),
    /// Import an OCI image layout directory or a `docker save` tarball.
    Import(commands::images::ImportArgs),
    /// List images.
    Images(commands::images::ImagesArgs),
    /// Remove images (layers other images use stay).
    Rmi(commands::images::RmiArgs),
    /// Manage images.
    #[command(subcommand)]
    Image(commands::images::ImageCommand),
    /// Run a command in a running container.
    Exec(commands::exec::ExecArgs),
    /// List containers.
    Ps(commands::ps::PsArgs),
    /// Show a container's state as JSON.
    Inspect(commands::inspect::InspectArgs),
    /// Remove containers.
    Rm(commands::rm::RmArgs),
    /// Show a container's output.
    Logs(commands::logs::LogsArgs),
    /// Stop containers: SIGTERM, then a kill after a timeout.
    Stop(commands::stop::StopArgs),
    /// Send a signal to containers (default: SIGKILL).
    Kill(commands::stop::KillArgs),
    /// Manage named volumes.
    #[command(subcommand)]
    Volume(commands::volume::VolumeCommand),
    /// Manage networks.
    #[command(subcommand)]
    Network(commands::network::NetworkCommand),
    /// List a container's published ports.
    Port(commands::port::PortArgs),
}

fn main() {
    // The first mark: what passes before it is the exec and the dynamic
    // loader; between it and `run`, the command line's parsing.
    hull::trace::mark("main");
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    // Usage errors are hull's own errors: 125, as docker exits for them.
    let cli = parse().unwrap_or_else(|e| {
        let _ = e.print();
        std::process::exit(if e.use_stderr() {
            hull::EXIT_HULL_ERROR
        } else {
            0
        })
    });
    if matches!(
        cli.command,
        Command::Images(_)
            | Command::Image(_)
            | Command::Ps(_)
            | Command::Inspect(_)
            | Command::Logs(_)
            | Command::Port(_)
    ) {
        hull::sys::default_sigpipe();
    }
    let result = match cli.command {
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Bench(args) => commands::bench::run(&cli.dirs.data_dir, args),
        Command::Run(args) => commands::run::run(&cli.dirs.state_dir, &cli.dirs.data_dir, *args),
        Command::Build(args) => commands::build::run(&cli.dirs.state_dir, &cli.dirs.data_dir, args),
        Command::Push(args) => commands::push::push(&cli.dirs.data_dir, args),
        Command::Save(args) => commands::push::save(&cli.dirs.data_dir, args),
        Command::Tag(args) => commands::history::tag(&cli.dirs.data_dir, args),
        Command::Pull(args) => commands::images::pull(&cli.dirs.data_dir, args),
        Command::Import(args) => commands::images::import(&cli.dirs.data_dir, args),
        Command::Images(args) => commands::images::images(&cli.dirs.data_dir, args),
        Command::Rmi(args) => commands::images::rmi(&cli.dirs.data_dir, args),
        Command::Image(cmd) => commands::images::run_image(&cli.dirs.data_dir, cmd),
        Command::Exec(args) => commands::exec::run(&cli.dirs.state_dir, args),
        Command::Ps(args) => commands::ps::run(&cli.dirs.state_dir, args),
        Command::Inspect(args) => commands::inspect::run(&cli.dirs.state_dir, args),
        Command::Rm(args) => commands::rm::run(&cli.dirs.state_dir, args),
        Command::Logs(args) => commands::logs::run(&cli.dirs.state_dir, args),
        Command::Stop(args) => commands::stop::run_stop(&cli.dirs.state_dir, args),
        Command::Kill(args) => commands::stop::run_kill(&cli.dirs.state_dir, args),
        Command::Volume(cmd) => commands::volume::run(&cli.dirs.state_dir, &cli.dirs.data_dir, cmd),
        Command::Network(cmd) => commands::network::run(&cli.dirs.state_dir, cmd),
        Command::Port(args) => commands::port::run(&cli.dirs.state_dir, args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("hull: {e:#}");
            std::process::exit(hull::EXIT_HULL_ERROR);
        }
    }
}
