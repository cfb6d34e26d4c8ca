//! One ground-truth image through every method of the restoration table: the measurement
//! y = A x + σ_y·n (host measure's code), its back-projection, the Gaussian-prior MMSE
//! estimate, and conditional diffusion sampling (host restore's runner): one sample and the
//! mean of N. Each image is scored by PSNR with MAX = the data-range width and by SSIM
//! (skimage's defaults, the same data range).

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tweedie_core::metrics::{psnr, ssim};
use tweedie_core::ForwardOperator;

use super::gaussian_fit::GaussianFit;
use super::gaussian_mmse::{posterior_mean, SparseRows};
use crate::image_io::range_width;
use crate::run::measurement::{AnyOperator, MeasureOptions, Measurement, Task};
use crate::run::plan::{AnyPlan, PlanSource, Purpose};
use crate::run::progress::Progress;
use crate::run::runner::{run_chains, Job, RunOutput};
use tweedie_nn::denoiser::Model;

/// What every image is evaluated with.
pub struct Setup<'a> {
    /// The denoiser.
    pub model: &'a Model,
    /// Builds each measurement's plan (host restore's schedule and sampler flags).
    pub plans: &'a dyn PlanSource,
    /// Output D(x_K, σ_{K−1}) instead of x_K (--final-denoise).
    pub final_denoise: bool,
    /// `Inpaint` or `Sr4`.
    pub task: Task,
    /// σ_y in data-range units.
    pub sigma_y: f64,
    /// Missing fraction for inpainting.
    pub p: f64,
    /// Diffusion chains per image.
    pub samples: usize,
    /// Chains per denoiser call.
    pub batch: usize,
    /// Threads.
    pub threads: usize,
    /// Where the chains start.
    pub start: Start,
}

/// Where the chains start: x₀ = s·n from the plan's law, or shifted by an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Start {
    /// x₀ = s·n.
    Noise,
    /// x₀ = back-projection of y + s·n.
    BackProjection,
    /// x₀ = the Gaussian-prior MMSE estimate + s·n.
    GaussianMmse,
}

/// One metric (PSNR in dB, or SSIM) of each method on one image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    /// Zero-fill (inpainting: Aᵀ y) or nearest ×4 upsampling (SR) of y.
    pub back_projection: f64,
    /// The posterior mean under the fitted Gaussian prior.
    pub gaussian_mmse: f64,
    /// Diffusion chain 0.
    pub sample: f64,
    /// The average over chains of each chain's PSNR (a lower-variance "one sample" figure).
    pub sample_average: f64,
    /// The per-pixel mean of all chains.
    pub mean: f64,
}

/// The names of [`Scores`]' fields in table order, with their table labels.
pub const METHODS: [(&str, &str); 5] = [
    (
        "back_projection",
        "back-projection (zero-fill / nearest ×4)",
    ),
    ("gaussian_mmse", "Gaussian-prior MMSE (closed form)"),
    ("sample", "diffusion, one sample (chain 0)"),
    (
        "sample_average",
        "diffusion, one sample (average over chains)",
    ),
    ("mean", "diffusion, mean of the samples"),
];

/// Samples shown per digit in the figure row of [`Evaluated`].
pub const FIGURE_SAMPLES: usize = 4;

/// What [`Setup::evaluate`] gives for one image.
pub struct Evaluated {
    /// PSNR (dB).
    pub scores: Scores,
    /// SSIM.
    pub ssim: Scores,
    /// Truth, back-projection, Gaussian MMSE, diffusion mean and the first
    /// [`FIGURE_SAMPLES`] chains (fewer when there are fewer), back to back.
    pub figure_row: Vec<f32>,
}

impl Scores {
    /// The score of a method named in [`METHODS`].
    pub fn get(&self, name: &str) -> f64 {
        match name {
            "back_projection" => self.back_projection,
            "gaussian_mmse" => self.gaussian_mmse,
            "sample" => self.sample,
            "sample_average" => self.sample_average,
            _ => self.mean,
        }
    }
}

impl Setup<'_> {
    /// The measurement of `truth` with the noise (and mask) of `seed`.
    pub fn measure(&self, truth: &[f32], seed: u64) -> Result<Measurement> {
        if !matches!(self.task, Task::Inpaint | Task::Sr4) {
            bail!("evaluate restoration supports --task inpaint and sr4");
        }
        let m = self.model;
        let opts = MeasureOptions {
            task: self.task,
            sigma_y: self.sigma_y,
            seed,
            p: self.p,
            rect: None,
        };
        Measurement::make(
            truth,
            (m.channels, m.size, m.size),
            &opts,
            m.data_range,
            None,
        )
    }

    /// The sampling plan for a measurement (host restore's rule).
    pub fn plan(&self, measurement: &Measurement) -> Result<AnyPlan> {
        let op = measurement.operator()?;
        self.plans.build(
            self.model,
            Purpose::Conditional {
                sigma_y: measurement.sigma_y,
                norm_sq: op.norm_sq(),
                sr: measurement.task == Task::Sr4,
            },
        )
    }

    /// Runs the chains on a measurement (`start` shifts x₀, [`Start`]), with moments.
    pub fn chains(
        &self,
        m: &Measurement,
        op: &AnyOperator<'_>,
        start: Option<&[f32]>,
        seed: u64,
    ) -> Result<RunOutput> {
        let plan = self.plan(m)?;
        let job = Job {
            plan: &plan,
            n: self.samples,
            first_chain: 0,
            batch: self.batch,
            seed,
            final_denoise: self.final_denoise,
            snapshot_every: None,
            start,
            likelihood: Some((op, &m.y, m.sigma_y)),
            truth: None,
            moments: true,
            threads: self.threads,
        };
        run_chains(&job, self.model, &Progress::new(0, true))
    }

    /// Scores every method on `truth` (C×H×W in the model's range); `seed` drives the
    /// measurement noise, the mask and the chains, as `host restore --seed` does.
    pub fn evaluate(&self, prior: &GaussianFit, truth: &[f32], seed: u64) -> Result<Evaluated> {
        let model = self.model;
        let width = range_width(model.data_range);
        let shape = (model.channels, model.size, model.size);
        let score = |x: &[f32]| -> Result<(f64, f64)> {
            let p = psnr(truth, x, width).map_err(|e| anyhow::anyhow!("psnr: {e}"))?;
            let s = ssim(truth, x, shape, width).map_err(|e| anyhow::anyhow!("ssim: {e}"))?;
            Ok((p, s))
        };
        let m = self.measure(truth, seed)?;
        let op = m.operator()?;
        let back = back_projection(&m, &op)?;
        let rows = SparseRows::of_operator(&op)?;
        let mmse: Vec<f32> = posterior_mean(prior, &rows, &m.y, m.sigma_y)?
            .iter()
            .map(|&v| v as f32)
            .collect();
        let start = match self.start {
            Start::Noise => None,
            Start::BackProjection => Some(back.as_slice()),
            Start::GaussianMmse => Some(mmse.as_slice()),
        };
        let run = self.chains(&m, &op, start, seed)?;
        let len = model.chain_len();
        let per_chain = run
            .samples
            .chunks_exact(len)
            .map(score)
            .collect::<Result<Vec<(f64, f64)>>>()?;
        let (mean, _) = run.moments.context("moments missing")?;
        let mean: Vec<f32> = mean.iter().map(|&v| v as f32).collect();
        let (back_s, mmse_s, mean_s) = (score(&back)?, score(&mmse)?, score(&mean)?);
        let average = |f: fn(&(f64, f64)) -> f64| {
            per_chain.iter().map(f).sum::<f64>() / per_chain.len() as f64
        };
        let scores = Scores {
            back_projection: back_s.0,
            gaussian_mmse: mmse_s.0,
            sample: per_chain[0].0,
            sample_average: average(|s| s.0),
            mean: mean_s.0,
        };
        let ssim = Scores {
            back_projection: back_s.1,
            gaussian_mmse: mmse_s.1,
            sample: per_chain[0].1,
            sample_average: average(|s| s.1),
            mean: mean_s.1,
        };
        let shown = FIGURE_SAMPLES.min(self.samples) * len;
        let figure_row = [truth, &back, &mmse, &mean, &run.samples[..shown]].concat();
        Ok(Evaluated {
            scores,
            ssim,
            figure_row,
        })
    }
}

/// The measurement back in image space: Aᵀ y for inpainting (zero at missing pixels), y
/// upsampled ×4 by nearest neighbour for SR.
pub fn back_projection<A: ForwardOperator + ?Sized>(m: &Measurement, op: &A) -> Result<Vec<f32>> {
    match m.task {
        Task::Sr4 => Ok(m.as_input_image()),
        _ => {
            let mut out = vec![0.0f32; op.input_len()];
            op.adjoint(&m.y, &mut out, &mut vec![0.0; op.scratch_len()])
                .map_err(|e| anyhow::anyhow!("adjoint: {e}"))?;
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::measurement::MeasureOptions;

    fn measurement(task: Task) -> Measurement {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 / 32.0) - 1.0).collect();
        let opts = MeasureOptions {
            task,
            sigma_y: 0.1,
            seed: 3,
            p: 0.5,
            rect: None,
        };
        Measurement::make(
            &x,
            (1, 8, 8),
            &opts,
            tweedie_nn::weights::meta::DataRange::MinusOneOne,
            None,
        )
        .unwrap()
    }

    #[test]
    fn inpainting_back_projection_is_zero_fill() {
        let m = measurement(Task::Inpaint);
        let back = back_projection(&m, &m.operator().unwrap()).unwrap();
        let mask = m.mask.as_ref().unwrap();
        assert_eq!(mask.iter().filter(|&&v| v == 0.0).count(), 32);
        for ((b, y), k) in back.iter().zip(&m.y).zip(mask) {
            assert_eq!(*b, if *k == 1.0 { *y } else { 0.0 });
        }
    }

    #[test]
    fn sr_back_projection_is_nearest_upsampling() {
        let m = measurement(Task::Sr4);
        let back = back_projection(&m, &m.operator().unwrap()).unwrap();
        for r in 0..8 {
            for c in 0..8 {
                assert_eq!(back[r * 8 + c], m.y[(r / 4) * 2 + c / 4]);
            }
        }
    }
}
