//! `linux.seccomp` compiled to classic BPF on the host (rust-vmm's
//! `seccompiler`), for the agent to install in the container's processes.
//!
//! An OCI profile gives each rule its own action; a seccompiler filter has
//! one action on match and one otherwise. So the profile becomes stacked
//! filters, which the kernel runs all of, taking the strictest answer
//! (kill > trap > errno > trace > log > allow): the first returns the
//! default action for every syscall no rule names (any rule, any action,
//! with its argument conditions) and allows the rest; then one filter per
//! other action returns that action where its rules match and allows
//! everything else. A syscall name this table does not know is left out,
//! as libseccomp leaves out names its architecture lacks; only x86_64
//! calls are filtered (a call through another ABI meets the filters'
//! architecture check and kills the process). `SCMP_ACT_NOTIFY` (a
//! listener process) is refused.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use hull_agent::protocol::BpfInstruction;
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall};
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

/// x86_64 system calls 0 to 334, in number order (the kernel's
/// arch/x86/entry/syscalls/syscall_64.tbl).
const SYSCALLS_FROM_0: &str = "
read write open close stat fstat lstat poll lseek mmap mprotect munmap brk rt_sigaction
rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv writev access pipe select
sched_yield mremap msync mincore madvise shmget shmat shmctl dup dup2 pause nanosleep
getitimer alarm setitimer getpid sendfile socket connect accept sendto recvfrom sendmsg
recvmsg shutdown bind listen getsockname getpeername socketpair setsockopt getsockopt
clone fork vfork execve exit wait4 kill uname semget semop semctl shmdt msgget
msgsnd msgrcv msgctl fcntl flock fsync fdatasync truncate ftruncate getdents getcwd
chdir fchdir rename mkdir rmdir creat link unlink symlink readlink chmod fchmod chown
fchown lchown umask gettimeofday getrlimit getrusage sysinfo times ptrace getuid syslog
getgid setuid setgid geteuid getegid setpgid getppid getpgrp setsid setreuid setregid
getgroups setgroups setresuid getresuid setresgid getresgid getpgid setfsuid setfsgid
getsid capget capset rt_sigpending rt_sigtimedwait rt_sigqueueinfo rt_sigsuspend
sigaltstack utime mknod uselib personality ustat statfs fstatfs sysfs getpriority
setpriority sched_setparam sched_getparam sched_setscheduler sched_getscheduler
sched_get_priority_max sched_get_priority_min sched_rr_get_interval mlock munlock
mlockall munlockall vhangup modify_ldt pivot_root _sysctl prctl arch_prctl adjtimex
setrlimit chroot sync acct settimeofday mount umount2 swapon swapoff reboot sethostname
setdomainname iopl ioperm create_module init_module delete_module get_kernel_syms
query_module quotactl nfsservctl getpmsg putpmsg afs_syscall tuxcall security gettid
readahead setxattr lsetxattr fsetxattr getxattr lgetxattr fgetxattr listxattr llistxattr
flistxattr removexattr lremovexattr fremovexattr tkill time futex sched_setaffinity
sched_getaffinity set_thread_area io_setup io_destroy io_getevents io_submit
io_cancel get_thread_area lookup_dcookie epoll_create epoll_ctl_old epoll_wait_old
remap_file_pages getdents64 set_tid_address restart_syscall semtimedop fadvise64
timer_create timer_settime timer_gettime timer_getoverrun timer_delete clock_settime
clock_gettime clock_getres clock_nanosleep exit_group epoll_wait epoll_ctl tgkill utimes
vserver mbind set_mempolicy get_mempolicy mq_open mq_unlink mq_timedsend mq_timedreceive
mq_notify mq_getsetattr kexec_load waitid add_key request_key keyctl ioprio_set
ioprio_get inotify_init inotify_add_watch inotify_rm_watch migrate_pages openat mkdirat
mknodat fchownat futimesat newfstatat unlinkat renameat linkat symlinkat readlinkat
fchmodat faccessat pselect6 ppoll unshare set_robust_list get_robust_list splice tee
sync_file_range vmsplice move_pages utimensat epoll_pwait signalfd timerfd_create eventfd
fallocate timerfd_settime timerfd_gettime accept4 signalfd4 eventfd2 epoll_create1
dup3 pipe2 inotify_init1 preadv pwritev rt_tgsigqueueinfo perf_event_open recvmmsg
fanotify_init fanotify_mark prlimit64 name_to_handle_at open_by_handle_at clock_adjtime
syncfs sendmmsg setns getcpu process_vm_readv process_vm_writev kcmp finit_module
sched_setattr sched_getattr renameat2 seccomp getrandom memfd_create kexec_file_load bpf
execveat userfaultfd membarrier mlock2 copy_file_range preadv2 pwritev2 pkey_mprotect
pkey_alloc pkey_free statx io_pgetevents rseq
";

/// x86_64 system calls from 424 on, in number order.
const SYSCALLS_FROM_424: &str = "
pidfd_send_signal io_uring_setup io_uring_enter io_uring_register open_tree move_mount
fsopen fsconfig fsmount fspick pidfd_open clone3 close_range openat2 pidfd_getfd
faccessat2 process_madvise epoll_pwait2 mount_setattr quotactl_fd landlock_create_ruleset
landlock_add_rule landlock_restrict_self memfd_secret process_mrelease futex_waitv
set_mempolicy_home_node
cachestat fchmodat2 map_shadow_stack futex_wake futex_wait futex_requeue statmount listmount
lsm_get_self_attr lsm_set_self_attr lsm_list_modules mseal
";

/// Rules by syscall number; None: the syscall matches whatever its
/// arguments.
type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

/// The number of x86_64 system call `name`.
fn syscall_number(name: &str) -> Option<i64> {
    let find = |table: &str, first: i64| {
        table
            .split_whitespace()
            .position(|n| n == name)
            .map(|i| first + i as i64)
    };
    find(SYSCALLS_FROM_0, 0).or_else(|| find(SYSCALLS_FROM_424, 424))
}

/// What a rule or the default does, as seccompiler's action.
fn action(a: LinuxSeccompAction, errno: Option<u32>) -> anyhow::Result<SeccompAction> {
    // runtime-spec: errnoRet defaults to EPERM.
    let errno = errno.unwrap_or(libc::EPERM as u32);
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno),
        LinuxSeccompAction::ScmpActNotify => {
            bail!("seccomp action SCMP_ACT_NOTIFY (a listener process) is not supported")
        }
    })
}

/// One rule's argument conditions (all must hold).
fn conditions(rule: &LinuxSyscall) -> anyhow::Result<Vec<SeccompCondition>> {
    let mut out = Vec::new();
    for a in rule.args().iter().flatten() {
        let (op, value) = match a.op() {
            LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, a.value()),
            LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, a.value()),
            LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, a.value()),
            LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, a.value()),
            LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, a.value()),
            LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, a.value()),
            // (arg & value) == valueTwo
            LinuxSeccompOperator::ScmpCmpMaskedEq => (
                SeccompCmpOp::MaskedEq(a.value()),
                a.value_two().unwrap_or(0),
            ),
        };
        let index = u8::try_from(a.index()).unwrap_or(u8::MAX);
        out.push(
            SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                .with_context(|| format!("seccomp argument {} of {:?}", a.index(), rule.names()))?,
        );
    }
    Ok(out)
}

/// Adds `rule`'s known syscalls to `rules`; an unconditional rule makes
/// the syscall's chain empty (seccompiler: match on the number alone).
fn add_rule(rules: &mut Rules, rule: &LinuxSyscall) -> anyhow::Result<()> {
    let conds = conditions(rule)?;
    for nr in rule.names().iter().filter_map(|n| syscall_number(n)) {
        let chain = rules.entry(nr).or_insert_with(|| Some(Vec::new()));
        match chain {
            Some(c) if !conds.is_empty() => {
                c.push(SeccompRule::new(conds.clone()).context("a seccomp rule")?)
            }
            _ => *chain = None,
        }
    }
    Ok(())
}

fn compile(
    rules: Rules,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> anyhow::Result<Vec<BpfInstruction>> {
    let rules = rules
        .into_iter()
        .map(|(nr, chain)| (nr, chain.unwrap_or_default()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, on_match, TargetArch::x86_64)
        .context("building the seccomp filter")?;
    let prog: seccompiler::BpfProgram =
        filter.try_into().context("compiling the seccomp filter")?;
    Ok(prog
        .iter()
        .map(|i| BpfInstruction(i.code, i.jt, i.jf, i.k))
        .collect())
}

/// The BPF programs for `profile`, to install in order.
pub fn filters(profile: &LinuxSeccomp) -> anyhow::Result<Vec<Vec<BpfInstruction>>> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let syscalls = profile.syscalls().clone().unwrap_or_default();
    let mut out = Vec::new();
    if default != SeccompAction::Allow {
        let mut named = BTreeMap::new();
        for rule in &syscalls {
            add_rule(&mut named, rule)?;
        }
        out.push(compile(named, default.clone(), SeccompAction::Allow)?);
    }
    let mut by_action: Vec<(SeccompAction, Rules)> = Vec::new();
    for rule in &syscalls {
        let a = action(rule.action(), rule.errno_ret())?;
        if a == SeccompAction::Allow {
            continue;
        }
        let i = match by_action.iter().position(|(b, _)| *b == a) {
            Some(i) => i,
            None => {
                by_action.push((a, BTreeMap::new()));
                by_action.len() - 1
            }
        };
        add_rule(&mut by_action[i].1, rule)?;
    }
    for (a, rules) in by_action {
        if !rules.is_empty() {
            out.push(compile(rules, SeccompAction::Allow, a)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_syscall_table_numbers_as_the_kernel_does() {
        assert_eq!(syscall_number("read"), Some(libc::SYS_read));
        assert_eq!(syscall_number("execve"), Some(libc::SYS_execve));
        assert_eq!(syscall_number("capset"), Some(libc::SYS_capset));
        assert_eq!(syscall_number("rseq"), Some(334));
        assert_eq!(syscall_number("pidfd_send_signal"), Some(424));
        assert_eq!(syscall_number("clone3"), Some(libc::SYS_clone3));
        assert_eq!(syscall_number("set_mempolicy_home_node"), Some(450));
        assert_eq!(syscall_number("mseal"), Some(462));
        assert_eq!(syscall_number("no_such_call"), None);
    }

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_profile_becomes_a_default_filter_and_one_per_other_action() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"names": ["read", "write", "not_a_syscall"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["bpf"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}
            ]
        }));
        let f = filters(&p).unwrap();
        assert_eq!(f.len(), 2, "the default's filter and the EPERM one");
        let ret = |f: &[BpfInstruction], k: u32| f.iter().any(|i| i.0 == 0x06 && i.3 == k);
        // SECCOMP_RET_ERRNO | 38 as the first's mismatch, RET_ALLOW on match.
        assert!(ret(&f[0], 0x0005_0000 | 38) && ret(&f[0], 0x7fff_0000));
        assert!(ret(&f[1], 0x0005_0000 | 1) && ret(&f[1], 0x7fff_0000));
        let allow_all = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW"}));
        assert!(filters(&allow_all).unwrap().is_empty());
        let notify = profile(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
        let e = format!("{:#}", filters(&notify).unwrap_err());
        assert!(e.contains("SCMP_ACT_NOTIFY"), "{e}");
    }
}
