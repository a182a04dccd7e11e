//! The FUSE server driven with requests as the guest's driver sends them:
//! what the guest can do inside the share, and what it cannot do outside.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use super::dax::DaxWindow;
use super::protocol as p;
use super::server::{Answer, ROOT_ID, Server};
use crate::config::FsCache;

struct Share {
    top: PathBuf,
    dir: PathBuf,
}

impl Share {
    /// A share `top/share` beside a file `top/outside`.
    fn new(name: &str) -> Share {
        let top = std::env::temp_dir().join(format!("hull-fs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let dir = top.join("share");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(top.join("outside"), b"host secret").unwrap();
        std::fs::write(dir.join("inside"), b"hello").unwrap();
        Share { top, dir }
    }
    fn server(&self, ro: bool) -> Server {
        Server::open(&self.dir, ro, None).unwrap()
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.top);
    }
}

fn req(opcode: u32, node: u64, uid: u32, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((40 + body.len()) as u32).to_le_bytes());
    v.extend_from_slice(&opcode.to_le_bytes());
    v.extend_from_slice(&7u64.to_le_bytes());
    v.extend_from_slice(&node.to_le_bytes());
    v.extend_from_slice(&uid.to_le_bytes());
    v.extend_from_slice(&uid.to_le_bytes());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&[0; 4]);
    v.extend_from_slice(body);
    v
}

/// The reply's errno (positive) and body.
fn call(s: &mut Server, opcode: u32, node: u64, body: &[u8]) -> (i32, Vec<u8>) {
    call_as(s, opcode, node, 0, body)
}

fn call_as(s: &mut Server, opcode: u32, node: u64, uid: u32, body: &[u8]) -> (i32, Vec<u8>) {
    match s.handle(&req(opcode, node, uid, body), 1 << 20) {
        Answer::Reply(r) => {
            assert_eq!(
                u32::from_le_bytes(r[0..4].try_into().unwrap()) as usize,
                r.len()
            );
            let err = -i32::from_le_bytes(r[4..8].try_into().unwrap());
            (err, r[16..].to_vec())
        }
        Answer::ReplyAfterData(..) | Answer::None => panic!("no reply to opcode {opcode}"),
    }
}

fn name(n: &str) -> Vec<u8> {
    let mut v = n.as_bytes().to_vec();
    v.push(0);
    v
}

fn lookup(s: &mut Server, parent: u64, n: &str) -> Result<u64, i32> {
    let (e, b) = call(s, p::LOOKUP, parent, &name(n));
    if e != 0 {
        return Err(e);
    }
    // Node 0: a name that is not there (a negative entry the guest caches).
    match u64::from_le_bytes(b[0..8].try_into().unwrap()) {
        0 => Err(libc::ENOENT),
        node => Ok(node),
    }
}

fn open(s: &mut Server, node: u64, flags: i32) -> Result<u64, i32> {
    open_with(s, p::OPEN, node, flags)
}

/// OPEN or OPENDIR (fuse_open_in): the handle.
fn open_with(s: &mut Server, opcode: u32, node: u64, flags: i32) -> Result<u64, i32> {
    let mut b = (flags as u32).to_le_bytes().to_vec();
    b.extend_from_slice(&[0; 4]);
    let (e, body) = call(s, opcode, node, &b);
    if e != 0 {
        return Err(e);
    }
    Ok(u64::from_le_bytes(body[0..8].try_into().unwrap()))
}

/// The body of a READ, WRITE (its data follows) or READDIR: fuse_read_in
/// and fuse_write_in start alike (fh, offset, size) and are 40 bytes.
fn io_in(fh: u64, off: u64, size: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&fh.to_le_bytes());
    b.extend_from_slice(&off.to_le_bytes());
    b.extend_from_slice(&size.to_le_bytes());
    b.extend_from_slice(&[0; 20]);
    b
}

fn read(s: &mut Server, fh: u64) -> Result<Vec<u8>, i32> {
    let b = io_in(fh, 0, 4096);
    let (e, body) = call(s, p::READ, 0, &b);
    if e != 0 { Err(e) } else { Ok(body) }
}

/// The body of a request that makes a name (CREATE, MKNOD, MKDIR): its
/// struct's u32 fields, then the name.
fn fields_then_name(fields: &[u32], n: &str) -> Vec<u8> {
    let mut b: Vec<u8> = fields.iter().flat_map(|f| f.to_le_bytes()).collect();
    b.extend_from_slice(&name(n));
    b
}

/// CREATE (fuse_create_in: flags, mode, umask, padding): the node, the
/// handle and the reply's open flags.
fn create_open(
    s: &mut Server,
    parent: u64,
    n: &str,
    mode: u32,
    uid: u32,
) -> Result<(u64, u64, u32), i32> {
    let flags = (libc::O_RDWR | libc::O_CREAT) as u32;
    let b = fields_then_name(&[flags, mode, 0, 0], n);
    let (e, body) = call_as(s, p::CREATE, parent, uid, &b);
    if e != 0 {
        return Err(e);
    }
    let node = u64::from_le_bytes(body[0..8].try_into().unwrap());
    let fh = u64::from_le_bytes(body[p::ENTRY_LEN..p::ENTRY_LEN + 8].try_into().unwrap());
    let open_flags = u32::from_le_bytes(
        body[p::ENTRY_LEN + 8..p::ENTRY_LEN + 12]
            .try_into()
            .unwrap(),
    );
    Ok((node, fh, open_flags))
}

fn create(s: &mut Server, parent: u64, n: &str, mode: u32, uid: u32) -> Result<(u64, u64), i32> {
    create_open(s, parent, n, mode, uid).map(|(node, fh, _)| (node, fh))
}

fn write(s: &mut Server, fh: u64, data: &[u8]) -> Result<u32, i32> {
    let mut b = io_in(fh, 0, data.len() as u32);
    b.extend_from_slice(data);
    let (e, body) = call(s, p::WRITE, 0, &b);
    if e != 0 {
        return Err(e);
    }
    Ok(u32::from_le_bytes(body[0..4].try_into().unwrap()))
}

#[test]
fn names_that_leave_the_directory_are_refused() {
    let share = Share::new("names");
    let mut s = share.server(false);
    assert_eq!(lookup(&mut s, ROOT_ID, ".."), Err(libc::EINVAL));
    assert_eq!(lookup(&mut s, ROOT_ID, "."), Err(libc::EINVAL));
    assert_eq!(lookup(&mut s, ROOT_ID, "../outside"), Err(libc::EINVAL));
    assert_eq!(lookup(&mut s, ROOT_ID, ""), Err(libc::EINVAL));
    assert_eq!(lookup(&mut s, ROOT_ID, "outside"), Err(libc::ENOENT));
    let inside = lookup(&mut s, ROOT_ID, "inside").unwrap();
    let fh = open(&mut s, inside, libc::O_RDONLY).unwrap();
    assert_eq!(read(&mut s, fh).unwrap(), b"hello");
    // A file is not a directory to look names up in.
    assert_eq!(lookup(&mut s, inside, "x"), Err(libc::ENOTDIR));
    // A node the server never handed out.
    assert_eq!(lookup(&mut s, 999, "inside"), Err(libc::EBADF));
}

#[test]
fn symlinks_are_never_followed_on_the_host() {
    let share = Share::new("symlinks");
    std::os::unix::fs::symlink("/etc/shadow", share.dir.join("shadow")).unwrap();
    std::os::unix::fs::symlink("../outside", share.dir.join("up")).unwrap();
    std::os::unix::fs::symlink("/etc", share.dir.join("etc")).unwrap();
    let mut s = share.server(false);
    for link in ["shadow", "up"] {
        let node = lookup(&mut s, ROOT_ID, link).unwrap();
        // The link itself: opening it for reading is refused, reading it
        // gives the text the guest resolves in its own tree.
        assert_eq!(open(&mut s, node, libc::O_RDONLY), Err(libc::EINVAL));
        assert_eq!(open(&mut s, node, libc::O_WRONLY), Err(libc::EINVAL));
        let (e, target) = call(&mut s, p::READLINK, node, &[]);
        assert_eq!(e, 0);
        assert!(target == b"/etc/shadow" || target == b"../outside");
    }
    let etc = lookup(&mut s, ROOT_ID, "etc").unwrap();
    assert_eq!(lookup(&mut s, etc, "shadow"), Err(libc::ENOTDIR));
    assert_eq!(lookup(&mut s, etc, "passwd"), Err(libc::ENOTDIR));
}

#[test]
fn a_symlink_swapped_in_under_a_looked_up_name_is_not_followed() {
    let share = Share::new("swap");
    let mut s = share.server(false);
    for i in 0..200 {
        let f = share.dir.join("flip");
        let _ = std::fs::remove_file(&f);
        if i % 2 == 0 {
            std::fs::write(&f, b"inside data").unwrap();
        } else {
            std::os::unix::fs::symlink(share.top.join("outside"), &f).unwrap();
        }
        if let Ok(node) = lookup(&mut s, ROOT_ID, "flip") {
            if let Ok(fh) = open(&mut s, node, libc::O_RDONLY) {
                assert_eq!(read(&mut s, fh).unwrap(), b"inside data");
            }
        }
    }
}

#[test]
fn hard_links_name_only_inodes_inside() {
    let share = Share::new("links");
    let mut s = share.server(false);
    let inside = lookup(&mut s, ROOT_ID, "inside").unwrap();
    let mut b = inside.to_le_bytes().to_vec();
    b.extend_from_slice(&name("again"));
    let (e, _) = call(&mut s, p::LINK, ROOT_ID, &b);
    assert_eq!(e, 0);
    assert_eq!(std::fs::read(share.dir.join("again")).unwrap(), b"hello");
    // Any other node number is not an inode of the share.
    for bogus in [0u64, 2_000_000, u64::MAX] {
        let mut b = bogus.to_le_bytes().to_vec();
        b.extend_from_slice(&name("evil"));
        assert_eq!(call(&mut s, p::LINK, ROOT_ID, &b).0, libc::EBADF);
    }
    assert!(!share.dir.join("evil").exists());
}

#[test]
fn a_read_only_share_refuses_every_change_on_the_host_side() {
    let share = Share::new("ro");
    let mut s = share.server(true);
    let inside = lookup(&mut s, ROOT_ID, "inside").unwrap();
    assert_eq!(open(&mut s, inside, libc::O_WRONLY), Err(libc::EROFS));
    assert_eq!(open(&mut s, inside, libc::O_RDWR), Err(libc::EROFS));
    assert_eq!(
        open(&mut s, inside, libc::O_RDONLY | libc::O_TRUNC),
        Err(libc::EROFS)
    );
    assert_eq!(create(&mut s, ROOT_ID, "new", 0o644, 0), Err(libc::EROFS));
    let mkdir = fields_then_name(&[0o755, 0], "d");
    assert_eq!(call(&mut s, p::MKDIR, ROOT_ID, &mkdir).0, libc::EROFS);
    assert_eq!(
        call(&mut s, p::UNLINK, ROOT_ID, &name("inside")).0,
        libc::EROFS
    );
    let mut setattr = vec![0u8; 88];
    setattr[0..4].copy_from_slice(&p::FATTR_SIZE.to_le_bytes());
    assert_eq!(call(&mut s, p::SETATTR, inside, &setattr).0, libc::EROFS);
    // A handle opened for reading cannot be written through either.
    let fh = open(&mut s, inside, libc::O_RDONLY).unwrap();
    assert_eq!(write(&mut s, fh, b"x"), Err(libc::EROFS));
    assert_eq!(std::fs::read(share.dir.join("inside")).unwrap(), b"hello");
}

#[test]
fn files_the_guest_makes_have_its_ids_and_no_set_id_bits() {
    let share = Share::new("owners");
    let mut s = share.server(false);
    let (_, fh) = create(&mut s, ROOT_ID, "made", 0o6755, 1000).unwrap();
    assert_eq!(write(&mut s, fh, b"from the guest"), Ok(14));
    let m = std::fs::metadata(share.dir.join("made")).unwrap();
    assert_eq!(
        std::fs::read(share.dir.join("made")).unwrap(),
        b"from the guest"
    );
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!((m.uid(), m.gid()), (1000, 1000));
    }
    // No device nodes.
    // mode, rdev 1:3 (/dev/null), umask, padding.
    let mknod = fields_then_name(&[libc::S_IFCHR | 0o666, 0x0103, 0, 0], "null");
    assert_eq!(call(&mut s, p::MKNOD, ROOT_ID, &mknod).0, libc::EPERM);
    assert!(!share.dir.join("null").exists());
}

#[test]
fn directories_list_and_forgotten_inodes_are_released() {
    let share = Share::new("readdir");
    for i in 0..50 {
        std::fs::write(share.dir.join(format!("f{i}")), b"").unwrap();
    }
    let mut s = share.server(false);
    let fh = open_with(&mut s, p::OPENDIR, ROOT_ID, 0).unwrap();
    let mut names = Vec::new();
    let mut off = 0u64;
    loop {
        let (e, body) = call(&mut s, p::READDIR, ROOT_ID, &io_in(fh, off, 512));
        assert_eq!(e, 0);
        if body.is_empty() {
            break;
        }
        let mut pos = 0;
        while pos + 24 <= body.len() {
            let o = u64::from_le_bytes(body[pos + 8..pos + 16].try_into().unwrap());
            let n = u32::from_le_bytes(body[pos + 16..pos + 20].try_into().unwrap()) as usize;
            names.push(String::from_utf8(body[pos + 24..pos + 24 + n].to_vec()).unwrap());
            off = o;
            pos += (24 + n + 7) & !7;
        }
    }
    assert_eq!(names.len(), 50 + 1 + 2, "{names:?}"); // f*, inside, . and ..
    let before = s.inode_count();
    let node = lookup(&mut s, ROOT_ID, "f1").unwrap();
    assert_eq!(lookup(&mut s, ROOT_ID, "f1"), Ok(node));
    assert_eq!(s.inode_count(), before + 1);
    let mut forget = req(p::FORGET, node, 0, &2u64.to_le_bytes());
    assert!(matches!(s.handle(&forget, 1 << 20), Answer::None));
    assert_eq!(s.inode_count(), before);
    forget.truncate(30); // too short for a header: no answer, no panic
    assert!(matches!(s.handle(&forget, 1 << 20), Answer::None));
}

#[test]
fn short_or_odd_requests_get_errors_not_panics() {
    let share = Share::new("odd");
    let mut s = share.server(false);
    for op in 0..60u32 {
        for len in [0usize, 3, 8, 17, 40, 88] {
            let body = vec![0xffu8; len];
            let _ = s.handle(&req(op, ROOT_ID, 0, &body), 1 << 20);
            let _ = s.handle(&req(op, 12345, 0, &body), 64);
        }
    }
    // A reply that does not fit the guest's buffer is an error, not a
    // truncated reply.
    let r = s.handle(&req(p::LOOKUP, ROOT_ID, 0, &name("inside")), 32);
    let Answer::Reply(r) = r else { panic!() };
    assert_eq!(r.len(), 16);
    assert!(Path::new(&share.dir).join("inside").exists());
}

/// `rm -rf` reads a directory while it unlinks what it read: on tmpfs before
/// Linux 6.6
/// (offsets count entries) a seek back to an offset taken before the
/// unlinks would skip live entries, and rmdir would find the directory
/// not empty. (Tmpfs offsets are stable on newer kernels, where this
/// passes either way; the emulated KVM host runs 6.1.)
#[test]
fn a_directory_emptied_while_it_is_read_is_read_to_the_end() {
    let shm = Path::new("/dev/shm");
    let share = if shm.is_dir() {
        let top = shm.join(format!("hull-fs-rmrf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(top.join("share")).unwrap();
        std::fs::write(top.join("outside"), b"x").unwrap();
        Share {
            dir: top.join("share"),
            top,
        }
    } else {
        Share::new("rmrf")
    };
    for i in 0..300 {
        std::fs::write(share.dir.join(format!("f{i}")), b"").unwrap();
    }
    let mut s = share.server(false);
    let fh = open_with(&mut s, p::OPENDIR, ROOT_ID, 0).unwrap();
    let mut off = 0u64;
    loop {
        let (e, body) = call(&mut s, p::READDIR, ROOT_ID, &io_in(fh, off, 512));
        assert_eq!(e, 0);
        if body.is_empty() {
            break;
        }
        // Like a guest whose caller's buffer fills: only the first half of
        // each reply is consumed.
        let mut pos = 0;
        let mut consumed = 0;
        while pos + 24 <= body.len() && (consumed == 0 || pos < body.len() / 2) {
            consumed += 1;
            off = u64::from_le_bytes(body[pos + 8..pos + 16].try_into().unwrap());
            let n = u32::from_le_bytes(body[pos + 16..pos + 20].try_into().unwrap()) as usize;
            let name = &body[pos + 24..pos + 24 + n];
            if name != b"." && name != b".." {
                let mut un = name.to_vec();
                un.push(0);
                assert_eq!(call(&mut s, p::UNLINK, ROOT_ID, &un).0, 0);
            }
            pos += (24 + n + 7) & !7;
        }
    }
    let left: Vec<_> = std::fs::read_dir(&share.dir).unwrap().collect();
    assert!(left.is_empty(), "{} entries were never listed", left.len());
}

/// The guest keeps a file's cached data across opens (FOPEN_KEEP_CACHE)
/// and drops it when refreshed attributes show a host change
/// (AUTO_INVAL_DATA): what makes a re-read come from its page cache.
#[test]
fn files_keep_their_cache_across_opens() {
    let share = Share::new("cache");
    let mut s = share.server(false);
    let offered = p::INIT_ASYNC_READ | p::INIT_AUTO_INVAL_DATA | (1 << 10);
    let mut init = Vec::new();
    for f in [p::KERNEL_VERSION, p::KERNEL_MINOR, 1 << 20, offered] {
        init.extend_from_slice(&f.to_le_bytes());
    }
    let (e, body) = call(&mut s, p::INIT, 0, &init);
    assert_eq!(e, 0);
    let flags = u32::from_le_bytes(body[12..16].try_into().unwrap());
    assert_eq!(
        flags,
        p::INIT_ASYNC_READ | p::INIT_AUTO_INVAL_DATA,
        "only offered flags the server wants"
    );
    let open_flags = |s: &mut Server, opcode, node| {
        let (e, body) = call(s, opcode, node, &[0; 8]);
        assert_eq!(e, 0);
        u32::from_le_bytes(body[8..12].try_into().unwrap())
    };
    let inside = lookup(&mut s, ROOT_ID, "inside").unwrap();
    assert_eq!(open_flags(&mut s, p::OPEN, inside), p::FOPEN_KEEP_CACHE);
    assert_eq!(open_flags(&mut s, p::OPENDIR, ROOT_ID), 0);
    let (_, _, created) = create_open(&mut s, ROOT_ID, "new", 0o644, 0).unwrap();
    assert_eq!(created, p::FOPEN_KEEP_CACHE);
}

/// What OPEN and CREATE answer for each open mode, per cache setting: by
/// default only write-only opens bypass the guest's page cache; with
/// cache=never every file does, with cache=always none; directories are
/// never direct.
#[test]
fn the_cache_setting_decides_which_opens_go_direct() {
    let share = Share::new("direct");
    let open_reply = |s: &mut Server, opcode, node, flags: i32| {
        let mut b = (flags as u32).to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 4]);
        let (e, body) = call(s, opcode, node, &b);
        assert_eq!(e, 0);
        u32::from_le_bytes(body[8..12].try_into().unwrap())
    };
    let create_reply = |s: &mut Server, name: &str, flags: i32| {
        let b = fields_then_name(&[(flags | libc::O_CREAT) as u32, 0o644, 0, 0], name);
        let (e, body) = call(s, p::CREATE, ROOT_ID, &b);
        assert_eq!(e, 0);
        u32::from_le_bytes(body[body.len() - 8..body.len() - 4].try_into().unwrap())
    };
    let (direct, cached) = (p::FOPEN_DIRECT_IO, p::FOPEN_KEEP_CACHE);
    for (cache, rd, wr, rdwr) in [
        (FsCache::Auto, cached, direct, cached),
        (FsCache::Never, direct, direct, direct),
        (FsCache::Always, cached, cached, cached),
    ] {
        let mut s = share.server(false);
        s.set_cache(cache);
        let inside = lookup(&mut s, ROOT_ID, "inside").unwrap();
        assert_eq!(
            open_reply(&mut s, p::OPEN, inside, libc::O_RDONLY),
            rd,
            "{cache:?}"
        );
        assert_eq!(
            open_reply(&mut s, p::OPEN, inside, libc::O_WRONLY),
            wr,
            "{cache:?}"
        );
        assert_eq!(
            open_reply(&mut s, p::OPEN, inside, libc::O_RDWR),
            rdwr,
            "{cache:?}"
        );
        assert_eq!(open_reply(&mut s, p::OPENDIR, ROOT_ID, libc::O_RDONLY), 0);
        let name = format!("w-{cache:?}");
        assert_eq!(create_reply(&mut s, &name, libc::O_WRONLY), wr, "{cache:?}");
        let name = format!("rw-{cache:?}");
        assert_eq!(create_reply(&mut s, &name, libc::O_RDWR), rdwr, "{cache:?}");
    }
}

/// The INIT reply's flags and map_alignment.
fn init_reply(s: &mut Server) -> (u32, u16) {
    let offered = p::INIT_ASYNC_READ | p::INIT_MAP_ALIGNMENT;
    let mut init = Vec::new();
    for f in [p::KERNEL_VERSION, p::KERNEL_MINOR, 1 << 20, offered] {
        init.extend_from_slice(&f.to_le_bytes());
    }
    let (e, body) = call(s, p::INIT, 0, &init);
    assert_eq!(e, 0);
    let flags = u32::from_le_bytes(body[12..16].try_into().unwrap());
    (flags, u16::from_le_bytes(body[30..32].try_into().unwrap()))
}

/// fuse_setupmapping_in: fh (the guest sends -1), foffset, len, flags, moffset.
fn setup_mapping(
    s: &mut Server,
    node: u64,
    foffset: u64,
    len: u64,
    write: bool,
    moffset: u64,
) -> i32 {
    let flags = 2 | u64::from(write); // READ, and WRITE when asked
    let b: Vec<u8> = [u64::MAX, foffset, len, flags, moffset]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    call(s, p::SETUPMAPPING, node, &b).0
}

/// fuse_removemapping_in (count) then `ranges` (moffset, len).
fn remove_mapping(s: &mut Server, count: u32, ranges: &[(u64, u64)]) -> i32 {
    let mut b = count.to_le_bytes().to_vec();
    for (off, len) in ranges {
        b.extend_from_slice(&off.to_le_bytes());
        b.extend_from_slice(&len.to_le_bytes());
    }
    call(s, p::REMOVEMAPPING, 0, &b).0
}

/// The window's first `n` bytes as the guest would read them.
fn window_bytes(w: &DaxWindow, n: usize) -> Vec<u8> {
    // SAFETY: the caller mapped at least `n` readable bytes at the start of
    // the window's reservation, which lives as long as `w`.
    unsafe { std::slice::from_raw_parts(w.host_addr() as *const u8, n) }.to_vec()
}

/// The protection of the window's first page, from /proc/self/maps
/// ("r--s", "rw-s", "---p").
fn window_prot(w: &DaxWindow) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let at = w.host_addr();
    maps.lines()
        .find_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            (a <= at && at < b).then(|| rest[..4].to_string())
        })
        .unwrap()
}

/// With a window, INIT offers page-aligned mappings; SETUPMAPPING puts the
/// host file into the window (read-only unless asked to write), what the
/// guest writes there reaches the host file, and REMOVEMAPPING puts the
/// window back to no access.
#[test]
fn dax_mappings_show_the_host_file_and_go_away() {
    let share = Share::new("dax");
    let mut s = share.server(false);
    assert_eq!(
        init_reply(&mut s).0 & p::INIT_MAP_ALIGNMENT,
        0,
        "no window, no DAX"
    );
    let w = Arc::new(DaxWindow::new(0, 4 << 20).unwrap());
    s.set_window(w.clone());
    let (flags, align) = init_reply(&mut s);
    assert_ne!(flags & p::INIT_MAP_ALIGNMENT, 0);
    assert_eq!(align, 12);
    assert_eq!(window_prot(&w), "---p");

    let inside = lookup(&mut s, ROOT_ID, "inside").unwrap();
    assert_eq!(setup_mapping(&mut s, inside, 0, 2 << 20, false, 0), 0);
    assert_eq!(window_bytes(&w, 5), b"hello");
    assert_eq!(window_prot(&w), "r--s");

    assert_eq!(setup_mapping(&mut s, inside, 0, 2 << 20, true, 0), 0);
    assert_eq!(window_prot(&w), "rw-s");
    // SAFETY: the first page is mapped writable from the file (above).
    unsafe { std::ptr::copy_nonoverlapping(b"HE".as_ptr(), w.host_addr() as *mut u8, 2) };
    assert_eq!(std::fs::read(share.dir.join("inside")).unwrap(), b"HEllo");

    assert_eq!(remove_mapping(&mut s, 1, &[(0, 2 << 20)]), 0);
    assert_eq!(window_prot(&w), "---p");
}

/// Whatever the guest asks, a mapping stays inside the window, page-aligned,
/// of a regular file the server looked up, and read-only on a read-only
/// share; a removal list is no longer than the request.
#[test]
fn dax_requests_outside_the_rules_are_refused() {
    let share = Share::new("daxbad");
    let mut s = share.server(false);
    let inside = lookup(&mut s, ROOT_ID, "inside").unwrap();
    assert_eq!(
        setup_mapping(&mut s, inside, 0, 4096, false, 0),
        libc::ENOSYS,
        "no window"
    );
    let w = Arc::new(DaxWindow::new(0, 2 << 20).unwrap());
    s.set_window(w.clone());
    let mb2 = 2u64 << 20;
    for (foff, len, moff, why) in [
        (0, mb2, 4096, "past the window's end"),
        (0, 4096, mb2, "starts at the window's end"),
        (0, 4096, u64::MAX - 4095, "offset + length overflows"),
        (0, 100, 0, "length not page-aligned"),
        (0, 4096, 100, "window offset not page-aligned"),
        (100, 4096, 0, "file offset not page-aligned"),
        (u64::MAX - 4095, 8192, 0, "file offset + length overflows"),
        (0, 0, 0, "empty"),
    ] {
        assert_eq!(
            setup_mapping(&mut s, inside, foff, len, false, moff),
            libc::EINVAL,
            "{why}"
        );
    }
    assert_eq!(
        setup_mapping(&mut s, ROOT_ID, 0, 4096, false, 0),
        libc::EINVAL,
        "a directory"
    );
    assert_eq!(
        setup_mapping(&mut s, 999, 0, 4096, false, 0),
        libc::EBADF,
        "an unknown node"
    );
    assert_eq!(
        remove_mapping(&mut s, 2, &[(0, 4096)]),
        libc::EINVAL,
        "count past the request"
    );
    assert_eq!(
        remove_mapping(&mut s, 1, &[(mb2, 4096)]),
        libc::EINVAL,
        "outside the window"
    );
    assert_eq!(window_prot(&w), "---p", "nothing was mapped");

    let mut ro = share.server(true);
    ro.set_window(w.clone());
    let inside = lookup(&mut ro, ROOT_ID, "inside").unwrap();
    assert_eq!(
        setup_mapping(&mut ro, inside, 0, 4096, true, 0),
        libc::EROFS
    );
    assert_eq!(setup_mapping(&mut ro, inside, 0, 4096, false, 0), 0);
    assert_eq!(window_prot(&w), "r--s");
}
