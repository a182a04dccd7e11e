//! The host's reader of what a RUN step in a microVM changed: the tar the
//! guest's agent sends (hull-agent's export.rs), read here as untrusted
//! input. The guest may be hostile, so the reader accepts only the subset
//! the agent writes and checks everything before the entry reaches the
//! layer: ustar headers with valid checksums, PAX `x` headers of at most
//! [`MAX_PAX`] bytes with only `path`, `linkpath`, `size`, `uid` and `gid`;
//! paths relative, without `.`, `..` or empty components, at most
//! [`MAX_PATH`] bytes; hard links only to a regular file earlier in the
//! same tar; no device nodes (a whiteout arrives as `.wh.NAME`, so the
//! guest has no reason to send one); at most [`MAX_ENTRIES`] entries and
//! [`MAX_NAME_BYTES`] of remembered names. The stream itself is bounded by
//! the session's sink ([`MAX_TAR_BYTES`]). Nothing is mounted, nothing is
//! written to the host's filesystem but the new layer's tar.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::layer::{LayerError, LayerWriter};

/// Largest PAX extended header.
pub const MAX_PAX: u64 = 64 << 10;
/// Longest path or link target.
pub const MAX_PATH: usize = 4096;
/// Most entries in one step's changes.
pub const MAX_ENTRIES: u64 = 1 << 20;
/// Most bytes of regular-file names kept for checking hard links.
pub const MAX_NAME_BYTES: usize = 64 << 20;
/// Largest tar a step may send: its upper disk's size and room for headers.
pub const MAX_TAR_BYTES: u64 = (8 << 30) + (1 << 30);

#[derive(Debug, thiserror::Error)]
pub enum UpperTarError {
    /// The tar is not what hull's agent writes: what was wrong, and where.
    #[error("the step's changes sent by the microVM were refused: {0}")]
    Refused(String),
    #[error("the step's changes sent by the microVM ended early")]
    Truncated,
    #[error("reading the step's changes")]
    Io(#[source] io::Error),
    #[error(transparent)]
    Layer(#[from] LayerError),
}

fn refuse(why: impl Into<String>) -> UpperTarError {
    UpperTarError::Refused(why.into())
}

/// Reads exactly `buf.len()` bytes; a short stream is [`UpperTarError::Truncated`].
fn fill(r: &mut impl Read, buf: &mut [u8]) -> Result<(), UpperTarError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => UpperTarError::Truncated,
        _ => UpperTarError::Io(e),
    })
}

/// Skips `n` bytes.
fn skip_bytes(r: &mut impl Read, n: u64) -> Result<(), UpperTarError> {
    let got = io::copy(&mut r.take(n), &mut io::sink()).map_err(UpperTarError::Io)?;
    if got < n {
        return Err(UpperTarError::Truncated);
    }
    Ok(())
}

fn padding(size: u64) -> u64 {
    (512 - size % 512) % 512
}

/// A NUL-terminated octal field.
fn octal(field: &[u8], what: &str) -> Result<u64, UpperTarError> {
    let s: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    if s.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&s).map_err(|_| refuse(format!("a {what} field not in octal")))?;
    u64::from_str_radix(s, 8).map_err(|_| refuse(format!("a {what} field not in octal")))
}

fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// A path in the layer: relative, normal components only, not too long.
fn layer_path(bytes: &[u8]) -> Result<PathBuf, UpperTarError> {
    let shown = || String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
    let trimmed = bytes.strip_suffix(b"/").unwrap_or(bytes);
    if trimmed.is_empty() || trimmed.len() > MAX_PATH || trimmed.contains(&0) {
        return Err(refuse(format!(
            "a path of {} bytes {:?}",
            bytes.len(),
            shown()
        )));
    }
    let p = Path::new(std::ffi::OsStr::from_bytes(trimmed));
    let normal = p.components().all(|c| matches!(c, Component::Normal(_)))
        && !trimmed
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b".");
    if !normal {
        return Err(refuse(format!(
            "the path {:?} (not plainly relative)",
            shown()
        )));
    }
    Ok(p.to_path_buf())
}

/// What a PAX header may set for the next entry.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
}

fn parse_pax(mut data: &[u8]) -> Result<Pax, UpperTarError> {
    let mut pax = Pax::default();
    let bad = || refuse("a malformed PAX record");
    while !data.is_empty() {
        let sp = data.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let (key, value) = (&rec[..eq], &rec[eq + 1..]);
        let num = || -> Result<u64, UpperTarError> {
            std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(bad)
        };
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => pax.size = Some(num()?),
            b"uid" => pax.uid = Some(num()?),
            b"gid" => pax.gid = Some(num()?),
            other => {
                return Err(refuse(format!(
                    "the PAX key {:?}",
                    String::from_utf8_lossy(&other[..other.len().min(64)])
                )));
            }
        }
        data = &data[len..];
    }
    Ok(pax)
}

/// The first component of `p`, for the caller's `skip`.
fn top(p: &Path) -> &Path {
    p.components()
        .next()
        .map_or(p, |c| Path::new(c.as_os_str()))
}

/// Reads the tar of a step's changes from `r` into `w`, leaving out what
/// `skip` says of a top-level name (the sandbox's own mount points).
/// Returns the number of entries read.
pub fn add_upper_tar(
    w: &mut LayerWriter,
    mut r: impl Read,
    skip: &dyn Fn(&Path) -> bool,
) -> Result<u64, UpperTarError> {
    let mut files: HashSet<PathBuf> = HashSet::new();
    let mut name_bytes = 0usize;
    let mut entries = 0u64;
    let mut pending: Option<Pax> = None;
    loop {
        let mut h = [0u8; 512];
        fill(&mut r, &mut h)?;
        if h.iter().all(|&b| b == 0) {
            if pending.is_some() {
                return Err(refuse("a PAX header with no entry after it"));
            }
            return Ok(entries);
        }
        let sum = octal(&h[148..156], "checksum")?;
        let actual: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if sum != actual || &h[257..263] != b"ustar\0" {
            return Err(refuse(format!(
                "a header that is not ustar, or a bad checksum, after {entries} entries"
            )));
        }
        entries += 1;
        if entries > MAX_ENTRIES {
            return Err(refuse(format!("more than {MAX_ENTRIES} entries")));
        }
        let kind = h[156];
        let mut size = octal(&h[124..136], "size")?;
        if kind == b'x' {
            if pending.is_some() || size > MAX_PAX {
                return Err(refuse(format!(
                    "a PAX header of {size} bytes, or two in a row"
                )));
            }
            let mut data = vec![0u8; size as usize];
            fill(&mut r, &mut data)?;
            skip_bytes(&mut r, padding(size))?;
            pending = Some(parse_pax(&data)?);
            continue;
        }
        let pax = pending.take().unwrap_or_default();
        let name_raw = match &pax.path {
            Some(p) => p.clone(),
            None => {
                let (prefix, name) = (cstr(&h[345..500]), cstr(&h[..100]));
                if prefix.is_empty() {
                    name.to_vec()
                } else {
                    [prefix, b"/", name].concat()
                }
            }
        };
        let name = layer_path(&name_raw)?;
        size = pax.size.unwrap_or(size);
        let uid = pax.uid.map_or_else(|| octal(&h[108..116], "uid"), Ok)?;
        let gid = pax.gid.map_or_else(|| octal(&h[116..124], "gid"), Ok)?;
        let mode = octal(&h[100..108], "mode")? as u32 & 0o7777;
        let mtime = octal(&h[136..148], "mtime")?;
        let link_raw = pax.linkpath.unwrap_or_else(|| cstr(&h[157..257]).to_vec());
        let shown = name.display().to_string();
        if !matches!(kind, b'0' | 0) && size != 0 {
            return Err(refuse(format!(
                "{shown}: {size} bytes of data on a non-file"
            )));
        }
        let file_name = name.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        let parent = name.parent().unwrap_or(Path::new(""));
        // What the entry is about, for `skip`: a whiteout's target, a
        // marker's directory, or the entry itself.
        let marker = if file_name == b".wh..wh..opq" {
            Some(None)
        } else {
            file_name
                .strip_prefix(b".wh.")
                .map(|rest| Some(parent.join(std::ffi::OsStr::from_bytes(rest))))
        };
        if let Some(target) = &marker {
            let plain = target
                .as_ref()
                .is_none_or(|t| matches!(t.file_name(), Some(n) if n.as_bytes() != b".."));
            if !matches!(kind, b'0' | 0)
                || size != 0
                || !plain
                || file_name == b".wh.."
                || file_name == b".wh."
            {
                return Err(refuse(format!(
                    "{shown}: a whiteout that is not an empty file"
                )));
            }
        }
        let about = match &marker {
            Some(Some(t)) => t.as_path(),
            Some(None) => parent,
            None => name.as_path(),
        };
        if about.as_os_str().is_empty() {
            return Err(refuse(format!("{shown}: an opaque marker at the root")));
        }
        let skipped = skip(top(about));
        let mut header = tar::Header::new_gnu();
        header.set_mtime(mtime);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mode(mode);
        header.set_size(0);
        match (kind, marker) {
            (_, Some(m)) => {
                if !skipped {
                    match m {
                        Some(t) => w.whiteout(&t)?,
                        None => w.opaque(parent)?,
                    }
                }
            }
            (b'0' | 0, None) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(size);
                let mut data = Counted {
                    inner: (&mut r).take(size),
                    n: 0,
                };
                if skipped {
                    io::copy(&mut data, &mut io::sink()).map_err(UpperTarError::Io)?;
                } else {
                    w.append(&mut header, &name, &mut data)?;
                }
                if data.n < size {
                    return Err(UpperTarError::Truncated);
                }
                skip_bytes(&mut r, padding(size))?;
                name_bytes += name_raw.len();
                if name_bytes > MAX_NAME_BYTES {
                    return Err(refuse(format!("more than {MAX_NAME_BYTES} bytes of names")));
                }
                files.insert(name);
            }
            (b'1', None) => {
                let target = layer_path(&link_raw)?;
                if !files.contains(&target) {
                    return Err(refuse(format!(
                        "{shown}: a hard link to {}, not a file sent before it",
                        target.display()
                    )));
                }
                header.set_entry_type(tar::EntryType::Link);
                if !skipped {
                    w.append_link(&mut header, &name, &target)?;
                }
            }
            (b'2', None) => {
                if link_raw.is_empty() || link_raw.len() > MAX_PATH || link_raw.contains(&0) {
                    return Err(refuse(format!(
                        "{shown}: a symlink target of {} bytes",
                        link_raw.len()
                    )));
                }
                header.set_entry_type(tar::EntryType::Symlink);
                if !skipped {
                    let target = Path::new(std::ffi::OsStr::from_bytes(&link_raw));
                    w.append_link(&mut header, &name, target)?;
                }
            }
            (b'5' | b'6', None) => {
                let dir = kind == b'5';
                header.set_entry_type(if dir {
                    tar::EntryType::Directory
                } else {
                    tar::EntryType::Fifo
                });
                if !dir {
                    header.set_device_major(0).map_err(UpperTarError::Io)?;
                    header.set_device_minor(0).map_err(UpperTarError::Io)?;
                }
                if !skipped {
                    w.append(&mut header, &name, io::empty())?;
                }
            }
            (b'3' | b'4', None) => {
                return Err(refuse(format!(
                    "{shown}: a device node (a step in a microVM may not add one)"
                )));
            }
            (other, None) => {
                return Err(refuse(format!("{shown}: entry type {:?}", other as char)));
            }
        }
    }
}

/// The reader against `data` as the tar a hostile guest sends, into a
/// layer of a store under the temp dir (made once per process): what the
/// cargo-fuzz target `upper_tar` (fuzz/) runs. It must return, never panic.
#[cfg(any(test, fuzzing))]
pub fn fuzz_read(data: &[u8]) -> Result<u64, UpperTarError> {
    static STORE: std::sync::OnceLock<hull_images::Store> = std::sync::OnceLock::new();
    let store = STORE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("hull-fuzz-upper-tar-{}", std::process::id()));
        hull_images::Store::open(&dir).expect("a store in the temp dir")
    });
    let mut w = LayerWriter::new(store)?;
    let n = add_upper_tar(&mut w, data, &|p| p == Path::new("proc"));
    w.discard();
    n
}

/// Counts what was read through it.
struct Counted<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// The session's sink for the tar: a file that refuses to grow past
/// [`MAX_TAR_BYTES`].
pub struct BoundedFile {
    pub file: std::fs::File,
    pub written: u64,
}

impl io::Write for BoundedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > MAX_TAR_BYTES {
            return Err(io::Error::other(format!(
                "the step's changes exceed {} GiB",
                MAX_TAR_BYTES >> 30
            )));
        }
        let n = self.file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_images::Store;

    /// A ustar entry with `name` written raw (no checks), and its data.
    fn entry(out: &mut Vec<u8>, name: &[u8], kind: u8, link: &[u8], data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1);
        let b = h.as_mut_bytes();
        b[..name.len()].copy_from_slice(name);
        b[156] = kind;
        b[157..157 + link.len()].copy_from_slice(link);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    fn pax(out: &mut Vec<u8>, records: &[u8]) {
        entry(out, b"././@PaxHeader", b'x', b"", records);
    }

    fn end(out: &mut Vec<u8>) {
        out.extend_from_slice(&[0u8; 1024]);
    }

    /// The layer made from `tar`: its entries' names, or the error.
    fn read(tar: &[u8]) -> Result<Vec<String>, UpperTarError> {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("data")).unwrap();
        let mut w = LayerWriter::new(&store).unwrap();
        let skip = |p: &Path| p == Path::new("proc");
        add_upper_tar(&mut w, tar, &skip)?;
        let rec = w.finish(&store).unwrap();
        let blob = std::fs::read(store.blob_path(&rec.digest)).unwrap();
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
        Ok(a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect())
    }

    #[test]
    fn what_the_agent_sends_becomes_the_layer() {
        let mut t = Vec::new();
        entry(&mut t, b"d", b'5', b"", b"");
        entry(&mut t, b"d/.wh..wh..opq", b'0', b"", b"");
        entry(&mut t, b"d/f", b'0', b"", b"hello");
        entry(&mut t, b"d/g", b'1', b"d/f", b"");
        entry(&mut t, b"d/.wh.gone", b'0', b"", b"");
        entry(&mut t, b"l", b'2', b"/etc/passwd", b"");
        entry(&mut t, b"proc", b'5', b"", b"");
        entry(&mut t, b"proc/x", b'0', b"", b"skipped");
        let long = "n".repeat(150);
        pax(&mut t, format!("160 path={long}\n").as_bytes());
        entry(&mut t, b"ignored", b'0', b"", b"");
        end(&mut t);
        let names = read(&t).unwrap();
        assert_eq!(
            names,
            [
                "d",
                "d/.wh..wh..opq",
                "d/f",
                "d/g",
                "d/.wh.gone",
                "l",
                &long
            ]
        );
    }

    /// Every refusal, one tar each: (what, the tar's entries).
    #[test]
    fn a_hostile_tar_is_refused_before_it_reaches_the_layer() {
        type Make = fn(&mut Vec<u8>);
        let cases: [(&str, Make); 12] = [
            ("dot-dot", |t| entry(t, b"../escape", b'0', b"", b"x")),
            ("absolute", |t| entry(t, b"/etc/passwd", b'0', b"", b"x")),
            ("inner dot-dot", |t| entry(t, b"a/../../b", b'0', b"", b"")),
            ("device", |t| entry(t, b"dev/sda", b'4', b"", b"")),
            ("char device", |t| entry(t, b"null", b'3', b"", b"")),
            ("link to nothing sent", |t| {
                entry(t, b"h", b'1', b"etc/shadow", b"")
            }),
            ("link outside", |t| entry(t, b"h", b'1', b"../x", b"")),
            ("whiteout of ..", |t| entry(t, b"a/.wh...", b'0', b"", b"")),
            ("whiteout with data", |t| {
                entry(t, b".wh.x", b'0', b"", b"data")
            }),
            ("unknown pax key", |t| {
                pax(t, b"20 SCHILY.xattr=ab\n");
                entry(t, b"f", b'0', b"", b"");
            }),
            ("gnu long name", |t| {
                entry(t, b"././@LongLink", b'L', b"", b"name")
            }),
            ("pax too large", |t| {
                let mut h = tar::Header::new_ustar();
                h.set_size(1 << 40);
                h.as_mut_bytes()[156] = b'x';
                h.set_cksum();
                t.extend_from_slice(h.as_bytes());
            }),
        ];
        for (what, make) in cases {
            let mut t = Vec::new();
            make(&mut t);
            end(&mut t);
            let e = read(&t).expect_err(what);
            assert!(matches!(e, UpperTarError::Refused(_)), "{what}: {e}");
        }
    }

    /// Mutated and cut copies of a good tar (bytes flipped, set to tar's
    /// own special characters, runs zeroed, the end cut): the reader
    /// answers each with a layer or an error, never a panic.
    #[test]
    fn mutated_tars_never_panic_the_reader() {
        let mut good = Vec::new();
        entry(&mut good, b"d", b'5', b"", b"");
        entry(&mut good, b"d/f", b'0', b"", b"hello");
        entry(&mut good, b"d/g", b'1', b"d/f", b"");
        pax(&mut good, b"12 size=300\n");
        entry(&mut good, b"big", b'0', b"", &[1u8; 300]);
        entry(&mut good, b".wh.x", b'0', b"", b"");
        end(&mut good);
        let iters: usize = std::env::var("HULL_FUZZ_ITERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map_or(2000, |n: usize| n / 10);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let special = [
            0u8, b'/', b'.', b' ', b'=', b'\n', b'7', b'x', b'1', b'5', 0xff,
        ];
        for _ in 0..iters {
            let mut t = good.clone();
            for _ in 0..1 + next() % 8 {
                let at = (next() % t.len() as u64) as usize;
                match next() % 3 {
                    0 => t[at] ^= 1 << (next() % 8),
                    1 => t[at] = special[(next() % special.len() as u64) as usize],
                    _ => {
                        let n = (next() % 64) as usize;
                        let end = (at + n).min(t.len());
                        t[at..end].fill(0);
                    }
                }
            }
            if next() % 2 == 0 {
                // Headers made valid again, so the mutations reach past
                // the checksum.
                for block in t.chunks_exact_mut(512) {
                    if &block[257..263] == b"ustar\0" {
                        block[148..156].fill(b' ');
                        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
                        block[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
                    }
                }
            }
            if next() % 4 == 0 {
                t.truncate((next() % t.len() as u64) as usize);
            }
            let _ = fuzz_read(&t);
        }
        let store =
            std::env::temp_dir().join(format!("hull-fuzz-upper-tar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(store);
    }

    #[test]
    fn a_short_or_corrupt_stream_is_an_error() {
        let mut t = Vec::new();
        entry(&mut t, b"f", b'0', b"", &[7u8; 2000]);
        let cut = t[..1000].to_vec();
        assert!(matches!(read(&cut), Err(UpperTarError::Truncated)));
        assert!(matches!(read(&[]), Err(UpperTarError::Truncated)));
        t[0] ^= 1; // the checksum no longer matches
        end(&mut t);
        assert!(matches!(read(&t), Err(UpperTarError::Refused(_))));
    }
}
