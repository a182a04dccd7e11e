//! `hull`: run OCI container images in KVM microVMs, or in namespaces.

mod bench;
mod bundle;
// The namespace backend (issue 6) is the user; until it lands only tests use it.
#[allow(dead_code)]
mod cgroups;
mod commands;
mod paths;
// `hull run` (the writer of container state) is still to come.
#[allow(dead_code)]
mod state;

use clap::{Parser, Subcommand};

/// Run OCI container images in KVM microVMs, or in namespaces, side by side.
#[derive(Debug, Parser)]
#[command(name = "hull", version, about, propagate_version = true)]
struct Cli {
    /// Per-container runtime state (sockets, logs, state.json).
    #[arg(long, global = true, env = "HULL_STATE_DIR", default_value = state::DEFAULT_STATE_DIR, value_name = "DIR")]
    state_dir: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check this host: KVM, guest kernel, host tools.
    Doctor(commands::doctor::DoctorArgs),
    /// Measure the same image and command under several isolation backends.
    Bench(commands::bench::BenchArgs),
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
}

/// Exit status for hull's own errors, as docker uses.
pub const EXIT_HULL_ERROR: i32 = 125;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Ps(args) => commands::ps::run(&cli.state_dir, args),
        Command::Inspect(args) => commands::inspect::run(&cli.state_dir, args),
        Command::Rm(args) => commands::rm::run(&cli.state_dir, args),
        Command::Logs(args) => commands::logs::run(&cli.state_dir, args),
        Command::Stop(args) => commands::stop::run_stop(&cli.state_dir, args),
        Command::Kill(args) => commands::stop::run_kill(&cli.state_dir, args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("hull: {e:#}");
            std::process::exit(EXIT_HULL_ERROR);
        }
    }
}
