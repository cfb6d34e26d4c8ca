//! The one thing the sampler needs from a model: a denoiser D(x, σ) (Tweedie, eq. 4/5).
//!
//! A pipeline that links `tweedie-core` implements [`Denoiser`] for its own network (or a
//! closed-form oracle) and hands it to the sampler. [`GaussianOracle`] is the exact MMSE
//! denoiser of a Gaussian prior (spec §8.5): tests use it in place of a network.

use crate::{plan::PlanStep, vp, Error};

/// A noise-conditional denoiser on the VE scale: out_i = D(x_i, σ_k) for every chain i.
pub trait Denoiser {
    /// `x` and `out` hold `batch` chains of equal length, back to back (`x.len() == out.len()`,
    /// a multiple of `batch`). `step` gives σ_k, the network's noise input and, for VP
    /// networks, t_k. Errors are reported as [`Error::Denoiser`].
    fn denoise(
        &mut self,
        x: &[f32],
        batch: usize,
        step: &PlanStep,
        out: &mut [f32],
    ) -> Result<(), Error>;
}

/// The exact denoiser of X ~ N(μ, s² I) (spec §8.5): D(x, σ) = μ + s²/(s² + σ²)·(x − μ).
///
/// Evaluated at `step.sigma_net` in f64 and rounded once to f32. Per-element, so the result
/// does not depend on the batch split.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GaussianOracle {
    /// μ, the prior mean (the same for every element).
    pub mean: f64,
    /// s, the prior standard deviation.
    pub std: f64,
}

impl GaussianOracle {
    /// D(x, σ) in f64.
    #[inline]
    pub fn denoised(&self, x: f64, sigma: f64) -> f64 {
        let s2 = self.std * self.std;
        self.mean + s2 / (s2 + sigma * sigma) * (x - self.mean)
    }

    /// The score of X_σ: −(x − μ)/(s² + σ²).
    #[inline]
    pub fn score(&self, x: f64, sigma: f64) -> f64 {
        -(x - self.mean) / (self.std * self.std + sigma * sigma)
    }

    /// The VP ε-oracle at ᾱ = ᾱ_t: ε(v, t) = sqrt(1 − ᾱ_t)(v − sqrt(ᾱ_t) μ)/(ᾱ_t s² + 1 − ᾱ_t), so that
    /// D(u, σ_t) = u − σ_t ε(u/sqrt(1 + σ_t²), t).
    #[inline]
    pub fn eps(&self, v: f64, alpha_bar: f64) -> f64 {
        let s2 = self.std * self.std;
        libm::sqrt(1.0 - alpha_bar) * (v - libm::sqrt(alpha_bar) * self.mean)
            / (alpha_bar * s2 + 1.0 - alpha_bar)
    }

    /// ᾱ at 0-based table index t (convenience for [`GaussianOracle::eps`]).
    #[inline]
    pub fn alpha_bar_at(t: usize) -> Option<f64> {
        vp::ALPHA_BAR.get(t).copied()
    }
}

impl Denoiser for GaussianOracle {
    fn denoise(
        &mut self,
        x: &[f32],
        _batch: usize,
        step: &PlanStep,
        out: &mut [f32],
    ) -> Result<(), Error> {
        crate::error::check_len("denoiser output", x.len(), out.len())?;
        for (o, &v) in out.iter_mut().zip(x) {
            *o = self.denoised(v as f64, step.sigma_net) as f32;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eps_oracle_gives_the_denoiser_through_eq_15() {
        let g = GaussianOracle {
            mean: 0.3,
            std: 0.7,
        };
        for t in [0usize, 10, 500, 999] {
            let ab = GaussianOracle::alpha_bar_at(t).unwrap();
            let sigma = vp::SIGMA[t];
            for u in [-3.0, 0.0, 0.4, 10.0] {
                let d = u - sigma * g.eps(u / libm::sqrt(1.0 + sigma * sigma), ab);
                assert!((d - g.denoised(u, sigma)).abs() < 1e-12 * (1.0 + u.abs()));
                // Tweedie: D = x + σ² score.
                let d2 = u + sigma * sigma * g.score(u, sigma);
                assert!((d2 - g.denoised(u, sigma)).abs() < 1e-9 * (1.0 + u.abs()));
            }
        }
    }
}
