//! Unpacks one layer tar (gzip, zstd or plain: told by its first bytes)
//! into an empty directory, in the form overlayfs stacks: a whiteout
//! (`.wh.NAME`) becomes a 0/0 character device NAME, an opaque marker
//! (`.wh..wh..opq`) the `trusted.overlay.opaque=y` xattr on its directory.
//! Files, directories, symlinks, hard links, device nodes and fifos keep
//! their owners, modes, xattrs and mtimes.
//!
//! The tar is untrusted: an entry with an absolute path or a `..`
//! component, one that would be written through a symlink, or a hard link
//! to outside the layer is rejected with an error naming it.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {entry:?}: {why}")]
    Unsafe { entry: String, why: &'static str },
    #[error("layer entry {entry:?}")]
    Entry { entry: String, source: io::Error },
    #[error("reading the layer")]
    Read(#[source] io::Error),
}

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

/// The decompressed stream of a layer blob.
pub fn decompress<'a>(r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(256 * 1024, r);
    let head = br.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(br)?)
    } else {
        Box::new(br)
    })
}

/// The relative path of an entry, or why it is refused.
fn clean_path(raw: &[u8]) -> Result<PathBuf, (String, &'static str)> {
    let name = String::from_utf8_lossy(raw).into_owned();
    let p = Path::new(std::ffi::OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err((name, "absolute path"));
            }
            Component::ParentDir => return Err((name, "path goes up with ..")),
        }
    }
    Ok(out)
}

/// Checks that no existing component of `rel`'s parent under `root` is a
/// symlink (writing through one could leave the layer).
fn check_parents(root: &Path, rel: &Path) -> Result<(), &'static str> {
    let mut p = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            p.push(c);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err("would be written through a symlink");
                }
                Ok(m) if !m.is_dir() => return Err("a parent is not a directory"),
                _ => {}
            }
        }
    }
    Ok(())
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn mknod(p: &Path, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let c = cstr(p)?;
    // SAFETY: a valid NUL-terminated path; mknod takes integers otherwise.
    check(unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) })
}

fn lchown(p: &Path, uid: u64, gid: u64) -> io::Result<()> {
    let c = cstr(p)?;
    // SAFETY: a valid NUL-terminated path.
    check(unsafe { libc::lchown(c.as_ptr(), uid as libc::uid_t, gid as libc::gid_t) })
}

fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let (c, n) = (
        cstr(p)?,
        CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
    );
    // SAFETY: valid NUL-terminated strings; the value pointer and length describe `value`.
    check(unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

fn set_mtime(p: &Path, secs: u64) -> io::Result<()> {
    let c = cstr(p)?;
    let t = libc::timespec {
        tv_sec: secs.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: a valid path and two timespecs.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Removes whatever is at `p` (an earlier entry of the same layer).
fn clear(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => crate::store::remove_tree(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Statistics of one unpack.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
}

/// Unpacks the layer stream `r` (already decompressed) into `dest`, an
/// empty directory. Needs root for owners and device nodes.
pub fn unpack(r: impl Read, dest: &Path) -> Result<Unpacked, UnpackError> {
    let mut archive = tar::Archive::new(r);
    let mut stats = Unpacked::default();
    let mut dir_times: Vec<(PathBuf, u64)> = Vec::new();
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut e = entry.map_err(UnpackError::Read)?;
        let raw = e.path_bytes().into_owned();
        let rel = clean_path(&raw).map_err(|(entry, why)| UnpackError::Unsafe { entry, why })?;
        let name = String::from_utf8_lossy(&raw).into_owned();
        let unsafe_entry = |why| UnpackError::Unsafe {
            entry: name.clone(),
            why,
        };
        if rel.as_os_str().is_empty() {
            continue; // "./": the root itself
        }
        check_parents(dest, &rel).map_err(unsafe_entry)?;
        let ioe = |source| UnpackError::Entry {
            entry: name.clone(),
            source,
        };
        stats.entries += 1;
        let file_name = rel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = dest.join(rel.parent().unwrap_or(Path::new("")));
        if file_name == OPAQUE {
            fs::create_dir_all(&parent).map_err(ioe)?;
            lsetxattr(&parent, "trusted.overlay.opaque", b"y").map_err(ioe)?;
            stats.whiteouts += 1;
            continue;
        }
        if let Some(hidden) = file_name.strip_prefix(WHITEOUT) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(unsafe_entry("invalid whiteout"));
            }
            fs::create_dir_all(&parent).map_err(ioe)?;
            let target = parent.join(hidden);
            clear(&target).map_err(ioe)?;
            mknod(&target, libc::S_IFCHR, 0, 0).map_err(ioe)?;
            stats.whiteouts += 1;
            continue;
        }
        let path = dest.join(&rel);
        let h = e.header().clone();
        let kind = h.entry_type();
        let mode = h.mode().map_err(ioe)? & 0o7777;
        let (uid, gid) = (h.uid().map_err(ioe)?, h.gid().map_err(ioe)?);
        let mtime = h.mtime().unwrap_or(0);
        fs::create_dir_all(&parent).map_err(ioe)?;
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                    clear(&path).map_err(ioe)?;
                    fs::create_dir(&path).map_err(ioe)?;
                }
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                clear(&path).map_err(ioe)?;
                let mut f = File::options()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(ioe)?;
                stats.bytes += io::copy(&mut e, &mut f).map_err(ioe)?;
            }
            T::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry("symlink without a target"))?
                    .into_owned();
                clear(&path).map_err(ioe)?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&target), &path)
                    .map_err(ioe)?;
            }
            T::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| unsafe_entry("hard link without a target"))?
                    .into_owned();
                let trel = clean_path(&target)
                    .map_err(|_| unsafe_entry("hard link to outside the layer"))?;
                check_parents(dest, &trel).map_err(unsafe_entry)?;
                let tpath = dest.join(&trel);
                if !fs::symlink_metadata(&tpath).is_ok_and(|m| !m.is_dir()) {
                    return Err(unsafe_entry(
                        "hard link to a file that is not in this layer",
                    ));
                }
                clear(&path).map_err(ioe)?;
                fs::hard_link(&tpath, &path).map_err(ioe)?;
                continue; // shares the target's inode: owner and mode are its
            }
            T::Char | T::Block | T::Fifo => {
                let (major, minor) = (
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                );
                let fmt = match kind {
                    T::Char => libc::S_IFCHR,
                    T::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                clear(&path).map_err(ioe)?;
                mknod(&path, fmt | mode, major, minor).map_err(ioe)?;
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            _ => {
                log::warn!("layer entry {name:?}: unsupported type {kind:?}, skipped");
                continue;
            }
        }
        lchown(&path, uid, gid).map_err(ioe)?;
        if kind != T::Symlink {
            // After chown, which clears setuid and setgid.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(ioe)?;
        }
        if let Ok(Some(exts)) = e.pax_extensions() {
            for ext in exts.flatten() {
                if let Some(xname) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    lsetxattr(&path, xname, ext.value_bytes()).map_err(ioe)?;
                }
            }
        }
        if kind == T::Directory {
            dir_times.push((path, mtime));
        } else {
            set_mtime(&path, mtime).map_err(ioe)?;
        }
    }
    // Directories last: writing their entries changed their mtimes.
    for (p, t) in dir_times.iter().rev() {
        let _ = set_mtime(p, *t);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::raw_tar;
    use tar::EntryType as T;

    #[test]
    fn files_links_and_whiteouts() {
        let d = tempfile::tempdir().unwrap();
        let t = raw_tar(&[
            ("etc/", T::Directory, b"", ""),
            ("etc/hostname", T::Regular, b"box\n", ""),
            ("etc/alias", T::Link, b"", "etc/hostname"),
            ("etc/link", T::Symlink, b"", "/etc/hostname"),
            ("etc/.wh.gone", T::Regular, b"", ""),
            ("var/.wh..wh..opq", T::Regular, b"", ""),
        ]);
        let s = unpack(&t[..], d.path()).unwrap();
        assert_eq!(s.whiteouts, 2);
        let root = d.path();
        assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"box\n");
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (
            fs::metadata(root.join("etc/alias")).unwrap(),
            fs::metadata(root.join("etc/hostname")).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "hard link shares the inode");
        assert_eq!(
            fs::read_link(root.join("etc/link")).unwrap(),
            Path::new("/etc/hostname")
        );
        let w = fs::symlink_metadata(root.join("etc/gone")).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(
            w.file_type().is_char_device() && w.rdev() == 0,
            "whiteout device"
        );
        assert_eq!(
            fs::metadata(root.join("etc/hostname")).unwrap().mtime(),
            1_000_000
        );
    }

    #[test]
    fn refuses_escapes() {
        for (entries, want) in [
            (vec![("../evil", T::Regular, &b"x"[..], "")], ".."),
            (vec![("/abs", T::Regular, &b"x"[..], "")], "absolute"),
            (
                vec![
                    ("link", T::Symlink, &b""[..], "/etc"),
                    ("link/passwd", T::Regular, &b"x"[..], ""),
                ],
                "symlink",
            ),
            (
                vec![("h", T::Link, &b""[..], "../../etc/passwd")],
                "outside",
            ),
        ] {
            let d = tempfile::tempdir().unwrap();
            let t = raw_tar(&entries);
            let e = unpack(&t[..], d.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn compressed_layers() {
        let t = raw_tar(&[("f", T::Regular, b"data", "")]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &t).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&t[..], 1).unwrap();
        for blob in [gz, zs, t.clone()] {
            let d = tempfile::tempdir().unwrap();
            unpack(decompress(&blob[..]).unwrap(), d.path()).unwrap();
            assert_eq!(fs::read(d.path().join("f")).unwrap(), b"data");
        }
    }
}
