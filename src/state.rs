//! Per-container state, daemonless: one directory per container under the state
//! dir (`--state-dir`, `$HULL_STATE_DIR`, default `/run/hull`), holding
//! `state.json`, the sockets and the logs. Names are claimed with an atomic
//! symlink under `names/`, so two `hull run --name x` at once cannot both win.
//! Every write of `state.json` is a temp file + fsync + rename: a hull killed at
//! any point leaves the previous or the new state, never half of one.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use crate::process::ProcessId;
use crate::sandbox::Isolation;

/// Default state dir (runtime state: gone after a reboot, as the containers are).
pub const DEFAULT_STATE_DIR: &str = "/run/hull";
/// What the container wrote to stdout, as its monitor recorded it (raw bytes).
pub const STDOUT_LOG: &str = "stdout.log";
/// What the container wrote to stderr, as its monitor recorded it (raw bytes).
pub const STDERR_LOG: &str = "stderr.log";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("container id prefix {prefix:?} is ambiguous: it matches {matches}")]
    Ambiguous { prefix: String, matches: String },
    #[error("the container name {0:?} is already in use")]
    NameInUse(String),
    #[error("invalid container name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128 characters")]
    InvalidName(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("corrupt state file {path}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Created,
    Running,
    Exited,
}

/// What `hull ps` and `hull inspect` show, and what the other commands act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub isolation: Isolation,
    /// Seconds since the Unix epoch.
    pub created: u64,
    pub status: Status,
    /// The process that holds the container: the VMM (vm) or the agent (ns).
    pub sandbox: Option<ProcessId>,
    /// The hull process that relays the container's stdio and records its end.
    pub monitor: Option<ProcessId>,
    /// The ids the container runs under (ns): `INSIDE:HOST:COUNT`, e.g.
    /// `0:1073741824:65536` in a user namespace, `0:0:4294967295` without.
    #[serde(default)]
    pub id_map: Option<String>,
    /// How its microVM started: `restore` (from a template) or `cold`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<crate::sandbox::Boot>,
    /// Why a microVM cold-booted (`--cold-boot`, or what no template holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_reason: Option<String>,
    pub exit_code: Option<i32>,
    /// Why the container ended, when it is not simply its process exiting.
    pub exit_reason: Option<String>,
    /// Seconds since the Unix epoch.
    pub finished: Option<u64>,
}

impl ContainerState {
    pub fn new(
        id: String,
        name: String,
        image: String,
        command: Vec<String>,
        isolation: Isolation,
    ) -> Self {
        ContainerState {
            id,
            name,
            image,
            command,
            isolation,
            created: now(),
            status: Status::Created,
            sandbox: None,
            boot: None,
            boot_reason: None,
            monitor: None,
            id_map: None,
            exit_code: None,
            exit_reason: None,
            finished: None,
        }
    }

    /// The first 12 characters of the id, as docker shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    /// Marks the container exited, keeping the first recorded reason.
    pub fn mark_exited(&mut self, code: i32, reason: Option<String>) {
        if self.status != Status::Exited {
            self.status = Status::Exited;
            self.exit_code = Some(code);
            self.exit_reason = reason;
            self.finished = Some(now());
        }
    }
}

/// The state dir and the containers in it.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating it if needed, mode 0700) the state dir at `root`.
    pub fn open(root: &Path) -> Result<StateDir, StateError> {
        for d in [
            root.to_path_buf(),
            root.join("containers"),
            root.join("names"),
        ] {
            fs::create_dir_all(&d).map_err(io_err("creating", &d))?;
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(io_err("setting permissions of", root))?;
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    /// The state dir itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of container `id` (sockets, logs, state.json).
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    /// Creates a new container: a fresh id, its directory, the name claimed
    /// (a generated one when `name` is None), and its first state.json.
    pub fn create(
        &self,
        name: Option<&str>,
        image: &str,
        command: &[String],
        isolation: Isolation,
    ) -> Result<ContainerState, StateError> {
        let id = new_id()?;
        let name = match name {
            Some(n) => {
                validate_name(n)?;
                n.to_string()
            }
            None => format!("hull_{}", &id[..8]),
        };
        let dir = self.dir(&id);
        fs::create_dir(&dir).map_err(io_err("creating", &dir))?;
        let link = self.root.join("names").join(&name);
        if let Err(e) = std::os::unix::fs::symlink(&id, &link) {
            let _ = fs::remove_dir_all(&dir);
            return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                StateError::NameInUse(name)
            } else {
                StateError::Io {
                    what: "claiming name",
                    path: link,
                    source: e,
                }
            });
        }
        let state = ContainerState::new(id, name, image.to_string(), command.to_vec(), isolation);
        self.save(&state)?;
        Ok(state)
    }

    /// Writes `state.json` atomically.
    pub fn save(&self, state: &ContainerState) -> Result<(), StateError> {
        let path = self.dir(&state.id).join("state.json");
        // One temp file per writer: a monitor and a `ps` reconciling the same
        // container must not write into each other's file.
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let data = serde_json::to_vec_pretty(state).expect("state serializes");
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(io_err("writing", &path))
    }

    /// Loads container `id` (a full id) as it was last saved (see
    /// `Container::load`, which also checks its processes).
    pub fn load(&self, id: &str) -> Result<ContainerState, StateError> {
        let path = self.dir(id).join("state.json");
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()));
            }
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        serde_json::from_slice(&data).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Every container, oldest first. Directories without a readable state
    /// (a `create` interrupted before its first save) are skipped.
    pub fn list(&self) -> Result<Vec<ContainerState>, StateError> {
        let mut all = Vec::new();
        for id in self.ids()? {
            match self.load(&id) {
                Ok(s) => all.push(s),
                Err(StateError::NotFound(_)) => {}
                Err(e) => log::warn!("{}", crate::error::chain(&e)),
            }
        }
        all.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    fn ids(&self) -> Result<Vec<String>, StateError> {
        let dir = self.root.join("containers");
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
            let entry = entry.map_err(io_err("listing", &dir))?;
            if let Some(name) = entry.file_name().to_str() {
                if is_id(name) {
                    ids.push(name.to_string());
                }
            }
        }
        Ok(ids)
    }

    /// Finds a container by name, full id or unique id prefix, as docker does.
    pub fn resolve(&self, key: &str) -> Result<ContainerState, StateError> {
        if let Ok(target) = fs::read_link(self.root.join("names").join(key)) {
            if let Some(id) = target.to_str() {
                return self.load(id);
            }
        }
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StateError::NotFound(key.to_string()));
        }
        let matches: Vec<String> = self
            .ids()?
            .into_iter()
            .filter(|id| id.starts_with(key))
            .collect();
        match matches.as_slice() {
            [] => Err(StateError::NotFound(key.to_string())),
            [one] => self.load(one),
            many => Err(StateError::Ambiguous {
                prefix: key.to_string(),
                matches: many.iter().map(|m| &m[..12]).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// Removes everything hull keeps for the container: its directory and name.
    pub fn remove(&self, state: &ContainerState) -> Result<(), StateError> {
        let link = self.root.join("names").join(&state.name);
        if fs::read_link(&link).ok().as_deref() == Some(Path::new(&state.id)) {
            fs::remove_file(&link).map_err(io_err("removing", &link))?;
        }
        let dir = self.dir(&state.id);
        // A reader reconciling the container (`ps`) may add a temp file
        // while the directory is being emptied: try again.
        let mut tries = 0;
        loop {
            match fs::remove_dir_all(&dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty && tries < 5 => {
                    tries += 1;
                }
                Err(e) => return Err(io_err("removing", &dir)(e)),
            }
        }
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// 64 lowercase hex characters from the kernel's random pool.
fn new_id() -> Result<String, StateError> {
    let mut bytes = [0u8; 32];
    crate::sys::getrandom(&mut bytes).map_err(|source| StateError::Io {
        what: "getrandom for",
        path: PathBuf::from("container id"),
        source,
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Docker's rule for container names.
pub fn validate_name(name: &str) -> Result<(), StateError> {
    let mut chars = name.chars();
    let ok = name.len() <= 128
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StateError::InvalidName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> (tempfile::TempDir, StateDir) {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(&t.path().join("state")).unwrap();
        (t, s)
    }

    #[test]
    fn create_save_load_round_trip() {
        let (_t, sd) = dir();
        let mut c = sd
            .create(Some("web"), "busybox", &["true".into()], Isolation::Vm)
            .unwrap();
        assert!(is_id(&c.id));
        assert_eq!(c.status, Status::Created);
        c.status = Status::Running;
        c.sandbox = ProcessId::of(std::process::id() as i32);
        sd.save(&c).unwrap();
        let back = sd.load(&c.id).unwrap();
        assert_eq!(back, c);
        assert_eq!(sd.resolve("web").unwrap().id, c.id);
        assert_eq!(sd.resolve(&c.id[..5]).unwrap().id, c.id);
    }

    #[test]
    fn names_are_unique_and_validated() {
        let (_t, sd) = dir();
        sd.create(Some("db"), "i", &[], Isolation::Ns).unwrap();
        assert!(matches!(
            sd.create(Some("db"), "i", &[], Isolation::Ns),
            Err(StateError::NameInUse(_))
        ));
        assert!(matches!(
            sd.create(Some("../x"), "i", &[], Isolation::Ns),
            Err(StateError::InvalidName(_))
        ));
        assert!(matches!(
            sd.create(Some("-x"), "i", &[], Isolation::Ns),
            Err(StateError::InvalidName(_))
        ));
        // The losing create left no directory behind.
        assert_eq!(sd.list().unwrap().len(), 1);
    }

    #[test]
    fn unknown_and_ambiguous_keys() {
        let (_t, sd) = dir();
        assert!(matches!(sd.resolve("nope"), Err(StateError::NotFound(_))));
        let mut ids = Vec::new();
        for _ in 0..40 {
            ids.push(sd.create(None, "i", &[], Isolation::Vm).unwrap().id);
        }
        // With 40 ids, some single hex digit is the prefix of two of them.
        let digit = (0..16)
            .map(|d| format!("{d:x}"))
            .find(|d| ids.iter().filter(|i| i.starts_with(d.as_str())).count() > 1)
            .unwrap();
        assert!(matches!(
            sd.resolve(&digit),
            Err(StateError::Ambiguous { .. })
        ));
    }

    #[test]
    fn remove_leaves_nothing() {
        let (t, sd) = dir();
        let c = sd.create(Some("gone"), "i", &[], Isolation::Ns).unwrap();
        fs::write(sd.dir(&c.id).join("stdout.log"), b"x").unwrap();
        sd.remove(&c).unwrap();
        assert!(sd.list().unwrap().is_empty());
        let names: Vec<_> = fs::read_dir(t.path().join("state/names"))
            .unwrap()
            .collect();
        assert!(names.is_empty());
        assert!(matches!(sd.resolve("gone"), Err(StateError::NotFound(_))));
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let (_t, sd) = dir();
        let c = sd.create(None, "i", &[], Isolation::Ns).unwrap();
        fs::write(sd.dir(&c.id).join("state.json"), b"{").unwrap();
        let e = sd.load(&c.id).unwrap_err().to_string();
        assert!(
            e.contains("corrupt state file") && e.contains("state.json"),
            "{e}"
        );
    }
}
