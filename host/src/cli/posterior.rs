//! `host evaluate posterior`: sampler or model? (docs/results.md §5.) Each test digit is
//! measured once and restored by the conditional preset's chains twice: with the exact
//! denoiser of the Gaussian fitted to the training split (whose posterior is known in closed
//! form, so the chains' distance from it is the sampler's error) and with the network. The
//! diagnosis of one digit is [`crate::eval::posterior`]'s; this module runs the digits (all, or
//! one `--shard` block) and prints the table, which `host merge` of the shards prints alike.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::json;
use tweedie_core::plan::StepPlan;

use super::common::{load_mnist, preprocess, threads};
use super::evaluate::{data_flag, mnist_inputs, read_shard_digits, EvalTask, SHARD_DIGITS};
use super::model_args::ModelArgs;
use super::plan_args::PlanArgs;
use super::sample::DEFAULT_BATCH;
use crate::eval::gaussian_fit::fit;
use crate::eval::posterior::{diagnose, Diagnosis, VARIANCE_FLOOR};
use crate::eval::restoration::{Setup, Start};
use crate::eval::stats::mean_se;
use crate::run::manifest::{Manifest, ManifestParts};
use crate::run::measurement::Task;
use crate::run::output::{build_info, json_bytes};
use crate::run::output_policy::Outputs;
use crate::run::progress::human_seconds;
use crate::run::shard::{parse_shard_arg, ShardArg};
use crate::run::stream::ImageShape;
use crate::{errln, outln};
use tweedie_nn::data::MnistSplit;

/// Where the chains start (`host evaluate posterior --start`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartName {
    /// x₀ from the plan's law alone.
    Noise,
    /// The back-projection of y plus x₀'s noise.
    BackProjection,
    /// The Gaussian-prior MMSE estimate plus x₀'s noise.
    GaussianMmse,
}

const POSTERIOR_NOTE: &str = "\
The chains run the conditional preset (default {kind}-inpaint or {kind}-sr4 at its own K) twice
per digit on the same measurement: with gaussian-fit (the Gaussian fitted to the training split,
whose posterior is known in closed form) and with the network of --weights (skip with
--skip-network). The Monte Carlo floor is the PSNR against the exact posterior mean that the
mean of N exact posterior samples would reach on average. Exit 1 when --max-excess-db is given
and some digit's chain mean is further than that below the floor.
Example:
  host evaluate posterior --data data/mnist --task inpaint --preset vp-inpaint --count 8 --samples 8
  host evaluate posterior --task inpaint --count 100 --shard 0/5 --out parts/0   # then host merge";

/// Arguments of `host evaluate posterior`.
#[derive(Debug, Args, Serialize)]
#[command(after_help = POSTERIOR_NOTE)]
pub struct PosteriorArgs {
    /// The network compared with the exact Gaussian (its kind, range and size are used).
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// Schedule and sampler flags as for host restore (the preset's own K by default).
    #[command(flatten)]
    #[allow(missing_docs)]
    pub plan: PlanArgs,
    /// MNIST folder (IDX files): the training split fits the Gaussian, test digits are measured.
    #[arg(long, value_name = "DIR", default_value = "data/mnist")]
    pub data: PathBuf,
    /// Number of test digits.
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    /// Index of the first test digit.
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// The inverse problem.
    #[arg(long, value_enum)]
    pub task: EvalTask,
    /// Measurement noise σ_y in data-range units (the presets' 0.2).
    #[arg(long, default_value_t = 0.2, allow_hyphen_values = true)]
    pub sigma_y: f64,
    /// Missing fraction for --task inpaint.
    #[arg(long, default_value_t = 0.92)]
    pub p: f64,
    /// Chains per digit (at least 2).
    #[arg(long, default_value_t = 8)]
    pub samples: usize,
    /// Where the chains start.
    #[arg(long, value_enum, default_value_t = StartName::Noise)]
    pub start: StartName,
    /// Skip the network's chains (the exact-Gaussian half only).
    #[arg(long)]
    pub skip_network: bool,
    /// Fail (exit 1) if a digit's gaussian-fit chain mean is more than this many dB below the
    /// Monte Carlo floor against the exact posterior mean.
    #[arg(long, value_name = "DB", allow_hyphen_values = true)]
    pub max_excess_db: Option<f64>,
    /// Network chains per denoiser call (default min(samples, 32), as `sample`'s); never
    /// changes the results.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Seed S: digit i uses S + i for its measurement and its chains.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (default: all cores); never changes the results.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the table (and every digit's diagnosis) as JSON; with --shard, the shard folder.
    #[arg(long, value_name = "posterior.json|DIR")]
    pub out: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Run only shard I of N (0-based) of the digits (contiguous blocks ⌊I·T/N⌋..⌊(I+1)·T/N⌋;
    /// digit i keeps seed + i) into the shard folder --out DIR, for `host merge` (which prints
    /// the single run's table and writes DIR/posterior.json). `auto/N` takes I from
    /// SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "I/N|auto/N", value_parser = parse_shard_arg)]
    pub shard: Option<ShardArg>,
}

/// The rows of the posterior table: (JSON name, label, value of one digit).
type Row = (&'static str, &'static str, fn(&Diagnosis) -> Option<f64>);

const POSTERIOR_ROWS: [Row; 9] = [
    ("back_projection", "back-projection vs truth (dB)", |d| {
        Some(d.back_projection)
    }),
    (
        "exact_mean",
        "exact posterior mean (Gaussian MMSE) vs truth (dB)",
        |d| Some(d.exact_mean),
    ),
    ("chain_mean", "gaussian-fit chain mean vs truth (dB)", |d| {
        Some(d.chain_mean)
    }),
    (
        "chain_mean_vs_exact",
        "gaussian-fit chain mean vs exact posterior mean (dB)",
        |d| Some(d.chain_mean_vs_exact),
    ),
    (
        "monte_carlo_floor",
        "the same for exact posterior samples (Monte Carlo floor, dB)",
        |d| Some(d.monte_carlo_floor),
    ),
    (
        "variance_ratio_mean",
        "chain / exact posterior variance, pixel mean",
        |d| Some(d.variance_ratio_mean),
    ),
    (
        "variance_ratio_median",
        "chain / exact posterior variance, pixel median",
        |d| Some(d.variance_ratio_median),
    ),
    ("network_mean", "network chain mean vs truth (dB)", |d| {
        d.network_mean
    }),
    (
        "network_sample",
        "network one sample vs truth, average over chains (dB)",
        |d| d.network_sample,
    ),
];

/// One diagnosed digit: test index, seed, diagnosis.
type Digit = (usize, u64, Diagnosis);

fn digit_json((index, seed, d): &Digit) -> serde_json::Value {
    json!({"test_index": index, "seed": seed, "diagnosis": d})
}

fn digit_from_json(v: &serde_json::Value) -> Option<Digit> {
    Some((
        v["test_index"].as_u64()? as usize,
        v["seed"].as_u64()?,
        serde_json::from_value(v["diagnosis"].clone()).ok()?,
    ))
}

/// How many dB the worst digit's gaussian-fit chain mean lies below the Monte Carlo floor.
fn largest_excess(digits: &[Digit]) -> f64 {
    digits
        .iter()
        .map(|d| d.2.excess_db())
        .fold(f64::NEG_INFINITY, f64::max)
}

/// The table of the digits (in order): what the single run prints and writes, and `host
/// merge` of its shards alike.
fn write_table(
    out: &mut Outputs,
    path: Option<&Path>,
    run: &serde_json::Value,
    title: &str,
    digits: &[Digit],
    timings: serde_json::Value,
) -> Result<()> {
    let table: Vec<_> = POSTERIOR_ROWS
        .iter()
        .filter_map(|&(name, label, get)| {
            let v: Vec<f64> = digits.iter().filter_map(|d| get(&d.2)).collect();
            (!v.is_empty()).then(|| (name, label, mean_se(&v)))
        })
        .collect();
    outln!("{title}\n")?;
    outln!("| quantity | mean ± s.e. |\n|---|---|")?;
    for (_, label, m) in &table {
        outln!("| {label} | {:.2} ± {:.2} |", m.mean, m.se)?;
    }
    let worst = largest_excess(digits);
    outln!("\nlargest excess over the Monte Carlo floor: {worst:.2} dB")?;
    if let Some(path) = path {
        let mut report = run.clone();
        report["rows"] = table
            .iter()
            .map(|(name, label, m)| {
                json!({"name": name, "label": label, "mean": m.mean, "se": m.se, "n": m.n})
            })
            .collect();
        report["largest_excess_db"] = json!(worst);
        report["digits"] = digits.iter().map(digit_json).collect();
        report["timings"] = timings;
        out.write(path, &json_bytes(&report)?)?;
    }
    Ok(())
}

/// Runs `host evaluate posterior`.
pub fn run(args: &PosteriorArgs) -> Result<ExitCode> {
    let start = Instant::now();
    let shard = args.shard.map(ShardArg::resolve).transpose()?;
    let mut shard_out = None;
    if let Some(shard) = shard {
        let Some(dir) = &args.out else {
            bail!("--shard needs --out DIR: the shard folder `host merge` reads");
        };
        shard_out = Some((shard, Outputs::in_folder(dir, &[&args.data])?));
    } else if let Some(out) = &args.out {
        Outputs::check_file(out, "--out", &[&args.data])?;
    }
    if args.count == 0 || args.samples < 2 {
        bail!("--count must be at least 1 and --samples at least 2");
    }
    if !(args.sigma_y.is_finite() && args.sigma_y > 0.0) {
        bail!("--sigma-y {}: must be a finite number > 0", args.sigma_y);
    }
    if let Some(max) = args.max_excess_db {
        if !max.is_finite() {
            bail!("--max-excess-db {max}: must be a finite number");
        }
        if args.shard.is_some() {
            bail!(
                "--max-excess-db judges the whole table: give it to the single run, not to a \
                 --shard (its merged posterior.json has largest_excess_db)"
            );
        }
    }
    let say = |line: &str| {
        if !args.quiet {
            errln!("{line}");
        }
    };
    let network = args.model.load()?;
    let train = load_mnist(&args.data, MnistSplit::Train, &data_flag(&args.data))?;
    let test = load_mnist(&args.data, MnistSplit::Test, &data_flag(&args.data))?;
    let (channels, size) = (network.channels, network.size);
    let pre = preprocess(&train, channels, size, network.data_range)?;
    if args.first + args.count > test.len() {
        bail!(
            "--first {} --count {}: the test split has {} images",
            args.first,
            args.count,
            test.len()
        );
    }
    let block = shard.map_or(0..args.count, |s| s.block(args.count));
    let threads = threads(args.threads);
    let t = Instant::now();
    let prior = fit(&train, pre, threads)?;
    let label = format!("gaussian-fit:{}", args.data.display());
    let exact_model = args.model.fitted_model(
        &label,
        &prior,
        network.kind,
        network.data_range,
        channels,
        size,
    )?;
    say(&format!(
        "fitted and decomposed the Gaussian of {} training images ({} dims) in {}",
        prior.count,
        prior.dim,
        human_seconds(t.elapsed().as_secs_f64())
    ));
    let task = match args.task {
        EvalTask::Inpaint => Task::Inpaint,
        EvalTask::Sr4 => Task::Sr4,
    };
    let chains_start = match args.start {
        StartName::Noise => Start::Noise,
        StartName::BackProjection => Start::BackProjection,
        StartName::GaussianMmse => Start::GaussianMmse,
    };
    let setup = |model, batch| Setup {
        model,
        plans: &args.plan,
        final_denoise: args.plan.final_denoise,
        task,
        sigma_y: args.sigma_y,
        p: args.p,
        samples: args.samples,
        batch,
        threads,
        start: chains_start,
    };
    // The exact denoiser parallelises over batches: one batch per thread.
    let exact = setup(&exact_model, args.samples.div_ceil(threads).clamp(1, 8));
    let net = setup(
        &network,
        args.batch.unwrap_or(args.samples.min(DEFAULT_BATCH)).max(1),
    );
    // K of the title is the plan of the first digit's measurement, in every shard alike.
    let mut truth = vec![0.0f32; exact_model.chain_len()];
    test.fill_batch(&[args.first], pre, &mut truth)?;
    let plan = exact.plan(&exact.measure(&truth, args.seed)?)?;
    let steps = plan.len();
    let mut digits = Vec::with_capacity(block.len());
    let loop_start = Instant::now();
    for i in block.clone() {
        let index = args.first + i;
        let seed = args.seed.wrapping_add(i as u64);
        test.fill_batch(&[index], pre, &mut truth)?;
        let d = diagnose(
            &exact,
            &prior,
            (!args.skip_network).then_some(&net),
            &truth,
            seed,
        )?;
        let elapsed = loop_start.elapsed().as_secs_f64();
        say(&format!(
            "digit {}/{} (test #{index}): exact {:.2}, chain mean {:.2} dB; chain vs exact {:.2} (floor {:.2}) dB; variance ratio {:.2}; network mean {} dB; {} elapsed",
            i + 1,
            args.count,
            d.exact_mean,
            d.chain_mean,
            d.chain_mean_vs_exact,
            d.monte_carlo_floor,
            d.variance_ratio_median,
            d.network_mean.map_or("-".into(), |v| format!("{v:.2}")),
            human_seconds(elapsed),
        ));
        digits.push((index, seed, d));
    }
    let title = format!(
        "{} on {} MNIST test digits (#{}..#{}), sigma_y {} in {}, {} chains, K = {steps}, start {:?}, network {}:",
        task.name(),
        args.count,
        args.first,
        args.first + args.count - 1,
        args.sigma_y,
        network.data_range.as_str(),
        args.samples,
        args.start,
        if args.skip_network { "skipped" } else { network.label.as_str() },
    );
    let mut run = json!({
        "command": "evaluate posterior",
        "arguments": args,
        "task": task.name(),
        "sigma_y": args.sigma_y,
        "p": (task == Task::Inpaint).then_some(args.p),
        "data_range": network.data_range.as_str(),
        "psnr": "10 log10(MAX^2/MSE), MAX = data-range width",
        "variance_floor": VARIANCE_FLOOR,
        "seeds": "digit i (test index first + i) uses seed + i for its measurement, mask and chains",
        "steps": steps,
        "samples": args.samples,
        "exact_model": exact_model.description,
        "network": (!args.skip_network).then_some(&network.description),
        "plan": args.plan.describe(&plan),
        "build": build_info(),
    });
    let timings = json!({
        "total_s": start.elapsed().as_secs_f64(),
        "per_digit_s": loop_start.elapsed().as_secs_f64() / block.len().max(1) as f64,
    });
    if let Some((shard, mut out)) = shard_out {
        run["timings"] = timings;
        let records: Vec<_> = digits.iter().map(digit_json).collect();
        out.write(
            SHARD_DIGITS,
            &json_bytes(&json!({"title": title, "digits": records}))?,
        )?;
        let mut manifest = Manifest::new(
            ManifestParts {
                command: "evaluate posterior",
                shard,
                units: ("digits", args.count),
                weights: args.model.weights.as_deref(),
                inputs: mnist_inputs(&args.data)?,
                backend: "cpu",
                run,
                image: ImageShape {
                    channels,
                    size,
                    range: network.data_range,
                },
                names: Vec::new(),
            },
            args,
        )?;
        manifest.seal(out)?;
        say(&format!(
            "wrote {} ({}) in {}",
            shard.label(),
            manifest.describe_block(),
            human_seconds(start.elapsed().as_secs_f64())
        ));
    } else {
        let mut out = Outputs::files();
        write_table(
            &mut out,
            args.out.as_deref(),
            &run,
            &title,
            &digits,
            timings,
        )?;
        out.commit()?;
    }
    if let Some(max) = args.max_excess_db {
        let worst = largest_excess(&digits);
        if worst > max {
            errln!(
                "error: the gaussian-fit chain mean is {worst:.2} dB below the Monte Carlo floor (allowed {max} dB)"
            );
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `host merge` of `evaluate posterior` shards: the digits in order, the single run's table
/// (printed, and written to DIR/posterior.json).
pub fn merge(out: &mut Outputs, shards: &[(PathBuf, Manifest)], start: Instant) -> Result<()> {
    let (title, records) = read_shard_digits(shards)?;
    let network = !shards[0].1.run["arguments"]["skip_network"]
        .as_bool()
        .unwrap_or(false);
    let mut digits = Vec::with_capacity(records.len());
    for (path, r) in &records {
        let digit = digit_from_json(r)
            .filter(|d| {
                d.2.network_mean.is_some() == network && d.2.network_sample.is_some() == network
            })
            .with_context(|| format!("{}: a digit record is incomplete", path.display()))?;
        digits.push(digit);
    }
    let run = super::merge::merged_run_json(&shards[0].1.run, shards, start);
    let timings = json!({"merge_s": start.elapsed().as_secs_f64()});
    write_table(
        out,
        Some(Path::new("posterior.json")),
        &run,
        &title,
        &digits,
        timings,
    )
}
