//! `hull save`: an image out of the store, as a `docker save` tarball
//! (manifest.json, the config, one uncompressed layer.tar per layer) or as
//! an OCI image layout directory (oci-layout, index.json, blobs/).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::config::OCI_INDEX;
use crate::reference::Reference;
use crate::store::{ImageRecord, Store, StoreError};
use crate::unpack;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_at(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExportError {
    let path = path.to_path_buf();
    move |source| ExportError::Io { what, path, source }
}

fn append(
    tar: &mut tar::Builder<impl Write>,
    name: &str,
    size: u64,
    data: impl io::Read,
    out: &Path,
) -> Result<(), ExportError> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    tar.append_data(&mut h, name, data)
        .map_err(io_at("writing", out))
}

/// Writes `rec` to `out` as `docker save` does; `name` goes in RepoTags.
pub fn docker_archive(store: &Store, rec: &ImageRecord, out: &Path) -> Result<(), ExportError> {
    let tmp = out.with_extension("partial");
    let f = File::create(&tmp).map_err(io_at("creating", &tmp))?;
    let result = (|| {
        let mut tar = tar::Builder::new(io::BufWriter::new(f));
        let config = store.read_blob(&rec.config)?;
        let config_name = format!("{}.json", rec.config.hex());
        append(
            &mut tar,
            &config_name,
            config.len() as u64,
            &config[..],
            out,
        )?;
        let mut layers = Vec::new();
        for l in &rec.layers {
            // Uncompressed, as docker save writes them: the diff_id's bytes.
            let blob = store.blob_path(&l.digest);
            let size = {
                let f = File::open(&blob).map_err(io_at("opening", &blob))?;
                io::copy(
                    &mut unpack::decompress(f).map_err(io_at("reading", &blob))?,
                    &mut io::sink(),
                )
                .map_err(io_at("reading", &blob))?
            };
            let f = File::open(&blob).map_err(io_at("opening", &blob))?;
            let r = unpack::decompress(f).map_err(io_at("reading", &blob))?;
            let name = format!("{}/layer.tar", l.diff_id.hex());
            append(&mut tar, &name, size, r, out)?;
            layers.push(name);
        }
        let tag = Reference::parse(&rec.reference)
            .map_or_else(|_| rec.reference.clone(), |r| r.familiar());
        let manifest = json!([{
            "Config": config_name,
            "RepoTags": [tag],
            "Layers": layers,
        }]);
        let data = serde_json::to_vec(&manifest).unwrap_or_default();
        append(&mut tar, "manifest.json", data.len() as u64, &data[..], out)?;
        let mut w = tar.into_inner().map_err(io_at("writing", out))?;
        w.flush().map_err(io_at("writing", out))?;
        fs::rename(&tmp, out).map_err(io_at("writing", out))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `rec` as an OCI image layout in the directory `out` (created).
pub fn oci_layout(store: &Store, rec: &ImageRecord, out: &Path) -> Result<(), ExportError> {
    let blobs = out.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io_at("creating", &blobs))?;
    let copy = |d: &crate::Digest| -> Result<u64, ExportError> {
        let dest = blobs.join(d.hex());
        fs::copy(store.blob_path(d), &dest).map_err(io_at("writing", &dest))
    };
    for l in &rec.layers {
        copy(&l.digest)?;
    }
    copy(&rec.config)?;
    let size = copy(&rec.manifest)?;
    let manifest = store.read_blob(&rec.manifest)?;
    let media = serde_json::from_slice::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_else(|| crate::config::OCI_MANIFEST.to_string());
    let tag = Reference::parse(&rec.reference)
        .ok()
        .and_then(|r| r.tag)
        .unwrap_or_else(|| "latest".into());
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": media,
            "digest": rec.manifest.to_string(),
            "size": size,
            "annotations": {
                "org.opencontainers.image.ref.name": tag,
                "io.containerd.image.name": rec.reference,
            },
        }],
    });
    let write = |name: &str, data: Vec<u8>| {
        let p = out.join(name);
        fs::write(&p, data).map_err(io_at("writing", &p))
    };
    write("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec())?;
    write("index.json", serde_json::to_vec(&index).unwrap_or_default())
}
