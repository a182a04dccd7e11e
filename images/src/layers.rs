//! Layers as the sandboxes use them, cached by diff_id and shared by every
//! image that has the layer: unpacked (`layers/<hex>/root`, stacked by the
//! namespace backend) and as a read-only erofs disk (`layers/<hex>/layer.erofs`,
//! one virtio-blk disk per layer in the microVM).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::digest::{Digest, HashingReader};
use crate::store::{LayerRecord, Store, StoreError, remove_tree};
use crate::unpack::{self, UnpackError};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("layer {digest}")]
    Unpack { digest: Digest, source: UnpackError },
    #[error(
        "layer {digest}: uncompressed content has digest {actual}, the image config says {expected}"
    )]
    DiffId {
        digest: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {digest}: {what}")]
    Io {
        digest: Digest,
        what: String,
        source: io::Error,
    },
    #[error("layer {digest}: mkfs.erofs: {why}")]
    Mkfs { digest: Digest, why: String },
}

/// A layer ready for a sandbox.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub root: PathBuf,
    pub disk: Option<PathBuf>,
}

fn layer_dir(store: &Store, l: &LayerRecord) -> PathBuf {
    store.root().join("layers").join(l.diff_id.hex())
}

/// Unpacks `l` (once; later calls reuse it) and, with `disk`, makes its
/// erofs image (once).
pub fn prepare(store: &Store, l: &LayerRecord, disk: bool) -> Result<Prepared, LayerError> {
    let dir = layer_dir(store, l);
    let root = dir.join("root");
    if !root.is_dir() {
        unpack_layer(store, l, &dir)?;
    }
    let disk = if disk {
        let img = dir.join("layer.erofs");
        if !img.is_file() {
            make_disk(store, l, &root, &img)?;
        }
        Some(img)
    } else {
        None
    };
    Ok(Prepared { root, disk })
}

fn unpack_layer(store: &Store, l: &LayerRecord, dir: &Path) -> Result<(), LayerError> {
    let ioe = |what: &str| {
        let (digest, what) = (l.digest.clone(), what.to_string());
        move |source| LayerError::Io {
            digest,
            what,
            source,
        }
    };
    let blob = store.blob_path(&l.digest);
    let f = fs::File::open(&blob).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            LayerError::Store(StoreError::MissingBlob(l.digest.clone()))
        } else {
            ioe("opening the blob")(e)
        }
    })?;
    let tmp = store.temp_path("unpack");
    let tmp_root = tmp.join("root");
    fs::create_dir_all(&tmp_root).map_err(ioe("creating a temp dir"))?;
    let result = (|| {
        let mut hr = HashingReader::new(unpack::decompress(f).map_err(ioe("reading"))?);
        unpack::unpack(&mut hr, &tmp_root).map_err(|source| LayerError::Unpack {
            digest: l.digest.clone(),
            source,
        })?;
        // The tar's end-of-archive padding belongs to the diff_id too.
        io::copy(&mut hr.by_ref(), &mut io::sink()).map_err(ioe("reading"))?;
        let (actual, _) = hr.finish();
        if actual != l.diff_id {
            return Err(LayerError::DiffId {
                digest: l.digest.clone(),
                expected: l.diff_id.clone(),
                actual,
            });
        }
        match fs::rename(&tmp, dir) {
            Ok(()) => Ok(()),
            // Another hull unpacked it meanwhile: theirs is as good.
            Err(_) if dir.join("root").is_dir() => Ok(()),
            Err(e) => Err(ioe("storing the unpacked layer")(e)),
        }
    })();
    let _ = remove_tree(&tmp);
    result
}

fn make_disk(store: &Store, l: &LayerRecord, root: &Path, img: &Path) -> Result<(), LayerError> {
    let tmp = store.temp_path("erofs");
    let out = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&tmp)
        .arg(root)
        .output()
        .map_err(|e| LayerError::Mkfs {
            digest: l.digest.clone(),
            why: format!("{e} (install Debian's erofs-utils)"),
        })?;
    if !out.status.success() {
        let _ = fs::remove_file(&tmp);
        return Err(LayerError::Mkfs {
            digest: l.digest.clone(),
            why: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    fs::rename(&tmp, img).map_err(|source| LayerError::Io {
        digest: l.digest.clone(),
        what: "storing the disk".into(),
        source,
    })
}
