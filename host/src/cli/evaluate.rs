//! `host evaluate`: the model quality report of models/README.md, on MNIST.
//!
//! - `nearest`: the nearest training image of every sample of a `host sample` run (1-NN label
//!   histogram, and sample → train distances next to the same statistic for held-out test
//!   digits, so memorisation would show as samples much closer to the training set).
//! - `restoration`: PSNR (mean ± standard error over test digits) of the back-projection, the
//!   Gaussian-prior MMSE estimate, one diffusion sample and the mean of N diffusion samples,
//!   for random inpainting or 4× super-resolution. Digit i (test index first + i) is measured
//!   and sampled with seed S + i, exactly as `host restore --seed S+i` would do on it.
//! - `fid`, `fid-calibrate`: sample quality in the bundled digit classifier's feature space
//!   (in [`super::fid`]).
//! - `posterior`: sampler or model? the conditional presets against the closed-form posterior
//!   of the Gaussian fitted to MNIST (in [`super::posterior`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::json;
use tweedie_core::plan::StepPlan;

use super::common::{load_mnist, preprocess, threads};
use super::plan_args::PlanArgs;
use super::sample::DEFAULT_BATCH;
use crate::cli::model_args::ModelArgs;
use crate::eval::gaussian_fit::fit;
use crate::eval::nearest::{nearest, Neighbour};
use crate::eval::restoration::{Evaluated, Scores, Setup, Start, FIGURE_SAMPLES, METHODS};
use crate::eval::stats::{chi_square, mean_se, spread};
use crate::image_io::{grid_planes_in_columns, png_from_planes, to_planes};
use crate::run::manifest::{InputFile, Manifest, ManifestParts};
use crate::run::measurement::Task;
use crate::run::output::{build_info, json_bytes};
use crate::run::output_policy::Outputs;
use crate::run::progress::human_seconds;
use crate::run::shard::{parse_shard_arg, ShardArg};
use crate::run::stream::{ImageShape, InMemory};
use crate::{errln, outln};
use tweedie_nn::data::{DataRange, MnistSplit};
use tweedie_nn::denoiser::Model;
use tweedie_nn::tensors::SafetensorsFile;

const EXAMPLE: &str = "\
Examples:
  host evaluate nearest --samples run1/samples.safetensors --data data/mnist --out nn.json
  host evaluate restoration --weights M.safetensors --data data/mnist --task inpaint \\
       --sigma-y 0.1 --count 100 --samples 32 --preset vp-inpaint --steps 100 --out ip.json";

/// Arguments of `host evaluate`.
#[derive(Debug, Args, Serialize)]
#[command(after_help = EXAMPLE)]
pub struct EvaluateArgs {
    /// What to evaluate.
    #[command(subcommand)]
    pub mode: Mode,
}

/// The evaluations.
#[derive(Debug, Subcommand, Serialize)]
pub enum Mode {
    /// Nearest MNIST training image of each sample: 1-NN labels and memorisation check.
    Nearest(NearestArgs),
    /// Restoration PSNR table on MNIST test digits (back-projection, Gaussian MMSE, diffusion).
    Restoration(Box<RestorationArgs>),
    /// Fréchet distance, Inception-score analogue, class balance and precision/recall of
    /// samples in the bundled digit classifier's feature space.
    Fid(super::fid::FidArgs),
    /// The noise floor and degradation table of `evaluate fid` on real MNIST digits.
    FidCalibrate(super::fid::CalibrateArgs),
    /// Sampler or model? A conditional preset run with the fitted Gaussian's exact denoiser
    /// against the closed-form posterior, and with the network.
    Posterior(Box<super::posterior::PosteriorArgs>),
}

/// Arguments of `host evaluate nearest`.
#[derive(Debug, Args, Serialize)]
pub struct NearestArgs {
    /// The samples: a samples.safetensors of `host sample`, or its folder.
    #[arg(long, value_name = "DIR/samples.safetensors")]
    pub samples: PathBuf,
    /// MNIST folder (IDX files, scripts/fetch-mnist.sh).
    #[arg(long, value_name = "DIR", default_value = "data/mnist")]
    pub data: PathBuf,
    /// Number of MNIST test images (the first ones) for the held-out baseline.
    #[arg(long, default_value_t = 200)]
    pub baseline: usize,
    /// Distances below this (L2 in the data range over the whole image) count as copies.
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub copy_threshold: f64,
    /// Threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the report as JSON.
    #[arg(long, value_name = "report.json")]
    pub out: Option<PathBuf>,
}

/// The tasks of the restoration table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EvalTask {
    /// Random inpainting (a fraction --p of the pixels missing).
    Inpaint,
    /// 4× super-resolution.
    Sr4,
}

const RESTORATION_NOTE: &str = "\
Without --steps, K = 100 here (the conditional presets' own K is 750). The preset defaults to
{kind}-inpaint or {kind}-sr4 with the official step rule gamma = min(c sigma^2, sigma_y^2).
Example:
  host evaluate restoration --weights M.safetensors --task sr4 --count 100 --samples 32 --out sr.json";

/// Arguments of `host evaluate restoration`.
#[derive(Debug, Args, Serialize)]
#[command(after_help = RESTORATION_NOTE)]
pub struct RestorationArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// Schedule and sampler flags as for host restore; without --steps, K = 100 here.
    #[command(flatten)]
    #[allow(missing_docs)]
    pub plan: PlanArgs,
    /// MNIST folder (IDX files): the training split fits the Gaussian prior, test digits are
    /// restored.
    #[arg(long, value_name = "DIR", default_value = "data/mnist")]
    pub data: PathBuf,
    /// Number of test digits.
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// Index of the first test digit.
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// The inverse problem.
    #[arg(long, value_enum)]
    pub task: EvalTask,
    /// Measurement noise σ_y in data-range units.
    #[arg(long, default_value_t = 0.1, allow_hyphen_values = true)]
    pub sigma_y: f64,
    /// Missing fraction for --task inpaint.
    #[arg(long, default_value_t = 0.92)]
    pub p: f64,
    /// Start the chains from the Gaussian-prior MMSE estimate: x₀ = x̂ + s·n, s the x₀ std of
    /// --x0 (use --x0 sigma0 with a --sigma-max the chains can move from; see models/README.md).
    #[arg(long)]
    pub warm_start: bool,
    /// Diffusion samples (chains) per digit; their mean is the MMSE estimate.
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    /// Chains per denoiser call (default min(samples, 32), as `sample`'s); never changes the
    /// results.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Seed S: digit i uses S + i for its measurement and its chains.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (default: all cores); never changes the results.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the table (and every digit's scores) as JSON.
    #[arg(long, value_name = "table.json")]
    pub out: Option<PathBuf>,
    /// Write a PNG, a row per digit (the first 10): truth, back-projection, Gaussian MMSE,
    /// diffusion mean, then the first 4 samples.
    #[arg(long, value_name = "figure.png")]
    pub figure: Option<PathBuf>,
    /// No progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Run only shard I of N (0-based) of the digits (contiguous blocks ⌊I·T/N⌋..⌊(I+1)·T/N⌋;
    /// digit i keeps seed + i) into the shard folder --out DIR, for `host merge` (which
    /// writes DIR/table.json, and DIR/figure.png when the shards had --figure: a shard only
    /// keeps its figure rows). `auto/N` takes I from SLURM_ARRAY_TASK_ID or
    /// JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "I/N|auto/N", value_parser = parse_shard_arg)]
    pub shard: Option<ShardArg>,
}

/// Digits shown by `host evaluate restoration --figure`.
const FIGURE_DIGITS: usize = 10;

/// Runs `host evaluate`.
pub fn run(args: &EvaluateArgs) -> Result<ExitCode> {
    match &args.mode {
        Mode::Nearest(a) => run_nearest(a),
        Mode::Restoration(a) => run_restoration(a),
        Mode::Fid(a) => super::fid::run_fid(a),
        Mode::FidCalibrate(a) => super::fid::run_calibrate(a),
        Mode::Posterior(a) => super::posterior::run(a),
    }
}

/// `--data DIR`, for messages.
pub(super) fn data_flag(dir: &std::path::Path) -> String {
    format!("--data {}", dir.display())
}

fn write_json(path: &Option<PathBuf>, value: &serde_json::Value) -> Result<()> {
    if let Some(path) = path {
        let mut out = Outputs::files();
        out.write(path, &json_bytes(value)?)?;
        out.commit()?;
    }
    Ok(())
}

fn run_nearest(args: &NearestArgs) -> Result<ExitCode> {
    let start = Instant::now();
    if !(args.copy_threshold.is_finite() && args.copy_threshold >= 0.0) {
        bail!(
            "--copy-threshold {}: must be a finite distance >= 0",
            args.copy_threshold
        );
    }
    if let Some(out) = &args.out {
        Outputs::check_file(out, "--out", &[&args.samples])?;
    }
    let path = if args.samples.is_dir() {
        args.samples.join("samples.safetensors")
    } else {
        args.samples.clone()
    };
    let file = SafetensorsFile::open(&path)?;
    let range = match file.metadata()?.get("tweedie.data_range") {
        Some(r) => r
            .parse::<DataRange>()
            .with_context(|| format!("{}: tweedie.data_range", path.display()))?,
        None => bail!("{}: no tweedie.data_range metadata", path.display()),
    };
    let samples = file.tensor_f32("samples")?;
    let [n, c, h, w] = samples.shape[..] else {
        bail!(
            "{}: samples has shape {:?}, expected [N, C, H, W]",
            path.display(),
            samples.shape
        );
    };
    if h != w || n == 0 {
        bail!("{}: samples has shape {:?}", path.display(), samples.shape);
    }
    let train = load_mnist(&args.data, MnistSplit::Train, &data_flag(&args.data))?;
    let pre = preprocess(&train, c, h, range)?;
    let threads = threads(args.threads);
    let found = nearest(&samples.data, &train, pre, threads)?;
    let search_s = start.elapsed().as_secs_f64();
    let test = load_mnist(&args.data, MnistSplit::Test, &data_flag(&args.data))?;
    let count = args.baseline.min(test.len());
    let base = if count > 0 {
        let mut q = vec![0.0f32; count * c * h * w];
        test.fill_batch(&(0..count).collect::<Vec<_>>(), pre, &mut q)?;
        nearest(&q, &train, pre, threads)?
    } else {
        Vec::new()
    };
    let distances = |v: &[Neighbour]| v.iter().map(|n| n.distance).collect::<Vec<f64>>();
    let (ds, db) = (distances(&found), distances(&base));
    let mut histogram = [0usize; 10];
    for nb in &found {
        if let Some(l) = nb.label.filter(|&l| l < 10) {
            histogram[l as usize] += 1;
        }
    }
    let copies = ds.iter().filter(|&&d| d < args.copy_threshold).count();
    let base_min = db.iter().copied().fold(f64::INFINITY, f64::min);
    let closer = ds.iter().filter(|&&d| d < base_min).count();
    let (s, b) = (spread(&ds), spread(&db));
    outln!(
        "nearest MNIST training image (L2 over {c}x{h}x{w} in {}) of {n} samples:",
        range.as_str()
    )?;
    let hist: Vec<String> = histogram
        .iter()
        .enumerate()
        .map(|(d, k)| format!("{d}: {k}"))
        .collect();
    outln!("1-NN labels  {}", hist.join("  "))?;
    // "Balanced" means in the training set's own proportions (MNIST's are near, not exactly, equal).
    let mut train_hist = [0usize; 10];
    for &l in train.labels().unwrap_or(&[]).iter().filter(|&&l| l < 10) {
        train_hist[l as usize] += 1;
    }
    let weights: Vec<f64> = train_hist.iter().map(|&k| k as f64).collect();
    let balance = chi_square(&histogram, &weights);
    if let Some(u) = balance {
        outln!(
            "label balance: chi2 {:.2} on {} d.o.f. against the training set's label proportions, p = {:.3}",
            u.chi2, u.dof, u.p
        )?;
    }
    outln!(
        "{:<28} {:>8} {:>8} {:>8} {:>8}",
        "distance",
        "min",
        "median",
        "mean",
        "max"
    )?;
    for (name, sp) in [
        (format!("samples ({n})"), s),
        (format!("test digits ({count}, baseline)"), b),
    ] {
        if let Some(sp) = sp {
            outln!(
                "{name:<28} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
                sp.min,
                sp.median,
                sp.mean,
                sp.max
            )?;
        }
    }
    outln!(
        "samples closer than {} (copies): {copies} of {n}; closer than the closest test digit: {closer}",
        args.copy_threshold
    )?;
    let per_sample: Vec<_> = found
        .iter()
        .enumerate()
        .map(|(i, nb)| json!({"sample": i, "train_index": nb.index, "label": nb.label, "distance": nb.distance}))
        .collect();
    let report = json!({
        "command": "evaluate nearest",
        "arguments": args,
        "samples_file": path.display().to_string(),
        "data_range": range.as_str(),
        "distance": "L2 norm of the difference over all C*H*W elements (padded MNIST), model data range",
        "label_histogram": histogram,
        "training_label_histogram": train_hist,
        "label_chi_square": balance,
        "sample_distance": s,
        "test_baseline_distance": b,
        "test_baseline_count": count,
        "copy_threshold": args.copy_threshold,
        "copies": copies,
        "closer_than_closest_test_digit": closer,
        "samples": per_sample,
        "baseline": base.iter().map(|nb| json!({"train_index": nb.index, "label": nb.label, "distance": nb.distance})).collect::<Vec<_>>(),
        "timings": {"search_samples_s": search_s, "total_s": start.elapsed().as_secs_f64()},
        "build": build_info(),
    });
    write_json(&args.out, &report)?;
    Ok(ExitCode::SUCCESS)
}

/// Seconds of one denoiser call on a batch of `batch` chains (the last of three, warm).
fn time_call(
    model: &Model,
    plan: &crate::run::plan::AnyPlan,
    batch: usize,
    inner: usize,
) -> Result<f64> {
    let step = plan
        .step(plan.len() / 2)
        .map_err(|e| anyhow::anyhow!("plan: {e}"))?;
    let x = vec![0.0f32; batch * model.chain_len()];
    let mut out = x.clone();
    let mut d = model.make(inner);
    let mut last = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        d.denoise(&x, batch, &step, &mut out)
            .map_err(|e| anyhow::anyhow!("denoiser: {e}"))?;
        last = t.elapsed().as_secs_f64();
    }
    Ok(last)
}

/// One evaluated digit: test index, label, seed, PSNR and SSIM scores.
type Digit = (usize, Option<u8>, u64, Scores, Scores);

/// A shard's digits and the title line of the table.
pub(super) const SHARD_DIGITS: &str = "digits.json";
/// A shard's figure rows (tensor `rows`, one C×H×W image after another).
const SHARD_FIGURE: &str = "figure.safetensors";

fn digit_json(d: &Digit) -> serde_json::Value {
    json!({"test_index": d.0, "label": d.1, "seed": d.2, "psnr": d.3, "ssim": d.4})
}

fn scores_from_json(v: &serde_json::Value) -> Option<Scores> {
    let get = |k: &str| v[k].as_f64();
    Some(Scores {
        back_projection: get("back_projection")?,
        gaussian_mmse: get("gaussian_mmse")?,
        sample: get("sample")?,
        sample_average: get("sample_average")?,
        mean: get("mean")?,
    })
}

fn digit_from_json(v: &serde_json::Value) -> Option<Digit> {
    Some((
        v["test_index"].as_u64()? as usize,
        v["label"].as_u64().map(|l| l as u8),
        v["seed"].as_u64()?,
        scores_from_json(&v["psnr"])?,
        scores_from_json(&v["ssim"])?,
    ))
}

/// The table of the digits (in order), printed and written with the figure: the single
/// run's ending, and `host merge`'s.
struct Table<'a> {
    /// The report's fields that describe the run.
    run: serde_json::Value,
    title: String,
    digits: &'a [Digit],
    figure: &'a [f32],
    figure_columns: usize,
    shape: ImageShape,
    timings: serde_json::Value,
}

impl Table<'_> {
    fn write(&self, out: &mut Outputs, report: Option<&Path>, figure: Option<&Path>) -> Result<()> {
        let table: Vec<_> = METHODS
            .iter()
            .map(|&(name, label)| {
                let p: Vec<f64> = self.digits.iter().map(|d| d.3.get(name)).collect();
                let s: Vec<f64> = self.digits.iter().map(|d| d.4.get(name)).collect();
                (name, label, mean_se(&p), mean_se(&s))
            })
            .collect();
        outln!("{}\n", self.title)?;
        outln!("| method | PSNR (dB), mean ± s.e. | SSIM, mean ± s.e. |\n|---|---|---|")?;
        for (_, label, p, s) in &table {
            outln!(
                "| {label} | {:.2} ± {:.2} | {:.3} ± {:.3} |",
                p.mean,
                p.se,
                s.mean,
                s.se
            )?;
        }
        let mut json = self.run.clone();
        json["methods"] = table
            .iter()
            .map(|(name, label, p, s)| {
                json!({"name": name, "label": label, "mean": p.mean, "se": p.se, "n": p.n,
                       "ssim_mean": s.mean, "ssim_se": s.se})
            })
            .collect();
        json["digits"] = self.digits.iter().map(digit_json).collect();
        json["timings"] = self.timings.clone();
        if let Some(path) = figure {
            let (c, s) = (self.shape.channels, self.shape.size);
            let n = self.figure.len() / self.shape.len();
            let (planes, gh, gw) = grid_planes_in_columns(
                &to_planes(self.figure, self.shape.range),
                n,
                self.figure_columns,
                c,
                s,
                s,
            );
            out.write(path, &png_from_planes(&planes, c, gh, gw)?)?;
        }
        if let Some(path) = report {
            out.write(path, &json_bytes(&json)?)?;
        }
        Ok(())
    }
}

fn run_restoration(args: &RestorationArgs) -> Result<ExitCode> {
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
    if let Some(figure) = &args.figure {
        Outputs::check_file(figure, "--figure", &[&args.data])?;
        if args.out.as_ref() == Some(figure) {
            bail!("--figure {}: is also --out", figure.display());
        }
    }
    if args.count == 0 || args.samples == 0 {
        bail!("--count and --samples must be at least 1");
    }
    if !(args.sigma_y.is_finite() && args.sigma_y > 0.0) {
        bail!("--sigma-y {}: must be a finite number > 0", args.sigma_y);
    }
    let say = |line: &str| {
        if !args.quiet {
            errln!("{line}");
        }
    };
    let mut plan_args = args.plan.clone();
    plan_args.steps = plan_args.steps.or(Some(100));
    let model = args.model.load()?;
    let train = load_mnist(&args.data, MnistSplit::Train, &data_flag(&args.data))?;
    let test = load_mnist(&args.data, MnistSplit::Test, &data_flag(&args.data))?;
    let pre = preprocess(&train, model.channels, model.size, model.data_range)?;
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
    say(&format!(
        "fitted the Gaussian prior to {} training images ({} dims) in {}",
        prior.count,
        prior.dim,
        human_seconds(t.elapsed().as_secs_f64())
    ));
    let task = match args.task {
        EvalTask::Inpaint => Task::Inpaint,
        EvalTask::Sr4 => Task::Sr4,
    };
    let batch = args.batch.unwrap_or(args.samples.min(DEFAULT_BATCH)).max(1);
    let setup = Setup {
        model: &model,
        plans: &plan_args,
        final_denoise: plan_args.final_denoise,
        task,
        sigma_y: args.sigma_y,
        p: args.p,
        samples: args.samples,
        batch,
        threads,
        start: if args.warm_start {
            Start::GaussianMmse
        } else {
            Start::Noise
        },
    };
    let len = model.chain_len();
    let mut truth = vec![0.0f32; len];
    test.fill_batch(&[args.first], pre, &mut truth)?;
    let plan = setup.plan(&setup.measure(&truth, args.seed)?)?;
    let steps = plan.len();
    let evals = steps + usize::from(plan_args.final_denoise);
    let batches = args.samples.div_ceil(batch);
    let (workers, inner) = model.split_threads(threads, batches);
    let call = time_call(&model, &plan, batch, inner)?;
    let estimate = block.len() as f64 * batches.div_ceil(workers) as f64 * evals as f64 * call;
    say(&format!(
        "{} of {} test digits{}, sigma_y {}, {} chains x K = {steps} steps each: about {} \
         ({:.3} s per call of {batch} chains)",
        task.name(),
        args.count,
        shard.map_or(String::new(), |s| format!(
            " ({}: digits {}..{})",
            s.label(),
            block.start,
            block.end
        )),
        args.sigma_y,
        args.samples,
        human_seconds(estimate),
        call
    ));
    let labels = test.labels();
    let mut digits: Vec<Digit> = Vec::with_capacity(block.len());
    let mut figure = Vec::new();
    let loop_start = Instant::now();
    for (done, i) in block.clone().enumerate() {
        let index = args.first + i;
        let seed = args.seed.wrapping_add(i as u64);
        test.fill_batch(&[index], pre, &mut truth)?;
        let Evaluated {
            scores,
            ssim,
            figure_row,
        } = setup.evaluate(&prior, &truth, seed)?;
        if i < FIGURE_DIGITS {
            figure.extend_from_slice(&figure_row);
        }
        let elapsed = loop_start.elapsed().as_secs_f64();
        let eta = elapsed / (done + 1) as f64 * (block.len() - done - 1) as f64;
        say(&format!(
            "digit {}/{} (test #{index}): back-projection {:.2}, gaussian {:.2}, sample {:.2}, mean {:.2} dB; {} elapsed, ETA {}",
            i + 1,
            args.count,
            scores.back_projection,
            scores.gaussian_mmse,
            scores.sample,
            scores.mean,
            human_seconds(elapsed),
            human_seconds(eta)
        ));
        digits.push((index, labels.map(|l| l[index]), seed, scores, ssim));
    }
    let title = format!(
        "{} on {} MNIST test digits (#{}..#{}), sigma_y {} in {}, {} chains, K = {steps}, model {}:",
        task.name(),
        args.count,
        args.first,
        args.first + args.count - 1,
        args.sigma_y,
        model.data_range.as_str(),
        args.samples,
        model.label
    );
    let run = json!({
        "command": "evaluate restoration",
        "arguments": args,
        "task": task.name(),
        "sigma_y": args.sigma_y,
        "p": (task == Task::Inpaint).then_some(args.p),
        "data_range": model.data_range.as_str(),
        "psnr": "10 log10(MAX^2/MSE), MAX = data-range width",
        "seeds": "digit i (test index first + i) uses seed + i for its measurement, mask and chains",
        "steps": steps,
        "samples": args.samples,
        "model": model.description,
        "plan": plan_args.describe(&plan),
        "build": build_info(),
    });
    let timings = json!({
        "total_s": start.elapsed().as_secs_f64(),
        "per_digit_s": loop_start.elapsed().as_secs_f64() / block.len().max(1) as f64,
        "estimated_s": estimate,
    });
    let shape = ImageShape {
        channels: model.channels,
        size: model.size,
        range: model.data_range,
    };
    if let Some((shard, mut out)) = shard_out {
        let mut run = run;
        run["timings"] = timings;
        let records: Vec<_> = digits.iter().map(digit_json).collect();
        out.write(
            SHARD_DIGITS,
            &json_bytes(&json!({"title": title, "digits": records}))?,
        )?;
        if args.figure.is_some() {
            let rows = InMemory { data: &figure, len };
            crate::run::stream::write_samples_tensor(
                &mut out,
                Path::new(SHARD_FIGURE),
                shape,
                figure.len() / len,
                &rows,
                &[],
            )?;
        }
        let inputs = mnist_inputs(&args.data)?;
        let mut manifest = Manifest::new(
            ManifestParts {
                command: "evaluate restoration",
                shard,
                units: ("digits", args.count),
                weights: args.model.weights.as_deref(),
                inputs,
                backend: "cpu",
                run,
                image: shape,
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
        return Ok(ExitCode::SUCCESS);
    }
    let table = Table {
        run,
        title,
        digits: &digits,
        figure: &figure,
        figure_columns: 4 + FIGURE_SAMPLES.min(args.samples),
        shape,
        timings,
    };
    let mut out = Outputs::files();
    table.write(&mut out, args.out.as_deref(), args.figure.as_deref())?;
    out.commit()?;
    say(&format!(
        "done in {}",
        human_seconds(start.elapsed().as_secs_f64())
    ));
    Ok(ExitCode::SUCCESS)
}

/// The MNIST files `evaluate restoration` reads, with their sha256.
pub(super) fn mnist_inputs(dir: &Path) -> Result<Vec<InputFile>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            Ok(InputFile {
                path: p
                    .file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                sha256: tweedie_nn::sha256::of_file(p)?,
            })
        })
        .collect()
}

/// The digit records of the shards of an `evaluate` run split by digits, in order, each with
/// the digits.json it came from, and the run's title. Checked against each manifest (the
/// hashes already caught edits after the shard wrote): one record per digit of its block,
/// digit i of the run at test index first + i with seed + i, and one title for all.
pub(super) fn read_shard_digits(
    shards: &[(PathBuf, Manifest)],
) -> Result<(String, Vec<(PathBuf, serde_json::Value)>)> {
    let mut title: Option<String> = None;
    let mut all = Vec::new();
    for (dir, m) in shards {
        let path = dir.join(SHARD_DIGITS);
        let v: serde_json::Value = serde_json::from_slice(&tweedie_nn::input::read_capped(
            &path,
            "JSON file",
            tweedie_nn::input::MAX_JSON_BYTES,
        )?)
        .with_context(|| format!("{}: not JSON", path.display()))?;
        let records = v["digits"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if records.len() != m.block().len() {
            bail!(
                "{}: {} digits for a block of {}",
                path.display(),
                records.len(),
                m.block().len()
            );
        }
        let args = &m.run["arguments"];
        let (Some(first), Some(seed)) = (args["first"].as_u64(), args["seed"].as_u64()) else {
            bail!("{}: its run record has no --first or --seed", dir.display());
        };
        for (i, r) in m.block().zip(records) {
            let want = (first + i as u64, seed.wrapping_add(i as u64));
            if (r["test_index"].as_u64(), r["seed"].as_u64()) != (Some(want.0), Some(want.1)) {
                bail!(
                    "{}: digit {i} of the run is not test #{} with seed {}",
                    path.display(),
                    want.0,
                    want.1
                );
            }
            all.push((path.clone(), r.clone()));
        }
        let this = v["title"].as_str().unwrap_or_default();
        match &title {
            Some(t) if t != this => bail!(
                "{}: its title differs from {}'s",
                path.display(),
                shards[0].0.display()
            ),
            _ => title = Some(this.to_string()),
        }
    }
    Ok((title.unwrap_or_default(), all))
}

/// `host merge` of `evaluate restoration` shards: the digits in order, the same table code;
/// writes DIR/table.json and, when the shards kept figure rows, DIR/figure.png.
pub fn merge_restoration(
    out: &mut Outputs,
    shards: &[(PathBuf, Manifest)],
    start: Instant,
) -> Result<()> {
    let first = &shards[0].1;
    let shape = first.image_shape()?;
    let mut digits = Vec::new();
    let mut figure = Vec::new();
    let mut with_figure = false;
    let (title, records) = read_shard_digits(shards)?;
    for (path, r) in &records {
        digits.push(
            digit_from_json(r)
                .with_context(|| format!("{}: a digit record is incomplete", path.display()))?,
        );
    }
    for (dir, _) in shards {
        let fig = dir.join(SHARD_FIGURE);
        if fig.exists() {
            with_figure = true;
            let rows = crate::run::stream::ChainsFile::open(&fig, shape)?;
            rows.each(&mut |row| {
                figure.extend_from_slice(row);
                Ok(())
            })?;
        }
    }
    let samples = first.run["samples"].as_u64().unwrap_or(0) as usize;
    let table = Table {
        run: super::merge::merged_run_json(&first.run, shards, start),
        title,
        digits: &digits,
        figure: &figure,
        figure_columns: 4 + FIGURE_SAMPLES.min(samples),
        shape,
        timings: json!({"merge_s": start.elapsed().as_secs_f64()}),
    };
    let figure_path = with_figure.then_some(Path::new("figure.png"));
    table.write(out, Some(Path::new("table.json")), figure_path)
}
