//! What the build and image tests share: a data dir holding the busybox
//! image (made with umoci from Debian's busybox-static), running hull on a
//! data dir, and the root and tools they need.

#![allow(dead_code)]

#[path = "busybox.rs"]
mod busybox;

use std::path::{Path, PathBuf};
use std::process::Command;

const HULL: &str = env!("CARGO_BIN_EXE_hull");

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Root and `tools`, for the build tests.
pub fn require(tools: &[&str]) {
    require_root("the build tests need root (namespaces, overlay mounts, layer owners)");
    require_tools(tools);
}

/// Fails with `why` unless the tests run as root.
pub fn require_root(why: &str) {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(euid == 0, "{why}");
}

/// Fails naming the first of `tools` that is not installed.
pub fn require_tools(tools: &[&str]) {
    for tool in tools {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "{tool} is missing: run scripts/install-deps.sh");
    }
}

/// Runs hull on `data` and `state`: exit code, stdout, stderr.
pub fn hull_in(data: &Path, state: &Path, args: &[&str]) -> (i32, String, String) {
    // No network: `run` defaults to the bridge network, which must not be
    // built on the machine's own network.
    let out = Command::new(HULL)
        .env("HULL_NETWORK", "none")
        .arg("--data-dir")
        .arg(data)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A data dir with the busybox image as `busybox`, in `t`.
pub struct Env {
    pub t: tempfile::TempDir,
    pub data: PathBuf,
    /// A temp dir of its own: socket paths in it must stay short.
    pub state: PathBuf,
    pub _state: std::rc::Rc<tempfile::TempDir>,
    pub layout: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        require(&["umoci", "skopeo", "mkfs.erofs"]);
        let t = tempfile::tempdir().unwrap();
        let layout = t.path().join("busybox-oci");
        let bundle = t.path().join("bundle");
        let (l, b) = (layout.display(), bundle.display());
        sh(&format!(
            "umoci init --layout {l} && umoci new --image {l}:latest && umoci unpack --image {l}:latest {b} >/dev/null"
        ));
        busybox::rootfs(&bundle.join("rootfs"));
        sh(&format!(
            "umoci repack --image {l}:latest {b} && umoci config --image {l}:latest \
             --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
             --config.cmd sh --os linux --architecture amd64"
        ));
        let data = t.path().join("data");
        let state_dir = std::rc::Rc::new(tempfile::tempdir().unwrap());
        let e = Env {
            t,
            data,
            state: state_dir.path().to_path_buf(),
            _state: state_dir,
            layout,
        };
        let (code, _, err) = e.hull(&[
            "import",
            "--tag",
            "busybox",
            &e.layout.display().to_string(),
        ]);
        assert_eq!(code, 0, "importing busybox: {err}");
        e
    }

    pub fn hull(&self, args: &[&str]) -> (i32, String, String) {
        hull_in(&self.data, &self.state, args)
    }

    pub fn build(&self, context: &Path, extra: &[&str]) -> (i32, String, String) {
        self.build_in("ns", context, extra)
    }

    /// `hull build --isolation ISOLATION [extra...] CONTEXT`.
    pub fn build_in(
        &self,
        isolation: &str,
        context: &Path,
        extra: &[&str],
    ) -> (i32, String, String) {
        let mut args = vec!["build", "--isolation", isolation];
        args.extend_from_slice(extra);
        let ctx = context.display().to_string();
        args.push(&ctx);
        self.hull(&args)
    }

    /// A copy of tests/build/NAME in the temp dir.
    pub fn context(&self, name: &str) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/build")
            .join(name);
        let dst = self.t.path().join(name);
        sh(&format!("cp -a {} {}", src.display(), dst.display()));
        dst
    }
}
