//! virtio-vsock with a Unix-socket host side, as Firecracker users know it:
//! - a host process connects to the UDS path and writes `CONNECT <port>\n`;
//!   once a guest listener on that port accepts, it reads `OK <hostport>\n`
//!   and the stream is connected;
//! - a guest connection to host port P is connected to a Unix listener at
//!   `<UDS path>_P`.
//!
//! Streams use credit-based flow control both ways: the device reads from a
//! host socket only as much as the guest has room for, and keeps at most
//! [`CONN_BUF`] bytes per connection that the host socket has not taken yet
//! (the guest is told so through buf_alloc/fwd_cnt). Everything in a packet
//! is untrusted: lengths are bounded, unknown operations and addresses are
//! answered with a reset.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::event_loop::{EventHandler, EventLoop};
use super::iov::{GuestIovecs, segments};
use super::queue_worker::Chain;
use super::{
    ActivateError, Activation, F_EVENT_IDX, F_VERSION_1, Interrupt, LogLimit, Rounds, TYPE_VSOCK,
    VirtioDevice, read_config_bytes,
};

/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Bytes of guest data per connection the device holds for a slow host reader.
pub const CONN_BUF: u32 = 256 * 1024;
/// Largest payload accepted in one packet from the guest.
const MAX_PKT_PAYLOAD: u32 = 64 * 1024;
/// Most connections at once.
const MAX_CONNS: usize = 4096;
/// Most control packets waiting for guest rx buffers.
const MAX_CONTROL: usize = 8192;
const QUEUE_SIZE: u16 = 256;
/// Most rx buffers one read from a host socket fills.
const RX_BATCH: usize = 64;
const HDR_LEN: usize = std::mem::size_of::<Header>();

const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const SHUTDOWN_RCV: u32 = 1;
const SHUTDOWN_SEND: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock socket {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
}

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

/// The device as the transport sees it.
pub struct Vsock {
    cid: u64,
    uds: PathBuf,
    listener: Option<UnixListener>,
    event_loop: EventLoop,
    config: [u8; 8],
    backend: Option<(Arc<Mutex<Backend>>, Vec<u64>)>,
}

impl Vsock {
    /// Listens on `uds` (replacing a stale socket file) for host connections.
    pub fn new(cid: u64, uds: &Path, event_loop: EventLoop) -> Result<Vsock, VsockError> {
        let listen_err = |source| VsockError::Listen {
            path: uds.to_path_buf(),
            source,
        };
        match std::fs::remove_file(uds) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(listen_err(e)),
        }
        let listener = UnixListener::bind(uds).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        Ok(Vsock {
            cid,
            uds: uds.to_path_buf(),
            listener: Some(listener),
            event_loop,
            config: cid.to_le_bytes(),
            backend: None,
        })
    }

    /// Runs the active device's handler for `fd` now, on this thread (the
    /// fuzz targets drive it without waiting for the event loop).
    #[cfg(any(test, fuzzing))]
    pub(crate) fn handle_now(&self, fd: RawFd) {
        if let Some((backend, _)) = &self.backend {
            lock(backend).handle(fd, EventSet::IN);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }
    fn features(&self) -> u64 {
        F_VERSION_1 | F_EVENT_IDX
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn activate(&mut self, mut a: Activation, features: u64) -> Result<(), ActivateError> {
        if a.queues.len() != 3 || a.queue_evts.len() != 3 {
            return Err(ActivateError::QueueCount {
                got: a.queues.len(),
                want: 3,
            });
        }
        let listener = match &self.listener {
            Some(l) => l
                .try_clone()
                .map_err(|e| ActivateError::Device(format!("vsock listener: {e}")))?,
            None => return Err(ActivateError::Device("vsock listener gone".into())),
        };
        let evq = a.queues.pop();
        let txq = a.queues.pop();
        let rxq = a.queues.pop();
        let (Some(mut rxq), Some(mut txq), Some(_evq)) = (rxq, txq, evq) else {
            return Err(ActivateError::QueueCount { got: 0, want: 3 });
        };
        rxq.set_event_idx(features & F_EVENT_IDX != 0);
        txq.set_event_idx(features & F_EVENT_IDX != 0);
        let mut evts = a.queue_evts.into_iter();
        let (rx_evt, tx_evt, ev_evt) = match (evts.next(), evts.next(), evts.next()) {
            (Some(r), Some(t), Some(e)) => (r, t, e),
            _ => return Err(ActivateError::QueueCount { got: 0, want: 3 }),
        };
        let fds = [
            rx_evt.as_raw_fd(),
            tx_evt.as_raw_fd(),
            ev_evt.as_raw_fd(),
            listener.as_raw_fd(),
        ];
        let backend = Arc::new_cyclic(|me| {
            Mutex::new(Backend {
                me: me.clone(),
                cid: self.cid,
                uds: self.uds.clone(),
                mem: a.mem,
                rxq,
                txq,
                rx_evt,
                tx_evt,
                ev_evt,
                listener,
                interrupt: a.interrupt,
                event_loop: a.event_loop.clone(),
                conns: HashMap::new(),
                by_fd: HashMap::new(),
                handshakes: HashMap::new(),
                control: VecDeque::new(),
                next_port: 1 << 30,
                errors: LogLimit::default(),
                rx_used: false,
                tx_used: false,
            })
        });
        let mut tokens = Vec::new();
        for fd in fds {
            let t = a
                .event_loop
                .add(fd, EventSet::IN, backend.clone())
                .map_err(ActivateError::EventLoop)?;
            tokens.push(t);
        }
        self.backend = Some((backend, tokens));
        Ok(())
    }
    fn reset(&mut self) {
        if let Some((backend, tokens)) = self.backend.take() {
            for t in tokens {
                self.event_loop.remove(t);
            }
            lock(&backend).close_all();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Key = (u32, u32); // (host port, guest port)

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

struct Conn {
    stream: UnixStream,
    token: u64,
    state: State,
    /// The guest's receive buffer and how much of it it has consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    tx_cnt: Wrapping<u32>,
    /// Bytes of guest data written to the host socket.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest data the host socket has not taken yet (at most CONN_BUF).
    to_host: VecDeque<u8>,
    /// The host socket has data we have not read (EPOLLIN seen).
    readable: bool,
    host_eof: bool,
    guest_done_sending: bool,
    interest: EventSet,
}

impl Conn {
    fn new(stream: UnixStream, token: u64, state: State) -> Conn {
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
            host_eof: false,
            guest_done_sending: false,
            interest: EventSet::IN,
        }
    }

    /// How many more bytes the guest can take.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Queues a line of our own (not guest data) for the host socket. It
    /// goes through `to_host` so it stays ahead of guest data, but it must
    /// not count in `fwd_cnt`: the guest would see more bytes forwarded than
    /// it sent and, by its arithmetic, no credit left at all.
    fn send_host_line(&mut self, line: &str) {
        self.to_host.extend(line.as_bytes());
        self.fwd_cnt -= Wrapping(line.len() as u32);
    }

    /// Both sides have finished sending and everything reached the host: the
    /// connection is over (a reset tells the guest so).
    fn finished(&self) -> bool {
        self.host_eof && self.guest_done_sending && self.to_host.is_empty()
    }

    /// Writes what the host socket takes of `to_host`; Err on a broken socket.
    fn flush_to_host(&mut self) -> std::io::Result<()> {
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
        if self.to_host.is_empty() && self.guest_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    fn wanted_interest(&self) -> EventSet {
        let mut e = EventSet::empty();
        if self.state == State::Established && !self.readable && !self.host_eof {
            e |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            e |= EventSet::OUT;
        }
        e
    }
}

/// Host-initiated connection before its `CONNECT <port>\n` line is complete.
struct Handshake {
    stream: UnixStream,
    token: u64,
    line: Vec<u8>,
}

struct Backend {
    me: std::sync::Weak<Mutex<Backend>>,
    cid: u64,
    uds: PathBuf,
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    rx_evt: EventFd,
    tx_evt: EventFd,
    ev_evt: EventFd,
    listener: UnixListener,
    interrupt: Interrupt,
    event_loop: EventLoop,
    conns: HashMap<Key, Conn>,
    by_fd: HashMap<RawFd, Key>,
    handshakes: HashMap<RawFd, Handshake>,
    control: VecDeque<Header>,
    next_port: u32,
    errors: LogLimit,
    /// Buffers were returned to the guest on rx / tx since the last interrupt.
    rx_used: bool,
    tx_used: bool,
}

impl EventHandler for Backend {
    fn handle(&mut self, fd: RawFd, events: EventSet) {
        if fd == self.rx_evt.as_raw_fd() {
            let _ = self.rx_evt.read();
        } else if fd == self.tx_evt.as_raw_fd() {
            let _ = self.tx_evt.read();
            self.process_tx();
        } else if fd == self.ev_evt.as_raw_fd() {
            let _ = self.ev_evt.read();
        } else if fd == self.listener.as_raw_fd() {
            self.accept();
        } else if self.handshakes.contains_key(&fd) {
            self.continue_handshake(fd);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            self.conn_event(key, events);
        }
        self.process_rx();
        let mem = &self.mem;
        // With EVENT_IDX the guest says up to which buffer it wants to hear.
        let rx =
            std::mem::take(&mut self.rx_used) && self.rxq.needs_notification(mem).unwrap_or(true);
        let tx =
            std::mem::take(&mut self.tx_used) && self.txq.needs_notification(mem).unwrap_or(true);
        if rx || tx {
            self.interrupt.signal_used();
        }
    }
}

impl Backend {
    fn header(&self, key: Key, op: u16, flags: u32, len: u32) -> Header {
        let fwd = self.conns.get(&key).map_or(0, |c| c.fwd_cnt.0);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF,
            fwd_cnt: fwd,
        }
    }

    fn queue_control(&mut self, key: Key, op: u16, flags: u32) {
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

    fn reset_conn(&mut self, key: Key) {
        self.remove_conn(key);
        self.queue_control(key, OP_RST, 0);
    }

    fn remove_conn(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.event_loop.remove(c.token);
            self.by_fd.remove(&c.stream.as_raw_fd());
        }
    }

    fn close_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove_conn(k);
        }
        for (_, h) in self.handshakes.drain() {
            self.event_loop.remove(h.token);
        }
    }

    fn update_interest(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            let want = c.wanted_interest();
            if want != c.interest {
                c.interest = want;
                let _ = self.event_loop.modify(c.token, want);
            }
        }
    }

    fn register(&mut self, stream: &UnixStream, events: EventSet) -> Option<u64> {
        let handler = self.self_handle()?;
        self.event_loop
            .add(stream.as_raw_fd(), events, handler)
            .ok()
    }

    /// The Arc this backend is registered under.
    fn self_handle(&self) -> Option<Arc<Mutex<dyn EventHandler>>> {
        let me: Arc<Mutex<Backend>> = self.me.upgrade()?;
        Some(me)
    }

    // --- host side -------------------------------------------------------

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if let Some(token) = self.register(&stream, EventSet::IN) {
                        let fd = stream.as_raw_fd();
                        self.handshakes.insert(
                            fd,
                            Handshake {
                                stream,
                                token,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn continue_handshake(&mut self, fd: RawFd) {
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
            self.event_loop.remove(h.token);
            return; // dropping the stream closes it: a bad request
        };
        if self.conns.len() >= MAX_CONNS {
            self.event_loop.remove(h.token);
            return;
        }
        let host_port = self.alloc_port(guest_port);
        log::debug!("vsock: host connection {host_port} asks for guest port {guest_port}");
        let key = (host_port, guest_port);
        // Wait for the guest's answer before reading from the host socket.
        let _ = self.event_loop.modify(h.token, EventSet::empty());
        let mut conn = Conn::new(h.stream, h.token, State::Connecting);
        conn.interest = EventSet::empty();
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.queue_control(key, OP_REQUEST, 0);
    }

    fn alloc_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let p = self.next_port;
            self.next_port = if p == u32::MAX { 1 << 30 } else { p + 1 };
            if !self.conns.contains_key(&(p, guest_port)) {
                return p;
            }
        }
    }

    fn conn_event(&mut self, key: Key, events: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if events.contains(EventSet::OUT) && (c.flush_to_host().is_err() || c.finished()) {
            self.reset_conn(key);
            return;
        }
        if events
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            c.readable = true;
        }
        let credit_due = (c.fwd_cnt - c.last_fwd_cnt_sent).0 >= CONN_BUF / 4;
        if credit_due {
            self.queue_control(key, OP_CREDIT_UPDATE, 0);
        }
        self.update_interest(key);
    }

    // --- guest -> host -----------------------------------------------------

    fn process_tx(&mut self) {
        let mem = self.mem.clone();
        let mut rounds = Rounds::default();
        loop {
            let mut popped = false;
            while let Some(chain) = self.txq.pop_descriptor_chain(&mem) {
                popped = true;
                let head = chain.head_index();
                let whole = chain.clone();
                match chain.reader(&mem) {
                    Ok(mut r) => match r.read_obj::<Header>() {
                        Ok(h) => {
                            let len = h.len as usize;
                            if h.len > MAX_PKT_PAYLOAD || len > r.available_bytes() {
                                self.bad_packet(&h, "payload length out of bounds");
                            } else {
                                let payload = Payload {
                                    mem: &mem,
                                    segs: segments(&whole, false, HDR_LEN, len),
                                    len,
                                };
                                self.guest_packet(h, &payload);
                            }
                        }
                        Err(_) => {
                            if self.errors.allow() {
                                log::warn!("vsock: tx packet without a header dropped");
                            }
                        }
                    },
                    Err(e) => {
                        if self.errors.allow() {
                            log::warn!("vsock: malformed tx chain: {e}");
                        }
                    }
                }
                let _ = self.txq.add_used(&mem, head, 0);
                self.tx_used = true;
            }
            if !rounds.again(&mut self.txq, &mem, popped, &mut self.errors) {
                break;
            }
        }
    }

    fn bad_packet(&mut self, h: &Header, why: &str) {
        if self.errors.allow() {
            log::warn!("vsock: bad packet from the guest ({why}): {h:?}");
        }
        let key = (h.dst_port, h.src_port);
        if self.conns.contains_key(&key) {
            self.reset_conn(key);
        }
    }

    fn guest_packet(&mut self, h: Header, payload: &Payload<'_>) {
        let (src_cid, dst_cid, kind, op) = (h.src_cid, h.dst_cid, h.kind, h.op);
        log::trace!("vsock: from guest {h:?}");
        if src_cid != self.cid || dst_cid != HOST_CID || kind != TYPE_STREAM {
            if op != OP_RST {
                let key = (h.dst_port, h.src_port);
                self.remove_conn(key);
                let mut rst = self.header(key, OP_RST, 0, 0);
                rst.dst_cid = src_cid;
                self.control.push_back(rst);
            }
            return;
        }
        let key = (h.dst_port, h.src_port);
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        }
        match op {
            OP_REQUEST => self.guest_connect(key, &h),
            OP_RESPONSE => {
                let Some(c) = self.conns.get_mut(&key) else {
                    self.queue_control(key, OP_RST, 0);
                    return;
                };
                if c.state != State::Connecting {
                    self.reset_conn(key);
                    return;
                }
                c.state = State::Established;
                c.send_host_line(&format!("OK {}\n", key.0));
                if c.flush_to_host().is_err() {
                    self.reset_conn(key);
                    return;
                }
                self.update_interest(key);
            }
            OP_RW => {
                let Some(c) = self.conns.get_mut(&key) else {
                    self.queue_control(key, OP_RST, 0);
                    return;
                };
                if c.state != State::Established || c.guest_done_sending {
                    self.reset_conn(key);
                    return;
                }
                if c.to_host.len() + payload.len > CONN_BUF as usize {
                    // The guest sent past the credit it was given.
                    self.bad_packet(&h, "credit exceeded");
                    return;
                }
                // Straight from guest memory when nothing waits ahead of
                // it; what the socket does not take now waits in to_host.
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
                    self.reset_conn(key);
                    return;
                }
                if (c.fwd_cnt - c.last_fwd_cnt_sent).0 >= CONN_BUF / 4 {
                    self.queue_control(key, OP_CREDIT_UPDATE, 0);
                }
                self.update_interest(key);
            }
            OP_CREDIT_UPDATE => self.update_interest(key),
            OP_CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.queue_control(key, OP_CREDIT_UPDATE, 0);
                }
            }
            OP_SHUTDOWN => {
                let flags = h.flags;
                let Some(c) = self.conns.get_mut(&key) else {
                    return;
                };
                if flags & SHUTDOWN_SEND != 0 {
                    c.guest_done_sending = true;
                    let _ = c.flush_to_host();
                }
                let both = flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV;
                if (both && c.to_host.is_empty()) || c.finished() {
                    self.reset_conn(key);
                }
            }
            OP_RST => self.remove_conn(key),
            _ => self.bad_packet(&h, "unknown operation"),
        }
    }

    fn guest_connect(&mut self, key: Key, h: &Header) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNS {
            self.reset_conn(key);
            return;
        }
        let path = PathBuf::from(format!("{}_{}", self.uds.display(), key.0));
        let stream = match UnixStream::connect(&path) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                self.queue_control(key, OP_RST, 0);
                return;
            }
        };
        let Some(token) = self.register(&stream, EventSet::IN) else {
            self.queue_control(key, OP_RST, 0);
            return;
        };
        let mut c = Conn::new(stream, token, State::Established);
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        self.by_fd.insert(c.stream.as_raw_fd(), key);
        self.conns.insert(key, c);
        self.queue_control(key, OP_RESPONSE, 0);
    }

    // --- host -> guest -------------------------------------------------------

    /// A connection with host data to deliver and guest credit for it.
    fn next_sender(&self) -> Option<Key> {
        self.conns
            .iter()
            .find(|(_, c)| {
                c.state == State::Established && c.readable && !c.host_eof && c.peer_credit() > 0
            })
            .map(|(k, _)| *k)
    }

    fn process_rx(&mut self) {
        let mem = self.mem.clone();
        loop {
            if !self.control.is_empty() {
                let Some(chain) = self.rxq.pop_descriptor_chain(&mem) else {
                    // Wait for the guest to add rx buffers.
                    let _ = self.rxq.enable_notification(&mem);
                    break;
                };
                let head = chain.head_index();
                let written = match chain.writer(&mem) {
                    Ok(mut w) if w.available_bytes() >= HDR_LEN => {
                        let h = self.control.pop_front().expect("checked non-empty");
                        log::trace!("vsock: to guest {h:?}");
                        w.write_obj(h).map(|_| HDR_LEN as u32).unwrap_or(0)
                    }
                    _ => 0,
                };
                let _ = self.rxq.add_used(&mem, head, written);
                self.rx_used = true;
                continue;
            }
            let Some(key) = self.next_sender() else {
                break;
            };
            if !self.send_data(key, &mem) {
                let _ = self.rxq.enable_notification(&mem);
                break;
            }
        }
    }

    /// Moves host data of `key` into a batch of rx buffers with one readv
    /// straight into guest memory: up to [`RX_BATCH`] buffers, as much as
    /// the guest's credit allows, each with its header. Returns false when
    /// the guest has no rx buffer.
    fn send_data(&mut self, key: Key, mem: &GuestMemoryMmap) -> bool {
        let Some(credit) = self.conns.get(&key).map(|c| c.peer_credit() as usize) else {
            return true;
        };
        // (chain, payload room), in queue order.
        let mut batch: Vec<(Chain<'_>, usize)> = Vec::new();
        let mut room = 0;
        while batch.len() < RX_BATCH && room < credit {
            let Some(chain) = self.rxq.pop_descriptor_chain(mem) else {
                break;
            };
            let avail = chain.clone().writer(mem).map_or(0, |w| w.available_bytes());
            if avail <= HDR_LEN {
                if !batch.is_empty() {
                    // Not ours to drop yet: the next round answers it.
                    self.rxq.go_to_previous_position();
                    break;
                }
                // No room for a header and data: returned empty.
                let _ = self.rxq.add_used(mem, chain.head_index(), 0);
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
                self.update_interest(key);
                0
            }
            _ => {
                // The host will send no more. The guest still may (a
                // half-close, as with TCP), unless it is done too.
                c.host_eof = true;
                let h = if c.finished() {
                    let h = self.header(key, OP_RST, 0, 0);
                    self.remove_conn(key);
                    h
                } else {
                    self.update_interest(key);
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
            let _ = self.rxq.add_used(mem, head, written);
            self.rx_used = true;
        }
        // The buffers that got nothing (the last ones popped) go back.
        for _ in 0..unused {
            self.rxq.go_to_previous_position();
        }
        true
    }
}

/// A tx packet's payload, still in guest memory.
struct Payload<'a> {
    mem: &'a GuestMemoryMmap,
    segs: Vec<(GuestAddress, usize)>,
    len: usize,
}

impl Payload<'_> {
    /// Writes what the (non-blocking) socket `fd` takes now with one writev
    /// from guest memory; 0 when it takes nothing.
    fn write_some(&self, fd: RawFd) -> std::io::Result<usize> {
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
    fn copy_from(&self, mut from: usize, out: &mut VecDeque<u8>) -> std::io::Result<()> {
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
    use crate::devices::virtio::{TestRng, fuzz_iters};
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use vm_memory::{Bytes, GuestAddress};

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

    #[test]
    fn ok_line_is_not_counted_as_forwarded_guest_data() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut c = Conn::new(a, 0, State::Established);
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
        let mut c = Conn::new(a, 0, State::Established);
        c.peer_buf_alloc = 1000;
        c.tx_cnt = Wrapping(u32::MAX - 10);
        c.peer_fwd_cnt = Wrapping(u32::MAX - 100);
        assert_eq!(c.peer_credit(), 910);
        c.tx_cnt += Wrapping(50); // wraps past zero
        assert_eq!(c.peer_credit(), 860);
        c.peer_fwd_cnt = c.tx_cnt;
        assert_eq!(c.peer_credit(), 1000);
    }

    /// A split queue in guest memory that the test drives by hand, laid out
    /// here (virtio-queue's mock places its used ring inside the available
    /// ring for queues this large): descriptors at `at`, the available ring
    /// 4 KiB on, the used ring 8 KiB on.
    struct TestQueue<'a> {
        mem: &'a GuestMemoryMmap,
        at: u64,
        avail: u16,
        used_seen: u16,
    }

    impl<'a> TestQueue<'a> {
        fn new(mem: &'a GuestMemoryMmap, at: u64) -> TestQueue<'a> {
            mem.write_slice(&[0u8; 0x3000], GuestAddress(at)).unwrap();
            TestQueue {
                mem,
                at,
                avail: 0,
                used_seen: 0,
            }
        }
        fn avail_addr(&self) -> u64 {
            self.at + 0x1000
        }
        fn used_addr(&self) -> u64 {
            self.at + 0x2000
        }
        fn queue(&self) -> Queue {
            let mut q = Queue::new(QUEUE_SIZE).unwrap();
            q.set_size(QUEUE_SIZE);
            let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
            let (lo, hi) = split(self.at);
            q.set_desc_table_address(lo, hi);
            let (lo, hi) = split(self.avail_addr());
            q.set_avail_ring_address(lo, hi);
            let (lo, hi) = split(self.used_addr());
            q.set_used_ring_address(lo, hi);
            q.set_ready(true);
            q
        }
        fn store(&self, i: u16, d: SplitDescriptor) {
            self.mem
                .write_obj(
                    RawDescriptor::from(d),
                    GuestAddress(self.at + u64::from(i) * 16),
                )
                .unwrap();
        }
        fn publish(&mut self, head: u16) {
            let ring = self.avail_addr() + 4 + u64::from(self.avail % QUEUE_SIZE) * 2;
            self.mem.write_obj(head, GuestAddress(ring)).unwrap();
            self.avail = self.avail.wrapping_add(1);
            self.mem
                .write_obj(self.avail, GuestAddress(self.avail_addr() + 2))
                .unwrap();
        }
        fn used_idx(&self) -> u16 {
            self.mem
                .read_obj(GuestAddress(self.used_addr() + 2))
                .unwrap()
        }
        /// (descriptor id, length) of the used entries not seen yet.
        fn take_used(&mut self) -> Vec<(u16, u32)> {
            let mut out = Vec::new();
            let end = self.used_idx();
            while self.used_seen != end {
                let at = self.used_addr() + 4 + u64::from(self.used_seen % QUEUE_SIZE) * 8;
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                out.push((id as u16, len));
                self.used_seen = self.used_seen.wrapping_add(1);
            }
            out
        }
    }

    const RX_BUF: u32 = 4096;

    /// Random packets from the guest (any op, lengths that lie, chains that
    /// point outside memory, unknown CIDs, ports and types) and random bytes
    /// from host clients instead of `CONNECT <port>`: the device keeps
    /// serving both queues, and every packet it gives the guest fits the
    /// buffer it was given. `HULL_FUZZ_ITERS` sets the number of packets.
    #[test]
    fn random_packets_and_host_lines_are_survived() {
        let iters = fuzz_iters();
        let dir = std::env::temp_dir().join(format!("hull-vsock-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        // Guest connections to host port 7 land here; take and drain them.
        let host7 = UnixListener::bind(format!("{}_7", uds.display())).unwrap();
        std::thread::spawn(move || {
            for c in host7.incoming().flatten() {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &c, &mut std::io::sink());
                });
            }
        });
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let mut rx = TestQueue::new(&mem, 0);
        let mut tx = TestQueue::new(&mem, 0x10000);
        let ev = TestQueue::new(&mem, 0x20000);
        let event_loop = EventLoop::start().unwrap();
        let mut dev = Vsock::new(3, &uds, event_loop.clone()).unwrap();
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let rx_kick = evts[0].try_clone().unwrap();
        let tx_kick = evts[1].try_clone().unwrap();
        let queues = vec![rx.queue(), tx.queue(), ev.queue()];
        dev.activate(
            Activation {
                mem: mem.clone(),
                queues,
                queue_evts: evts,
                interrupt: Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
                event_loop: event_loop.clone(),
            },
            F_VERSION_1,
        )
        .unwrap();
        // Rx buffers: descriptor i is 4 KiB at 0x100000 + i * 4 KiB.
        for i in 0..QUEUE_SIZE {
            let d = SplitDescriptor::new(0x10_0000 + u64::from(i) * 4096, RX_BUF, 2, 0);
            rx.store(i, d);
            rx.publish(i);
        }
        rx_kick.write(1).unwrap();

        // Host clients writing random lines, some of them valid.
        let uds2 = uds.clone();
        let clients = std::thread::spawn(move || {
            let mut rng = TestRng(0xfeed_beef);
            for _ in 0..200 {
                let Ok(mut c) = UnixStream::connect(&uds2) else {
                    continue;
                };
                let line: Vec<u8> = match rng.next() % 4 {
                    0 => format!("CONNECT {}\n", rng.next() % 2000).into_bytes(),
                    1 => b"CONNECT 99999999999999999999\n".to_vec(),
                    2 => (0..rng.next() % 300).map(|_| rng.next() as u8).collect(),
                    _ => vec![b'A'; 5000],
                };
                let _ = c.write_all(&line);
            }
        });

        let mut rng = TestRng(0x0123_4567_89ab_cdef);
        let batch = u64::from(QUEUE_SIZE / 4);
        let mut sent = 0u64;
        while sent < iters {
            let n = batch.min(iters - sent);
            for k in 0..n {
                let slot = k as u16; // descriptors 2*slot and 2*slot + 1
                let at = 0x20_0000 + u64::from(slot) * 0x1_2000;
                let r = rng.next() as u32;
                let len = rng.pick(&[0u32, 10, 4096, 65536, 65537, r]);
                let h = Header {
                    src_cid: rng.pick(&[3, 3, 3, 2, u64::MAX]),
                    dst_cid: rng.pick(&[2, 2, 3, 0]),
                    src_port: rng.pick(&[1000, 1001, 1002, u32::MAX]),
                    dst_port: rng.pick(&[7, 7, 9, 1234]),
                    len,
                    kind: rng.pick(&[TYPE_STREAM, TYPE_STREAM, 2]),
                    op: (rng.next() % 9) as u16,
                    flags: (rng.next() % 4) as u32,
                    buf_alloc: rng.pick(&[0, 4096, 262_144, u32::MAX]),
                    fwd_cnt: rng.next() as u32,
                };
                mem.write_obj(h, GuestAddress(at)).unwrap();
                let payload_len = rng.pick(&[0u32, len.min(0x1_0000), 5]);
                let hdr_addr = rng.pick(&[at, at, at, 0x7f_fff0, 0x100_0000]);
                let hdr_len = rng.pick(&[HDR_LEN as u32, HDR_LEN as u32, 10, 0]);
                let two = payload_len > 0;
                let d0 =
                    SplitDescriptor::new(hdr_addr, hdr_len, if two { 1 } else { 0 }, 2 * slot + 1);
                tx.store(2 * slot, d0);
                if two {
                    let d1 = SplitDescriptor::new(at + 64, payload_len, 0, 0);
                    tx.store(2 * slot + 1, d1);
                }
                tx.publish(2 * slot);
            }
            tx_kick.write(1).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while tx.used_idx() != tx.avail {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the device stopped serving tx after {sent} packets (used {} of {}; rx used {} of {})",
                    tx.used_idx(),
                    tx.avail,
                    rx.used_idx(),
                    rx.avail
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            tx.take_used();
            // Give back the rx buffers the device filled, checking them.
            for (id, len) in rx.take_used() {
                assert!(id < QUEUE_SIZE, "used id {id}");
                assert!(
                    len <= RX_BUF,
                    "the device wrote {len} bytes into a {RX_BUF}-byte buffer"
                );
                rx.publish(id);
            }
            rx_kick.write(1).unwrap();
            sent += n;
        }
        clients.join().unwrap();
        drop(dev);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
