//! What `hull run` and `hull bench` run: `--rootfs DIR CMD...` or
//! `IMAGE [CMD...]`, translated into the library's image calls.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::bail;
use hull::Isolation;
use hull::image::{self, Pull, Source};

use super::run::RunArgs;

pub fn source(data_dir: &Path, args: &RunArgs) -> anyhow::Result<Source> {
    if let Some(dir) = &args.rootfs {
        if args.args.is_empty() {
            bail!("no command given: hull run --rootfs DIR CMD [ARG...]");
        }
        return Ok(image::from_rootfs(dir, args.args.clone())?);
    }
    let Some(name) = args.args.first() else {
        bail!("no image given: hull run [OPTIONS] IMAGE [CMD [ARG...]] (or --rootfs DIR CMD)");
    };
    image_source(
        data_dir,
        name,
        &args.args[1..],
        args.entrypoint.as_deref(),
        args.isolation == Isolation::Vm,
    )
}

/// The image `name` (pulled if it is not here, saying so as docker does)
/// with its layers ready, as disks too when `disks` is set.
pub fn image_source(
    data_dir: &Path,
    name: &str,
    args: &[String],
    entrypoint: Option<&str>,
    disks: bool,
) -> anyhow::Result<Source> {
    let store = super::images::open_store(data_dir)?;
    let progress = std::io::stderr().is_terminal();
    let before = |r: &hull_images::Reference| {
        eprintln!("Unable to find image '{}' locally", r.familiar());
        if progress {
            eprintln!("Pulling {}", r.familiar());
        }
    };
    let pull = Pull {
        before: &before,
        progress,
    };
    Ok(image::from_store(
        &store, name, args, entrypoint, disks, &pull,
    )?)
}
