//! `hull build --isolation vm`: a RUN step in a microVM of its own, its
//! changes sent back by the guest's agent as a tar, gives the same layer
//! entries (paths, types, modes, owners, contents, link targets, whiteouts
//! and the opaque marker) as the same step in namespaces; a guest that
//! sends a tar with a path out of the layer fails the build. Through real
//! KVM: directly on hardware KVM, inside tests/kvm-host elsewhere
//! (tests/support/vmtest.rs); two trials in one emulated-host boot.

#[path = "support/build_env.rs"]
mod build_env;
#[path = "support/vmtest.rs"]
mod vmtest;

use std::collections::BTreeMap;
use std::io::Read;

use build_env::Env;
use vmtest::{Failed, Trial, check};

/// The entries of the last layer of `image`: path -> (type, mode, uid, gid,
/// content or link target); mtimes left out.
fn last_layer(env: &Env, image: &str) -> BTreeMap<String, (u8, u32, u64, u64, Vec<u8>)> {
    let dir = env.t.path().join(format!("{image}-oci"));
    let (code, _, err) = env.hull(&[
        "save",
        "--format",
        "oci",
        "-o",
        &dir.display().to_string(),
        image,
    ]);
    assert_eq!(code, 0, "{err}");
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let layers = m["layers"].as_array().unwrap();
    let last = layers.last().unwrap()["digest"].as_str().unwrap();
    let f = std::fs::File::open(blob(last)).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = BTreeMap::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if let Some(l) = e.link_name().unwrap() {
            data = l.to_string_lossy().as_bytes().to_vec();
        }
        out.insert(
            e.path().unwrap().display().to_string(),
            (
                h.entry_type().as_byte(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                data,
            ),
        );
    }
    out
}

fn vm_and_ns_give_the_same_layer() -> Result<(), Failed> {
    let env = Env::new();
    let ctx = env.context("vm");
    let (code, out, err) = env.build_in("vm", &ctx, &["-t", "in-vm"]);
    check(code == 0, || format!("vm build: {out}{err}"))?;
    let (code, out, err) = env.build_in("ns", &ctx, &["--no-cache", "-t", "in-ns"]);
    check(code == 0, || format!("ns build: {out}{err}"))?;
    let (vm, ns) = (last_layer(&env, "in-vm"), last_layer(&env, "in-ns"));
    check(vm == ns, || {
        format!("layers differ:\nvm {vm:#?}\nns {ns:#?}")
    })?;
    for want in [
        "etc/.wh.group",
        "home/user/.wh..wh..opq",
        "data/sub/file",
        "data/link",
        "tmp/kept",
    ] {
        check(vm.contains_key(want), || {
            format!("{want} not in the layer: {vm:#?}")
        })?;
    }
    check(vm["data/sub"].2 == 1000, || {
        "data/sub is not owned by 1000".into()
    })?;
    let (code, out, err) = env.hull(&[
        "run",
        "--rm",
        "--isolation",
        "vm",
        "in-vm",
        "cat",
        "/data/link",
    ]);
    check((code, out.as_str()) == (0, "deterministic\n"), || {
        format!("run: {code} {out} {err}")
    })
}

/// A guest that sends, as its step's changes, a tar whose entry is named
/// `../../escape` (tests/support/hostile_agent.c, mode 5): the build fails
/// with one line saying what was refused, and stores no image.
fn a_hostile_tar_is_refused() -> Result<(), Failed> {
    let env = Env::new();
    let ctx = env.t.path().join("hostile");
    std::fs::create_dir_all(&ctx).map_err(|e| e.to_string())?;
    std::fs::write(ctx.join("Dockerfile"), "FROM busybox\nRUN true\n")
        .map_err(|e| e.to_string())?;
    let out = std::process::Command::new(vmtest::bin_dir().join("hull"))
        .arg("--data-dir")
        .arg(&env.data)
        .arg("--state-dir")
        .arg(&env.state)
        .args(["build", "--isolation", "vm", "-t", "hostile"])
        .arg(&ctx)
        .env("HULL_AGENT", hostile_agent())
        .output()
        .map_err(|e| format!("running hull: {e}"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    check(
        out.status.code() == Some(1)
            && err.contains(
                "the step's changes sent by the microVM were refused: the path \"../../escape\"",
            ),
        || format!("exit {:?}, stderr:\n{err}", out.status.code()),
    )?;
    let (_, images, _) = env.hull(&["images"]);
    check(!images.contains("hostile"), || {
        format!("an image was stored:\n{images}")
    })?;
    let escaped = ["escape", "../escape"].map(|p| env.t.path().join(p));
    check(escaped.iter().all(|p| !p.exists()), || {
        "a file named escape appeared".into()
    })
}

fn hostile_agent() -> std::path::PathBuf {
    vmtest::bin_dir().join("hostile_agent_5")
}

/// hull, hull-vmm and the static agent, built here where cargo is.
fn build_runtime() {
    vmtest::build_binaries();
    let status = std::process::Command::new(vmtest::repo().join("agent/build-static.sh"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running agent/build-static.sh");
    assert!(status.success(), "agent/build-static.sh failed");
    let src = vmtest::repo().join("tests/support/hostile_agent.c");
    let status = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-DMODE=5", "-o"])
        .arg(hostile_agent())
        .arg(&src)
        .status()
        .expect("gcc (and Debian's libc6-dev) is needed to build the hostile agent");
    assert!(status.success(), "building {} failed", src.display());
}

fn main() {
    let listing = std::env::args().any(|a| a == "--list");
    let skipping = std::env::var("HULL_SKIP_VM_TESTS").as_deref() == Ok("1");
    if std::env::var_os("HULL_IN_KVM_HOST").is_none() && !listing && !skipping {
        // Built here, where cargo is; the emulated host only runs them.
        build_runtime();
    }
    vmtest::run_vm_tests(vec![
        Trial::test("build_vm_run_equals_ns", vm_and_ns_give_the_same_layer),
        Trial::test("build_vm_hostile_tar_is_refused", a_hostile_tar_is_refused),
    ]);
}
