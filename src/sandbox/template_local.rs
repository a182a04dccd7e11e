//! A template kept on a network filesystem (a cache dir on NFS or CIFS, or
//! the 9p share an emulated test host mounts without a page cache) is
//! restored from a local copy: every page a clone's guest touches is read
//! from the memory file, and on such a filesystem that is a network read
//! per clone (with 9p's `cache=none`, the file's pages are dropped as soon
//! as no process has it open). The copy, in [`local_root`] (tmpfs under
//! `/run` by default), is made once per template and boot of the host;
//! clones then share its pages through the page cache, as they share a
//! template's on a local disk. A template on a local filesystem is used
//! where it is.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use hull_vmm::snapshot::{MEMORY_FILE, STATE_FILE};

use super::template::{TemplateError, io, lock, remove_unlocked};

/// Where local copies go (default `/run/hull-templates`).
pub const LOCAL_TEMPLATES_ENV: &str = "HULL_LOCAL_TEMPLATES";
const DEFAULT_LOCAL_ROOT: &str = "/run/hull-templates";

/// Network filesystems, as /proc/self/mountinfo names them (`statfs`
/// cannot tell: a 9p share reports the type of the host's filesystem).
const NETWORK_FS: [&str; 8] = [
    "9p",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "ceph",
    "afs",
    "fuse.sshfs",
];

const PAGE: usize = 4096;

pub fn local_root() -> PathBuf {
    std::env::var_os(LOCAL_TEMPLATES_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_LOCAL_ROOT), PathBuf::from)
}

/// Whether the template in `dir` lives on a network filesystem.
fn on_network_fs(dir: &Path) -> bool {
    let (Ok(dir), Ok(mounts)) = (
        dir.canonicalize(),
        std::fs::read_to_string("/proc/self/mountinfo"),
    ) else {
        return false;
    };
    fs_type(&dir, &mounts).is_some_and(|t| NETWORK_FS.contains(&t))
}

/// The type of the filesystem `path` (canonical) is on, from `mountinfo`:
/// the last mounted of those whose mount point holds `path`.
fn fs_type<'a>(path: &Path, mountinfo: &'a str) -> Option<&'a str> {
    let mut found = None;
    for line in mountinfo.lines() {
        let mut fields = line.split(' ');
        let Some(point) = fields.nth(4) else {
            continue;
        };
        let Some(fstype) = fields.skip_while(|f| *f != "-").nth(1) else {
            continue;
        };
        // Spaces and the like are octal escapes (\040).
        let point = point.replace("\\040", " ").replace("\\011", "\t");
        let depth = Path::new(&point).components().count();
        if path.starts_with(&point) && found.is_none_or(|(d, _)| depth >= d) {
            found = Some((depth, fstype));
        }
    }
    found.map(|(_, t)| t)
}

/// The template in `dir` (checked) as clones should map it: `dir` itself on
/// a local filesystem, else its local copy in [`local_root`], made first if
/// need be. A copy that cannot be made is said in a log line and `dir` is
/// used (slower, not wrong).
pub fn for_restore(dir: &Path) -> PathBuf {
    if !on_network_fs(dir) {
        return dir.to_path_buf();
    }
    match local_copy(dir, &local_root()) {
        Ok(copy) => copy,
        Err(e) => {
            log::warn!(
                "restoring from {} itself: {}",
                dir.display(),
                crate::error::chain(&e)
            );
            dir.to_path_buf()
        }
    }
}

/// The copy of the template in `dir` under `root` (same name), made when
/// missing or when its state differs from `dir`'s (the template was made
/// again). Made under a lock, in a temporary directory renamed into place;
/// copies of templates no longer in `dir`'s parent are removed then.
pub fn local_copy(dir: &Path, root: &Path) -> Result<PathBuf, TemplateError> {
    let name = dir.file_name().unwrap_or_default();
    let copy = root.join(name);
    let state = std::fs::read(dir.join(STATE_FILE)).map_err(io("reading", dir))?;
    let current = |copy: &Path| std::fs::read(copy.join(STATE_FILE)).is_ok_and(|s| s == state);
    if current(&copy) {
        return Ok(copy);
    }
    std::fs::create_dir_all(root).map_err(io("creating", root))?;
    let _lock = lock(root, &name.to_string_lossy())?;
    if current(&copy) {
        return Ok(copy);
    }
    let tmp = root.join(format!(
        "{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let made = (|| {
        std::fs::create_dir_all(&tmp).map_err(io("creating", &tmp))?;
        copy_sparse(&dir.join(MEMORY_FILE), &tmp.join(MEMORY_FILE))?;
        // The state last: a copy with a state is complete.
        std::fs::write(tmp.join(STATE_FILE), &state).map_err(io("writing", &tmp))?;
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::rename(&tmp, &copy).map_err(io("renaming the copy to", &copy))
    })();
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    made?;
    if let Some(templates) = dir.parent() {
        remove_orphans(root, templates);
    }
    Ok(copy)
}

/// Copies `from` to `to` leaving all-zero pages as holes (a template's
/// memory is mostly holes; a network filesystem may not say where they
/// are, so every page is read and looked at).
fn copy_sparse(from: &Path, to: &Path) -> Result<(), TemplateError> {
    let mut src = File::open(from).map_err(io("opening", from))?;
    let len = src.metadata().map_err(io("reading", from))?.len();
    let dst = File::create(to).map_err(io("creating", to))?;
    dst.set_len(len).map_err(io("sizing", to))?;
    let zero = [0u8; PAGE];
    let mut buf = vec![0u8; 256 * PAGE];
    let mut at = 0u64;
    while at < len {
        let want = buf.len().min((len - at) as usize);
        src.read_exact(&mut buf[..want])
            .map_err(io("reading", from))?;
        for (i, page) in buf[..want].chunks(PAGE).enumerate() {
            if page != &zero[..page.len()] {
                dst.write_all_at(page, at + (i * PAGE) as u64)
                    .map_err(io("writing", to))?;
            }
        }
        at += want as u64;
    }
    Ok(())
}

/// Removes the copies under `root` whose template is gone from `templates`
/// (pruned there); a copy being made (a lock held) is left alone. A running
/// clone keeps its mapping of a removed copy.
fn remove_orphans(root: &Path, templates: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains('.') || templates.join(&name).exists() {
            continue;
        }
        remove_unlocked(root, &name, &e.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A template dir with a 4 MiB memory file holding two data pages.
    fn template(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(STATE_FILE), b"state one").unwrap();
        let f = File::create(dir.join(MEMORY_FILE)).unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(&[7u8; PAGE], 0).unwrap();
        f.write_all_at(b"x", (3 << 20) + 5).unwrap();
    }

    #[test]
    fn the_copy_has_the_bytes_and_holes_and_follows_a_remade_template() {
        let t = tempfile::tempdir().unwrap();
        let (templates, root) = (t.path().join("templates"), t.path().join("local"));
        let dir = templates.join("k1");
        template(&dir);
        let copy = local_copy(&dir, &root).unwrap();
        assert_eq!(copy, root.join("k1"));
        let (a, b) = (
            std::fs::read(dir.join(MEMORY_FILE)).unwrap(),
            std::fs::read(copy.join(MEMORY_FILE)).unwrap(),
        );
        assert!(a == b, "the copy's memory differs from the template's");
        let blocks = std::fs::metadata(copy.join(MEMORY_FILE)).unwrap().blocks();
        assert!(
            blocks * 512 <= 64 << 10,
            "zero pages copied: {blocks} blocks"
        );
        // Made again in the cache: the copy follows.
        std::fs::write(dir.join(STATE_FILE), b"state two").unwrap();
        let copy = local_copy(&dir, &root).unwrap();
        assert_eq!(std::fs::read(copy.join(STATE_FILE)).unwrap(), b"state two");
        // A template pruned from the cache loses its copy when another is
        // copied.
        let other = templates.join("k2");
        template(&other);
        std::fs::remove_dir_all(&dir).unwrap();
        local_copy(&other, &root).unwrap();
        assert!(!root.join("k1").exists(), "the orphaned copy stayed");
        assert!(root.join("k2").join(STATE_FILE).is_file());
    }

    #[test]
    fn the_filesystem_of_a_path_is_its_innermost_mount() {
        let info = "22 1 0:20 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:30 / /home/u/.cache rw,relatime - 9p cache rw,trans=virtio\n\
                    31 30 0:31 / /home/u/.cache/hull/x\\040y rw - tmpfs tmpfs rw\n";
        let at = |p: &str| fs_type(Path::new(p), info);
        assert_eq!(at("/home/u/.cache/hull/templates/k"), Some("9p"));
        assert_eq!(at("/home/u/.cachex"), Some("ext4"));
        assert_eq!(at("/home/u/.cache/hull/x y/z"), Some("tmpfs"));
        assert_eq!(at("/"), Some("ext4"));
    }

    #[test]
    fn a_template_on_a_local_filesystem_is_used_where_it_is() {
        let t = tempfile::tempdir().unwrap();
        assert!(
            !on_network_fs(t.path()),
            "the test's temporary directory is on a network filesystem"
        );
        assert_eq!(for_restore(t.path()), t.path());
    }
}
