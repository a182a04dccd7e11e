//! `hull-agent`: PID 1 of a hull guest, or of a namespace sandbox.
//!
//! - In a microVM (run as the initramfs's /init): mounts the root filesystem
//!   from the virtio-blk disks (one read-only disk per layer, stacked with
//!   overlayfs under a tmpfs upper), switches into it, and serves process
//!   sessions on vsock port 1024. When the main process ends it reports the
//!   status and resets the VM.
//! - `hull-agent ns --listen SOCKET --scratch DIR --lower DIR...`: does the
//!   same on the host as PID 1 of new pid, mount, uts, ipc and net
//!   namespaces, with host directories as layers and a Unix socket instead
//!   of vsock. `--upper DIR` keeps the writable upper layer in the host
//!   directory DIR (upper/ and work/ in it) instead of the scratch tmpfs,
//!   so that hull build reads a RUN step's changes afterwards. With `--userns BASE:SIZE` those namespaces belong to a new
//!   user namespace whose root is host id BASE, and the layers are
//!   id-mapped mounts into it. `--netns PATH` joins the network namespace
//!   hull prepared instead of a new one (`--netns host`: the host's).

/// Step-by-step trace on stderr (the guest console) when the agent's
/// environment has `HULL_AGENT_DEBUG` (hull passes it on when it has it).
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::debug_enabled() {
            eprintln!("hull-agent[debug {:.1}ms]: {}", $crate::sys::boot_ms(), format_args!($($arg)*));
        }
    };
}

mod dns;
mod export;
mod network;
mod privileges;
mod rootfs;
mod session;
mod sys;

fn debug_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HULL_AGENT_DEBUG").is_some())
}

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;

use hull_agent::protocol::{AGENT_PORT, MARK_AGENT_READY, MARK_AGENT_START, Marks};
use session::Ctx;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // As the guest's init, the kernel may pass leftover command line words
    // as arguments: PID 1 is always the VM's agent.
    if std::process::id() == 1 {
        vm_init();
    }
    match args.first().map(String::as_str) {
        Some("ns") => ns_main(&args[1..]),
        Some("--version") => println!("hull-agent {}", env!("CARGO_PKG_VERSION")),
        _ => {
            eprintln!(
                "hull-agent: run by hull as a guest's PID 1, or as `hull-agent ns --listen SOCKET --scratch DIR --lower DIR...`"
            );
            std::process::exit(125);
        }
    }
}

fn vm_init() -> ! {
    let start = sys::boot_ms();
    sys::boot_mark(MARK_AGENT_START);
    // A template's agent has no disks yet: a restored clone's main Start
    // brings them (session::serve).
    let template = std::env::var_os(hull_agent::protocol::TEMPLATE_ENV).is_some();
    let setup = if template {
        rootfs::vm_base()
    } else {
        rootfs::vm_setup()
    };
    if let Err(e) = &setup {
        eprintln!("hull-agent: {e}");
    }
    let rootfs_ms = sys::boot_ms();
    let listener = match sys::vsock_listen(AGENT_PORT) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hull-agent: cannot listen on vsock port {AGENT_PORT}: {e}");
            sys::reboot();
        }
    };
    let ctx = Arc::new(Ctx {
        marks: Marks {
            agent_start_ms: start,
            rootfs_ms,
            ready_ms: sys::boot_ms(),
        },
        root: PathBuf::from("/"),
        setup_error: setup.err(),
        in_vm: true,
        restored_root: std::sync::Mutex::new(if template {
            session::RestoredRoot::Pending
        } else {
            session::RestoredRoot::NotATemplate
        }),
    });
    sys::boot_mark(MARK_AGENT_READY);
    // The console line hull waits for before it connects (see hull's sandbox).
    eprintln!("{}", hull_agent::protocol::READY_LINE);
    serve_forever(&listener, ctx, sys::reboot)
}

/// Accepts sessions; when the main one ends, `end` finishes the sandbox.
fn serve_forever(listener: &OwnedFd, ctx: Arc<Ctx>, end: fn() -> !) -> ! {
    loop {
        let conn = match sys::accept(listener.as_raw_fd()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("hull-agent: accept: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let ctx = ctx.clone();
        std::thread::spawn(move || {
            if session::serve(std::fs::File::from(conn), &ctx).is_some() {
                end();
            }
        });
    }
}

/// `--userns BASE:SIZE`: container ids 0..SIZE are host ids BASE.. .
struct UsernsRequest {
    base: u32,
    size: u32,
    /// `--userns-optional`: without a user namespace (host ids) when the
    /// host cannot make one, instead of failing.
    optional: bool,
}

fn parse_userns(v: &str) -> Option<(u32, u32)> {
    let (b, s) = v.split_once(':')?;
    let (base, size) = (b.parse::<u32>().ok()?, s.parse::<u32>().ok()?);
    (base > 0 && size > 0 && base.checked_add(size).is_some()).then_some((base, size))
}

fn ns_fail(what: impl std::fmt::Display) -> ! {
    eprintln!("hull-agent ns: {what}");
    std::process::exit(125);
}

fn ns_main(args: &[String]) {
    let mut listen = None;
    let mut scratch = None;
    let mut lowers = Vec::new();
    let mut upper = None;
    let mut userns = None;
    let mut optional = false;
    let mut mounts: Vec<hull_agent::protocol::Mount> = Vec::new();
    let mut read_only = false;
    let mut netns = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--userns-optional" {
            optional = true;
            continue;
        }
        if a == "--read-only" {
            read_only = true;
            continue;
        }
        let v = it.next().cloned();
        match (a.as_str(), v) {
            ("--listen", Some(v)) => listen = Some(PathBuf::from(v)),
            ("--scratch", Some(v)) => scratch = Some(PathBuf::from(v)),
            ("--lower", Some(v)) => lowers.push(PathBuf::from(v)),
            ("--mount", Some(v)) => match serde_json::from_str(&v) {
                Ok(m) => mounts.push(m),
                Err(e) => ns_fail(format!("bad --mount {v}: {e}")),
            },
            ("--netns", Some(v)) => netns = Some(v),
            ("--upper", Some(v)) => upper = Some(PathBuf::from(v)),
            ("--userns", Some(v)) => match parse_userns(&v) {
                Some(r) => userns = Some(r),
                None => ns_fail(format!("bad --userns {v}: want BASE:SIZE")),
            },
            _ => ns_fail(format!("bad argument {a}")),
        }
    }
    let (Some(listen), Some(scratch)) = (listen, scratch) else {
        ns_fail("--listen and --scratch are required");
    };
    if lowers.is_empty() {
        ns_fail("at least one --lower is required");
    }
    let userns = userns.map(|(base, size)| UsernsRequest {
        base,
        size,
        optional,
    });
    if std::env::var_os("HULL_AGENT_SYNC").is_some() {
        // hull puts us in the container's cgroup first, then says go.
        let mut go = [0u8; 1];
        let _ = std::io::Read::read(&mut std::io::stdin(), &mut go);
    }
    let start = sys::boot_ms();
    // Bound here, as host root: the socket is hull's to reach.
    let listener = match UnixListener::bind(&listen) {
        Ok(l) => OwnedFd::from(l),
        Err(e) => ns_fail(format!("listening on {}: {e}", listen.display())),
    };
    let mapped = userns.and_then(|req| {
        let made = sys::new_user_namespace(req.base, req.size)
            .map_err(|e| {
                let why = if e.raw_os_error() == Some(libc::EPERM) {
                    " (refused here: from inside a chroot, or by a security policy)"
                } else {
                    ""
                };
                format!("creating a user namespace: {e}{why}")
            })
            .and_then(|ns| Ok((rootfs::idmapped_layers(&lowers, &ns)?, ns)));
        match made {
            Ok((mounts, ns)) => Some((mounts, ns, req.base)),
            Err(e) if req.optional => {
                eprintln!(
                    "hull-agent ns: warning: no user namespace ({e}): the container runs with host ids"
                );
                None
            }
            Err(e) => ns_fail(e),
        }
    });
    let (layers, userns_fd) = match mapped {
        Some((mounts, ns, root_id)) => (rootfs::Layers::Mapped { mounts, root_id }, Some(ns)),
        None => (rootfs::Layers::Host(&lowers), None),
    };
    if let Err(e) = rootfs::ns_prepare(
        &scratch,
        upper.as_deref(),
        layers,
        &mounts,
        userns_fd.as_ref(),
    ) {
        ns_fail(e);
    }
    let mut flags = libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWPID;
    // `--netns PATH`: the network namespace hull prepared (joined as host
    // root, before the user namespace); `--netns host`: the host's; none:
    // a new empty one (only lo).
    match netns.as_deref() {
        None => flags |= libc::CLONE_NEWNET,
        Some("host") => {}
        Some(path) => {
            if let Err(e) = sys::join_netns(std::path::Path::new(path)) {
                ns_fail(format!("joining the network namespace {path}: {e}"));
            }
        }
    }
    if let Some(ns) = &userns_fd {
        if let Err(e) = sys::become_root_in(ns) {
            ns_fail(format!("entering the user namespace: {e}"));
        }
        // A mount namespace of the user namespace's own, so that its root
        // may mount /proc, /dev and the rest.
        flags |= libc::CLONE_NEWNS;
    }
    drop(userns_fd);
    if let Err(e) = sys::unshare(flags) {
        ns_fail(format!("unshare: {e}"));
    }
    match sys::fork() {
        Err(e) => ns_fail(format!("fork: {e}")),
        Ok(0) => {}
        Ok(child) => {
            // The parent waits for PID 1 of the new namespace and mirrors it.
            drop(listener);
            let mut status = 0;
            // SAFETY: valid pointer to `status`.
            while unsafe { libc::waitpid(child, &mut status, 0) } < 0 {}
            let exit = sys::exit_from_status(child, status, None);
            std::process::exit(exit.status());
        }
    }
    // PID 1 of the new pid namespace. Its end ends every process in the
    // namespace, so it goes when the sandbox's holder does (a killed hull
    // leaves nothing running).
    sys::die_with_parent();
    let mut taken: Vec<String> = mounts.iter().map(|m| m.target.clone()).collect();
    if upper.is_some() {
        // A build step (hull reads its upper back): /tmp is the image's
        // own, as in docker's and buildah's RUN, not a tmpfs.
        taken.push("/tmp".into());
    }
    let setup = rootfs::ns_enter(&taken, read_only);
    if let Err(e) = &setup {
        eprintln!("hull-agent ns: {e}");
    }
    let ctx = Arc::new(Ctx {
        marks: Marks {
            agent_start_ms: start,
            rootfs_ms: sys::boot_ms(),
            ready_ms: sys::boot_ms(),
        },
        root: PathBuf::from("/"),
        setup_error: setup.err(),
        in_vm: false,
        restored_root: std::sync::Mutex::new(session::RestoredRoot::NotATemplate),
    });
    serve_forever(&listener, ctx, ns_end)
}

fn ns_end() -> ! {
    std::process::exit(0)
}
