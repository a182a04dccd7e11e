//! The host end of one agent session: send the process, relay stdin,
//! stdout and stderr, forward signals and terminal size, and return how the
//! process ended.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sys;
use hull_agent::protocol::{
    self, ErrorMsg, Exit, Frame, Hello, Kind, Resize, Signal, Start, read_frame, write_frame,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent protocol")]
    Protocol(#[from] protocol::ProtocolError),
    #[error("the connection to the agent ended before the process did")]
    Lost,
    #[error("the agent sent no {what} within {secs} s")]
    Silent { what: &'static str, secs: u64 },
    #[error("keeping the step's changes the agent sent")]
    Layer(#[source] std::io::Error),
    #[error("the agent refused: {0}")]
    Refused(String),
}

/// How long the agent has, once connected, to say hello, and then to say
/// the process started (or could not): a guest that never answers ends the
/// run with an error instead of a hang.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads one frame; a read timeout is the agent being `Silent` about `what`.
fn read_or_silent(
    r: &mut UnixStream,
    what: &'static str,
    timeout: Option<Duration>,
) -> Result<Option<Frame>, ClientError> {
    read_frame(r).map_err(|e| match (&e, timeout) {
        (protocol::ProtocolError::Io(io), Some(t))
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            ClientError::Silent {
                what,
                secs: t.as_secs(),
            }
        }
        _ => e.into(),
    })
}

/// A reading handle on `stream` with `timeout`, and the agent's Hello read
/// through it: every connection to an agent opens this way.
fn greeted(
    stream: &UnixStream,
    timeout: Option<Duration>,
) -> Result<(UnixStream, Hello), ClientError> {
    let mut reader = stream.try_clone().map_err(protocol::ProtocolError::Io)?;
    reader
        .set_read_timeout(timeout)
        .map_err(protocol::ProtocolError::Io)?;
    match read_or_silent(&mut reader, "hello", timeout)? {
        Some(f) => Ok((reader, f.expect(Kind::Hello)?)),
        None => Err(ClientError::Lost),
    }
}

/// When things happened during the session (for `hull bench`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Times {
    pub hello: Option<Instant>,
    pub started: Option<Instant>,
    pub first_output: Option<Instant>,
    pub exit: Option<Instant>,
}

/// How the session ended.
#[derive(Debug)]
pub enum Outcome {
    Exited(Exit),
    /// The process could not start; the message was printed.
    Failed(ErrorMsg),
}

impl Outcome {
    /// Why the process did not run, when it did not.
    pub fn failure(&self) -> Option<&str> {
        match self {
            Outcome::Exited(_) => None,
            Outcome::Failed(e) => Some(&e.message),
        }
    }

    pub fn status(&self) -> i32 {
        match self {
            Outcome::Exited(e) => e.status(),
            Outcome::Failed(e) => e.exit_code,
        }
    }
}

/// Signals forwarded to the container (blocked in every thread and taken
/// with sigwait by the forwarding thread).
const FORWARDED: [i32; 7] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
];

/// Blocks the forwarded signals in the calling thread (and in threads it
/// starts afterwards). Call first thing: children get their mask reset.
pub fn block_signals() {
    sys::SignalSet::of(&FORWARDED).block();
}

/// The terminal size of our stdout, if it is a terminal.
pub fn terminal_size() -> Option<(u16, u16)> {
    sys::terminal_size(1)
}

type Shared = Arc<Mutex<UnixStream>>;

fn send(w: &Shared, f: &Frame) -> bool {
    let mut s = w.lock().unwrap_or_else(|p| p.into_inner());
    write_frame(&mut *s, f).is_ok()
}

/// Where a session's output goes: each stream to every writer it lists
/// (the terminal, the container's log files). A writer that fails (a closed
/// pipe, `| head`) is skipped; the relay goes on.
#[derive(Default)]
pub struct Sinks {
    pub stdout: Vec<Box<dyn Write>>,
    pub stderr: Vec<Box<dyn Write>>,
    /// Called once, when the agent says the process started.
    pub on_started: Option<Box<dyn FnOnce()>>,
    /// Where the tar of a build step's changes goes (`Start.export_upper`);
    /// without it, Layer frames are dropped. A write that fails (the
    /// sink's bound) ends the session with [`ClientError::Layer`].
    pub layer: Option<Box<dyn Write>>,
}

impl Sinks {
    /// Our stdout and stderr.
    pub fn terminal() -> Sinks {
        Sinks {
            stdout: vec![Box::new(std::io::stdout())],
            stderr: vec![Box::new(std::io::stderr())],
            on_started: None,
            layer: None,
        }
    }

    /// Also appends each stream to a file.
    pub fn with_logs(mut self, stdout: &std::path::Path, stderr: &std::path::Path) -> Sinks {
        let open = |p: &std::path::Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
        };
        if let Ok(f) = open(stdout) {
            self.stdout.push(Box::new(f));
        }
        if let Ok(f) = open(stderr) {
            self.stderr.push(Box::new(f));
        }
        self
    }

    pub fn write_stderr(&mut self, data: &[u8]) {
        self.write(Kind::Stderr, data);
    }

    fn write(&mut self, kind: Kind, data: &[u8]) {
        let list = if kind == Kind::Stdout {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        for w in list {
            let _ = w.write_all(data).and_then(|_| w.flush());
        }
    }
}

/// Runs `start` over `stream`. With `stdin`, our stdin is relayed.
pub fn run_session(
    stream: UnixStream,
    start: &Start,
    stdin: bool,
    sinks: &mut Sinks,
    times: &mut Times,
) -> Result<Outcome, ClientError> {
    let relay = Relay {
        stdin,
        signals: true,
        answer_timeout: answer_timeout(),
    };
    session(stream, start, relay, sinks, times)
}

/// Asks the agent over `stream` to send `signal` to every process of the
/// container (a connection whose first frame is a Signal).
pub fn signal_all(stream: UnixStream, signal: i32) -> Result<(), ClientError> {
    let timeout = Some(answer_timeout());
    let (mut reader, _) = greeted(&stream, timeout)?;
    let mut writer = stream;
    write_frame(&mut writer, &Frame::json(Kind::Signal, &Signal { signal }))
        .map_err(ClientError::Protocol)?;
    match read_or_silent(&mut reader, "answer to the signal", timeout)? {
        Some(f) if f.kind == Kind::Error => {
            let e: ErrorMsg = f.parse()?;
            Err(ClientError::Refused(e.message))
        }
        Some(f) => f.expect::<Exit>(Kind::Exit).map(|_| ()).map_err(Into::into),
        None => Err(ClientError::Lost),
    }
}

/// How long a relayed DNS query waits for the resolver's answer (a DNS
/// client retries on its own).
const DNS_ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves a DNS relay over `stream` until the agent closes it: the agent
/// takes the guest's queries to `listen` (port 53), and each is sent from
/// here to `resolver` (port 53), one at a time, its answer sent back. Only
/// `resolver` is ever asked, whatever the guest sends.
pub fn dns_relay(
    stream: UnixStream,
    listen: std::net::Ipv4Addr,
    resolver: std::net::Ipv4Addr,
) -> Result<(), ClientError> {
    let timeout = Some(answer_timeout());
    let (mut reader, _) = greeted(&stream, timeout)?;
    let mut writer = stream;
    let relay = protocol::DnsRelay { address: listen };
    write_frame(&mut writer, &Frame::json(Kind::DnsRelay, &relay))?;
    // Queries come whenever the container asks.
    reader
        .set_read_timeout(None)
        .map_err(protocol::ProtocolError::Io)?;
    let mut buf = vec![0u8; protocol::MAX_DNS];
    while let Some(f) = read_frame(&mut reader)? {
        if f.kind == Kind::Error {
            let e: ErrorMsg = f.parse()?;
            return Err(ClientError::Refused(e.message));
        }
        let Some(query) = protocol::DnsPacket::parse(&f) else {
            continue;
        };
        let answer = (|| -> std::io::Result<Vec<u8>> {
            let sock = std::net::UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))?;
            sock.connect((resolver, 53))?;
            sock.set_read_timeout(Some(DNS_ANSWER_TIMEOUT))?;
            sock.send(&query.message)?;
            let n = sock.recv(&mut buf)?;
            Ok(buf[..n].to_vec())
        })();
        // No answer: the guest's client times out and retries.
        if let Some(message) = answer.ok().filter(|m| !m.is_empty()) {
            let back = protocol::DnsPacket {
                client: query.client,
                message,
            };
            write_frame(&mut writer, &back.frame())?;
        }
    }
    Ok(())
}

/// [`ANSWER_TIMEOUT`], or `HULL_AGENT_ANSWER_SECS` seconds (README: a test
/// aid, so hostile-guest tests need not wait a minute each).
fn answer_timeout() -> Duration {
    std::env::var(ANSWER_TIMEOUT_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| s > 0)
        .map_or(ANSWER_TIMEOUT, Duration::from_secs)
}

/// See [`answer_timeout`].
pub const ANSWER_TIMEOUT_ENV: &str = "HULL_AGENT_ANSWER_SECS";

/// What a session relays besides the agent's frames, and how long the
/// agent has to answer.
struct Relay {
    stdin: bool,
    signals: bool,
    answer_timeout: Duration,
}

fn session(
    stream: UnixStream,
    start: &Start,
    relay: Relay,
    sinks: &mut Sinks,
    times: &mut Times,
) -> Result<Outcome, ClientError> {
    let timeout = Some(relay.answer_timeout);
    // The Start goes before the agent's Hello is read: the agent reads it
    // right after sending its Hello, so no round trip waits on the other.
    // An agent of another version is refused below all the same (and the
    // connection closed) before anything else is sent.
    let mut stream = stream;
    if write_frame(&mut stream, &Frame::json(Kind::Start, start)).is_err() {
        return Err(ClientError::Lost);
    }
    let (mut reader, hello) = greeted(&stream, timeout)?;
    let writer: Shared = Arc::new(Mutex::new(stream));
    if hello.version != protocol::VERSION {
        return Err(protocol::ProtocolError::Version(hello.version).into());
    }
    times.hello = Some(Instant::now());
    crate::trace::mark("hello");
    if relay.stdin {
        let w = writer.clone();
        std::thread::spawn(move || relay_stdin(&w));
    }
    if relay.signals {
        let w = writer.clone();
        std::thread::spawn(move || forward_signals(&w));
    }
    // Until the process started, the agent has `timeout` to say so; then
    // the process may run (and be quiet) as long as it likes.
    let mut waiting = timeout;
    loop {
        let Some(f) = read_or_silent(&mut reader, "word of the process starting", waiting)? else {
            return Err(ClientError::Lost);
        };
        match f.kind {
            Kind::Started => {
                if waiting.take().is_some() {
                    reader
                        .set_read_timeout(None)
                        .map_err(protocol::ProtocolError::Io)?;
                }
                times.started = Some(Instant::now());
                crate::trace::mark("started");
                if let Some(f) = sinks.on_started.take() {
                    f();
                }
            }
            Kind::Stdout | Kind::Stderr => {
                times.first_output.get_or_insert_with(Instant::now);
                crate::trace::mark("output");
                sinks.write(f.kind, &f.payload);
            }
            Kind::Layer => {
                if let Some(w) = sinks.layer.as_mut() {
                    w.write_all(&f.payload).map_err(ClientError::Layer)?;
                }
            }
            Kind::Exit => {
                crate::trace::mark("exit");
                times.exit = Some(Instant::now());
                last_frame_read(&reader);
                return Ok(Outcome::Exited(f.parse()?));
            }
            Kind::Error => {
                times.exit = Some(Instant::now());
                last_frame_read(&reader);
                let e: ErrorMsg = f.parse()?;
                sinks.write(Kind::Stderr, format!("hull: {}\n", e.message).as_bytes());
                return Ok(Outcome::Failed(e));
            }
            _ => {}
        }
    }
}

/// Closing tells the agent its final frame arrived, so it may end the
/// sandbox (other threads still hold the stream: shut it down).
fn last_frame_read(stream: &UnixStream) {
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

fn relay_stdin(w: &Shared) {
    let mut buf = vec![0u8; protocol::MAX_DATA];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                send(w, &Frame::new(Kind::StdinClose, Vec::new()));
                return;
            }
            Ok(n) => {
                if !send(w, &Frame::new(Kind::Stdin, buf[..n].to_vec())) {
                    return;
                }
            }
        }
    }
}

fn forward_signals(w: &Shared) {
    let set = sys::SignalSet::of(&FORWARDED);
    loop {
        let sig = set.wait();
        let ok = if sig == libc::SIGWINCH {
            match terminal_size() {
                Some((rows, cols)) => send(w, &Frame::json(Kind::Resize, &Resize { rows, cols })),
                None => true,
            }
        } else {
            send(w, &Frame::json(Kind::Signal, &Signal { signal: sig }))
        };
        if !ok {
            return;
        }
    }
}

/// Puts our terminal in raw mode while the guard lives (for `-t`).
pub struct RawMode(Option<sys::Termios>);

impl RawMode {
    pub fn enable() -> RawMode {
        RawMode(sys::make_raw(0))
    }

    pub fn restore(&mut self) {
        if let Some(t) = self.0.take() {
            sys::restore_terminal(0, &t);
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.restore();
    }
}

/// The host side of one session against `data` as everything a hostile
/// agent sends (a stream of bytes, then end of file), with no stdin and no
/// signal relay: what the cargo-fuzz target `agent_session` (fuzz/) and the
/// generated-input test below run. It must return (an outcome or an error),
/// never panic, never hold more than a frame in memory.
/// A sink that takes `.0` bytes, then fails (the fuzz session's layer).
#[cfg(any(test, fuzzing))]
struct Capped(usize);

#[cfg(any(test, fuzzing))]
impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() > self.0 {
            return Err(std::io::Error::other("full"));
        }
        self.0 -= buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(any(test, fuzzing))]
pub fn fuzz_session(data: &[u8]) -> Result<Outcome, ClientError> {
    let (host, mut guest) = UnixStream::pair().expect("a socket pair");
    let data = data.to_vec();
    let peer = std::thread::spawn(move || {
        // The host may stop reading (an error) and close: EPIPE ends this.
        let _ = guest.write_all(&data);
        let _ = guest.shutdown(std::net::Shutdown::Write);
        // Keep the host's writes (Start) from failing before it read all.
        let _ = std::io::copy(&mut guest, &mut std::io::sink());
    });
    let mut sinks = Sinks {
        stdout: vec![Box::new(std::io::sink())],
        stderr: vec![Box::new(std::io::sink())],
        on_started: None,
        // Bounded as a build's is, far smaller: the fuzzer's inputs are.
        layer: Some(Box::new(Capped(1 << 20))),
    };
    let relay = Relay {
        stdin: false,
        signals: false,
        answer_timeout: Duration::from_secs(2),
    };
    let out = session(
        host,
        &Start::default(),
        relay,
        &mut sinks,
        &mut Times::default(),
    );
    let _ = peer.join();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_agent::protocol::Started;

    fn frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
        let mut v = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
        v.push(kind as u8);
        v.extend_from_slice(payload);
        v
    }

    fn hello() -> Vec<u8> {
        frame(
            Kind::Hello,
            &serde_json::to_vec(&Hello {
                version: protocol::VERSION,
                marks: Default::default(),
            })
            .unwrap(),
        )
    }

    #[test]
    fn a_well_behaved_agent_gives_its_exit_status() {
        let mut s = hello();
        let started = serde_json::to_vec(&Started { pid: 1, at_ms: 0.0 }).unwrap();
        s.extend(frame(Kind::Started, &started));
        s.extend(frame(Kind::Stdout, b"hi\n"));
        s.extend(frame(
            Kind::Exit,
            br#"{"code":3,"signal":null,"reason":null,"at_ms":1.0}"#,
        ));
        let out = fuzz_session(&s).unwrap();
        assert_eq!(out.status(), 3);
    }

    #[test]
    fn hostile_agents_end_with_one_error_each() {
        let msg = |data: &[u8]| match fuzz_session(data) {
            Err(e) => crate::error::chain(&e),
            Ok(o) => panic!("accepted: {}", o.status()),
        };
        // A 4 GiB length claim: refused before any allocation.
        let mut huge = vec![0xff, 0xff, 0xff, 0xff];
        huge.extend([1u8; 64]);
        assert!(
            msg(&huge).contains("frame of 4294967295 bytes is larger than the 1048576-byte limit"),
            "{}",
            msg(&huge)
        );
        // Garbage: an unknown kind.
        assert!(
            msg(&frame_raw(0xee)).contains("unknown"),
            "{}",
            msg(&frame_raw(0xee))
        );
        // Hello, then nothing: the timeout, named.
        let t = Instant::now();
        let (host, _guest) = UnixStream::pair().unwrap();
        let relay = Relay {
            stdin: false,
            signals: false,
            answer_timeout: Duration::from_secs(1),
        };
        let e = session(
            host,
            &Start::default(),
            relay,
            &mut Sinks::default(),
            &mut Times::default(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "the agent sent no hello within 1 s");
        assert!(t.elapsed() < Duration::from_secs(5));
        // Nothing at all, then end of file.
        assert!(matches!(fuzz_session(b""), Err(ClientError::Lost)));
    }

    fn frame_raw(kind: u8) -> Vec<u8> {
        vec![0, 0, 0, 3, kind, 1, 2]
    }

    /// The fuzz target's input, generated: valid frames, mutated and cut
    /// (HULL_FUZZ_ITERS sets the count; 2000 by default).
    #[test]
    fn fuzz_session_survives_generated_input() {
        let iters: u64 = std::env::var("HULL_FUZZ_ITERS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_000)
            / 10;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let kinds = [1u8, 5, 6, 9, 10, 11, 12, 0, 200];
        for _ in 0..iters {
            let mut s = if next() % 4 == 0 { Vec::new() } else { hello() };
            for _ in 0..next() % 6 {
                let kind = kinds[(next() % kinds.len() as u64) as usize];
                let len = (next() % 40) as usize;
                let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let mut f = vec![0, 0, 0, 0, kind];
                f[..4].copy_from_slice(&((len + 1) as u32).to_be_bytes());
                f.extend(payload);
                s.extend(f);
            }
            // Flip a byte, cut the tail.
            if !s.is_empty() && next() % 2 == 0 {
                let i = (next() % s.len() as u64) as usize;
                s[i] ^= next() as u8;
            }
            let cut = (next() % (s.len() as u64 + 1)) as usize;
            s.truncate(cut.max(s.len() / 2));
            let _ = fuzz_session(&s);
        }
    }
}
