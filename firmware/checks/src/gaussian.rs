//! The README's Gaussian denoiser (section "Using the core from your own pipeline"), verbatim:
//! the closed-form MMSE denoiser of N(μ, s² I), with the gain in f64 and the update in f32.

use tweedie_core::{Denoiser, Error, PlanStep};

/// D(x, σ) = μ + s²/(s² + σ²)·(x − μ) for X ~ N(μ, s² I).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gaussian {
    /// μ.
    pub mean: f32,
    /// s.
    pub std: f32,
}

/// The README's data law N(0.5, 0.2²).
pub const README: Gaussian = Gaussian {
    mean: 0.5,
    std: 0.2,
};

impl Denoiser for Gaussian {
    fn denoise(
        &mut self,
        x: &[f32],
        _batch: usize,
        step: &PlanStep,
        out: &mut [f32],
    ) -> Result<(), Error> {
        let s2 = (self.std * self.std) as f64;
        let gain = (s2 / (s2 + step.sigma_net * step.sigma_net)) as f32;
        for (o, &v) in out.iter_mut().zip(x) {
            *o = self.mean + gain * (v - self.mean);
        }
        Ok(())
    }
}
