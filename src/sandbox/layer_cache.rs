//! erofs images of layer directories (`hull run --rootfs DIR`), kept in the
//! cache dir and used again while the directory is unchanged: making one
//! runs mkfs.erofs, which reads every file, on each start; walking the
//! directory's metadata is cheaper. An image is named by a digest of every
//! entry's path, type, mode, owner, size, inode, modification and change
//! times (and a link's target). As git does with its index, a directory
//! with an entry changed in the last [`RACY`] is not cached: a change in
//! the same clock tick could leave those times as they were.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Entries changed this recently make a directory uncacheable.
const RACY: Duration = Duration::from_secs(2);
/// Directories with more entries than this are not walked for a key.
const MAX_ENTRIES: usize = 100_000;
/// Images kept: the most recently used.
const KEEP: usize = 8;
/// Bumped when the image's making changes (mkfs.erofs flags).
const FORMAT: &str = "hull-layer-erofs 1";

/// The key of `dir` as it is now, or None when it cannot be cached (an
/// entry changed within [`RACY`], too many entries, unreadable).
pub fn key(dir: &Path) -> Option<String> {
    key_racy(dir, RACY)
}

fn key_racy(dir: &Path, racy: Duration) -> Option<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let racy_after = i128::try_from(now.saturating_sub(racy).as_nanos()).ok()?;
    let mut h = Sha256::new();
    h.update(FORMAT);
    let mut count = 0usize;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut names: Vec<_> = std::fs::read_dir(dir.join(&rel))
            .ok()?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .ok()?;
        names.sort();
        count += names.len();
        if count > MAX_ENTRIES {
            return None;
        }
        for name in names {
            let rel = rel.join(name);
            let path = dir.join(&rel);
            let m = std::fs::symlink_metadata(&path).ok()?;
            let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
            let (mtime, ctime) = (ns(m.mtime(), m.mtime_nsec()), ns(m.ctime(), m.ctime_nsec()));
            if mtime >= racy_after || ctime >= racy_after {
                return None;
            }
            h.update(rel.as_os_str().as_encoded_bytes());
            h.update(format!(
                "\0{}:{}:{}:{}:{}:{}:{}:{mtime}:{ctime}\0",
                m.mode(),
                m.uid(),
                m.gid(),
                m.size(),
                m.ino(),
                m.dev(),
                m.rdev()
            ));
            if m.file_type().is_symlink() {
                h.update(
                    std::fs::read_link(&path)
                        .ok()?
                        .as_os_str()
                        .as_encoded_bytes(),
                );
            } else if m.is_dir() {
                stack.push(rel);
            }
        }
    }
    let d = h.finalize();
    Some(d[..16].iter().map(|b| format!("{b:02x}")).collect())
}

/// The cached image for `key` under `root`, marked used, if there is one.
pub fn cached(root: &Path, key: &str) -> Option<PathBuf> {
    let img = root.join(format!("{key}.erofs"));
    let f = std::fs::File::open(&img).ok()?;
    let _ = f.set_times(std::fs::FileTimes::new().set_modified(SystemTime::now()));
    Some(img)
}

/// Puts the image `made` (a file on the same filesystem as `root`) in the
/// cache as `key`'s and removes the least recently used past [`KEEP`].
pub fn keep(root: &Path, key: &str, made: &Path) -> std::io::Result<PathBuf> {
    let img = root.join(format!("{key}.erofs"));
    std::fs::rename(made, &img)?;
    if let Ok(entries) = std::fs::read_dir(root) {
        let mut images: Vec<(SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".erofs"))
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        images.sort_by_key(|i| std::cmp::Reverse(i.0));
        for (_, old) in images.into_iter().skip(KEEP) {
            // A running VM keeps its open disk file.
            let _ = std::fs::remove_file(old);
        }
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn age(p: &Path) {
        let old = SystemTime::now() - Duration::from_secs(60);
        let f = std::fs::File::open(p).unwrap();
        f.set_times(std::fs::FileTimes::new().set_modified(old))
            .unwrap();
    }

    #[test]
    fn the_key_follows_the_directory_and_a_fresh_change_is_not_cached() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("root");
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/sh"), b"one").unwrap();
        let racy = Duration::from_millis(300);
        let settled = || std::thread::sleep(racy + Duration::from_millis(50));
        // Just written: its change time is now.
        assert_eq!(
            key_racy(&dir, racy),
            None,
            "a directory changed just now was keyed"
        );
        settled();
        let k = key_racy(&dir, racy).expect("an unchanged directory has a key");
        assert_eq!(key_racy(&dir, racy).as_deref(), Some(k.as_str()));
        // Same size, modification time set back: the change time tells.
        std::fs::write(dir.join("bin/sh"), b"two").unwrap();
        age(&dir.join("bin/sh"));
        settled();
        let k2 = key_racy(&dir, racy).expect("a key");
        assert_ne!(k, k2, "a changed file left the key as it was");

        let cache = t.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        assert_eq!(cached(&cache, &k2), None);
        let made = cache.join("tmp");
        std::fs::write(&made, b"image").unwrap();
        let img = keep(&cache, &k2, &made).unwrap();
        assert_eq!(cached(&cache, &k2), Some(img));
    }
}
