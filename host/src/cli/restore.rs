//! `host restore`: conditional sampling (eq. 24, exact likelihood step) for inpainting,
//! box inpainting, 4× super-resolution or denoising. For every input image (a PNG/JPEG, every
//! image of a folder, or a measurement file) it writes the samples as `host sample` does plus
//! measurement.png, measurement.safetensors, mean.png (the MMSE estimate), std.png (scaled so
//! its maximum is 255) and metrics.json (PSNR in both conventions and SSIM of every sample, of
//! the mean and of the measurement).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use tweedie_core::metrics::{psnr, psnr_minmax, ssim, SSIM_WIN};
use tweedie_core::ForwardOperator;

use super::common::threads;
use super::sample::{plan_len, run_json, write_samples, RunArgs};
use crate::cli::model_args::ModelArgs;
use crate::image_io::{png_from_planes, range_width, read_image, to_planes};
use crate::run::measurement::{parse_box, MeasureOptions, Measurement, Task};
use crate::run::output::{json_bytes, Outputs};
use crate::run::plan::{PlanArgs, Purpose};
use crate::run::progress::{human_seconds, Progress};
use crate::run::runner::{run_chains, Job};
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
    /// Missing fraction for --task inpaint.
    #[arg(long, default_value_t = 0.92)]
    pub p: f64,
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

fn check_sigma_y(s: f64) -> Result<()> {
    if !(s.is_finite() && s > 0.0) {
        bail!(
            "--sigma-y {s}: restore needs sigma_y > 0 (the likelihood step divides by sigma_y^2)"
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
            let mut m = m;
            if let Some(s) = args.sigma_y.filter(|s| *s != m.sigma_y) {
                eprintln!(
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
            let opts = MeasureOptions {
                task,
                sigma_y,
                seed: args.run.seed,
                p: args.p,
                rect: args.r#box.as_deref().map(parse_box).transpose()?,
            };
            let (files, folder) = if input.is_dir() {
                (image_files(input)?, true)
            } else {
                (vec![input.clone()], false)
            };
            files
                .iter()
                .map(|f| {
                    let img =
                        read_image(f, model.data_range, model.channels, model.size, args.resize)?;
                    let m = Measurement::make(
                        &img.image.data,
                        shape,
                        &opts,
                        model.data_range,
                        Some(img.sha256),
                    )?;
                    let name = folder.then(|| {
                        f.file_stem()
                            .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned())
                    });
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
fn scores(truth: &[f32], estimate: &[f32], model: &Model) -> Result<serde_json::Value> {
    let width = range_width(model.data_range);
    let e = |e: tweedie_core::Error| anyhow::anyhow!("metrics: {e}");
    let s = model.size;
    let ssim_value = if s >= SSIM_WIN {
        Some(ssim(truth, estimate, (model.channels, s, s), width).map_err(e)?)
    } else {
        None
    };
    Ok(json!({
        "psnr": psnr(truth, estimate, width).map_err(e)?,
        "psnr_minmax": psnr_minmax(truth, estimate).map_err(e)?,
        "ssim": ssim_value,
    }))
}

/// Runs `host restore`.
pub fn run(args: &RestoreArgs) -> Result<ExitCode> {
    let start = std::time::Instant::now();
    args.run.validate()?;
    let mut out = Outputs::in_folder(&args.run.out)?;
    let model = args.model.load()?;
    let problems = problems(args, &model)?;
    for problem in &problems {
        restore_one(args, &model, problem, &mut out, start)?;
    }
    out.commit();
    if !args.run.quiet {
        eprintln!(
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
    let m = &problem.measurement;
    let op = m.operator()?;
    let purpose = Purpose::Conditional {
        sigma_y: m.sigma_y,
        norm_sq: op.norm_sq(),
        sr: m.task == Task::Sr4,
    };
    let plan = args.plan.build(model, purpose)?;
    let n = args.run.n;
    let job = Job {
        plan: &plan,
        n,
        batch: args.run.batch(),
        seed: args.run.seed,
        final_denoise: args.plan.final_denoise,
        snapshot_every: args.run.snapshot_every.map(|k| k as usize),
        start: None,
        likelihood: Some((&op, &m.y, m.sigma_y)),
        truth: problem.truth.as_deref(),
        moments: true,
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
    let result = run_chains(&job, model, &progress);
    progress.finish();
    let result = result?;
    let prefix = problem.name.clone().map(PathBuf::from).unwrap_or_default();
    let mut sub = SubOutputs {
        outputs,
        prefix: &prefix,
    };
    sub.write_all(args, model, problem, &plan, &result, start)
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
        let (c, s, n) = (model.channels, model.size, args.run.n);
        let m = &problem.measurement;
        write_samples(self.outputs, self.prefix, model, result, n)?;
        let y_shape = m.y_shape();
        let y_png = png_from_planes(
            &to_planes(&m.y, model.data_range),
            c,
            y_shape[2],
            y_shape[3],
        )?;
        self.write("measurement.png", &y_png)?;
        self.write("measurement.safetensors", &m.to_bytes()?)?;
        let (mean, m2) = result.moments.clone().context("moments missing")?;
        let mean32: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
        self.write(
            "mean.png",
            &png_from_planes(&to_planes(&mean32, model.data_range), c, s, s)?,
        )?;
        let std: Vec<f64> = m2.iter().map(|&q| (q / n as f64).sqrt()).collect();
        let max_std = std.iter().copied().fold(0.0f64, f64::max);
        let scale = if max_std > 0.0 { 255.0 / max_std } else { 0.0 };
        let std_planes: Vec<u8> = std
            .iter()
            .map(|&v| (v * scale).round().clamp(0.0, 255.0) as u8)
            .collect();
        self.write("std.png", &png_from_planes(&std_planes, c, s, s)?)?;
        let mut metrics = json!({
            "task": m.task.name(),
            "sigma_y": m.sigma_y,
            "data_range": model.data_range.as_str(),
            "chains": n,
            "std_png_scale": scale,
            "std_max": max_std,
            "std": "population std over the chains (m2/N), per pixel; std.png = round(std * std_png_scale)",
            "psnr_conventions": {
                "psnr": "10 log10(MAX^2/MSE), MAX = data-range width (2 for [-1,1], 1 for [0,1])",
                "psnr_minmax": "both images min-max normalised first (official code, spec 11.1)",
                "ssim": "skimage defaults, data_range = range width (null below 7x7)",
            },
        });
        if let Some(truth) = &problem.truth {
            let len = model.chain_len();
            let per_sample = result
                .samples
                .chunks_exact(len)
                .map(|x| scores(truth, x, model))
                .collect::<Result<Vec<_>>>()?;
            let avg = |key: &str| {
                let v: Vec<f64> = per_sample.iter().filter_map(|s| s[key].as_f64()).collect();
                (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
            };
            metrics["samples"] = json!(per_sample);
            metrics["samples_average"] = json!({
                "psnr": avg("psnr"), "psnr_minmax": avg("psnr_minmax"), "ssim": avg("ssim"),
            });
            metrics["mean"] = scores(truth, &mean32, model)?;
            metrics["measurement"] = scores(truth, &m.as_input_image(), model)?;
            metrics["source_sha256"] = json!(m.source_sha256);
        }
        self.write("metrics.json", &json_bytes(&metrics)?)?;
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
