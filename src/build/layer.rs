//! Layers a build makes: a tar (whiteouts `.wh.NAME` for deletions, an
//! opaque marker `.wh..wh..opq` for a replaced directory), gzip-compressed,
//! its uncompressed digest (diff_id) and compressed digest taken on the
//! way, then stored in the content store like a pulled layer.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use hull_agent::overlay;
use hull_images::digest::HashingSink;
use hull_images::{LayerRecord, Store};

use crate::error::PathIoError;

/// The media type of the layers hull build makes.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("storing the layer")]
    Store(#[from] hull_images::store::StoreError),
}

fn io_at(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayerError {
    crate::error::io_at(what, path)
}

/// Writes what goes through it to both: the hash of the plain tar, and
/// the compressor.
struct Tee {
    plain: HashingSink,
    gz: GzEncoder<File>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.gz.write_all(buf)?;
        self.plain.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.gz.flush()
    }
}

/// Who owns what a COPY writes, and its mode (`--chown`, `--chmod`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    pub owner: Option<(u32, u32)>,
    pub mode: Option<u32>,
}

/// A layer being written.
pub struct LayerWriter {
    tar: tar::Builder<Tee>,
    tmp: PathBuf,
    /// Hard links: the first path of each (dev, inode) with several links.
    links: HashMap<(u64, u64), PathBuf>,
    entries: u64,
}

impl LayerWriter {
    pub fn new(store: &Store) -> Result<LayerWriter, LayerError> {
        let tmp = store.temp_path("build-layer");
        let f = File::create(&tmp).map_err(io_at("creating", &tmp))?;
        let tee = Tee {
            plain: HashingSink::default(),
            gz: GzEncoder::new(f, Compression::fast()),
        };
        let mut tar = tar::Builder::new(tee);
        tar.follow_symlinks(false);
        Ok(LayerWriter {
            tar,
            tmp,
            links: HashMap::new(),
            entries: 0,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Adds the file, directory, symlink, device or fifo at `src` (not
    /// following a symlink) as `name` in the layer.
    pub fn add_path(&mut self, name: &Path, src: &Path, ov: Overrides) -> Result<(), LayerError> {
        let m = fs::symlink_metadata(src).map_err(io_at("reading", src))?;
        let ft = m.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_mtime(m.mtime().max(0) as u64);
        let (uid, gid) = ov.owner.unwrap_or((m.uid(), m.gid()));
        h.set_uid(uid.into());
        h.set_gid(gid.into());
        let mode = match ov.mode {
            Some(mode) if !ft.is_symlink() => mode,
            _ => m.mode() & 0o7777,
        };
        h.set_mode(mode);
        h.set_size(0);
        self.entries += 1;
        let at = |what| io_at(what, src);
        if !ft.is_dir() && m.nlink() > 1 {
            let key = (m.dev(), m.ino());
            if let Some(first) = self.links.get(&key) {
                h.set_entry_type(tar::EntryType::Link);
                let first = first.clone();
                return self
                    .tar
                    .append_link(&mut h, name, &first)
                    .map_err(at("archiving"));
            }
            self.links.insert(key, name.to_path_buf());
        }
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            self.tar
                .append_data(&mut h, name, io::empty())
                .map_err(at("archiving"))
        } else if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(m.len());
            let f = File::open(src).map_err(at("opening"))?;
            self.tar
                .append_data(&mut h, name, f)
                .map_err(at("archiving"))
        } else if ft.is_symlink() {
            let target = fs::read_link(src).map_err(at("reading the link"))?;
            h.set_entry_type(tar::EntryType::Symlink);
            self.tar
                .append_link(&mut h, name, &target)
                .map_err(at("archiving"))
        } else {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else if ft.is_fifo() {
                tar::EntryType::Fifo
            } else {
                self.entries -= 1;
                return Ok(()); // a socket: not kept in layers
            };
            h.set_entry_type(kind);
            let rdev = m.rdev();
            h.set_device_major(libc::major(rdev))
                .map_err(at("archiving"))?;
            h.set_device_minor(libc::minor(rdev))
                .map_err(at("archiving"))?;
            self.tar
                .append_data(&mut h, name, io::empty())
                .map_err(at("archiving"))
        }
    }

    /// A directory entry (for parents a COPY creates).
    pub fn add_dir(&mut self, name: &Path, mode: u32, owner: (u32, u32)) -> Result<(), LayerError> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_uid(owner.0.into());
        h.set_gid(owner.1.into());
        h.set_mtime(hull_images::store::now());
        h.set_size(0);
        self.entries += 1;
        self.tar
            .append_data(&mut h, name, io::empty())
            .map_err(io_at("archiving", name))
    }

    /// Adds one entry of another tar (ADD of a local archive) under `name`.
    pub fn add_entry(
        &mut self,
        name: &Path,
        mut e: tar::Entry<'_, impl io::Read>,
    ) -> Result<(), LayerError> {
        let mut h = e.header().clone();
        self.entries += 1;
        let kind = h.entry_type();
        let at = io_at("archiving", name);
        if kind.is_symlink() || kind.is_hard_link() {
            let target = e
                .link_name()
                .map_err(io_at("reading", name))?
                .map(|t| t.into_owned())
                .unwrap_or_default();
            return self.tar.append_link(&mut h, name, target).map_err(at);
        }
        self.tar.append_data(&mut h, name, &mut e).map_err(at)
    }

    /// One entry whose header the caller made (`name` is set here), with
    /// its data (hull build's reader of a microVM's changes).
    pub fn append(
        &mut self,
        h: &mut tar::Header,
        name: &Path,
        data: impl io::Read,
    ) -> Result<(), LayerError> {
        self.entries += 1;
        self.tar
            .append_data(h, name, data)
            .map_err(io_at("archiving", name))
    }

    /// A symlink or hard link entry (its type already in `h`) to `target`.
    pub fn append_link(
        &mut self,
        h: &mut tar::Header,
        name: &Path,
        target: &Path,
    ) -> Result<(), LayerError> {
        self.entries += 1;
        self.tar
            .append_link(h, name, target)
            .map_err(io_at("archiving", name))
    }

    /// A whiteout: `name` is deleted by this layer.
    pub fn whiteout(&mut self, name: &Path) -> Result<(), LayerError> {
        let file = name.file_name().unwrap_or_default().as_bytes();
        let mut wh = b".wh.".to_vec();
        wh.extend_from_slice(file);
        let path = name.with_file_name(std::ffi::OsStr::from_bytes(&wh));
        self.marker(&path)
    }

    /// The directory `name` replaces the one below it (an opaque marker).
    pub fn opaque(&mut self, dir: &Path) -> Result<(), LayerError> {
        self.marker(&dir.join(".wh..wh..opq"))
    }

    fn marker(&mut self, path: &Path) -> Result<(), LayerError> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mtime(0);
        self.entries += 1;
        self.tar
            .append_data(&mut h, path, io::empty())
            .map_err(io_at("archiving", path))
    }

    /// Drops the layer being written, and its temporary file.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.tmp);
    }

    /// Ends the tar, and stores it as a blob: the layer's record.
    pub fn finish(self, store: &Store) -> Result<LayerRecord, LayerError> {
        let tmp = self.tmp.clone();
        let result = (|| {
            let tee = self.tar.into_inner().map_err(io_at("writing", &tmp))?;
            let diff_id = tee.plain.finish();
            let f = tee.gz.finish().map_err(io_at("compressing", &tmp))?;
            f.sync_all().map_err(io_at("syncing", &tmp))?;
            drop(f);
            let f = File::open(&tmp).map_err(io_at("opening", &tmp))?;
            let (digest, size) = store.put_blob(f, None)?;
            Ok(LayerRecord {
                digest,
                diff_id,
                media_type: LAYER_MEDIA_TYPE.into(),
                size,
            })
        })();
        let _ = fs::remove_file(&tmp);
        result
    }
}

/// Adds an overlayfs upper dir's changes under `rel` to `w`: its files as
/// they are, its whiteouts as `.wh.` entries, its opaque directories with
/// their marker. `skip` says which top-level names to leave out (the mount
/// points the sandbox made).
pub fn add_upper(
    w: &mut LayerWriter,
    upper: &Path,
    rel: &Path,
    skip: &dyn Fn(&Path) -> bool,
) -> Result<(), LayerError> {
    let dir = upper.join(rel);
    for name in overlay::sorted_names(&dir).map_err(io_at("reading", &dir))? {
        let r = rel.join(&name);
        if skip(&r) {
            continue;
        }
        let path = upper.join(&r);
        let m = fs::symlink_metadata(&path).map_err(io_at("reading", &path))?;
        if overlay::is_whiteout(&m) {
            w.whiteout(&r)?;
            continue;
        }
        w.add_path(&r, &path, Overrides::default())?;
        if m.is_dir() {
            if overlay::is_opaque(&path) {
                w.opaque(&r)?;
            }
            add_upper(w, upper, &r, skip)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_stored_with_its_digests_and_whiteouts() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("data")).unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("d")).unwrap();
        fs::write(src.join("d/f"), b"hello").unwrap();
        std::os::unix::fs::symlink("d/f", src.join("l")).unwrap();
        let mut w = LayerWriter::new(&store).unwrap();
        assert!(w.is_empty());
        w.add_path(Path::new("d"), &src.join("d"), Overrides::default())
            .unwrap();
        w.add_path(
            Path::new("d/f"),
            &src.join("d/f"),
            Overrides {
                owner: Some((7, 8)),
                mode: Some(0o600),
            },
        )
        .unwrap();
        w.add_path(Path::new("l"), &src.join("l"), Overrides::default())
            .unwrap();
        w.whiteout(Path::new("d/gone")).unwrap();
        w.opaque(Path::new("d")).unwrap();
        let rec = w.finish(&store).unwrap();
        assert!(store.has_blob(&rec.digest));
        let blob = fs::read(store.blob_path(&rec.digest)).unwrap();
        let mut plain = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&blob[..]), &mut plain).unwrap();
        assert_eq!(hull_images::Digest::of(&plain), rec.diff_id);
        let mut a = tar::Archive::new(&plain[..]);
        let got: Vec<(String, u64, u32)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.uid().unwrap(),
                    h.mode().unwrap(),
                )
            })
            .collect();
        let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(names, ["d", "d/f", "l", "d/.wh.gone", "d/.wh..wh..opq"]);
        assert_eq!((got[1].1, got[1].2), (7, 0o600));
    }
}
