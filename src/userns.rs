//! User namespaces for `--isolation ns`: each container gets 65536 host
//! uids and gids of its own, so that root in one container is an
//! unprivileged id on the host and in no other container.
//!
//! Ranges come from a pool (`HULL_USERNS_RANGE=FIRST:COUNT`, default
//! 2^30 and 2^30 ids: 16384 ranges) and are claimed with one file per range
//! under `HULL_USERNS_DIR` (default `/run/hull-userns`), shared by every state
//! dir on the host. A container releases its range when its sandbox ends;
//! a claim whose container directory is gone is taken over.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::PathIoError;

/// Ids per container: uid and gid 0..65535 inside.
pub const SIZE: u32 = 65536;
const DEFAULT_FIRST: u32 = 1 << 30;
const DEFAULT_COUNT: u32 = 1 << 30;
/// Where a container records its range (in its state dir).
const RECORD: &str = "userns.json";

/// `--userns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A user namespace with ids of its own where the host allows one; host
    /// ids (with a warning) where it does not.
    Auto,
    /// A user namespace with ids of its own, or an error.
    Private,
    /// No user namespace: root in the container is root on the host.
    Host,
}

/// A claimed range: container id 0 is host id `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub slot: u32,
    pub base: u32,
    pub size: u32,
}

impl Range {
    /// `BASE:SIZE`, as hull-agent takes it.
    pub fn arg(&self) -> String {
        format!("{}:{}", self.base, self.size)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    #[error("user namespaces are disabled on this host ({0}): use --userns host")]
    Disabled(String),
    #[error("all {0} user namespace id ranges are in use (HULL_USERNS_RANGE)")]
    Exhausted(u32),
    #[error("bad HULL_USERNS_RANGE {0:?}: want FIRST:COUNT, COUNT a multiple of 65536")]
    BadPool(String),
    #[error(transparent)]
    Io(#[from] PathIoError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UsernsError {
    crate::error::io_at(what, path)
}

/// Why this host cannot give a container a user namespace, if it cannot.
pub fn host_refuses() -> Option<String> {
    let max = fs::read_to_string("/proc/sys/user/max_user_namespaces").ok();
    match max.as_deref().map(str::trim) {
        None => Some("no /proc/sys/user/max_user_namespaces".into()),
        Some("0") => Some("user.max_user_namespaces is 0".into()),
        Some(_) => None,
    }
}

fn pool_dir() -> PathBuf {
    std::env::var_os("HULL_USERNS_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/run/hull-userns"), PathBuf::from)
}

/// (first id, number of ranges).
fn pool() -> Result<(u32, u32), UsernsError> {
    let Ok(v) = std::env::var("HULL_USERNS_RANGE") else {
        return Ok((DEFAULT_FIRST, DEFAULT_COUNT / SIZE));
    };
    parse_pool(&v).ok_or(UsernsError::BadPool(v))
}

fn parse_pool(v: &str) -> Option<(u32, u32)> {
    let (f, c) = v.split_once(':')?;
    let (first, count) = (f.trim().parse::<u32>().ok()?, c.trim().parse::<u32>().ok()?);
    let fits = first > 0 && first.checked_add(count).is_some();
    (fits && count >= SIZE && count % SIZE == 0).then_some((first, count / SIZE))
}

/// The pool's lock, held while a claim is made or released.
struct Lock {
    _file: fs::File,
}

impl Lock {
    fn take(dir: &Path) -> Result<Lock, UsernsError> {
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("creating", dir))?;
        }
        let path = dir.join(".lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        crate::sys::lock_exclusive(&f).map_err(io_err("locking", &path))?;
        Ok(Lock { _file: f })
    }
}

/// Claims a free range for the container whose state dir is `owner`, and
/// records it there.
pub fn claim(owner: &Path) -> Result<Range, UsernsError> {
    let (first, slots) = pool()?;
    claim_in(&pool_dir(), first, slots, owner)
}

fn claim_in(dir: &Path, first: u32, slots: u32, owner: &Path) -> Result<Range, UsernsError> {
    let _lock = Lock::take(dir)?;
    let me = owner.display().to_string();
    for slot in 0..slots {
        let path = dir.join(slot.to_string());
        let free = match fs::read_to_string(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(io_err("reading", &path)(e)),
            // Taken over when the container that claimed it is gone.
            Ok(holder) => !Path::new(holder.trim()).is_dir(),
        };
        if !free {
            continue;
        }
        let range = Range {
            slot,
            base: first + slot * SIZE,
            size: SIZE,
        };
        let record = owner.join(RECORD);
        let json = serde_json::to_vec(&range).expect("range serializes");
        fs::write(&record, json).map_err(io_err("writing", &record))?;
        let mut f = fs::File::create(&path).map_err(io_err("claiming", &path))?;
        f.write_all(me.as_bytes())
            .map_err(io_err("claiming", &path))?;
        return Ok(range);
    }
    Err(UsernsError::Exhausted(slots))
}

/// Releases the range the container in `owner` claimed, if it holds one.
pub fn release(owner: &Path) {
    release_in(&pool_dir(), owner)
}

fn release_in(dir: &Path, owner: &Path) {
    let record = owner.join(RECORD);
    let Some(range) = fs::read(&record)
        .ok()
        .and_then(|j| serde_json::from_slice::<Range>(&j).ok())
    else {
        return;
    };
    let Ok(_lock) = Lock::take(dir) else {
        return;
    };
    let path = dir.join(range.slot.to_string());
    let me = owner.display().to_string();
    if fs::read_to_string(&path).is_ok_and(|h| h.trim() == me) {
        let _ = fs::remove_file(&path);
    }
    let _ = fs::remove_file(&record);
}

/// The id map a process runs under, as `INSIDE:OUTSIDE:COUNT` lines joined
/// by commas (`0:0:4294967295` is the host's own).
pub fn map_of(pid: u32) -> Option<String> {
    let map = fs::read_to_string(format!("/proc/{pid}/uid_map")).ok()?;
    let lines: Vec<String> = map
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(":"))
        .filter(|l| !l.is_empty())
        .collect();
    Some(lines.join(","))
}

/// Whether `map` (from `map_of`) is the host's own ids.
pub fn is_host_map(map: &str) -> bool {
    map == "0:0:4294967295"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_ranges_parse() {
        assert_eq!(parse_pool("100000:65536"), Some((100000, 1)));
        assert_eq!(parse_pool("1073741824:1073741824"), Some((1 << 30, 16384)));
        assert_eq!(parse_pool("100000:1000"), None);
        assert_eq!(parse_pool("0:65536"), None);
        assert_eq!(parse_pool("4294901760:131072"), None);
        assert_eq!(parse_pool("lots"), None);
    }

    #[test]
    fn ranges_are_distinct_released_and_taken_over() {
        let pool = tempfile::tempdir().unwrap();
        let owners = tempfile::tempdir().unwrap();
        let owner = |n: &str| {
            let d = owners.path().join(n);
            fs::create_dir_all(&d).unwrap();
            d
        };
        let (a, b, c) = (owner("a"), owner("b"), owner("c"));
        let ra = claim_in(pool.path(), 100_000, 2, &a).unwrap();
        let rb = claim_in(pool.path(), 100_000, 2, &b).unwrap();
        assert_eq!((ra.base, rb.base), (100_000, 165_536));
        assert!(matches!(
            claim_in(pool.path(), 100_000, 2, &c),
            Err(UsernsError::Exhausted(2))
        ));
        release_in(pool.path(), &a);
        assert!(!a.join(RECORD).exists());
        assert_eq!(claim_in(pool.path(), 100_000, 2, &c).unwrap().slot, 0);
        // b's container directory goes without releasing: its range is free.
        fs::remove_dir_all(&b).unwrap();
        let a2 = claim_in(pool.path(), 100_000, 2, &a).unwrap();
        assert_eq!(a2.slot, 1);
        // A release by a container that no longer holds the slot leaves it.
        fs::create_dir_all(&b).unwrap();
        fs::write(b.join(RECORD), serde_json::to_vec(&rb).unwrap()).unwrap();
        release_in(pool.path(), &b);
        assert!(pool.path().join("1").exists());
    }
}
