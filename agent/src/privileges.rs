//! A process's capabilities, no_new_privs and seccomp filters, applied in
//! the forked child before exec as runc applies OCI's `process` fields:
//! the bounding set is cut while the child still runs as root, the
//! capabilities survive the switch of user (PR_SET_KEEPCAPS), then capset
//! sets effective, permitted and inheritable and the ambient ones are
//! raised. A seccomp filter needs no_new_privs or CAP_SYS_ADMIN: without
//! no_new_privs it goes in first, while the child still has every
//! capability; with it, last, just before exec.
//!
//! The syscalls of this step (split from `sys` by size); everything here is
//! prepared before the fork, so the child only makes system calls.

use std::io;

use hull_agent::protocol::{
    BpfInstruction, Capabilities, MAX_BPF_INSTRUCTIONS, MAX_SECCOMP_FILTERS, Privileges,
};

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// What the child applies, prepared before the fork.
pub struct Prepared {
    caps: Option<Capabilities>,
    /// The kernel's highest capability number (/proc/sys/kernel/cap_last_cap).
    last_cap: u32,
    no_new_privs: bool,
    filters: Vec<Vec<libc::sock_filter>>,
}

/// Why a process's privileges were refused before it was started.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrivilegesError {
    #[error("{0} seccomp filters: at most {MAX_SECCOMP_FILTERS}")]
    TooManyFilters(usize),
    #[error("a seccomp filter of {0} instructions: between 1 and {MAX_BPF_INSTRUCTIONS}")]
    FilterSize(usize),
}

impl Prepared {
    /// Checks the host's `privileges` and converts them for the child.
    pub fn new(privileges: Option<&Privileges>) -> Result<Prepared, PrivilegesError> {
        let Some(p) = privileges else {
            return Ok(Prepared {
                caps: None,
                last_cap: 0,
                no_new_privs: false,
                filters: Vec::new(),
            });
        };
        if p.seccomp.len() > MAX_SECCOMP_FILTERS {
            return Err(PrivilegesError::TooManyFilters(p.seccomp.len()));
        }
        let mut filters = Vec::with_capacity(p.seccomp.len());
        for f in &p.seccomp {
            if f.is_empty() || f.len() > MAX_BPF_INSTRUCTIONS {
                return Err(PrivilegesError::FilterSize(f.len()));
            }
            filters.push(
                f.iter()
                    .map(|&BpfInstruction(code, jt, jf, k)| libc::sock_filter { code, jt, jf, k })
                    .collect(),
            );
        }
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
            .min(63);
        Ok(Prepared {
            caps: p.capabilities,
            last_cap,
            no_new_privs: p.no_new_privileges,
            filters,
        })
    }

    /// In the child, as root, before the switch of user: the seccomp
    /// filters without no_new_privs, the bounding set, PR_SET_KEEPCAPS.
    pub fn before_user_switch(&self) -> io::Result<()> {
        if !self.no_new_privs {
            self.install_filters()?;
        }
        let Some(caps) = self.caps else {
            return Ok(());
        };
        for cap in 0..=self.last_cap {
            if caps.bounding & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments.
                check(unsafe {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0)
                })?;
            }
        }
        // SAFETY: prctl with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong, 0, 0, 0) })
    }

    /// In the child, after the switch of user: the capability sets, the
    /// ambient ones, no_new_privs and then its filters.
    pub fn after_user_switch(&self) -> io::Result<()> {
        if let Some(caps) = self.caps {
            set_capabilities(&caps)?;
            for cap in 0..=self.last_cap {
                if caps.ambient & (1 << cap) != 0 {
                    // As runc: an ambient capability the sets do not allow
                    // is left out, not an error.
                    // SAFETY: prctl with integer arguments.
                    unsafe {
                        libc::prctl(
                            libc::PR_CAP_AMBIENT,
                            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                            cap as libc::c_ulong,
                            0,
                            0,
                        )
                    };
                }
            }
        }
        if self.no_new_privs {
            // SAFETY: prctl with integer arguments.
            check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) })?;
            self.install_filters()?;
        }
        Ok(())
    }

    fn install_filters(&self) -> io::Result<()> {
        for f in &self.filters {
            let prog = libc::sock_fprog {
                len: f.len() as u16,
                filter: f.as_ptr().cast_mut(),
            };
            // SAFETY: prog points at `f`'s instructions, alive across the
            // call; the kernel copies them.
            check(unsafe {
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                    &prog as *const libc::sock_fprog,
                )
            })?;
        }
        Ok(())
    }
}

/// capset(2) with the effective, permitted and inheritable sets.
fn set_capabilities(caps: &Capabilities) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let word = |set: u64, i: u32| (set >> (32 * i)) as u32;
    let data = [0, 1].map(|i| Data {
        effective: word(caps.effective, i),
        permitted: word(caps.permitted, i),
        inheritable: word(caps.inheritable, i),
    });
    let header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: the header and the two data words are valid for the call,
    // laid out as the kernel's __user_cap_header_struct and data_struct.
    check(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } as libc::c_int)
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_or_empty_filters_are_refused_before_any_fork() {
        let one = vec![BpfInstruction(6, 0, 0, 0x7fff_0000)];
        let p = |seccomp| Privileges {
            seccomp,
            ..Default::default()
        };
        assert!(Prepared::new(Some(&p(vec![one.clone(); 2]))).is_ok());
        assert_eq!(
            Prepared::new(Some(&p(vec![one.clone(); MAX_SECCOMP_FILTERS + 1]))).err(),
            Some(PrivilegesError::TooManyFilters(MAX_SECCOMP_FILTERS + 1))
        );
        assert_eq!(
            Prepared::new(Some(&p(vec![Vec::new()]))).err(),
            Some(PrivilegesError::FilterSize(0))
        );
        let huge = vec![one[0]; MAX_BPF_INSTRUCTIONS + 1];
        assert_eq!(
            Prepared::new(Some(&p(vec![huge]))).err(),
            Some(PrivilegesError::FilterSize(MAX_BPF_INSTRUCTIONS + 1))
        );
    }
}
