//! guided-diffusion `timestep_embedding` (nn.py): the sinusoidal embedding of the step index.

use crate::{check_len, KernelError};

/// out = [cos(t·f_0) … cos(t·f_{half−1}), sin(t·f_0) … sin(t·f_{half−1})] (+ one 0 if `dim` is
/// odd), f_i = exp(−ln(max_period)·i/half), half = dim/2. Every step is rounded to f32 as
/// PyTorch does (f_i, then t·f_i), so the result matches the original to f32 round-off rather
/// than an exact evaluation (they differ by up to ~3e-5 at t ≈ 1000, adm_unet.md §3).
pub fn timestep_embedding(
    t: f32,
    dim: usize,
    max_period: f32,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check_len("timestep embedding", dim, out.len())?;
    if max_period.is_nan() || max_period <= 0.0 {
        return Err(KernelError::Shape(
            "timestep embedding: max_period must be > 0",
        ));
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = timestep_embedding_element(t, i, dim, max_period);
    }
    Ok(())
}

/// Element `i` of [`timestep_embedding`] (the CPU loop and the device kernel both call this):
/// cos(t·f_i) for i < half, sin(t·f_{i−half}) below 2·half, 0 for the odd `dim`'s last one.
#[inline]
pub fn timestep_embedding_element(t: f32, i: usize, dim: usize, max_period: f32) -> f32 {
    let half = dim / 2;
    if i >= 2 * half {
        return 0.0;
    }
    // PyTorch: -math.log(max_period) (f64) times an f32 arange → the scalar is cast to f32.
    let neg_log = -(libm::log(max_period as f64)) as f32;
    let j = if i < half { i } else { i - half };
    let freq = libm::expf(neg_log * j as f32 / half as f32);
    let arg = t * freq;
    if i < half {
        libm::cosf(arg)
    } else {
        libm::sinf(arg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact (f64) embedding and a bound on the f32 evaluation's error: freq's exponent
    /// x = −ln(P)·i/half picks up ~3 roundings (relative error ≤ |x|·3·2⁻²⁴ on freq), expf adds
    /// ≤ 2 ulp, the product t·freq 1/2 ulp; cos/sin have slope ≤ 1, plus their own ~1 ulp.
    fn check(t: f32, dim: usize) {
        let mut out = vec![f32::NAN; dim];
        timestep_embedding(t, dim, 10000.0, &mut out).unwrap();
        let half = dim / 2;
        let u = 2f64.powi(-24);
        for i in 0..half {
            let x = -(10000f64.ln()) * i as f64 / half as f64;
            let arg = t as f64 * x.exp();
            let bound = arg.abs() * (x.abs() * 3.0 * u + 3.0 * u) + 2e-7;
            assert!(
                (out[i] as f64 - arg.cos()).abs() <= bound,
                "cos t={t} i={i}"
            );
            assert!(
                (out[half + i] as f64 - arg.sin()).abs() <= bound,
                "sin t={t} i={i}"
            );
        }
        if dim % 2 == 1 {
            assert_eq!(out[dim - 1], 0.0);
        }
    }

    #[test]
    fn matches_f64_formula() {
        for &t in &[0.0f32, 1.0, 0.5, 3.25, 17.0, 123.456, 500.0, 999.0, 999.75] {
            check(t, 128);
            check(t, 7);
        }
    }

    #[test]
    fn small_t_within_1e5() {
        // For moderate t the f32 evaluation is within 1e-5 of the exact formula.
        for &t in &[0.0f32, 0.25, 1.0, 2.5, 10.0, 31.7] {
            let mut out = [0f32; 128];
            timestep_embedding(t, 128, 10000.0, &mut out).unwrap();
            for i in 0..64 {
                let arg = t as f64 * (-(10000f64.ln()) * i as f64 / 64.0).exp();
                assert!((out[i] as f64 - arg.cos()).abs() < 1e-5);
                assert!((out[64 + i] as f64 - arg.sin()).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn hand_values_and_errors() {
        // t = 0: cos 0 = 1, sin 0 = 0. dim 4, half 2: freqs 1 and 1/100.
        let mut out = [9f32; 5];
        timestep_embedding(0.0, 5, 10000.0, &mut out).unwrap();
        assert_eq!(out, [1.0, 1.0, 0.0, 0.0, 0.0]);
        let mut out = [0f32; 4];
        timestep_embedding(100.0, 4, 10000.0, &mut out).unwrap();
        assert!((out[0] - 100f32.cos()).abs() < 1e-5);
        assert!((out[1] - 1f32.cos()).abs() < 1e-6);
        assert!((out[3] - 1f32.sin()).abs() < 1e-6);
        assert!(timestep_embedding(1.0, 4, 10000.0, &mut [0f32; 3]).is_err());
        assert!(timestep_embedding(1.0, 4, 0.0, &mut out).is_err());
    }
}
