//! Attaching to a library `Container` (not the CLI) with its output kept
//! for the test to read.
#![allow(dead_code)] // each test target uses its own subset

use std::io::Write;
use std::sync::{Arc, Mutex};

use hull::client::{Outcome, Sinks, Times};
use hull::container::Session;
use hull::{Container, ContainerError};
use hull_agent::protocol::Start;

/// A writer the test reads back.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What a session gave: how it ended and what it wrote.
pub struct Attached {
    pub outcome: Outcome,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `start` as the started container's main process, without stdin.
pub fn attach(c: &mut Container, start: &Start) -> Result<Attached, ContainerError> {
    let (out, err) = (Captured::default(), Captured::default());
    let mut times = Times::default();
    let session = Session {
        sinks: Sinks {
            stdout: vec![Box::new(out.clone())],
            stderr: vec![Box::new(err.clone())],
            on_started: None,
            layer: None,
        },
        stdin: false,
        raw_terminal: false,
        times: &mut times,
        warn: &|w| eprintln!("{w}"),
    };
    let outcome = c.attach(start, session)?;
    Ok(Attached {
        outcome,
        stdout: out.text(),
        stderr: err.text(),
    })
}
