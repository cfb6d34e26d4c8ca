//! The `host` binary: parse the command line, run it, print any error as one line.
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use tweedie_host::cli::console::StdoutClosed;
use tweedie_host::cli::{run, Cli, EXIT_ERROR};
use tweedie_host::run::interrupt::Interrupted;

fn main() -> ExitCode {
    // Past `ulimit -f`, a write then fails with EFBIG (an error that removes the staged
    // outputs) instead of SIGXFSZ killing the process half-way.
    // SAFETY: setting a signal's disposition to "ignore" before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    // Paths are recorded in run.json and manifests, which are UTF-8: refuse others up front.
    if let Some((i, arg)) = std::env::args_os()
        .enumerate()
        .skip(1)
        .find(|(_, a)| a.to_str().is_none())
    {
        return fail(&format!(
            "argument {i} ({}) is not valid UTF-8; use UTF-8 paths",
            arg.to_string_lossy()
        ));
    }
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<StdoutClosed>().is_some() => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            let stop = e.downcast_ref::<Interrupted>().copied();
            let _ = writeln!(std::io::stderr().lock(), "{e}");
            ExitCode::from(stop.map_or(EXIT_ERROR, Interrupted::exit_code))
        }
        Err(e) => fail(&format!("{e:#}")),
    }
}

/// One `error:` line (best effort: stderr may be full or closed) and exit code 2.
fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "error: {message}");
    ExitCode::from(EXIT_ERROR)
}
