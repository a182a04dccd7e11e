//! What a snapshot was made from, and the check that a restore matches it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::SnapshotError;

/// A file a snapshot depends on: its SHA-256, plus the size, inode and
/// modification time it had, so an unchanged file is recognised without
/// reading it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub sha256: String,
    pub size: u64,
    pub ino: u64,
    pub mtime_ns: i128,
}

impl FileId {
    pub fn of(path: &Path) -> std::io::Result<FileId> {
        let bytes = std::fs::read(path)?;
        let meta = std::fs::metadata(path)?;
        Ok(FileId {
            sha256: super::hex(&Sha256::digest(&bytes)),
            size: meta.size(),
            ino: meta.ino(),
            mtime_ns: mtime_ns(&meta),
        })
    }

    /// Whether `path` holds the same bytes: by its metadata when that is
    /// unchanged, by its digest otherwise.
    fn matches(&self, path: &Path) -> std::io::Result<bool> {
        let meta = std::fs::metadata(path)?;
        if (meta.size(), meta.ino(), mtime_ns(&meta)) == (self.size, self.ino, self.mtime_ns) {
            return Ok(true);
        }
        Ok(meta.size() == self.size && FileId::of(path)?.sha256 == self.sha256)
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// What a snapshot was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub kernel: FileId,
    pub initrd: Option<FileId>,
    /// The host CPU (vendor, family, model, stepping, brand): guest state
    /// saved on one CPU model may use features another lacks.
    pub cpu: String,
    pub vcpus: u32,
    pub mem_mib: u64,
}

/// The host CPU's model, from CPUID.
pub fn host_cpu() -> String {
    use std::arch::x86_64::__cpuid;
    let words = |leaf: u32| {
        let r = __cpuid(leaf);
        [r.eax, r.ebx, r.ecx, r.edx]
    };
    let v = words(0);
    let vendor: Vec<u8> = [v[1], v[3], v[2]]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let signature = words(1)[0];
    let mut brand = Vec::new();
    if words(0x8000_0000)[0] >= 0x8000_0004 {
        for leaf in 0x8000_0002..=0x8000_0004 {
            brand.extend(words(leaf).iter().flat_map(|w| w.to_le_bytes()));
        }
    }
    let text = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_string()
    };
    format!("{} {signature:#x} {}", text(&vendor), text(&brand))
}

/// What a restore expects of a snapshot; None: whatever it was made with.
#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub vcpus: Option<u32>,
    pub mem_mib: Option<u64>,
}

impl Expected {
    pub fn check(&self, origin: &Origin, dir: &Path) -> Result<(), SnapshotError> {
        let refuse = |what: String| SnapshotError::Origin {
            path: dir.to_path_buf(),
            what,
        };
        let cpu = host_cpu();
        if origin.cpu != cpu {
            return Err(refuse(format!(
                "on another CPU model ({}, this host has {cpu})",
                origin.cpu
            )));
        }
        if let Some(n) = self.vcpus.filter(|&n| n != origin.vcpus) {
            return Err(refuse(format!("with {} vCPUs, not {n}", origin.vcpus)));
        }
        if let Some(m) = self.mem_mib.filter(|&m| m != origin.mem_mib) {
            return Err(refuse(format!(
                "with {} MiB of memory, not {m}",
                origin.mem_mib
            )));
        }
        let same = |id: Option<&FileId>, path: &Path| match id {
            Some(id) => id.matches(path).map_err(|e| {
                refuse(format!(
                    "from a file {} cannot be compared with ({e})",
                    path.display()
                ))
            }),
            None => Ok(false),
        };
        if let Some(k) = &self.kernel {
            if !same(Some(&origin.kernel), k)? {
                return Err(refuse(format!("from another kernel than {}", k.display())));
            }
        }
        if let Some(i) = &self.initrd {
            if !same(origin.initrd.as_ref(), i)? {
                return Err(refuse(format!(
                    "from another initrd (agent) than {}",
                    i.display()
                )));
            }
        }
        Ok(())
    }
}
