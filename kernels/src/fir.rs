//! score_sde's FIR resampling (`up_or_down_sampling.upsample_2d` / `downsample_2d` with the
//! kernel k = [1, 3, 3, 1], i.e. `upfirdn2d_native`), as used by NCSN++'s BigGAN ResBlocks and
//! its input/output image pyramids (ncsnpp.md §5).
//!
//! The 2-D kernel is outer(k, k)/64 (×4 when upsampling, gain·factor²), applied with zero
//! padding, so borders lose weight. Every coefficient is a multiple of 1/64 and exact in f32.
//! Per axis, with x[−1] = x[n] = 0:
//! - up by 2 (pad (2, 1)): out[2i] = ¼·x[i−1] + ¾·x[i], out[2i+1] = ¾·x[i] + ¼·x[i+1];
//! - down by 2 (pad (1, 1)): out[i] = (x[2i−1] + 3·x[2i] + 3·x[2i+1] + x[2i+2])/8.
//!
//! Upsampling is computed polyphase (the 4 non-zero taps of the zero-stuffed signal), not as
//! the native code's 16-tap convolution over inserted zeros: the skipped terms are exact zeros.
//! Each output is one sum of products in a fixed tap order (rows outer, columns inner), so
//! channel splits are bit-identical. Like [`crate::resample`], `x` is the whole [C, h, w] input
//! and `out` holds the channels `c`.

use crate::{check_len, check_range, KernelError};

/// score_sde's `fir_kernel` for NCSN++: [1, 3, 3, 1].
pub const FIR_KERNEL: [f32; 4] = [1.0, 3.0, 3.0, 1.0];

/// Per-axis taps of one upsampled output position `o` of an axis of length `n`: up to two
/// (input index, weight) pairs, the weights being k/4 (k/8 of the normalised kernel times the
/// per-axis gain factor 2).
#[inline]
fn up_taps(o: usize, n: usize) -> [(usize, f32, bool); 2] {
    let i = o / 2;
    if o.is_multiple_of(2) {
        // x[i−1]·¼ + x[i]·¾ (taps in ascending input order).
        [(i.wrapping_sub(1), 0.25, i >= 1), (i, 0.75, true)]
    } else {
        [(i, 0.75, true), (i + 1, 0.25, i + 1 < n)]
    }
}

/// `upsample_2d(x, [1,3,3,1], factor=2)` for the channels `c`: `x` is [C, h, w], `out` is
/// [c.len(), 2h, 2w]. out[Y, X] = Σ_{(iy, wy)} Σ_{(ix, wx)} (wy·wx)·x[iy, ix] over the in-bounds
/// taps of [`up_taps`], rows outer.
pub fn fir_upsample2x(
    x: &[f32],
    h: usize,
    w: usize,
    c: core::ops::Range<usize>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let plane = check_maps("fir upsample", x, h, w, &c)?;
    check_len("fir upsample output", c.len() * 4 * plane, out.len())?;
    let (oh, ow) = (2 * h, 2 * w);
    let src = &x[c.start * plane..c.end * plane];
    for (xc, oc) in src.chunks_exact(plane).zip(out.chunks_exact_mut(oh * ow)) {
        for (y, orow) in oc.chunks_exact_mut(ow).enumerate() {
            let ty = up_taps(y, h);
            for (xo, o) in orow.iter_mut().enumerate() {
                let tx = up_taps(xo, w);
                let mut s = 0f32;
                for &(iy, wy, ok_y) in &ty {
                    if !ok_y {
                        continue;
                    }
                    let row = &xc[iy * w..(iy + 1) * w];
                    for &(ix, wx, ok_x) in &tx {
                        if ok_x {
                            s += (wy * wx) * row[ix];
                        }
                    }
                }
                *o = s;
            }
        }
    }
    Ok(())
}

/// `downsample_2d(x, [1,3,3,1], factor=2)` for the channels `c`: `x` is [C, h, w] with h, w
/// even, `out` is [c.len(), h/2, w/2]. out[i, j] = Σ_{dy, dx ∈ 0..4} (k[dy]·k[dx]/64)·
/// x[2i−1+dy, 2j−1+dx] over the in-bounds taps, dy outer.
pub fn fir_downsample2x(
    x: &[f32],
    h: usize,
    w: usize,
    c: core::ops::Range<usize>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    if !h.is_multiple_of(2) || !w.is_multiple_of(2) {
        return Err(KernelError::Shape("fir downsample: h and w must be even"));
    }
    let plane = check_maps("fir downsample", x, h, w, &c)?;
    let (oh, ow) = (h / 2, w / 2);
    check_len("fir downsample output", c.len() * oh * ow, out.len())?;
    let src = &x[c.start * plane..c.end * plane];
    for (xc, oc) in src.chunks_exact(plane).zip(out.chunks_exact_mut(oh * ow)) {
        for (i, orow) in oc.chunks_exact_mut(ow).enumerate() {
            for (j, o) in orow.iter_mut().enumerate() {
                let mut s = 0f32;
                for (dy, &ky) in FIR_KERNEL.iter().enumerate() {
                    let Some(iy) = (2 * i + dy).checked_sub(1).filter(|&r| r < h) else {
                        continue;
                    };
                    let row = &xc[iy * w..(iy + 1) * w];
                    for (dx, &kx) in FIR_KERNEL.iter().enumerate() {
                        if let Some(ix) = (2 * j + dx).checked_sub(1).filter(|&q| q < w) {
                            s += (ky * kx / 64.0) * row[ix];
                        }
                    }
                }
                *o = s;
            }
        }
    }
    Ok(())
}

/// Checks that `x` holds whole h×w maps and `c` lies inside them; returns the plane size.
fn check_maps(
    what: &'static str,
    x: &[f32],
    h: usize,
    w: usize,
    c: &core::ops::Range<usize>,
) -> Result<usize, KernelError> {
    let plane = h * w;
    if plane == 0 || !x.len().is_multiple_of(plane) {
        return Err(KernelError::Shape(
            "fir resample: empty maps or input not whole h×w maps",
        ));
    }
    check_range(what, c, x.len() / plane)?;
    Ok(plane)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::data;

    /// `upfirdn2d_native` in f64, literally: zero insertion, padding, true 2-D convolution
    /// with outer(k, k)/Σ·gain (flipped and cross-correlated), then every `down`-th sample.
    fn upfirdn2d_naive(
        x: &[f32],
        h: usize,
        w: usize,
        up: usize,
        down: usize,
        pad: (usize, usize),
        gain: f64,
    ) -> (Vec<f64>, usize, usize) {
        let k1: Vec<f64> = FIR_KERNEL.iter().map(|&v| v as f64).collect();
        let sum: f64 = k1.iter().sum::<f64>().powi(2);
        let kk = |a: usize, b: usize| k1[a] * k1[b] / sum * gain;
        let (uh, uw) = (h * up + pad.0 + pad.1, w * up + pad.0 + pad.1);
        let mut z = vec![0f64; uh * uw];
        for y in 0..h {
            for xx in 0..w {
                z[(y * up + pad.0) * uw + xx * up + pad.0] = x[y * w + xx] as f64;
            }
        }
        let (ch, cw) = (uh - 3, uw - 3);
        let (oh, ow) = ((ch - 1) / down + 1, (cw - 1) / down + 1);
        let mut out = vec![0f64; oh * ow];
        for i in 0..oh {
            for j in 0..ow {
                let (y0, x0) = (i * down, j * down);
                let mut s = 0.0;
                for a in 0..4 {
                    for b in 0..4 {
                        // Flipped kernel: a true convolution.
                        s += kk(3 - a, 3 - b) * z[(y0 + a) * uw + x0 + b];
                    }
                }
                out[i * ow + j] = s;
            }
        }
        (out, oh, ow)
    }

    fn assert_close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (*g as f64 - w).abs() <= 4e-7 * (1.0 + w.abs()),
                "{g} vs {w}"
            );
        }
    }

    #[test]
    fn upsample_matches_upfirdn2d_native() {
        let (c, h, w) = (3, 5, 4);
        let x = data(c * h * w, 11);
        let mut out = vec![f32::NAN; c * 4 * h * w];
        fir_upsample2x(&x, h, w, 0..c, &mut out).unwrap();
        for ch in 0..c {
            let (want, oh, ow) =
                upfirdn2d_naive(&x[ch * h * w..][..h * w], h, w, 2, 1, (2, 1), 4.0);
            assert_eq!((oh, ow), (2 * h, 2 * w));
            assert_close(&out[ch * oh * ow..][..oh * ow], &want);
        }
    }

    #[test]
    fn downsample_matches_upfirdn2d_native() {
        let (c, h, w) = (2, 6, 8);
        let x = data(c * h * w, 12);
        let mut out = vec![f32::NAN; c * h * w / 4];
        fir_downsample2x(&x, h, w, 0..c, &mut out).unwrap();
        for ch in 0..c {
            let (want, oh, ow) =
                upfirdn2d_naive(&x[ch * h * w..][..h * w], h, w, 1, 2, (1, 1), 1.0);
            assert_eq!((oh, ow), (h / 2, w / 2));
            assert_close(&out[ch * oh * ow..][..oh * ow], &want);
        }
    }

    #[test]
    fn hand_computed_ones_and_delta() {
        // Ones 4×4 → 2×2: every output sees 7/8 of the kernel per axis (one tap outside).
        let mut d = [0f32; 4];
        fir_downsample2x(&[1.0; 16], 4, 4, 0..1, &mut d).unwrap();
        assert_eq!(d, [49.0 / 64.0; 4]);
        // Ones 2×2 → 4×4: per axis [¾, 1, 1, ¾].
        let mut u = [0f32; 16];
        fir_upsample2x(&[1.0; 4], 2, 2, 0..1, &mut u).unwrap();
        let axis = [0.75f32, 1.0, 1.0, 0.75];
        for y in 0..4 {
            for x in 0..4 {
                assert_eq!(u[y * 4 + x], axis[y] * axis[x]);
            }
        }
        // A delta at (1, 1) of a 3×3 map spreads [¼, ¾, ¾, ¼] over rows/columns 1..5.
        let mut x = [0f32; 9];
        x[4] = 1.0;
        let mut u = [0f32; 36];
        fir_upsample2x(&x, 3, 3, 0..1, &mut u).unwrap();
        let k = [0.0f32, 0.25, 0.75, 0.75, 0.25, 0.0];
        for y in 0..6 {
            for xx in 0..6 {
                assert_eq!(u[y * 6 + xx], k[y] * k[xx]);
            }
        }
        // Down: a delta at (2, 2) of 4×4 reaches outputs (0..2, 0..2) with weights k/8:
        // output i sees x[2i−1 .. 2i+2], so index 2 is tap 3 of i = 0 (weight 1) and tap 1 of
        // i = 1 (weight 3).
        let mut x = [0f32; 16];
        x[2 * 4 + 2] = 64.0;
        let mut d = [0f32; 4];
        fir_downsample2x(&x, 4, 4, 0..1, &mut d).unwrap();
        assert_eq!(d, [1.0, 3.0, 3.0, 9.0]);
    }

    #[test]
    fn channel_splits_are_bit_identical() {
        let (c, h, w) = (5, 4, 6);
        let x = data(c * h * w, 13);
        let mut whole = vec![0f32; c * 4 * h * w];
        fir_upsample2x(&x, h, w, 0..c, &mut whole).unwrap();
        let mut parts = vec![0f32; c * 4 * h * w];
        let (a, b) = parts.split_at_mut(2 * 4 * h * w);
        fir_upsample2x(&x, h, w, 0..2, a).unwrap();
        fir_upsample2x(&x, h, w, 2..c, b).unwrap();
        assert_eq!(whole, parts);
        let mut whole = vec![0f32; c * h * w / 4];
        fir_downsample2x(&x, h, w, 0..c, &mut whole).unwrap();
        let mut parts = vec![0f32; c * h * w / 4];
        let (a, b) = parts.split_at_mut(3 * h * w / 4);
        fir_downsample2x(&x, h, w, 0..3, a).unwrap();
        fir_downsample2x(&x, h, w, 3..c, b).unwrap();
        assert_eq!(whole, parts);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let x = [0f32; 12];
        let mut out = [0f32; 3];
        assert!(fir_downsample2x(&x, 3, 4, 0..1, &mut out).is_err());
        assert!(fir_downsample2x(&x, 2, 2, 0..4, &mut out).is_err());
        assert!(fir_upsample2x(&x, 2, 2, 0..1, &mut out).is_err());
        assert!(fir_upsample2x(&x, 0, 2, 0..1, &mut out).is_err());
        assert!(fir_upsample2x(&x, 5, 2, 0..1, &mut [0f32; 40]).is_err());
    }
}
