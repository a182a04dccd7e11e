//! The vsock muxer: the device's queues on one side, host Unix sockets on
//! the other. It accepts host connections (`CONNECT <port>\n`), connects
//! guest connections to `<UDS path>_<port>`, moves stream data both ways
//! under credit-based flow control, and serves the connections with host
//! data round robin, so that one busy stream cannot starve the others.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::num::Wrapping;
use std::ops::Bound;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::super::event_loop::{EventHandler, EventOps};
use super::super::iov::{GuestIovecs, segments};
use super::super::queue_worker::Chain;
use super::super::{Interrupt, LogLimit, Rounds};
use super::connection::{Conn, ConnState, Handshake};
use super::packet::{
    HDR_LEN, Header, MAX_PKT_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, PacketError, Payload, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
    read_tx,
};
use super::{CONN_BUF, HOST_CID};

/// Most connections at once.
const MAX_CONNS: usize = 4096;
/// Most control packets waiting for guest rx buffers.
const MAX_CONTROL: usize = 8192;
/// Most rx buffers one read from a host socket fills.
const RX_BATCH: usize = 64;

/// A stream, named by its two ports (the CIDs are fixed: host and guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnKey {
    pub host_port: u32,
    pub guest_port: u32,
}

impl ConnKey {
    /// The stream a packet from the guest belongs to.
    fn of_guest_packet(h: &Header) -> ConnKey {
        ConnKey {
            host_port: h.dst_port,
            guest_port: h.src_port,
        }
    }
}

/// The device's three queues and their notifiers.
pub struct Queues {
    pub rx: Queue,
    pub tx: Queue,
    pub ev: Queue,
    pub rx_evt: EventFd,
    pub tx_evt: EventFd,
    pub ev_evt: EventFd,
}

pub struct Muxer {
    pub(super) cid: u64,
    uds: PathBuf,
    pub(super) mem: GuestMemoryMmap,
    pub(super) q: Queues,
    pub(super) listener: UnixListener,
    pub(super) interrupt: Interrupt,
    conns: BTreeMap<ConnKey, Conn>,
    by_fd: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    control: VecDeque<Header>,
    next_port: u32,
    /// The connection whose host data went to the guest last: the next
    /// turn starts after it.
    last_served: Option<ConnKey>,
    pub(super) errors: LogLimit,
    /// Buffers were returned to the guest on rx / tx / event since the last
    /// interrupt.
    rx_used: bool,
    tx_used: bool,
    pub(super) ev_used: bool,
    /// A transport reset event waits for an event buffer (after a restore).
    pub(super) reset_pending: bool,
    /// Paused for a snapshot: guest memory and the queues are left alone.
    pub(super) paused: bool,
}

impl EventHandler for Muxer {
    fn handle(&mut self, ops: &mut EventOps, fd: RawFd, events: EventSet) {
        if self.paused {
            return;
        }
        if fd == self.q.rx_evt.as_raw_fd() {
            let _ = self.q.rx_evt.read();
        } else if fd == self.q.tx_evt.as_raw_fd() {
            let _ = self.q.tx_evt.read();
            self.process_tx(ops);
        } else if fd == self.q.ev_evt.as_raw_fd() {
            // The guest added event buffers; events are only sent on restore.
            let _ = self.q.ev_evt.read();
            self.send_transport_reset();
        } else if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if self.handshakes.contains_key(&fd) {
            self.continue_handshake(ops, fd);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            self.conn_event(ops, key, events);
        }
        self.process_rx(ops);
        self.notify_guest();
    }
}

impl Muxer {
    pub fn new(
        cid: u64,
        uds: PathBuf,
        mem: GuestMemoryMmap,
        q: Queues,
        listener: UnixListener,
        interrupt: Interrupt,
    ) -> Muxer {
        Muxer {
            cid,
            uds,
            mem,
            q,
            listener,
            interrupt,
            conns: BTreeMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            control: VecDeque::new(),
            next_port: 1 << 30,
            last_served: None,
            errors: LogLimit::default(),
            rx_used: false,
            tx_used: false,
            ev_used: false,
            reset_pending: false,
            paused: false,
        }
    }

    /// Host connections, established or still in their handshake.
    pub(super) fn connection_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// The fds the device registers when it starts serving.
    pub fn base_fds(&self) -> [RawFd; 4] {
        [
            self.q.rx_evt.as_raw_fd(),
            self.q.tx_evt.as_raw_fd(),
            self.q.ev_evt.as_raw_fd(),
            self.listener.as_raw_fd(),
        ]
    }

    /// Interrupts the guest if it wants to hear of the buffers returned.
    pub(super) fn notify_guest(&mut self) {
        let mem = &self.mem;
        // With EVENT_IDX the guest says up to which buffer it wants to hear.
        let rx =
            std::mem::take(&mut self.rx_used) && self.q.rx.needs_notification(mem).unwrap_or(true);
        let tx =
            std::mem::take(&mut self.tx_used) && self.q.tx.needs_notification(mem).unwrap_or(true);
        let ev =
            std::mem::take(&mut self.ev_used) && self.q.ev.needs_notification(mem).unwrap_or(true);
        if rx || tx || ev {
            self.interrupt.signal_used();
        }
    }

    fn header(&self, key: ConnKey, op: u16, flags: u32, len: u32) -> Header {
        let fwd = self.conns.get(&key).map_or(0, |c| c.fwd_cnt.0);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.host_port,
            dst_port: key.guest_port,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: fwd,
        }
    }

    fn queue_control(&mut self, key: ConnKey, op: u16, flags: u32) {
        if self.control.len() >= MAX_CONTROL {
            if self.errors.allow() {
                log::warn!("vsock: guest is not taking packets; dropping a control packet");
            }
            return;
        }
        let h = self.header(key, op, flags, 0);
        if let Some(c) = self.conns.get_mut(&key) {
            c.last_fwd_cnt_sent = c.fwd_cnt;
        }
        self.control.push_back(h);
    }

    fn reset_conn(&mut self, ops: &mut EventOps, key: ConnKey) {
        self.remove_conn(ops, key);
        self.queue_control(key, OP_RST, 0);
    }

    fn remove_conn(&mut self, ops: &mut EventOps, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            ops.remove(c.token);
            self.by_fd.remove(&c.stream.as_raw_fd());
        }
    }

    /// Connections with host data and guest credit for it.
    #[cfg(test)]
    pub(super) fn conns_with_data(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.has_data_for_guest())
            .count()
    }

    /// Leaves guest memory, the queues and the host sockets alone until
    /// [`Muxer::resume`]: the sockets stay open but unwatched.
    pub fn pause(&mut self, ops: &mut EventOps) {
        self.paused = true;
        for c in self.conns.values() {
            let _ = ops.modify(c.token, EventSet::empty());
        }
        for h in self.handshakes.values() {
            let _ = ops.modify(h.token, EventSet::empty());
        }
    }

    /// Serves again: the host sockets are watched as before the pause, and
    /// what the guest queued meanwhile is taken.
    pub fn resume(&mut self, ops: &mut EventOps) {
        self.paused = false;
        for c in self.conns.values() {
            let _ = ops.modify(c.token, c.interest);
        }
        for h in self.handshakes.values() {
            let _ = ops.modify(h.token, EventSet::IN);
        }
        self.process_tx(ops);
        self.process_rx(ops);
        self.send_transport_reset();
        self.notify_guest();
    }

    /// Drops every host connection (they close) and what waited for the guest.
    pub fn close_all(&mut self, ops: &mut EventOps) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove_conn(ops, k);
        }
        for (_, h) in self.handshakes.drain() {
            ops.remove(h.token);
        }
        self.control.clear();
        self.last_served = None;
    }

    fn update_interest(&mut self, ops: &mut EventOps, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            let want = c.wanted_interest();
            if want != c.interest {
                c.interest = want;
                let _ = ops.modify(c.token, want);
            }
        }
    }

    // --- host side -------------------------------------------------------

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if let Ok(token) = ops.add(fd, EventSet::IN) {
                        let line = Vec::new();
                        self.handshakes.insert(
                            fd,
                            Handshake {
                                stream,
                                token,
                                line,
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn continue_handshake(&mut self, ops: &mut EventOps, fd: RawFd) {
        let Some(h) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match h.stream.read(&mut byte) {
                Ok(0) => break Err(()),
                Ok(_) if byte[0] == b'\n' => {
                    let line = String::from_utf8_lossy(&h.line).into_owned();
                    break line
                        .strip_prefix("CONNECT ")
                        .and_then(|p| p.trim().parse::<u32>().ok())
                        .ok_or(());
                }
                Ok(_) if h.line.len() >= 64 => break Err(()),
                Ok(_) => h.line.push(byte[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        let Some(h) = self.handshakes.remove(&fd) else {
            return;
        };
        let Ok(guest_port) = port else {
            ops.remove(h.token);
            return; // dropping the stream closes it: a bad request
        };
        if self.conns.len() >= MAX_CONNS {
            ops.remove(h.token);
            return;
        }
        let host_port = self.alloc_port(guest_port);
        log::debug!("vsock: host connection {host_port} asks for guest port {guest_port}");
        let key = ConnKey {
            host_port,
            guest_port,
        };
        // Wait for the guest's answer before reading from the host socket.
        let _ = ops.modify(h.token, EventSet::empty());
        let mut conn = Conn::new(h.stream, h.token, ConnState::Connecting);
        conn.interest = EventSet::empty();
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.queue_control(key, OP_REQUEST, 0);
    }

    fn alloc_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = if p == u32::MAX { 1 << 30 } else { p + 1 };
            let key = ConnKey {
                host_port: p,
                guest_port,
            };
            if !self.conns.contains_key(&key) {
                return p;
            }
        }
    }

    fn conn_event(&mut self, ops: &mut EventOps, key: ConnKey, events: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::OUT) && (c.flush_to_host().is_err() || c.finished()) {
            self.reset_conn(ops, key);
            return;
        }
        if events
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            c.readable = true;
        }
        if c.credit_update_due() {
            self.queue_control(key, OP_CREDIT_UPDATE, 0);
        }
        self.update_interest(ops, key);
    }

    // --- guest -> host -----------------------------------------------------

    fn process_tx(&mut self, ops: &mut EventOps) {
        let mem = self.mem.clone();
        let mut rounds = Rounds::default();
        loop {
            let mut popped = false;
            while let Some(chain) = self.q.tx.pop_descriptor_chain(&mem) {
                popped = true;
                let head = chain.head_index();
                match read_tx(&mem, chain) {
                    Ok((h, payload)) => self.guest_packet(ops, h, &payload),
                    Err(PacketError::Length { header, .. }) => {
                        self.bad_packet(ops, &header, "payload length out of bounds")
                    }
                    Err(e) => {
                        if self.errors.allow() {
                            log::warn!("vsock: {e}; dropped");
                        }
                    }
                }
                let _ = self.q.tx.add_used(&mem, head, 0);
                self.tx_used = true;
            }
            if !rounds.again(&mut self.q.tx, &mem, popped, &mut self.errors) {
                break;
            }
        }
    }

    fn bad_packet(&mut self, ops: &mut EventOps, h: &Header, why: &str) {
        if self.errors.allow() {
            log::warn!("vsock: bad packet from the guest ({why}): {h:?}");
        }
        let key = ConnKey::of_guest_packet(h);
        if self.conns.contains_key(&key) {
            self.reset_conn(ops, key);
        }
    }

    fn guest_packet(&mut self, ops: &mut EventOps, h: Header, payload: &Payload<'_>) {
        let (src_cid, dst_cid, kind, op) = (h.src_cid, h.dst_cid, h.kind, h.op);
        log::trace!("vsock: from guest {h:?}");
        let key = ConnKey::of_guest_packet(&h);
        if src_cid != self.cid || dst_cid != HOST_CID || kind != TYPE_STREAM {
            if op != OP_RST {
                self.remove_conn(ops, key);
                let mut rst = self.header(key, OP_RST, 0, 0);
                rst.dst_cid = src_cid;
                self.control.push_back(rst);
            }
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        }
        match op {
            OP_REQUEST => self.guest_connect(ops, key, &h),
            OP_RESPONSE => self.guest_accepted(ops, key),
            OP_RW => self.guest_data(ops, key, &h, payload),
            OP_CREDIT_UPDATE => self.update_interest(ops, key),
            OP_CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.queue_control(key, OP_CREDIT_UPDATE, 0);
                }
            }
            OP_SHUTDOWN => self.guest_shutdown(ops, key, h.flags),
            OP_RST => self.remove_conn(ops, key),
            _ => self.bad_packet(ops, &h, "unknown operation"),
        }
    }

    fn guest_accepted(&mut self, ops: &mut EventOps, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.queue_control(key, OP_RST, 0);
            return;
        };
        if c.state != ConnState::Connecting {
            self.reset_conn(ops, key);
            return;
        }
        c.state = ConnState::Established;
        c.send_host_line(&format!("OK {}\n", key.host_port));
        if c.flush_to_host().is_err() {
            self.reset_conn(ops, key);
            return;
        }
        self.update_interest(ops, key);
    }

    fn guest_data(&mut self, ops: &mut EventOps, key: ConnKey, h: &Header, payload: &Payload<'_>) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.queue_control(key, OP_RST, 0);
            return;
        };
        if !c.guest_may_send() {
            self.reset_conn(ops, key);
            return;
        }
        if c.to_host.len() + payload.len > CONN_BUF as usize {
            // The guest sent past the credit it was given.
            self.bad_packet(ops, h, "credit exceeded");
            return;
        }
        // Straight from guest memory when nothing waits ahead of it; what
        // the socket does not take now waits in to_host.
        let sent = if c.to_host.is_empty() {
            payload.write_some(c.stream.as_raw_fd())
        } else {
            Ok(0)
        };
        let kept = sent.and_then(|n| {
            c.fwd_cnt += Wrapping(n as u32);
            payload.copy_from(n, &mut c.to_host)
        });
        if kept.is_err() || c.flush_to_host().is_err() {
            self.reset_conn(ops, key);
            return;
        }
        if c.credit_update_due() {
            self.queue_control(key, OP_CREDIT_UPDATE, 0);
        }
        self.update_interest(ops, key);
    }

    fn guest_shutdown(&mut self, ops: &mut EventOps, key: ConnKey, flags: u32) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.state == ConnState::Connecting {
            // A shutdown before accepting: nothing to half-close.
            self.reset_conn(ops, key);
            return;
        }
        if flags & SHUTDOWN_SEND != 0 {
            c.guest_finished();
            let _ = c.flush_to_host();
        }
        let both = flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV;
        if (both && c.to_host.is_empty()) || c.finished() {
            self.reset_conn(ops, key);
        }
    }

    fn guest_connect(&mut self, ops: &mut EventOps, key: ConnKey, h: &Header) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNS {
            self.reset_conn(ops, key);
            return;
        }
        let path = PathBuf::from(format!("{}_{}", self.uds.display(), key.host_port));
        let stream = match UnixStream::connect(&path) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                self.queue_control(key, OP_RST, 0);
                return;
            }
        };
        let Ok(token) = ops.add(stream.as_raw_fd(), EventSet::IN) else {
            self.queue_control(key, OP_RST, 0);
            return;
        };
        let mut c = Conn::new(stream, token, ConnState::Established);
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        self.by_fd.insert(c.stream.as_raw_fd(), key);
        self.conns.insert(key, c);
        self.queue_control(key, OP_RESPONSE, 0);
    }

    // --- host -> guest -------------------------------------------------------

    /// The next connection, after the one served last and wrapping around,
    /// with host data to deliver and guest credit for it.
    fn next_sender(&self) -> Option<ConnKey> {
        let ready = |(k, c): (&ConnKey, &Conn)| c.has_data_for_guest().then_some(*k);
        match self.last_served {
            None => self.conns.iter().find_map(ready),
            Some(last) => self
                .conns
                .range((Bound::Excluded(last), Bound::Unbounded))
                .chain(self.conns.range(..=last))
                .find_map(ready),
        }
    }

    fn process_rx(&mut self, ops: &mut EventOps) {
        let mem = self.mem.clone();
        loop {
            if !self.control.is_empty() {
                let Some(chain) = self.q.rx.pop_descriptor_chain(&mem) else {
                    // Wait for the guest to add rx buffers.
                    let _ = self.q.rx.enable_notification(&mem);
                    break;
                };
                let head = chain.head_index();
                let written = match chain.writer(&mem) {
                    Ok(mut w) if w.available_bytes() >= HDR_LEN => match self.control.pop_front() {
                        Some(h) => {
                            log::trace!("vsock: to guest {h:?}");
                            w.write_obj(h).map(|_| HDR_LEN as u32).unwrap_or(0)
                        }
                        None => 0,
                    },
                    _ => 0,
                };
                let _ = self.q.rx.add_used(&mem, head, written);
                self.rx_used = true;
                continue;
            }
            let Some(key) = self.next_sender() else {
                break;
            };
            if !self.send_data(ops, key, &mem) {
                let _ = self.q.rx.enable_notification(&mem);
                break;
            }
            // Only a turn that got buffers counts as served.
            self.last_served = Some(key);
        }
    }

    /// Moves host data of `key` into a batch of rx buffers with one readv
    /// straight into guest memory: up to [`RX_BATCH`] buffers, as much as
    /// the guest's credit allows, each with its header. Returns false when
    /// the guest has no rx buffer.
    fn send_data(&mut self, ops: &mut EventOps, key: ConnKey, mem: &GuestMemoryMmap) -> bool {
        let Some(credit) = self.conns.get(&key).map(|c| c.peer_credit() as usize) else {
            return true;
        };
        // (chain, payload room), in queue order.
        let mut batch: Vec<(Chain<'_>, usize)> = Vec::new();
        let mut room = 0;
        while batch.len() < RX_BATCH && room < credit {
            let Some(chain) = self.q.rx.pop_descriptor_chain(mem) else {
                break;
            };
            let avail = chain.clone().writer(mem).map_or(0, |w| w.available_bytes());
            if avail <= HDR_LEN {
                if !batch.is_empty() {
                    // Not ours to drop yet: the next round answers it.
                    self.q.rx.go_to_previous_position();
                    break;
                }
                // No room for a header and data: returned empty.
                let _ = self.q.rx.add_used(mem, chain.head_index(), 0);
                self.rx_used = true;
                continue;
            }
            let n = (avail - HDR_LEN)
                .min(MAX_PKT_PAYLOAD as usize)
                .min(credit - room);
            room += n;
            batch.push((chain, n));
        }
        if batch.is_empty() {
            return false;
        }
        let segs: Vec<_> = batch
            .iter()
            .flat_map(|(chain, n)| segments(chain, true, HDR_LEN, *n))
            .collect();
        let Some(c) = self.conns.get_mut(&key) else {
            return true;
        };
        let fd = c.stream.as_raw_fd();
        let read = GuestIovecs::new(mem, &segs, Permissions::Write).and_then(|iovs| {
            // SAFETY: the iovecs point into guest memory that `iovs` keeps
            // mapped, at lengths vm-memory checked; the socket is ours.
            iovs.call(0, |ptr, count| unsafe { libc::readv(fd, ptr, count) })
        });
        let mut left = match read {
            Ok(n) if n > 0 => {
                c.tx_cnt += Wrapping(n as u32);
                c.last_fwd_cnt_sent = c.fwd_cnt;
                n
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                // Nothing to send after all.
                c.readable = false;
                self.update_interest(ops, key);
                0
            }
            _ => {
                // The host will send no more. The guest still may (a
                // half-close, as with TCP), unless it is done too.
                c.host_finished();
                let h = if c.finished() {
                    let h = self.header(key, OP_RST, 0, 0);
                    self.remove_conn(ops, key);
                    h
                } else {
                    self.update_interest(ops, key);
                    self.header(key, OP_SHUTDOWN, SHUTDOWN_SEND, 0)
                };
                self.control.push_front(h);
                0
            }
        };
        let mut unused = 0;
        for (chain, n) in batch {
            if left == 0 {
                unused += 1;
                continue;
            }
            let take = n.min(left);
            left -= take;
            let head = chain.head_index();
            let h = self.header(key, OP_RW, 0, take as u32);
            let wrote = chain.writer(mem).is_ok_and(|mut w| w.write_obj(h).is_ok());
            let written = if wrote { (HDR_LEN + take) as u32 } else { 0 };
            let _ = self.q.rx.add_used(mem, head, written);
            self.rx_used = true;
        }
        // The buffers that got nothing (the last ones popped) go back.
        for _ in 0..unused {
            self.q.rx.go_to_previous_position();
        }
        true
    }
}
