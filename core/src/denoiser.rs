//! The one thing the sampler needs from a model: a denoiser D(x, σ) (Tweedie, eq. 4/5).
//!
//! A pipeline that links `tweedie-core` implements [`Denoiser`] for its own network (or a
//! closed-form oracle) and hands it to the sampler.

use crate::{plan::PlanStep, Error};

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
