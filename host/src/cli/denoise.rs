//! `host denoise`: the network as the MMSE denoiser, D(x, σ) of one image (Tweedie's
//! formula). With --add-noise the input is first corrupted with σ·n (seeded), so a clean image
//! can be used for a demo.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;
use tweedie_core::noise;
use tweedie_core::plan::PlanStep;

use super::common::threads;
use crate::cli::model_args::ModelArgs;
use crate::image_io::{png_from_planes, read_image, to_planes};
use crate::run::memory;
use crate::run::output_policy::Outputs;

const EXAMPLE: &str = "\
Example:
  host denoise --weights W.safetensors --sigma 0.3 noisy.png clean.png";

/// Arguments of `host denoise`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLE)]
pub struct DenoiseArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub model: ModelArgs,
    /// Noise level σ of the input (VE scale, data-range units), > 0.
    #[arg(long, allow_hyphen_values = true)]
    pub sigma: f64,
    /// Add σ·n (seed --seed) to the input before denoising.
    #[arg(long)]
    pub add_noise: bool,
    /// Seed for --add-noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Center-crop and area-resize an input of another size.
    #[arg(long)]
    pub resize: bool,
    /// Threads of the forward pass.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub threads: Option<u64>,
    /// Input image (PNG or JPEG).
    pub input: PathBuf,
    /// Output PNG.
    pub output: PathBuf,
}

/// Runs `host denoise`.
pub fn run(args: &DenoiseArgs) -> Result<ExitCode> {
    if !(args.sigma.is_finite() && args.sigma > 0.0) {
        bail!("--sigma {}: must be a finite number > 0", args.sigma);
    }
    let mut inputs = vec![args.input.as_path()];
    inputs.extend(args.model.weights_file());
    Outputs::check_file(&args.output, "output", &inputs)?;
    let model = args.model.load()?;
    let img = read_image(
        &args.input,
        model.data_range,
        model.channels,
        model.size,
        args.resize,
    )?;
    let mut x = img.image.data;
    if args.add_noise {
        let s = args.sigma as f32;
        for (e, v) in x.iter_mut().enumerate() {
            *v += s * noise::gaussian(args.seed, 0, noise::COUNTER_MEASUREMENT, e as u64);
        }
    }
    let step = PlanStep::at_sigma(args.sigma);
    let jobs = threads(args.threads.map(|j| j as usize)) as u64;
    memory::check(
        "this denoiser call",
        memory::denoiser_bytes(&model, 1, jobs)
            .saturating_add(jobs.saturating_mul(memory::THREAD_BYTES)),
    )?;
    let mut d = vec![0.0f32; x.len()];
    let mut denoiser = model.make(jobs as usize);
    if let Err(e) = denoiser.denoise(&x, 1, &step, &mut d) {
        match denoiser.take_failure() {
            Some(net) => bail!("denoiser failed: {net:#}"),
            None => bail!("denoiser failed at sigma {}: {e}", args.sigma),
        }
    }
    if d.iter().any(|v| !v.is_finite()) {
        bail!("the denoiser produced NaN/Inf at sigma {}", args.sigma);
    }
    let s = model.size;
    let mut out = Outputs::files();
    out.write(
        &args.output,
        &png_from_planes(&to_planes(&d, model.data_range), model.channels, s, s)?,
    )?;
    out.commit()?;
    Ok(ExitCode::SUCCESS)
}
