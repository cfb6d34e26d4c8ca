//! The `host` command line (clap derive): one module per subcommand.
//!
//! Exit codes: 0 success, 1 a check failed (parity outside tolerance), 2 an error (bad
//! arguments, unreadable or mismatched files, unimplemented step), 128 + the signal when
//! stopped by SIGINT/SIGTERM or another stop signal (outputs left as they were;
//! `run::interrupt`).

pub mod bench;
pub mod common;
pub mod console;
pub mod convert;
pub mod denoise;
pub mod device;
pub mod evaluate;
pub mod fid;
pub mod measure;
pub mod merge;
pub mod model_args;
pub mod parity;
pub mod plan_args;
pub mod posterior;
pub mod restore;
pub mod sample;
pub mod schedule;
pub mod selftest;
pub mod train;
pub mod train_classifier;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  host parity --weights W.safetensors --config C.json --io IO.safetensors
  host bench --config adm-ffhq256 --size 64
  host sample --weights W.safetensors --preset vp-uncond-sigmoid --n 16 --out run1
  host restore --weights W.safetensors --task sr4 --input gt.png --n 16 --out sr
  host measure --task inpaint --input gt.png --sigma-y 0.2 --out y.safetensors
  host denoise --weights W.safetensors --sigma 0.3 in.png out.png
  host schedule --kind vp --preset vp-uncond-sigmoid --plot s.png
  host train --data data/mnist --preset vp --config models/mnist-vp.json --steps 20000 --out m.safetensors
  host evaluate nearest --samples run1/samples.safetensors --data data/mnist
  host evaluate fid --samples run1 --n 1000
  host convert --from ffhq_10m.pt --to adm_ffhq.safetensors --config adm-ffhq256
  host merge --out samples parts/0 parts/1 parts/2 parts/3

Exit code: 0 success, 1 a check failed, 2 error. `host help <COMMAND>` explains each command.";

/// tweedie: score-based diffusion with random walks driven by Tweedie's formula.
#[derive(Debug, Parser)]
#[command(name = "host", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Memory a run may plan to use (e.g. 16G): each command estimates its need before
    /// allocating and refuses above this (default: 80% of the smaller of the available memory
    /// and the cgroup's memory.max).
    #[arg(long, global = true, value_name = "BYTES", value_parser = crate::run::memory::parse_bytes)]
    pub max_memory: Option<u64>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a network against reference outputs of the original PyTorch code.
    Parity(parity::ParityArgs),
    /// Time the network forward pass on random weights.
    Bench(bench::BenchArgs),
    /// Unconditional sampling (random walks with Tweedie).
    Sample(sample::SampleArgs),
    /// Conditional sampling for an inverse problem, with metrics.
    Restore(restore::RestoreArgs),
    /// Make a measurement y = A x + noise from a ground-truth image.
    Measure(measure::MeasureArgs),
    /// Denoise one image with the network (Tweedie's MMSE estimate).
    Denoise(denoise::DenoiseArgs),
    /// Print (and plot) a sampling plan: sigma, t, gamma, T per step.
    Schedule(schedule::ScheduleArgs),
    /// Train an ADM U-Net (VP or VE preset) with checkpoints and bit-exact resume.
    Train(train::TrainArgs),
    /// Train the MNIST digit classifier that judges samples (`host evaluate fid`).
    TrainClassifier(train_classifier::TrainClassifierArgs),
    /// Convert a PyTorch checkpoint (.pt/.pth) to a safetensors weights file with metadata.
    Convert(convert::ConvertArgs),
    /// Model quality on MNIST: nearest training images of samples, restoration PSNR table, FID.
    Evaluate(evaluate::EvaluateArgs),
    /// Check the GPU path against the CPU path (needs a GPU: --device cuda) and time it.
    Selftest(selftest::SelftestArgs),
    /// Join the shard folders of a `--shard I/N` run into the single run's outputs.
    Merge(merge::MergeArgs),
}

/// Exit code for a check that ran and failed.
pub const EXIT_CHECK_FAILED: u8 = 1;
/// Exit code for an error.
pub const EXIT_ERROR: u8 = 2;

/// Runs a parsed command line; `Ok` carries the exit code.
pub fn run(cli: Cli) -> Result<ExitCode> {
    if let Some(bytes) = cli.max_memory {
        crate::run::memory::set_limit(bytes);
    }
    // The commands that write outputs stop at their next poll and remove what they staged.
    // The others keep the default action (they stage nothing), and training handles its
    // signals itself (checkpoint, then stop).
    if matches!(
        cli.command,
        Command::Sample(_)
            | Command::Restore(_)
            | Command::Measure(_)
            | Command::Denoise(_)
            | Command::Schedule(_)
            | Command::Convert(_)
            | Command::Evaluate(_)
            | Command::Merge(_)
    ) {
        crate::run::interrupt::install()?;
    }
    match cli.command {
        Command::Parity(args) => parity::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Sample(args) => sample::run(&args),
        Command::Restore(args) => restore::run(&args),
        Command::Measure(args) => measure::run(&args),
        Command::Denoise(args) => denoise::run(&args),
        Command::Schedule(args) => schedule::run(&args),
        Command::Train(args) => train::run(&args),
        Command::TrainClassifier(args) => train_classifier::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Evaluate(args) => evaluate::run(&args),
        Command::Selftest(args) => selftest::run(&args),
        Command::Merge(args) => merge::run(&args),
    }
}
