//! The host end of one agent session: send the process, relay stdin,
//! stdout and stderr, forward signals and terminal size, and return how the
//! process ended.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Instant;

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
}

impl Sinks {
    /// Our stdout and stderr.
    pub fn terminal() -> Sinks {
        Sinks {
            stdout: vec![Box::new(std::io::stdout())],
            stderr: vec![Box::new(std::io::stderr())],
            on_started: None,
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
    let mut reader = stream.try_clone().map_err(protocol::ProtocolError::Io)?;
    let writer: Shared = Arc::new(Mutex::new(stream));
    let hello: Hello = match read_frame(&mut reader)? {
        Some(f) => f.expect(Kind::Hello)?,
        None => return Err(ClientError::Lost),
    };
    if hello.version != protocol::VERSION {
        return Err(protocol::ProtocolError::Version(hello.version).into());
    }
    times.hello = Some(Instant::now());
    if !send(&writer, &Frame::json(Kind::Start, start)) {
        return Err(ClientError::Lost);
    }
    if stdin {
        let w = writer.clone();
        std::thread::spawn(move || relay_stdin(&w));
    }
    {
        let w = writer.clone();
        std::thread::spawn(move || forward_signals(&w));
    }
    loop {
        let Some(f) = read_frame(&mut reader)? else {
            return Err(ClientError::Lost);
        };
        match f.kind {
            Kind::Started => {
                times.started = Some(Instant::now());
                if let Some(f) = sinks.on_started.take() {
                    f();
                }
            }
            Kind::Stdout | Kind::Stderr => {
                times.first_output.get_or_insert_with(Instant::now);
                sinks.write(f.kind, &f.payload);
            }
            Kind::Exit => {
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
