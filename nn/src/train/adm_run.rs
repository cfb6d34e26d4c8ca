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
use super::schedule::{LrSchedule, Warmup};
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
    /// EMA decay.
    pub ema_decay: f64,
    /// Global gradient-norm clip (None: off).
    pub grad_clip: Option<f64>,
    /// Seed of the init, the noise and the data order.
    pub seed: u64,
    /// AdamW β, ε, weight decay.
    pub adam: AdamWConfig,
}

impl RunConfig {
    /// The `tweedie.train` JSON (without the step count, which the caller adds).
    pub fn to_json(&self) -> serde_json::Value {
        let (lo, hi) = self.preset.sigma_range();
        serde_json::json!({
            "preset": self.preset.name(), "batch": self.batch, "lr": self.lr,
            "warmup": self.warmup, "ema_decay": self.ema_decay, "grad_clip": self.grad_clip,
            "seed": self.seed, "sigma_min": lo, "sigma_max": hi,
            "adam_betas": [self.adam.betas.0, self.adam.betas.1], "adam_eps": self.adam.eps,
            "weight_decay": self.adam.weight_decay,
        })
    }
}

/// Metadata key holding [`RunConfig::to_json`] in checkpoints.
pub const KEY_RUN: &str = "tweedie.run";

/// A training run in memory: model, data, state, buffers.
pub struct AdmRun<'d> {
    model: AdmTrainer,
    config: RunConfig,
    data: &'d Dataset,
    pre: Preprocess,
    /// Weights, EMA, moments, step, data position.
    pub state: TrainState,
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
        if config.batch == 0 {
            bail!("--batch must be at least 1");
        }
        let pre = Preprocess {
            range: config.preset.data_range(),
            pad,
        };
        let model = AdmTrainer::new(arch, c.image_size, c.image_size, threads)?;
        let run_json = config.to_json().to_string();
        let state = match resume {
            Some(s) => {
                s.check(model.layout())?;
                match s.metadata.get(KEY_RUN) {
                    Some(j) if *j == run_json => {}
                    Some(j) => bail!(
                        "the checkpoint was written by a run with other settings: {j} (now {run_json})"
                    ),
                    None => bail!("the checkpoint has no {KEY_RUN} metadata"),
                }
                if s.data.len() != data.len() || s.data.seed() != config.seed {
                    bail!("the checkpoint's data order does not match this data set and seed");
                }
                s
            }
            None => {
                let mut meta = BTreeMap::new();
                meta.insert(KEY_RUN.to_string(), run_json);
                meta.insert("tweedie.config".to_string(), c.to_json().to_string());
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
        let lr = Warmup {
            lr: cfg.lr,
            warmup: cfg.warmup,
        }
        .lr(step);
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
            ema_decay: 0.9,
            grad_clip: Some(1.0),
            seed: 42,
            adam: AdamWConfig {
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
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
            let loaded = TrainState::load(&path, &layout).unwrap();
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
            let loaded = TrainState::load(&path, &layout).unwrap();
            assert!(AdmRun::new(&arch, &ds, other, 1, Some(loaded)).is_err());
        }
        let _ = std::fs::remove_dir_all(&dir);
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
