//! `hull import`: images a user already has on disk.
//! - an OCI image layout directory (umoci, skopeo `oci:`, buildah);
//! - a `docker save` tarball (the classic manifest.json form, or the OCI
//!   layout newer docker versions write into the tar).
//!
//! Every blob is copied into the store and verified against its digest; an
//! index selects its linux/amd64 manifest.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::{self, Descriptor, ImageConfig, Index, Manifest};
use crate::digest::Digest;
use crate::reference::{Reference, ReferenceError};
use crate::store::{ImageRecord, LayerRecord, MAX_JSON_BLOB, Store, StoreError, now, remove_tree};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("{0}: neither an OCI image layout (oci-layout, index.json) nor a docker save tarball")]
    Unknown(PathBuf),
    #[error("{0}: no image for linux/amd64 in it (found: {1})")]
    Platform(PathBuf, String),
    #[error("{0}: the image has no name: give one with --tag NAME[:TAG]")]
    NoName(PathBuf),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ImportError {
    let path = path.to_path_buf();
    move |source| ImportError::Io { path, source }
}

fn invalid(path: &Path, why: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// Reads a JSON file of bounded size.
fn read_json_file(path: &Path) -> Result<Vec<u8>, ImportError> {
    let f = File::open(path).map_err(io_at(path))?;
    let mut data = Vec::new();
    f.take(MAX_JSON_BLOB + 1)
        .read_to_end(&mut data)
        .map_err(io_at(path))?;
    if data.len() as u64 > MAX_JSON_BLOB {
        return Err(invalid(path, "larger than hull reads"));
    }
    Ok(data)
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, data: &[u8]) -> Result<T, ImportError> {
    serde_json::from_slice(data)
        .map_err(|e| invalid(path, format!("not valid JSON for this document: {e}")))
}

/// Imports `path` (a layout directory or a docker save tarball); `tag`
/// names the image (required when the input does not name it). Returns the
/// records added.
pub fn import(
    store: &Store,
    path: &Path,
    tag: Option<&str>,
) -> Result<Vec<ImageRecord>, ImportError> {
    let tag = tag.map(Reference::parse).transpose()?;
    let meta = fs::metadata(path).map_err(io_at(path))?;
    if meta.is_dir() {
        return import_layout(store, path, tag.as_ref(), &[]);
    }
    // A tarball: unpack it into the store's tmp (tar's own unpack keeps
    // every entry inside the destination), then import what it holds.
    let tmp = store.temp_path("import");
    fs::create_dir_all(&tmp).map_err(io_at(&tmp))?;
    let result = (|| {
        let f = File::open(path).map_err(io_at(path))?;
        let mut a = tar::Archive::new(crate::unpack::decompress(f).map_err(io_at(path))?);
        a.set_preserve_permissions(false);
        a.unpack(&tmp)
            .map_err(|e| invalid(path, format!("not a readable tar: {e}")))?;
        let names = docker_repo_tags(&tmp);
        if tmp.join("index.json").is_file() && tmp.join("oci-layout").is_file() {
            import_layout(store, &tmp, tag.as_ref(), &names)
        } else if tmp.join("manifest.json").is_file() {
            import_docker_save(store, &tmp, tag.as_ref())
        } else {
            Err(ImportError::Unknown(path.to_path_buf()))
        }
    })();
    let _ = remove_tree(&tmp);
    result.map_err(|e| match e {
        // Name the user's file, not our temp dir.
        ImportError::Unknown(_) => ImportError::Unknown(path.to_path_buf()),
        ImportError::NoName(_) => ImportError::NoName(path.to_path_buf()),
        other => other,
    })
}

#[derive(Deserialize)]
struct SaveEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn docker_repo_tags(dir: &Path) -> Vec<String> {
    let p = dir.join("manifest.json");
    read_json_file(&p)
        .ok()
        .and_then(|d| serde_json::from_slice::<Vec<SaveEntry>>(&d).ok())
        .map(|v| {
            v.into_iter()
                .flat_map(|e| e.repo_tags.unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// A file inside the unpacked tarball, refusing names that leave it.
fn inside(dir: &Path, name: &str) -> Result<PathBuf, ImportError> {
    let rel = Path::new(name);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(invalid(
            dir,
            format!("manifest.json names {name:?}, outside the archive"),
        ));
    }
    Ok(dir.join(rel))
}

fn import_docker_save(
    store: &Store,
    dir: &Path,
    tag: Option<&Reference>,
) -> Result<Vec<ImageRecord>, ImportError> {
    let mpath = dir.join("manifest.json");
    let entries: Vec<SaveEntry> = parse(&mpath, &read_json_file(&mpath)?)?;
    let mut out = Vec::new();
    for (n, e) in entries.iter().enumerate() {
        let cpath = inside(dir, &e.config)?;
        let cdata = read_json_file(&cpath)?;
        let cfg: ImageConfig = parse(&cpath, &cdata)?;
        check_platform(&cpath, &cfg)?;
        if cfg.rootfs.diff_ids.len() != e.layers.len() {
            return Err(invalid(
                &cpath,
                "the config's diff_ids do not match the layer list",
            ));
        }
        let config_digest = store.put_bytes(&cdata, None)?;
        let mut layers = Vec::new();
        let mut descs = Vec::new();
        for (file, diff_id) in e.layers.iter().zip(&cfg.rootfs.diff_ids) {
            let lpath = inside(dir, file)?;
            let f = File::open(&lpath).map_err(io_at(&lpath))?;
            let (digest, size) = store.put_blob(f, None)?;
            descs.push(Descriptor {
                media_type: config::DOCKER_LAYER_TAR.into(),
                digest: digest.clone(),
                size,
                platform: None,
                annotations: Default::default(),
            });
            layers.push(LayerRecord {
                digest,
                diff_id: diff_id.clone(),
                media_type: config::DOCKER_LAYER_TAR.into(),
                size,
            });
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(config::DOCKER_MANIFEST.into()),
            config: Descriptor {
                media_type: config::DOCKER_CONFIG.into(),
                digest: config_digest.clone(),
                size: cdata.len() as u64,
                platform: None,
                annotations: Default::default(),
            },
            layers: descs,
        };
        let mdata = serde_json::to_vec(&manifest).unwrap_or_default();
        let manifest_digest = store.put_bytes(&mdata, None)?;
        let mut names: Vec<Reference> = Vec::new();
        if let (Some(t), 0) = (tag, n) {
            names.push(t.clone());
        }
        for t in e.repo_tags.iter().flatten() {
            names.push(Reference::parse(t)?);
        }
        let image = (manifest_digest, config_digest, layers);
        out.extend(record_names(store, dir, names, &image)?);
    }
    Ok(out)
}

/// Records the image (manifest, config, layers) under each of `names`; an
/// image with no name at all is refused.
fn record_names(
    store: &Store,
    dir: &Path,
    names: Vec<Reference>,
    (manifest, config, layers): &(Digest, Digest, Vec<LayerRecord>),
) -> Result<Vec<ImageRecord>, ImportError> {
    if names.is_empty() {
        return Err(ImportError::NoName(dir.to_path_buf()));
    }
    let mut out = Vec::new();
    for r in names {
        let rec = ImageRecord {
            reference: r.to_string(),
            manifest: manifest.clone(),
            config: config.clone(),
            layers: layers.clone(),
            added: now(),
        };
        store.add_image(rec.clone())?;
        out.push(rec);
    }
    Ok(out)
}

fn check_platform(path: &Path, cfg: &ImageConfig) -> Result<(), ImportError> {
    if (cfg.os.is_empty() || cfg.os == config::OS)
        && (cfg.architecture.is_empty() || cfg.architecture == config::ARCH)
    {
        Ok(())
    } else {
        Err(ImportError::Platform(
            path.to_path_buf(),
            format!("{}/{}", cfg.os, cfg.architecture),
        ))
    }
}

/// Copies blob `d` from a layout's blobs dir into the store, verified.
fn copy_blob(store: &Store, dir: &Path, d: &Digest) -> Result<(), ImportError> {
    if store.has_blob(d) {
        return Ok(());
    }
    let p = dir.join("blobs/sha256").join(d.hex());
    let f = File::open(&p).map_err(io_at(&p))?;
    store.put_blob(f, Some(d))?;
    Ok(())
}

/// Follows `desc` (a manifest, or an index) to the linux/amd64 manifest.
fn resolve_manifest(
    store: &Store,
    dir: &Path,
    desc: &Descriptor,
    depth: u32,
) -> Result<Option<(Digest, Manifest)>, ImportError> {
    if depth > 4 {
        return Err(invalid(dir, "indexes nested too deep"));
    }
    copy_blob(store, dir, &desc.digest)?;
    let data = store.read_blob(&desc.digest)?;
    let path = dir.join("blobs/sha256").join(desc.digest.hex());
    let value: serde_json::Value = parse(&path, &data)?;
    let media = value
        .get("mediaType")
        .and_then(|v| v.as_str())
        .unwrap_or(&desc.media_type)
        .to_string();
    if config::is_index(&media, &value) {
        let index: Index = parse(&path, &data)?;
        let Some(chosen) = pick_platform(&index.manifests) else {
            return Ok(None);
        };
        return resolve_manifest(store, dir, chosen, depth + 1);
    }
    let m: Manifest = parse(&path, &data)?;
    Ok(Some((desc.digest.clone(), m)))
}

/// The linux/amd64 entry of an index (entries without a platform count
/// as matching, as single-image indexes often omit it).
pub fn pick_platform(list: &[Descriptor]) -> Option<&Descriptor> {
    list.iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == config::OS && p.architecture == config::ARCH)
        })
        .or_else(|| list.iter().find(|d| d.platform.is_none()))
}

/// The platforms an index lists, as "os/arch, ..." ("none" if it lists none).
pub(crate) fn platforms(list: &[Descriptor]) -> String {
    let v: Vec<String> = list
        .iter()
        .filter_map(|d| {
            d.platform
                .as_ref()
                .map(|p| format!("{}/{}", p.os, p.architecture))
        })
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn import_layout(
    store: &Store,
    dir: &Path,
    tag: Option<&Reference>,
    extra_names: &[String],
) -> Result<Vec<ImageRecord>, ImportError> {
    let layout = dir.join("oci-layout");
    let ldata = read_json_file(&layout).map_err(|_| ImportError::Unknown(dir.to_path_buf()))?;
    let lv: serde_json::Value = parse(&layout, &ldata)?;
    if lv.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
        return Err(invalid(&layout, "imageLayoutVersion is not 1.0.0"));
    }
    let ipath = dir.join("index.json");
    let index: Index = parse(&ipath, &read_json_file(&ipath)?)?;
    if index.manifests.is_empty() {
        return Err(invalid(&ipath, "no manifests"));
    }
    let mut out = Vec::new();
    for (n, desc) in index.manifests.iter().enumerate() {
        let Some((manifest_digest, m)) = resolve_manifest(store, dir, desc, 0)? else {
            if index.manifests.len() == 1 {
                let nested = store.read_blob(&desc.digest)?;
                let nested: Index = parse(&ipath, &nested)?;
                return Err(ImportError::Platform(
                    dir.to_path_buf(),
                    platforms(&nested.manifests),
                ));
            }
            continue;
        };
        copy_blob(store, dir, &m.config.digest)?;
        let cdata = store.read_blob(&m.config.digest)?;
        let cfg: ImageConfig = parse(&store.blob_path(&m.config.digest), &cdata)?;
        check_platform(dir, &cfg)?;
        if cfg.rootfs.diff_ids.len() != m.layers.len() {
            return Err(invalid(
                dir,
                "the config's diff_ids do not match the manifest's layers",
            ));
        }
        let mut layers = Vec::new();
        for (l, diff_id) in m.layers.iter().zip(&cfg.rootfs.diff_ids) {
            copy_blob(store, dir, &l.digest)?;
            layers.push(LayerRecord {
                digest: l.digest.clone(),
                diff_id: diff_id.clone(),
                media_type: l.media_type.clone(),
                size: l.size,
            });
        }
        // Names: --tag (for the first image), the full names docker and
        // containerd record, a ref.name that is a full reference.
        let mut names: Vec<Reference> = Vec::new();
        if let (Some(t), 0) = (tag, n) {
            names.push(t.clone());
        }
        for key in [
            "io.containerd.image.name",
            "org.opencontainers.image.ref.name",
        ] {
            if let Some(v) = desc.annotations.get(key) {
                if v.contains('/') || v.contains(':') {
                    if let Ok(r) = Reference::parse(v) {
                        names.push(r);
                    }
                }
            }
        }
        if names.is_empty() && index.manifests.len() == 1 {
            for t in extra_names {
                names.push(Reference::parse(t)?);
            }
        }
        names.dedup();
        let image = (manifest_digest, m.config.digest.clone(), layers);
        out.extend(record_names(store, dir, names, &image)?);
    }
    if out.is_empty() {
        return Err(ImportError::Platform(
            dir.to_path_buf(),
            platforms(&index.manifests),
        ));
    }
    Ok(out)
}
