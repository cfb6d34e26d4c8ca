//! 4× bicubic super-resolution: the DPS / Shocher `Resizer` at scale 1/4 (spec §10.5).
//!
//! Separable, along H then W. Per axis of length n, output i = 0..n/4−1 is
//! `Σ_{k=−6}^{9} w_k · x[refl(4i + k)]` with `w_k = ¼·cubic((1.5 − k)/4)` (Keys cubic, a = −0.5,
//! stretched ×4 for antialiasing) and the half-sample symmetric reflection `refl` of the code's
//! `mirror = [0..n−1, n−1..0]`, index mod 2n. The adjoint is the exact transpose: the same taps
//! scattered to the same reflected indices, in reverse axis order (W then H).

use super::{check_adjoint, check_forward, image_len, ForwardOperator, ImageShape, OperatorLens};
use crate::Error;

/// The downscaling factor per axis.
const FACTOR: usize = 4;
/// Number of taps per output sample (the stretched cubic's support, 16 = 4·4).
const TAPS: usize = 16;
/// Tap j = 0..15 reads `refl(4i + j − SR4_TAP_OFFSET)`, i.e. k = j − 6 in spec §10.5.
pub const SR4_TAP_OFFSET: usize = 6;

/// Keys' cubic convolution kernel with a = −0.5 (Shocher's `cubic`).
fn cubic(x: f64) -> f64 {
    let a = libm::fabs(x);
    let (a2, a3) = (a * a, a * a * a);
    if a <= 1.0 {
        1.5 * a3 - 2.5 * a2 + 1.0
    } else if a <= 2.0 {
        -0.5 * a3 + 2.5 * a2 - 4.0 * a + 2.0
    } else {
        0.0
    }
}

/// The 16 taps w_k, k = −6..9, as the code builds them: `scale·cubic(scale·(1.5 − k))` in f64,
/// each row divided by its f64 sum, then cast to f32. All values are multiples of 2⁻¹² and sum to
/// exactly 1, so the renormalisation and the cast are exact (no rounding, spec §10.5).
pub fn sr4_taps() -> [f32; TAPS] {
    let scale = 1.0 / FACTOR as f64;
    let mut w = [0.0f64; TAPS];
    for (j, v) in w.iter_mut().enumerate() {
        let k = j as f64 - SR4_TAP_OFFSET as f64;
        *v = scale * cubic(scale * (1.5 - k));
    }
    let sum: f64 = w.iter().sum();
    w.map(|v| (v / sum) as f32)
}

/// Half-sample symmetric reflection of index `i` into 0..n: the code's
/// `mirror[i mod 2n]` with `mirror = [0, 1, …, n−1, n−1, …, 0]`. So refl(−1) = 0,
/// refl(n) = n − 1. `n` must be ≥ 1.
pub fn reflect(i: isize, n: usize) -> usize {
    let m = i.rem_euclid(2 * n as isize) as usize;
    if m < n {
        m
    } else {
        2 * n - 1 - m
    }
}

/// The input index tap j of output i reads, on an axis of length n.
#[inline]
fn source(i: usize, j: usize, n: usize) -> usize {
    reflect((FACTOR * i + j) as isize - SR4_TAP_OFFSET as isize, n)
}

/// A x = bicubic ×1/4 downscale of each channel: C×H×W → C×(H/4)×(W/4). ‖A‖² = 1/16.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SuperResolution4 {
    shape: ImageShape,
    taps: [f32; TAPS],
}

impl SuperResolution4 {
    /// The buffer lengths for C×H×W images (compile-time sizing): y is C×(H/4)×(W/4), the
    /// scratch one channel after the H pass, (H/4)·W.
    pub const fn lens_for(c: usize, h: usize, w: usize) -> OperatorLens {
        OperatorLens {
            input: image_len(c, h, w),
            output: image_len(c, h / FACTOR, w / FACTOR),
            scratch: (h / FACTOR).saturating_mul(w),
        }
    }

    /// [`Self::lens_for`] of this operator's shape.
    fn lens_of_shape(&self) -> OperatorLens {
        Self::lens_for(self.shape.c, self.shape.h, self.shape.w)
    }

    /// The operator on C×H×W images; H and W must be multiples of 4.
    pub fn new(c: usize, h: usize, w: usize) -> Result<Self, Error> {
        let shape = ImageShape::new(c, h, w)?;
        if !h.is_multiple_of(FACTOR) || !w.is_multiple_of(FACTOR) {
            return Err(Error::Shape(
                "4× super-resolution needs H and W divisible by 4",
            ));
        }
        Ok(Self {
            shape,
            taps: sr4_taps(),
        })
    }

    /// The low-resolution size (H/4, W/4).
    pub fn output_hw(&self) -> (usize, usize) {
        (self.shape.h / FACTOR, self.shape.w / FACTOR)
    }

    /// Along H: `dst` ((H/4)×W) from `src` (H×W), as weighted sums of whole rows.
    fn down_h(&self, src: &[f32], dst: &mut [f32]) {
        let (h, w) = (self.shape.h, self.shape.w);
        for (i, out_row) in dst.chunks_exact_mut(w).enumerate() {
            out_row.fill(0.0);
            for (j, &tap) in self.taps.iter().enumerate() {
                let r = source(i, j, h);
                for (o, &v) in out_row.iter_mut().zip(&src[r * w..(r + 1) * w]) {
                    *o += tap * v;
                }
            }
        }
    }

    /// Along W: `dst` (rows×(W/4)) from `src` (rows×W), row by row.
    fn down_w(&self, src: &[f32], dst: &mut [f32]) {
        let w = self.shape.w;
        for (in_row, out_row) in src.chunks_exact(w).zip(dst.chunks_exact_mut(w / FACTOR)) {
            for (i, o) in out_row.iter_mut().enumerate() {
                let mut acc = 0.0f32;
                for (j, &tap) in self.taps.iter().enumerate() {
                    acc += tap * in_row[source(i, j, w)];
                }
                *o = acc;
            }
        }
    }

    /// Transpose of [`Self::down_w`]: `dst` (rows×W) = scatter of `src` (rows×(W/4)).
    fn down_w_t(&self, src: &[f32], dst: &mut [f32]) {
        let w = self.shape.w;
        for (in_row, out_row) in src.chunks_exact(w / FACTOR).zip(dst.chunks_exact_mut(w)) {
            out_row.fill(0.0);
            for (i, &v) in in_row.iter().enumerate() {
                for (j, &tap) in self.taps.iter().enumerate() {
                    out_row[source(i, j, w)] += tap * v;
                }
            }
        }
    }

    /// Transpose of [`Self::down_h`]: `dst` (H×W) = scatter of the rows of `src` ((H/4)×W).
    fn down_h_t(&self, src: &[f32], dst: &mut [f32]) {
        let (h, w) = (self.shape.h, self.shape.w);
        dst.fill(0.0);
        for (i, in_row) in src.chunks_exact(w).enumerate() {
            for (j, &tap) in self.taps.iter().enumerate() {
                let r = source(i, j, h);
                for (o, &v) in dst[r * w..(r + 1) * w].iter_mut().zip(in_row) {
                    *o += tap * v;
                }
            }
        }
    }
}

impl ForwardOperator for SuperResolution4 {
    fn input_len(&self) -> usize {
        self.shape.len()
    }
    fn output_len(&self) -> usize {
        self.lens_of_shape().output
    }
    /// One channel after the H pass: (H/4)·W.
    fn scratch_len(&self) -> usize {
        self.lens_of_shape().scratch
    }
    fn forward(&self, x: &[f32], out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error> {
        check_forward(self, x, out, scratch)?;
        let tmp = &mut scratch[..self.scratch_len()];
        let (oh, ow) = self.output_hw();
        for (xc, oc) in x
            .chunks_exact(self.shape.plane())
            .zip(out.chunks_exact_mut(oh * ow))
        {
            self.down_h(xc, tmp);
            self.down_w(tmp, oc);
        }
        Ok(())
    }
    fn adjoint(&self, r: &[f32], out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error> {
        check_adjoint(self, r, out, scratch)?;
        let tmp = &mut scratch[..self.scratch_len()];
        let (oh, ow) = self.output_hw();
        for (rc, oc) in r
            .chunks_exact(oh * ow)
            .zip(out.chunks_exact_mut(self.shape.plane()))
        {
            self.down_w_t(rc, tmp);
            self.down_h_t(tmp, oc);
        }
        Ok(())
    }
    /// 1/16: per axis λ_max(A Aᵀ) = 1/4, attained by constant images (every tap residue class
    /// mod 4 sums to 1/4 and the reflection keeps that at the borders).
    fn norm_sq(&self) -> f64 {
        1.0 / 16.0
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_adjoint, power_norm_sq};
    use super::*;
    use crate::noise;

    /// Spec §10.5: the taps for k = −6..9 times 4096.
    const SR4_TAPS: [i32; TAPS] = [
        -7, -45, -75, -49, 93, 399, 745, 987, 987, 745, 399, 93, -49, -75, -45, -7,
    ];

    #[test]
    fn taps_are_the_spec_values_exactly() {
        let taps = sr4_taps();
        for (t, &q) in taps.iter().zip(&SR4_TAPS) {
            assert_eq!(*t, q as f32 / 4096.0);
        }
        assert_eq!(taps[0], -0.001_708_984_4);
        assert_eq!(taps[7], 0.240_966_8);
        // The code's f32 renormalisation is a no-op: the f32 sum is exactly 1.
        assert_eq!(taps.iter().sum::<f32>(), 1.0);
        // Each residue class mod 4 sums to 1/4 (the reason ‖A‖² = 1/16).
        for r in 0..4 {
            let s: i32 = (r..16).step_by(4).map(|j| SR4_TAPS[j]).sum();
            assert_eq!(s, 1024);
        }
    }

    #[test]
    fn border_indices_match_the_code_mirror() {
        let row0: Vec<usize> = (0..16).map(|j| source(0, j, 256)).collect();
        assert_eq!(row0, [5, 4, 3, 2, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(reflect(-1, 256), 0);
        assert_eq!(reflect(-2, 256), 1);
        assert_eq!(reflect(256, 256), 255);
        assert_eq!(reflect(257, 256), 254);
        let last: Vec<usize> = (0..16).map(|j| source(63, j, 256)).collect();
        assert_eq!(
            last,
            [246, 247, 248, 249, 250, 251, 252, 253, 254, 255, 255, 254, 253, 252, 251, 250]
        );
    }

    /// The 1-D resize matrix built the way Shocher's `contributions` does, in f64, dense:
    /// match coordinates, an 18-wide field of view from the left boundary, the kernel on the
    /// distances, row normalisation, then `mirror[fov mod 2n]` (duplicates accumulate).
    fn naive_matrix(n: usize) -> Vec<Vec<f64>> {
        let (scale, m) = (0.25f64, n / 4);
        let width = 4.0 / scale;
        let mirror: Vec<usize> = (0..n).chain((0..n).rev()).collect();
        let mut a = vec![vec![0.0f64; n]; m];
        for (o, row) in a.iter_mut().enumerate() {
            let out_coord = (o + 1) as f64 - (m as f64 - n as f64 * scale) / 2.0;
            let matched = out_coord / scale + 0.5 * (1.0 - 1.0 / scale);
            let left = (matched - width / 2.0).floor() as i64;
            let fov: Vec<i64> = (0..18).map(|j| left + j - 1).collect();
            let w: Vec<f64> = fov
                .iter()
                .map(|&f| scale * cubic(scale * (matched - f as f64 - 1.0)))
                .collect();
            let sum: f64 = w.iter().sum();
            for (&f, &wt) in fov.iter().zip(&w) {
                row[mirror[f.rem_euclid(2 * n as i64) as usize]] += wt / sum;
            }
        }
        a
    }

    #[test]
    fn forward_matches_a_dense_naive_resize() {
        // 4 wide: the taps reach past both borders and wrap through the mirror twice.
        for (c, h, w) in [(2, 12, 8), (1, 4, 16)] {
            check_against_naive(c, h, w);
        }
    }

    fn check_against_naive(c: usize, h: usize, w: usize) {
        let op = SuperResolution4::new(c, h, w).unwrap();
        let mut x = vec![0.0f32; c * h * w];
        noise::fill_gaussian(&mut x, 9, 0, 0, 0);
        let mut y = vec![0.0f32; op.output_len()];
        let mut scratch = vec![0.0f32; op.scratch_len()];
        op.forward(&x, &mut y, &mut scratch).unwrap();
        let (mh, mw) = (naive_matrix(h), naive_matrix(w));
        for ch in 0..c {
            for i in 0..h / 4 {
                for j in 0..w / 4 {
                    let mut want = 0.0f64;
                    for (r, &ah) in mh[i].iter().enumerate() {
                        for (s, &aw) in mw[j].iter().enumerate() {
                            want += ah * aw * f64::from(x[ch * h * w + r * w + s]);
                        }
                    }
                    let got = f64::from(y[ch * (h / 4) * (w / 4) + i * (w / 4) + j]);
                    assert!((got - want).abs() < 1e-6, "({ch},{i},{j}): {got} vs {want}");
                }
            }
        }
        // Constant images stay constant (rows sum to 1).
        let ones = vec![1.0f32; c * h * w];
        op.forward(&ones, &mut y, &mut scratch).unwrap();
        assert!(y.iter().all(|&v| (v - 1.0).abs() < 1e-6));
    }

    #[test]
    fn adjoint_is_exact_and_norm_is_one_sixteenth() {
        for (c, h, w) in [(1, 4, 4), (3, 16, 8), (2, 8, 20)] {
            let op = SuperResolution4::new(c, h, w).unwrap();
            assert_adjoint(&op, (h * w) as u64, 1e-6);
        }
        // Small images: the filter's response is flat near DC, so the second eigenvalue is close
        // to the first (≈ 0.991·λ₁ at 16×16) and power iteration is slow on large images.
        let op = SuperResolution4::new(3, 8, 8).unwrap();
        let est = power_norm_sq(&op, 300);
        assert!((est * 16.0 - 1.0).abs() < 1e-4, "‖A‖² estimate {est}");
        assert_eq!(op.norm_sq(), 1.0 / 16.0);
    }

    #[test]
    fn full_size_shapes() {
        let op = SuperResolution4::new(3, 256, 256).unwrap();
        assert_eq!(op.output_len(), 3 * 64 * 64);
        assert_eq!(op.scratch_len(), 64 * 256);
        assert_adjoint(&op, 1, 1e-6);
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        assert!(matches!(
            SuperResolution4::new(3, 10, 8),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            SuperResolution4::new(3, 0, 8),
            Err(Error::Shape(_))
        ));
        let op = SuperResolution4::new(1, 8, 8).unwrap();
        let x = [0.0f32; 64];
        let mut y = [0.0f32; 4];
        let mut small = [0.0f32; 15];
        assert!(matches!(
            op.forward(&x, &mut y, &mut small),
            Err(Error::LengthMismatch {
                expected: 16,
                got: 15,
                ..
            })
        ));
        let mut big = [0.0f32; 100];
        assert!(op.forward(&x, &mut y, &mut big).is_ok());
        let mut wrong = [0.0f32; 5];
        assert!(op.forward(&x, &mut wrong, &mut big).is_err());
    }
}
