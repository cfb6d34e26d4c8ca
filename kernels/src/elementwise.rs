//! Element-wise layers: SiLU (`torch.nn.SiLU`) and the residual addition.
//!
//! Backward of the residual addition `y = a + b`: da += dy and db += dy, i.e. two
//! [`add_inplace`] calls (or one, when a gradient buffer can simply start as a copy of dy).

use crate::{check_len, KernelError};

/// SiLU(v) = v·sigmoid(v), written v / (1 + e^(−v)) as PyTorch's CPU kernel does.
#[inline(always)]
pub fn silu(v: f32) -> f32 {
    v / (1.0 + exp(-v))
}

/// e^x in f32 to within 2 ulp, branch-free so loops over it vectorise (libm's `expf` does not;
/// SiLU runs over ~140 M elements per ADM forward). Cephes' `expf`: x = n·ln 2 + r with
/// |r| ≤ ln 2 / 2, a degree-7 polynomial for e^r, then 2^n through the exponent bits. x is
/// clamped to [−87, 88] so 2^n stays a normal number: e^x saturates at e^88 ≈ 1.7e38 and
/// e^−87 ≈ 1.6e−38 instead of overflowing / going subnormal (harmless for SiLU and softmax).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    // ln 2 split in a part with few mantissa bits (so n·LN2_HI is exact) and the rest.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to an integer (round-to-nearest) for |v| < 2^22.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    let e = p * r * r + r + 1.0;
    // 2^n: n sits in the low mantissa bits of `shifted` (its ulp is 1), no float→int
    // conversion needed; n ∈ [−126, 127] after the clamp, so the biased exponent is in 1..=254.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    e * scale
}

/// SiLU′(v) = σ(v)·(1 + v·(1 − σ(v))), σ(v) = 1/(1 + e^(−v)): the derivative of [`silu`].
#[inline(always)]
pub fn silu_grad(v: f32) -> f32 {
    let sig = 1.0 / (1.0 + exp(-v));
    sig * (1.0 + v * (1.0 - sig))
}

/// dinp += dout·SiLU′(inp), element-wise (`inp` is the SiLU's input, saved by the forward).
pub fn silu_backward(dinp: &mut [f32], dout: &[f32], inp: &[f32]) -> Result<(), KernelError> {
    check_len("silu backward dout", dinp.len(), dout.len())?;
    check_len("silu backward input", dinp.len(), inp.len())?;
    for ((d, &g), &v) in dinp.iter_mut().zip(dout).zip(inp) {
        *d += g * silu_grad(v);
    }
    Ok(())
}

/// x ← SiLU(x), element-wise. Always inlined, so a caller compiled with wider vectors (the
/// GroupNorm's AVX2 twin) vectorises it with them.
#[inline(always)]
pub fn silu_inplace(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = silu(*v);
    }
}

/// dst ← dst + src, element-wise over the common length (the caller passes equal lengths; the
/// residual connections of ResBlock and AttentionBlock).
pub fn add_inplace(dst: &mut [f32], src: &[f32]) {
    debug_assert_eq!(dst.len(), src.len());
    for (d, s) in dst.iter_mut().zip(src) {
        *d += *s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_within_2_ulp() {
        let mut worst = 0f64;
        for i in -870_000..=880_000 {
            let x = i as f32 * 1e-4;
            let want = (x as f64).exp();
            let rel = ((exp(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(
            worst <= 2.0 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
        assert_eq!(exp(0.0), 1.0);
        // Saturation instead of inf / subnormals.
        assert_eq!(exp(1000.0), exp(88.0));
        assert!(exp(-1000.0) > 0.0 && exp(-1000.0) < 2e-38);
    }

    #[test]
    fn exp_close_to_libm_and_handles_extremes() {
        // Against libm's correctly-rounded-ish expf over the softmax range x − max ≤ 0 and the
        // SiLU range, at non-round arguments.
        let mut worst = 0f32;
        for i in 0..200_000 {
            let x = -87.0 + i as f32 * (87.0 + 88.0) / 200_000.0 + 1.234e-4;
            let want = libm::expf(x);
            worst = worst.max(((exp(x) - want) / want).abs());
        }
        assert!(
            worst <= 3.0 * f32::EPSILON,
            "worst relative error {worst:e}"
        );
        // Exact where e^x is exactly representable: x = 0, and e^(n·ln 2) within 1 ulp.
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-0.0), 1.0);
        // Very negative inputs: positive, tiny, monotone, never subnormal, never NaN.
        let tiny = [-87.0f32, -100.0, -1e4, -3.4e38, f32::NEG_INFINITY].map(exp);
        assert!(
            tiny.iter()
                .all(|&v| v > 0.0 && v < 1.7e-38 && v.is_normal()),
            "{tiny:?}"
        );
        assert!(exp(-86.0) > exp(-87.0));
        // Very large inputs saturate at e^88 (finite); NaN propagates.
        assert!(exp(f32::INFINITY).is_finite() && exp(f32::INFINITY) == exp(88.0));
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn silu_matches_f64_formula() {
        for i in -200..=200 {
            let v = i as f32 * 0.1;
            let want = v as f64 / (1.0 + (-(v as f64)).exp());
            let got = silu(v) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                "{v}: {got} vs {want}"
            );
        }
        assert_eq!(silu(0.0), 0.0);
        // Large inputs: no inf / NaN, the limits v → −∞ (0) and v → ∞ (v).
        assert!(silu(-200.0).abs() < 1e-30);
        assert_eq!(silu(200.0), 200.0);
    }

    #[test]
    fn inplace_helpers() {
        let mut x = [1.0f32, -2.0, 0.5];
        silu_inplace(&mut x);
        assert_eq!(x, [silu(1.0), silu(-2.0), silu(0.5)]);
        let mut d = [1.0f32, 2.0, 3.0];
        add_inplace(&mut d, &[0.5, -2.0, 1.0]);
        assert_eq!(d, [1.5, 0.0, 4.0]);
    }

    #[test]
    fn silu_backward_matches_f64_derivative() {
        let silu64 = |v: f64| v / (1.0 + (-v).exp());
        let x: Vec<f32> = (-120..=120).map(|i| i as f32 * 0.1).collect();
        let dout: Vec<f32> = x.iter().map(|v| 1.0 + v * 0.01).collect();
        let mut dinp = vec![0.5f32; x.len()];
        silu_backward(&mut dinp, &dout, &x).unwrap();
        for ((&d, &v), &g) in dinp.iter().zip(&x).zip(&dout) {
            let h = 1e-4;
            let fd = (silu64(v as f64 + h) - silu64(v as f64 - h)) / (2.0 * h);
            let want = 0.5 + g as f64 * fd;
            assert!((d as f64 - want).abs() < 1e-6, "{v}: {d} vs {want}");
        }
        // SiLU′(0) = 1/2 exactly; saturation gives 0 and 1 without NaN.
        assert_eq!(silu_grad(0.0), 0.5);
        assert!(silu_grad(-200.0).abs() < 1e-30 && silu_grad(200.0) == 1.0);
        assert!(silu_backward(&mut dinp, &dout[1..], &x).is_err());
        assert!(silu_backward(&mut dinp, &dout, &x[1..]).is_err());
    }
}
