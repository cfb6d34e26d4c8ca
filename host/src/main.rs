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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version (stdout, 0); no subcommand at all: the help (stderr, 2).
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => return fail(&usage_error(&e)),
    };
    match run(cli) {
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

/// A command-line error as one line: clap's message up to its first blank line (the usage
/// and tip paragraphs dropped), lines joined, and where to look.
fn usage_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    format!("{} (see --help)", message.trim_start_matches("error: "))
}

/// One `error:` line (best effort: stderr may be full or closed) and exit code 2. A newline
/// inside the message (a path may hold one) is written as `\n`, so it stays one line.
fn fail(message: &str) -> ExitCode {
    let message = message.replace('\n', "\\n");
    let _ = writeln!(std::io::stderr().lock(), "error: {message}");
    ExitCode::from(EXIT_ERROR)
}
