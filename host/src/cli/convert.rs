//! `host convert`: a PyTorch checkpoint (.pt/.pth, torch.save zip format) → a safetensors
//! weights file carrying its config and `tweedie.*` metadata, so that
//! `host sample --weights model.safetensors` needs no other flag.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::common::grouped;
use crate::convert::{convert, verify_written, Checkpoint, ConvertOptions};
use crate::outln;
use crate::run::output_policy::Outputs;
use tweedie_nn::weights::meta::{Kind, WeightsSet};

const EXAMPLE: &str = "\
Examples:
  host convert --from ffhq_10m.pt --to adm_ffhq.safetensors --config adm-ffhq256
  host convert --from checkpoint_48.pth --to ncsnpp_ffhq.safetensors --config ncsnpp-ffhq256
  host convert --from checkpoint_48.pth --to ncsnpp_ffhq_model.safetensors --weights-set model

Reads the zip format of torch.save (PyTorch >= 1.6). The pickle inside is interpreted, never
executed: only dicts, lists, tuples, numbers, strings and tensors are accepted, and any other
global (a class or function) is refused by name. Plain state_dicts (DPS, guided-diffusion) and
score_sde checkpoints (model, ema, optimizer, step; `module.` prefix removed) are understood.

Metadata written: ADM -> kind vp, output eps, noise_input t, data_range -1,1, the VP sigma
range; NCSN++ -> kind ve, output score, noise_input sigma, data_range 0,1, sigma_min/max of
the config.";

/// Arguments of `host convert`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLE)]
pub struct ConvertArgs {
    /// The PyTorch checkpoint (torch.save zip format).
    #[arg(long, value_name = "CKPT.pt|.pth")]
    pub from: PathBuf,
    /// The safetensors file to write (atomically: a temporary file, checked, then renamed).
    #[arg(long, value_name = "model.safetensors")]
    pub to: PathBuf,
    /// score_sde checkpoints: `ema` (default; the EMA shadow parameters, which score_sde
    /// samples and evaluates with) or `model` (the raw parameters, which the Tweedie paper's
    /// official code loaded). For a plain state_dict it only labels the file (default model).
    #[arg(long, value_name = "ema|model")]
    pub weights_set: Option<String>,
    /// Model config: a JSON file or a built-in name (adm-ffhq256, ncsnpp-ffhq256). Default:
    /// the built-in whose state_dict matches the checkpoint's names and shapes.
    #[arg(long, value_name = "C.json|NAME")]
    pub config: Option<String>,
    /// Expected network scale (vp: ADM, ve: NCSN++); narrows config inference and is checked.
    #[arg(long, value_name = "vp|ve")]
    pub kind: Option<String>,
    /// Store conv and linear weights as f16 (biases, norms, NCSN++'s Fourier frequencies and
    /// unread buffers stay f32).
    #[arg(long)]
    pub f16: bool,
}

/// Runs `host convert`.
pub fn run(args: &ConvertArgs) -> Result<ExitCode> {
    let weights_set = match args.weights_set.as_deref() {
        None => None,
        Some(s @ ("ema" | "model")) => Some(s.parse::<WeightsSet>()?),
        Some(other) => anyhow::bail!("--weights-set {other}: expected ema or model"),
    };
    let kind = args
        .kind
        .as_deref()
        .map(|k| {
            k.parse::<Kind>()
                .map_err(|e| anyhow::anyhow!("--kind: {e}"))
        })
        .transpose()?;
    Outputs::check_file(&args.to, "--to", &[&args.from])?;
    let ckpt = Checkpoint::open(&args.from)?;
    let source = args.from.file_name().map_or_else(
        || args.from.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let opts = ConvertOptions {
        config: args.config.clone(),
        weights_set,
        kind,
        f16: args.f16,
        source,
    };
    let converted = convert(&ckpt, &opts)?;
    drop(ckpt);
    let mut out = Outputs::files();
    out.write(&args.to, &converted.bytes)?;
    verify_written(&out.root().join(out.staged(&args.to)?), &converted.spec)?;
    out.commit()?;
    outln!(
        "wrote {}: {} config {}, {} tensors, {} parameters, {} weights{}, {:.1} MB",
        args.to.display(),
        match converted.config {
            tweedie_nn::model::config::ModelConfig::Adm(_) => "adm",
            tweedie_nn::model::config::ModelConfig::Ncsnpp(_) => "ncsnpp",
        },
        converted.config_label,
        converted.tensors,
        grouped(converted.parameters as u64),
        converted.weights_set.as_str(),
        if args.f16 { ", f16" } else { "" },
        converted.bytes.len() as f64 / 1e6
    )?;
    Ok(ExitCode::SUCCESS)
}
