//! The guest's initramfs: a newc cpio holding only the agent as /init and
//! /dev/console, written here (no external tool), cached by the agent's hash.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    #[error("reading the agent {path}")]
    Agent {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the initramfs {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Bumped when the layout below changes, so old cached images are not used.
const FORMAT: u64 = 1;

/// One cpio entry.
struct Entry<'a> {
    name: &'a str,
    mode: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

/// The initramfs for `agent`, from the cache under `cache_dir` or built now.
pub fn for_agent(agent: &Path, cache_dir: &Path) -> Result<PathBuf, InitramfsError> {
    let bytes = std::fs::read(agent).map_err(|source| InitramfsError::Agent {
        path: agent.to_path_buf(),
        source,
    })?;
    let key = fnv1a(&bytes) ^ FORMAT;
    let path = cache_dir.join(format!("initramfs-{key:016x}.cpio"));
    if path.exists() {
        return Ok(path);
    }
    let werr = |source| InitramfsError::Write {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(cache_dir).map_err(werr)?;
    let image = build(&bytes);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(werr)?;
    f.write_all(&image).map_err(werr)?;
    f.sync_all().map_err(werr)?;
    std::fs::rename(&tmp, &path).map_err(werr)?;
    Ok(path)
}

/// The cpio archive bytes for an initramfs whose /init is `agent`.
pub fn build(agent: &[u8]) -> Vec<u8> {
    let entries = [
        Entry {
            name: "dev",
            mode: 0o040755,
            rdev: (0, 0),
            data: &[],
        },
        Entry {
            name: "dev/console",
            mode: 0o020600,
            rdev: (5, 1),
            data: &[],
        },
        Entry {
            name: "proc",
            mode: 0o040755,
            rdev: (0, 0),
            data: &[],
        },
        Entry {
            name: "sys",
            mode: 0o040755,
            rdev: (0, 0),
            data: &[],
        },
        Entry {
            name: "run",
            mode: 0o040755,
            rdev: (0, 0),
            data: &[],
        },
        Entry {
            name: "init",
            mode: 0o100755,
            rdev: (0, 0),
            data: agent,
        },
    ];
    let mut out = Vec::with_capacity(agent.len() + 1024);
    for (ino, e) in entries.iter().enumerate() {
        write_entry(&mut out, ino as u32 + 1, e);
    }
    write_entry(
        &mut out,
        0,
        &Entry {
            name: "TRAILER!!!",
            mode: 0,
            rdev: (0, 0),
            data: &[],
        },
    );
    out
}

fn write_entry(out: &mut Vec<u8>, ino: u32, e: &Entry<'_>) {
    let nlink = if e.mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino,
        e.mode,
        0,
        0,
        nlink,
        0,
        e.data.len() as u32,
        0,
        0,
        e.rdev.0,
        e.rdev.1,
        e.name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(e.name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(e.data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// FNV-1a, 64 bit: a stable content hash for the cache key.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One parsed archive entry: name, mode, (rdev major, minor), data.
    type Parsed = (String, u32, (u32, u32), Vec<u8>);

    /// Parses a newc archive back into its entries.
    fn parse(mut b: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let total = b.len();
        loop {
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap()
            };
            let (mode, size, rmaj, rmin, namesize) =
                (field(1), field(6), field(9), field(10), field(11));
            let name = String::from_utf8(b[110..110 + namesize as usize - 1].to_vec()).unwrap();
            let mut off = 110 + namesize as usize;
            off += (4 - (total - b.len() + off) % 4) % 4;
            let data = b[off..off + size as usize].to_vec();
            off += size as usize;
            off += (4 - (total - b.len() + off) % 4) % 4;
            b = &b[off..];
            if name == "TRAILER!!!" {
                return out;
            }
            out.push((name, mode, (rmaj, rmin), data));
        }
    }

    #[test]
    fn archive_parses_back() {
        let agent = b"\x7fELF pretend agent of odd length";
        let a = build(agent);
        assert_eq!(a.len() % 4, 0);
        let entries = parse(&a);
        let init = entries.iter().find(|e| e.0 == "init").unwrap();
        assert_eq!(init.1, 0o100755);
        assert_eq!(init.3, agent);
        let console = entries.iter().find(|e| e.0 == "dev/console").unwrap();
        assert_eq!((console.1, console.2), (0o020600, (5, 1)));
    }

    #[test]
    fn cache_is_keyed_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, b"one").unwrap();
        let a = for_agent(&agent, dir.path()).unwrap();
        assert_eq!(for_agent(&agent, dir.path()).unwrap(), a);
        std::fs::write(&agent, b"two").unwrap();
        assert_ne!(for_agent(&agent, dir.path()).unwrap(), a);
    }
}
