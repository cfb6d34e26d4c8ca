//! `host train`: train an ADM U-Net from scratch (VP or VE preset), with checkpoints,
//! bit-exact `--resume`, a loss log and the exported EMA weights (formats §3 metadata).
//!
//! Files next to `--out M.safetensors`: `M.ckpt.safetensors` (checkpoint, atomic, also
//! written on Ctrl-C / SIGTERM), `M.loss.csv` (step, loss, grad_norm, lr), `M.loss.png` and,
//! with `--sample-every`, sample grids in `M.samples/`.
//!
//! Every setting and output path is checked before the first file is written. A run stopped
//! by SIGINT or SIGTERM finishes its step, writes the checkpoint and exits 130 or 143; a run
//! that fails before its first checkpoint removes the loss log it started.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use half::f16;
use safetensors::Dtype;

use super::common::threads;
use crate::errln;
use crate::run::output_policy::{OutputFile, RunLock};
use crate::run::progress::human_seconds;
use tweedie_nn::data::{Dataset, MnistSplit};
use tweedie_nn::model::adm::AdmArch;
use tweedie_nn::model::config::ModelConfig;
use tweedie_nn::sha256;
use tweedie_nn::tensors::{serialize_sorted, TensorBytes};
use tweedie_nn::train::adm_run::{AdmRun, Preset, RunConfig, RESUME_RULE};
use tweedie_nn::train::checkpoint::{Integrity, TrainState};
use tweedie_nn::train::log::{loss_curve_png, read_column, LossCsv};
use tweedie_nn::train::optim::AdamWConfig;
use tweedie_nn::train::params::ParamLayout;
use tweedie_nn::train::signal::StopFlag;
use tweedie_nn::weights::spec::ParamKind;

fn resume_help() -> String {
    format!(
        "Continue from a checkpoint (M.ckpt.safetensors). {RESUME_RULE} The checkpoint's \
         integrity hash is checked; one written before checkpoint format 2 (no hash) resumes \
         with a warning."
    )
}

const EXAMPLE: &str = "\
Example:
  host train --data data/mnist --preset vp --config models/mnist-vp.json --steps 20000 \\
    --batch 64 --lr 2e-4 --warmup 500 --ema-decay 0.999 --seed 1 --out mnist-vp.safetensors \\
    --checkpoint-every 1000

Ctrl-C or SIGTERM (any number of times): the run finishes its step, writes the checkpoint and
exits 130 (SIGINT) or 143 (SIGTERM); continue it with --resume M.ckpt.safetensors.";

/// Arguments of `host train`.
#[derive(Debug, Args)]
#[command(after_help = EXAMPLE)]
pub struct TrainArgs {
    /// Training data: a folder with the MNIST IDX files (train-images-idx3-ubyte, …) or a
    /// folder of PNG images.
    #[arg(long, value_name = "PATH")]
    pub data: PathBuf,
    /// vp (DDPM ε-prediction, t uniform, data in [-1,1]) or ve (σ log-uniform, w = 1/σ²,
    /// data in [0,1]).
    #[arg(long, value_name = "vp|ve")]
    pub preset: String,
    /// Model config (flat ADM JSON, formats §2).
    #[arg(long, value_name = "C.json")]
    pub config: String,
    /// Total optimizer steps (a resumed run continues up to this count).
    #[arg(long)]
    pub steps: u64,
    /// Examples per step.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Learning rate (AdamW).
    #[arg(long, default_value_t = 2e-4, allow_hyphen_values = true)]
    pub lr: f64,
    /// Linear learning-rate warm-up steps.
    #[arg(long, default_value_t = 500)]
    pub warmup: u64,
    /// Cosine learning-rate decay START:END: from the full rate at step START down to 0 at
    /// step END (default: constant after the warm-up).
    #[arg(long, value_name = "START:END", value_parser = parse_decay)]
    pub lr_decay: Option<(u64, u64)>,
    /// EMA decay of the exported weights.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.999)]
    pub ema_decay: f64,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub grad_clip: f64,
    /// AdamW weight decay.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// VE: smallest σ.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.01)]
    pub sigma_min: f64,
    /// VE: largest σ.
    #[arg(long, allow_hyphen_values = true, default_value_t = 50.0)]
    pub sigma_max: f64,
    /// Seed of the initial weights, the noise and the data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output weights (EMA), with formats §3 metadata.
    #[arg(long, value_name = "M.safetensors")]
    pub out: PathBuf,
    /// Continue from a checkpoint (same settings required).
    #[arg(long, value_name = "CKPT", long_help = resume_help())]
    pub resume: Option<PathBuf>,
    /// With --resume: let --lr, --warmup, --lr-decay and --ema-decay differ from the
    /// checkpoint's, from its step on; the change is recorded in the weights' tweedie.train
    /// (`changes`).
    #[arg(long, requires = "resume")]
    pub change_settings: bool,
    /// Write a checkpoint (and the weights) every M steps (0: only at the end / on a stop).
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: u64,
    /// Every M steps, export the EMA weights and sample a grid of --sample-n images with them
    /// (`host sample`, preset vp-uncond-sigmoid or ve-uncond with --sample-steps steps, seed 0,
    /// so grids of different steps are comparable): `M.samples/step_NNNNNN.png` (0: never).
    #[arg(long, default_value_t = 0)]
    pub sample_every: u64,
    /// Images per grid of --sample-every.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub sample_n: u64,
    /// Sampling steps K for the grids of --sample-every.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=10000))]
    pub sample_steps: u64,
    /// Log a line every M steps.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Worker threads (default: all available cores).
    #[arg(long, value_name = "J")]
    pub threads: Option<usize>,
    /// Store conv and linear weights as f16 in the exported file.
    #[arg(long)]
    pub f16: bool,
}

/// `START:END` of `--lr-decay`.
fn parse_decay(s: &str) -> std::result::Result<(u64, u64), String> {
    let bad = || format!("`{s}`: expected START:END, two step numbers with START < END");
    let (a, b) = s.split_once(':').ok_or_else(bad)?;
    let (a, b) = (
        a.trim().parse::<u64>().map_err(|_| bad())?,
        b.trim().parse::<u64>().map_err(|_| bad())?,
    );
    if a >= b {
        return Err(bad());
    }
    Ok((a, b))
}

fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    out.with_file_name(format!("{stem}.{suffix}"))
}

/// Loads `--data` and its sha256: MNIST IDX files if present (the sha256 of the images file,
/// as pinned in data.md), else a folder of PNGs (the sha256 of the decoded images in example
/// order, [`Dataset::pixels_sha256`]).
fn load_data(path: &Path) -> Result<(Dataset, String)> {
    let [(images, _), _] = MnistSplit::Train.files();
    if path.join(images).exists() {
        let ds = Dataset::mnist(path, MnistSplit::Train, false)?;
        let sha = sha256::of_file(&path.join(images))?;
        return Ok((ds, sha));
    }
    if path.is_dir() {
        let ds = tweedie_nn::data::png_folder::read_png_folder(path)?;
        let sha = ds.pixels_sha256();
        return Ok((ds, sha));
    }
    bail!(
        "--data {}: neither a folder with MNIST's {images} nor a PNG folder",
        path.display()
    )
}

/// The settings of `args`, validated (the data hash is filled in once the data is read).
fn run_config(args: &TrainArgs) -> Result<RunConfig> {
    let preset = match args.preset.as_str() {
        "vp" => Preset::Vp,
        "ve" => Preset::Ve {
            sigma_min: args.sigma_min,
            sigma_max: args.sigma_max,
        },
        other => bail!("--preset {other}: expected vp or ve"),
    };
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let config = RunConfig {
        preset,
        batch: args.batch,
        lr: args.lr,
        warmup: args.warmup,
        lr_decay: args.lr_decay,
        ema_decay: args.ema_decay,
        // 0 turns clipping off; anything else (negative, NaN) is validated below.
        grad_clip: (args.grad_clip != 0.0).then_some(args.grad_clip),
        seed: args.seed,
        adam: AdamWConfig {
            weight_decay: args.weight_decay,
            ..AdamWConfig::default()
        },
        data_sha256: String::new(),
    };
    config.validate()?;
    Ok(config)
}

/// A fresh run refuses to start over an earlier run's checkpoint (it would replace it);
/// resuming is what it is for.
fn check_fresh_start(args: &TrainArgs, ckpt: &Path, csv: &Path) -> Result<()> {
    if args.resume.is_some() {
        return Ok(());
    }
    // A loss log without a checkpoint is a run stopped before its first checkpoint (SIGKILL):
    // nothing to resume, and the new run rewrites the log from step 0.
    if std::fs::symlink_metadata(ckpt).is_ok() {
        bail!(
            "{} exists (an earlier run's): pass --resume {} to continue that run, or remove \
             it and {} to start over",
            ckpt.display(),
            ckpt.display(),
            csv.display()
        );
    }
    Ok(())
}

/// Reads `--resume` for `data`: integrity-checked (a format-1 file with a warning) and at
/// most at the step `--steps` asks for.
fn load_checkpoint(
    path: &Path,
    layout: &ParamLayout,
    data: &Dataset,
    steps: u64,
) -> Result<TrainState> {
    let (state, integrity) = TrainState::load(path, layout, data.len())?;
    if integrity == Integrity::Unverified {
        errln!(
            "warning: {} predates checkpoint format 2: no integrity hash and no data hash to \
             check; resuming unverified (the next checkpoint carries both)",
            path.display()
        );
    }
    if steps < state.step {
        bail!(
            "--steps {steps} is below the checkpoint's step {}: --steps is the total to reach \
             (at least {}). {RESUME_RULE}",
            state.step,
            state.step
        );
    }
    Ok(state)
}

/// Removes the loss log a fresh run started unless the run reached a checkpoint (after which
/// log and checkpoint belong together).
struct StartedLog(Option<PathBuf>);

impl StartedLog {
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for StartedLog {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The files of a run, claimed before any work by the output policy (absent or regular
/// files only, none of them an input) and each replaced whole when written; the loss log is
/// appended in place (LossCsv).
struct TrainFiles {
    /// Held for the whole run: a second train on this --out stops at its start.
    _lock: RunLock,
    weights: OutputFile,
    ckpt: OutputFile,
    curve: OutputFile,
    csv: PathBuf,
}

impl TrainFiles {
    fn claim(args: &TrainArgs) -> Result<TrainFiles> {
        let config = Path::new(&args.config);
        // The checkpoint may be the one --resume reads: it is not counted as an input.
        let inputs = [args.data.as_path(), config];
        let with_resume: Vec<&Path> = inputs.into_iter().chain(args.resume.as_deref()).collect();
        let csv = sibling(&args.out, "loss.csv");
        OutputFile::claim(&csv, "the loss log", &with_resume)?;
        let lock = RunLock::acquire(&args.out)?;
        Ok(TrainFiles {
            _lock: lock,
            weights: OutputFile::claim(&args.out, "--out", &with_resume)?,
            ckpt: OutputFile::claim(
                &sibling(&args.out, "ckpt.safetensors"),
                "the checkpoint",
                &inputs,
            )?,
            curve: OutputFile::claim(
                &sibling(&args.out, "loss.png"),
                "the loss curve",
                &with_resume,
            )?,
            csv,
        })
    }
}

/// Writes `bytes` to the output's staging file, syncs it and renames it over the output (a
/// crash leaves the old file or the new one); a failed write removes the staging file.
fn write_whole(file: &OutputFile, bytes: &[u8]) -> Result<()> {
    // The open staging file holds the output's lock until the rename is done.
    let mut f = file.open_staging()?;
    let staged = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = staged {
        let _ = std::fs::remove_file(file.staging());
        return Err(e).with_context(|| format!("cannot write {}", file.path().display()));
    }
    file.commit()
}

/// Runs `host train`.
pub fn run(args: &TrainArgs) -> Result<ExitCode> {
    let mut run_config = run_config(args)?;
    let preset = run_config.preset;
    let files = TrainFiles::claim(args)?;
    let (ckpt, csv_path) = (files.ckpt.path().to_path_buf(), files.csv.clone());
    check_fresh_start(args, &ckpt, &csv_path)?;
    let config = ModelConfig::load(&args.config)?.adm()?.clone();
    let arch = AdmArch::new(&config)?;
    let (data, data_sha) = load_data(&args.data)?;
    run_config.data_sha256 = data_sha;
    let threads = threads(args.threads);
    let layout = ParamLayout::from_specs(&arch.state_dict())?;
    let resume = match &args.resume {
        Some(p) => Some(load_checkpoint(p, &layout, &data, args.steps)?),
        None => None,
    };
    let run = match resume {
        Some(state) if args.change_settings => {
            AdmRun::resume_changing(&arch, &data, run_config, threads, state)
        }
        resume => AdmRun::new(&arch, &data, run_config, threads, resume),
    };
    let mut run = run.with_context(|| match &args.resume {
        Some(p) => format!("cannot resume {}", p.display()),
        None => "cannot start the run".to_string(),
    })?;
    let stop = StopFlag::install()?;
    let mut started = StartedLog(args.resume.is_none().then(|| csv_path.clone()));
    let mut csv = LossCsv::open(&csv_path, &["loss", "grad_norm", "lr"], run.state.step)?;
    let macs = arch.macs(config.image_size, config.image_size);
    errln!(
        "train: {} preset, {} parameters, {:.3} GMAC/image forward, {} images, batch {}, {} threads, steps {}..{}",
        preset.name(),
        layout.total(),
        macs as f64 / 1e9,
        data.len(),
        args.batch,
        threads,
        run.state.step,
        args.steps
    );
    let meta = |step: u64, mut train: serde_json::Value| -> BTreeMap<String, String> {
        let (lo, hi) = preset.sigma_range();
        train["steps"] = step.into();
        train["data"] = args.data.display().to_string().into();
        train["images"] = data.len().into();
        BTreeMap::from([
            ("tweedie.config".into(), config.to_json().to_string()),
            ("tweedie.kind".into(), preset.name().into()),
            ("tweedie.output".into(), "eps".into()),
            ("tweedie.noise_input".into(), preset.noise_input().into()),
            (
                "tweedie.data_range".into(),
                preset.data_range().as_str().into(),
            ),
            ("tweedie.sigma_min".into(), lo.to_string()),
            ("tweedie.sigma_max".into(), hi.to_string()),
            ("tweedie.weights_set".into(), "ema".into()),
            (
                "tweedie.source".into(),
                format!("host train ({} steps)", step),
            ),
            ("tweedie.train".into(), train.to_string()),
        ])
    };
    let save = |run: &AdmRun| -> Result<()> {
        write_whole(&files.ckpt, &run.state.to_bytes(&layout)?)?;
        let weights = export_bytes(
            &layout,
            &arch,
            run.state.ema.weights(),
            &meta(run.state.step, run.run_json()),
            args.f16,
        )?;
        write_whole(&files.weights, &weights)?;
        let points = read_column(&csv_path, "loss")?;
        write_whole(&files.curve, &loss_curve_png(&points, 50, 800, 400)?)
    };
    let start = Instant::now();
    let first = run.state.step;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(args.steps);
        bar.set_position(first);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} steps ETA {eta} {msg}")
        {
            bar.set_style(style);
        }
        bar
    });
    let mut window = (0.0, 0u64);
    while run.state.step < args.steps {
        let (loss, norm, lr) = run.step()?;
        let step = run.state.step;
        csv.append(step, &[loss, norm, lr])?;
        window = (window.0 + loss, window.1 + 1);
        let elapsed = start.elapsed().as_secs_f64();
        let ips = ((step - first) as usize * args.batch) as f64 / elapsed.max(1e-9);
        let eta = (args.steps - step) as f64 * args.batch as f64 / ips.max(1e-9);
        if let Some(bar) = &bar {
            bar.set_position(step);
            bar.set_message(format!("loss {loss:.4} {ips:.1} img/s"));
        }
        if step % args.log_every.max(1) == 0 || step == args.steps {
            let line = format!(
                "step {step}/{}: loss {:.5} (mean of {}), grad norm {norm:.3}, lr {lr:.2e}, {ips:.1} images/s, ETA {}",
                args.steps,
                window.0 / window.1 as f64,
                window.1,
                human_seconds(eta)
            );
            match &bar {
                Some(bar) => bar.println(line),
                None => errln!("{line}"),
            }
            window = (0.0, 0);
        }
        let checkpoint = args.checkpoint_every > 0 && step % args.checkpoint_every == 0;
        let grid = args.sample_every > 0 && step % args.sample_every == 0;
        if checkpoint || grid {
            save(&run)?;
            started.keep();
        }
        if grid {
            let path = sample_grid(args, preset, step, threads)?;
            let line = format!("step {step}: sample grid {}", path.display());
            match &bar {
                Some(bar) => bar.println(line),
                None => errln!("{line}"),
            }
        }
        if let (Some(code), Some(name)) = (stop.exit_code(), stop.signal_name()) {
            errln!("train: {name} received; writing a checkpoint at step {step}");
            save(&run)?;
            started.keep();
            errln!(
                "train: stopped at step {step}; resume with --resume {}",
                ckpt.display()
            );
            return Ok(ExitCode::from(code));
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    save(&run)?;
    started.keep();
    errln!(
        "train: done, {} steps in {}; weights {} (EMA), checkpoint {}",
        run.state.step - first,
        human_seconds(start.elapsed().as_secs_f64()),
        args.out.display(),
        ckpt.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `--sample-every`: runs `host sample` on the just-exported EMA weights in a scratch folder
/// and keeps its grid as `M.samples/step_NNNNNN.png`.
fn sample_grid(args: &TrainArgs, preset: Preset, step: u64, threads: usize) -> Result<PathBuf> {
    let dir = sibling(&args.out, "samples");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let scratch = dir.join(format!(".run_{step:06}"));
    let _ = std::fs::remove_dir_all(&scratch);
    let preset_name = match preset {
        Preset::Vp => "vp-uncond-sigmoid",
        Preset::Ve { .. } => "ve-uncond",
    };
    let argv = [
        "host".to_string(),
        "sample".into(),
        "--weights".into(),
        args.out.display().to_string(),
        "--preset".into(),
        preset_name.into(),
        "--steps".into(),
        args.sample_steps.to_string(),
        "--n".into(),
        args.sample_n.to_string(),
        "--seed".into(),
        "0".into(),
        "--threads".into(),
        threads.to_string(),
        "--out".into(),
        scratch.display().to_string(),
        "--quiet".into(),
    ];
    let cli = <super::Cli as clap::Parser>::try_parse_from(argv)
        .context("--sample-every: building the sample command")?;
    // Straight to `sample`: the training run keeps its own signal handling (checkpoint first).
    let super::Command::Sample(sample) = cli.command else {
        bail!("--sample-every: the sample command line did not parse as `sample`");
    };
    super::sample::run(&sample).context("--sample-every: sampling the exported weights")?;
    let grid = dir.join(format!("step_{step:06}.png"));
    std::fs::rename(scratch.join("grid.png"), &grid)
        .with_context(|| format!("cannot write {}", grid.display()))?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(grid)
}

/// The weights file with `tweedie.*` metadata; with `f16`, conv and linear weights become
/// f16 (biases and GroupNorm parameters stay f32, as the loader's f16 policy).
fn export_bytes(
    layout: &ParamLayout,
    arch: &AdmArch,
    values: &[f32],
    metadata: &BTreeMap<String, String>,
    f16_weights: bool,
) -> Result<Vec<u8>> {
    layout.check_buffer(values.len())?;
    let specs = arch.state_dict();
    let bytes: Vec<Vec<u8>> = layout
        .views()
        .iter()
        .zip(&specs)
        .map(|(v, s)| {
            let x = &values[v.range()];
            if f16_weights && matches!(s.kind, ParamKind::Weight { .. }) {
                x.iter()
                    .flat_map(|&a| f16::from_f32(a).to_le_bytes())
                    .collect()
            } else {
                x.iter().flat_map(|a| a.to_le_bytes()).collect()
            }
        })
        .collect();
    let tensors: Vec<TensorBytes<'_>> = layout
        .views()
        .iter()
        .zip(&specs)
        .zip(&bytes)
        .map(|((v, s), b)| {
            let dtype = if f16_weights && matches!(s.kind, ParamKind::Weight { .. }) {
                Dtype::F16
            } else {
                Dtype::F32
            };
            (v.name.clone(), dtype, v.shape.clone(), &b[..])
        })
        .collect();
    serialize_sorted(&tensors, metadata).context("cannot serialise weights")
}
