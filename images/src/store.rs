//! The content store under the data dir (default /var/lib/hull):
//!
//! ```text
//! blobs/sha256/<hex>        every blob, verified against its digest before it is kept
//! images.json               image records by reference (written under `lock`)
//! layers/<diff_id hex>/     a layer unpacked (root/) and as a disk (layer.erofs)
//! tmp/                      partial downloads and unpacks; never trusted
//! ```
//!
//! Writes are atomic (temp file, fsync, rename), so an interrupted pull or
//! import leaves at most a temp file, which is never read as a blob.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingReader};
use crate::reference::Reference;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/hull";
/// Largest manifest, index or config hull reads into memory.
pub const MAX_JSON_BLOB: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "blob {expected}: content has digest {actual} ({size} bytes): corrupt or truncated, not kept"
    )]
    DigestMismatch {
        expected: Digest,
        actual: Digest,
        size: u64,
    },
    #[error("blob {0} is larger than {1} bytes")]
    TooLarge(Digest, u64),
    #[error("blob {0} is not in the store")]
    MissingBlob(Digest),
    #[error("no such image: {0}")]
    NoSuchImage(String),
    #[error("{0:?} matches several images: use more of the id, or the name")]
    Ambiguous(String),
    #[error("image records {path}")]
    Records {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { what, path, source }
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The blob as stored (compressed or not).
    pub digest: Digest,
    /// The uncompressed tar's digest (from the image config).
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
}

/// An image the store knows by reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Full reference, e.g. docker.io/library/busybox:latest.
    pub reference: String,
    pub manifest: Digest,
    /// The config blob; its digest is the image id, as docker shows it.
    pub config: Digest,
    pub layers: Vec<LayerRecord>,
    /// Seconds since the Unix epoch when it was pulled or imported.
    pub added: u64,
}

impl ImageRecord {
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Records {
    images: Vec<ImageRecord>,
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// An exclusive lock on the store's records while it lives.
struct Lock(File);

impl Drop for Lock {
    fn drop(&mut self) {
        // SAFETY: flock on an fd we own.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Store {
    /// Opens the store at `root`, creating its directories (mode 0700 root).
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for d in ["blobs/sha256", "layers", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// A fresh temp path in the store's tmp dir.
    pub fn temp_path(&self, hint: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{hint}-{}-{n}-{}", std::process::id(), now()))
    }

    /// Stores what `r` yields as a blob. With `expected`, the content must
    /// have that digest, else nothing is kept. Returns the digest and size.
    pub fn put_blob(
        &self,
        r: impl Read,
        expected: Option<&Digest>,
    ) -> Result<(Digest, u64), StoreError> {
        let tmp = self.temp_path("blob");
        let result = (|| {
            let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
            let mut hr = HashingReader::new(r);
            io::copy(&mut hr, &mut f).map_err(io_err("writing", &tmp))?;
            f.sync_all().map_err(io_err("syncing", &tmp))?;
            let (actual, size) = hr.finish();
            if let Some(e) = expected {
                if *e != actual {
                    return Err(StoreError::DigestMismatch {
                        expected: e.clone(),
                        actual,
                        size,
                    });
                }
            }
            let dest = self.blob_path(&actual);
            fs::rename(&tmp, &dest).map_err(io_err("storing", &dest))?;
            sync_dir(&self.root.join("blobs/sha256"));
            Ok((actual, size))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    pub fn put_bytes(&self, data: &[u8], expected: Option<&Digest>) -> Result<Digest, StoreError> {
        self.put_blob(data, expected).map(|(d, _)| d)
    }

    /// Reads a small blob (manifest, index, config), checking its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let f = File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::MissingBlob(d.clone())
            } else {
                StoreError::Io {
                    what: "opening",
                    path: p.clone(),
                    source: e,
                }
            }
        })?;
        let mut data = Vec::new();
        f.take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut data)
            .map_err(io_err("reading", &p))?;
        if data.len() as u64 > MAX_JSON_BLOB {
            return Err(StoreError::TooLarge(d.clone(), MAX_JSON_BLOB));
        }
        let actual = Digest::of(&data);
        if actual != *d {
            return Err(StoreError::DigestMismatch {
                expected: d.clone(),
                actual,
                size: data.len() as u64,
            });
        }
        Ok(data)
    }

    fn lock(&self) -> Result<Lock, StoreError> {
        let p = self.root.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(io_err("opening", &p))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err("locking", &p)(io::Error::last_os_error()));
        }
        Ok(Lock(f))
    }

    fn records_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn load_records(&self) -> Result<Records, StoreError> {
        let p = self.records_path();
        match fs::read(&p) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|source| StoreError::Records { path: p, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Records::default()),
            Err(e) => Err(io_err("reading", &p)(e)),
        }
    }

    fn save_records(&self, r: &Records) -> Result<(), StoreError> {
        let p = self.records_path();
        let tmp = self.temp_path("images.json");
        let data = serde_json::to_vec_pretty(r).unwrap_or_default();
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(&data).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, &p).map_err(io_err("replacing", &p))?;
        sync_dir(&self.root);
        Ok(())
    }

    /// Every image record, sorted by reference.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let mut v = self.load_records()?.images;
        v.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(v)
    }

    /// Adds (or replaces, for the same reference) an image record. Every
    /// blob it names must already be in the store.
    pub fn add_image(&self, rec: ImageRecord) -> Result<(), StoreError> {
        for d in [&rec.manifest, &rec.config]
            .into_iter()
            .chain(rec.layers.iter().map(|l| &l.digest))
        {
            if !self.has_blob(d) {
                return Err(StoreError::MissingBlob(d.clone()));
            }
        }
        let _lock = self.lock()?;
        let mut r = self.load_records()?;
        r.images.retain(|i| i.reference != rec.reference);
        r.images.push(rec);
        self.save_records(&r)
    }

    /// Finds an image by reference (`busybox`, `host:5000/a:v1`) or by a
    /// unique prefix of its id (the config digest).
    pub fn find(&self, key: &str) -> Result<ImageRecord, StoreError> {
        let images = self.images()?;
        if let Ok(r) = Reference::parse(key) {
            let full = r.to_string();
            if let Some(i) = images.iter().find(|i| i.reference == full) {
                return Ok(i.clone());
            }
            // name@digest: the manifest digest of a record of that name.
            if let Some(d) = &r.digest {
                if let Some(i) = images.iter().find(|i| {
                    i.manifest == *d
                        && Reference::parse(&i.reference).is_ok_and(|x| x.name() == r.name())
                }) {
                    return Ok(i.clone());
                }
            }
        }
        let hex = key.strip_prefix("sha256:").unwrap_or(key);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let found: Vec<&ImageRecord> = images
                .iter()
                .filter(|i| i.config.hex().starts_with(hex))
                .collect();
            let ids: BTreeSet<&Digest> = found.iter().map(|i| &i.config).collect();
            match ids.len() {
                0 => {}
                1 => return Ok(found[0].clone()),
                _ => return Err(StoreError::Ambiguous(key.to_string())),
            }
        }
        Err(StoreError::NoSuchImage(key.to_string()))
    }

    /// Removes the records `key` names (a reference removes that tag; an id
    /// removes every tag of it). Blobs stay until `prune`.
    pub fn remove_image(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let target = self.find(key)?;
        let by_id = !Reference::parse(key).is_ok_and(|r| r.to_string() == target.reference);
        let _lock = self.lock()?;
        let mut r = self.load_records()?;
        let mut removed = Vec::new();
        r.images.retain(|i| {
            let hit = if by_id {
                i.config == target.config
            } else {
                i.reference == target.reference
            };
            if hit {
                removed.push(i.reference.clone());
            }
            !hit
        });
        self.save_records(&r)?;
        Ok(removed)
    }

    /// Removes blobs and layer disks no image uses, and stale temp files.
    /// Returns the bytes freed.
    pub fn prune(&self) -> Result<u64, StoreError> {
        let _lock = self.lock()?;
        let images = self.load_records()?.images;
        let mut keep_blobs = BTreeSet::new();
        let mut keep_layers = BTreeSet::new();
        for i in &images {
            keep_blobs.insert(i.manifest.hex().to_string());
            keep_blobs.insert(i.config.hex().to_string());
            for l in &i.layers {
                keep_blobs.insert(l.digest.hex().to_string());
                keep_layers.insert(l.diff_id.hex().to_string());
            }
        }
        let mut freed = 0;
        let blobs = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blobs)
            .map_err(io_err("reading", &blobs))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep_blobs.contains(&name) {
                freed += e.metadata().map_or(0, |m| m.len());
                let _ = fs::remove_file(e.path());
            }
        }
        let layers = self.root.join("layers");
        for e in fs::read_dir(&layers)
            .map_err(io_err("reading", &layers))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep_layers.contains(&name) {
                freed += dir_size(&e.path());
                let _ = remove_tree(&e.path());
            }
        }
        // Temp files of pulls that died; a running one's are recent.
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp)
            .map_err(io_err("reading", &tmp))?
            .flatten()
        {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if old {
                freed += dir_size(&e.path());
                let _ = remove_tree(&e.path());
            }
        }
        Ok(freed)
    }
}

/// Removes a file or a directory tree (an unpacked layer may hold
/// read-only directories: they are made writable first).
pub fn remove_tree(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
            for e in fs::read_dir(p)?.flatten() {
                remove_tree(&e.path())?;
            }
            fs::remove_dir(p)
        }
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn dir_size(p: &Path) -> u64 {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::read_dir(p)
            .map(|d| d.flatten().map(|e| dir_size(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

fn sync_dir(p: &Path) {
    if let Ok(d) = File::open(p) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(store: &Store, reference: &str, layer: &[u8]) -> ImageRecord {
        let l = store.put_bytes(layer, None).unwrap();
        let config = store
            .put_bytes(format!("{{\"r\":\"{reference}\"}}").as_bytes(), None)
            .unwrap();
        let manifest = store.put_bytes(reference.as_bytes(), None).unwrap();
        ImageRecord {
            reference: Reference::parse(reference).unwrap().to_string(),
            manifest,
            config,
            layers: vec![LayerRecord {
                digest: l.clone(),
                diff_id: l,
                media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                size: layer.len() as u64,
            }],
            added: now(),
        }
    }

    #[test]
    fn wrong_digest_keeps_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let wrong = Digest::of(b"something else");
        let e = s.put_blob(&b"content"[..], Some(&wrong)).unwrap_err();
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(!s.has_blob(&wrong));
        assert!(!s.has_blob(&Digest::of(b"content")));
        assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn corrupt_blob_is_detected_on_read() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let dg = s.put_bytes(b"{}", None).unwrap();
        fs::write(s.blob_path(&dg), b"{ }").unwrap();
        assert!(matches!(
            s.read_blob(&dg),
            Err(StoreError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn records_find_remove_and_prune_keep_shared_layers() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let a = record(&s, "a:1", b"shared layer");
        let b = record(&s, "b:1", b"shared layer");
        s.add_image(a.clone()).unwrap();
        s.add_image(b.clone()).unwrap();
        assert_eq!(s.find("a:1").unwrap(), a);
        assert_eq!(s.find(&a.config.hex()[..10]).unwrap(), a);
        assert!(matches!(s.find("c"), Err(StoreError::NoSuchImage(_))));
        assert_eq!(s.remove_image("a:1").unwrap(), vec![a.reference.clone()]);
        s.prune().unwrap();
        assert!(s.has_blob(&b.layers[0].digest), "b still uses the layer");
        assert!(!s.has_blob(&a.manifest));
        s.remove_image("b:1").unwrap();
        s.prune().unwrap();
        assert!(!s.has_blob(&b.layers[0].digest));
    }
}
