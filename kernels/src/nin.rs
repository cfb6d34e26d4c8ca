//! score_sde's `NIN` (layers.py): a per-position linear map over channels whose weight is
//! stored **[in, out]** (not [out, in] like `nn.Linear` or a 1×1 conv):
//! y[o, p] = Σ_c x[c, p]·W[c, o] + b[o]. NCSN++'s attention block uses four of them (q, k, v
//! and the output projection, ncsnpp.md §4.3).

use crate::{check_len, check_range, KernelError, Weight, WeightsRef};

/// `NIN` for the output channels `o` over `t` positions: `x` is [c_in, t], `weight` is
/// [c_in, c_out] row-major (c_out = `bias.len()`), `out` is [o.len(), t]. Each output is
/// Σ_c x[c, p]·W[c, o] accumulated in c order, then + b[o] (the contraction, then the bias,
/// as `contract_inner(x, W) + b`), whatever the range.
pub fn nin(
    x: &[f32],
    c_in: usize,
    t: usize,
    weight: WeightsRef,
    bias: &[f32],
    o: core::ops::Range<usize>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let c_out = bias.len();
    check_len("nin input", c_in * t, x.len())?;
    check_len("nin weight", c_in * c_out, weight.len())?;
    check_range("nin: output range outside 0..c_out", &o, c_out)?;
    check_len("nin output", o.len() * t, out.len())?;
    match weight {
        WeightsRef::F32(w) => nin_rows(x, t, w, bias, o, out),
        WeightsRef::F16(w) => nin_rows(x, t, w, bias, o, out),
    }
    Ok(())
}

fn nin_rows<W: Weight>(
    x: &[f32],
    t: usize,
    w: &[W],
    bias: &[f32],
    o: core::ops::Range<usize>,
    out: &mut [f32],
) {
    let c_out = bias.len();
    if t == 0 {
        return;
    }
    for (row, oc) in out.chunks_exact_mut(t).zip(o) {
        row.fill(0.0);
        // One input channel at a time: the row update vectorises over positions.
        for (c, xc) in x.chunks_exact(t).enumerate() {
            let wv = w[c * c_out + oc].to_f32();
            for (y, &v) in row.iter_mut().zip(xc) {
                *y += v * wv;
            }
        }
        let b = bias[oc];
        row.iter_mut().for_each(|y| *y += b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::data;

    #[test]
    fn hand_computed_in_out_layout() {
        // c_in 2, c_out 3, t 2: W[c, o] = 10c + o.
        let x = [1.0f32, 2.0, 3.0, 4.0]; // channel 0 = [1, 2], channel 1 = [3, 4]
        let w = [0.0f32, 1.0, 2.0, 10.0, 11.0, 12.0];
        let b = [0.5f32, -1.0, 0.0];
        let mut out = [0f32; 6];
        nin(&x, 2, 2, WeightsRef::F32(&w), &b, 0..3, &mut out).unwrap();
        // y[o, p] = x0[p]·o + x1[p]·(10 + o) + b[o].
        assert_eq!(out, [30.5, 40.5, 33.0, 45.0, 38.0, 52.0]);
    }

    #[test]
    fn matches_f64_reference_split_and_f16() {
        let (c_in, c_out, t) = (7, 5, 13);
        let x = data(c_in * t, 1);
        let w = data(c_in * c_out, 2);
        let b = data(c_out, 3);
        let mut whole = vec![0f32; c_out * t];
        nin(&x, c_in, t, WeightsRef::F32(&w), &b, 0..c_out, &mut whole).unwrap();
        for o in 0..c_out {
            for p in 0..t {
                let want: f64 = (0..c_in)
                    .map(|c| x[c * t + p] as f64 * w[c * c_out + o] as f64)
                    .sum::<f64>()
                    + b[o] as f64;
                assert!((whole[o * t + p] as f64 - want).abs() < 1e-5);
            }
        }
        let mut parts = vec![0f32; c_out * t];
        let (a, rest) = parts.split_at_mut(2 * t);
        nin(&x, c_in, t, WeightsRef::F32(&w), &b, 0..2, a).unwrap();
        nin(&x, c_in, t, WeightsRef::F32(&w), &b, 2..c_out, rest).unwrap();
        assert_eq!(whole, parts);
        // f16 weights give exactly the f32 result on the widened weights.
        let w16: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
        let wide: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let mut a16 = vec![0f32; c_out * t];
        let mut a32 = vec![0f32; c_out * t];
        nin(&x, c_in, t, WeightsRef::F16(&w16), &b, 0..c_out, &mut a16).unwrap();
        nin(&x, c_in, t, WeightsRef::F32(&wide), &b, 0..c_out, &mut a32).unwrap();
        assert_eq!(a16, a32);
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut out = [0f32; 4];
        let w = WeightsRef::F32(&[0.0; 4]);
        assert!(nin(&[0.0; 4], 2, 2, w, &[0.0; 2], 0..3, &mut out).is_err());
        assert!(nin(&[0.0; 3], 2, 2, w, &[0.0; 2], 0..2, &mut out).is_err());
        assert!(nin(
            &[0.0; 4],
            2,
            2,
            WeightsRef::F32(&[0.0; 3]),
            &[0.0; 2],
            0..2,
            &mut out
        )
        .is_err());
    }
}
