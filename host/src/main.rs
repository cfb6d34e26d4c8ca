//! The `host` binary: parse the command line, run it, print any error as one line.
use std::process::ExitCode;

use clap::Parser;
use tweedie_host::cli::{run, Cli, EXIT_ERROR};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
