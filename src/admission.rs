//! Admission: how many sandboxes may be starting at the same moment on this
//! host, and how much microVM guest memory may be committed, so that many
//! `hull run`s at once queue instead of collapsing the host.
//!
//! Both are host-wide and daemonless, kept as files under one directory
//! (`HULL_ADMISSION_DIR`, default `/run/hull-admission`) shared by every
//! state dir:
//! - `start/N` for N below the limit: a run holds an exclusive `flock` on
//!   one of them from launching its sandbox until the agent answers. A run
//!   that finds every slot taken waits for one (and says so once).
//! - `memory/*`: one file per running microVM holding its guest MiB, under
//!   an exclusive `flock` for the sandbox's life. A new microVM whose RAM
//!   would take the total over the limit is refused.
//!
//! The kernel drops a `flock` when its holder exits, however it exits, so a
//! crashed or killed run frees its slot and its memory by itself.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::PathIoError;
use crate::sys;

/// Where the slot and reservation files live, unless `HULL_ADMISSION_DIR` says.
pub const DEFAULT_DIR: &str = "/run/hull-admission";
/// Guest memory may be committed up to this many times the host's memory:
/// a guest touches only what it uses (an idle 256 MiB busybox guest about
/// 40-50 MiB), so committing exactly the host's memory would refuse runs
/// long before memory runs short.
pub const DEFAULT_OVERCOMMIT: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    #[error(
        "refused: {request} MiB of guest memory would bring the microVMs' total to {total} MiB, over the limit of {limit} MiB (--max-guest-memory, HULL_MAX_GUEST_MEMORY)"
    )]
    OverCommitted {
        request: u64,
        total: u64,
        limit: u64,
    },
    #[error(
        "refused: {request} MiB of guest memory is more than this host has available ({available} MiB)"
    )]
    Unavailable { request: u64, available: u64 },
    #[error("interrupted by signal {0} while waiting for a start slot")]
    Interrupted(i32),
    #[error(transparent)]
    Io(#[from] PathIoError),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> AdmissionError {
    crate::error::io_at(what, path)
}

/// The host-wide limits one run applies. 0 means no limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Sandboxes (vm and ns) between launch and the agent's first answer.
    pub max_starting: u32,
    /// MiB of microVM guest RAM committed by running sandboxes.
    pub max_guest_memory_mib: u64,
    /// Where the slot and reservation files live.
    pub dir: PathBuf,
}

impl Limits {
    /// The limits given (flags or environment), each missing one derived
    /// from this host: two starting sandboxes per CPU, and twice MemTotal
    /// of guest memory.
    pub fn resolve(max_starting: Option<u32>, max_guest_memory_mib: Option<u64>) -> Limits {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Limits {
            max_starting: max_starting.unwrap_or_else(|| default_max_starting(cpus)),
            max_guest_memory_mib: max_guest_memory_mib.unwrap_or_else(|| {
                meminfo_mib("MemTotal").map_or(0, |m| m.saturating_mul(DEFAULT_OVERCOMMIT))
            }),
            dir: std::env::var_os("HULL_ADMISSION_DIR")
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(DEFAULT_DIR), PathBuf::from),
        }
    }
}

/// Two per CPU: a booting guest keeps one CPU busy, and a second one per
/// CPU covers the moments a boot waits (disk, the VMM's own set-up).
pub fn default_max_starting(cpus: u32) -> u32 {
    cpus.max(1).saturating_mul(2)
}

/// A field of /proc/meminfo, in MiB.
fn meminfo_mib(field: &str) -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text, field)
}

fn parse_meminfo(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == field).then(|| v.split_whitespace().next()?.parse::<u64>().ok())?
        })
        .map(|kib| kib / 1024)
}

fn make_dir(dir: &Path) -> Result<(), AdmissionError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("creating", dir))
}

fn open_file(path: &Path) -> Result<fs::File, AdmissionError> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(path)
        .map_err(io_err("opening", path))
}

/// flock(LOCK_EX), without blocking when `wait` is false. Ok(false): held
/// by someone else.
fn lock(f: &fs::File, wait: bool, path: &Path) -> Result<bool, AdmissionError> {
    let locked = if wait {
        sys::lock_exclusive(f).map(|()| true)
    } else {
        sys::try_lock_exclusive(f)
    };
    locked.map_err(io_err("locking", path))
}

/// One of the host's start slots, held until dropped.
#[derive(Debug)]
pub struct StartSlot {
    /// The locked slot file (None: no limit).
    _file: Option<fs::File>,
}

impl StartSlot {
    /// Takes a free start slot, waiting for one while all `limits.max_starting`
    /// are held. `on_wait(starting, limit)` is called once, when the run
    /// has to wait; `stop()` is polled while it waits and gives a signal
    /// that should end the wait.
    pub fn acquire(
        limits: &Limits,
        mut on_wait: impl FnMut(u32, u32),
        stop: impl Fn() -> Option<i32>,
    ) -> Result<StartSlot, AdmissionError> {
        if limits.max_starting == 0 {
            return Ok(StartSlot { _file: None });
        }
        let dir = limits.dir.join("start");
        make_dir(&dir)?;
        let files = (0..limits.max_starting)
            .map(|i| {
                let p = dir.join(i.to_string());
                open_file(&p).map(|f| (f, p))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Start at a slot of our own so that runs do not all contend for 0.
        let first = std::process::id() % limits.max_starting;
        let mut delay = Duration::from_millis(5);
        let mut told = false;
        loop {
            for k in 0..limits.max_starting {
                let i = (first + k) % limits.max_starting;
                let (f, p) = &files[i as usize];
                if lock(f, false, p)? {
                    let file = files.into_iter().nth(i as usize).map(|(f, _)| f);
                    log::debug!("start slot {i} of {} taken", limits.max_starting);
                    return Ok(StartSlot { _file: file });
                }
            }
            if !told {
                on_wait(limits.max_starting, limits.max_starting);
                told = true;
            }
            if let Some(sig) = stop() {
                return Err(AdmissionError::Interrupted(sig));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }
}

/// Guest memory committed for one microVM, held until dropped.
#[derive(Debug)]
pub struct MemoryReservation {
    /// The locked reservation file and its path (None: no limit).
    held: Option<(fs::File, PathBuf)>,
}

impl MemoryReservation {
    /// Reserves `mib` of guest memory, or refuses when the live reservations
    /// plus `mib` would pass `limits.max_guest_memory_mib`, or when `mib`
    /// alone is more than the host has available now.
    pub fn acquire(limits: &Limits, mib: u64) -> Result<MemoryReservation, AdmissionError> {
        Self::acquire_with(limits, mib, meminfo_mib("MemAvailable"))
    }

    fn acquire_with(
        limits: &Limits,
        mib: u64,
        available: Option<u64>,
    ) -> Result<MemoryReservation, AdmissionError> {
        if limits.max_guest_memory_mib == 0 {
            return Ok(MemoryReservation { held: None });
        }
        if let Some(available) = available.filter(|&a| mib > a) {
            return Err(AdmissionError::Unavailable {
                request: mib,
                available,
            });
        }
        let dir = limits.dir.join("memory");
        make_dir(&dir)?;
        // One reservation at a time decides, so two cannot both fit in the
        // last free MiB.
        let lock_path = limits.dir.join("memory.lock");
        let guard = open_file(&lock_path)?;
        lock(&guard, true, &lock_path)?;
        let committed = committed_in(&dir)?;
        let total = committed.saturating_add(mib);
        if total > limits.max_guest_memory_mib {
            return Err(AdmissionError::OverCommitted {
                request: mib,
                total,
                limit: limits.max_guest_memory_mib,
            });
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = dir.join(format!("{}-{nanos}", std::process::id()));
        let mut f = open_file(&path)?;
        lock(&f, true, &path)?;
        f.write_all(mib.to_string().as_bytes())
            .map_err(io_err("writing", &path))?;
        Ok(MemoryReservation {
            held: Some((f, path)),
        })
    }
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        if let Some((_file, path)) = self.held.take() {
            // Removed before the lock goes with the file: a reader that
            // opened it meanwhile finds it unlocked and skips it.
            let _ = fs::remove_file(path);
        }
    }
}

/// Sums the reservations in `dir` whose holders live (hold their lock);
/// removes the ones whose holders are gone.
fn committed_in(dir: &Path) -> Result<u64, AdmissionError> {
    let mut total = 0u64;
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let path = entry.map_err(io_err("listing", dir))?.path();
        let Ok(f) = fs::File::open(&path) else {
            continue; // released meanwhile
        };
        if lock(&f, false, &path)? {
            // Its holder is gone (a flock dies with its process).
            let _ = fs::remove_file(&path);
            continue;
        }
        let mib = fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        total = total.saturating_add(mib);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Barrier};

    fn limits(dir: &Path, starting: u32, memory: u64) -> Limits {
        Limits {
            max_starting: starting,
            max_guest_memory_mib: memory,
            dir: dir.to_path_buf(),
        }
    }

    #[test]
    fn defaults_follow_the_host() {
        assert_eq!(default_max_starting(0), 2);
        assert_eq!(default_max_starting(4), 8);
        let text = "MemTotal:       24576000 kB\nMemAvailable:    1048576 kB\n";
        assert_eq!(parse_meminfo(text, "MemTotal"), Some(24000));
        assert_eq!(parse_meminfo(text, "MemAvailable"), Some(1024));
        assert_eq!(parse_meminfo(text, "MemFree"), None);
        let l = Limits::resolve(Some(3), None);
        assert_eq!(l.max_starting, 3);
        assert!(l.max_guest_memory_mib > 0, "MemTotal is readable here");
    }

    #[test]
    fn start_slots_never_exceed_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let l = Arc::new(limits(tmp.path(), 2, 0));
        let running = Arc::new(AtomicU32::new(0));
        let peak = Arc::new(AtomicU32::new(0));
        let waited = Arc::new(AtomicU32::new(0));
        let start = Arc::new(Barrier::new(6));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (l, running, peak, waited, start) = (
                    l.clone(),
                    running.clone(),
                    peak.clone(),
                    waited.clone(),
                    start.clone(),
                );
                std::thread::spawn(move || {
                    start.wait();
                    // Each thread opens its own files: flock is per open
                    // file, as it is between processes.
                    let slot = StartSlot::acquire(
                        &l,
                        |n, m| {
                            assert_eq!((n, m), (2, 2));
                            waited.fetch_add(1, Ordering::SeqCst);
                        },
                        || None,
                    )
                    .unwrap();
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                    running.fetch_sub(1, Ordering::SeqCst);
                    drop(slot);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert!(
            waited.load(Ordering::SeqCst) >= 4,
            "four of six had to wait"
        );
    }

    #[test]
    fn a_wait_ends_on_a_signal() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits(tmp.path(), 1, 0);
        let _held =
            StartSlot::acquire(&l, |_, _| panic!("the first does not wait"), || None).unwrap();
        let err = StartSlot::acquire(&l, |_, _| {}, || Some(libc::SIGINT)).unwrap_err();
        assert!(matches!(err, AdmissionError::Interrupted(libc::SIGINT)));
        assert_eq!(
            err.to_string(),
            "interrupted by signal 2 while waiting for a start slot"
        );
    }

    #[test]
    fn no_limit_takes_no_files() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits(&tmp.path().join("absent"), 0, 0);
        let slot = StartSlot::acquire(&l, |_, _| panic!("no wait"), || None).unwrap();
        assert!(slot._file.is_none());
        let r = MemoryReservation::acquire_with(&l, 1 << 20, None).unwrap();
        assert!(r.held.is_none());
        assert!(!tmp.path().join("absent").exists());
    }

    #[test]
    fn memory_is_refused_past_the_limit_and_freed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits(tmp.path(), 0, 1024);
        let a = MemoryReservation::acquire_with(&l, 512, None).unwrap();
        let b = MemoryReservation::acquire_with(&l, 256, None).unwrap();
        assert_eq!(committed_in(&tmp.path().join("memory")).unwrap(), 768);
        let err = MemoryReservation::acquire_with(&l, 512, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "refused: 512 MiB of guest memory would bring the microVMs' total to 1280 MiB, over the limit of 1024 MiB (--max-guest-memory, HULL_MAX_GUEST_MEMORY)"
        );
        drop(a);
        assert_eq!(committed_in(&tmp.path().join("memory")).unwrap(), 256);
        let _c = MemoryReservation::acquire_with(&l, 512, None).unwrap();
        drop(b);
        assert_eq!(committed_in(&tmp.path().join("memory")).unwrap(), 512);
    }

    #[test]
    fn memory_beyond_what_is_available_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits(tmp.path(), 0, 1 << 30);
        let err = MemoryReservation::acquire_with(&l, 2048, Some(1000)).unwrap_err();
        assert!(matches!(
            err,
            AdmissionError::Unavailable {
                request: 2048,
                available: 1000
            }
        ));
    }

    #[test]
    fn a_dead_holders_reservation_is_not_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits(tmp.path(), 0, 1024);
        // What a killed run leaves: the file, with no lock on it.
        let dir = tmp.path().join("memory");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("12345-1"), "1000").unwrap();
        assert_eq!(committed_in(&tmp.path().join("memory")).unwrap(), 0);
        assert!(!dir.join("12345-1").exists(), "the stale file is removed");
        let _r = MemoryReservation::acquire_with(&l, 1000, None).unwrap();
    }

    #[test]
    fn a_dead_holders_start_slot_is_free() {
        let tmp = tempfile::tempdir().unwrap();
        let l = limits(tmp.path(), 1, 0);
        // A child process takes the only slot and is killed holding it.
        let dir = tmp.path().join("start");
        fs::create_dir_all(&dir).unwrap();
        // -o: only flock(1) itself holds the lock, not `cat`, which ends
        // when its stdin (ours) closes.
        let mut child = std::process::Command::new("flock")
            .arg("-o")
            .arg(dir.join("0"))
            .arg("cat")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("flock(1) from util-linux");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let f = open_file(&dir.join("0")).unwrap();
            if !lock(&f, false, &dir.join("0")).unwrap() {
                break; // the child holds it
            }
            drop(f);
            assert!(
                std::time::Instant::now() < deadline,
                "flock(1) never locked"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let waited = AtomicU32::new(0);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let stdin = child.stdin.take();
            child.kill().unwrap();
            child.wait().unwrap();
            drop(stdin);
        });
        let slot = StartSlot::acquire(
            &l,
            |_, _| {
                waited.fetch_add(1, Ordering::SeqCst);
            },
            || None,
        )
        .unwrap();
        killer.join().unwrap();
        assert!(slot._file.is_some());
        assert_eq!(waited.load(Ordering::SeqCst), 1);
    }
}
