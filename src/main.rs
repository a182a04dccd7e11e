//! `hull`: run OCI container images in KVM microVMs, or in namespaces.

// The namespace backend (issue 6) is the user; until it lands only tests use it.
mod bench;
mod bundle;
#[allow(dead_code)]
mod cgroups;
mod commands;
mod paths;
// The container lifecycle commands (issue 6) are the users; until then only tests.
#[allow(dead_code)]
mod state;

use clap::{Parser, Subcommand};

/// Run OCI container images in KVM microVMs, or in namespaces, side by side.
#[derive(Debug, Parser)]
#[command(name = "hull", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check this host: KVM, guest kernel, host tools.
    Doctor(commands::doctor::DoctorArgs),
    /// Measure the same image and command under several isolation backends.
    Bench(commands::bench::BenchArgs),
}

/// Exit status for hull's own errors, as docker uses.
pub const EXIT_HULL_ERROR: i32 = 125;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor(args) => commands::doctor::run(args),
        Command::Bench(args) => commands::bench::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("hull: {e:#}");
            std::process::exit(EXIT_HULL_ERROR);
        }
    }
}
