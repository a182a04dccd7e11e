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
use std::sync::OnceLock;

use seccompiler::{BpfProgramRef, sock_filter};

/// Why the filters could not be made or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("installing the {0} seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
    #[error("installing the SIGSYS handler")]
    Handler(#[source] std::io::Error),
    #[error("seccomp filters are already enabled in this process")]
    AlreadyEnabled,
    #[error("limiting malloc to one arena (mallopt M_ARENA_MAX)")]
    MallocArenas,
}

/// The system call the test hook makes and that no filter allows (a
/// harmless one: it only reads the parent's pid).
pub const FORBIDDEN_FOR_TESTS: i64 = libc::SYS_getppid;

#[path = "seccomp_rules.rs"]
mod rules;
pub use rules::{Rules, ThreadKind, compile, rules, waiter_rules};

// The programs build.rs compiled from seccomp_rules.rs: MAIN, VCPU,
// DEVICE, FS and WAITER, each a `&[sock_filter]`.
include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

/// The program compiled at build time for `kind`: its allowlist,
/// anything else trapped.
pub fn program(kind: ThreadKind) -> BpfProgramRef<'static> {
    match kind {
        ThreadKind::Main => MAIN,
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Device => DEVICE,
        ThreadKind::Fs => FS,
    }
}

/// The jail's waiter's program (compiled at build time): anything not in
/// [`waiter_rules`] kills it (it has no SIGSYS handler and nothing to
/// report with: its VMM, the child, then dies of its parent-death signal
/// and hull sees the kill).
pub fn waiter_program() -> BpfProgramRef<'static> {
    WAITER
}

/// What [`enable`] turns on besides the built-in filters: the test hook.
#[derive(Default)]
pub struct Filters {
    /// The thread kind that makes [`FORBIDDEN_FOR_TESTS`] right after its
    /// filter is in (hull-vmm's `HULL_VMM_TEST_FORBIDDEN_SYSCALL`).
    pub test_forbidden: Option<ThreadKind>,
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
    seccompiler::apply_filter(program(kind)).map_err(|e| SeccompError::Install(kind.name(), e))?;
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

    use seccompiler::SeccompAction;

    /// The programs built into hull-vmm are those its allowlists compile
    /// to now (build.rs compiled the same file).
    #[test]
    fn the_built_in_programs_are_the_allowlists_compiled() {
        for kind in ThreadKind::ALL {
            let now = compile(rules(kind), SeccompAction::Trap).unwrap();
            assert_eq!(program(kind), &now[..], "{kind:?}");
        }
        let now = compile(waiter_rules(), SeccompAction::KillProcess).unwrap();
        assert_eq!(waiter_program(), &now[..]);
    }

    #[test]
    fn every_kind_traps_what_it_does_not_list() {
        for kind in ThreadKind::ALL {
            assert!(!program(kind).is_empty(), "{kind:?}");
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
        assert!(!waiter_program().is_empty());
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
        let filters = Filters {
            test_forbidden: Some(ThreadKind::Device),
        };
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
