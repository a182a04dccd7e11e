//! Per-thread seccomp filters: one allowlist per kind of thread hull-vmm
//! has (the main thread once the VM runs, each vCPU, the device event
//! loop), written as data and compiled to BPF with rust-vmm's
//! `seccompiler`.
//!
//! Where they are installed: the device loop installs its filter at the top
//! of its thread (it starts during [`crate::vmm::Vmm::build`], before the
//! guest exists); [`crate::vmm::Vmm::run`] has each vCPU thread install its
//! filter and wait, installs the main thread's, and only then lets the
//! vCPUs enter the guest. So no guest instruction runs in a thread without
//! its filter.
//!
//! What a forbidden call does: the filters return `SECCOMP_RET_TRAP`, and a
//! tiny SIGSYS handler writes one line with the syscall number to stderr
//! ("hull-vmm: killed by its seccomp filter (syscall N, KIND thread)") and
//! then dies of
//! SIGSYS itself. `SECCOMP_RET_KILL_PROCESS` would end the process with the
//! same signal, but the number would only reach the kernel's audit log,
//! which hull cannot count on reading (auditd, dmesg restrictions); with a
//! trap, the number is in `vmm.log` next to the process's own messages.
//! The handler cannot be replaced afterwards: no filter allows
//! `rt_sigaction`.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why the filters could not be made or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("compiling the {0} seccomp filter")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    #[error("installing the {0} seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
    #[error("installing the SIGSYS handler")]
    Handler(#[source] std::io::Error),
    #[error("seccomp filters are already enabled in this process")]
    AlreadyEnabled,
    #[error("limiting malloc to one arena (mallopt M_ARENA_MAX)")]
    MallocArenas,
}

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
/// The system call the test hook makes and that no filter allows (a
/// harmless one: it only reads the parent's pid).
pub const FORBIDDEN_FOR_TESTS: i64 = libc::SYS_getppid;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

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

/// The BPF program for `kind`: its allowlist, anything else trapped.
pub fn compile(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules(kind),
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Compile(kind.name(), e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile(kind.name(), e))
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

/// The waiter's BPF program: anything not in [`waiter_rules`] kills it
/// (it has no SIGSYS handler and nothing to report with: its VMM, the
/// child, then dies of its parent-death signal and hull sees the kill).
pub fn compile_waiter() -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        waiter_rules(),
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| SeccompError::Compile("waiter", e))?;
    filter
        .try_into()
        .map_err(|e| SeccompError::Compile("waiter", e))
}

/// The compiled filters of every thread kind, and the test hook.
pub struct Filters {
    main: BpfProgram,
    vcpu: BpfProgram,
    device: BpfProgram,
    fs: BpfProgram,
    /// The thread kind that makes [`FORBIDDEN_FOR_TESTS`] right after its
    /// filter is in (hull-vmm's `HULL_VMM_TEST_FORBIDDEN_SYSCALL`).
    pub test_forbidden: Option<ThreadKind>,
}

impl Filters {
    pub fn compile() -> Result<Filters, SeccompError> {
        Ok(Filters {
            main: compile(ThreadKind::Main)?,
            vcpu: compile(ThreadKind::Vcpu)?,
            device: compile(ThreadKind::Device)?,
            fs: compile(ThreadKind::Fs)?,
            test_forbidden: None,
        })
    }

    fn program(&self, kind: ThreadKind) -> &BpfProgram {
        match kind {
            ThreadKind::Main => &self.main,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Device => &self.device,
            ThreadKind::Fs => &self.fs,
        }
    }
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

thread_local! {
    /// The kind of the calling thread, for the SIGSYS handler's line (a
    /// const-initialised cell: reading it allocates nothing).
    static THREAD_KIND: Cell<&'static str> = const { Cell::new("unfiltered") };
}

/// Turns the filters on for this process: from now on every VMM thread
/// installs its kind's filter when it starts (see [`enter`]). Call once,
/// before [`crate::vmm::Vmm::build`].
pub fn enable(filters: Filters) -> Result<(), SeccompError> {
    one_malloc_arena()?;
    install_sigsys_handler()?;
    FILTERS
        .set(filters)
        .map_err(|_| SeccompError::AlreadyEnabled)
}

/// Makes every thread allocate from glibc's main arena, before any VMM
/// thread starts. A thread with an arena of its own gets `mmap`ed heaps,
/// and the first time glibc shrinks one (a `free` that leaves enough room
/// at its top, so at a moment that depends on the load) it opens
/// `/proc/sys/vm/overcommit_memory` to decide how: an `openat` that no
/// filter allows. That is what killed restored VMs on their device thread
/// (10 MiB of stdin through vsock; a host-directory root served over
/// virtio-fs). The main arena grows and shrinks with `brk`, which every
/// filter allows, and glibc opens nothing for it.
fn one_malloc_arena() -> Result<(), SeccompError> {
    // SAFETY: mallopt only sets a malloc parameter; it is called while
    // this process has a single thread, before any arena but the main one
    // exists.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } == 1 {
        Ok(())
    } else {
        Err(SeccompError::MallocArenas)
    }
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    FILTERS.get().is_some()
}

/// Installs the filter of `kind` on the calling thread, when filters are
/// enabled; a no-op otherwise (tests, `hull-vmm --no-seccomp`).
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(filters) = FILTERS.get() else {
        return Ok(());
    };
    THREAD_KIND.with(|k| k.set(kind.name()));
    seccompiler::apply_filter(filters.program(kind))
        .map_err(|e| SeccompError::Install(kind.name(), e))?;
    if filters.test_forbidden == Some(kind) {
        // SAFETY: getppid takes no arguments and touches no memory; the
        // filter traps it, and the handler ends the process.
        unsafe { libc::syscall(FORBIDDEN_FOR_TESTS) };
    }
    Ok(())
}

/// Where `si_syscall` sits in a SIGSYS `siginfo_t` on x86_64: after
/// si_signo, si_errno, si_code (and padding to 8), then `_call_addr`.
const SI_SYSCALL_OFFSET: usize = 24;
/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: i32 = 1;

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as usize;
    // SA_RESETHAND: the signal that ends the process (below) takes the
    // default action.
    act.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND;
    // SAFETY: `act` is initialised, the handler has the SA_SIGINFO
    // signature and only makes async-signal-safe calls.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// "hull-vmm: killed by its seccomp filter (syscall N, KIND thread)\n"
/// for `nr` on a `kind` thread, in `buf`, without allocating; returns the
/// length.
fn death_line(nr: i32, kind: &str, buf: &mut [u8; 96]) -> usize {
    const HEAD: &[u8] = b"hull-vmm: killed by its seccomp filter (syscall ";
    let mut n = HEAD.len();
    buf[..n].copy_from_slice(HEAD);
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut v = i64::from(nr).unsigned_abs();
    if nr < 0 {
        buf[n] = b'-';
        n += 1;
    }
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[n] = digits[d];
        n += 1;
    }
    let kind = &kind.as_bytes()[..kind.len().min(16)];
    for part in [b", ".as_slice(), kind, b" thread)\n"] {
        buf[n..n + part.len()].copy_from_slice(part);
        n += part.len();
    }
    n
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO
    // handler; for SIGSYS with si_code SYS_SECCOMP it holds the _sigsys
    // member, whose int si_syscall is at SI_SYSCALL_OFFSET (x86_64 layout).
    let nr = unsafe {
        if (*info).si_code == SYS_SECCOMP {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read_unaligned()
        } else {
            -1
        }
    };
    let kind = THREAD_KIND.with(Cell::get);
    let mut buf = [0u8; 96];
    let len = death_line(nr, kind, &mut buf);
    // SAFETY: write(2) is async-signal-safe and allowed by every filter;
    // `buf` holds `len` initialised bytes.
    unsafe { libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len) };
    // SIGSYS is blocked while its handler runs and SA_RESETHAND restored the
    // default action: the trap of this forbidden call makes the kernel
    // unblock it and end the process with SIGSYS.
    // SAFETY: getppid takes no arguments; every filter traps it.
    unsafe { libc::syscall(FORBIDDEN_FOR_TESTS) };
    // Not reached under a filter; abort rather than return into a thread
    // whose call was refused.
    // SAFETY: _exit is async-signal-safe and ends the process.
    unsafe { libc::_exit(128 + libc::SIGSYS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles_and_traps_what_it_does_not_list() {
        for kind in ThreadKind::ALL {
            let prog = compile(kind).unwrap();
            assert!(!prog.is_empty(), "{kind:?}");
            let r = rules(kind);
            assert!(!r.contains_key(&FORBIDDEN_FOR_TESTS), "{kind:?}");
            // Nobody may replace the SIGSYS handler, start a process or
            // open a file once the guest runs.
            for nr in [
                libc::SYS_rt_sigaction,
                libc::SYS_execve,
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_ptrace,
            ] {
                assert!(!r.contains_key(&nr), "{kind:?} allows {nr}");
            }
        }
    }

    #[test]
    fn the_waiter_only_waits_signals_and_exits() {
        assert!(!compile_waiter().unwrap().is_empty());
        let r = waiter_rules();
        assert_eq!(r.len(), 10);
        for nr in [
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_write,
            libc::SYS_ioctl,
            libc::SYS_kill,
            libc::SYS_ptrace,
            libc::SYS_execve,
            libc::SYS_clone,
            libc::SYS_socket,
            libc::SYS_mmap,
        ] {
            assert!(!r.contains_key(&nr), "the waiter allows {nr}");
        }
    }

    #[test]
    fn the_allowlists_are_small() {
        let count = |k| rules(k).len();
        // Figures for the README; a growing list must be a decision.
        assert_eq!(count(ThreadKind::Main), 18);
        assert_eq!(count(ThreadKind::Vcpu), 20);
        assert_eq!(count(ThreadKind::Device), 33);
        assert_eq!(count(ThreadKind::Fs), 43);
    }

    #[test]
    fn the_death_line_names_the_syscall() {
        let mut buf = [0u8; 96];
        let n = death_line(110, "vcpu", &mut buf);
        assert_eq!(
            &buf[..n],
            b"hull-vmm: killed by its seccomp filter (syscall 110, vcpu thread)\n"
        );
        let n = death_line(0, "main", &mut buf);
        assert!(buf[..n].ends_with(b"(syscall 0, main thread)\n"));
        let n = death_line(-1, "device", &mut buf);
        assert!(buf[..n].ends_with(b"(syscall -1, device thread)\n"));
        let n = death_line(i32::MIN, "unfiltered-and-much-too-long", &mut buf);
        assert!(buf[..n].ends_with(b"(syscall -2147483648, unfiltered-and-m thread)\n"));
    }

    /// A forked child that enables the filters and makes the test hook's
    /// call dies of SIGSYS after writing the line: the whole path, without
    /// KVM.
    #[test]
    fn a_forbidden_call_ends_the_process_with_sigsys() {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two ints.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut filters = Filters::compile().unwrap();
        filters.test_forbidden = Some(ThreadKind::Device);
        // SAFETY: the child only makes plain system calls (dup2, sigaction,
        // prctl, seccomp) on values made before the fork, then ends.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: fds[1] is the pipe's write end; stderr becomes it.
            unsafe { libc::dup2(fds[1], libc::STDERR_FILENO) };
            let _ = enable(filters);
            let _ = enter(ThreadKind::Device);
            // SAFETY: not reached when the filter works.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(fds[1]) };
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let mut out = vec![0u8; 200];
        // SAFETY: reading into a buffer of that size.
        let n = unsafe { libc::read(fds[0], out.as_mut_ptr().cast(), out.len()) };
        // SAFETY: closing the read end.
        unsafe { libc::close(fds[0]) };
        out.truncate(n.max(0) as usize);
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!(
                "hull-vmm: killed by its seccomp filter (syscall {FORBIDDEN_FOR_TESTS}, device thread)\n"
            )
        );
    }
}
