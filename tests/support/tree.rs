//! A directory tree as data, to compare two unpacked or built root
//! filesystems file by file.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One entry of a tree: its kind, mode bits, owner, size and content.
#[derive(Debug, PartialEq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// A regular file's length (0 for anything else).
    pub size: u64,
    pub content: Option<Vec<u8>>,
    pub target: Option<PathBuf>,
}

/// Every entry below `root`, by its path relative to `root`.
pub fn walk(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn go(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        for e in fs::read_dir(p).unwrap() {
            let path = e.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            out.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                Node {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    size: if ft.is_file() { m.len() } else { 0 },
                    content: ft.is_file().then(|| fs::read(&path).unwrap()),
                    target: ft.is_symlink().then(|| fs::read_link(&path).unwrap()),
                },
            );
            if ft.is_dir() {
                go(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, root, &mut out);
    out
}
