//! `host parity`: load a network strictly, run it on reference inputs, compare with the
//! reference outputs under the formats.md §7 criterion.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use super::common::{grouped, precision, resolve_config, threads};
use super::EXIT_CHECK_FAILED;
use crate::cli::model_args::ConvArg;
use crate::{errln, outln};
use tweedie_nn::model::adm::forward::{AdmModel, Input};
use tweedie_nn::model::adm::{AdmArch, AdmConfig};
use tweedie_nn::model::config::ModelConfig;
use tweedie_nn::model::ncsnpp::{self, NcsnppArch, NcsnppConfig, NcsnppModel};
use tweedie_nn::parity::{compare, TOL_ADM, TOL_F16, TOL_NCSNPP};
use tweedie_nn::tensors::{SafetensorsFile, TensorF32};
use tweedie_nn::weights::{Weights, WeightsMeta};

const EXAMPLE: &str = "\
Example:
  host parity --weights golden/adm_small/weights.safetensors \\
              --config golden/adm_small/config.json --io golden/adm_small/io.safetensors

Exit code: 0 every sample within tolerance, 1 some sample outside it, 2 error.";

/// Arguments of `host parity`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLE)]
pub struct ParityArgs {
    /// Weights (safetensors, PyTorch state_dict names; f32, f16 or f64 tensors).
    #[arg(long, value_name = "W.safetensors")]
    pub weights: PathBuf,
    /// Model config: a JSON file or a built-in name (adm-ffhq256, ncsnpp-ffhq256). Default:
    /// the weights' `tweedie.config` metadata.
    #[arg(long, value_name = "C.json|NAME")]
    pub config: Option<String>,
    /// Reference tensors: `x` [N, C, H, W] inputs, `out` [N, C', H, W] outputs, and `t` [N]
    /// timesteps (ADM) or `sigma` [N] noise levels (NCSN++, whose `out` is the score).
    #[arg(long, value_name = "IO.safetensors")]
    pub io: PathBuf,
    /// Per-sample pass: max|ours − ref| ≤ tol · max(1, max|ref|). Default 1e-4 (ADM) or 2e-4
    /// (NCSN++), 2e-3 with --f16.
    #[arg(long, value_name = "TOL")]
    pub tol: Option<f64>,
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

/// The reference tensors of an io file, shape-checked against the model. `cond` is the
/// per-sample conditioning: timesteps `t` (ADM) or noise levels `sigma` (NCSN++).
struct Reference {
    x: TensorF32,
    cond: TensorF32,
    cond_name: &'static str,
    out: TensorF32,
    batch: usize,
    height: usize,
    width: usize,
}

/// The model's channels in and out, and its input-size check.
struct Shape<'a> {
    in_channels: usize,
    out_channels: usize,
    check_size: &'a dyn Fn(usize, usize) -> Result<()>,
}

fn read_reference(
    path: &std::path::Path,
    cond_name: &'static str,
    model: &Shape<'_>,
) -> Result<Reference> {
    let file = SafetensorsFile::open(path)?;
    let (x, cond, out) = (
        file.tensor_f32("x")?,
        file.tensor_f32(cond_name)?,
        file.tensor_f32("out")?,
    );
    let label = file.label();
    let [n, ci, h, w] = x.shape[..] else {
        bail!(
            "{label}: x has shape {:?}, expected [N, {}, H, W]",
            x.shape,
            model.in_channels
        );
    };
    if ci != model.in_channels {
        bail!(
            "{label}: x has {ci} channels but the model takes {} (shape {:?})",
            model.in_channels,
            x.shape
        );
    }
    if cond.shape != [n] {
        bail!(
            "{label}: {cond_name} has shape {:?}, expected [{n}] (one per sample)",
            cond.shape
        );
    }
    if out.shape != [n, model.out_channels, h, w] {
        bail!(
            "{label}: out has shape {:?}, expected [{n}, {}, {h}, {w}]",
            out.shape,
            model.out_channels
        );
    }
    (model.check_size)(h, w).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    Ok(Reference {
        x,
        cond,
        cond_name,
        out,
        batch: n,
        height: h,
        width: w,
    })
}

/// Prints the model line of the report.
fn describe(
    name: &str,
    weights: &Weights,
    reference: &Reference,
    channels: usize,
) -> anyhow::Result<()> {
    outln!(
        "model: {name}, {} parameters ({:.1} MB as stored); {} samples of {}x{}x{}",
        grouped(weights.parameter_count() as u64),
        weights.size_bytes() as f64 / 1e6,
        reference.batch,
        channels,
        reference.height,
        reference.width
    )?;
    Ok(())
}

/// ADM: `out` is the network output for timesteps `t`.
fn run_adm(
    args: &ParityArgs,
    file: SafetensorsFile,
    config: &AdmConfig,
    jobs: usize,
) -> Result<(Vec<f32>, Reference)> {
    let arch = AdmArch::new(config)?;
    let weights = Weights::load(&file, &arch.state_dict(), precision(args.f16))?;
    drop(file); // the reference and the forward need the memory
    let shape = Shape {
        in_channels: config.in_channels,
        out_channels: config.out_channels,
        check_size: &|h, w| arch.check_input_size(h, w),
    };
    let reference = read_reference(&args.io, "t", &shape)?;
    describe("adm", &weights, &reference, config.in_channels)?;
    let input = Input {
        x: &reference.x.data,
        t: &reference.cond.data,
        batch: reference.batch,
        height: reference.height,
        width: reference.width,
    };
    let mut ours = vec![0.0f32; reference.out.data.len()];
    let (h, w) = (reference.height, reference.width);
    AdmModel::with_policy(&arch, &weights, h, w, jobs, args.conv.into())?
        .forward(&input, &mut ours)?;
    Ok((ours, reference))
}

/// NCSN++: `out` is the score `model(x, sigma)` (score_sde's network output).
fn run_ncsnpp(
    args: &ParityArgs,
    file: SafetensorsFile,
    config: &NcsnppConfig,
    jobs: usize,
) -> Result<(Vec<f32>, Reference)> {
    let arch = NcsnppArch::new(config)?;
    let weights = Weights::load(&file, &arch.state_dict(), precision(args.f16))?;
    drop(file); // the reference and the forward need the memory
    let shape = Shape {
        in_channels: arch.channels(),
        out_channels: arch.channels(),
        check_size: &|h, w| arch.check_input_size(h, w),
    };
    let reference = read_reference(&args.io, "sigma", &shape)?;
    describe("ncsnpp", &weights, &reference, arch.channels())?;
    let input = ncsnpp::Input {
        x: &reference.x.data,
        sigma: &reference.cond.data,
        batch: reference.batch,
    };
    let mut ours = vec![0.0f32; reference.out.data.len()];
    NcsnppModel::with_policy(&arch, &weights, jobs, args.conv.into())?.forward(
        &input,
        ncsnpp::Output::Score,
        &mut ours,
    )?;
    Ok((ours, reference))
}

/// Runs `host parity`.
pub fn run(args: &ParityArgs) -> Result<ExitCode> {
    if let Some(tol) = args.tol.filter(|t| !(*t >= 0.0 && t.is_finite())) {
        bail!("--tol {tol}: must be a finite number >= 0");
    }
    let file = SafetensorsFile::open(&args.weights)?;
    let meta = WeightsMeta::parse(&file.metadata()?)
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", file.label()))?;
    for key in &meta.unknown {
        errln!(
            "warning: {}: unknown metadata key {key} ignored",
            file.label()
        );
    }
    let config = resolve_config(args.config.as_deref(), &meta, file.label())?;
    let jobs = threads(args.threads.map(|j| j as usize));
    let ((ours, reference), default_tol) = match &config {
        ModelConfig::Adm(c) => (run_adm(args, file, c, jobs)?, TOL_ADM),
        ModelConfig::Ncsnpp(c) => (run_ncsnpp(args, file, c, jobs)?, TOL_NCSNPP),
    };
    let tol = args
        .tol
        .unwrap_or(if args.f16 { TOL_F16 } else { default_tol });
    let results = compare(&ours, &reference.out.data, reference.batch, tol)?;
    for (i, s) in results.iter().enumerate() {
        let verdict = if s.pass { "ok" } else { "FAIL" };
        outln!(
            "sample {i} ({} = {}): max abs err {:.3e}, max |ref| {:.3e}, rel err {:.3e} (tol {tol:e}) {verdict}",
            reference.cond_name, reference.cond.data[i], s.max_abs, s.max_ref, s.rel
        )?;
    }
    let failed = results.iter().filter(|s| !s.pass).count();
    if failed > 0 {
        outln!(
            "parity FAILED: {failed} of {} samples outside tolerance",
            results.len()
        )?;
        return Ok(ExitCode::from(EXIT_CHECK_FAILED));
    }
    outln!("parity ok: {} samples within tolerance", results.len())?;
    Ok(ExitCode::SUCCESS)
}
