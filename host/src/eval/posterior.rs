//! Which part fails, sampler or model (docs/results.md §5): under the Gaussian fitted to the
//! training set the posterior of a linear inverse problem is known in closed form, so running
//! a conditional preset with that Gaussian's exact denoiser (`gaussian-fit`) measures the
//! sampler alone: PSNR of the chain mean against the exact posterior mean, next to the PSNR
//! N exact posterior samples would give on average (the Monte Carlo floor: their mean misses
//! the posterior mean by MSE = mean variance / N), and the chain variance against the exact
//! per-pixel variance. The network's chains on the same measurement show what the model adds.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tweedie_core::metrics::{psnr, psnr_of_mse};

use super::gaussian_fit::GaussianFit;
use super::gaussian_mmse::{posterior_mean, posterior_variance, SparseRows};
use super::restoration::{back_projection, Setup, Start};
use super::stats::spread;
use crate::image_io::range_width;

/// Pixels whose exact posterior variance is below this (std 0.01 in data-range units: the
/// constant border, observed background) are left out of the variance ratio.
pub const VARIANCE_FLOOR: f64 = 1e-4;

/// The diagnosis of one digit (PSNR in dB, MAX = the data-range width).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// Back-projection of y vs truth.
    pub back_projection: f64,
    /// Exact posterior mean vs truth (the Gaussian-prior MMSE).
    pub exact_mean: f64,
    /// gaussian-fit chain mean vs truth.
    pub chain_mean: f64,
    /// gaussian-fit chain mean vs the exact posterior mean.
    pub chain_mean_vs_exact: f64,
    /// What `chain_mean_vs_exact` would be on average with exact posterior samples.
    pub monte_carlo_floor: f64,
    /// Pixel mean of chain variance / exact posterior variance.
    pub variance_ratio_mean: f64,
    /// Pixel median of that ratio.
    pub variance_ratio_median: f64,
    /// Pixels in the ratio (exact variance ≥ [`VARIANCE_FLOOR`]).
    pub variance_pixels: usize,
    /// The network's chain mean vs truth (when run).
    pub network_mean: Option<f64>,
    /// The network's one-sample PSNR vs truth, averaged over its chains (when run).
    pub network_sample: Option<f64>,
}

impl Diagnosis {
    /// `floor − chain_mean_vs_exact`: how many dB the sampler loses to exact sampling.
    pub fn excess_db(&self) -> f64 {
        self.monte_carlo_floor - self.chain_mean_vs_exact
    }
}

/// Diagnoses one digit: `exact` runs the chains with the gaussian-fit model whose fit is
/// `prior`, `network` (if any) with the network; both measure `truth` with `seed` exactly as
/// `host evaluate restoration` does.
pub fn diagnose(
    exact: &Setup,
    prior: &GaussianFit,
    network: Option<&Setup>,
    truth: &[f32],
    seed: u64,
) -> Result<Diagnosis> {
    if exact.samples < 2 {
        bail!("the variance ratio needs at least 2 chains (--samples)");
    }
    let width = range_width(exact.model.data_range);
    let score = |a: &[f32], b: &[f32]| psnr(a, b, width).map_err(|e| anyhow::anyhow!("psnr: {e}"));
    let m = exact.measure(truth, seed)?;
    let op = m.operator()?;
    let back = back_projection(&m, &op)?;
    let rows = SparseRows::of_operator(&op)?;
    let mean: Vec<f32> = posterior_mean(prior, &rows, &m.y, m.sigma_y)?
        .iter()
        .map(|&v| v as f32)
        .collect();
    let var = posterior_variance(prior, &rows, m.sigma_y)?;
    let start = match exact.start {
        Start::Noise => None,
        Start::BackProjection => Some(back.as_slice()),
        Start::GaussianMmse => Some(mean.as_slice()),
    };
    let run = exact.chains(&m, &op, start, seed)?;
    let (chain_mean, m2) = run.moments.context("moments missing")?;
    let chain_mean: Vec<f32> = chain_mean.iter().map(|&v| v as f32).collect();
    let n = exact.samples as f64;
    let ratios: Vec<f64> = m2
        .iter()
        .zip(&var)
        .filter(|(_, &v)| v >= VARIANCE_FLOOR)
        .map(|(&q, &v)| q / (n - 1.0) / v)
        .collect();
    let ratio = spread(&ratios).context("no pixel has posterior variance above the floor")?;
    let mean_var = var.iter().sum::<f64>() / var.len() as f64;
    let (network_mean, network_sample) = match network {
        Some(setup) => {
            let s = setup.evaluate(prior, truth, seed)?.scores;
            (Some(s.mean), Some(s.sample_average))
        }
        None => (None, None),
    };
    Ok(Diagnosis {
        back_projection: score(truth, &back)?,
        exact_mean: score(truth, &mean)?,
        chain_mean: score(truth, &chain_mean)?,
        chain_mean_vs_exact: score(&mean, &chain_mean)?,
        monte_carlo_floor: psnr_of_mse(width, mean_var / n),
        variance_ratio_mean: ratio.mean,
        variance_ratio_median: ratio.median,
        variance_pixels: ratios.len(),
        network_mean,
        network_sample,
    })
}
