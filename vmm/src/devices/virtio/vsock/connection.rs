//! One vsock stream between a guest port and a host Unix socket: where it is
//! in its life, the credit both ways, and the guest data the host socket
//! has not taken yet.

use std::collections::VecDeque;
use std::io::{ErrorKind, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::CONN_BUF;

/// Where a connection is in its life. Data flows host -> guest in
/// `Established` and `GuestDone`, guest -> host in `Established` and
/// `HostDone`.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Both sides send.
    Established,
    /// The host socket reached end of file; the guest may still send (a
    /// half-close, as with TCP).
    HostDone,
    /// The guest shut down its sending side; the host may still send.
    GuestDone,
    /// Neither side sends; what is left in `to_host` drains, then the
    /// connection is over.
    Closing,
}

pub struct Conn {
    pub stream: UnixStream,
    pub token: u64,
    pub state: ConnState,
    /// The guest's receive buffer and how much of it it has consumed.
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    pub tx_cnt: Wrapping<u32>,
    /// Bytes of guest data written to the host socket.
    pub fwd_cnt: Wrapping<u32>,
    pub last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest data the host socket has not taken yet (at most CONN_BUF).
    pub to_host: VecDeque<u8>,
    /// The host socket has data we have not read (EPOLLIN seen): readiness
    /// of the socket, not a state of the stream.
    pub readable: bool,
    pub interest: EventSet,
}

impl Conn {
    pub fn new(stream: UnixStream, token: u64, state: ConnState) -> Conn {
        Conn {
            stream,
            token,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            to_host: VecDeque::new(),
            readable: false,
            interest: EventSet::IN,
        }
    }

    /// The guest may send data on this connection.
    pub fn guest_may_send(&self) -> bool {
        matches!(self.state, ConnState::Established | ConnState::HostDone)
    }

    /// The host side may still send data to the guest.
    pub fn host_may_send(&self) -> bool {
        matches!(self.state, ConnState::Established | ConnState::GuestDone)
    }

    /// Host data waits and the guest has room for some of it.
    pub fn has_data_for_guest(&self) -> bool {
        self.host_may_send() && self.readable && self.peer_credit() > 0
    }

    /// The host socket reached end of file.
    pub fn host_finished(&mut self) {
        self.state = match self.state {
            ConnState::GuestDone | ConnState::Closing => ConnState::Closing,
            _ => ConnState::HostDone,
        };
    }

    /// The guest will send no more.
    pub fn guest_finished(&mut self) {
        self.state = match self.state {
            ConnState::HostDone | ConnState::Closing => ConnState::Closing,
            _ => ConnState::GuestDone,
        };
    }

    fn guest_done_sending(&self) -> bool {
        matches!(self.state, ConnState::GuestDone | ConnState::Closing)
    }

    /// How many more bytes the guest can take.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Enough guest data has reached the host that the guest should hear of
    /// the credit it got back.
    pub fn credit_update_due(&self) -> bool {
        (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CONN_BUF / 4
    }

    /// Queues a line of our own (not guest data) for the host socket. It
    /// goes through `to_host` so it stays ahead of guest data, but it must
    /// not count in `fwd_cnt`: the guest would see more bytes forwarded than
    /// it sent and, by its arithmetic, no credit left at all.
    pub fn send_host_line(&mut self, line: &str) {
        self.to_host.extend(line.as_bytes());
        self.fwd_cnt -= Wrapping(line.len() as u32);
    }

    /// Both sides have finished sending and everything reached the host: the
    /// connection is over (a reset tells the guest so).
    pub fn finished(&self) -> bool {
        self.state == ConnState::Closing && self.to_host.is_empty()
    }

    /// Writes what the host socket takes of `to_host`; Err on a broken socket.
    pub fn flush_to_host(&mut self) -> std::io::Result<()> {
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.to_host.is_empty() && self.guest_done_sending() {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// The events the host socket should be watched for.
    pub fn wanted_interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.host_may_send() && !self.readable {
            e |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }
}

/// Host-initiated connection before its `CONNECT <port>\n` line is complete.
pub struct Handshake {
    pub stream: UnixStream,
    pub token: u64,
    pub line: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn ok_line_is_not_counted_as_forwarded_guest_data() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(a, 0, ConnState::Established);
        c.send_host_line("OK 1073741824\n");
        c.flush_to_host().unwrap();
        assert_eq!(
            c.fwd_cnt,
            Wrapping(0),
            "the OK line is ours, not the guest's"
        );
        c.to_host.extend(b"hello");
        c.flush_to_host().unwrap();
        assert_eq!(c.fwd_cnt, Wrapping(5));
        let mut got = [0u8; 19];
        b.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"OK 1073741824\nhello");
    }

    #[test]
    fn credit_accounting_wraps() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, 0, ConnState::Established);
        c.peer_buf_alloc = 1000;
        c.tx_cnt = Wrapping(u32::MAX - 10);
        c.peer_fwd_cnt = Wrapping(u32::MAX - 100);
        assert_eq!(c.peer_credit(), 910);
        c.tx_cnt += Wrapping(50); // wraps past zero
        assert_eq!(c.peer_credit(), 860);
        c.peer_fwd_cnt = c.tx_cnt;
        assert_eq!(c.peer_credit(), 1000);
    }

    #[test]
    fn half_closes_in_either_order_end_in_closing() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, 0, ConnState::Established);
        c.host_finished();
        assert_eq!(c.state, ConnState::HostDone);
        assert!(c.guest_may_send() && !c.host_may_send());
        c.guest_finished();
        assert_eq!(c.state, ConnState::Closing);
        assert!(c.finished());

        let (a, _b) = UnixStream::pair().unwrap();
        let mut c = Conn::new(a, 0, ConnState::Established);
        c.guest_finished();
        assert!(!c.guest_may_send() && c.host_may_send());
        c.to_host.extend(b"left");
        c.host_finished();
        assert_eq!(c.state, ConnState::Closing);
        assert!(!c.finished(), "data still waits for the host");
    }
}
