//! `host restore`: conditional sampling (eq. 24, exact likelihood step) for inpainting,
//! box inpainting, 4× super-resolution or denoising. For every input image (a PNG/JPEG, every
//! image of a folder, or a measurement file) it writes the samples as `host sample` does plus
//! measurement.png, measurement.safetensors, mean.png (the MMSE estimate), std.png (scaled so
//! its maximum is 255) and metrics.json (PSNR in both conventions and SSIM of every sample, of
//! the mean and of the measurement).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use tweedie_core::metrics::{psnr, psnr_minmax, ssim, SSIM_WIN};
use tweedie_core::ForwardOperator;

use super::common::threads;
use super::plan_args::PlanArgs;
use super::sample::{
    image_shape, no_chains, plan_len, run_json, write_chain_shard, write_samples, RunArgs,
};
use crate::cli::model_args::ModelArgs;
use crate::errln;
use crate::image_io::{png_from_planes, range_width, read_image, to_planes};
use crate::run::manifest::{InputFile, Manifest, ManifestParts};
use crate::run::measurement::{MeasureOptions, Measurement, Task};
use crate::run::output::{json_bytes, safetensors_bytes};
use crate::run::output_policy::Outputs;
use crate::run::plan::{AnyPlan, Purpose};
use crate::run::progress::{human_seconds, Progress};
use crate::run::runner::{run_chains, Job, RunOutput};
use crate::run::shard::Shard;
use crate::run::stream::ImageShape;
use tweedie_nn::denoiser::Model;

const EXAMPLE: &str = "\
Examples:
  host restore --weights W.safetensors --task sr4 --input gt.png --sigma-y 0.2 --n 16 --out sr
  host restore --weights W.safetensors --task inpaint --input images/ --preset vp-inpaint --out ip
  host restore --weights W.safetensors --measurement y.safetensors --n 8 --out r";

/// Arguments of `host restore`.
#[derive(Debug, Args, Serialize)]
#[command(after_help = EXAMPLE)]
pub struct RestoreArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub plan: PlanArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub run: RunArgs,
    /// The inverse problem (with --input).
    #[arg(long, value_enum)]
    pub task: Option<Task>,
    /// Ground truth: a PNG/JPEG, or a folder (every image in it is restored).
    #[arg(long, value_name = "GT.png|DIR")]
    pub input: Option<PathBuf>,
    /// A measurement file from `host measure` (instead of --input; no ground truth).
    #[arg(long, value_name = "y.safetensors")]
    pub measurement: Option<PathBuf>,
    /// Measurement noise σ_y in data-range units (default 0.2; must be > 0).
    #[arg(allow_hyphen_values = true, long, value_name = "S")]
    pub sigma_y: Option<f64>,
    /// Missing fraction for --task inpaint (default 0.92).
    #[arg(long)]
    pub p: Option<f64>,
    /// Box x,y,w,h for --task inpaint-box (default: the centered half-size box).
    #[arg(long, value_name = "x,y,w,h")]
    pub r#box: Option<String>,
    /// Center-crop and area-resize inputs of another size (and convert gray ↔ RGB).
    #[arg(long)]
    pub resize: bool,
}

/// One problem to solve.
struct Problem {
    name: Option<String>,
    truth: Option<Vec<f32>>,
    measurement: Measurement,
}

fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "--input {}: no .png/.jpg/.jpeg images in this folder",
            dir.display()
        );
    }
    Ok(files)
}

/// The output folder of each image of an `--input` folder: its file name without the
/// extension. A name that is not one plain folder name (empty, starting with `.`: `..png`,
/// `...png`, holding a control character such as a line break, or a shard folder's
/// `shard.json`) or that two images share (`a.png`, `a.jpeg`) is an error naming the files, so
/// no image writes outside `--out` or over another's results. `host merge` derives the names
/// of a sharded run's images again from its recorded inputs with this function.
pub fn folder_names(files: &[PathBuf]) -> Result<Vec<String>> {
    let mut taken: BTreeMap<String, &Path> = BTreeMap::new();
    let mut names = Vec::with_capacity(files.len());
    for f in files {
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.is_empty()
            || name.starts_with('.')
            || name.contains(char::is_control)
            || name == crate::run::manifest::MANIFEST
        {
            bail!(
                "{}: its results would go to folder {name:?}, not a plain folder name; rename it",
                f.display()
            );
        }
        if let Some(other) = taken.insert(name.clone(), f) {
            bail!(
                "{} and {}: both would write their results to folder {name:?}; rename one",
                other.display(),
                f.display()
            );
        }
        names.push(name);
    }
    Ok(names)
}

fn check_sigma_y(s: f64) -> Result<()> {
    if !(s.is_finite() && s > 0.0) {
        bail!(
            "--sigma-y {s}: restore needs a finite sigma_y > 0 (the likelihood step divides by sigma_y^2)"
        );
    }
    Ok(())
}

fn problems(args: &RestoreArgs, model: &Model) -> Result<Vec<Problem>> {
    let shape = (model.channels, model.size, model.size);
    match (&args.input, &args.measurement) {
        (Some(_), Some(_)) => bail!("pass either --input or --measurement, not both"),
        (None, None) => {
            bail!("pass --input GT.png|DIR (with --task) or --measurement y.safetensors")
        }
        (None, Some(path)) => {
            let m = Measurement::read(path, model.channels, model.size)?;
            if m.data_range != model.data_range {
                bail!(
                    "{}: measurement data range {} differs from the model's {}",
                    path.display(),
                    m.data_range.as_str(),
                    model.data_range.as_str()
                );
            }
            if let Some(task) = args.task.filter(|t| *t != m.task) {
                bail!(
                    "--task {} contradicts {} (tweedie.task {}); drop --task",
                    task.name(),
                    path.display(),
                    m.task.name()
                );
            }
            if args.p.is_some() || args.r#box.is_some() {
                bail!("--p and --box make a measurement from --input; --measurement has its own");
            }
            let mut m = m;
            if let Some(s) = args.sigma_y.filter(|s| *s != m.sigma_y) {
                errln!(
                    "warning: --sigma-y {s} differs from tweedie.sigma_y {} in {}; using --sigma-y",
                    m.sigma_y,
                    path.display()
                );
                m.sigma_y = s;
            }
            check_sigma_y(m.sigma_y)?;
            Ok(vec![Problem {
                name: None,
                truth: None,
                measurement: m,
            }])
        }
        (Some(input), None) => {
            let task = args
                .task
                .context("--task inpaint|inpaint-box|sr4|denoise is required with --input")?;
            let sigma_y = args.sigma_y.unwrap_or(tweedie_core::plan::PRESET_SIGMA_Y);
            check_sigma_y(sigma_y)?;
            let opts =
                MeasureOptions::new(task, sigma_y, args.run.seed, args.p, args.r#box.as_deref())?;
            let (files, names) = if input.is_dir() {
                let files = image_files(input)?;
                let names = folder_names(&files)?.into_iter().map(Some).collect();
                (files, names)
            } else {
                (vec![input.clone()], vec![None])
            };
            files
                .iter()
                .zip(names)
                .map(|(f, name)| {
                    let img =
                        read_image(f, model.data_range, model.channels, model.size, args.resize)?;
                    let m = Measurement::make(
                        &img.image.data,
                        shape,
                        &opts,
                        model.data_range,
                        Some(img.sha256),
                    )?;
                    Ok(Problem {
                        name,
                        truth: Some(img.image.data),
                        measurement: m,
                    })
                })
                .collect()
        }
    }
}

/// PSNR (both conventions) and SSIM of an estimate against the truth.
pub fn scores(truth: &[f32], estimate: &[f32], shape: ImageShape) -> Result<serde_json::Value> {
    let width = range_width(shape.range);
    let e = |e: tweedie_core::Error| anyhow::anyhow!("metrics: {e}");
    let s = shape.size;
    let ssim_value = if s >= SSIM_WIN {
        Some(ssim(truth, estimate, (shape.channels, s, s), width).map_err(e)?)
    } else {
        None
    };
    Ok(json!({
        "psnr": psnr(truth, estimate, width).map_err(e)?,
        // Undefined (null) when either image is constant: min-max normalisation divides by 0.
        "psnr_minmax": psnr_minmax(truth, estimate).ok(),
        "ssim": ssim_value,
    }))
}

/// Runs `host restore`.
pub fn run(args: &RestoreArgs) -> Result<ExitCode> {
    let start = std::time::Instant::now();
    args.run.validate()?;
    let shard = args.run.shard()?;
    let inputs = [
        args.input.as_deref(),
        args.measurement.as_deref(),
        args.model.weights_file(),
    ];
    let inputs: Vec<&Path> = inputs.into_iter().flatten().collect();
    let mut out = Outputs::in_folder(&args.run.out, &inputs)?;
    let model = args.model.load()?;
    let problems = problems(args, &model)?;
    if let Some(shard) = shard {
        return run_shard(args, &model, &problems, shard, out, start);
    }
    for problem in &problems {
        restore_one(args, &model, problem, &mut out, start)?;
    }
    out.commit()?;
    if !args.run.quiet {
        errln!(
            "restored {} image(s) into {} in {}",
            problems.len(),
            args.run.out.display(),
            human_seconds(start.elapsed().as_secs_f64())
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn restore_one(
    args: &RestoreArgs,
    model: &Model,
    problem: &Problem,
    outputs: &mut Outputs,
    start: std::time::Instant,
) -> Result<()> {
    let (plan, result) = sample_problem(args, model, problem, 0..args.run.n)?;
    let prefix = problem.name.clone().map(PathBuf::from).unwrap_or_default();
    let mut sub = SubOutputs {
        outputs,
        prefix: &prefix,
    };
    sub.write_all(args, model, problem, &plan, &result, start)
}

/// Runs chains `chains` (of `--n`) of one problem; moments only when they are all of them.
fn sample_problem(
    args: &RestoreArgs,
    model: &Model,
    problem: &Problem,
    chains: std::ops::Range<usize>,
) -> Result<(AnyPlan, RunOutput)> {
    let m = &problem.measurement;
    let op = m.operator()?;
    let purpose = Purpose::Conditional {
        sigma_y: m.sigma_y,
        norm_sq: op.norm_sq(),
        sr: m.task == Task::Sr4,
    };
    let plan = args.plan.build(model, purpose)?;
    let n = chains.len();
    args.run.check_memory(model, n, plan_len(&plan))?;
    let job = Job {
        plan: &plan,
        n,
        first_chain: chains.start,
        batch: args.run.batch(),
        seed: args.run.seed,
        final_denoise: args.plan.final_denoise,
        snapshot_every: args.run.snapshot_every.map(|k| k as usize),
        start: None,
        likelihood: Some((&op, &m.y, m.sigma_y)),
        truth: problem.truth.as_deref(),
        // metrics.json's moments are accumulated by write_estimates, in chain order.
        moments: false,
        threads: threads(args.run.threads.map(|j| j as usize)),
    };
    let progress = Progress::new((n * plan_len(&plan)) as u64, args.run.quiet);
    progress.println(&format!(
        "restoring {} ({}, sigma_y {}) with {n} chains of {} steps",
        problem.name.as_deref().unwrap_or("image"),
        m.task.name(),
        m.sigma_y,
        plan_len(&plan)
    ));
    let result = if n == 0 {
        Ok(no_chains(&plan, args.plan.final_denoise))
    } else {
        run_chains(&job, model, &progress)
    };
    progress.finish();
    Ok((plan, result?))
}

/// The input files of the run (images or the measurement), with their sha256.
fn input_files(args: &RestoreArgs) -> Result<Vec<InputFile>> {
    let files = match (&args.input, &args.measurement) {
        (Some(dir), _) if dir.is_dir() => image_files(dir)?,
        (Some(file), _) => vec![file.clone()],
        (None, Some(file)) => vec![file.clone()],
        (None, None) => Vec::new(),
    };
    files
        .iter()
        .map(|f| {
            Ok(InputFile {
                path: f.display().to_string(),
                sha256: tweedie_nn::sha256::of_file(f)?,
            })
        })
        .collect()
}

/// A shard's facts about its one image that the merged metrics.json needs besides the chains.
pub const SHARD_IMAGE: &str = "image.json";
/// A shard's copy of the ground truth (tensor `truth`, C×H×W).
pub const SHARD_TRUTH: &str = "truth.safetensors";

/// `--shard`: a folder's block of images (each restored as in the single run), or one
/// image's block of chains (samples, measurement and what its metrics need).
fn run_shard(
    args: &RestoreArgs,
    model: &Model,
    problems: &[Problem],
    shard: Shard,
    mut out: Outputs,
    start: std::time::Instant,
) -> Result<ExitCode> {
    let folder = args.input.as_ref().is_some_and(|p| p.is_dir());
    let shape = image_shape(model);
    let (units, names, info) = if folder {
        let block = shard.block(problems.len());
        for problem in &problems[block.clone()] {
            restore_one(args, model, problem, &mut out, start)?;
        }
        let names = problems[block]
            .iter()
            .filter_map(|p| p.name.clone())
            .collect();
        let info = json!({"command": "restore", "arguments": args, "model": model.description,
            "build": crate::run::output::build_info()});
        (("images", problems.len()), names, info)
    } else {
        let problem = &problems[0];
        let n = args.run.n;
        let block = shard.block(n);
        let (plan, result) = sample_problem(args, model, problem, block.clone())?;
        let root = Path::new("");
        write_chain_shard(&mut out, root, shape, &result.samples, block.start)?;
        let m = &problem.measurement;
        write_measurement(&mut out, root, shape, m)?;
        let measurement_scores = match &problem.truth {
            Some(truth) => {
                let bytes = safetensors_bytes(
                    &[("truth", vec![shape.channels, shape.size, shape.size], truth)],
                    Default::default(),
                )?;
                out.write(SHARD_TRUTH, &bytes)?;
                Some(scores(truth, &m.as_input_image(), shape)?)
            }
            None => None,
        };
        let facts = json!({"task": m.task.name(), "sigma_y": m.sigma_y,
            "measurement_scores": measurement_scores, "source_sha256": m.source_sha256});
        out.write(SHARD_IMAGE, &json_bytes(&facts)?)?;
        let mut info = run_json(
            "restore",
            args,
            model,
            &args.plan,
            &plan,
            &result,
            start.elapsed().as_secs_f64(),
        );
        info["image"] = json!(problem.name);
        info["seed"] = json!(args.run.seed);
        (("chains", n), Vec::new(), info)
    };
    let mut manifest = Manifest::new(
        ManifestParts {
            command: "restore",
            shard,
            units,
            weights: args.model.weights.as_deref(),
            inputs: input_files(args)?,
            backend: "cpu",
            run: info,
            image: shape,
            names,
        },
        args,
    )?;
    manifest.seal(out)?;
    if !args.run.quiet {
        errln!(
            "wrote {} ({}) to {}",
            shard.label(),
            manifest.describe_block(),
            args.run.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// measurement.png and measurement.safetensors.
fn write_measurement(
    out: &mut Outputs,
    prefix: &Path,
    shape: ImageShape,
    m: &Measurement,
) -> Result<()> {
    let y_shape = m.y_shape();
    let y_png = png_from_planes(
        &to_planes(&m.y, shape.range),
        shape.channels,
        y_shape[2],
        y_shape[3],
    )?;
    out.write(prefix.join("measurement.png"), &y_png)?;
    out.write(prefix.join("measurement.safetensors"), &m.to_bytes()?)
}

/// What metrics.json says about one image besides its chains.
pub struct ImageFacts<'a> {
    /// The task's name.
    pub task: &'a str,
    /// σ_y.
    pub sigma_y: f64,
    /// The ground truth, when known.
    pub truth: Option<&'a [f32]>,
    /// Scores of the measurement against the truth.
    pub measurement_scores: Option<serde_json::Value>,
    /// sha256 of the ground-truth file.
    pub source_sha256: Option<String>,
}

/// mean.png, std.png and metrics.json of `n` chains that `src` gives in chain order: the
/// moments and every sample's scores are accumulated chain by chain (single run and merge).
pub fn write_estimates(
    out: &mut Outputs,
    prefix: &Path,
    shape: ImageShape,
    facts: &ImageFacts<'_>,
    n: usize,
    src: &dyn crate::run::stream::ChainSource,
) -> Result<()> {
    let (c, s) = (shape.channels, shape.size);
    let mut moments = crate::run::aggregate::ChainMoments::new(shape.len());
    let mut per_sample = Vec::new();
    src.each(&mut |chain| {
        moments.push(chain)?;
        if let Some(truth) = facts.truth {
            per_sample.push(scores(truth, chain, shape)?);
        }
        Ok(())
    })?;
    if moments.count() != n as u64 {
        bail!("internal error: {} chains for {n}", moments.count());
    }
    let (mean, m2) = moments.into_parts();
    let mean32: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
    out.write(
        prefix.join("mean.png"),
        &png_from_planes(&to_planes(&mean32, shape.range), c, s, s)?,
    )?;
    let std: Vec<f64> = m2.iter().map(|&q| (q / n as f64).sqrt()).collect();
    let max_std = std.iter().copied().fold(0.0f64, f64::max);
    let scale = if max_std > 0.0 { 255.0 / max_std } else { 0.0 };
    let std_planes: Vec<u8> = std
        .iter()
        .map(|&v| (v * scale).round().clamp(0.0, 255.0) as u8)
        .collect();
    out.write(
        prefix.join("std.png"),
        &png_from_planes(&std_planes, c, s, s)?,
    )?;
    let mut metrics = json!({
        "task": facts.task,
        "sigma_y": facts.sigma_y,
        "data_range": shape.range.as_str(),
        "chains": n,
        "std_png_scale": scale,
        "std_max": max_std,
        "std": "population std over the chains (m2/N), per pixel; std.png = round(std * std_png_scale)",
        "psnr_conventions": {
            "psnr": "10 log10(MAX^2/MSE), MAX = data-range width (2 for [-1,1], 1 for [0,1])",
            "psnr_minmax": "both images min-max normalised first (official code, spec 11.1); null where undefined (a constant image)",
            "ssim": "skimage defaults, data_range = range width (null below 7x7)",
        },
    });
    if let Some(truth) = facts.truth {
        let avg = |key: &str| {
            let v: Vec<f64> = per_sample.iter().filter_map(|s| s[key].as_f64()).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        metrics["samples"] = json!(per_sample);
        metrics["samples_average"] = json!({
            "psnr": avg("psnr"), "psnr_minmax": avg("psnr_minmax"), "ssim": avg("ssim"),
        });
        metrics["mean"] = scores(truth, &mean32, shape)?;
        metrics["measurement"] = json!(facts.measurement_scores);
        metrics["source_sha256"] = json!(facts.source_sha256);
    }
    out.write(prefix.join("metrics.json"), &json_bytes(&metrics)?)
}

struct SubOutputs<'a> {
    outputs: &'a mut Outputs,
    prefix: &'a Path,
}

impl SubOutputs<'_> {
    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.outputs.write(self.prefix.join(name), bytes)
    }

    fn write_all(
        &mut self,
        args: &RestoreArgs,
        model: &Model,
        problem: &Problem,
        plan: &crate::run::plan::AnyPlan,
        result: &crate::run::runner::RunOutput,
        start: std::time::Instant,
    ) -> Result<()> {
        let shape = image_shape(model);
        let n = args.run.n;
        let m = &problem.measurement;
        write_samples(self.outputs, self.prefix, model, result, n)?;
        write_measurement(self.outputs, self.prefix, shape, m)?;
        let measurement_scores = problem
            .truth
            .as_deref()
            .map(|truth| scores(truth, &m.as_input_image(), shape))
            .transpose()?;
        let facts = ImageFacts {
            task: m.task.name(),
            sigma_y: m.sigma_y,
            truth: problem.truth.as_deref(),
            measurement_scores,
            source_sha256: m.source_sha256.clone(),
        };
        let chains = crate::run::stream::InMemory {
            data: &result.samples,
            len: shape.len(),
        };
        write_estimates(self.outputs, self.prefix, shape, &facts, n, &chains)?;
        let mut info = run_json(
            "restore",
            args,
            model,
            &args.plan,
            plan,
            result,
            start.elapsed().as_secs_f64(),
        );
        info["image"] = json!(problem.name);
        info["seed"] = json!(args.run.seed);
        self.write("run.json", &json_bytes(&info)?)?;
        Ok(())
    }
}
