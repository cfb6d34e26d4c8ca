//! `nn.Linear` (and `Conv1d` with k = 1 applied to one position): y = W·x + b.

use crate::{check_len, check_range, KernelError, Weight, WeightsRef};

/// Lanes of the partial sums in [`dot`]: fixed, so the reduction order never depends on the
/// caller's range, and wide enough for the compiler to vectorise.
const LANES: usize = 8;

/// Σ_k w[k]·x[k] with a fixed order: 8 interleaved partial sums over the full chunks, combined
/// as a balanced tree, then the tail in sequence.
#[inline]
fn dot<W: Weight>(w: &[W], x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let wc = w.chunks_exact(LANES);
    let xc = x.chunks_exact(LANES);
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (wk, xk) in wc.zip(xc) {
        for l in 0..LANES {
            acc[l] += wk[l].to_f32() * xk[l];
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (wk, xk) in wt.iter().zip(xt) {
        s += wk.to_f32() * *xk;
    }
    s
}

/// `y[o] = W[o,:]·x + b[o]` for o in `o_range`; W is [out, in] row-major (PyTorch layout),
/// `out.len() == o_range.len()`. The number of outputs is `bias.len()`.
pub fn linear(
    x: &[f32],
    weight: WeightsRef,
    bias: &[f32],
    in_features: usize,
    o_range: core::ops::Range<usize>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let out_features = bias.len();
    check_len("linear input", in_features, x.len())?;
    check_len("linear weight", out_features * in_features, weight.len())?;
    check_range(
        "linear output range outside 0..out_features",
        &o_range,
        out_features,
    )?;
    check_len("linear output", o_range.len(), out.len())?;
    match weight {
        WeightsRef::F32(w) => linear_rows(x, w, bias, in_features, o_range, out),
        WeightsRef::F16(w) => linear_rows(x, w, bias, in_features, o_range, out),
    }
    Ok(())
}

fn linear_rows<W: Weight>(
    x: &[f32],
    w: &[W],
    bias: &[f32],
    in_features: usize,
    o_range: core::ops::Range<usize>,
    out: &mut [f32],
) {
    for (y, o) in out.iter_mut().zip(o_range) {
        let row = &w[o * in_features..(o + 1) * in_features];
        *y = dot(row, x) + bias[o];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    #[test]
    fn hand_computed() {
        // W = [[1, 2, 3], [-1, 0, 0.5]], x = [1, -1, 2], b = [0.5, 1]
        let w = [1.0, 2.0, 3.0, -1.0, 0.0, 0.5];
        let mut y = [0f32; 2];
        linear(
            &[1.0, -1.0, 2.0],
            WeightsRef::F32(&w),
            &[0.5, 1.0],
            3,
            0..2,
            &mut y,
        )
        .unwrap();
        assert_eq!(y, [5.5, 1.0]);
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 8388608.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_f64_and_splits_and_f16() {
        let (inf, outf) = (37, 11);
        let x = data(inf, 1);
        let w = data(inf * outf, 2);
        let b = data(outf, 3);
        let mut y = vec![0f32; outf];
        linear(&x, WeightsRef::F32(&w), &b, inf, 0..outf, &mut y).unwrap();
        for o in 0..outf {
            let want: f64 = b[o] as f64
                + (0..inf)
                    .map(|k| w[o * inf + k] as f64 * x[k] as f64)
                    .sum::<f64>();
            assert!((y[o] as f64 - want).abs() < 1e-5);
        }
        // Any split of the outputs gives the same bits.
        let mut y2 = vec![0f32; outf];
        for r in [0..3, 3..4, 4..11] {
            linear(&x, WeightsRef::F32(&w), &b, inf, r.clone(), &mut y2[r]).unwrap();
        }
        assert_eq!(y, y2);
        // f16 weights equal the same values stored as f32.
        let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let w32: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let (mut a, mut c) = (vec![0f32; outf], vec![0f32; outf]);
        linear(&x, WeightsRef::F16(&w16), &b, inf, 0..outf, &mut a).unwrap();
        linear(&x, WeightsRef::F32(&w32), &b, inf, 0..outf, &mut c).unwrap();
        assert_eq!(a, c);
    }

    #[test]
    fn rejects_bad_shapes() {
        let w = [0f32; 6];
        let mut y = [0f32; 2];
        assert!(linear(&[0.0; 2], WeightsRef::F32(&w), &[0.0; 2], 3, 0..2, &mut y).is_err());
        assert!(linear(&[0.0; 3], WeightsRef::F32(&w), &[0.0; 3], 3, 0..2, &mut y).is_err());
        assert!(linear(&[0.0; 3], WeightsRef::F32(&w), &[0.0; 2], 3, 1..3, &mut y).is_err());
        assert!(linear(&[0.0; 3], WeightsRef::F32(&w), &[0.0; 2], 3, 0..1, &mut y).is_err());
    }
}
