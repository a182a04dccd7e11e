//! hull build in a microVM: the writable layer's changes (the overlay's
//! upper directory) as a tar, streamed to the host in `Layer` frames, so
//! that the host never mounts the guest-written disk. The tar is plain
//! ustar, one PAX `x` header before an entry whose name, link target,
//! size or ids do not fit the ustar fields; whiteouts (overlayfs's 0/0
//! character devices) become `.wh.NAME`, an opaque directory is followed
//! by its `.wh..wh..opq` marker; a file with several links is sent once,
//! later names as hard links; sockets are left out. The order (names
//! sorted, a directory before what it holds) is the one hull's own walk of
//! an ns step's upper uses, so a deterministic step gives the same layer
//! with both backends. The host reads it with its own bounded, untrusting
//! reader (hull's src/build/upper_tar.rs).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hull_agent::overlay;

/// The upper directory of the VM's overlay, opened before the agent
/// switched into the container's root (where it is no longer reachable by
/// name; it is reached through /proc/self/fd/N).
static UPPER: OnceLock<File> = OnceLock::new();

/// Keeps `dir` (the overlay's upper) for [`write_upper`].
pub fn keep_upper(dir: &str) -> Result<(), String> {
    let f = File::open(dir).map_err(|e| format!("opening {dir}: {e}"))?;
    let _ = UPPER.set(f);
    Ok(())
}

/// Writes the tar of the upper's changes to `out`.
pub fn write_upper(out: &mut dyn Write) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let Some(f) = UPPER.get() else {
        return Err(io::Error::other("this VM has no upper disk to export"));
    };
    let root = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    let mut w = TarWriter {
        out,
        links: HashMap::new(),
    };
    w.walk(&root, Path::new(""))?;
    w.out.write_all(&[0u8; 1024])
}

struct TarWriter<'a> {
    out: &'a mut dyn Write,
    links: HashMap<(u64, u64), PathBuf>,
}

/// One entry's header fields.
struct Entry<'a> {
    name: &'a [u8],
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    link: &'a [u8],
    dev: (u32, u32),
}

impl TarWriter<'_> {
    fn walk(&mut self, root: &Path, rel: &Path) -> io::Result<()> {
        for name in overlay::sorted_names(&root.join(rel))? {
            let r = rel.join(&name);
            let path = root.join(&r);
            let m = fs::symlink_metadata(&path)?;
            if overlay::is_whiteout(&m) {
                let mut wh = b".wh.".to_vec();
                wh.extend_from_slice(name.as_bytes());
                self.marker(&rel.join(std::ffi::OsStr::from_bytes(&wh)))?;
                continue;
            }
            self.entry(&r, &path, &m)?;
            if m.is_dir() {
                if overlay::is_opaque(&path) {
                    self.marker(&r.join(".wh..wh..opq"))?;
                }
                self.walk(root, &r)?;
            }
        }
        Ok(())
    }

    fn marker(&mut self, name: &Path) -> io::Result<()> {
        self.header(&Entry {
            name: name.as_os_str().as_bytes(),
            kind: b'0',
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            link: b"",
            dev: (0, 0),
        })
    }

    fn entry(&mut self, name: &Path, path: &Path, m: &fs::Metadata) -> io::Result<()> {
        let ft = m.file_type();
        let mut e = Entry {
            name: name.as_os_str().as_bytes(),
            kind: b'0',
            mode: m.mode() & 0o7777,
            uid: m.uid().into(),
            gid: m.gid().into(),
            size: 0,
            mtime: m.mtime().max(0) as u64,
            link: b"",
            dev: (0, 0),
        };
        if !ft.is_dir() && m.nlink() > 1 {
            let key = (m.dev(), m.ino());
            if let Some(first) = self.links.get(&key) {
                let first = first.clone();
                e.kind = b'1';
                e.link = first.as_os_str().as_bytes();
                return self.header(&e);
            }
            self.links.insert(key, name.to_path_buf());
        }
        let target;
        if ft.is_dir() {
            e.kind = b'5';
        } else if ft.is_file() {
            e.size = m.len();
            self.header(&e)?;
            return self.data(path, m.len());
        } else if ft.is_symlink() {
            target = fs::read_link(path)?;
            e.kind = b'2';
            e.link = target.as_os_str().as_bytes();
        } else if ft.is_fifo() {
            e.kind = b'6';
        } else if ft.is_char_device() || ft.is_block_device() {
            e.kind = if ft.is_char_device() { b'3' } else { b'4' };
            e.dev = (libc::major(m.rdev()), libc::minor(m.rdev()));
        } else {
            return Ok(()); // a socket: not kept in layers
        }
        self.header(&e)
    }

    /// The file's `len` bytes (zeros if it shrank meanwhile), padded.
    fn data(&mut self, path: &Path, len: u64) -> io::Result<()> {
        let f = File::open(path)?;
        let copied = io::copy(&mut f.take(len), self.out)?;
        let mut left = len - copied;
        let zeros = [0u8; 4096];
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.out.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        let pad = (512 - (len % 512) as usize) % 512;
        self.out.write_all(&zeros[..pad])
    }

    fn header(&mut self, e: &Entry<'_>) -> io::Result<()> {
        let mut pax = Vec::new();
        let mut h = [0u8; 512];
        if e.name.len() <= 100 {
            h[..e.name.len()].copy_from_slice(e.name);
        } else {
            record(&mut pax, "path", e.name);
        }
        if e.link.len() <= 100 {
            h[157..157 + e.link.len()].copy_from_slice(e.link);
        } else {
            record(&mut pax, "linkpath", e.link);
        }
        octal(&mut h[100..108], e.mode.into());
        for (field, key, v) in [
            (108..116, "uid", e.uid),
            (116..124, "gid", e.gid),
            (124..136, "size", e.size),
        ] {
            if !octal(&mut h[field], v) {
                record(&mut pax, key, v.to_string().as_bytes());
            }
        }
        octal(&mut h[136..148], e.mtime.min(0o77777777777));
        h[156] = e.kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        octal(&mut h[329..337], e.dev.0.into());
        octal(&mut h[337..345], e.dev.1.into());
        if !pax.is_empty() {
            let mut x = [0u8; 512];
            x[..14].copy_from_slice(b"././@PaxHeader");
            octal(&mut x[100..108], 0o644);
            octal(&mut x[124..136], pax.len() as u64);
            x[156] = b'x';
            x[257..263].copy_from_slice(b"ustar\0");
            x[263..265].copy_from_slice(b"00");
            checksum(&mut x);
            self.out.write_all(&x)?;
            self.out.write_all(&pax)?;
            let pad = (512 - pax.len() % 512) % 512;
            self.out.write_all(&[0u8; 512][..pad])?;
        }
        checksum(&mut h);
        self.out.write_all(&h)
    }
}

/// `v` in octal, NUL-terminated, in `field`; false if it does not fit.
fn octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// A PAX record: "LEN key=value\n", LEN counting the whole record.
fn record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len.to_string().len() + rest > len {
        len += 1;
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Buffers what is written into `Layer` frames of at most MAX_DATA bytes.
pub struct FrameSink<F: FnMut(&[u8]) -> bool> {
    buf: Vec<u8>,
    send: F,
}

impl<F: FnMut(&[u8]) -> bool> FrameSink<F> {
    pub fn new(send: F) -> Self {
        FrameSink {
            buf: Vec::with_capacity(hull_agent::protocol::MAX_DATA),
            send,
        }
    }
}

impl<F: FnMut(&[u8]) -> bool> Write for FrameSink<F> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = hull_agent::protocol::MAX_DATA - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == hull_agent::protocol::MAX_DATA {
            self.flush()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            if !(self.send)(&self.buf) {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            self.buf.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        let mut v = Vec::new();
        record(&mut v, "path", b"a");
        assert_eq!(v, b"9 path=a\n");
        let mut v = Vec::new();
        record(&mut v, "path", &[b'x'; 95]);
        assert_eq!(&v[..4], b"105 ");
        assert_eq!(v.len(), 105);
    }

    #[test]
    fn octal_fields_say_when_a_value_does_not_fit() {
        let mut f = [0u8; 8];
        assert!(octal(&mut f, 0o755));
        assert_eq!(&f, b"0000755\0");
        assert!(!octal(&mut f, 0o10000000));
    }

    #[test]
    fn an_upper_becomes_a_tar_with_whiteout_names() {
        let t = std::env::temp_dir().join(format!("hull-export-{}", std::process::id()));
        let _ = fs::remove_dir_all(&t);
        fs::create_dir_all(t.join("d")).unwrap();
        fs::write(t.join("d/f"), b"hello").unwrap();
        fs::hard_link(t.join("d/f"), t.join("d/g")).unwrap();
        let long = "n".repeat(150);
        fs::write(t.join(&long), b"").unwrap();
        let mut out = Vec::new();
        let mut w = TarWriter {
            out: &mut out,
            links: HashMap::new(),
        };
        w.walk(&t, Path::new("")).unwrap();
        out.extend_from_slice(&[0u8; 1024]);
        fs::remove_dir_all(&t).unwrap();
        assert_eq!(out.len() % 512, 0);
        // Headers at the expected places: d, d/f (+1 data block), d/g,
        // the PAX header (+1 block), the long name.
        assert_eq!(&out[..1], b"d");
        assert_eq!(out[156], b'5');
        assert_eq!(&out[512..515], b"d/f");
        assert_eq!(&out[1024..1029], b"hello");
        assert_eq!(&out[1536..1539], b"d/g");
        assert_eq!(out[1536 + 156], b'1');
        assert_eq!(out[2048 + 156], b'x');
        assert!(out[2560..3072].starts_with(b"160 path=nnn"));
    }
}
