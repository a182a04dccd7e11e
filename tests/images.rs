//! Images against real peers: layouts built with umoci (several layers: a
//! deleted file, an opaque directory, hard links, symlinks) and a docker
//! archive written by skopeo, imported with `hull import`; the tree hull
//! stacks must equal `umoci unpack` of the same image. Bad input fails with
//! a clear error and leaves the store consistent.
//!
//! Needs root (owners, device nodes, overlay mounts) and Debian's umoci and
//! skopeo (scripts/install-deps.sh).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use hull_images::testing::{RawEntry, raw_tar};

#[path = "support/build_env.rs"]
mod build_env;
#[path = "support/registry.rs"]
mod registry;
#[path = "support/tree.rs"]
mod tree;

use build_env::sh;
use registry::{Registry, free_port, start_registry};
use tree::walk;

fn require_root_and_tools() {
    build_env::require_root(
        "the image tests need root (layer owners, device nodes, overlay mounts): run the tests as root",
    );
    build_env::require_tools(&["umoci", "skopeo", "mkfs.erofs"]);
}

fn hull(data: &Path, args: &[&str]) -> (i32, String, String) {
    // Its own short state dir (container sockets live in it).
    let state = tempfile::tempdir().unwrap();
    build_env::hull_in(data, state.path(), args)
}

/// Appends a layer made from raw tar entries (path, kind, data, link).
fn add_raw_layer(layout: &Path, tag: &str, entries: &[RawEntry<'_>]) {
    let tar = layout.with_extension("layer.tar");
    fs::write(&tar, raw_tar(entries)).unwrap();
    sh(&format!(
        "umoci raw add-layer --image '{}:{tag}' '{}'",
        layout.display(),
        tar.display()
    ));
}

/// A three-layer image: a busybox-free base with files, links and dirs;
/// then deletions through umoci; then a hand-made opaque directory.
fn build_layered(dir: &Path) -> PathBuf {
    let layout = dir.join("layered");
    let bundle = dir.join("bundle");
    let l = layout.display();
    let b = bundle.display();
    sh(&format!(
        "umoci init --layout {l} && umoci new --image {l}:v1 && umoci unpack --image {l}:v1 {b} >/dev/null"
    ));
    let r = bundle.join("rootfs");
    fs::create_dir_all(r.join("etc/conf.d")).unwrap();
    fs::create_dir_all(r.join("data/old")).unwrap();
    fs::create_dir_all(r.join("srv")).unwrap();
    fs::write(r.join("etc/hostname"), "layered\n").unwrap();
    fs::write(r.join("etc/conf.d/a.conf"), "a=1\n").unwrap();
    fs::write(r.join("etc/deleted-later"), "gone soon\n").unwrap();
    fs::write(r.join("data/old/1"), "old one\n").unwrap();
    fs::write(r.join("data/old/2"), "old two\n").unwrap();
    fs::write(r.join("srv/original"), "shared inode\n").unwrap();
    fs::hard_link(r.join("srv/original"), r.join("srv/hardlink")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", r.join("srv/abs-link")).unwrap();
    std::os::unix::fs::symlink("../etc/conf.d", r.join("srv/rel-link")).unwrap();
    fs::write(r.join("srv/suid"), "x").unwrap();
    fs::set_permissions(r.join("srv/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(r.join("srv/owned"), "y").unwrap();
    sh(&format!("chown 1000:2000 {}/srv/owned", r.display()));
    sh(&format!("umoci repack --image {l}:v1 {b}"));
    // Layer 2: a deletion and a changed file (umoci writes the whiteout),
    // from a fresh unpack of layer 1.
    sh(&format!(
        "rm -rf {b} && umoci unpack --image {l}:v1 {b} >/dev/null"
    ));
    fs::remove_file(r.join("etc/deleted-later")).unwrap();
    fs::write(r.join("etc/hostname"), "layered-v2\n").unwrap();
    sh(&format!("umoci repack --image {l}:v1 {b}"));
    // Layer 3: /data replaced wholesale (an opaque directory).
    add_raw_layer(
        &layout,
        "v1",
        &[
            ("data/", tar::EntryType::Directory, b"", ""),
            ("data/.wh..wh..opq", tar::EntryType::Regular, b"", ""),
            ("data/new", tar::EntryType::Regular, b"fresh\n", ""),
        ],
    );
    sh(&format!(
        "umoci config --image {l}:v1 --config.cmd /bin/true --os linux --architecture amd64"
    ));
    layout
}

/// Mounts hull's layers of `image` with overlayfs, as the ns backend does.
struct Merged(PathBuf);

impl Drop for Merged {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn merged_view(data: &Path, image: &str, dir: &Path) -> Merged {
    let (code, out, err) = hull(data, &["image", "inspect", image]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let diff_ids: Vec<String> = v[0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["diff_id"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect();
    // `hull run` prepares the layers; here we ask for them without a VM.
    let (code, _, err) = hull(
        data,
        &["run", "--rm", "--isolation", "ns", image, "/bin/true"],
    );
    // The image has no /bin/true: 127 after the layers were prepared.
    assert_eq!(code, 127, "{err}");
    let lower: Vec<String> = diff_ids
        .iter()
        .rev()
        .map(|d| {
            data.join("layers")
                .join(d)
                .join("root")
                .display()
                .to_string()
        })
        .collect();
    let mnt = dir.join("merged");
    fs::create_dir_all(&mnt).unwrap();
    sh(&format!(
        "mount -t overlay overlay -o ro,lowerdir={} {}",
        lower.join(":"),
        mnt.display()
    ));
    Merged(mnt)
}

#[test]
fn layered_image_equals_umoci_unpack() {
    require_root_and_tools();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let layout = build_layered(dir.path());
    let (code, out, err) = hull(
        &data,
        &["import", "--tag", "layered:v1", layout.to_str().unwrap()],
    );
    assert_eq!(code, 0, "import failed: {err}");
    assert!(out.contains("layered:v1"), "{out}");
    let (_, list, _) = hull(&data, &["images", "--json"]);
    assert!(list.contains("\"layers\": 3"), "three layers: {list}");

    let reference = dir.path().join("ref");
    sh(&format!(
        "umoci unpack --image {}:v1 {} >/dev/null",
        layout.display(),
        reference.display()
    ));
    let m = merged_view(&data, "layered:v1", dir.path());
    let want = walk(&reference.join("rootfs"));
    let got = walk(&m.0);
    for (p, n) in &want {
        assert_eq!(
            got.get(p),
            Some(n),
            "{} differs from umoci unpack",
            p.display()
        );
    }
    let extra: Vec<_> = got.keys().filter(|p| !want.contains_key(*p)).collect();
    assert!(extra.is_empty(), "paths umoci does not have: {extra:?}");
    assert!(
        !got.contains_key(Path::new("etc/deleted-later")),
        "whiteout"
    );
    assert!(!got.contains_key(Path::new("data/old")), "opaque directory");
    let ino = |p: &str| fs::metadata(m.0.join(p)).unwrap().ino();
    assert_eq!(ino("srv/original"), ino("srv/hardlink"), "hard link kept");
}

#[test]
fn docker_archive_from_skopeo_imports_by_its_name() {
    require_root_and_tools();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let layout = build_layered(dir.path());
    let archive = dir.path().join("saved.tar");
    sh(&format!(
        "skopeo copy --quiet oci:{}:v1 docker-archive:{}:example.org/team/app:2.0",
        layout.display(),
        archive.display()
    ));
    let (code, out, err) = hull(&data, &["import", archive.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("example.org/team/app:2.0"), "{out}");
    let (code, out, _) = hull(&data, &["image", "inspect", "example.org/team/app:2.0"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("vnd.docker.distribution.manifest.v2+json"),
        "{out}"
    );
    // Same layers as the OCI import: the diff_ids match.
    let (code, _, err) = hull(
        &data,
        &["import", "--tag", "layered:v1", layout.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let ids = |name: &str| {
        let (_, out, _) = hull(&data, &["image", "inspect", name]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["config"]["rootfs"]["diff_ids"].clone()
    };
    assert_eq!(ids("example.org/team/app:2.0"), ids("layered:v1"));
    // rmi of one keeps the blobs the other uses; rmi of both frees them.
    let (code, _, _) = hull(&data, &["rmi", "layered:v1"]);
    assert_eq!(code, 0);
    let m = merged_view(&data, "example.org/team/app:2.0", dir.path());
    assert!(m.0.join("etc/hostname").exists());
    drop(m);
    let (code, _, _) = hull(&data, &["rmi", "example.org/team/app:2.0"]);
    assert_eq!(code, 0);
    let blobs = fs::read_dir(data.join("blobs/sha256")).unwrap().count();
    let layers = fs::read_dir(data.join("layers")).unwrap().count();
    assert_eq!(
        (blobs, layers),
        (0, 0),
        "rmi of the last image frees everything"
    );
}

#[test]
fn corrupt_blob_is_refused_and_nothing_is_recorded() {
    require_root_and_tools();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let layout = build_layered(dir.path());
    // Flip the largest blob (a layer): its digest no longer matches.
    let blobs = layout.join("blobs/sha256");
    let biggest = fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .path();
    let mut bytes = fs::read(&biggest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&biggest, &bytes).unwrap();
    let (code, _, err) = hull(
        &data,
        &["import", "--tag", "bad:1", layout.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("digest"),
        "the error names the digest problem: {err}"
    );
    let (_, list, _) = hull(&data, &["images", "--json"]);
    assert_eq!(list.trim(), "[]", "no record for a broken image");
    let bad = biggest.file_name().unwrap();
    assert!(!data.join("blobs/sha256").join(bad).exists());
    assert_eq!(
        fs::read_dir(data.join("tmp")).unwrap().count(),
        0,
        "no temp left"
    );
}

#[test]
fn malicious_layers_are_refused_by_name() {
    require_root_and_tools();
    for (entries, want) in [
        (
            vec![("../escape", tar::EntryType::Regular, &b"x"[..], "")],
            "../escape",
        ),
        (
            vec![
                ("link", tar::EntryType::Symlink, &b""[..], "/tmp"),
                ("link/pwned", tar::EntryType::Regular, &b"x"[..], ""),
            ],
            "link/pwned",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let layout = dir.path().join("evil");
        sh(&format!(
            "umoci init --layout {0} && umoci new --image {0}:v1",
            layout.display()
        ));
        add_raw_layer(&layout, "v1", &entries);
        sh(&format!(
            "umoci config --image {}:v1 --config.cmd /x --os linux --architecture amd64",
            layout.display()
        ));
        let (code, _, err) = hull(
            &data,
            &["import", "--tag", "evil:v1", layout.to_str().unwrap()],
        );
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = hull(&data, &["run", "--rm", "--isolation", "ns", "evil:v1"]);
        assert_eq!(code, 125, "{err}");
        assert!(
            err.contains(want),
            "the error names the entry {want}: {err}"
        );
        assert!(!Path::new("/tmp/pwned").exists());
        assert!(!dir.path().join("escape").exists());
        assert_eq!(
            fs::read_dir(data.join("layers")).unwrap().count(),
            0,
            "no layer kept"
        );
    }
}

#[test]
fn index_without_linux_amd64_is_refused() {
    require_root_and_tools();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let layout = build_layered(dir.path());
    // Re-point index.json at a nested index whose only entry is arm64.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mut entry = index["manifests"][0].clone();
    entry["platform"] = serde_json::json!({"os": "linux", "architecture": "arm64"});
    let nested = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry],
    });
    let bytes = serde_json::to_vec(&nested).unwrap();
    let digest = {
        let out = Command::new("sha256sum")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(&bytes)?;
                c.wait_with_output()
            })
            .unwrap();
        String::from_utf8_lossy(&out.stdout)[..64].to_string()
    };
    fs::write(layout.join("blobs/sha256").join(&digest), &bytes).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{digest}"),
            "size": bytes.len(),
        }],
    });
    fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    let (code, _, err) = hull(
        &data,
        &["import", "--tag", "arm:1", layout.to_str().unwrap()],
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "the error names what is there and what is needed: {err}"
    );
}

// --- against a real registry (Debian's docker-registry on 127.0.0.1) -------

impl Registry {
    fn push(&self, layout: &Path, tag: &str, dest: &str, extra: &str) {
        sh(&format!(
            "skopeo copy --quiet {extra} --dest-tls-verify=false oci:{}:{tag} docker://{}/{dest}",
            layout.display(),
            self.addr
        ));
    }

    /// The registry's file for blob `hex`.
    fn blob_file(&self, hex: &str) -> PathBuf {
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// The layout's biggest blob (a layer), by hex digest.
fn biggest_blob(layout: &Path) -> String {
    fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().len())
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned()
}

fn assert_same_tree_as_umoci(data: &Path, image: &str, layout: &Path, dir: &Path) {
    let reference = dir.join("ref");
    if !reference.exists() {
        sh(&format!(
            "umoci unpack --image {}:v1 {} >/dev/null",
            layout.display(),
            reference.display()
        ));
    }
    let m = merged_view(data, image, dir);
    let want = walk(&reference.join("rootfs"));
    let got = walk(&m.0);
    assert_eq!(got, want, "{image}: the tree differs from umoci unpack");
}

#[test]
fn pull_oci_docker_and_index_from_a_local_registry() {
    require_root_and_tools();
    let reg = start_registry();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let layout = build_layered(dir.path());
    reg.push(&layout, "v1", "team/app:oci", "--format oci");
    reg.push(&layout, "v1", "team/app:docker", "--format v2s2");
    for tag in ["oci", "docker"] {
        let name = format!("{}/team/app:{tag}", reg.addr);
        let (code, out, err) = hull(&data, &["pull", &name]);
        assert_eq!(code, 0, "pull {name}: {err}");
        assert!(out.contains(&name), "{out}");
        assert_same_tree_as_umoci(&data, &name, &layout, dir.path());
    }
    let (_, out, _) = hull(
        &data,
        &["image", "inspect", &format!("{}/team/app:docker", reg.addr)],
    );
    assert!(
        out.contains("vnd.docker.distribution.manifest.v2+json"),
        "{out}"
    );

    // A multi-platform index: amd64 (the image) and arm64 (same manifest,
    // labelled otherwise); hull must take the amd64 entry.
    let multi = dir.path().join("multi");
    sh(&format!("cp -a {} {}", layout.display(), multi.display()));
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(multi.join("index.json")).unwrap()).unwrap();
    let mut amd = index["manifests"][0].clone();
    amd["platform"] = serde_json::json!({"os": "linux", "architecture": "amd64"});
    let mut arm = amd.clone();
    arm["platform"]["architecture"] = "arm64".into();
    amd["annotations"] = serde_json::json!({});
    arm["annotations"] = serde_json::json!({});
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [arm, amd],
    }))
    .unwrap();
    let hex = sha256_hex(&nested);
    fs::write(multi.join("blobs/sha256").join(&hex), &nested).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": "v1"},
        }],
    });
    fs::write(multi.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    reg.push(&multi, "v1", "team/app:multi", "--all");
    let name = format!("{}/team/app:multi", reg.addr);
    let (code, _, err) = hull(&data, &["pull", "-q", &name]);
    assert_eq!(code, 0, "pull of an index: {err}");
    assert_same_tree_as_umoci(&data, &name, &layout, dir.path());
}

fn sha256_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

#[test]
fn bad_registries_and_blobs_fail_clearly_and_keep_nothing() {
    require_root_and_tools();
    let reg = start_registry();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let layout = build_layered(dir.path());
    reg.push(&layout, "v1", "t/corrupt:1", "--format oci");
    let hex = biggest_blob(&layout);
    let stored = |data: &Path| -> Vec<String> {
        fs::read_dir(data.join("blobs/sha256"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };

    // A blob whose bytes changed in the registry's storage.
    let file = reg.blob_file(&hex);
    let mut bytes = fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&file, &bytes).unwrap();
    let (code, _, err) = hull(&data, &["pull", "-q", &format!("{}/t/corrupt:1", reg.addr)]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("digest") && err.contains(&hex),
        "names the blob: {err}"
    );
    assert!(
        !stored(&data).contains(&hex),
        "the corrupt blob is not kept"
    );
    let (_, list, _) = hull(&data, &["images", "--json"]);
    assert_eq!(list.trim(), "[]");

    // The same blob truncated.
    bytes.truncate(bytes.len() / 3);
    fs::write(&file, &bytes).unwrap();
    let (code, _, err) = hull(&data, &["pull", "-q", &format!("{}/t/corrupt:1", reg.addr)]);
    assert_eq!(code, 125, "{err}");
    assert!(
        !stored(&data).contains(&hex),
        "the truncated blob is not kept"
    );

    // A tag that does not exist.
    let (code, _, err) = hull(
        &data,
        &["pull", "-q", &format!("{}/t/corrupt:nope", reg.addr)],
    );
    assert_eq!(code, 125);
    assert!(err.contains("not found") && err.contains("404"), "{err}");

    // A registry that is down.
    let down = format!("127.0.0.1:{}/t/x:1", free_port());
    let t = std::time::Instant::now();
    let (code, _, err) = hull(&data, &["pull", "-q", &down]);
    assert_eq!(code, 125);
    assert!(err.contains("cannot reach"), "{err}");
    assert!(t.elapsed().as_secs() < 30, "bounded retries");

    // Only another platform.
    let arm = dir.path().join("arm");
    sh(&format!("cp -a {} {}", layout.display(), arm.display()));
    sh(&format!(
        "umoci config --image {}:v1 --architecture arm64",
        arm.display()
    ));
    reg.push(&arm, "v1", "t/arm:1", "--format oci");
    let (code, _, err) = hull(&data, &["pull", "-q", &format!("{}/t/arm:1", reg.addr)]);
    assert_eq!(code, 125);
    assert!(
        err.contains("linux/amd64") && err.contains("arm64"),
        "{err}"
    );
    assert!(
        fs::read_dir(data.join("tmp")).unwrap().next().is_none(),
        "no temp left"
    );
}
