//! `host bench`: time the network forward pass on random weights of the right shapes.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use super::common::{grouped, precision, threads};
use crate::backend::profile;
use crate::model::adm::forward::{AdmModel, Input};
use crate::model::adm::AdmArch;
use crate::model::config::ModelConfig;
use crate::weights::Weights;

const EXAMPLE: &str = "\
Example:
  host bench --config adm-ffhq256 --size 64 --batch 2 --iters 3 --threads 2";

/// Arguments of `host bench`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLE)]
pub struct BenchArgs {
    /// Model config: a JSON file or a built-in name (adm-ffhq256).
    #[arg(long, value_name = "C.json|NAME")]
    pub config: String,
    /// Input height and width in pixels (a multiple of 2^(levels−1), 32 for FFHQ).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub size: u64,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
    /// Timed forward passes (after one warm-up pass).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub iters: u64,
    /// Store conv and linear weights as f16 (half the memory).
    #[arg(long)]
    pub f16: bool,
    /// Worker threads (default: all available cores).
    #[arg(long, value_name = "J", value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
}

/// Runs `host bench`.
pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let config = ModelConfig::load(&args.config)?.adm()?.clone();
    let arch = AdmArch::new(&config)?;
    let (size, batch) = (args.size as usize, args.batch as usize);
    arch.check_input_size(size, size)?;
    let weights = Weights::random(&arch.state_dict(), precision(args.f16), 0);
    let macs = arch.macs(size, size) * batch as u64;
    println!(
        "model: adm, {} parameters ({:.1} MB as stored); input {batch}x{}x{size}x{size}; {:.2} G MAC per forward",
        grouped(weights.parameter_count() as u64),
        weights.size_bytes() as f64 / 1e6,
        config.in_channels,
        macs as f64 / 1e9
    );
    let x: Vec<f32> = (0..batch * config.in_channels * size * size)
        .map(|i| tweedie_core::noise::gaussian(1, 0, tweedie_core::noise::COUNTER_INIT, i as u64))
        .collect();
    let t: Vec<f32> = (0..batch).map(|i| (500 + i) as f32).collect();
    let input = Input {
        x: &x,
        t: &t,
        batch,
        height: size,
        width: size,
    };
    let mut out = vec![0.0f32; batch * config.out_channels * size * size];
    let jobs = threads(args.threads.map(|j| j as usize));
    let mut model = AdmModel::new(&arch, &weights, size, size, jobs)?;
    println!(
        "arena: {:.1} MB of activations and scratch",
        model.arena_bytes() as f64 / 1e6
    );
    model.forward(&input, &mut out)?;
    profile::reset();
    let mut seconds = Vec::new();
    for _ in 0..args.iters {
        let start = Instant::now();
        model.forward(&input, &mut out)?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    if out.iter().any(|v| !v.is_finite()) {
        bail!("the forward pass produced non-finite values on random weights");
    }
    seconds.sort_by(f64::total_cmp);
    let (best, median) = (seconds[0], median(&seconds));
    let gflops = 2.0 * macs as f64 / median / 1e9;
    println!(
        "{} iters, {jobs} threads: median {median:.3} s, best {best:.3} s, {gflops:.1} GFLOP/s at the median",
        args.iters
    );
    if profile::enabled() {
        print!("{}", profile::report());
    }
    if let Some(kib) = peak_rss_kib() {
        println!("peak_rss_mib={:.1}", kib as f64 / 1024.0);
    }
    // The machine-readable summary scripts/pytorch/compare.sh parses: always the last line.
    println!(
        "median_s={median:.6} gflops={gflops:.3} iters={}",
        args.iters
    );
    Ok(ExitCode::SUCCESS)
}

/// Median of sorted values (mean of the middle two for an even count).
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if !n.is_multiple_of(2) {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// The process's peak resident set (Linux `VmHWM`), if known.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
