//! `nn.Linear` (and `Conv1d` with k = 1 applied to one position): y = W·x + b.

use crate::{check_len, check_range, KernelError, Weight, WeightsRef};

/// Lanes of the partial sums in [`dot`]: fixed, so the reduction order never depends on the
/// caller's range, and wide enough for the compiler to vectorise.
const LANES: usize = 8;

/// Σ_k w[k]·x[k] with a fixed order: 8 interleaved partial sums over the full chunks, combined
/// as a balanced tree, then the tail in sequence.
#[inline]
pub(crate) fn dot<W: Weight>(w: &[W], x: &[f32]) -> f32 {
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

/// dx += Wᵀ·dout for the input features `i_range` (`dx.len() == i_range.len()`), given the
/// whole `dout` = ∂L/∂y `[out_features]`: `dx[i] += Σ_o W[o, i]·dout[o]`, terms in o order
/// onto the value in `dx` (so any split of the features gives the same bits).
pub fn linear_backward_input(
    dx: &mut [f32],
    dout: &[f32],
    weight: WeightsRef,
    in_features: usize,
    i_range: core::ops::Range<usize>,
) -> Result<(), KernelError> {
    check_len("linear weight", dout.len() * in_features, weight.len())?;
    check_range(
        "linear input range outside 0..in_features",
        &i_range,
        in_features,
    )?;
    check_len("linear dx", i_range.len(), dx.len())?;
    match weight {
        WeightsRef::F32(w) => columns_times(dx, dout, w, in_features, i_range),
        WeightsRef::F16(w) => columns_times(dx, dout, w, in_features, i_range),
    }
    Ok(())
}

fn columns_times<W: Weight>(
    dx: &mut [f32],
    dout: &[f32],
    w: &[W],
    in_features: usize,
    i_range: core::ops::Range<usize>,
) {
    // Row by row of W: each row's slice is contiguous, and dx[i] still sums o in order.
    for (o, &g) in dout.iter().enumerate() {
        let row = &w[o * in_features + i_range.start..o * in_features + i_range.end];
        for (d, wv) in dx.iter_mut().zip(row) {
            *d += wv.to_f32() * g;
        }
    }
}

/// `dweight[o, :] += dout[o]·x` and `dbias[o] += dout[o]` for the outputs `o_range` (`dweight`
/// holds rows o_range of W, `o_range.len()·in_features`; `dbias.len() == o_range.len()`),
/// given the whole `dout` `[out_features]` and the layer's input `x` `[in_features]`. Called once
/// per sample, the batch sums in call order.
pub fn linear_backward_params(
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    x: &[f32],
    in_features: usize,
    o_range: core::ops::Range<usize>,
) -> Result<(), KernelError> {
    check_len("linear input", in_features, x.len())?;
    check_range(
        "linear output range outside 0..out_features",
        &o_range,
        dout.len(),
    )?;
    check_len("linear dweight", o_range.len() * in_features, dweight.len())?;
    check_len("linear dbias", o_range.len(), dbias.len())?;
    let rows = dweight.chunks_exact_mut(in_features.max(1));
    for ((row, db), &g) in rows.zip(dbias.iter_mut()).zip(&dout[o_range]) {
        *db += g;
        for (d, &v) in row.iter_mut().zip(x) {
            *d += g * v;
        }
    }
    Ok(())
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

    #[test]
    fn backward_matches_finite_differences_and_splits() {
        use crate::gradcheck::{assert_grad, data, dot64, fd_grad, wide};
        let (inf, outf) = (13, 7);
        let (x, w, b, r) = (
            data(inf, 1),
            data(inf * outf, 2),
            data(outf, 3),
            data(outf, 4),
        );
        let f = |x: &[f64], w: &[f64], b: &[f64]| -> f64 {
            let y: Vec<f64> = (0..outf)
                .map(|o| b[o] + (0..inf).map(|i| w[o * inf + i] * x[i]).sum::<f64>())
                .collect();
            dot64(&r, &y)
        };
        let (x64, w64, b64) = (wide(&x), wide(&w), wide(&b));
        let mut dx = vec![0f32; inf];
        linear_backward_input(&mut dx, &r, WeightsRef::F32(&w), inf, 0..inf).unwrap();
        assert_grad(&dx, &fd_grad(&x64, 1e-3, |v| f(v, &w64, &b64)), 1e-6, "dx");
        let (mut dw, mut db) = (vec![0f32; w.len()], vec![0f32; outf]);
        linear_backward_params(&mut dw, &mut db, &r, &x, inf, 0..outf).unwrap();
        assert_grad(&dw, &fd_grad(&w64, 1e-3, |v| f(&x64, v, &b64)), 1e-6, "dw");
        assert_grad(&db, &fd_grad(&b64, 1e-3, |v| f(&x64, &w64, v)), 1e-6, "db");
        // Splits (onto a nonzero start, checking accumulation) give the same bits.
        let (mut dx2, mut dw2, mut db2) = (vec![0f32; inf], vec![0f32; w.len()], vec![0f32; outf]);
        for r_ in [0..4, 4..5, 5..13] {
            linear_backward_input(&mut dx2[r_.clone()], &r, WeightsRef::F32(&w), inf, r_).unwrap();
        }
        for r_ in [0..2, 2..7] {
            let (a, z) = (r_.start, r_.end);
            linear_backward_params(&mut dw2[a * inf..z * inf], &mut db2[a..z], &r, &x, inf, r_)
                .unwrap();
        }
        assert_eq!((dx2, dw2, db2), (dx.clone(), dw.clone(), db.clone()));
        let mut twice = dx.clone();
        linear_backward_input(&mut twice, &r, WeightsRef::F32(&w), inf, 0..inf).unwrap();
        for (t, d) in twice.iter().zip(&dx) {
            assert!((t - 2.0 * d).abs() <= 1e-6);
        }
        // Errors.
        let wr = WeightsRef::F32(&w);
        assert!(linear_backward_input(&mut dx, &r[1..], wr, inf, 0..inf).is_err());
        assert!(linear_backward_input(&mut dx, &r, wr, inf, 0..inf + 1).is_err());
        assert!(linear_backward_input(&mut dx[1..], &r, wr, inf, 0..inf).is_err());
        assert!(linear_backward_params(&mut dw, &mut db, &r, &x[1..], inf, 0..outf).is_err());
        assert!(linear_backward_params(&mut dw, &mut db, &r, &x, inf, 0..outf + 1).is_err());
        assert!(linear_backward_params(&mut dw[1..], &mut db, &r, &x, inf, 0..outf).is_err());
        assert!(linear_backward_params(&mut dw, &mut db[1..], &r, &x, inf, 0..outf).is_err());
    }
}
