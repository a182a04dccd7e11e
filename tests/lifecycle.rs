//! The container lifecycle through the library, as a front end other than
//! the CLI (an OCI runtime, `hull build`) drives it: `create` records a
//! container that does not run yet (state.json says `created`), `start`
//! launches its sandbox (`running`), `attach` runs the main process, and
//! `finish` and `delete` end it. Runs the `ns` backend on this host, so it
//! needs root and the static agent (HULL_AGENT or agent/build-static.sh);
//! it fails saying so where they are missing, and is reported as ignored
//! with `HULL_SKIP_NS_TESTS=1`, as the namespace suite is.

#[path = "support/busybox.rs"]
mod busybox;
#[path = "support/captured.rs"]
mod captured;

use hull::state::Status;
use hull::{Container, ContainerConfig, ContainerError, Isolation};
use hull_agent::protocol::Start;

fn status_on_disk(c: &Container) -> String {
    let raw = std::fs::read_to_string(c.dir().join("state.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    v["status"].as_str().unwrap().to_string()
}

fn main() {
    let args = libtest_mimic::Arguments::from_args();
    let skip = std::env::var("HULL_SKIP_NS_TESTS").as_deref() == Ok("1");
    let trial = libtest_mimic::Trial::test(
        "create_then_start_then_attach_then_delete_ns_needs_root",
        || {
            create_then_start_then_attach_then_delete();
            Ok(())
        },
    )
    .with_ignored_flag(skip);
    libtest_mimic::run(&args, vec![trial]).exit();
}

fn create_then_start_then_attach_then_delete() {
    assert_eq!(
        hull::sys::euid(),
        0,
        "this test needs root: the ns backend makes namespaces, mounts and cgroups"
    );
    assert!(
        hull::paths::agent_binary().is_some_and(|a| a.is_file()),
        "the static hull-agent is not built: run agent/build-static.sh (or set HULL_AGENT)"
    );
    // Short: the agent's socket path goes under it (108 bytes at most).
    let t = tempfile::Builder::new().prefix("h").tempdir().unwrap();
    let state_dir = t.path().join("s");
    let rootfs = busybox::rootfs(&t.path().join("rootfs"));
    let config = ContainerConfig {
        name: Some("lifecycle".into()),
        layers: vec![rootfs],
        ..ContainerConfig::new("busybox", vec!["sh".into()], Isolation::Ns)
    };

    let mut c = Container::create(&state_dir, &config).unwrap();
    assert_eq!(c.state().status, Status::Created);
    assert_eq!(status_on_disk(&c), "created");
    // Another front end finds it, created and not running.
    let mut other = Container::load(&state_dir, "lifecycle").unwrap();
    assert_eq!(other.id(), c.id());
    assert!(matches!(
        other.kill(libc::SIGTERM),
        Err(ContainerError::NotRunning(_))
    ));

    c.start().unwrap();
    assert_eq!(status_on_disk(&c), "running");
    let sandbox = c.state().sandbox.expect("the sandbox's pid is recorded");
    assert!(sandbox.is_alive());
    assert!(matches!(c.start(), Err(ContainerError::AlreadyStarted(_))));

    let start = Start {
        hostname: Some("lc".into()),
        ..Start::main(
            vec![
                "sh".into(),
                "-c".into(),
                "echo hi from $(hostname); exit 3".into(),
            ],
            vec!["PATH=/bin".into()],
        )
    };
    let attached = captured::attach(&mut c, &start).unwrap();
    assert_eq!(attached.outcome.status(), 3);
    assert_eq!(attached.stdout, "hi from lc\n");
    c.finish(attached.outcome.status(), None).unwrap();
    assert_eq!(status_on_disk(&c), "exited");
    assert!(!sandbox.is_alive(), "the sandbox outlived its container");
    // The container's log has what it wrote, as `hull logs` shows it.
    let log = std::fs::read_to_string(c.dir().join("stdout.log")).unwrap();
    assert_eq!(log, "hi from lc\n");

    let mut again = Container::load(&state_dir, c.id()).unwrap();
    assert_eq!(again.wait(None).unwrap(), Some(3));
    let dir = c.dir();
    again.delete(false).unwrap();
    assert!(!dir.exists());
    assert!(Container::list(&state_dir).unwrap().is_empty());
}
