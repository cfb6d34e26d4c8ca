//! Element-wise layers: SiLU (`torch.nn.SiLU`) and the residual addition.

/// SiLU(v) = v·sigmoid(v), written v / (1 + e^(−v)) as PyTorch's CPU kernel does.
#[inline(always)]
pub fn silu(v: f32) -> f32 {
    v / (1.0 + libm::expf(-v))
}

/// x ← SiLU(x), element-wise.
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
        // Large negative inputs: e^(-v) overflows to inf and the quotient is -0, not NaN.
        assert_eq!(silu(-200.0), 0.0);
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
}
