//! `host bench`: time the network forward pass on random weights of the right shapes.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use super::common::{grouped, precision, threads};
use crate::cli::model_args::ConvArg;
use crate::outln;
use crate::run::memory;
use tweedie_nn::backend::profile;
use tweedie_nn::model::adm::forward::{AdmModel, Input};
use tweedie_nn::model::adm::{AdmArch, AdmConfig};
use tweedie_nn::model::config::ModelConfig;
use tweedie_nn::model::layers::{ConvForm, LayerForm};
use tweedie_nn::model::ncsnpp::{self, NcsnppArch, NcsnppConfig, NcsnppModel};
use tweedie_nn::weights::Weights;

const EXAMPLE: &str = "\
Example:
  host bench --config adm-ffhq256 --size 64 --batch 2 --iters 3 --threads 2
  host bench --config ncsnpp-ffhq256 --size 256 --iters 2   (NCSN++: --size = image_size)";

/// Arguments of `host bench`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLE)]
pub struct BenchArgs {
    /// Model config: a JSON file or a built-in name (adm-ffhq256, ncsnpp-ffhq256).
    #[arg(long, value_name = "C.json|NAME")]
    pub config: String,
    /// Input height and width in pixels (ADM: a multiple of 2^(levels−1), 32 for FFHQ;
    /// NCSN++: exactly the config's image_size).
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
    /// How the forward computes its 3×3 convolutions (auto, winograd or direct; see `host
    /// help sample`).
    #[arg(long, value_enum, default_value = "auto")]
    pub conv: ConvArg,
}

/// Runs `host bench`.
pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let (size, batch) = (args.size as usize, args.batch as usize);
    let jobs = threads(args.threads.map(|j| j as usize));
    match ModelConfig::load(&args.config)? {
        ModelConfig::Adm(config) => bench_adm(args, &config, size, batch, jobs),
        ModelConfig::Ncsnpp(config) => bench_ncsnpp(args, &config, size, batch, jobs),
    }
}

/// Standard normal inputs, the same for every model.
fn random_input(len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| tweedie_core::noise::gaussian(1, 0, tweedie_core::noise::COUNTER_INIT, i as u64))
        .collect()
}

/// Prints the model line of the report.
fn describe(name: &str, weights: &Weights, shape: [usize; 4], macs: u64) -> anyhow::Result<()> {
    let [n, c, h, w] = shape;
    outln!(
        "model: {name}, {} parameters ({:.1} MB as stored); input {n}x{c}x{h}x{w}; {:.2} G MAC per forward",
        grouped(weights.parameter_count() as u64),
        weights.size_bytes() as f64 / 1e6,
        macs as f64 / 1e9
    )?;
    Ok(())
}

fn bench_adm(
    args: &BenchArgs,
    config: &AdmConfig,
    size: usize,
    batch: usize,
    jobs: usize,
) -> Result<ExitCode> {
    let arch = AdmArch::new(config)?;
    arch.check_input_size(size, size)?;
    memory::check(
        "this forward",
        memory::weights_bytes(arch.parameter_count() as u64, precision(args.f16)).saturating_add(
            memory::adm_forward_bytes(&arch, size as u64, batch as u64, jobs as u64),
        ),
    )?;
    let weights = Weights::random(&arch.state_dict(), precision(args.f16), 0);
    let macs = arch.macs(size, size) * batch as u64;
    describe(
        "adm",
        &weights,
        [batch, config.in_channels, size, size],
        macs,
    )?;
    let x = random_input(batch * config.in_channels * size * size);
    let t: Vec<f32> = (0..batch).map(|i| (500 + i) as f32).collect();
    let input = Input {
        x: &x,
        t: &t,
        batch,
        height: size,
        width: size,
    };
    let mut out = vec![0.0f32; batch * config.out_channels * size * size];
    let mut model = AdmModel::with_policy(&arch, &weights, size, size, jobs, args.conv.into())?;
    model.reserve(batch);
    print_memory(model.arena_bytes(), model.wino_bytes(), model.forms())?;
    timed(args, jobs, macs, &mut out, &mut |out| {
        model.forward(&input, out)
    })
}

/// NCSN++ runs only at its configured `image_size`, so `--size` must equal it.
fn bench_ncsnpp(
    args: &BenchArgs,
    config: &NcsnppConfig,
    size: usize,
    batch: usize,
    jobs: usize,
) -> Result<ExitCode> {
    let arch = NcsnppArch::new(config)?;
    arch.check_input_size(size, size)
        .map_err(|e| anyhow::anyhow!("--size {size}: {e}"))?;
    let side = size as u64;
    let activations = memory::product(&[arch.channels() as u64, side, side, 64 + jobs as u64, 4]);
    memory::check(
        "this forward",
        memory::weights_bytes(arch.parameter_count() as u64, precision(args.f16))
            .saturating_add(activations)
            .saturating_add(memory::product(&[
                arch.channels() as u64,
                side,
                side,
                batch as u64,
                8,
            ])),
    )?;
    let weights = Weights::random(&arch.state_dict(), precision(args.f16), 0);
    let macs = arch.macs() * batch as u64;
    let channels = arch.channels();
    describe("ncsnpp", &weights, [batch, channels, size, size], macs)?;
    let x = random_input(batch * channels * size * size);
    let sigma: Vec<f32> = (0..batch).map(|i| 10.0 * (i + 1) as f32).collect();
    let input = ncsnpp::Input {
        x: &x,
        sigma: &sigma,
        batch,
    };
    let mut out = vec![0.0f32; x.len()];
    let mut model = NcsnppModel::with_policy(&arch, &weights, jobs, args.conv.into())?;
    print_memory(model.arena_bytes(), model.wino_bytes(), model.forms())?;
    timed(args, jobs, macs, &mut out, &mut |out| {
        model.forward(&input, ncsnpp::Output::Score, out)
    })
}

/// The arena, the transformed Winograd weights and how many 3×3 layers take each form.
fn print_memory(arena: usize, wino: usize, forms: &[LayerForm]) -> anyhow::Result<()> {
    outln!(
        "arena: {:.1} MB of activations and scratch",
        arena as f64 / 1e6
    )?;
    let count = |f: ConvForm| forms.iter().filter(|l| l.form == f).count();
    outln!(
        "conv forms: {} F4x4, {} F2x2, {} direct; {:.1} MB of transformed weights kept",
        count(ConvForm::F4x4),
        count(ConvForm::F2x2),
        count(ConvForm::Direct),
        wino as f64 / 1e6
    )?;
    Ok(())
}

/// One warm-up pass, then `--iters` timed passes; prints the timing lines.
fn timed(
    args: &BenchArgs,
    jobs: usize,
    macs: u64,
    out: &mut [f32],
    forward: &mut dyn FnMut(&mut [f32]) -> Result<()>,
) -> Result<ExitCode> {
    forward(out)?;
    profile::reset();
    let mut seconds = Vec::new();
    for _ in 0..args.iters {
        let start = Instant::now();
        forward(out)?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    if out.iter().any(|v| !v.is_finite()) {
        bail!("the forward pass produced non-finite values on random weights");
    }
    seconds.sort_by(f64::total_cmp);
    let (best, median) = (seconds[0], median(&seconds));
    let gflops = 2.0 * macs as f64 / median / 1e9;
    outln!(
        "{} iters, {jobs} threads: median {median:.3} s, best {best:.3} s, {gflops:.1} GFLOP/s at the median",
        args.iters
    )?;
    if profile::enabled() {
        outln!("{}", profile::report().trim_end_matches('\n'))?;
    }
    if let Some(kib) = peak_rss_kib() {
        outln!("peak_rss_mib={:.1}", kib as f64 / 1024.0)?;
    }
    // The machine-readable summary scripts/pytorch/compare.sh parses: always the last line.
    outln!(
        "median_s={median:.6} gflops={gflops:.3} iters={}",
        args.iters
    )?;
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
