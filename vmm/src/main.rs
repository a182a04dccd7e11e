//! `hull-vmm`: runs one microVM.

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    anyhow::bail!("hull-vmm: not implemented yet")
}
