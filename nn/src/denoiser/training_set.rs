//! The exact denoiser of a training set's empirical law, X uniform over its images y₁ … y_N
//! (`--weights training-set:DATA`). The noisy law is the mixture of N(yᵢ, σ²I), so Tweedie
//! gives
//!
//! D(x, σ) = Σᵢ wᵢ(x, σ) yᵢ,  wᵢ ∝ exp(−‖x − yᵢ‖² / 2σ²).
//!
//! This is the denoiser a network trained on the set approaches as its loss goes to the
//! minimum, so sampling with it shows what a sampler preset does with a perfect fit: its
//! samples are training images (memorised by construction), and their class proportions and
//! FID are the best any model of that set can reach under the preset.

use anyhow::{bail, Result};
use tweedie_core::plan::PlanStep;
use tweedie_core::{Denoiser, Error};
use tweedie_kernels::distance::{add_weighted_rows, squared_distances};

use super::full_gaussian::checked_sigma;
use crate::weights::meta::Kind;

/// Weights below e^−CUT of the largest are dropped: with N ≤ 2³² images the dropped mass is
/// below 2³² · e^−60 ≈ 4e−17 of the total, under f64's resolution of the sum.
const CUT: f64 = 60.0;

/// N images of `dim` elements, uniformly weighted.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSet {
    /// VP (σ checked against the VP table) or VE.
    pub kind: Kind,
    dim: usize,
    images: Vec<f32>,
}

impl TrainingSet {
    /// The empirical law of `images`, `dim` elements each, back to back (at least one,
    /// finite).
    pub fn new(kind: Kind, dim: usize, images: Vec<f32>) -> Result<TrainingSet> {
        if dim == 0 || images.is_empty() || !images.len().is_multiple_of(dim) {
            bail!(
                "training set: {} values are not whole images of {dim}",
                images.len()
            );
        }
        if images.iter().any(|v| !v.is_finite()) {
            bail!("training set: non-finite pixel");
        }
        Ok(TrainingSet { kind, dim, images })
    }

    /// Elements per image.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len() / self.dim
    }

    /// Always false (a set has an image).
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// A worker's denoiser over a shared [`TrainingSet`] (its own scratch: the squared distances
/// of each chain of a batch to every image and the chains' weighted sums).
pub struct TrainingSetDenoiser<'a> {
    set: &'a TrainingSet,
    /// `[chain][image]`; grown to the largest batch seen.
    d2: Vec<f64>,
    /// `[chain][element]`.
    acc: Vec<f64>,
}

/// Images per block: the chains of a batch all read one block (here 64 × 4 KiB, in L2)
/// before the next, so the set streams from memory once per call, not once per chain.
const BLOCK: usize = 64;

impl<'a> TrainingSetDenoiser<'a> {
    /// A denoiser for one worker thread.
    pub fn new(set: &'a TrainingSet) -> Self {
        crate::backend::enable_simd(); // the distance kernels' AVX2/AVX-512 twins
        TrainingSetDenoiser {
            set,
            d2: Vec::new(),
            acc: Vec::new(),
        }
    }

    /// D of a batch: per chain the softmax of −‖x − yᵢ‖²/2σ² (shifted by the chain's nearest
    /// image, so far from every image it stays finite) averaging the images.
    fn batch(&mut self, x: &[f32], batch: usize, sigma: f64, out: &mut [f32]) -> Result<(), Error> {
        let kernel = |_| Error::Denoiser("training set: image length mismatch");
        let (dim, n) = (self.set.dim, self.set.len());
        self.d2.resize(batch * n, 0.0);
        self.acc.resize(batch * dim, 0.0);
        let blocks = self.set.images.chunks(BLOCK * dim).enumerate();
        for (b, ys) in blocks.clone() {
            let start = b * BLOCK;
            for (c, xc) in x.chunks_exact(dim).enumerate() {
                let d = &mut self.d2[c * n + start..c * n + start + ys.len() / dim];
                squared_distances(xc, ys, d).map_err(kernel)?;
            }
        }
        // Per chain: the nearest distance, then the weights in place of the distances.
        let scale = 0.5 / (sigma * sigma);
        let mut totals = vec![0.0f64; batch];
        for (d2, total) in self.d2.chunks_exact_mut(n).zip(&mut totals) {
            let nearest = d2.iter().copied().fold(f64::INFINITY, f64::min);
            for d in d2.iter_mut() {
                let e = (*d - nearest) * scale;
                *d = if e > CUT { 0.0 } else { (-e).exp() };
                *total += *d;
            }
        }
        self.acc.fill(0.0);
        for (b, ys) in blocks {
            let start = b * BLOCK;
            for (c, acc) in self.acc.chunks_exact_mut(dim).enumerate() {
                let w = &self.d2[c * n + start..c * n + start + ys.len() / dim];
                add_weighted_rows(acc, w, ys).map_err(kernel)?;
            }
        }
        for ((oc, acc), total) in out
            .chunks_exact_mut(dim)
            .zip(self.acc.chunks_exact(dim))
            .zip(&totals)
        {
            for (o, &a) in oc.iter_mut().zip(acc) {
                *o = (a / total) as f32;
            }
        }
        Ok(())
    }
}

impl Denoiser for TrainingSetDenoiser<'_> {
    fn denoise(
        &mut self,
        x: &[f32],
        batch: usize,
        step: &PlanStep,
        out: &mut [f32],
    ) -> Result<(), Error> {
        let sigma = checked_sigma(
            self.set.kind,
            self.set.dim,
            (x, batch, out),
            step,
            [
                "training set: x is not batch × dim",
                "training set: sigma must be > 0",
            ],
        )?;
        if x.iter().any(|v| !v.is_finite()) {
            return Err(Error::Denoiser("training set: non-finite x"));
        }
        self.batch(x, batch, sigma, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denoise(set: &TrainingSet, x: &[f32], sigma: f64) -> Vec<f32> {
        let mut out = vec![0.0f32; x.len()];
        TrainingSetDenoiser::new(set)
            .denoise(x, x.len() / set.dim(), &PlanStep::at_sigma(sigma), &mut out)
            .unwrap();
        out
    }

    /// One image: D is that image at every σ and x, bit for bit.
    #[test]
    fn one_image_is_a_point_mass() {
        let y = vec![0.25f32, -0.5, 0.75, 1.0, -1.0, 0.0, 0.5, 0.125, 0.3];
        let set = TrainingSet::new(Kind::Ve, 9, y.clone()).unwrap();
        for sigma in [0.01, 1.0, 50.0] {
            let x: Vec<f32> = (0..9).map(|i| i as f32 * 0.7 - 3.0).collect();
            assert_eq!(denoise(&set, &x, sigma), y, "sigma {sigma}");
        }
    }

    /// Two points in 1-D: E[X | x] = (y₁ w₁ + y₂ w₂) / (w₁ + w₂) with Gaussian weights, against
    /// the formula in f64; large σ gives the mean, small σ the nearer point.
    #[test]
    fn two_points_match_the_closed_form() {
        let (y1, y2) = (-1.0f64, 2.0f64);
        let set = TrainingSet::new(Kind::Ve, 1, vec![y1 as f32, y2 as f32]).unwrap();
        for sigma in [0.3, 1.0, 4.0] {
            for x in [-3.0f64, -0.2, 0.5, 1.1, 5.0] {
                let w = |y: f64| (-(x - y).powi(2) / (2.0 * sigma * sigma)).exp();
                let want = (y1 * w(y1) + y2 * w(y2)) / (w(y1) + w(y2));
                let got = f64::from(denoise(&set, &[x as f32], sigma)[0]);
                assert!(
                    (got - want).abs() < 1e-6,
                    "sigma {sigma} x {x}: {got} vs {want}"
                );
            }
        }
        assert!((denoise(&set, &[0.3], 1e4)[0] - 0.5).abs() < 1e-6);
        assert_eq!(denoise(&set, &[1e6], 0.01), [2.0]);
        assert_eq!(denoise(&set, &[-1e6], 0.01), [-1.0]);
    }

    /// Many images (two blocks and a part), a dimension that is not a multiple of the lanes:
    /// the result is the softmax average computed plainly in f64.
    #[test]
    fn matches_a_plain_f64_softmax() {
        let (n, dim) = (2 * BLOCK + 9, 13);
        let images: Vec<f32> = (0..n * dim)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        let set = TrainingSet::new(Kind::Ve, dim, images.clone()).unwrap();
        let x: Vec<f32> = (0..3 * dim).map(|i| (i as f32 * 0.37).sin()).collect();
        for sigma in [0.05, 0.5, 3.0] {
            let got = denoise(&set, &x, sigma);
            for (c, xc) in x.chunks_exact(dim).enumerate() {
                let logw: Vec<f64> = images
                    .chunks_exact(dim)
                    .map(|y| {
                        let d: f64 = xc
                            .iter()
                            .zip(y)
                            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                            .sum();
                        -d / (2.0 * sigma * sigma)
                    })
                    .collect();
                let top = logw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logw.iter().map(|l| (l - top).exp()).collect();
                let total: f64 = w.iter().sum();
                for e in 0..dim {
                    let want: f64 = images
                        .chunks_exact(dim)
                        .zip(&w)
                        .map(|(y, w)| w * f64::from(y[e]))
                        .sum::<f64>()
                        / total;
                    let g = f64::from(got[c * dim + e]);
                    assert!(
                        (g - want).abs() < 1e-5,
                        "sigma {sigma} chain {c} element {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_sets_and_calls_are_errors() {
        assert!(TrainingSet::new(Kind::Ve, 3, vec![]).is_err());
        assert!(TrainingSet::new(Kind::Ve, 3, vec![0.0; 4]).is_err());
        assert!(TrainingSet::new(Kind::Ve, 0, vec![0.0; 4]).is_err());
        assert!(TrainingSet::new(Kind::Ve, 2, vec![0.0, f32::NAN]).is_err());
        let set = TrainingSet::new(Kind::Ve, 2, vec![0.0; 4]).unwrap();
        let mut d = TrainingSetDenoiser::new(&set);
        let mut out = [0.0f32; 2];
        assert!(d
            .denoise(&[0.0; 3], 1, &PlanStep::at_sigma(1.0), &mut out)
            .is_err());
        assert!(d
            .denoise(&[0.0; 2], 1, &PlanStep::at_sigma(0.0), &mut out)
            .is_err());
        assert!(d
            .denoise(&[f32::NAN, 0.0], 1, &PlanStep::at_sigma(1.0), &mut out)
            .is_err());
    }
}
