//! NCSN++'s residual merge with `skip_rescale`: (x + h)/√2 in ResnetBlockBigGANpp and
//! AttnBlockpp (ncsnpp.md §4.1). Combine and the output pyramid sum without rescaling
//! ([`crate::add_inplace`]).

use crate::{check_len, KernelError};

/// `np.sqrt(2.)` as the f32 scalar PyTorch divides an f32 tensor by (1.4142135).
pub const SQRT_2: f32 = core::f32::consts::SQRT_2;

/// h ← (x + h)/√2, element-wise: a float32 division by [`SQRT_2`], not a multiplication by
/// its reciprocal, as the original computes it.
pub fn add_skip_rescale(h: &mut [f32], x: &[f32]) -> Result<(), KernelError> {
    check_len("skip rescale input", h.len(), x.len())?;
    for (hv, &xv) in h.iter_mut().zip(x) {
        *hv = (xv + *hv) / SQRT_2;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divides_the_sum_by_sqrt2() {
        let mut h = [1.0f32, -2.0, 0.5];
        add_skip_rescale(&mut h, &[1.0, 4.0, 0.5]).unwrap();
        assert_eq!(h, [2.0 / SQRT_2, 2.0 / SQRT_2, 1.0 / SQRT_2]);
        assert!((h[0] as f64 - 2f64.sqrt()).abs() < 2e-7);
        assert_eq!(SQRT_2, (2f64.sqrt()) as f32);
        assert!(add_skip_rescale(&mut h, &[0.0; 2]).is_err());
    }
}
