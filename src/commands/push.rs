//! `hull push REF` (to the registry REF names) and `hull save -o F REF`
//! (a `docker save` tarball, or with `--format oci` an OCI layout).

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use hull_images::push::BlobPush;
use hull_images::{Reference, Store};

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The image, named as it goes to the registry (HOST/NAME[:TAG]).
    pub image: String,
    /// No per-layer progress.
    #[arg(short, long)]
    pub quiet: bool,
    /// Blobs larger than this many bytes are uploaded in chunks of this
    /// size (PATCH requests, each resumed after a failure); 0 sends every
    /// blob in one request.
    #[arg(long, value_name = "BYTES", default_value_t = hull_images::push::DEFAULT_CHUNK_BYTES)]
    pub chunk_size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaveFormat {
    /// A tarball `docker load` reads.
    Docker,
    /// An OCI image layout directory.
    Oci,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Where to write it.
    #[arg(short, long, value_name = "PATH")]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value = "docker")]
    pub format: SaveFormat,
    /// The image (reference or id prefix).
    pub image: String,
}

pub fn push(data_dir: &Path, args: PushArgs) -> anyhow::Result<i32> {
    let store = Store::open(data_dir)?;
    let rec = store.find(&args.image)?;
    let dest = Reference::parse(&args.image)?;
    let quiet = args.quiet;
    let progress = |d: &hull_images::Digest, fate: BlobPush| {
        if quiet {
            return;
        }
        match fate {
            BlobPush::Exists => eprintln!("{}: already in the registry", d.short()),
            BlobPush::Mounted => eprintln!("{}: mounted from another repository", d.short()),
            BlobPush::Uploaded(n) => eprintln!("{}: pushed ({n} bytes)", d.short()),
            BlobPush::Chunked {
                bytes,
                chunks,
                resent,
            } => eprintln!(
                "{}: pushed ({bytes} bytes in {chunks} chunks{})",
                d.short(),
                if resent > 0 {
                    format!(", {resent} resumed after a failure")
                } else {
                    String::new()
                }
            ),
        }
    };
    let pushed = hull_images::push::push(&store, &rec, &dest, args.chunk_size, &progress)?;
    println!("{}", pushed.manifest);
    Ok(0)
}

pub fn save(data_dir: &Path, args: SaveArgs) -> anyhow::Result<i32> {
    let store = Store::open(data_dir)?;
    let rec = store.find(&args.image)?;
    match args.format {
        SaveFormat::Docker => hull_images::export::docker_archive(&store, &rec, &args.output)?,
        SaveFormat::Oci => hull_images::export::oci_layout(&store, &rec, &args.output)?,
    }
    Ok(0)
}
