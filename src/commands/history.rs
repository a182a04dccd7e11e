//! `hull image history REF` (the steps that made an image, newest first,
//! as `docker history` shows them) and `hull tag SRC DST`.

use std::path::Path;

use clap::Args;
use hull_images::{ImageRecord, Reference, Store};

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The image (reference or id prefix).
    pub image: String,
    /// Do not truncate CREATED BY.
    #[arg(long)]
    pub no_trunc: bool,
    /// Print the history as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    /// The image (reference or id prefix).
    pub source: String,
    /// The new name (NAME[:TAG]).
    pub target: String,
}

/// One row of `history`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub created: String,
    pub created_by: String,
    pub size: u64,
    pub empty_layer: bool,
    pub comment: String,
}

/// The image's history, oldest first, each non-empty step with its layer's size.
pub fn rows(store: &Store, rec: &ImageRecord) -> anyhow::Result<Vec<Row>> {
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&rec.config)?)?;
    let mut layers = rec.layers.iter();
    let mut out = Vec::new();
    for h in config["history"].as_array().cloned().unwrap_or_default() {
        let empty = h["empty_layer"].as_bool().unwrap_or(false);
        let size = if empty {
            0
        } else {
            layers.next().map_or(0, |l| l.size)
        };
        let s = |k: &str| h[k].as_str().unwrap_or_default().to_string();
        out.push(Row {
            created: s("created"),
            created_by: s("created_by"),
            size,
            empty_layer: empty,
            comment: s("comment"),
        });
    }
    Ok(out)
}

fn human(n: u64) -> String {
    match n {
        0 => "0B".into(),
        n if n < 1000 => format!("{n}B"),
        n if n < 1_000_000 => format!("{:.1}kB", n as f64 / 1e3),
        n if n < 1_000_000_000 => format!("{:.1}MB", n as f64 / 1e6),
        n => format!("{:.2}GB", n as f64 / 1e9),
    }
}

pub fn history(data_dir: &Path, args: HistoryArgs) -> anyhow::Result<i32> {
    let store = Store::open(data_dir)?;
    let rec = store.find(&args.image)?;
    let mut rows = rows(&store, &rec)?;
    rows.reverse();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<14}{:<22}{:<47}{:<10}COMMENT",
        "IMAGE", "CREATED", "CREATED BY", "SIZE"
    );
    for (i, r) in rows.iter().enumerate() {
        let image = if i == 0 {
            rec.config.short().to_string()
        } else {
            "<missing>".to_string()
        };
        let by = if args.no_trunc || r.created_by.chars().count() <= 44 {
            r.created_by.clone()
        } else {
            format!("{}...", r.created_by.chars().take(44).collect::<String>())
        };
        println!(
            "{image:<14}{:<22}{by:<47}{:<10}{}",
            r.created,
            human(r.size),
            r.comment
        );
    }
    Ok(0)
}

pub fn tag(data_dir: &Path, args: TagArgs) -> anyhow::Result<i32> {
    let store = Store::open(data_dir)?;
    let rec = store.find(&args.source)?;
    let target = Reference::parse(&args.target)?;
    store.add_image(ImageRecord {
        reference: target.to_string(),
        added: hull_images::store::now(),
        ..rec
    })?;
    Ok(0)
}
