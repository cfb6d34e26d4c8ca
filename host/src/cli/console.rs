//! What the subcommands print: results on stdout through [`outln!`], notes and warnings on
//! stderr through [`errln!`].
//!
//! A reader that closes the pipe early (`host schedule | head -1`) ends the run quietly: the
//! write returns [`StdoutClosed`], which `main` turns into exit code 0 without a message. Any
//! other failure to write stdout (a full disk behind `> file`) is an `error:` and exit 2.
//! Writing stderr is best effort: a full or closed stderr cannot report anything, and must not
//! turn a finished run into a crash.

use std::fmt;
use std::io::{self, Write};

/// The reader of stdout went away (EPIPE): stop quietly.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes `args` and a newline to stdout.
pub fn write_line(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::anyhow!("writing to stdout: {e}")),
    }
}

/// Writes `args` and a newline to stderr, ignoring failures.
pub fn note_line(args: fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr().lock(), "{args}");
}

/// `println!` for results: evaluates to `anyhow::Result<()>` (use `?`).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::console::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::console::write_line(format_args!($($arg)*))
    };
}

/// `eprintln!` for notes and warnings that never fails.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::console::note_line(format_args!($($arg)*))
    };
}
