//! Inpainting: A x = mask ⊙ x, the same H×W mask on every channel (spec §10.4).

use super::{
    check_adjoint, check_forward, same_shape_lens, ForwardOperator, ImageShape, OperatorLens,
};
use crate::error::check_len;
use crate::{noise, Error};

/// The number of missing pixel locations for a missing fraction `p`: ⌊H·W·p⌋, evaluated as the
/// official `int(256*256*0.92)` (= 60293): the integer H·W times p in f64, truncated.
pub fn n_missing(h: usize, w: usize, p: f64) -> Result<usize, Error> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::OutOfRange("missing fraction p (must be in [0, 1])"));
    }
    let plane = h
        .checked_mul(w)
        .ok_or(Error::Shape("H·W overflows usize"))?;
    Ok(libm::floor(plane as f64 * p) as usize)
}

/// Fills `mask` (H·W entries, row-major, 1 = observed, 0 = missing) with a random inpainting
/// mask: exactly [`n_missing`]`(h, w, p)` locations missing, every such subset equally likely
/// (np.random.choice without replacement, as in the official code, but with our noise).
/// Returns the number of missing locations.
///
/// Construction (selection sampling, Knuth's Algorithm S; no scratch needed): visit the
/// locations t = 0..N−1 in row-major order (N = H·W) with m of the n missing ones chosen so far;
/// location t is missing iff `u_t · (N − t) < (n − m) · 2⁵³`, where
/// `u_t = noise::bits(seed, 0, COUNTER_MASK, t) >> 11` is a 53-bit uniform integer, so the
/// probability is exactly (n − m)/(N − t) (integer arithmetic in u128, no rounding). The mask
/// depends only on (seed, H, W, p); it is shared by all chains, hence chain 0.
pub fn fill_random_mask(
    mask: &mut [f32],
    h: usize,
    w: usize,
    p: f64,
    seed: u64,
) -> Result<usize, Error> {
    let n = n_missing(h, w, p)?;
    let total = mask.len();
    check_len("mask (H·W)", h * w, total)?;
    let mut chosen = 0usize;
    for (t, m) in mask.iter_mut().enumerate() {
        let u = u128::from(noise::bits(seed, 0, noise::COUNTER_MASK, t as u64) >> 11);
        let remaining = (total - t) as u128;
        let needed = (n - chosen) as u128;
        let missing = u * remaining < needed << 53;
        chosen += usize::from(missing);
        *m = if missing { 0.0 } else { 1.0 };
    }
    Ok(chosen)
}

/// A x = mask ⊙ x with a caller-owned H×W mask of 0/1 values (1 = observed) broadcast over the
/// C channels. Aᵀ = A, and ‖A‖² = 1 if at least one pixel is observed (0 otherwise).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Inpainting<'a> {
    shape: ImageShape,
    mask: &'a [f32],
    observed: usize,
}

impl<'a> Inpainting<'a> {
    /// The buffer lengths for C×H×W images (compile-time sizing; the mask is H·W more).
    pub const fn lens_for(c: usize, h: usize, w: usize) -> OperatorLens {
        same_shape_lens(c, h, w)
    }

    /// Wraps `mask` (H·W entries, each exactly 0.0 or 1.0) for C×H×W images.
    pub fn new(c: usize, h: usize, w: usize, mask: &'a [f32]) -> Result<Self, Error> {
        let shape = ImageShape::new(c, h, w)?;
        check_len("mask (H·W)", shape.plane(), mask.len())?;
        if mask.iter().any(|&m| m != 0.0 && m != 1.0) {
            return Err(Error::OutOfRange("mask entry (must be 0 or 1)"));
        }
        let observed = mask.iter().filter(|&&m| m == 1.0).count();
        Ok(Self {
            shape,
            mask,
            observed,
        })
    }

    /// The mask (H·W, 1 = observed).
    pub fn mask(&self) -> &'a [f32] {
        self.mask
    }

    /// The number of observed pixel locations.
    pub fn observed(&self) -> usize {
        self.observed
    }

    /// out = mask ⊙ v, channel by channel (A and Aᵀ are the same map).
    fn apply(&self, v: &[f32], out: &mut [f32]) {
        let plane = self.shape.plane();
        for (vc, oc) in v.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
            for ((o, &a), &m) in oc.iter_mut().zip(vc).zip(self.mask) {
                *o = a * m;
            }
        }
    }
}

impl ForwardOperator for Inpainting<'_> {
    fn input_len(&self) -> usize {
        self.shape.len()
    }
    fn output_len(&self) -> usize {
        self.shape.len()
    }
    fn scratch_len(&self) -> usize {
        0
    }
    fn forward(&self, x: &[f32], out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error> {
        check_forward(self, x, out, scratch)?;
        self.apply(x, out);
        Ok(())
    }
    fn adjoint(&self, r: &[f32], out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error> {
        check_adjoint(self, r, out, scratch)?;
        self.apply(r, out);
        Ok(())
    }
    fn norm_sq(&self) -> f64 {
        if self.observed > 0 {
            1.0
        } else {
            0.0
        }
    }
}

/// Box inpainting: the rectangle of columns x..x+w and rows y..y+h is missing (set to 0) on
/// every channel, everything else observed. Needs no mask buffer; Aᵀ = A.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoxInpainting {
    shape: ImageShape,
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

impl BoxInpainting {
    /// The buffer lengths for C×H×W images (compile-time sizing).
    pub const fn lens_for(c: usize, h: usize, w: usize) -> OperatorLens {
        same_shape_lens(c, h, w)
    }

    /// C×H×W images with the box (x, y, w, h) missing: x = first column, y = first row
    /// (formats.md §4 `tweedie.box`). The box must lie inside the image; an empty box is allowed.
    pub fn new(
        c: usize,
        h: usize,
        w: usize,
        (bx, by, bw, bh): (usize, usize, usize, usize),
    ) -> Result<Self, Error> {
        let shape = ImageShape::new(c, h, w)?;
        let inside = |start: usize, len: usize, side: usize| {
            start.checked_add(len).is_some_and(|end| end <= side)
        };
        if !inside(bx, bw, w) || !inside(by, bh, h) {
            return Err(Error::Shape("inpainting box must lie inside the image"));
        }
        Ok(Self {
            shape,
            x: bx,
            y: by,
            w: bw,
            h: bh,
        })
    }

    /// Writes the equivalent H·W mask (1 = observed, 0 inside the box), e.g. for a measurement
    /// file or for [`Inpainting`].
    pub fn write_mask(&self, mask: &mut [f32]) -> Result<(), Error> {
        check_len("mask (H·W)", self.shape.plane(), mask.len())?;
        for (row, line) in mask.chunks_exact_mut(self.shape.w).enumerate() {
            line.fill(1.0);
            if (self.y..self.y + self.h).contains(&row) {
                line[self.x..self.x + self.w].fill(0.0);
            }
        }
        Ok(())
    }

    /// out = v with the box zeroed on every channel.
    fn apply(&self, v: &[f32], out: &mut [f32]) {
        out.copy_from_slice(v);
        let plane = self.shape.plane();
        for oc in out.chunks_exact_mut(plane) {
            for line in oc.chunks_exact_mut(self.shape.w).skip(self.y).take(self.h) {
                line[self.x..self.x + self.w].fill(0.0);
            }
        }
    }
}

impl ForwardOperator for BoxInpainting {
    fn input_len(&self) -> usize {
        self.shape.len()
    }
    fn output_len(&self) -> usize {
        self.shape.len()
    }
    fn scratch_len(&self) -> usize {
        0
    }
    fn forward(&self, x: &[f32], out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error> {
        check_forward(self, x, out, scratch)?;
        self.apply(x, out);
        Ok(())
    }
    fn adjoint(&self, r: &[f32], out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error> {
        check_adjoint(self, r, out, scratch)?;
        self.apply(r, out);
        Ok(())
    }
    fn norm_sq(&self) -> f64 {
        if self.w * self.h < self.shape.plane() {
            1.0
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_adjoint, power_norm_sq};
    use super::*;

    #[test]
    fn n_missing_matches_the_official_count() {
        // int(256*256*0.92) in Python.
        assert_eq!(n_missing(256, 256, 0.92).unwrap(), 60293);
        assert_eq!(n_missing(4, 4, 0.5).unwrap(), 8);
        assert_eq!(n_missing(4, 4, 1.0).unwrap(), 16);
        // 10·10·0.29 = 28.999999999999996 in f64: Python's int() truncates to 28, so do we.
        assert_eq!(n_missing(10, 10, 0.29).unwrap(), 28);
        assert!(matches!(n_missing(4, 4, 1.5), Err(Error::OutOfRange(_))));
        assert!(matches!(
            n_missing(4, 4, f64::NAN),
            Err(Error::OutOfRange(_))
        ));
    }

    #[test]
    fn random_mask_has_exact_count_and_is_seeded() {
        let (h, w) = (256, 256);
        let mut a = vec![0.5f32; h * w];
        assert_eq!(fill_random_mask(&mut a, h, w, 0.92, 7).unwrap(), 60293);
        assert_eq!(a.iter().filter(|&&m| m == 0.0).count(), 60293);
        assert_eq!(a.iter().filter(|&&m| m == 1.0).count(), 65536 - 60293);
        let mut b = vec![0.0f32; h * w];
        fill_random_mask(&mut b, h, w, 0.92, 7).unwrap();
        assert_eq!(a, b, "same seed, same mask");
        fill_random_mask(&mut b, h, w, 0.92, 8).unwrap();
        let differ = a.iter().zip(&b).filter(|(p, q)| p != q).count();
        // Two independent 8%-observed masks differ at about 2·0.08·0.92·N ≈ 9650 locations.
        assert!(
            differ > 8000,
            "masks of seeds 7 and 8 differ at {differ} locations"
        );
        for p in [0.0, 1.0] {
            let n = fill_random_mask(&mut b, h, w, p, 3).unwrap();
            assert_eq!(b.iter().filter(|&&m| m == 0.0).count(), n);
        }
    }

    #[test]
    fn random_mask_is_uniform_over_locations() {
        // Each location is missing with probability n/N; over 2000 seeds of a 4×4 mask with
        // n = 5 each count is Binomial(2000, 5/16): mean 625, sd ≈ 20.7.
        let mut counts = [0usize; 16];
        let mut mask = [0.0f32; 16];
        for seed in 0..2000 {
            fill_random_mask(&mut mask, 4, 4, 5.0 / 16.0, seed).unwrap();
            for (c, &m) in counts.iter_mut().zip(&mask) {
                *c += usize::from(m == 0.0);
            }
        }
        for c in counts {
            assert!((c as f64 - 625.0).abs() < 5.0 * 20.7, "count {c}");
        }
    }

    #[test]
    fn inpainting_masks_every_channel_alike() {
        let (c, h, w) = (3, 8, 6);
        let mut mask = vec![0.0f32; h * w];
        fill_random_mask(&mut mask, h, w, 0.5, 1).unwrap();
        let op = Inpainting::new(c, h, w, &mask).unwrap();
        assert_eq!(op.observed(), 24);
        let x: Vec<f32> = (0..c * h * w).map(|i| i as f32 + 1.0).collect();
        let mut y = vec![0.0f32; c * h * w];
        op.forward(&x, &mut y, &mut []).unwrap();
        for ch in 0..c {
            for (i, &m) in mask.iter().enumerate() {
                let k = ch * h * w + i;
                assert_eq!(y[k], if m == 1.0 { x[k] } else { 0.0 });
            }
        }
        assert_adjoint(&op, 3, 1e-6);
        assert!((power_norm_sq(&op, 5) - 1.0).abs() < 1e-4);
        assert_eq!(op.norm_sq(), 1.0);
    }

    #[test]
    fn box_inpainting_matches_its_mask() {
        let (c, h, w) = (2, 7, 9);
        let op = BoxInpainting::new(c, h, w, (2, 1, 4, 3)).unwrap();
        let mut mask = vec![0.0f32; h * w];
        op.write_mask(&mut mask).unwrap();
        assert_eq!(mask.iter().filter(|&&m| m == 0.0).count(), 12);
        assert_eq!(mask[w + 2], 0.0); // row 1, column 2: first missing
        assert_eq!(mask[3 * w + 5], 0.0); // row 3, column 5: last missing
        assert_eq!(mask[4 * w + 5], 1.0);
        assert_eq!(mask[w + 6], 1.0);
        let masked = Inpainting::new(c, h, w, &mask).unwrap();
        let mut x = vec![0.0f32; c * h * w];
        noise::fill_gaussian(&mut x, 5, 0, 0, 0);
        let (mut a, mut b) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
        op.forward(&x, &mut a, &mut []).unwrap();
        masked.forward(&x, &mut b, &mut []).unwrap();
        assert_eq!(a, b);
        assert_adjoint(&op, 4, 1e-6);
        assert!((power_norm_sq(&op, 5) - 1.0).abs() < 1e-4);
    }

    #[test]
    fn inpainting_rejects_bad_masks_and_boxes() {
        let mask = [1.0f32, 0.0, 0.5, 1.0];
        assert!(matches!(
            Inpainting::new(1, 2, 2, &mask),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            Inpainting::new(1, 2, 3, &mask),
            Err(Error::LengthMismatch {
                expected: 6,
                got: 4,
                ..
            })
        ));
        let zero = [0.0f32; 4];
        assert_eq!(Inpainting::new(3, 2, 2, &zero).unwrap().norm_sq(), 0.0);
        assert!(matches!(
            BoxInpainting::new(1, 4, 4, (2, 0, 3, 1)),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            BoxInpainting::new(1, 4, 4, (0, usize::MAX, 1, 2)),
            Err(Error::Shape(_))
        ));
        let mut short = [0.0f32; 3];
        assert!(fill_random_mask(&mut short, 2, 2, 0.5, 0).is_err());
    }
}
