//! The exponential moving average of the weights (guided-diffusion `update_ema`,
//! score_sde `ExponentialMovingAverage` without its num_updates warm-up):
//! `ema ← decay · ema + (1 − decay) · p`.
//!
//! Evaluated as PyTorch's `ema.mul_(decay).add_(p, alpha=1 − decay)` in f32: both
//! coefficients are rounded to f32 once (1 − decay computed in f64 first), then
//! `(ema · decay) + ((1 − decay) · p)` with two roundings. (PyTorch's vectorised CPU `add_`
//! may fuse the last multiply-add; the difference is below one f32 ulp per update.)

use anyhow::{bail, Result};

/// EMA weights over a flat parameter buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Ema {
    decay: f64,
    weights: Vec<f32>,
}

impl Ema {
    /// Starts the average at `params` (as guided-diffusion copies the initial weights).
    pub fn new(decay: f64, params: &[f32]) -> Result<Ema> {
        Ema::from_weights(decay, params.to_vec())
    }

    /// Resumes an average from saved EMA weights.
    pub fn from_weights(decay: f64, weights: Vec<f32>) -> Result<Ema> {
        if !(0.0..=1.0).contains(&decay) {
            bail!("EMA decay must be in [0, 1], got {decay}");
        }
        Ok(Ema { decay, weights })
    }

    /// The same average continuing with another decay rate (a setting changed on resume).
    pub fn with_decay(self, decay: f64) -> Result<Ema> {
        Ema::from_weights(decay, self.weights)
    }

    /// The decay rate.
    pub fn decay(&self) -> f64 {
        self.decay
    }

    /// The averaged weights.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }

    /// One update with the current weights.
    pub fn update(&mut self, params: &[f32]) -> Result<()> {
        if params.len() != self.weights.len() {
            bail!(
                "EMA update with {} parameters, the average holds {}",
                params.len(),
                self.weights.len()
            );
        }
        let (rate, alpha) = (self.decay as f32, (1.0 - self.decay) as f32);
        for (e, &p) in self.weights.iter_mut().zip(params) {
            *e = *e * rate + alpha * p;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converges_geometrically_to_a_constant() {
        // ema_k − p = decay^k (ema_0 − p) for constant p.
        let mut ema = Ema::new(0.9, &[0.0, 1.0]).unwrap();
        let p = [1.0f32, 1.0];
        for _ in 0..50 {
            ema.update(&p).unwrap();
        }
        let want = 1.0 - 0.9f64.powi(50);
        assert!((ema.weights()[0] as f64 - want).abs() < 1e-6);
        assert_eq!(ema.weights()[1], 1.0);
    }

    #[test]
    fn one_update_is_the_f32_formula() {
        let mut ema = Ema::new(0.9999, &[0.25, -3.0]).unwrap();
        ema.update(&[1.5, 2.0]).unwrap();
        let (r, a) = (0.9999f64 as f32, (1.0 - 0.9999f64) as f32);
        assert_eq!(ema.weights(), &[0.25 * r + a * 1.5, -3.0 * r + a * 2.0]);
        assert!(ema.update(&[1.0]).is_err());
        assert!(Ema::new(1.5, &[]).is_err());
        assert!(Ema::new(f64::NAN, &[]).is_err());
    }
}
