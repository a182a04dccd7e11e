//! Snapshots of a whole VM: a directory with two files.
//!
//! - `state`: one header line, `hull-snapshot <version> sha256=<hex>`, then
//!   a [`SnapshotState`] in bincode (serde's data, a compact binary
//!   encoding: far cheaper to parse at every restore than JSON, whose
//!   number arrays for the XSAVE area and the LAPIC took most of a
//!   restore's parsing), whose SHA-256 the header gives: the
//!   vCPUs, the VM (irqchip, PIT, clock), the devices, the serial port, the
//!   memory layout, and what the snapshot was made from ([`Origin`]).
//! - `memory`: guest RAM, region after region (zero pages left as holes),
//!   mapped private (copy on write) by every VM restored from it. The
//!   state lists where its data is ([`SnapshotState::data`]); a restore maps
//!   only that from the file and gives the rest of guest RAM fresh
//!   anonymous memory, so a page the template never touched costs no read
//!   of the file (nor a page-cache page of zeros) when a clone first uses
//!   it.
//!
//! Everything in a snapshot is untrusted input: a snapshot of another
//! version, from another kernel, agent, CPU model, vCPU count or memory
//! size, or a truncated or corrupted one, is refused before any of it is
//! given to KVM.

pub mod origin;
pub mod vcpu_state;
pub mod vm_state;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::devices::legacy::SerialState;
use crate::devices::virtio::mmio::MmioTransportState;
pub use origin::{Expected, Origin};
use vcpu_state::VcpuState;
use vm_state::VmState;

/// Version of the snapshot format; another one is refused. 1 was JSON,
/// 2 bincode of the same types, 3 adds the memory file's data extents.
pub const SNAPSHOT_VERSION: u32 = 3;
/// The console line hull's agent writes once it listens for the host and
/// before any container exists (`hull_agent::protocol::READY_LINE`, which
/// hull already waits for): the snapshot point. The UART write of its
/// newline stops that vCPU at that very instruction, and the others are
/// kicked out of the guest at once. (The agent's boot-timer mark would be
/// the more direct signal, but hull's guest kernel has no ioperm(2), so
/// user space cannot write to the port.)
pub const SNAPSHOT_LINE: &str = "hull-agent: ready";
const MAGIC: &str = "hull-snapshot";
pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";
/// A state file larger than this is not one of ours (a few hundred KiB
/// for 32 vCPUs and every device).
const MAX_STATE_BYTES: u64 = 64 << 20;
const PAGE: usize = 4096;
static ZERO_PAGE: [u8; PAGE] = [0; PAGE];
/// Holes shorter than this between two runs of data are listed as data
/// (mapped from the file, which reads as zeros there): each run is one
/// mmap at every restore (an idle 1 GiB guest's ~190 runs become ~5), and
/// a hole shorter than 2 MiB could not hold a huge page anyway.
const MERGE_HOLES_BELOW: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a hull snapshot state file")]
    NotSnapshot(PathBuf),
    #[error("snapshot {path} has format version {found}, this hull-vmm reads {SNAPSHOT_VERSION}")]
    Version { path: PathBuf, found: String },
    #[error("snapshot {0} is corrupted (its state does not match its checksum)")]
    Checksum(PathBuf),
    #[error("snapshot {path} has an unreadable state")]
    Parse {
        path: PathBuf,
        source: bincode::Error,
    },
    #[error("snapshot {path} is inconsistent: {what}")]
    Inconsistent { path: PathBuf, what: String },
    #[error(
        "snapshot {path}: its memory file is {found} bytes, the state says {want} (truncated?)"
    )]
    MemorySize {
        path: PathBuf,
        found: u64,
        want: u64,
    },
    #[error("snapshot {path} was made {what}")]
    Origin { path: PathBuf, what: String },
    #[error("writing the snapshot's guest memory to {path}")]
    MemoryWrite {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One guest RAM region and where its bytes are in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRange {
    pub gpa: u64,
    pub len: u64,
    pub offset: u64,
}

/// Everything of a paused VM except its memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    pub origin: Origin,
    pub memory: Vec<MemoryRange>,
    /// The memory file's data: (offset, length) of each run of pages that
    /// may hold something other than zeros, in order, page-aligned, not
    /// overlapping; every other byte of the file is zero.
    pub data: Vec<(u64, u64)>,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialState,
    pub devices: Vec<MmioTransportState>,
}

/// A snapshot opened for restore: its state checked, its memory file open
/// (so it can be taken before a jail hides the directory).
pub struct Snapshot {
    pub state: SnapshotState,
    pub memory: File,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_path_buf();
    move |source| SnapshotError::Io { what, path, source }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The memory file's layout for `mem`: regions back to back.
pub fn layout(mem: &GuestMemoryMmap) -> Vec<MemoryRange> {
    let mut offset = 0;
    mem.iter()
        .map(|r| {
            let range = MemoryRange {
                gpa: r.start_addr().0,
                len: r.len(),
                offset,
            };
            offset += r.len();
            range
        })
        .collect()
}

/// Writes guest memory to `path`, leaving all-zero pages as holes; the
/// runs of data it wrote (see [`SnapshotState::data`]).
pub fn write_memory(mem: &GuestMemoryMmap, path: &Path) -> Result<Vec<(u64, u64)>, SnapshotError> {
    let werr = |source| SnapshotError::MemoryWrite {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::create(path).map_err(io("create", path))?;
    let mut total = 0u64;
    let mut data = DataRuns::default();
    for r in mem.iter() {
        let len = crate::arch::x86_64::u64_to_usize(r.len());
        let host = r
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| werr(std::io::Error::other("region has no host address")))?;
        // SAFETY: the region is a live mapping of `len` bytes owned by
        // `mem`; every vCPU is paused, so nothing writes it meanwhile.
        let bytes = unsafe { std::slice::from_raw_parts(host.cast_const(), len) };
        let mut at = total;
        for page in bytes.chunks(PAGE) {
            // A slice comparison is a memcmp: fast even in a debug build.
            if page == &ZERO_PAGE[..page.len()] {
                f.seek(SeekFrom::Current(page.len() as i64)).map_err(werr)?;
            } else {
                f.write_all(page).map_err(werr)?;
                data.add(at, page.len() as u64);
            }
            at += page.len() as u64;
        }
        total += r.len();
    }
    f.set_len(total).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    Ok(data.0)
}

/// Runs of data as pages are written, a short hole between two runs
/// merged into them (MERGE_HOLES_BELOW).
#[derive(Default)]
struct DataRuns(Vec<(u64, u64)>);

impl DataRuns {
    fn add(&mut self, offset: u64, len: u64) {
        match self.0.last_mut() {
            Some((start, run)) if offset - (*start + *run) < MERGE_HOLES_BELOW => {
                *run = offset + len - *start;
            }
            _ => self.0.push((offset, len)),
        }
    }
}

/// The state's encoding: bincode with variable-length integers, bounded
/// by the largest state file read, and nothing after the state.
fn encoding() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_limit(MAX_STATE_BYTES)
        .reject_trailing_bytes()
}

/// Writes the state file: header with version and checksum, then the
/// encoded state.
pub fn write_state(state: &SnapshotState, path: &Path) -> Result<(), SnapshotError> {
    use bincode::Options;
    let body = encoding()
        .serialize(state)
        .map_err(|source| SnapshotError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
    let header = format!(
        "{MAGIC} {SNAPSHOT_VERSION} sha256={}\n",
        hex(&Sha256::digest(&body))
    );
    let mut f = File::create(path).map_err(io("create", path))?;
    f.write_all(header.as_bytes())
        .and_then(|()| f.write_all(&body))
        .and_then(|()| f.sync_all())
        .map_err(io("write", path))
}

/// Parses and checks a state file's bytes.
pub fn parse_state(path: &Path, bytes: &[u8]) -> Result<SnapshotState, SnapshotError> {
    let not_ours = || SnapshotError::NotSnapshot(path.to_path_buf());
    let nl = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(not_ours)?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| not_ours())?;
    let mut words = header.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(not_ours());
    }
    let version = words.next().ok_or_else(not_ours)?;
    if version != SNAPSHOT_VERSION.to_string() {
        return Err(SnapshotError::Version {
            path: path.to_path_buf(),
            found: version.chars().take(16).collect(),
        });
    }
    let sum = words
        .next()
        .and_then(|w| w.strip_prefix("sha256="))
        .ok_or_else(not_ours)?;
    let body = &bytes[nl + 1..];
    if hex(&Sha256::digest(body)) != sum {
        return Err(SnapshotError::Checksum(path.to_path_buf()));
    }
    log::debug!("snapshot state checksum matches");
    use bincode::Options;
    encoding()
        .deserialize(body)
        .map_err(|source| SnapshotError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

impl Snapshot {
    /// Opens the snapshot in `dir` and checks it against `expected` and
    /// this host; nothing is given to KVM yet.
    pub fn open(dir: &Path, expected: &Expected) -> Result<Snapshot, SnapshotError> {
        let state_path = dir.join(STATE_FILE);
        let f = File::open(&state_path).map_err(io("open", &state_path))?;
        let mut bytes = Vec::new();
        f.take(MAX_STATE_BYTES)
            .read_to_end(&mut bytes)
            .map_err(io("read", &state_path))?;
        log::debug!("snapshot state read ({} bytes)", bytes.len());
        let state = parse_state(&state_path, &bytes)?;
        log::debug!("snapshot state checked and parsed");
        state.check_consistent(dir)?;
        expected.check(&state.origin, dir)?;
        log::debug!("snapshot origin checked");
        let mem_path = dir.join(MEMORY_FILE);
        let memory = File::open(&mem_path).map_err(io("open", &mem_path))?;
        let found = memory.metadata().map_err(io("stat", &mem_path))?.len();
        let want = state.memory.iter().map(|r| r.len).sum::<u64>();
        if found != want {
            return Err(SnapshotError::MemorySize {
                path: mem_path,
                found,
                want,
            });
        }
        Ok(Snapshot { state, memory })
    }
}

impl SnapshotState {
    /// The state agrees with itself: as many vCPU states as vCPUs, vCPU
    /// ids in order, memory ranges back to back covering the memory size.
    fn check_consistent(&self, dir: &Path) -> Result<(), SnapshotError> {
        let bad = |what: String| SnapshotError::Inconsistent {
            path: dir.to_path_buf(),
            what,
        };
        let (vcpus, mib) = (self.origin.vcpus, self.origin.mem_mib);
        if !(1..=u32::from(crate::arch::x86_64::MAX_VCPUS)).contains(&vcpus)
            || !(crate::config::MIN_MEM_MIB..=crate::config::MAX_MEM_MIB).contains(&mib)
        {
            return Err(bad(format!("{vcpus} vCPUs and {mib} MiB")));
        }
        let n = self.vcpus.len();
        if u32::try_from(n).ok() != Some(self.origin.vcpus) {
            return Err(bad(format!(
                "{n} vCPU states for {} vCPUs",
                self.origin.vcpus
            )));
        }
        if self
            .vcpus
            .iter()
            .enumerate()
            .any(|(i, v)| usize::from(v.id) != i)
        {
            return Err(bad("vCPU states out of order".into()));
        }
        let expected = crate::arch::x86_64::ram_ranges(self.origin.mem_mib << 20);
        let mut offset = 0u64;
        let ok = expected.len() == self.memory.len()
            && self.memory.iter().zip(&expected).all(|(r, &(gpa, len))| {
                let here = r.gpa == gpa && r.len == len && r.offset == offset;
                offset += len;
                here
            });
        if !ok {
            return Err(bad(format!(
                "memory ranges do not lay out {} MiB",
                self.origin.mem_mib
            )));
        }
        let page = PAGE as u64;
        let mut end = 0u64;
        for (i, &(start, len)) in self.data.iter().enumerate() {
            let fits = start.checked_add(len).is_some_and(|e| e <= offset);
            let ordered = i == 0 || start >= end;
            if len == 0 || start % page != 0 || len % page != 0 || !fits || !ordered {
                return Err(bad(format!(
                    "data extent {i} ({start:#x}, {len:#x}) is not page-aligned, \
                     in order and inside the memory file"
                )));
            }
            end = start + len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
