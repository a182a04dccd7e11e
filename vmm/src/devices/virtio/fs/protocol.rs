//! The FUSE wire format the guest's virtio-fs driver speaks (linux/fuse.h,
//! protocol 7.x): little-endian fixed-size structs after a request header,
//! names as NUL-terminated strings. Parsing goes through [`Args`], which
//! never reads past the request and fails with EINVAL instead.

/// The protocol version this server speaks.
pub const KERNEL_VERSION: u32 = 7;
/// The minor version answered to INIT (the guest's own when older).
pub const KERNEL_MINOR: u32 = 31;

pub const LOOKUP: u32 = 1;
pub const FORGET: u32 = 2;
pub const GETATTR: u32 = 3;
pub const SETATTR: u32 = 4;
pub const READLINK: u32 = 5;
pub const SYMLINK: u32 = 6;
pub const MKNOD: u32 = 8;
pub const MKDIR: u32 = 9;
pub const UNLINK: u32 = 10;
pub const RMDIR: u32 = 11;
pub const RENAME: u32 = 12;
pub const LINK: u32 = 13;
pub const OPEN: u32 = 14;
pub const READ: u32 = 15;
pub const WRITE: u32 = 16;
pub const STATFS: u32 = 17;
pub const RELEASE: u32 = 18;
pub const FSYNC: u32 = 20;
pub const FLUSH: u32 = 25;
pub const INIT: u32 = 26;
pub const OPENDIR: u32 = 27;
pub const READDIR: u32 = 28;
pub const RELEASEDIR: u32 = 29;
pub const FSYNCDIR: u32 = 30;
pub const ACCESS: u32 = 34;
pub const CREATE: u32 = 35;
pub const INTERRUPT: u32 = 36;
pub const DESTROY: u32 = 38;
pub const BATCH_FORGET: u32 = 42;
pub const FALLOCATE: u32 = 43;
pub const READDIRPLUS: u32 = 44;
pub const RENAME2: u32 = 45;
pub const LSEEK: u32 = 46;
pub const SETUPMAPPING: u32 = 48;
pub const REMOVEMAPPING: u32 = 49;
pub const SYNCFS: u32 = 50;

/// The name of an opcode, for logs ("OP42" for one this server does not know).
pub fn opcode_name(code: u32) -> std::borrow::Cow<'static, str> {
    std::borrow::Cow::Borrowed(match code {
        LOOKUP => "LOOKUP",
        FORGET => "FORGET",
        GETATTR => "GETATTR",
        SETATTR => "SETATTR",
        READLINK => "READLINK",
        SYMLINK => "SYMLINK",
        MKNOD => "MKNOD",
        MKDIR => "MKDIR",
        UNLINK => "UNLINK",
        RMDIR => "RMDIR",
        RENAME => "RENAME",
        LINK => "LINK",
        OPEN => "OPEN",
        READ => "READ",
        WRITE => "WRITE",
        STATFS => "STATFS",
        RELEASE => "RELEASE",
        FSYNC => "FSYNC",
        FLUSH => "FLUSH",
        INIT => "INIT",
        OPENDIR => "OPENDIR",
        READDIR => "READDIR",
        RELEASEDIR => "RELEASEDIR",
        FSYNCDIR => "FSYNCDIR",
        ACCESS => "ACCESS",
        CREATE => "CREATE",
        INTERRUPT => "INTERRUPT",
        DESTROY => "DESTROY",
        BATCH_FORGET => "BATCH_FORGET",
        FALLOCATE => "FALLOCATE",
        READDIRPLUS => "READDIRPLUS",
        RENAME2 => "RENAME2",
        SETUPMAPPING => "SETUPMAPPING",
        REMOVEMAPPING => "REMOVEMAPPING",
        LSEEK => "LSEEK",
        SYNCFS => "SYNCFS",
        _ => return std::borrow::Cow::Owned(format!("OP{code}")),
    })
}

/// INIT flags this server accepts when the guest offers them.
pub const INIT_ASYNC_READ: u32 = 1 << 0;
pub const INIT_ATOMIC_O_TRUNC: u32 = 1 << 3;
pub const INIT_BIG_WRITES: u32 = 1 << 5;
/// The guest drops a file's cached data when a refreshed attribute shows
/// the host changed its mtime (a changed size drops it anyway).
pub const INIT_AUTO_INVAL_DATA: u32 = 1 << 12;
pub const INIT_DO_READDIRPLUS: u32 = 1 << 13;
pub const INIT_PARALLEL_DIROPS: u32 = 1 << 18;
pub const INIT_MAX_PAGES: u32 = 1 << 22;
/// INIT's map_alignment holds the alignment of DAX mappings (log2).
pub const INIT_MAP_ALIGNMENT: u32 = 1 << 26;
/// SETUPMAPPING: the guest will write through the mapping.
pub const SETUPMAPPING_FLAG_WRITE: u64 = 1 << 0;

/// OPEN's and CREATE's reply flags: the file's data bypasses the guest's
/// page cache (every read and write is a request) ...
pub const FOPEN_DIRECT_IO: u32 = 1 << 0;
/// ... or the guest keeps what it cached of the file's data at this open
/// (without it, every open drops it).
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;

/// SETATTR's `valid` bits.
pub const FATTR_MODE: u32 = 1 << 0;
pub const FATTR_UID: u32 = 1 << 1;
pub const FATTR_GID: u32 = 1 << 2;
pub const FATTR_SIZE: u32 = 1 << 3;
pub const FATTR_ATIME: u32 = 1 << 4;
pub const FATTR_MTIME: u32 = 1 << 5;
pub const FATTR_FH: u32 = 1 << 6;
pub const FATTR_ATIME_NOW: u32 = 1 << 7;
pub const FATTR_MTIME_NOW: u32 = 1 << 8;

/// GETATTR's flag: `fh` names an open file.
pub const GETATTR_FH: u32 = 1;

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;
/// fuse_attr.
pub const ATTR_LEN: usize = 88;
/// fuse_entry_out.
pub const ENTRY_LEN: usize = 40 + ATTR_LEN;

/// Longest name the server accepts (NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest symlink target it accepts (PATH_MAX).
pub const PATH_MAX: usize = 4096;

/// fuse_in_header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// The arguments after the header, read front to back. Every read is
/// bounds-checked; a short request is EINVAL.
pub struct Args<'a> {
    buf: &'a [u8],
}

/// EINVAL, the answer to a request that does not parse.
pub const EINVAL: i32 = libc::EINVAL;

impl<'a> Args<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Args { buf }
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], i32> {
        if self.buf.len() < n {
            return Err(EINVAL);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn u16(&mut self) -> Result<u16, i32> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, i32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, i32> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    pub fn skip(&mut self, n: usize) -> Result<(), i32> {
        self.bytes(n).map(|_| ())
    }

    /// A NUL-terminated string of at most `max` bytes (without the NUL).
    pub fn cstr(&mut self, max: usize) -> Result<&'a [u8], i32> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or(EINVAL)?;
        if end > max {
            return Err(libc::ENAMETOOLONG);
        }
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Reads the request header; None when the request is too short to have
/// one (there is then no `unique` to answer to).
pub fn parse_header(req: &[u8]) -> Option<(InHeader, &[u8])> {
    let mut a = Args::new(req);
    let h = InHeader {
        len: a.u32().ok()?,
        opcode: a.u32().ok()?,
        unique: a.u64().ok()?,
        nodeid: a.u64().ok()?,
        uid: a.u32().ok()?,
        gid: a.u32().ok()?,
        pid: a.u32().ok()?,
    };
    a.skip(4).ok()?; // total_extlen, padding
    Some((h, a.rest()))
}

/// A reply's body, built little-endian.
#[derive(Default)]
pub struct Out(pub Vec<u8>);

impl Out {
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn zeros(&mut self, n: usize) -> &mut Self {
        self.0.resize(self.0.len() + n, 0);
        self
    }

    /// fuse_attr of a host stat.
    pub fn attr(&mut self, ino: u64, st: &libc::stat64) -> &mut Self {
        self.u64(ino)
            .u64(st.st_size as u64)
            .u64(st.st_blocks as u64)
            .u64(st.st_atime as u64)
            .u64(st.st_mtime as u64)
            .u64(st.st_ctime as u64)
            .u32(st.st_atime_nsec as u32)
            .u32(st.st_mtime_nsec as u32)
            .u32(st.st_ctime_nsec as u32)
            .u32(st.st_mode)
            .u32(st.st_nlink as u32)
            .u32(st.st_uid)
            .u32(st.st_gid)
            .u32(st.st_rdev as u32)
            .u32(st.st_blksize as u32)
            .u32(0)
    }

    /// fuse_entry_out: the node, its generation, cache lifetimes (seconds)
    /// and attributes.
    pub fn entry(&mut self, nodeid: u64, st: &libc::stat64, timeout: u64) -> &mut Self {
        self.u64(nodeid)
            .u64(0)
            .u64(timeout)
            .u64(timeout)
            .u32(0)
            .u32(0)
            .attr(nodeid, st)
    }
}

/// A whole reply: the header (with `error`, negated errno, 0 for success)
/// and the body.
pub fn reply(unique: u64, error: i32, body: &[u8]) -> Vec<u8> {
    let mut v = reply_header(unique, error, body.len());
    v.extend_from_slice(body);
    v
}

/// The header of a reply whose body of `body_len` bytes is sent apart.
pub fn reply_header(unique: u64, error: i32, body_len: usize) -> Vec<u8> {
    let len = OUT_HEADER_LEN + body_len;
    let mut v = Vec::with_capacity(len.min(OUT_HEADER_LEN + 4096));
    v.extend_from_slice(&(len as u32).to_le_bytes());
    v.extend_from_slice(&(-error).to_le_bytes());
    v.extend_from_slice(&unique.to_le_bytes());
    v
}

/// Appends one fuse_dirent (padded to 8 bytes) if it fits in `max` bytes
/// of `out`; false when it does not.
pub fn push_dirent(
    out: &mut Vec<u8>,
    max: usize,
    ino: u64,
    off: u64,
    typ: u32,
    name: &[u8],
) -> bool {
    let len = 24 + name.len();
    let padded = (len + 7) & !7;
    if out.len() + padded > max {
        return false;
    }
    out.extend_from_slice(&ino.to_le_bytes());
    out.extend_from_slice(&off.to_le_bytes());
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&typ.to_le_bytes());
    out.extend_from_slice(name);
    out.resize(out.len() + padded - len, 0);
    true
}

/// A name the guest may use for one directory entry: not empty, no '/',
/// not "." or "..", at most NAME_MAX bytes.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && !name.contains(&b'/')
        && name != b"."
        && name != b".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_never_read_past_the_request() {
        let mut a = Args::new(&[1, 0, 0, 0, b'a', b'b', 0, b'c']);
        assert_eq!(a.u32(), Ok(1));
        assert_eq!(a.cstr(10), Ok(&b"ab"[..]));
        assert_eq!(a.cstr(10), Err(EINVAL)); // no NUL
        assert_eq!(a.u64(), Err(EINVAL));
        let mut a = Args::new(b"abcdef\0");
        assert_eq!(a.cstr(3), Err(libc::ENAMETOOLONG));
        assert!(parse_header(&[0; 39]).is_none());
        assert!(parse_header(&[0; 40]).is_some());
    }

    #[test]
    fn names_with_slashes_or_dots_are_not_names() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", &[b'x'; 256]] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for good in [&b"a"[..], b"...", b".hidden", &[b'x'; 255]] {
            assert!(valid_name(good));
        }
    }

    #[test]
    fn dirents_are_padded_and_bounded() {
        let mut v = Vec::new();
        assert!(push_dirent(&mut v, 32, 1, 1, 4, b"abc"));
        assert_eq!(v.len(), 32);
        assert!(!push_dirent(&mut v, 40, 2, 2, 4, b"d"));
        assert_eq!(v.len(), 32);
    }
}
