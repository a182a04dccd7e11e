//! What a user reads when an image operation fails: `hull` prints errors as
//! a chain (`{:#}`), so each cause must appear once, not once per level.

use std::path::Path;

use hull_images::digest::Digest;
use hull_images::layers;
use hull_images::store::{LayerRecord, Store};

/// The error as `hull` prints it, after checking that no level repeats
/// the message of the level below it.
fn rendered(e: impl std::error::Error + Send + Sync + 'static) -> String {
    let mut levels = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        levels.push(c.to_string());
        cause = c.source();
    }
    for pair in levels.windows(2) {
        assert!(
            !pair[0].contains(pair[1].as_str()),
            "{:?} repeats its cause {:?}",
            pair[0],
            pair[1]
        );
    }
    let out = format!("{:#}", anyhow::Error::from(e));
    let segments: Vec<&str> = out.split(": ").collect();
    for (i, s) in segments.iter().enumerate() {
        assert!(
            !segments[i + 1..].contains(s),
            "{s:?} appears twice in {out:?}"
        );
    }
    out
}

/// A tar with one regular file at `path`, which may be one the tar crate's
/// builder would refuse.
fn tar_with(path: &str) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(1);
    h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"x"[..]).unwrap();
    b.into_inner().unwrap()
}

#[test]
fn a_layer_entry_going_up_is_named_once() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let tar = tar_with("../evil");
    let digest = store.put_bytes(&tar, None).unwrap();
    let layer = LayerRecord {
        digest: digest.clone(),
        diff_id: digest.clone(),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        size: tar.len() as u64,
    };
    let e = layers::prepare(&store, &layer, false).unwrap_err();
    assert_eq!(
        rendered(e),
        format!("layer {digest}: layer entry \"../evil\": path goes up with ..")
    );
}

#[test]
fn a_blob_with_the_wrong_digest_says_so_once() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let wrong = Digest::of(b"other content");
    let e = store.put_bytes(b"content", Some(&wrong)).unwrap_err();
    let out = rendered(e);
    assert!(
        out.starts_with(&format!("blob {wrong}: content has digest ")),
        "{out}"
    );
    assert_eq!(out.matches(&wrong.to_string()).count(), 1, "{out}");
}

#[test]
fn a_missing_import_file_is_named_with_its_cause_once() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let missing = d.path().join("no-such-image.tar");
    let e = hull_images::import::import(&store, &missing, None).unwrap_err();
    assert_eq!(
        rendered(e),
        format!(
            "{}: No such file or directory (os error 2)",
            missing.display()
        )
    );
}

#[test]
fn a_store_that_cannot_be_created_names_the_path_and_the_cause_once() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let e = Store::open(&file.join("store")).unwrap_err();
    let out = rendered(e);
    assert!(out.contains(&file.display().to_string()), "{out}");
    assert!(out.ends_with(": Not a directory (os error 20)"), "{out}");
    assert!(!Path::new(&file.join("store")).exists());
}
