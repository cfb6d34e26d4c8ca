//! Global gradient-norm clipping with `torch.nn.utils.clip_grad_norm_` semantics:
//! total = ‖g‖₂ over all parameters; coef = max_norm / (total + 1e-6), clamped to ≤ 1;
//! every gradient is multiplied by coef (a no-op when coef = 1, so we skip it then).
//!
//! The norm is accumulated in f64, element by element in buffer order (PyTorch takes the norm
//! of the per-tensor f32 norms; the f64 sum is at least as accurate and has one fixed order,
//! so it does not depend on threads or chunking).

use anyhow::{bail, Result};

/// PyTorch's `1e-6` in `max_norm / (total_norm + 1e-6)`.
pub const CLIP_EPS: f64 = 1e-6;

/// The global L2 norm of a flat gradient buffer, in f64.
pub fn grad_norm(grads: &[f32]) -> f64 {
    grads
        .iter()
        .map(|&g| {
            let g = g as f64;
            g * g
        })
        .sum::<f64>()
        .sqrt()
}

/// Clips `grads` in place to global norm `max_norm` and returns the norm before clipping.
/// A non-finite norm is an error and leaves `grads` untouched (PyTorch's
/// `error_if_nonfinite=True`): the loop should stop rather than write NaN weights.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm < 0.0 {
        bail!("max gradient norm must be >= 0, got {max_norm}");
    }
    let total = grad_norm(grads);
    if !total.is_finite() {
        bail!("gradient norm is {total}: non-finite gradients");
    }
    let coef = max_norm / (total + CLIP_EPS);
    if coef < 1.0 {
        let c = coef as f32;
        grads.iter_mut().for_each(|g| *g *= c);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_is_the_l2_norm() {
        assert_eq!(grad_norm(&[3.0, 4.0]), 5.0);
        assert_eq!(grad_norm(&[]), 0.0);
        // f64 accumulation: 1e20² overflows f32 but not f64.
        assert_eq!(grad_norm(&[1e20, 0.0]), 1e20f32 as f64);
    }

    #[test]
    fn clips_like_pytorch() {
        let mut g = vec![3.0f32, 4.0];
        let total = clip_grad_norm(&mut g, 1.0).unwrap();
        assert_eq!(total, 5.0);
        let c = (1.0 / (5.0 + 1e-6)) as f32;
        assert_eq!(g, vec![3.0 * c, 4.0 * c]);
        // Below the threshold nothing changes, bit for bit.
        let mut small = vec![0.3f32, -0.4];
        clip_grad_norm(&mut small, 1.0).unwrap();
        assert_eq!(small, vec![0.3, -0.4]);
        // max_norm 0 zeroes the gradients.
        let mut z = vec![1.0f32, -2.0];
        clip_grad_norm(&mut z, 0.0).unwrap();
        assert_eq!(z, vec![0.0, -0.0]);
    }

    #[test]
    fn non_finite_is_an_error() {
        let mut g = vec![1.0f32, f32::NAN];
        assert!(clip_grad_norm(&mut g, 1.0).is_err());
        assert_eq!(g[0], 1.0);
        assert!(clip_grad_norm(&mut [f32::INFINITY], 1.0).is_err());
        assert!(clip_grad_norm(&mut [1.0], -1.0).is_err());
        assert!(clip_grad_norm(&mut [1.0], f64::NAN).is_err());
    }
}
