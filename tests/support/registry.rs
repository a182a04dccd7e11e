//! A real registry for tests: Debian's docker-registry on a free loopback
//! port with its own storage in a temp dir, stopped on drop.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

/// A docker-registry on a free loopback port, stopped on drop.
pub struct Registry {
    child: std::process::Child,
    /// 127.0.0.1:PORT
    pub addr: String,
    /// Where it keeps blobs and manifests (tests/images.rs corrupts one).
    #[allow(dead_code)]
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn start_registry() -> Registry {
    let ok = Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        ok,
        "docker-registry is missing: run scripts/install-deps.sh"
    );
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.path().join("config.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            storage.display()
        ),
    )
    .unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Registry {
        child,
        addr,
        storage,
        _dir: dir,
    }
}
