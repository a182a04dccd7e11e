//! `hull logs [-f] ID`: what the container wrote, stdout to stdout and stderr
//! to stderr, from the logs its monitor keeps in the state dir.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use clap::Args;

use hull::Container;
use hull::state::{STDERR_LOG, STDOUT_LOG, Status};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new output until the container exits.
    #[arg(short, long)]
    pub follow: bool,
    /// Container name, id or unique id prefix.
    pub container: String,
}

pub fn run(state_dir: &Path, args: LogsArgs) -> anyhow::Result<i32> {
    let c = Container::load(state_dir, &args.container)?;
    let cdir = c.dir();
    let open = |name: &str| File::open(cdir.join(name)).ok();
    let (mut out, mut err) = (open(STDOUT_LOG), open(STDERR_LOG));
    loop {
        copy_new(&mut out, &mut io::stdout())?;
        copy_new(&mut err, &mut io::stderr())?;
        if !args.follow {
            return Ok(0);
        }
        if Container::load(state_dir, c.id())?.state().status == Status::Exited {
            // One last pass: anything written between the copy and the exit.
            copy_new(&mut out, &mut io::stdout())?;
            copy_new(&mut err, &mut io::stderr())?;
            return Ok(0);
        }
        if out.is_none() {
            out = open(STDOUT_LOG);
        }
        if err.is_none() {
            err = open(STDERR_LOG);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Copies whatever was appended to `file` since the last call.
fn copy_new(file: &mut Option<File>, to: &mut dyn Write) -> io::Result<()> {
    let Some(f) = file else { return Ok(()) };
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return to.flush();
        }
        to.write_all(&buf[..n])?;
    }
}
