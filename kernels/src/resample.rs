//! The parameter-free resamplers of guided-diffusion's Upsample/Downsample (use_conv=False),
//! used inside the up/down ResBlocks: nearest 2× upsampling and 2×2 average pooling.
//!
//! The forwards take no `Result` (the host's call sites are infallible by construction): `x` is
//! the whole input [C, h, w] and `out` holds the channels `c`; with inconsistent lengths only
//! the channels that fit are written (and debug builds assert). The backwards check their
//! lengths and return a `Result`, like every other backward.

use crate::{check_len, check_range, KernelError};

/// out[c, 2y+dy, 2x+dx] = x[c, y, x] for the channels `c` (`F.interpolate(scale_factor=2,
/// mode="nearest")`); out is [c.len(), 2h, 2w].
pub fn upsample_nearest2x(
    x: &[f32],
    h: usize,
    w: usize,
    c: core::ops::Range<usize>,
    out: &mut [f32],
) {
    let plane = h * w;
    debug_assert!(c.end * plane <= x.len() && out.len() == c.len() * 4 * plane);
    if plane == 0 {
        return;
    }
    let src = x.get(c.start * plane..).unwrap_or(&[]);
    for (xc, oc) in src.chunks_exact(plane).zip(out.chunks_exact_mut(4 * plane)) {
        for (row, orows) in xc.chunks_exact(w).zip(oc.chunks_exact_mut(4 * w)) {
            let (top, bottom) = orows.split_at_mut(2 * w);
            for (&v, o) in row.iter().zip(top.chunks_exact_mut(2)) {
                o[0] = v;
                o[1] = v;
            }
            bottom.copy_from_slice(top);
        }
    }
}

/// out[c, y, x] = mean of the 2×2 block x[c, 2y..2y+2, 2x..2x+2] for the channels `c`
/// (`avg_pool2d(kernel 2, stride 2)`; summed row by row, then ×1/4, as PyTorch); h and w are the
/// input size (even), out is [c.len(), h/2, w/2].
pub fn avg_pool2x2(x: &[f32], h: usize, w: usize, c: core::ops::Range<usize>, out: &mut [f32]) {
    let plane = h * w;
    let (oh, ow) = (h / 2, w / 2);
    debug_assert!(h.is_multiple_of(2) && w.is_multiple_of(2));
    debug_assert!(c.end * plane <= x.len() && out.len() == c.len() * oh * ow);
    if oh == 0 || ow == 0 {
        return;
    }
    let src = x.get(c.start * plane..).unwrap_or(&[]);
    for (xc, oc) in src.chunks_exact(plane).zip(out.chunks_exact_mut(oh * ow)) {
        for (rows, orow) in xc.chunks_exact(2 * w).zip(oc.chunks_exact_mut(ow)) {
            let (r0, r1) = rows.split_at(w);
            for (i, o) in orow.iter_mut().enumerate() {
                *o = avg4(r0[2 * i], r0[2 * i + 1], r1[2 * i], r1[2 * i + 1]);
            }
        }
    }
}

/// The mean of one 2×2 block in PyTorch's order: (((a + b) + c) + d) / 4, with a, b the top
/// row and c, d the bottom row (the CPU loop and the device kernel both call this).
#[inline]
pub fn avg4(a: f32, b: f32, c: f32, d: f32) -> f32 {
    (a + b + c + d) / 4.0
}

/// Checks a backward call: `dout` holds whole [C, oh, ow] maps and `c` lies inside C; returns
/// the plane size of dout.
fn check_resample(
    dout: &[f32],
    oh: usize,
    ow: usize,
    c: &core::ops::Range<usize>,
) -> Result<usize, KernelError> {
    let plane = oh * ow;
    if plane == 0 || !dout.len().is_multiple_of(plane) {
        return Err(KernelError::Shape(
            "resample backward: dout is not whole maps",
        ));
    }
    check_range(
        "resample backward: channel range outside dout",
        c,
        dout.len() / plane,
    )?;
    Ok(plane)
}

/// Backward of [`upsample_nearest2x`] for the channels `c`: dx[c, y, x] += the sum of the
/// 2×2 block dout[c, 2y..2y+2, 2x..2x+2], summed ((top left + top right) + (bottom left +
/// bottom right)). `dout` is the whole [C, 2h, 2w] gradient, `dx` is [c.len(), h, w].
pub fn upsample_nearest2x_backward(
    dx: &mut [f32],
    dout: &[f32],
    h: usize,
    w: usize,
    c: core::ops::Range<usize>,
) -> Result<(), KernelError> {
    let oplane = check_resample(dout, 2 * h, 2 * w, &c)?;
    check_len("upsample backward dx", c.len() * h * w, dx.len())?;
    let src = &dout[c.start * oplane..c.end * oplane];
    for (dc, gc) in dx.chunks_exact_mut(h * w).zip(src.chunks_exact(oplane)) {
        for (drow, rows) in dc.chunks_exact_mut(w).zip(gc.chunks_exact(4 * w)) {
            let (r0, r1) = rows.split_at(2 * w);
            for (i, d) in drow.iter_mut().enumerate() {
                *d += (r0[2 * i] + r0[2 * i + 1]) + (r1[2 * i] + r1[2 * i + 1]);
            }
        }
    }
    Ok(())
}

/// Backward of [`avg_pool2x2`] for the channels `c`: every pixel of a 2×2 block gets a quarter
/// of the block's gradient, dx[c, y, x] += dout[c, y/2, x/2]/4. `dout` is the whole
/// [C, h/2, w/2] gradient, `dx` is [c.len(), h, w] (h, w even).
pub fn avg_pool2x2_backward(
    dx: &mut [f32],
    dout: &[f32],
    h: usize,
    w: usize,
    c: core::ops::Range<usize>,
) -> Result<(), KernelError> {
    if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        return Err(KernelError::Shape(
            "avg pool backward: h and w must be even",
        ));
    }
    let (oh, ow) = (h / 2, w / 2);
    let oplane = check_resample(dout, oh, ow, &c)?;
    check_len("avg pool backward dx", c.len() * h * w, dx.len())?;
    let src = &dout[c.start * oplane..c.end * oplane];
    for (dc, gc) in dx.chunks_exact_mut(h * w).zip(src.chunks_exact(oplane)) {
        for (drows, grow) in dc.chunks_exact_mut(2 * w).zip(gc.chunks_exact(ow)) {
            for drow in drows.chunks_exact_mut(w) {
                for (d, &g) in drow.iter_mut().zip(grow.iter().flat_map(|g| [g, g])) {
                    *d += g * 0.25;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsample_hand_computed() {
        // 2 channels of 1×2: [1, 2], [3, 4] → 2×4 each.
        let x = [1.0, 2.0, 3.0, 4.0];
        let mut out = [0f32; 16];
        upsample_nearest2x(&x, 1, 2, 0..2, &mut out);
        assert_eq!(
            out,
            [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
        );
        let mut one = [0f32; 8];
        upsample_nearest2x(&x, 1, 2, 1..2, &mut one);
        assert_eq!(one, out[8..]);
    }

    #[test]
    fn upsample_matches_index_formula() {
        let (c, h, w) = (3, 3, 5);
        let x: Vec<f32> = (0..c * h * w).map(|i| i as f32).collect();
        let mut out = vec![0f32; c * 4 * h * w];
        upsample_nearest2x(&x, h, w, 0..c, &mut out);
        for ch in 0..c {
            for y in 0..2 * h {
                for xx in 0..2 * w {
                    assert_eq!(
                        out[(ch * 2 * h + y) * 2 * w + xx],
                        x[(ch * h + y / 2) * w + xx / 2]
                    );
                }
            }
        }
        let mut split = vec![0f32; c * 4 * h * w];
        upsample_nearest2x(&x, h, w, 0..1, &mut split[..4 * h * w]);
        upsample_nearest2x(&x, h, w, 1..3, &mut split[4 * h * w..]);
        assert_eq!(out, split);
    }

    #[test]
    fn avg_pool_hand_computed_and_split() {
        // One 2×4 channel: blocks [1,2;5,6] → 3.5 and [3,4;7,8] → 5.5; channel 2 = channel 1 + 10.
        let x: Vec<f32> = (1..=8).chain(11..=18).map(|v| v as f32).collect();
        let mut out = [0f32; 4];
        avg_pool2x2(&x, 2, 4, 0..2, &mut out);
        assert_eq!(out, [3.5, 5.5, 13.5, 15.5]);
        let mut one = [0f32; 2];
        avg_pool2x2(&x, 2, 4, 1..2, &mut one);
        assert_eq!(one, out[2..]);
    }

    #[test]
    fn avg_pool_then_upsample_of_constant_blocks_is_identity() {
        // A map made of constant 2×2 blocks survives upsample → pool exactly (values with few
        // mantissa bits, so 3v and 4v are exact).
        let (c, h, w) = (2, 4, 6);
        let base: Vec<f32> = (0..c * h * w / 4).map(|i| i as f32 * 0.25 - 2.0).collect();
        let mut x = vec![0f32; c * h * w];
        upsample_nearest2x(&base, h / 2, w / 2, 0..c, &mut x);
        let mut pooled = vec![0f32; base.len()];
        avg_pool2x2(&x, h, w, 0..c, &mut pooled);
        assert_eq!(pooled, base);
    }

    /// Both backwards against finite differences of the forwards (linear maps, so the f64
    /// gradient of Σ r·out is exact), split by channel, accumulating onto a nonzero start.
    #[test]
    fn backwards_match_finite_differences_and_split() {
        use crate::gradcheck::{assert_grad, data, dot64, fd_grad, wide};
        let (c, h, w) = (3, 4, 6);
        let x = data(c * h * w, 1);
        // Forwards in f64 from the index formulas.
        let up = |v: &[f64]| -> Vec<f64> {
            let mut o = vec![0f64; c * 4 * h * w];
            for ch in 0..c {
                for y in 0..2 * h {
                    for xx in 0..2 * w {
                        o[(ch * 2 * h + y) * 2 * w + xx] = v[(ch * h + y / 2) * w + xx / 2];
                    }
                }
            }
            o
        };
        let pool = |v: &[f64]| -> Vec<f64> {
            let mut o = vec![0f64; c * h * w / 4];
            for ch in 0..c {
                for y in 0..h {
                    for xx in 0..w {
                        o[(ch * h / 2 + y / 2) * w / 2 + xx / 2] += v[(ch * h + y) * w + xx] / 4.0;
                    }
                }
            }
            o
        };
        let r_up = data(c * 4 * h * w, 2);
        let r_pool = data(c * h * w / 4, 3);
        let x64 = wide(&x);
        let want_up: Vec<f64> = fd_grad(&x64, 1e-3, |v| dot64(&r_up, &up(v)));
        let want_pool: Vec<f64> = fd_grad(&x64, 1e-3, |v| dot64(&r_pool, &pool(v)));
        let mut d = vec![0f32; x.len()];
        upsample_nearest2x_backward(&mut d, &r_up, h, w, 0..c).unwrap();
        assert_grad(&d, &want_up, 1e-6, "upsample");
        let mut d2 = vec![0f32; x.len()];
        avg_pool2x2_backward(&mut d2, &r_pool, h, w, 0..c).unwrap();
        assert_grad(&d2, &want_pool, 1e-6, "avg pool");
        type Backward = fn(
            &mut [f32],
            &[f32],
            usize,
            usize,
            core::ops::Range<usize>,
        ) -> Result<(), KernelError>;
        let cases: [(Backward, &Vec<f32>, &Vec<f32>); 2] = [
            (upsample_nearest2x_backward, &d, &r_up),
            (avg_pool2x2_backward, &d2, &r_pool),
        ];
        for (f, whole, r) in cases {
            let mut split = vec![1f32; x.len()];
            f(&mut split[..h * w], r, h, w, 0..1).unwrap();
            f(&mut split[h * w..], r, h, w, 1..3).unwrap();
            for (s, v) in split.iter().zip(whole.iter()) {
                assert_eq!(*s, 1.0 + v);
            }
            assert!(f(&mut split[1..], r, h, w, 0..3).is_err());
            assert!(f(&mut split, &r[1..], h, w, 0..3).is_err());
            assert!(f(&mut split, r, h, w, 0..4).is_err());
        }
        assert!(avg_pool2x2_backward(&mut d2, &r_pool, h + 1, w, 0..c).is_err());
    }
}
