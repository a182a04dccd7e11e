//! vsock packets: the header (virtio 1.1, 5.10.6) and a tx packet as read
//! from a guest descriptor chain, bounds-checked before anything uses it.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::fd::RawFd;

use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap, Permissions};

use super::super::iov::{GuestIovecs, segments};
use super::super::queue_worker::Chain;

/// Largest payload accepted in one packet from the guest.
pub const MAX_PKT_PAYLOAD: u32 = 64 * 1024;
/// Bytes of the header at the start of every packet.
pub const HDR_LEN: usize = std::mem::size_of::<Header>();

pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// The virtio-vsock packet header (virtio 1.1, 5.10.6), little endian.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
#[repr(C, packed)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

// SAFETY: a packed C struct of integers: no padding, every byte pattern valid.
unsafe impl ByteValued for Header {}

/// Why a tx chain is not a packet.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("malformed tx chain: {0}")]
    Chain(virtio_queue::Error),
    #[error("tx packet without a header")]
    NoHeader,
    /// The header is there but its length is not to be trusted.
    #[error("payload length {len} out of bounds")]
    Length { header: Header, len: u32 },
}

/// A tx packet's payload, still in guest memory.
pub struct Payload<'a> {
    mem: &'a GuestMemoryMmap,
    segs: Vec<(GuestAddress, usize)>,
    pub len: usize,
}

/// Reads the header of the tx packet in `chain` and finds its payload: at
/// most [`MAX_PKT_PAYLOAD`] bytes, all within the chain's readable buffers,
/// all in guest memory.
pub fn read_tx<'a>(
    mem: &'a GuestMemoryMmap,
    chain: Chain<'a>,
) -> Result<(Header, Payload<'a>), PacketError> {
    let whole = chain.clone();
    let mut r = chain.reader(mem).map_err(PacketError::Chain)?;
    let h: Header = r.read_obj().map_err(|_| PacketError::NoHeader)?;
    let len = h.len;
    if len > MAX_PKT_PAYLOAD || len as usize > r.available_bytes() {
        return Err(PacketError::Length { header: h, len });
    }
    let len = len as usize;
    let payload = Payload {
        mem,
        segs: segments(&whole, false, HDR_LEN, len),
        len,
    };
    Ok((h, payload))
}

impl Payload<'_> {
    /// Writes what the (non-blocking) socket `fd` takes now with one writev
    /// from guest memory; 0 when it takes nothing.
    pub fn write_some(&self, fd: RawFd) -> std::io::Result<usize> {
        if self.len == 0 {
            return Ok(0);
        }
        let iovs = GuestIovecs::new(self.mem, &self.segs, Permissions::Read)?;
        // SAFETY: the iovecs point into guest memory that `iovs` keeps
        // mapped, at lengths vm-memory checked; the socket is ours.
        match iovs.call(0, |ptr, count| unsafe { libc::writev(fd, ptr, count) }) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            r => r,
        }
    }

    /// Appends the payload from byte `from` on to `out`.
    pub fn copy_from(&self, mut from: usize, out: &mut VecDeque<u8>) -> std::io::Result<()> {
        for &(addr, n) in &self.segs {
            if from >= n {
                from -= n;
                continue;
            }
            let mut buf = vec![0u8; n - from];
            self.mem
                .read_slice(&mut buf, addr.unchecked_add(from as u64))
                .map_err(std::io::Error::other)?;
            out.extend(buf);
            from = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};

    #[test]
    fn header_is_44_bytes_little_endian() {
        assert_eq!(HDR_LEN, 44);
        let h = Header {
            src_cid: 3,
            len: 5,
            op: OP_RW,
            ..Default::default()
        };
        let b = h.as_slice();
        assert_eq!(b[0], 3);
        assert_eq!(b[24], 5);
        assert_eq!(b[30], OP_RW as u8);
    }

    fn packet(len_in_header: u32, payload_bytes: u32) -> Result<(Header, usize), String> {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let h = Header {
            len: len_in_header,
            op: OP_RW,
            ..Default::default()
        };
        mem.write_obj(h, GuestAddress(0x1000)).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(0x1000, HDR_LEN as u32, 1, 1)),
            RawDescriptor::from(SplitDescriptor::new(0x2000, payload_bytes, 0, 0)),
        ];
        vq.build_desc_chain(&descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        read_tx(&mem, chain)
            .map(|(h, p)| (h, p.len))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_payload_must_fit_the_chain_and_the_limit() {
        assert_eq!(packet(100, 100).unwrap().1, 100);
        assert_eq!(
            packet(101, 100).unwrap_err(),
            "payload length 101 out of bounds"
        );
        let big = MAX_PKT_PAYLOAD + 1;
        assert_eq!(
            packet(big, big).unwrap_err(),
            format!("payload length {big} out of bounds")
        );
    }
}
