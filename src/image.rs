//! What a container runs: its layers and command, from an image in the
//! store (pulled when it is not there, as docker does) or from a root
//! filesystem directory.

use std::path::{Path, PathBuf};

use hull_images::Reference;
use hull_images::config::{ImageConfig, RunConfig};
use hull_images::layers::LayerError;
use hull_images::reference::ReferenceError;
use hull_images::registry::PullError;
use hull_images::store::{ImageRecord, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("no such image {name} here, and pulling it failed")]
    Pull { name: String, source: PullError },
    #[error("image config {digest}")]
    Config {
        digest: String,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error("no command given, and the image {0} has no Cmd or Entrypoint")]
    NoCommand(String),
    #[error("root filesystem {path}")]
    Rootfs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("root filesystem {0}: not a directory")]
    NotADirectory(PathBuf),
}

/// What a container runs: its layers and command.
#[derive(Debug, Clone)]
pub struct Source {
    /// What `ps` shows as the image.
    pub image: String,
    /// Layer directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// The same layers as disks (vm), when the store made them.
    pub disks: Vec<PathBuf>,
    pub argv: Vec<String>,
    /// The image's run configuration (env, workdir, user), for an image.
    pub config: Option<RunConfig>,
}

/// A root filesystem directory running `argv`.
pub fn from_rootfs(dir: &Path, argv: Vec<String>) -> Result<Source, ImageError> {
    let rootfs = dir.canonicalize().map_err(|source| ImageError::Rootfs {
        path: dir.to_path_buf(),
        source,
    })?;
    if !rootfs.is_dir() {
        return Err(ImageError::NotADirectory(rootfs));
    }
    Ok(Source {
        image: rootfs.display().to_string(),
        layers: vec![rootfs],
        disks: Vec::new(),
        argv,
        config: None,
    })
}

/// How an image that is not in the store is fetched.
pub struct Pull<'a> {
    /// Called before a pull starts (to say so).
    pub before: &'a dyn Fn(&Reference),
    /// Show the registry client's progress on stderr.
    pub progress: bool,
}

/// The image `name` (pulled if it is not here) with its layers ready:
/// unpacked, and as disks too when `disks` is set. `args` replace the
/// image's Cmd; `entrypoint` its Entrypoint ("" clears it and the Cmd).
pub fn from_store(
    store: &Store,
    name: &str,
    args: &[String],
    entrypoint: Option<&str>,
    disks: bool,
    pull: &Pull<'_>,
) -> Result<Source, ImageError> {
    let rec = match store.find(name) {
        Ok(r) => r,
        Err(StoreError::NoSuchImage(_)) => {
            let r = Reference::parse(name)?;
            (pull.before)(&r);
            hull_images::registry::pull(store, &r, pull.progress).map_err(|source| {
                ImageError::Pull {
                    name: name.to_string(),
                    source,
                }
            })?
        }
        Err(e) => return Err(e.into()),
    };
    let config = image_config(store, &rec)?;
    let argv = match entrypoint {
        None => config.command(args),
        Some(e) => std::iter::once(e.to_string())
            .filter(|e| !e.is_empty())
            .chain(args.iter().cloned())
            .collect(),
    };
    if argv.is_empty() {
        return Err(ImageError::NoCommand(name.to_string()));
    }
    let mut layers = Vec::new();
    let mut layer_disks = Vec::new();
    for l in &rec.layers {
        let p = hull_images::layers::prepare(store, l, disks)?;
        layers.push(p.root);
        layer_disks.extend(p.disk);
    }
    Ok(Source {
        image: Reference::parse(&rec.reference)
            .map_or_else(|_| rec.reference.clone(), |r| r.familiar()),
        layers,
        disks: layer_disks,
        argv,
        config: Some(config.config),
    })
}

/// The image configuration of `rec`.
pub fn image_config(store: &Store, rec: &ImageRecord) -> Result<ImageConfig, ImageError> {
    let data = store.read_blob(&rec.config)?;
    serde_json::from_slice(&data).map_err(|source| ImageError::Config {
        digest: rec.config.to_string(),
        source,
    })
}
