//! The parameter-free resamplers of guided-diffusion's Upsample/Downsample (use_conv=False),
//! used inside the up/down ResBlocks: nearest 2× upsampling and 2×2 average pooling.
//!
//! These take no `Result` (the host's call sites are infallible by construction): `x` is the
//! whole input [C, h, w] and `out` holds the channels `c`; with inconsistent lengths only the
//! channels that fit are written (and debug builds assert).

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
                let s = r0[2 * i] + r0[2 * i + 1] + r1[2 * i] + r1[2 * i + 1];
                *o = s / 4.0;
            }
        }
    }
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
}
