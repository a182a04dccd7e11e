//! Named volumes: directories under the data dir (`volumes/NAME/_data`, with
//! `volumes/NAME/volume.json` beside it), as docker's local driver keeps
//! them. A volume outlives the containers that mount it; `rm` refuses one in
//! use, and the caller says which are (see [`super::volumes_in_use`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::spec::{MountSpecError, validate_volume_name};
use crate::error::PathIoError;

/// The folder under the data dir that holds the volumes.
const VOLUMES_DIR: &str = "volumes";
/// Each volume's content, under its folder.
const DATA_DIR: &str = "_data";
/// Each volume's record, under its folder.
const RECORD: &str = "volume.json";

/// What `volume inspect` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    /// The host directory the volume's content lives in.
    pub mountpoint: PathBuf,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// An anonymous volume (`-v /data`): `prune` takes it with the others.
    #[serde(default)]
    pub anonymous: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error(transparent)]
    Name(#[from] MountSpecError),
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("volume {name} is in use by container(s) {containers}")]
    InUse { name: String, containers: String },
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("reading the record {}", path.display())]
    Record {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The named volumes under one data dir.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

/// See [`crate::error::io_at`].
fn io_at(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    crate::error::io_at(what, path)
}

impl VolumeStore {
    pub fn new(data_dir: &Path) -> VolumeStore {
        VolumeStore {
            root: data_dir.join(VOLUMES_DIR),
        }
    }

    /// Creates volume `name`, or returns the one of that name (docker's
    /// `volume create` of an existing name is not an error). The bool says
    /// whether it was created now.
    pub fn create(&self, name: &str, anonymous: bool) -> Result<(Volume, bool), VolumeError> {
        validate_volume_name(name)?;
        if let Ok(v) = self.inspect(name) {
            return Ok((v, false));
        }
        let dir = self.root.join(name);
        let data = dir.join(DATA_DIR);
        std::fs::create_dir_all(&data).map_err(io_at("creating the volume directory", &data))?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let volume = Volume {
            name: name.into(),
            mountpoint: data,
            created,
            anonymous,
        };
        let record = dir.join(RECORD);
        let tmp = dir.join(format!(".{RECORD}.tmp"));
        let json = serde_json::to_vec_pretty(&volume).expect("a Volume serializes");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &record))
            .map_err(io_at("writing the volume record", &record))?;
        Ok((volume, true))
    }

    /// Volume `name`'s record.
    pub fn inspect(&self, name: &str) -> Result<Volume, VolumeError> {
        validate_volume_name(name)?;
        let path = self.root.join(name).join(RECORD);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.into()));
            }
            Err(source) => {
                return Err(io_at("reading the volume record", &path)(source));
            }
        };
        serde_json::from_slice(&data).map_err(|source| VolumeError::Record { path, source })
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(io_at("listing the volumes in", &self.root)(source));
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_volume_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names.iter().filter_map(|n| self.inspect(n).ok()).collect())
    }

    /// Removes volume `name` and its content, unless a container in
    /// `in_use` (volume name -> container names) mounts it.
    pub fn remove(
        &self,
        name: &str,
        in_use: &std::collections::BTreeMap<String, BTreeSet<String>>,
    ) -> Result<(), VolumeError> {
        self.inspect(name)?;
        if let Some(users) = in_use.get(name).filter(|u| !u.is_empty()) {
            return Err(VolumeError::InUse {
                name: name.into(),
                containers: users.iter().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        let dir = self.root.join(name);
        std::fs::remove_dir_all(&dir).map_err(io_at("removing the volume directory", &dir))
    }

    /// Removes every volume no container mounts; returns their names.
    pub fn prune(
        &self,
        in_use: &std::collections::BTreeMap<String, BTreeSet<String>>,
    ) -> Result<Vec<String>, VolumeError> {
        let mut removed = Vec::new();
        for v in self.list()? {
            if in_use.get(&v.name).is_none_or(BTreeSet::is_empty) {
                self.remove(&v.name, in_use)?;
                removed.push(v.name);
            }
        }
        Ok(removed)
    }

    /// Whether the volume's content directory is empty (docker seeds an
    /// empty volume from the image on its first mount).
    pub fn is_empty(&self, volume: &Volume) -> Result<bool, VolumeError> {
        std::fs::read_dir(&volume.mountpoint)
            .map(|mut d| d.next().is_none())
            .map_err(io_at("reading the volume directory", &volume.mountpoint))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn create_is_idempotent_and_the_volume_lives_under_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path());
        let (v, created) = store.create("data", false).unwrap();
        assert!(created);
        assert_eq!(v.mountpoint, dir.path().join("volumes/data/_data"));
        assert!(v.mountpoint.is_dir());
        std::fs::write(v.mountpoint.join("f"), b"kept").unwrap();
        let (again, created) = store.create("data", false).unwrap();
        assert!(!created);
        assert_eq!(again, v);
        assert_eq!(std::fs::read(v.mountpoint.join("f")).unwrap(), b"kept");
        assert!(!store.is_empty(&v).unwrap());
    }

    #[test]
    fn names_are_checked_before_any_path_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path());
        for bad in ["../escape", "a/b", ".hidden", ""] {
            assert!(matches!(
                store.create(bad, false).unwrap_err(),
                VolumeError::Name(_)
            ));
        }
        assert!(!dir.path().join("escape").exists());
        assert!(matches!(
            store.inspect("nope").unwrap_err(),
            VolumeError::NotFound(_)
        ));
    }

    #[test]
    fn rm_refuses_a_volume_in_use_and_prune_spares_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(dir.path());
        store.create("used", false).unwrap();
        store.create("idle", true).unwrap();
        let in_use = BTreeMap::from([("used".to_string(), BTreeSet::from(["web".to_string()]))]);
        let err = store.remove("used", &in_use).unwrap_err();
        assert_eq!(err.to_string(), "volume used is in use by container(s) web");
        assert_eq!(store.prune(&in_use).unwrap(), vec!["idle".to_string()]);
        let names: Vec<String> = store.list().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, vec!["used".to_string()]);
        store.remove("used", &BTreeMap::new()).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(
            store.remove("used", &BTreeMap::new()).unwrap_err(),
            VolumeError::NotFound(_)
        ));
    }
}
