//! `hull`: run OCI container images in KVM microVMs, or in namespaces.

mod cgroups;
mod commands;
mod paths;

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
}

/// Exit status for hull's own errors, as docker uses.
pub const EXIT_HULL_ERROR: i32 = 125;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Doctor(args) => commands::doctor::run(args),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("hull: {e:#}");
            std::process::exit(EXIT_HULL_ERROR);
        }
    }
}
