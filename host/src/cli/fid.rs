//! `host evaluate fid` and `host evaluate fid-calibrate`: sample quality in the feature space of
//! the bundled digit classifier (models/README.md, "The judge").
//!
//! - `fid`: Fréchet distance of the samples' 128-d features to the MNIST test (or training)
//!   set's, the Inception-score analogue, the predicted-class histogram with its χ² against the
//!   training proportions, and precision/recall (k = 3).
//! - `fid-calibrate`: the same statistics for real training digits at several n (the noise
//!   floor) and for degraded real digits (models/README.md's calibration table).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use serde_json::json;

use super::common::threads;
use crate::eval::digit_inputs::read_digits;
use crate::eval::fid_calibration::{calibrate, Plan, Row, TrainingDigits};
use crate::eval::judge::{Judge, Scores, Split, K};
use crate::outln;
use crate::run::output::{build_info, json_bytes};
use crate::run::output_policy::Outputs;
use tweedie_nn::data::{Dataset, MnistSplit};
use tweedie_nn::model::classifier::{padded_images, PIXELS};

/// The reference set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefSplit {
    /// The 10,000 MNIST test digits (held out from the classifier's training).
    Test,
    /// The 60,000 MNIST training digits.
    Train,
}

impl RefSplit {
    fn split(self) -> Split {
        match self {
            RefSplit::Test => Split::Test,
            RefSplit::Train => Split::Train,
        }
    }
}

const FID_NOTE: &str = "\
The Fréchet distance is biased upward at small n: compare runs at the same n, against the
noise floor of real digits at that n (models/README.md: `host evaluate fid-calibrate`).
Examples:
  host evaluate fid --samples run1 --n 1000
  host evaluate fid --samples 'run1/sample_*.png' --ref train --out fid.json";

/// Arguments of `host evaluate fid`.
#[derive(Debug, Args, Serialize)]
#[command(after_help = FID_NOTE)]
pub struct FidArgs {
    /// The digits: a folder (its samples.safetensors, else its sample_*.png), a
    /// samples.safetensors, a PNG, or a pattern such as 'run1/sample_*.png'.
    #[arg(long, value_name = "DIR|FILE|GLOB")]
    pub samples: String,
    /// Reference set.
    #[arg(long = "ref", value_enum, default_value_t = RefSplit::Test)]
    pub reference: RefSplit,
    /// Score the first N digits only (an error if there are fewer).
    #[arg(long)]
    pub n: Option<usize>,
    /// Threads (default: all cores); never changes the results.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the report as JSON.
    #[arg(long, value_name = "report.json")]
    pub out: Option<PathBuf>,
}

/// Arguments of `host evaluate fid-calibrate`.
#[derive(Debug, Args, Serialize)]
pub struct CalibrateArgs {
    /// MNIST folder (IDX files, scripts/fetch-mnist.sh).
    #[arg(long, value_name = "DIR", default_value = "data/mnist")]
    pub data: PathBuf,
    /// Sizes of the noise-floor rows.
    #[arg(long, value_delimiter = ',', default_values_t = [256, 1000, 10_000])]
    pub floor_n: Vec<usize>,
    /// Size of the degraded sets.
    #[arg(long, default_value_t = 1000)]
    pub degraded_n: usize,
    /// Disjoint subsets per row.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Seed of the subsets and the noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (default: all cores); never changes the results.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the table (and every set's scores) as JSON.
    #[arg(long, value_name = "calibration.json")]
    pub out: Option<PathBuf>,
}

fn write_json(path: &Option<PathBuf>, value: &serde_json::Value) -> Result<()> {
    if let Some(path) = path {
        let mut out = Outputs::files();
        out.write(path, &json_bytes(value)?)?;
        out.commit()?;
    }
    Ok(())
}

fn judge_facts(judge: &Judge) -> serde_json::Value {
    json!({
        "file": "models/mnist-classifier.safetensors (bundled)",
        "sha256": tweedie_nn::sha256::of_bytes(crate::bundled::JUDGE),
        "test_accuracy": judge.metadata.get("tweedie.test_accuracy"),
    })
}

/// Runs `host evaluate fid`.
pub fn run_fid(args: &FidArgs) -> Result<ExitCode> {
    let start = Instant::now();
    if let Some(out) = &args.out {
        Outputs::check_file(out, "--out", &[Path::new(&args.samples)])?;
    }
    let mut digits = read_digits(&args.samples)?;
    if let Some(n) = args.n {
        if n > digits.len() {
            bail!(
                "--n {n}: {} has only {} digits",
                digits.source,
                digits.len()
            );
        }
        digits.images.truncate(n * PIXELS);
    }
    let judge = Judge::bundled()?;
    let split = args.reference.split();
    let scores = judge.score(&digits.images, split, threads(args.threads))?;
    let seconds = start.elapsed().as_secs_f64();
    print_scores(&scores, &digits.source, &judge, split)?;
    outln!("({seconds:.1} s)")?;
    let report = json!({
        "command": "evaluate fid",
        "arguments": args,
        "samples": digits.source,
        "scores": scores,
        "judge": judge_facts(&judge),
        "features": "128-d penultimate layer (ReLU) of the bundled MNIST classifier; digits as 8-bit 32x32 (28x28 padded by 2)",
        "timings": {"total_s": seconds},
        "build": build_info(),
    });
    write_json(&args.out, &report)?;
    Ok(ExitCode::SUCCESS)
}

fn print_scores(s: &Scores, source: &str, judge: &Judge, split: Split) -> anyhow::Result<()> {
    let r = judge.reference(split);
    outln!(
        "{} digits from {source}, against MNIST {} ({} images):",
        s.n,
        split.name(),
        r.stats.n
    )?;
    let pr = &s.precision_recall;
    outln!("| statistic | value |\n|---|---|")?;
    outln!("| Fréchet distance (n = {}) | {:.2} |", s.n, s.fid)?;
    outln!(
        "| Inception-score analogue (1 to 10) | {:.3} |",
        s.inception_score
    )?;
    outln!(
        "| precision, k = {K} ({} real, {} samples) | {:.3} |",
        pr.real,
        pr.samples,
        pr.precision
    )?;
    outln!(
        "| recall, k = {K} ({} real, {} samples) | {:.3} |",
        pr.real,
        pr.samples,
        pr.recall
    )?;
    outln!(
        "| diversity: mean pairwise feature distance (samples / {} real) | {:.3} / {:.3} |",
        pr.real,
        s.diversity.samples,
        s.diversity.real
    )?;
    let counts: Vec<String> = s.class_counts.iter().map(|c| c.to_string()).collect();
    outln!("| classes 0 … 9 | {} |", counts.join(" "))?;
    if let Some(c) = s.class_balance {
        outln!(
            "| class balance: χ² ({} d.o.f.) against the training proportions | {:.2}, p = {:.3} |",
            c.dof,
            c.chi2,
            c.p
        )?;
    }
    Ok(())
}

/// Runs `host evaluate fid-calibrate`.
pub fn run_calibrate(args: &CalibrateArgs) -> Result<ExitCode> {
    let start = Instant::now();
    if let Some(out) = &args.out {
        Outputs::check_file(out, "--out", &[&args.data])?;
    }
    if args.repeats == 0 || args.floor_n.contains(&0) || args.degraded_n == 0 {
        bail!("--repeats, --floor-n and --degraded-n must be at least 1");
    }
    let train = Dataset::mnist(&args.data, MnistSplit::Train, false).with_context(|| {
        format!(
            "--data {}: MNIST files (scripts/fetch-mnist.sh)",
            args.data.display()
        )
    })?;
    let images = padded_images(&train)?;
    let labels = train.labels().context("MNIST without labels")?;
    let judge = Judge::bundled()?;
    let plan = Plan {
        floor_sizes: args.floor_n.clone(),
        degraded_size: args.degraded_n,
        repeats: args.repeats,
        seed: args.seed,
    };
    let digits = TrainingDigits {
        images: &images,
        labels,
    };
    outln!(
        "| digits (against the MNIST test set) | n | sets | FID mean ± sd | IS | precision | recall | s/set |"
    )?;
    outln!("|---|---|---|---|---|---|---|---|")?;
    // A row is printed as soon as it is done; a failed write shows again at the next line.
    let rows = calibrate(&judge, &digits, &plan, threads(args.threads), |r: &Row| {
        let _ = outln!(
            "| {} | {} | {} | {:.2} ± {:.2} | {:.2} | {:.3} | {:.3} | {:.1} |",
            r.name,
            r.n,
            r.sets.len(),
            r.fid.mean,
            r.fid.sd,
            r.inception_score.mean,
            r.precision.mean,
            r.recall.mean,
            r.seconds_per_set
        );
    })?;
    let floor = rows
        .iter()
        .find(|r| r.name == "real training digits" && r.n == args.degraded_n)
        .map(|r| r.fid.mean);
    if let Some(f) = floor {
        outln!("\nFID / floor at n = {}:", args.degraded_n)?;
        for r in rows.iter().filter(|r| r.name != "real training digits") {
            outln!("  {}: {:.1}x", r.name, r.fid.mean / f)?;
        }
    }
    let report = json!({
        "command": "evaluate fid-calibrate",
        "arguments": args,
        "plan": plan,
        "judge": judge_facts(&judge),
        "rows": rows,
        "timings": {"total_s": start.elapsed().as_secs_f64()},
        "build": build_info(),
    });
    write_json(&args.out, &report)?;
    Ok(ExitCode::SUCCESS)
}
