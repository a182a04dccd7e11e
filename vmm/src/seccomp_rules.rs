//! The seccomp allowlists of hull-vmm's threads, as data. This file is
//! compiled twice: into hull-vmm (`crate::seccomp`, which tests and
//! documents the lists) and into its build script (build.rs), which
//! compiles every list to BPF once, at build time, so a VMM's start only
//! loads the programs (compiling them took 15-45 ms of each restore in
//! the emulated KVM host).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The kinds of thread hull-vmm runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread, once the VM runs: waits for the end, flushes, exits.
    Main,
    /// A vCPU: KVM_RUN and the exits it hands to devices on the buses.
    Vcpu,
    /// The virtio event loop (and any sibling loop a device starts).
    Device,
    /// The virtio-fs server's loop: the device calls plus the file system
    /// calls of a passthrough server, each relative to a directory fd.
    Fs,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::Fs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Device => "device",
            ThreadKind::Fs => "fs",
        }
    }

    /// The kind a test-hook name ("main", "vcpu", "device") stands for.
    pub fn from_name(name: &str) -> Option<ThreadKind> {
        ThreadKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// `KVM_RUN`, `_IO(KVMIO, 0x80)`: the only ioctl a vCPU thread makes.
const KVM_RUN: u64 = 0xae80;

pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// One argument condition; the values here are constants that always
/// validate (argument index below 6).
fn arg(index: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value)
        .expect("argument index below 6")
}

fn when(conditions: Vec<SeccompCondition>) -> Vec<SeccompRule> {
    vec![SeccompRule::new(conditions).expect("a rule with conditions")]
}

fn allow(rules: &mut Rules, calls: &[i64]) {
    for &c in calls {
        rules.insert(c, Vec::new());
    }
}

/// What every thread needs to live: memory (never executable), locks,
/// signals masked and returned from, writing its log lines, exiting.
fn base() -> Rules {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_madvise,
            libc::SYS_mremap,
            libc::SYS_futex,
            libc::SYS_sched_yield,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_sigaltstack,
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_clock_gettime,
            libc::SYS_getrandom,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    let no_exec = || {
        when(vec![arg(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )])
    };
    r.insert(libc::SYS_mmap, no_exec());
    r.insert(libc::SYS_mprotect, no_exec());
    // Dropping an fd checks it is open first (std's OwnedFd in debug builds).
    r.insert(libc::SYS_fcntl, fcntl(&[libc::F_GETFD]));
    r
}

/// fcntl with one of `cmds` only.
fn fcntl(cmds: &[libc::c_int]) -> Vec<SeccompRule> {
    cmds.iter()
        .map(|&c| {
            SeccompRule::new(vec![arg(1, SeccompCmpOp::Eq, c as u64)])
                .expect("a rule with a condition")
        })
        .collect()
}

/// The allowlist of `kind`, as data: syscall number -> rules (an empty
/// list allows the call whatever its arguments).
pub fn rules(kind: ThreadKind) -> Rules {
    let mut r = base();
    match kind {
        ThreadKind::Main => {}
        ThreadKind::Vcpu => {
            // KVM_RUN; and TUNSETOFFLOAD, which virtio-net sets from the
            // features the driver acked when the guest activates it.
            r.insert(
                libc::SYS_ioctl,
                vec![
                    SeccompRule::new(vec![arg(1, SeccompCmpOp::Eq, KVM_RUN)])
                        .expect("a rule with a condition"),
                    SeccompRule::new(vec![arg(1, SeccompCmpOp::Eq, libc::TUNSETOFFLOAD)])
                        .expect("a rule with a condition"),
                ],
            );
            // A device activated by the guest's driver copies its queue
            // eventfds (and its files) and registers them with the event
            // loop, on the vCPU that wrote the status register.
            allow(&mut r, &[libc::SYS_epoll_ctl]);
            r.insert(
                libc::SYS_fcntl,
                fcntl(&[libc::F_GETFD, libc::F_DUPFD_CLOEXEC]),
            );
        }
        ThreadKind::Device => {
            allow(
                &mut r,
                &[
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_ctl,
                    libc::SYS_read,
                    libc::SYS_readv,
                    libc::SYS_writev,
                    libc::SYS_preadv,
                    libc::SYS_pwritev,
                    libc::SYS_fdatasync,
                    libc::SYS_recvfrom,
                    libc::SYS_sendto,
                    libc::SYS_shutdown,
                    libc::SYS_accept4,
                    libc::SYS_connect,
                ],
            );
            // vsock's host side: Unix sockets only, made non-blocking.
            r.insert(
                libc::SYS_socket,
                when(vec![arg(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)]),
            );
            r.insert(
                libc::SYS_ioctl,
                when(vec![arg(1, SeccompCmpOp::Eq, libc::FIONBIO)]),
            );
        }
        ThreadKind::Fs => {
            // Queue work (eventfds, the event loop) and the server's calls
            // (crate::devices::virtio::fs::sys): no socket, no ioctl.
            allow(
                &mut r,
                &[
                    libc::SYS_epoll_wait,
                    libc::SYS_epoll_ctl,
                    libc::SYS_read,
                    libc::SYS_openat2,
                    libc::SYS_newfstatat,
                    libc::SYS_statx,
                    libc::SYS_fstatfs,
                    libc::SYS_readlinkat,
                    libc::SYS_mkdirat,
                    libc::SYS_mknodat,
                    libc::SYS_symlinkat,
                    libc::SYS_unlinkat,
                    libc::SYS_renameat2,
                    libc::SYS_linkat,
                    libc::SYS_fchownat,
                    libc::SYS_fchmodat,
                    libc::SYS_utimensat,
                    libc::SYS_ftruncate,
                    // READ and WRITE move data straight between the file
                    // and guest memory (fs::device::ChainData).
                    libc::SYS_preadv,
                    libc::SYS_pwritev,
                    libc::SYS_fsync,
                    libc::SYS_fdatasync,
                    libc::SYS_fallocate,
                    libc::SYS_lseek,
                    libc::SYS_getdents64,
                ],
            );
        }
    }
    r
}

/// The allowlist of the jail's waiter (hull_vmm::jail): the process
/// outside the VMM's pid namespace that only waits for the VMM and then ends
/// as it did (its code, or the same signal raised again).
pub fn waiter_rules() -> Rules {
    let mut r = Rules::new();
    allow(
        &mut r,
        &[
            libc::SYS_wait4,
            libc::SYS_rt_sigaction,
            libc::SYS_rt_sigprocmask,
            libc::SYS_rt_sigreturn,
            libc::SYS_restart_syscall,
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_tgkill,
            libc::SYS_exit,
            libc::SYS_exit_group,
        ],
    );
    r
}

/// The BPF program of `rules`: the calls they list are allowed (under
/// their conditions), any other gets `otherwise`.
pub fn compile(
    rules: Rules,
    otherwise: SeccompAction,
) -> Result<BpfProgram, seccompiler::BackendError> {
    SeccompFilter::new(rules, otherwise, SeccompAction::Allow, TargetArch::x86_64)?.try_into()
}
