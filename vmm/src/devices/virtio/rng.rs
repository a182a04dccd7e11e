//! virtio-rng: fills the guest's buffers from the host's getrandom(2).

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::persist::{DeviceState, PersistError, VirtioState};
use super::queue_worker::{Chain, RequestHandler, SingleQueue, single_queue_lifecycle};
use super::{ActivateError, Activation, F_VERSION_1, LogLimit, TYPE_RNG, VirtioDevice};

/// At most this many bytes per request.
const MAX_PER_REQUEST: usize = 64 * 1024;

#[derive(Default)]
pub struct Rng {
    queue: SingleQueue<Filler>,
}

/// What an rng device saves: only where its queue is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState {
    pub virtio: VirtioState,
}

impl Rng {
    pub fn new() -> Self {
        Self::default()
    }
}

struct Filler {
    errors: LogLimit,
}

impl RequestHandler for Filler {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32 {
        let mut writer = match chain.writer(mem) {
            Ok(w) => w,
            Err(e) => {
                if self.errors.allow() {
                    log::warn!("virtio-rng: bad descriptor chain: {e}");
                }
                return 0;
            }
        };
        let n = writer.available_bytes().min(MAX_PER_REQUEST);
        let mut buf = vec![0u8; n];
        let got = fill_random(&mut buf);
        match std::io::Write::write_all(&mut writer, &buf[..got]) {
            Ok(()) => got as u32,
            Err(_) => 0,
        }
    }
}

/// Fills `buf` from getrandom; returns how many bytes were filled.
fn fill_random(buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n <= 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        filled += n as usize;
    }
    filled
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }
    fn features(&self) -> u64 {
        F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, a: Activation, features: u64) -> Result<(), ActivateError> {
        self.queue.serve(a, features, || {
            Ok(Filler {
                errors: LogLimit::default(),
            })
        })
    }
    single_queue_lifecycle!();
    fn save(&mut self) -> DeviceState {
        DeviceState::Rng(RngState {
            virtio: self.queue.save(),
        })
    }
    fn restore(&mut self, state: &DeviceState, a: Option<Activation>) -> Result<(), PersistError> {
        let DeviceState::Rng(s) = state else {
            return Err(PersistError::WrongDevice {
                found: state.kind(),
                want: "rng",
            });
        };
        s.virtio.check_version()?;
        s.virtio
            .reactivate(a, |a, features| self.activate(a, features))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn fills_writable_buffers() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let desc = RawDescriptor::from(SplitDescriptor::new(0x8000, 512, 2 /* WRITE */, 0));
        vq.build_desc_chain(&[desc]).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let mut f = Filler {
            errors: LogLimit::default(),
        };
        assert_eq!(f.handle(&mem, chain), 512);
        let mut out = [0u8; 512];
        mem.read_slice(&mut out, GuestAddress(0x8000)).unwrap();
        assert!(out.iter().any(|&b| b != 0));
    }

    #[test]
    fn read_only_buffers_get_nothing() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let desc = RawDescriptor::from(SplitDescriptor::new(0x8000, 512, 0, 0));
        vq.build_desc_chain(&[desc]).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let mut f = Filler {
            errors: LogLimit::default(),
        };
        assert_eq!(f.handle(&mem, chain), 0);
    }
}
