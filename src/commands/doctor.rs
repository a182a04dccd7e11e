//! `hull doctor`: what a user needs to know before a run.

use clap::Args;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: DoctorArgs) -> anyhow::Result<i32> {
    anyhow::bail!("doctor: not implemented yet")
}
