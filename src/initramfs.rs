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
    #[error(
        "{path} cannot be the guest's init: {why}; run agent/build-static.sh (or set HULL_AGENT to a static x86_64 hull-agent)"
    )]
    NotStaticAgent { path: PathBuf, why: &'static str },
    #[error("writing the initramfs {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Bumped when the layout below changes, so old cached images are not used.
const FORMAT: u64 = 1;

/// Why `elf` cannot run as a guest's PID 1, if it cannot: the guest
/// kernel boots an x86_64 initramfs with no dynamic loader in it, so the
/// agent must be a 64-bit x86_64 ELF without an interpreter (PT_INTERP).
fn agent_problem(elf: &[u8]) -> Option<&'static str> {
    const PT_INTERP: u32 = 3;
    const EM_X86_64: u16 = 62;
    let bytes = |o: usize, n: usize| elf.get(o..o.checked_add(n)?);
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes(o, 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes(o, 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes(o, 8)?.try_into().ok()?));
    if elf.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Some("it is not an ELF executable");
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) || u16_at(18) != Some(EM_X86_64) {
        return Some("it is not built for x86_64");
    }
    let malformed = Some("its ELF header is malformed");
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(32), u16_at(54), u16_at(56)) else {
        return malformed;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return malformed;
    };
    for i in 0..usize::from(phnum) {
        let Some(at) = phoff.checked_add(i * usize::from(phentsize)) else {
            return malformed;
        };
        match u32_at(at) {
            Some(PT_INTERP) => return Some("it is dynamically linked"),
            Some(_) => {}
            None => return malformed,
        }
    }
    None
}

/// One cpio entry.
struct Entry<'a> {
    name: &'a str,
    mode: u32,
    rdev: (u32, u32),
    data: &'a [u8],
}

/// The initramfs for `agent`, from the cache under `cache_dir` or built now.
pub fn for_agent(agent: &Path, cache_dir: &Path) -> Result<PathBuf, InitramfsError> {
    // Known for this very file: not read (8 MiB) and hashed again per run.
    let seen = identity_file(agent, cache_dir);
    if let Some(known) = seen.as_deref().and_then(|s| known_image(s, cache_dir)) {
        return Ok(known);
    }
    let path = build_for(agent, cache_dir)?;
    if let (Some(seen), Some(name)) = (seen, path.file_name()) {
        let tmp = seen.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, name.as_encoded_bytes()).is_ok() {
            let _ = std::fs::rename(&tmp, &seen);
        }
    }
    Ok(path)
}

/// The file naming the initramfs of the agent file `agent` as it is now
/// (path, size, inode, modification time), as templates name their inputs.
fn identity_file(agent: &Path, cache_dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(agent).ok()?;
    let id = format!(
        "{}:{}:{}:{}:{}",
        agent.display(),
        m.size(),
        m.ino(),
        m.mtime(),
        m.mtime_nsec()
    );
    Some(cache_dir.join(format!("agent-{:016x}.id", fnv1a(id.as_bytes()) ^ FORMAT)))
}

/// The initramfs `seen` names, if it is one of this cache's and is there.
fn known_image(seen: &Path, cache_dir: &Path) -> Option<PathBuf> {
    let name = std::fs::read_to_string(seen).ok()?;
    let plain = name.starts_with("initramfs-") && name.ends_with(".cpio") && !name.contains('/');
    let path = cache_dir.join(name);
    (plain && path.is_file()).then_some(path)
}

/// The initramfs for `agent` by its content: read, checked, hashed, and
/// built unless the cache has it.
fn build_for(agent: &Path, cache_dir: &Path) -> Result<PathBuf, InitramfsError> {
    let bytes = std::fs::read(agent).map_err(|source| InitramfsError::Agent {
        path: agent.to_path_buf(),
        source,
    })?;
    if let Some(why) = agent_problem(&bytes) {
        return Err(InitramfsError::NotStaticAgent {
            path: agent.to_path_buf(),
            why,
        });
    }
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
    // Unique even among hosts sharing the cache dir (pids repeat there).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = path.with_extension(format!("tmp{}-{nanos}", std::process::id()));
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

    /// A 64-bit x86_64 ELF header with one PT_LOAD program header (and
    /// a PT_INTERP one with `interp`), then `tail`.
    fn elf(machine: u16, interp: bool, tail: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[18..20].copy_from_slice(&machine.to_le_bytes());
        e[32..40].copy_from_slice(&64u64.to_le_bytes());
        e[54..56].copy_from_slice(&56u16.to_le_bytes());
        let phdrs: &[u32] = if interp { &[1, 3] } else { &[1] };
        e[56..58].copy_from_slice(&(phdrs.len() as u16).to_le_bytes());
        for &t in phdrs {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            e.extend(ph);
        }
        e.extend_from_slice(tail);
        e
    }

    fn static_elf(tail: &[u8]) -> Vec<u8> {
        elf(62, false, tail)
    }

    #[test]
    fn only_a_static_x86_64_agent_is_packed() {
        assert_eq!(agent_problem(&static_elf(b"")), None);
        assert_eq!(
            agent_problem(&elf(62, true, b"")),
            Some("it is dynamically linked")
        );
        assert_eq!(
            agent_problem(&elf(183, false, b"")),
            Some("it is not built for x86_64")
        );
        assert_eq!(
            agent_problem(b"#!/bin/sh\n"),
            Some("it is not an ELF executable")
        );
        // Program headers claimed past the end of the file.
        let mut cut = static_elf(b"");
        cut[56..58].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(agent_problem(&cut), Some("its ELF header is malformed"));
        let mut far = static_elf(b"");
        far[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(agent_problem(&far), Some("its ELF header is malformed"));

        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("hull-agent");
        std::fs::write(&agent, elf(62, true, b"")).unwrap();
        let e = for_agent(&agent, dir.path()).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} cannot be the guest's init: it is dynamically linked; run agent/build-static.sh (or set HULL_AGENT to a static x86_64 hull-agent)",
                agent.display()
            )
        );
    }

    #[test]
    fn cache_is_keyed_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        std::fs::write(&agent, static_elf(b"one")).unwrap();
        let a = for_agent(&agent, dir.path()).unwrap();
        assert_eq!(for_agent(&agent, dir.path()).unwrap(), a);
        // A rebuilt agent is a new file (as the linker writes it).
        std::fs::remove_file(&agent).unwrap();
        std::fs::write(&agent, static_elf(b"two")).unwrap();
        assert_ne!(for_agent(&agent, dir.path()).unwrap(), a);
    }
}
