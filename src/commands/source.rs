//! What a container runs: its layers and command, from an image in the
//! store (pulled when it is not there) or a root filesystem directory.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hull::Isolation;
use hull_images::config::RunConfig;

use super::run::RunArgs;

/// What the container runs: its layers and command, from an image or a
/// root filesystem directory.
pub struct Source {
    /// What `ps` shows as the image.
    pub image: String,
    /// Layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// The same layers as disks (vm), when the store made them.
    pub disks: Vec<PathBuf>,
    pub argv: Vec<String>,
    pub config: Option<RunConfig>,
}

pub fn source(data_dir: &Path, args: &RunArgs) -> anyhow::Result<Source> {
    if let Some(dir) = &args.rootfs {
        if args.args.is_empty() {
            bail!("no command given: hull run --rootfs DIR CMD [ARG...]");
        }
        let rootfs = dir
            .canonicalize()
            .with_context(|| format!("--rootfs {}", dir.display()))?;
        if !rootfs.is_dir() {
            bail!("--rootfs {}: not a directory", rootfs.display());
        }
        return Ok(Source {
            image: rootfs.display().to_string(),
            layers: vec![rootfs],
            disks: Vec::new(),
            argv: args.args.clone(),
            config: None,
        });
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

/// The image `name` (pulled if it is not here, as docker does) with its
/// layers ready: unpacked, and as disks too when `disks` is set. `args`
/// replace the image's Cmd.
pub fn image_source(
    data_dir: &Path,
    name: &str,
    args: &[String],
    entrypoint: Option<&str>,
    disks: bool,
) -> anyhow::Result<Source> {
    let store = super::images::open_store(data_dir)?;
    let rec = match store.find(name) {
        Ok(r) => r,
        // As docker does: not here, so pull it.
        Err(hull_images::store::StoreError::NoSuchImage(_)) => {
            let r = hull_images::Reference::parse(name)?;
            eprintln!("Unable to find image '{}' locally", r.familiar());
            super::images::pull_into(&store, &r, std::io::stderr().is_terminal())
                .with_context(|| format!("no such image {name} here, and pulling it failed"))?
        }
        Err(e) => return Err(e.into()),
    };
    let config = super::images::image_config(&store, &rec)?;
    let argv = match entrypoint {
        None => config.command(args),
        Some(e) => std::iter::once(e.to_string())
            .filter(|e| !e.is_empty())
            .chain(args.iter().cloned())
            .collect(),
    };
    if argv.is_empty() {
        bail!("no command given, and the image {name} has no Cmd or Entrypoint");
    }
    let mut layers = Vec::new();
    let mut layer_disks = Vec::new();
    for l in &rec.layers {
        let p = hull_images::layers::prepare(&store, l, disks)?;
        layers.push(p.root);
        layer_disks.extend(p.disk);
    }
    Ok(Source {
        image: hull_images::Reference::parse(&rec.reference)
            .map_or_else(|_| rec.reference.clone(), |r| r.familiar()),
        layers,
        disks: layer_disks,
        argv,
        config: Some(config.config),
    })
}
