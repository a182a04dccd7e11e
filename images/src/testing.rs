//! Test helpers for this crate's tests and hull's (the `test-utils`
//! feature), in the manner of rust-vmm's `test-utils` mocks.

/// One raw tar entry: path, kind, contents, link target ("" for none).
pub type RawEntry<'a> = (&'a str, tar::EntryType, &'a [u8], &'a str);

/// A tar of `entries`, their names written as given, past the tar crate's
/// own path checks (these tests feed names a careful writer refuses). Each
/// entry is root's, 0755 (a directory) or 0644, modified at 1_000_000.
pub fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        if !link.is_empty() {
            h.set_link_name(link)
                .expect("a link target that fits a tar header");
        }
        let bytes = path.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_cksum();
        b.append(&h, *data).expect("appending to a tar in memory");
    }
    b.into_inner().expect("finishing a tar in memory")
}
