//! The host side of virtio-net: a tap opened by name (`/dev/net/tun`,
//! TUNSETIFF) or an fd a parent already opened (a jailed VMM cannot open
//! one itself). Either way it is a tap without packet information and with
//! vnet headers, non-blocking, whose header is the guest's 12 bytes.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::HDR_LEN;

/// Longest interface name (IFNAMSIZ less the terminating NUL).
pub const MAX_NAME: usize = 15;

/// The offloads a reader of the tap can take (TUNSETOFFLOAD flags).
pub const OFFLOAD_CSUM: u32 = libc::TUN_F_CSUM;
pub const OFFLOAD_TSO4: u32 = libc::TUN_F_TSO4;
pub const OFFLOAD_TSO6: u32 = libc::TUN_F_TSO6;
pub const OFFLOAD_UFO: u32 = libc::TUN_F_UFO;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?}: 1 to {MAX_NAME} bytes, no '/' or whitespace")]
    Name(String),
    #[error("opening /dev/net/tun: {0}")]
    OpenTun(std::io::Error),
    #[error("attaching to tap {name}: {cause}")]
    Attach { name: String, cause: std::io::Error },
    #[error("fd {0} is not open")]
    NotOpen(RawFd),
    #[error("fd {fd} is not a tap: {cause}")]
    NotTap { fd: RawFd, cause: std::io::Error },
    #[error("fd {0} is a tun or tap without IFF_TAP | IFF_NO_PI | IFF_VNET_HDR")]
    WrongFlags(RawFd),
    #[error("tap {what}: {cause}")]
    Ioctl {
        what: &'static str,
        cause: std::io::Error,
    },
}

/// `struct ifreq` as the tun ioctls use it: a name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// The flags a tap for this device has.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// An open tap.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to (or creates) the tap `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty()
            || name.len() > MAX_NAME
            || name.contains('/')
            || name.chars().any(char::is_whitespace)
            || name.contains('\0')
        {
            return Err(TapError::Name(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: TAP_FLAGS as libc::c_short,
            _rest: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` is
        // (40 bytes, name NUL-terminated); the fd is ours.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if r < 0 {
            return Err(TapError::Attach {
                name: name.into(),
                cause: std::io::Error::last_os_error(),
            });
        }
        let tap = Tap {
            file,
            name: name.into(),
        };
        tap.set_header_size()?;
        Ok(tap)
    }

    /// Takes over `fd`, a tap the parent opened for this VMM: it must be
    /// open, a tap, and have `IFF_NO_PI | IFF_VNET_HDR`. It is made
    /// non-blocking and closed on exec.
    pub fn from_fd(fd: RawFd) -> Result<Tap, TapError> {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(TapError::NotOpen(fd));
        }
        let mut req = IfReq {
            name: [0; 16],
            flags: 0,
            _rest: [0; 22],
        };
        // SAFETY: TUNGETIFF fills a struct ifreq, which `req` is; on any
        // other kind of fd the kernel refuses it and writes nothing.
        let r = unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) };
        if r < 0 {
            return Err(TapError::NotTap {
                fd,
                cause: std::io::Error::last_os_error(),
            });
        }
        if i32::from(req.flags) & TAP_FLAGS != TAP_FLAGS {
            return Err(TapError::WrongFlags(fd));
        }
        // SAFETY: `fd` is open (checked above) and handed to this process
        // for this device alone (the configuration names each fd once), so
        // the File becomes its only owner.
        let file = unsafe { File::from_raw_fd(fd) };
        let nul = req.name.iter().position(|&b| b == 0).unwrap_or(16);
        let tap = Tap {
            file,
            name: String::from_utf8_lossy(&req.name[..nul]).into_owned(),
        };
        for (get, set, bits) in [
            (libc::F_GETFL, libc::F_SETFL, libc::O_NONBLOCK),
            (libc::F_GETFD, libc::F_SETFD, libc::FD_CLOEXEC),
        ] {
            // SAFETY: reads and then sets the flags of our own fd.
            let r = unsafe {
                let old = libc::fcntl(fd, get);
                if old < 0 {
                    old
                } else {
                    libc::fcntl(fd, set, old | bits)
                }
            };
            if r < 0 {
                return Err(TapError::Ioctl {
                    what: "fcntl",
                    cause: std::io::Error::last_os_error(),
                });
            }
        }
        tap.set_header_size()?;
        Ok(tap)
    }

    /// Any file standing in for a tap (a datagram socket in the tests: one
    /// frame per read or write, as a tap).
    #[cfg(test)]
    pub(crate) fn stand_in(file: File) -> Tap {
        Tap {
            file,
            name: "stand-in".into(),
        }
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Another handle on the same tap (the event loop's).
    pub fn try_clone(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }

    /// The tap's vnet header is the guest's: 12 bytes, with `num_buffers`.
    fn set_header_size(&self) -> Result<(), TapError> {
        let size = HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        let r = unsafe { libc::ioctl(self.fd(), libc::TUNSETVNETHDRSZ, &size) };
        if r < 0 {
            return Err(TapError::Ioctl {
                what: "TUNSETVNETHDRSZ",
                cause: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Tells the tap which offloads its reader (the guest) takes: frames
    /// with partial checksums, TCP segments up to 64 KiB, UDP fragments.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let r = unsafe { libc::ioctl(self.fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
        if r < 0 {
            return Err(TapError::Ioctl {
                what: "TUNSETOFFLOAD",
                cause: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Whether the tap takes UDP fragmentation offload (older and newer
    /// kernels differ); leaves the offloads off.
    pub fn supports_ufo(&self) -> bool {
        let all = OFFLOAD_CSUM | OFFLOAD_TSO4 | OFFLOAD_TSO6 | OFFLOAD_UFO;
        let ok = self.set_offload(all).is_ok();
        let _ = self.set_offload(0);
        ok
    }
}
