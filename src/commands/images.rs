//! Image commands: `import`, `images`, `rmi`, `image inspect|ls|rm|prune`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use hull_images::{ImageRecord, Reference, Store};

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// An OCI image layout directory, or a `docker save` tarball.
    pub path: PathBuf,
    /// Name the image (NAME[:TAG]); required when the input names none.
    #[arg(short, long)]
    pub tag: Option<String>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// NAME[:TAG|@DIGEST], as docker understands it (busybox is
    /// docker.io/library/busybox:latest).
    pub reference: String,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
    /// Only image ids.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Images: references or unique id prefixes.
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Images: references or unique id prefixes.
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Manifest, config, layers, sizes and digests, as JSON.
    Inspect(InspectArgs),
    /// The steps that made an image, newest first.
    History(super::history::HistoryArgs),
    /// List images.
    Ls(ImagesArgs),
    /// Remove images.
    Rm(RmiArgs),
    /// Remove blobs and layer disks no image uses.
    Prune,
    /// Import an OCI layout directory or a docker save tarball.
    Import(ImportArgs),
    /// Pull an image from a registry.
    Pull(PullArgs),
    /// Unpack every layer of images now and build their disks (otherwise
    /// done by their first run), printing how long it took.
    Unpack(UnpackArgs),
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// Images (reference or id prefix).
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Only unpack (what `--isolation ns` uses); no erofs disks.
    #[arg(long)]
    pub no_disks: bool,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn open_store(data_dir: &Path) -> anyhow::Result<Store> {
    Store::open(data_dir).with_context(|| {
        format!(
            "opening the image store at {} (set --data-dir or HULL_DATA_DIR)",
            data_dir.display()
        )
    })
}

pub fn run_image(data_dir: &Path, cmd: ImageCommand) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Inspect(a) => inspect(data_dir, a),
        ImageCommand::History(a) => super::history::history(data_dir, a),
        ImageCommand::Ls(a) => images(data_dir, a),
        ImageCommand::Rm(a) => rmi(data_dir, a),
        ImageCommand::Prune => prune(data_dir),
        ImageCommand::Import(a) => import(data_dir, a),
        ImageCommand::Pull(a) => pull(data_dir, a),
        ImageCommand::Unpack(a) => unpack(data_dir, a),
    }
}

fn unpack(data_dir: &Path, args: UnpackArgs) -> anyhow::Result<i32> {
    let store = open_store(data_dir)?;
    let mut out = Vec::new();
    for key in &args.images {
        let rec = store.find(key)?;
        let t = std::time::Instant::now();
        for l in &rec.layers {
            hull_images::layers::prepare(&store, l, !args.no_disks)
                .with_context(|| format!("layer {} of {key}", l.diff_id))?;
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if !args.json {
            println!("{key}: {} layers ready in {ms:.1} ms", rec.layers.len());
        }
        out.push(serde_json::json!({
            "image": key,
            "layers": rec.layers.len(),
            "disks": !args.no_disks,
            "ms": ms,
        }));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(0)
}

pub fn pull(data_dir: &Path, args: PullArgs) -> anyhow::Result<i32> {
    let store = open_store(data_dir)?;
    let r = Reference::parse(&args.reference)?;
    let progress = !args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let rec = pull_into(&store, &r, progress)?;
    if !args.quiet {
        println!("Digest: {}", rec.manifest);
        println!("Status: Downloaded image for {}", r.familiar());
    }
    println!("{r}");
    Ok(0)
}

/// Pulls `r` into `store`, saying what it does on stderr.
pub fn pull_into(store: &Store, r: &Reference, progress: bool) -> anyhow::Result<ImageRecord> {
    if progress {
        eprintln!("Pulling {}", r.familiar());
    }
    Ok(hull_images::registry::pull(store, r, progress)?)
}

pub fn import(data_dir: &Path, args: ImportArgs) -> anyhow::Result<i32> {
    let store = open_store(data_dir)?;
    let recs = hull_images::import::import(&store, &args.path, args.tag.as_deref())?;
    for r in recs {
        println!(
            "Loaded image: {} ({})",
            familiar(&r.reference),
            r.config.short()
        );
    }
    Ok(0)
}

fn familiar(reference: &str) -> String {
    Reference::parse(reference).map_or_else(|_| reference.to_string(), |r| r.familiar())
}

/// 1.5MB, 12kB, as docker prints sizes (powers of 1000).
pub fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + units[u]
    }
}

pub fn images(data_dir: &Path, args: ImagesArgs) -> anyhow::Result<i32> {
    let store = open_store(data_dir)?;
    let list = store.images()?;
    if args.json {
        let v: Vec<serde_json::Value> = list
            .iter()
            .map(|i| {
                serde_json::json!({
                    "reference": i.reference,
                    "id": i.config.to_string(),
                    "manifest": i.manifest.to_string(),
                    "size": i.size(),
                    "layers": i.layers.len(),
                    "added": i.added,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    if args.quiet {
        let mut seen = std::collections::BTreeSet::new();
        for i in &list {
            if seen.insert(i.config.short().to_string()) {
                println!("{}", i.config.short());
            }
        }
        return Ok(0);
    }
    let rows: Vec<[String; 5]> = list
        .iter()
        .map(|i| {
            let (repo, tag) = match Reference::parse(&i.reference) {
                Ok(r) => {
                    let f = r.familiar();
                    match (f.rsplit_once(':'), &r.tag) {
                        (Some((repo, t)), Some(_)) => (repo.to_string(), t.to_string()),
                        _ => (f, "<none>".to_string()),
                    }
                }
                Err(_) => (i.reference.clone(), "<none>".into()),
            };
            [
                repo,
                tag,
                i.config.short().to_string(),
                i.layers.len().to_string(),
                human_size(i.size()),
            ]
        })
        .collect();
    let header = ["REPOSITORY", "TAG", "IMAGE ID", "LAYERS", "SIZE"];
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (c, cell) in cells.iter().enumerate() {
            if c == 4 {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   ", w = widths[c]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    Ok(0)
}

pub fn rmi(data_dir: &Path, args: RmiArgs) -> anyhow::Result<i32> {
    let store = open_store(data_dir)?;
    let mut status = 0;
    for key in &args.images {
        match store.remove_image(key) {
            Ok(removed) => {
                for r in removed {
                    println!("Untagged: {}", familiar(&r));
                }
            }
            Err(e) => {
                eprintln!("hull: {:#}", anyhow::Error::from(e));
                status = 1;
            }
        }
    }
    // Blobs and layer disks that no image uses any more go at once.
    let freed = store.prune()?;
    if freed > 0 {
        println!("Freed: {}", human_size(freed));
    }
    Ok(status)
}

fn prune(data_dir: &Path) -> anyhow::Result<i32> {
    let store = open_store(data_dir)?;
    let freed = store.prune()?;
    println!("Total reclaimed space: {}", human_size(freed));
    Ok(0)
}

/// The image's config document.
fn inspect(data_dir: &Path, args: InspectArgs) -> anyhow::Result<i32> {
    let store = open_store(data_dir)?;
    let mut out = Vec::new();
    for key in &args.images {
        let rec = store.find(key)?;
        let manifest: serde_json::Value = serde_json::from_slice(&store.read_blob(&rec.manifest)?)?;
        let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&rec.config)?)?;
        out.push(serde_json::json!({
            "reference": rec.reference,
            "id": rec.config.to_string(),
            "manifest_digest": rec.manifest.to_string(),
            "size": rec.size(),
            "layers": rec.layers,
            "manifest": manifest,
            "config": config,
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_as_docker_prints_them() {
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(1_500_000), "1.5MB");
        assert_eq!(human_size(4_261_000), "4.261MB");
        assert_eq!(human_size(2_000_000_000), "2GB");
    }
}
