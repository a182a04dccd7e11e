//! Volumes: what a container mounts besides its image. [`spec`] parses
//! docker's flags into [`MountSpec`]s (shared by every front end), [`store`]
//! keeps named volumes under the data dir; this module resolves a
//! container's specs against the store (naming anonymous volumes, creating
//! named ones on first use, seeding an empty one from the image) and says
//! which volumes the containers of a state dir hold.

pub mod spec;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use spec::{MountSource, MountSpec, MountSpecError};
pub use store::{Volume, VolumeError, VolumeStore};

use crate::state::{StateDir, StateError};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error("seeding volume {volume} from the image's {target}")]
    Seed {
        volume: String,
        target: String,
        source: std::io::Error,
    },
    #[error("naming an anonymous volume")]
    Random(#[source] std::io::Error),
}

/// Makes `mounts` concrete: an anonymous volume gets a name of 64 hex
/// digits (docker's form), a named volume is created if missing, and an
/// empty one (unless `nocopy`) is seeded with what the image has at the
/// mount's target (`layers`: the image's unpacked layers, bottom first).
pub fn resolve(
    store: &VolumeStore,
    mounts: &[MountSpec],
    layers: &[PathBuf],
) -> Result<Vec<MountSpec>, ResolveError> {
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        let mut m = m.clone();
        if let MountSource::Volume { name, path } = &mut m.source {
            let anonymous = name.is_none();
            if anonymous {
                let mut bytes = [0u8; 32];
                sys::getrandom(&mut bytes).map_err(ResolveError::Random)?;
                *name = Some(bytes.iter().map(|b| format!("{b:02x}")).collect());
            }
            let vol_name = name.clone().unwrap_or_default();
            let (volume, _) = store.create(&vol_name, anonymous)?;
            *path = Some(volume.mountpoint.clone());
            if !m.nocopy && !layers.is_empty() && store.is_empty(&volume)? {
                seed(&volume.mountpoint, layers, &m.target).map_err(|source| {
                    ResolveError::Seed {
                        volume: vol_name.clone(),
                        target: m.target.clone(),
                        source,
                    }
                })?;
            }
        }
        out.push(m);
    }
    Ok(out)
}

/// The host directory a resolved mount shares (bind source or volume
/// content); None for a tmpfs or an unresolved volume.
pub fn host_dir(mount: &MountSpec) -> Option<&Path> {
    match &mount.source {
        MountSource::Bind { path }
        | MountSource::Volume {
            path: Some(path), ..
        } => Some(path),
        MountSource::Volume { path: None, .. } | MountSource::Tmpfs { .. } => None,
    }
}

/// The agent's form of a resolved mount (its host directory named), or
/// None for a volume [`resolve`] has not seen.
pub fn agent_mount(mount: &MountSpec) -> Option<hull_agent::protocol::Mount> {
    use hull_agent::protocol::MountKind;
    let kind = match &mount.source {
        MountSource::Tmpfs { size, mode } => MountKind::Tmpfs {
            size: *size,
            mode: *mode,
        },
        _ => MountKind::Bind {
            source: host_dir(mount)?.display().to_string(),
        },
    };
    Some(hull_agent::protocol::Mount {
        kind,
        target: mount.target.clone(),
        readonly: mount.readonly,
    })
}

/// Volume name -> names of the containers in `state_dir` whose recorded
/// configuration mounts it (any status but removed: docker refuses `volume
/// rm` while a stopped container still refers to the volume).
pub fn volumes_in_use(state_dir: &Path) -> Result<BTreeMap<String, BTreeSet<String>>, StateError> {
    let states = StateDir::open(state_dir)?;
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for c in states.list()? {
        let Ok(config) =
            crate::container::Container::load(state_dir, &c.id).and_then(|c| c.config())
        else {
            continue;
        };
        for m in config.mounts {
            if let MountSource::Volume { name: Some(n), .. } = m.source {
                used.entry(n).or_default().insert(c.name.clone());
            }
        }
    }
    Ok(used)
}

/// Copies what the image's layers show at `target` (their overlay: upper
/// layers hide lower ones, whiteouts delete) into the empty volume `dest`,
/// keeping owners and modes. Nothing outside `dest` is written: the copy
/// never follows a symlink.
fn seed(dest: &Path, layers: &[PathBuf], target: &str) -> std::io::Result<()> {
    if let [only] = layers {
        // One layer (a --rootfs directory): nothing above it to merge, and
        // overlayfs wants two lower layers without an upper.
        return seed_from(only, dest, target);
    }
    let view = tempdir_in(dest.parent().unwrap_or(dest))?;
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|l| l.display().to_string())
        .collect();
    sys::mount_overlay_readonly(&lower.join(":"), &view)?;
    let copied = seed_from(&view, dest, target);
    let unmounted = sys::unmount_detach(&view);
    let _ = std::fs::remove_dir(&view);
    copied.and(unmounted)
}

/// Copies `root`'s `target` directory into `dest` (see [`seed`]).
fn seed_from(root: &Path, dest: &Path, target: &str) -> std::io::Result<()> {
    let rel = target.trim_start_matches('/');
    let mut src = root.to_path_buf();
    // Walk component by component so no symlink in the image's path leads
    // the copy out of the image.
    for part in Path::new(rel).components() {
        if !matches!(part, std::path::Component::Normal(_)) {
            return Ok(());
        }
        src.push(part);
        match std::fs::symlink_metadata(&src) {
            Ok(md) if md.is_dir() => {}
            _ => return Ok(()),
        }
    }
    let md = std::fs::symlink_metadata(&src)?;
    std::os::unix::fs::lchown(dest, Some(md.uid()), Some(md.gid()))?;
    std::fs::set_permissions(dest, md.permissions())?;
    copy_tree(&src, dest)
}

/// A fresh empty directory beside the volumes (for the image's view).
fn tempdir_in(parent: &Path) -> std::io::Result<PathBuf> {
    let mut bytes = [0u8; 8];
    sys::getrandom(&mut bytes)?;
    let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let dir = parent.join(format!(".seed-{name}"));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

fn copy_tree(src: &Path, dest: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let md = std::fs::symlink_metadata(&from)?;
        let ft = md.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&to)?;
            copy_tree(&from, &to)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to)?;
        } else {
            // Devices, fifos and sockets have no place in a seeded volume.
            continue;
        }
        std::os::unix::fs::lchown(&to, Some(md.uid()), Some(md.gid()))?;
        if !ft.is_symlink() {
            std::fs::set_permissions(&to, md.permissions())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_volumes_get_docker_style_names_and_named_ones_are_made() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path());
        let specs = [
            MountSpec::parse_volume("/scratch").unwrap(),
            MountSpec::parse_volume("keep:/keep").unwrap(),
            MountSpec::parse_tmpfs("/t").unwrap(),
        ];
        let resolved = resolve(&store, &specs, &[]).unwrap();
        let MountSource::Volume {
            name: Some(anon), ..
        } = &resolved[0].source
        else {
            panic!("{:?}", resolved[0]);
        };
        assert_eq!(anon.len(), 64);
        assert!(store.inspect(anon).unwrap().anonymous);
        assert!(!store.inspect("keep").unwrap().anonymous);
        assert_eq!(
            host_dir(&resolved[1]).unwrap(),
            dir.path().join("volumes/keep/_data")
        );
        assert_eq!(host_dir(&resolved[2]), None);
        assert_eq!(host_dir(&specs[1]), None, "unresolved");
    }

    /// Needs root (an overlay mount of the image's layers).
    #[test]
    fn an_empty_volume_is_seeded_from_the_image_and_a_full_one_is_not() {
        if sys::euid() != 0 {
            eprintln!("skipped: needs root for the overlay mount");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("l0"), dir.path().join("l1"));
        std::fs::create_dir_all(lower.join("etc/app/sub")).unwrap();
        std::fs::write(lower.join("etc/app/a.conf"), b"from l0").unwrap();
        std::fs::write(lower.join("etc/app/sub/b"), b"b").unwrap();
        std::fs::create_dir_all(upper.join("etc/app")).unwrap();
        std::fs::write(upper.join("etc/app/a.conf"), b"from l1").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", upper.join("etc/app/link")).unwrap();
        let store = VolumeStore::new(&dir.path().join("data"));
        let specs = [MountSpec::parse_volume("conf:/etc/app").unwrap()];
        let layers = [lower, upper];
        let resolved = resolve(&store, &specs, &layers).unwrap();
        let data = host_dir(&resolved[0]).unwrap().to_path_buf();
        assert_eq!(std::fs::read(data.join("a.conf")).unwrap(), b"from l1");
        assert_eq!(std::fs::read(data.join("sub/b")).unwrap(), b"b");
        assert_eq!(
            std::fs::read_link(data.join("link")).unwrap(),
            Path::new("/etc/shadow")
        );
        // Not empty now: a second mount leaves the user's changes alone.
        std::fs::write(data.join("a.conf"), b"changed").unwrap();
        resolve(&store, &specs, &layers).unwrap();
        assert_eq!(std::fs::read(data.join("a.conf")).unwrap(), b"changed");
        // No view directory or mount left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path().join("data/volumes"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("conf")]);
    }
}
