//! How an overlayfs upper directory records changes, as both sides read it
//! to export a writable layer (the agent for a microVM's build step, hull
//! for a namespace's): a whiteout is a 0/0 character device, an opaque
//! directory carries `trusted.overlay.opaque=y`.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::{fs, io};

/// The xattr that makes an upper directory hide the one below it.
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Whether `m` (not followed through a symlink) is a whiteout.
pub fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Whether the directory `dir` is opaque.
pub fn is_opaque(dir: &Path) -> bool {
    lgetxattr(dir, OPAQUE_XATTR).as_deref() == Some(b"y")
}

/// The names in `dir`, sorted (so a layer's tar is the same every time).
pub fn sorted_names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    Ok(names)
}

/// `name`'s extended attribute on `path` (not following a symlink), if it
/// has one of at most 256 bytes.
fn lgetxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = CString::new(name).ok()?;
    let mut buf = vec![0u8; 256];
    // SAFETY: two NUL-terminated strings; the pointer and length describe `buf`.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let len = usize::try_from(r).ok()?;
    buf.truncate(len);
    Some(buf)
}
