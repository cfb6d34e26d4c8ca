//! The ADM training loop: data → noisy input → ε-loss forward/backward → clip → AdamW → EMA,
//! one deterministic function of (seed, step, data order), so a run stopped at a checkpoint
//! and resumed continues bit for bit, at any thread count.
//!
//! Presets (both are the template loss with w = 1/σ², which for an ε-network is the plain
//! ε-MSE: (D − x)²/σ² = (ε̂ − n)² with D = x_σ − σ·ε̂):
//! - `vp` (DDPM): t uniform on {0, …, 999}, network input x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) n (data
//!   in [−1, 1]), noise input t. Metadata: kind `vp`, output `eps`, noise_input `t`.
//! - `ve`: σ log-uniform on [σ_min, σ_max] (data in [0, 1]), network input
//!   (x₀ + σ n)/√(1 + σ²), noise input 250·ln σ (EDM's c_noise = ¼ ln σ scaled by the 1000
//!   steps of the sinusoidal embedding's design range, so ln σ ∈ [−4.6, 5.9] spans about the
//!   same range as t). Output ε, D = x − σ ε. Metadata: kind `ve`, output `eps`, noise_input
//!   `log_sigma_x250` (which also implies the input scale 1/√(1 + σ²)). Both come from
//!   `tweedie_core::tweedie::{ve_input_scale, ve_noise_input}`, which the sampler calls too.
//!
//! Random draws: σ/t of example b at step s from core's training counters (stream σ), the
//! noise image from stream noise; the data order from [`DataOrder`] (its own seeded
//! permutations), all saved/restored through [`TrainState`].

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use tweedie_core::training::{draw_noise, vp_noisy, NoiseDistribution};
use tweedie_core::tweedie;

use super::checkpoint::TrainState;
use super::clip::{clip_grad_norm, grad_norm};
use super::optim::AdamWConfig;
use super::schedule::{LrSchedule, Warmup, WarmupCosine};
use crate::data::{Dataset, Preprocess};
use crate::model::adm::AdmArch;
use crate::train::adm_trainer::AdmTrainer;
use crate::weights::meta::DataRange;

fn core_err(e: tweedie_core::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Which diffusion the network is trained for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Preset {
    /// DDPM ε-prediction on the VP table.
    Vp,
    /// VE, σ log-uniform on [σ_min, σ_max].
    Ve {
        /// σ_min.
        sigma_min: f64,
        /// σ_max.
        sigma_max: f64,
    },
}

impl Preset {
    /// `vp` or `ve`.
    pub fn name(&self) -> &'static str {
        match self {
            Preset::Vp => "vp",
            Preset::Ve { .. } => "ve",
        }
    }

    /// Data range of the preset (formats §1).
    pub fn data_range(&self) -> DataRange {
        match self {
            Preset::Vp => DataRange::MinusOneOne,
            Preset::Ve { .. } => DataRange::ZeroOne,
        }
    }

    /// `tweedie.noise_input`.
    pub fn noise_input(&self) -> &'static str {
        match self {
            Preset::Vp => "t",
            Preset::Ve { .. } => "log_sigma_x250",
        }
    }

    /// (σ_min, σ_max) the network is trained on.
    pub fn sigma_range(&self) -> (f64, f64) {
        match *self {
            Preset::Vp => (tweedie_core::vp::SIGMA_MIN, tweedie_core::vp::SIGMA_MAX),
            Preset::Ve {
                sigma_min,
                sigma_max,
            } => (sigma_min, sigma_max),
        }
    }

    fn distribution(&self) -> NoiseDistribution<'static> {
        match *self {
            Preset::Vp => NoiseDistribution::VpTable,
            Preset::Ve {
                sigma_min,
                sigma_max,
            } => NoiseDistribution::LogUniform {
                sigma_min,
                sigma_max,
            },
        }
    }

    /// One example's network input and noise input: `x0` clean, `n` the noise image.
    pub fn network_input(
        &self,
        x0: &[f32],
        n: &[f32],
        seed: u64,
        step: u64,
        example: u64,
        out: &mut [f32],
    ) -> Result<f32> {
        let draw = self
            .distribution()
            .draw(seed, step, example)
            .map_err(core_err)?;
        Ok(match self {
            Preset::Vp => {
                vp_noisy(x0, n, draw.t as usize, out).map_err(core_err)?;
                draw.t as f32
            }
            Preset::Ve { .. } => {
                let s = draw.sigma;
                let c_in = tweedie::ve_input_scale(s);
                for ((o, &x), &e) in out.iter_mut().zip(x0).zip(n) {
                    *o = ((x as f64 + s * e as f64) * c_in) as f32;
                }
                tweedie::ve_noise_input(s)
            }
        })
    }
}

/// Hyper-parameters of a run (everything that must match on resume).
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// VP or VE.
    pub preset: Preset,
    /// Examples per step.
    pub batch: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Linear warm-up steps.
    pub warmup: u64,
    /// Cosine decay of the rate from step `.0` to 0 at step `.1` (None: constant after the
    /// warm-up).
    pub lr_decay: Option<(u64, u64)>,
    /// EMA decay.
    pub ema_decay: f64,
    /// Global gradient-norm clip (None: off).
    pub grad_clip: Option<f64>,
    /// Seed of the init, the noise and the data order.
    pub seed: u64,
    /// AdamW β, ε, weight decay.
    pub adam: AdamWConfig,
    /// SHA-256 of the training data (its definition is the data loader's).
    pub data_sha256: String,
}

/// What `--resume` allows, for the help text and the error that refuses a mismatch.
pub const RESUME_RULE: &str = "On --resume these must match the checkpoint: --config, \
--preset (and --sigma-min/--sigma-max for ve), --batch, --lr, --warmup, --lr-decay, \
--ema-decay, --grad-clip, --weight-decay, --seed and the data (its sha256). These may change: \
--steps (the total to reach; it does not move the learning-rate schedule) and the output, \
logging, sampling and thread flags. With --change-settings, --lr, --warmup, --lr-decay and \
--ema-decay may change too, from the checkpoint's step on (the change is recorded under \
`changes` in the weights' tweedie.train).";

/// The settings `--change-settings` lets a resumed run change.
const CHANGEABLE: [&str; 4] = ["lr", "warmup", "lr_decay", "ema_decay"];

/// The `tweedie.run` key listing the changes made on resume: `[{"step": S, "<key>": [old,
/// new], …}, …]`, oldest first.
const KEY_CHANGES: &str = "changes";

/// The `tweedie.run` keys and the flags that set them.
const RUN_FLAGS: [(&str, &str); 14] = [
    ("preset", "--preset"),
    ("batch", "--batch"),
    ("lr", "--lr"),
    ("warmup", "--warmup"),
    ("lr_decay", "--lr-decay"),
    ("ema_decay", "--ema-decay"),
    ("grad_clip", "--grad-clip"),
    ("seed", "--seed"),
    ("sigma_min", "--sigma-min"),
    ("sigma_max", "--sigma-max"),
    ("adam_betas", "AdamW betas"),
    ("adam_eps", "AdamW eps"),
    ("weight_decay", "--weight-decay"),
    ("data_sha256", "--data (sha256)"),
];

impl RunConfig {
    /// Errors unless every setting is usable (each message names its flag).
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr {}: must be a finite number > 0", self.lr);
        }
        if let Some((start, end)) = self.lr_decay {
            if start >= end {
                bail!("--lr-decay {start}:{end}: the start must be below the end");
            }
        }
        if !(self.ema_decay.is_finite() && (0.0..1.0).contains(&self.ema_decay)) {
            bail!("--ema-decay {}: must lie in [0, 1)", self.ema_decay);
        }
        if let Some(c) = self.grad_clip.filter(|c| !(c.is_finite() && *c > 0.0)) {
            bail!("--grad-clip {c}: must be a finite number > 0 (0 turns clipping off)");
        }
        let wd = self.adam.weight_decay;
        if !(wd.is_finite() && wd >= 0.0) {
            bail!("--weight-decay {wd}: must be a finite number >= 0");
        }
        if let Preset::Ve {
            sigma_min,
            sigma_max,
        } = self.preset
        {
            if !(sigma_min > 0.0 && sigma_min < sigma_max && sigma_max.is_finite()) {
                bail!(
                    "--sigma-min {sigma_min} / --sigma-max {sigma_max}: need 0 < min < max < inf"
                );
            }
        }
        Ok(())
    }

    /// The `tweedie.train` JSON (without the step count, which the caller adds). `lr_decay`
    /// appears only when set, so runs without one keep the JSON they always had.
    pub fn to_json(&self) -> serde_json::Value {
        let (lo, hi) = self.preset.sigma_range();
        let mut json = serde_json::json!({
            "preset": self.preset.name(), "batch": self.batch, "lr": self.lr,
            "warmup": self.warmup, "ema_decay": self.ema_decay, "grad_clip": self.grad_clip,
            "seed": self.seed, "sigma_min": lo, "sigma_max": hi,
            "adam_betas": [self.adam.betas.0, self.adam.betas.1], "adam_eps": self.adam.eps,
            "weight_decay": self.adam.weight_decay, "data_sha256": self.data_sha256,
        });
        if let Some((start, end)) = self.lr_decay {
            json["lr_decay"] = serde_json::json!([start, end]);
        }
        json
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        let warmup = Warmup {
            lr: self.lr,
            warmup: self.warmup,
        };
        match self.lr_decay {
            None => warmup.lr(step),
            Some((start, end)) => WarmupCosine { warmup, start, end }.lr(step),
        }
    }

    /// Compares these settings with the `tweedie.run` JSON of a checkpoint taken at `step`.
    /// Without `allow_change`, any difference is an error naming each flag. With it, the
    /// [`CHANGEABLE`] settings may differ: the result is then that JSON's change history
    /// plus one entry `{"step", key: [old, new], …}` (unchanged history when nothing
    /// differs). A checkpoint of format 1 has no data hash: it is not compared (the caller
    /// warns that the file is unverified).
    pub fn check_resume(
        &self,
        stored: &str,
        step: u64,
        allow_change: bool,
    ) -> Result<Vec<serde_json::Value>> {
        let stored: serde_json::Value = serde_json::from_str(stored)
            .map_err(|e| anyhow::anyhow!("the checkpoint's {KEY_RUN} is not JSON: {e}"))?;
        let Some(stored) = stored.as_object() else {
            bail!("the checkpoint's {KEY_RUN} is not a JSON object");
        };
        let mut history = match stored.get(KEY_CHANGES) {
            None => Vec::new(),
            Some(serde_json::Value::Array(h)) => h.clone(),
            Some(_) => bail!("the checkpoint's {KEY_RUN} `{KEY_CHANGES}` is not a list"),
        };
        // Both sides through the same text → Value parse (serde_json's float parsing is not
        // exactly round-trip, so a freshly built Value can differ in the last bit).
        let now = reparse(&self.to_json());
        let mut diffs = Vec::new();
        let mut change = serde_json::Map::new();
        for (key, flag) in RUN_FLAGS {
            let (a, b) = (stored.get(key), now.get(key));
            match (a, b) {
                (None, _) if key == "data_sha256" => {}
                (a, b) if a == b => {}
                (a, b) if allow_change && CHANGEABLE.contains(&key) => {
                    let old = a.cloned().unwrap_or(serde_json::Value::Null);
                    let new = b.cloned().unwrap_or(serde_json::Value::Null);
                    change.insert(key.to_string(), serde_json::json!([old, new]));
                }
                (a, b) => {
                    let show = |v: Option<&serde_json::Value>| {
                        v.map_or("(absent)".to_string(), |v| v.to_string())
                    };
                    diffs.push(format!(
                        "{flag} {} in the checkpoint, {} now",
                        show(a),
                        show(b)
                    ))
                }
            }
        }
        for key in stored
            .keys()
            .filter(|k| *k != KEY_CHANGES && !RUN_FLAGS.iter().any(|(r, _)| r == k))
        {
            diffs.push(format!("unknown setting `{key}` in the checkpoint"));
        }
        if !diffs.is_empty() {
            bail!(
                "the settings differ from the checkpoint's: {}. {RESUME_RULE}",
                diffs.join("; ")
            );
        }
        if !change.is_empty() {
            change.insert("step".to_string(), step.into());
            history.push(serde_json::Value::Object(change));
        }
        Ok(history)
    }
}

/// Metadata key holding [`RunConfig::to_json`] in checkpoints.
pub const KEY_RUN: &str = "tweedie.run";
/// Metadata key holding the model config JSON in checkpoints.
const KEY_MODEL_CONFIG: &str = "tweedie.config";

/// `config`'s JSON plus its change history (omitted when empty).
fn run_json(config: &RunConfig, changes: &[serde_json::Value]) -> serde_json::Value {
    let mut json = config.to_json();
    if !changes.is_empty() {
        json[KEY_CHANGES] = serde_json::Value::Array(changes.to_vec());
    }
    json
}

/// `value` as it reads back from its JSON text.
fn reparse(value: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(&value.to_string()).unwrap_or(serde_json::Value::Null)
}

/// Errors unless checkpoint `s` can continue a run of `config` on `data` with model `c`:
/// the same settings (but for those `allow_change` lets change) and model, and internally
/// consistent step and data position. Returns the run's change history
/// ([`RunConfig::check_resume`]).
fn check_resume(
    s: &TrainState,
    config: &RunConfig,
    allow_change: bool,
    c: &crate::model::adm::AdmConfig,
    data: &Dataset,
    layout: &super::params::ParamLayout,
) -> Result<Vec<serde_json::Value>> {
    s.check(layout)?;
    let Some(run) = s.metadata.get(KEY_RUN) else {
        bail!("the checkpoint has no {KEY_RUN} metadata");
    };
    let history = config.check_resume(run, s.step, allow_change)?;
    // Compared as JSON values: both sides through the same text → Value parse.
    let stored_ema = serde_json::from_str::<serde_json::Value>(run)
        .map(|v| v["ema_decay"].clone())
        .unwrap_or(serde_json::Value::Null);
    let stored: Option<serde_json::Value> = s
        .metadata
        .get(KEY_MODEL_CONFIG)
        .and_then(|j| serde_json::from_str(j).ok());
    if stored.as_ref() != Some(&reparse(&c.to_json())) {
        bail!("--config: the model config differs from the checkpoint's. {RESUME_RULE}");
    }
    if s.data.len() != data.len() || s.data.seed() != config.seed {
        bail!(
            "the checkpoint's data order ({} examples, seed {}) does not match this data set \
             ({} examples) and --seed {}",
            s.data.len(),
            s.data.seed(),
            data.len(),
            config.seed
        );
    }
    let consumed = s.data.epoch() as u128 * s.data.len() as u128 + s.data.position() as u128;
    if consumed != s.step as u128 * config.batch as u128 {
        bail!(
            "the checkpoint is inconsistent: step {} with batch {} means {} examples drawn, \
             its data order says {consumed} (epoch {}, position {})",
            s.step,
            config.batch,
            s.step as u128 * config.batch as u128,
            s.data.epoch(),
            s.data.position()
        );
    }
    if reparse(&s.ema.decay().into()) != stored_ema || *s.optimizer.config() != config.adam {
        bail!("the checkpoint is inconsistent: its EMA/AdamW settings differ from its {KEY_RUN}");
    }
    Ok(history)
}

/// A training run in memory: model, data, state, buffers.
pub struct AdmRun<'d> {
    model: AdmTrainer,
    config: RunConfig,
    data: &'d Dataset,
    pre: Preprocess,
    /// Weights, EMA, moments, step, data position.
    pub state: TrainState,
    /// Settings changed on resume (`--change-settings`), oldest first.
    changes: Vec<serde_json::Value>,
    grads: Vec<f32>,
    indices: Vec<usize>,
    x0: Vec<f32>,
    noise: Vec<f32>,
    input: Vec<f32>,
    tin: Vec<f32>,
}

impl<'d> AdmRun<'d> {
    /// A run on `data`: fresh (weights from the seed) or continuing `resume`, whose stored
    /// run configuration must equal `config`.
    pub fn new(
        arch: &AdmArch,
        data: &'d Dataset,
        config: RunConfig,
        threads: usize,
        resume: Option<TrainState>,
    ) -> Result<AdmRun<'d>> {
        AdmRun::build(arch, data, config, threads, resume, false)
    }

    /// Continues `state` with `config`, whose learning-rate settings and EMA decay may differ
    /// from the checkpoint's (`--change-settings`): they apply from the checkpoint's step on,
    /// every step before it stays as it was, and the change joins the run's history.
    pub fn resume_changing(
        arch: &AdmArch,
        data: &'d Dataset,
        config: RunConfig,
        threads: usize,
        state: TrainState,
    ) -> Result<AdmRun<'d>> {
        AdmRun::build(arch, data, config, threads, Some(state), true)
    }

    fn build(
        arch: &AdmArch,
        data: &'d Dataset,
        config: RunConfig,
        threads: usize,
        resume: Option<TrainState>,
        allow_change: bool,
    ) -> Result<AdmRun<'d>> {
        let c = &arch.config;
        if data.channels != c.in_channels {
            bail!(
                "data has {} channels, the model {}",
                data.channels,
                c.in_channels
            );
        }
        if data.height != data.width || data.height > c.image_size {
            bail!(
                "data images are {}x{}, the model needs square images of at most {}",
                data.height,
                data.width,
                c.image_size
            );
        }
        let pad = (c.image_size - data.height) / 2;
        if data.height + 2 * pad != c.image_size {
            bail!(
                "data images of {} cannot be padded evenly to {}",
                data.height,
                c.image_size
            );
        }
        let pre = Preprocess {
            range: config.preset.data_range(),
            pad,
        };
        let model = AdmTrainer::new(arch, c.image_size, c.image_size, threads)?;
        config.validate()?;
        let mut changes = Vec::new();
        let state = match resume {
            Some(mut s) => {
                changes = check_resume(&s, &config, allow_change, c, data, model.layout())?;
                if s.ema.decay() != config.ema_decay {
                    s.ema = s.ema.with_decay(config.ema_decay)?;
                }
                // A format-1 checkpoint had no data hash: the next one records it.
                s.metadata
                    .insert(KEY_RUN.to_string(), run_json(&config, &changes).to_string());
                s
            }
            None => {
                let mut meta = BTreeMap::new();
                meta.insert(KEY_RUN.to_string(), config.to_json().to_string());
                meta.insert(KEY_MODEL_CONFIG.to_string(), c.to_json().to_string());
                TrainState::new(
                    model.init_params(config.seed),
                    config.adam,
                    config.ema_decay,
                    data.len(),
                    config.seed,
                    meta,
                )?
            }
        };
        let per = pre.example_len(data);
        let b = config.batch;
        Ok(AdmRun {
            changes,
            grads: model.layout().zeros(),
            model,
            config,
            data,
            pre,
            state,
            indices: vec![0; b],
            x0: vec![0.0; b * per],
            noise: vec![0.0; b * per],
            input: vec![0.0; b * per],
            tin: vec![0.0; b],
        })
    }

    /// The model (layout, arch).
    pub fn model(&self) -> &AdmTrainer {
        &self.model
    }

    /// The run configuration.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The `tweedie.train` JSON of this run: its settings and, if any, the settings changed on
    /// resume (`changes`).
    pub fn run_json(&self) -> serde_json::Value {
        run_json(&self.config, &self.changes)
    }

    /// One optimizer step; returns (loss, gradient norm before clipping, learning rate).
    pub fn step(&mut self) -> Result<(f64, f64, f64)> {
        let cfg = &self.config;
        let step = self.state.step;
        self.state.data.next_batch(&mut self.indices)?;
        self.data
            .fill_batch(&self.indices, self.pre, &mut self.x0)?;
        let per = self.x0.len() / cfg.batch;
        for b in 0..cfg.batch {
            let r = b * per..(b + 1) * per;
            draw_noise(&mut self.noise[r.clone()], cfg.seed, step, b as u64).map_err(core_err)?;
            self.tin[b] = cfg.preset.network_input(
                &self.x0[r.clone()],
                &self.noise[r.clone()],
                cfg.seed,
                step,
                b as u64,
                &mut self.input[r],
            )?;
        }
        let loss = self.model.eps_loss_grad(
            &self.state.params,
            &self.input,
            &self.tin,
            &self.noise,
            &mut self.grads,
        )?;
        if !loss.is_finite() {
            bail!("step {step}: the loss is not finite ({loss})");
        }
        let norm = match cfg.grad_clip {
            Some(c) => clip_grad_norm(&mut self.grads, c)?,
            None => grad_norm(&self.grads),
        };
        let lr = cfg.lr_at(step);
        self.state
            .optimizer
            .step(&mut self.state.params, &self.grads, lr)?;
        self.state.ema.update(&self.state.params)?;
        self.state.step += 1;
        Ok((loss, norm, lr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;
    use crate::tensors::SafetensorsFile;
    use crate::train::checkpoint::Integrity;

    fn tiny() -> AdmArch {
        let json = serde_json::json!({"arch": "adm", "image_size": 8, "num_channels": 32,
            "num_res_blocks": 1, "channel_mult": "1,2", "attention_resolutions": "4",
            "num_head_channels": 16, "use_scale_shift_norm": true, "resblock_updown": true,
            "in_channels": 1});
        AdmArch::new(ModelConfig::from_json(&json).unwrap().adm().unwrap()).unwrap()
    }

    fn data() -> Dataset {
        // 10 images 6x6 (padded to 8), deterministic bytes.
        let pixels = (0..10 * 36)
            .map(|i| ((i * 37 + i / 7) % 256) as u8)
            .collect();
        Dataset::new(pixels, None, 1, 6, 6).unwrap()
    }

    fn config(preset: Preset) -> RunConfig {
        RunConfig {
            preset,
            batch: 3,
            lr: 1e-3,
            warmup: 2,
            lr_decay: None,
            ema_decay: 0.9,
            grad_clip: Some(1.0),
            seed: 42,
            adam: AdamWConfig {
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
            data_sha256: "d1".into(),
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// N steps straight = N/2 steps, checkpoint to disk, load, N/2 steps (bit for bit, also
    /// crossing an epoch: 6 steps × 3 examples > 10), and 1 thread = 2 threads.
    #[test]
    fn resume_and_threads_are_bit_exact() {
        let dir = std::env::temp_dir().join(format!("tweedie-adm-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (arch, ds) = (tiny(), data());
        for preset in [
            Preset::Vp,
            Preset::Ve {
                sigma_min: 0.01,
                sigma_max: 50.0,
            },
        ] {
            let cfg = config(preset);
            let mut straight = AdmRun::new(&arch, &ds, cfg.clone(), 1, None).unwrap();
            for _ in 0..6 {
                straight.step().unwrap();
            }
            let mut first = AdmRun::new(&arch, &ds, cfg.clone(), 2, None).unwrap();
            for _ in 0..3 {
                first.step().unwrap();
            }
            let path = dir.join(format!("{}.ckpt", preset.name()));
            let layout = first.model().layout().clone();
            first.state.save(&path, &layout).unwrap();
            let (loaded, integrity) = TrainState::load(&path, &layout, ds.len()).unwrap();
            assert_eq!(integrity, Integrity::Verified);
            let mut second = AdmRun::new(&arch, &ds, cfg.clone(), 2, Some(loaded)).unwrap();
            for _ in 0..3 {
                second.step().unwrap();
            }
            assert_eq!(second.state.step, 6);
            assert_eq!(bits(&straight.state.params), bits(&second.state.params));
            assert_eq!(
                bits(straight.state.ema.weights()),
                bits(second.state.ema.weights())
            );
            assert_ne!(
                bits(&straight.state.params),
                bits(
                    &AdmRun::new(&arch, &ds, cfg.clone(), 1, None)
                        .unwrap()
                        .state
                        .params
                )
            );
            // Another seed is refused on resume.
            let other = RunConfig { seed: 1, ..cfg };
            let (loaded, _) = TrainState::load(&path, &layout, ds.len()).unwrap();
            let e = AdmRun::new(&arch, &ds, other, 1, Some(loaded))
                .err()
                .unwrap();
            assert!(
                format!("{e:#}").contains("--seed 42 in the checkpoint, 1 now"),
                "{e:#}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A checkpoint as the format-1 code wrote it: no hash, no data hash in `tweedie.run`.
    fn as_format_1(state: &TrainState, layout: &crate::train::params::ParamLayout) -> Vec<u8> {
        let file =
            SafetensorsFile::from_bytes(state.to_bytes(layout).unwrap(), "v2".into()).unwrap();
        let mut meta = file.metadata().unwrap();
        meta.remove("tweedie.sha256");
        meta.insert("tweedie.checkpoint".into(), "1".into());
        let mut run: serde_json::Value = serde_json::from_str(&meta[KEY_RUN]).unwrap();
        run.as_object_mut().unwrap().remove("data_sha256");
        meta.insert(KEY_RUN.into(), run.to_string());
        let st = file.view().unwrap();
        safetensors::serialize(st.iter(), Some(meta)).unwrap()
    }

    /// A format-1 checkpoint (the committed ones) resumes unverified and continues bit for
    /// bit; one saved again is format 2 and resumes verified, also bit for bit.
    #[test]
    fn format_1_checkpoints_resume_bit_exactly() {
        let (arch, ds) = (tiny(), data());
        let cfg = config(Preset::Vp);
        let mut straight = AdmRun::new(&arch, &ds, cfg.clone(), 1, None).unwrap();
        for _ in 0..5 {
            straight.step().unwrap();
        }
        let mut first = AdmRun::new(&arch, &ds, cfg.clone(), 1, None).unwrap();
        first.step().unwrap();
        first.step().unwrap();
        let layout = first.model().layout().clone();
        let old =
            SafetensorsFile::from_bytes(as_format_1(&first.state, &layout), "old".into()).unwrap();
        let (loaded, integrity) = TrainState::from_file(&old, &layout, ds.len()).unwrap();
        assert_eq!(integrity, Integrity::Unverified);
        let mut second = AdmRun::new(&arch, &ds, cfg.clone(), 1, Some(loaded)).unwrap();
        second.step().unwrap();
        let again =
            SafetensorsFile::from_bytes(second.state.to_bytes(&layout).unwrap(), "new".into())
                .unwrap();
        let (loaded, integrity) = TrainState::from_file(&again, &layout, ds.len()).unwrap();
        assert_eq!(integrity, Integrity::Verified);
        let mut third = AdmRun::new(&arch, &ds, cfg, 1, Some(loaded)).unwrap();
        third.step().unwrap();
        third.step().unwrap();
        assert!(third.state == straight.state, "resumed state differs");
    }

    /// Resume refuses other settings (naming each flag), another model config, and a
    /// checkpoint whose step disagrees with its data position.
    #[test]
    fn resume_checks_settings_and_consistency() {
        let (arch, ds) = (tiny(), data());
        let cfg = config(Preset::Vp);
        let mut run = AdmRun::new(&arch, &ds, cfg.clone(), 1, None).unwrap();
        run.step().unwrap();
        let state = run.state.clone();
        let resume = |c: RunConfig, s: TrainState| {
            format!(
                "{:#}",
                AdmRun::new(&arch, &ds, c, 1, Some(s)).err().unwrap()
            )
        };
        let other = RunConfig {
            batch: 4,
            lr: 2e-3,
            data_sha256: "d2".into(),
            ..cfg.clone()
        };
        let e = resume(other, state.clone());
        for part in [
            "--batch 3 in the checkpoint, 4 now",
            "--lr 0.001 in the checkpoint, 0.002 now",
            "--data (sha256) \"d1\" in the checkpoint, \"d2\" now",
            "These may change: --steps",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        let mut tampered = state.clone();
        tampered.step = 2;
        let e = resume(cfg.clone(), tampered);
        assert!(
            e.contains("step 2 with batch 3 means 6 examples drawn"),
            "{e}"
        );
        let mut tampered = state.clone();
        tampered
            .metadata
            .insert(KEY_MODEL_CONFIG.into(), "{\"arch\":\"adm\"}".into());
        assert!(resume(cfg.clone(), tampered).contains("--config"));
        let bad = RunConfig {
            lr: f64::NAN,
            ..cfg.clone()
        };
        assert!(resume(bad, state).contains("--lr NaN"));
        for (bad, flag) in [
            (
                RunConfig {
                    grad_clip: Some(-1.0),
                    ..cfg.clone()
                },
                "--grad-clip -1",
            ),
            (
                RunConfig {
                    ema_decay: 1.0,
                    ..cfg.clone()
                },
                "--ema-decay 1",
            ),
            (
                RunConfig {
                    lr: f64::INFINITY,
                    ..cfg.clone()
                },
                "--lr inf",
            ),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains(flag), "{flag}: {e}");
        }
    }

    /// `--change-settings`: steps before the checkpoint keep their bits; after it the new
    /// EMA decay and learning-rate decay apply exactly as in a run that had them from that
    /// step; the change is recorded (and kept by a later plain resume); settings outside
    /// the changeable four are still refused.
    #[test]
    fn resume_changing_applies_and_records_new_settings() {
        let (arch, ds) = (tiny(), data());
        let cfg = config(Preset::Vp);
        let mut run = AdmRun::new(&arch, &ds, cfg.clone(), 1, None).unwrap();
        for _ in 0..3 {
            run.step().unwrap();
        }
        let at3 = run.state.clone();
        let changed = RunConfig {
            ema_decay: 0.99,
            lr_decay: Some((3, 7)),
            ..cfg.clone()
        };
        // Refused without --change-settings, naming the flags.
        let e = format!(
            "{:#}",
            AdmRun::new(&arch, &ds, changed.clone(), 1, Some(at3.clone()))
                .err()
                .unwrap()
        );
        assert!(
            e.contains("--ema-decay 0.9 in the checkpoint, 0.99 now"),
            "{e}"
        );
        assert!(
            e.contains("--lr-decay (absent) in the checkpoint, [3,7] now"),
            "{e}"
        );
        let mut resumed =
            AdmRun::resume_changing(&arch, &ds, changed.clone(), 1, at3.clone()).unwrap();
        assert_eq!(resumed.state.ema.decay(), 0.99);
        let lrs: Vec<f64> = (0..5).map(|_| resumed.step().unwrap().2).collect();
        assert_eq!(lrs[0], 1e-3);
        assert!((lrs[2] - 5e-4).abs() < 1e-15, "{lrs:?}");
        assert_eq!(lrs[4], 0.0);
        // The same as applying the new settings by hand from step 3.
        let mut by_hand = AdmRun::new(&arch, &ds, cfg.clone(), 1, Some(at3.clone())).unwrap();
        by_hand.state.ema = by_hand.state.ema.clone().with_decay(0.99).unwrap();
        by_hand.config.warmup = 0;
        for step in 3..8 {
            by_hand.config.lr = changed.lr_at(step);
            by_hand.step().unwrap();
        }
        assert_eq!(bits(&by_hand.state.params), bits(&resumed.state.params));
        let ema = |r: &AdmRun| bits(r.state.ema.weights());
        assert_eq!(ema(&by_hand), ema(&resumed));
        // Recorded in the run's JSON and in the checkpoint; a plain resume keeps it.
        let json = resumed.run_json();
        assert_eq!(
            json["changes"],
            serde_json::json!([{"step": 3, "ema_decay": [0.9, 0.99],
                "lr_decay": [null, [3, 7]]}])
        );
        let again =
            AdmRun::new(&arch, &ds, changed.clone(), 1, Some(resumed.state.clone())).unwrap();
        assert_eq!(again.run_json()["changes"], json["changes"]);
        // Only the four learning-rate/EMA settings may change.
        let other = RunConfig {
            batch: 4,
            ..changed
        };
        let e = format!(
            "{:#}",
            AdmRun::resume_changing(&arch, &ds, other, 1, at3)
                .err()
                .unwrap()
        );
        assert!(e.contains("--batch 3 in the checkpoint, 4 now"), "{e}");
    }

    /// A few hundred steps on a tiny problem make the loss fall.
    #[test]
    fn loss_falls() {
        let (arch, ds) = (tiny(), data());
        let mut cfg = config(Preset::Vp);
        cfg.batch = 8;
        cfg.lr = 2e-3;
        cfg.warmup = 5;
        let mut run = AdmRun::new(&arch, &ds, cfg, 2, None).unwrap();
        let losses: Vec<f64> = (0..60).map(|_| run.step().unwrap().0).collect();
        let early: f64 = losses[..10].iter().sum::<f64>() / 10.0;
        let late: f64 = losses[50..].iter().sum::<f64>() / 10.0;
        assert!(late < 0.8 * early, "loss {early} -> {late}");
    }
}
