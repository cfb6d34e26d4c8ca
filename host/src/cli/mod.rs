//! The `host` command line (clap derive): one module per subcommand.
//!
//! Exit codes: 0 success, 1 a check failed (parity outside tolerance), 2 an error (bad
//! arguments, unreadable or mismatched files, unimplemented step).

pub mod bench;
pub mod common;
pub mod parity;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  host parity --weights W.safetensors --config C.json --io IO.safetensors
  host bench --config adm-ffhq256 --size 64

Exit code: 0 success, 1 a check failed, 2 error. `host help <COMMAND>` explains each command.";

/// tweedie: score-based diffusion with random walks driven by Tweedie's formula.
#[derive(Debug, Parser)]
#[command(name = "host", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a network against reference outputs of the original PyTorch code.
    Parity(parity::ParityArgs),
    /// Time the network forward pass on random weights.
    Bench(bench::BenchArgs),
}

/// Exit code for a check that ran and failed.
pub const EXIT_CHECK_FAILED: u8 = 1;
/// Exit code for an error.
pub const EXIT_ERROR: u8 = 2;

/// Runs a parsed command line; `Ok` carries the exit code.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Parity(args) => parity::run(&args),
        Command::Bench(args) => bench::run(&args),
    }
}
