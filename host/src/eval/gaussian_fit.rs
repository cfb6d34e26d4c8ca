//! The Gaussian fitted to a dataset in the model's data range: mean μ and (population)
//! covariance Σ of the preprocessed images (padded, formats §1), in f64, and its exact
//! denoiser (`--weights gaussian-fit:DATA`); one such Gaussian per class makes the mixture of
//! `--weights gaussian-mixture-fit:DATA`.
//!
//! The byte images are affine images of the model's values (v = a·u + b, u ∈ 0..=255), so the
//! moments are accumulated on the bytes, exactly: products u·u' ≤ 65025 summed over at most
//! [`EXACT_CHUNK`] images stay below 2²⁴, hence exact in f32 (which vectorises), and are flushed
//! into f64 after each chunk. Border pixels are the constant background: mean b, no variance.

use anyhow::{bail, Result};

use tweedie_nn::data::{u8_to_model, Dataset, Preprocess};
use tweedie_nn::denoiser::full_gaussian::FullGaussian;
use tweedie_nn::denoiser::gaussian_mixture::GaussianMixture;
use tweedie_nn::weights::meta::Kind;

use super::eigen;

/// Images per exact f32 accumulation: 256 · 255² < 2²⁴.
pub const EXACT_CHUNK: usize = 256;

/// N(μ, Σ) over `dim`-element images.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianFit {
    /// Elements per image (C·H'·W', padded).
    pub dim: usize,
    /// μ.
    pub mean: Vec<f64>,
    /// Σ, row-major dim×dim, symmetric; the population covariance (divided by N).
    pub cov: Vec<f64>,
    /// N, the number of images fitted.
    pub count: usize,
}

/// Σᵢ uᵢ and Σᵢ uᵢ uᵢᵀ (lower triangle) of the byte images, rows owned by this thread.
fn raw_moments_rows(ds: &Dataset, rows: &mut [(usize, &mut [f64])]) {
    let d = ds.image_len();
    let mut x = vec![0.0f32; EXACT_CHUNK * d];
    let mut acc = vec![0.0f32; d];
    let mut start = 0;
    while start < ds.len() {
        let count = EXACT_CHUNK.min(ds.len() - start);
        for (k, dst) in x.chunks_exact_mut(d).take(count).enumerate() {
            for (o, &u) in dst.iter_mut().zip(ds.image(start + k)) {
                *o = f32::from(u);
            }
        }
        for (i, row) in rows.iter_mut() {
            let i = *i;
            let acc = &mut acc[..=i];
            acc.fill(0.0);
            for img in x.chunks_exact(d).take(count) {
                let a = img[i];
                if a != 0.0 {
                    for (s, &v) in acc.iter_mut().zip(&img[..=i]) {
                        *s += a * v;
                    }
                }
            }
            for (r, &s) in row[..=i].iter_mut().zip(acc.iter()) {
                *r += f64::from(s);
            }
        }
        start += count;
    }
}

/// Fits N(μ, Σ) to every image of `ds`, converted by `pre`, using `threads` threads.
pub fn fit(ds: &Dataset, pre: Preprocess, threads: usize) -> Result<GaussianFit> {
    let d = ds.image_len();
    let n = ds.len();
    if n == 0 {
        bail!("gaussian fit: empty dataset");
    }
    // Raw second moments, lower triangle, rows dealt round-robin to balance the triangle.
    let mut second = vec![0.0f64; d * d];
    let threads = threads.clamp(1, d);
    let mut parts: Vec<Vec<(usize, &mut [f64])>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, row) in second.chunks_exact_mut(d).enumerate() {
        parts[i % threads].push((i, row));
    }
    std::thread::scope(|s| {
        for part in parts.iter_mut() {
            s.spawn(move || raw_moments_rows(ds, part));
        }
    });
    let mut sum = vec![0u64; d];
    for i in 0..n {
        for (s, &u) in sum.iter_mut().zip(ds.image(i)) {
            *s += u64::from(u);
        }
    }
    // Model value v = a·u + b (formats §1's conversion, read off its end points).
    let b = f64::from(u8_to_model(0, pre.range));
    let a = (f64::from(u8_to_model(255, pre.range)) - b) / 255.0;
    let mean_u: Vec<f64> = sum.iter().map(|&s| s as f64 / n as f64).collect();
    let (c, h, w) = (ds.channels, ds.height, ds.width);
    let (hp, wp) = pre.padded(ds);
    let dim = c * hp * wp;
    // Padded position of native element e (channel, row, column).
    let at = |e: usize| {
        let (ch, r, q) = (e / (h * w), (e / w) % h, e % w);
        ch * hp * wp + (r + pre.pad) * wp + q + pre.pad
    };
    let mut mean = vec![b; dim];
    let mut cov = vec![0.0f64; dim * dim];
    for i in 0..d {
        mean[at(i)] = b + a * mean_u[i];
        for j in 0..=i {
            let cu = second[i * d + j] / n as f64 - mean_u[i] * mean_u[j];
            let v = a * a * cu;
            cov[at(i) * dim + at(j)] = v;
            cov[at(j) * dim + at(i)] = v;
        }
    }
    Ok(GaussianFit {
        dim,
        mean,
        cov,
        count: n,
    })
}

/// One [`fit`] per label of `ds` (labels in increasing order), each on that label's images.
pub fn fit_per_class(
    ds: &Dataset,
    pre: Preprocess,
    threads: usize,
) -> Result<Vec<(u8, GaussianFit)>> {
    let Some(labels) = ds.labels() else {
        bail!("gaussian mixture fit: the dataset has no labels");
    };
    let mut classes: Vec<u8> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let mut fits = Vec::with_capacity(classes.len());
    for class in classes {
        let mut pixels = Vec::new();
        for (i, _) in labels.iter().enumerate().filter(|(_, &l)| l == class) {
            pixels.extend_from_slice(ds.image(i));
        }
        let subset = Dataset::new(pixels, None, ds.channels, ds.height, ds.width)?;
        fits.push((class, fit(&subset, pre, threads)?));
    }
    Ok(fits)
}

/// The mixture of the per-class Gaussians, weighted by their image counts.
pub fn mixture(fits: &[(u8, GaussianFit)], kind: Kind) -> Result<GaussianMixture> {
    let components = fits
        .iter()
        .map(|(_, f)| f.denoiser(kind))
        .collect::<Result<Vec<_>>>()?;
    let weights: Vec<f64> = fits.iter().map(|(_, f)| f.count as f64).collect();
    GaussianMixture::new(components, &weights)
}

impl GaussianFit {
    /// The exact denoiser of this Gaussian (`--weights gaussian-fit:DATA`): one symmetric
    /// eigendecomposition of Σ restricted to its support (elements with Σ_ii > 0; the rest
    /// are constant, D = μ there), negative rounding-level eigenvalues clamped to 0.
    pub fn denoiser(&self, kind: Kind) -> Result<FullGaussian> {
        let n = self.dim;
        let support: Vec<usize> = (0..n).filter(|&i| self.cov[i * n + i] > 0.0).collect();
        let s = support.len();
        let (mut vectors, mut values) = (Vec::new(), Vec::new());
        if s > 0 {
            let mut sub = vec![0.0f64; s * s];
            for (a, &i) in support.iter().enumerate() {
                for (b, &j) in support.iter().enumerate() {
                    sub[a * s + b] = self.cov[i * n + j];
                }
            }
            let e = eigen::symmetric(&sub, s)?;
            vectors = vec![0.0f64; s * n];
            for (row, v) in vectors.chunks_exact_mut(n).zip(e.vectors.chunks_exact(s)) {
                for (&i, &x) in support.iter().zip(v) {
                    row[i] = x;
                }
            }
            values = e.values.iter().map(|&l| l.max(0.0)).collect();
        }
        FullGaussian::new(kind, &self.mean, &vectors, &values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tweedie_nn::data::DataRange;

    /// Pseudo-random sparse bytes (a fixed LCG), many zeros as in MNIST.
    fn bytes(n: usize) -> Vec<u8> {
        let mut s = 12345u64;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = (s >> 33) as u8;
                if v < 120 {
                    0
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn matches_the_direct_moments_of_the_converted_images() {
        // 600 images (more than two exact chunks) of 2×3×2, padded by 1 → 2×5×4.
        let (n, c, h, w) = (600, 2, 3, 2);
        let ds = Dataset::new(bytes(n * c * h * w), None, c, h, w).unwrap();
        let pre = Preprocess {
            range: DataRange::MinusOneOne,
            pad: 1,
        };
        let dim = pre.example_len(&ds);
        let mut x = vec![0.0f32; n * dim];
        ds.fill_batch(&(0..n).collect::<Vec<_>>(), pre, &mut x)
            .unwrap();
        let mut mu = vec![0.0f64; dim];
        for img in x.chunks_exact(dim) {
            for (m, &v) in mu.iter_mut().zip(img) {
                *m += f64::from(v) / n as f64;
            }
        }
        for threads in [1, 3] {
            let g = fit(&ds, pre, threads).unwrap();
            assert_eq!((g.dim, g.count), (dim, n));
            for i in 0..dim {
                assert!((g.mean[i] - mu[i]).abs() < 1e-6, "mean {i}");
                for j in 0..dim {
                    let direct: f64 = x
                        .chunks_exact(dim)
                        .map(|img| (f64::from(img[i]) - mu[i]) * (f64::from(img[j]) - mu[j]))
                        .sum::<f64>()
                        / n as f64;
                    assert!((g.cov[i * dim + j] - direct).abs() < 1e-6, "cov {i},{j}");
                }
            }
            // The border (row 0 of channel 0) is the background -1 with no variance.
            assert_eq!(g.mean[0], -1.0);
            assert!(g.cov[..dim].iter().all(|&v| v == 0.0));
        }
    }

    /// Per class: each fit is the plain fit of that class's images; the mixture weighs the
    /// classes by their counts (a point x equal to a class's constant image is denoised to it
    /// at small σ).
    #[test]
    fn per_class_fits_are_the_fits_of_each_class() {
        use tweedie_core::plan::PlanStep;
        use tweedie_core::Denoiser;
        use tweedie_nn::denoiser::gaussian_mixture::GaussianMixtureDenoiser;
        let (n, c, h, w) = (90, 1, 2, 3);
        let pixels = bytes(n * c * h * w);
        let labels: Vec<u8> = (0..n).map(|i| [7, 2, 7][i % 3]).collect();
        let pre = Preprocess {
            range: DataRange::ZeroOne,
            pad: 0,
        };
        let ds = Dataset::new(pixels.clone(), Some(labels.clone()), c, h, w).unwrap();
        let fits = fit_per_class(&ds, pre, 2).unwrap();
        assert_eq!(fits.iter().map(|f| f.0).collect::<Vec<_>>(), [2, 7]);
        for (label, f) in &fits {
            let mut own = Vec::new();
            for (i, _) in labels.iter().enumerate().filter(|(_, l)| *l == label) {
                own.extend_from_slice(&pixels[i * 6..][..6]);
            }
            let direct = fit(&Dataset::new(own, None, c, h, w).unwrap(), pre, 1).unwrap();
            assert_eq!(*f, direct);
        }
        assert_eq!((fits[0].1.count, fits[1].1.count), (30, 60));
        // Two constant classes: Σ = 0 each, so D is the weighted average of the two images.
        let (a, b) = ([0u8; 6], [255u8; 6]);
        let two = Dataset::new([a, b, b].concat(), Some(vec![0, 1, 1]), c, h, w).unwrap();
        let mix = mixture(&fit_per_class(&two, pre, 1).unwrap(), Kind::Ve).unwrap();
        let step = PlanStep::at_sigma;
        let mut out = [0.0f32; 6];
        let mut den = GaussianMixtureDenoiser::new(&mix);
        den.denoise(&[0.5; 6], 1, &step(0.3), &mut out).unwrap();
        // Equidistant from both: weights 1/3 and 2/3.
        assert!(out.iter().all(|&v| (v - 2.0 / 3.0).abs() < 1e-6), "{out:?}");
        den.denoise(&[0.1; 6], 1, &step(0.05), &mut out).unwrap();
        assert!(out.iter().all(|&v| v.abs() < 1e-6), "{out:?}");
    }

    /// D(x, σ) of the fitted Gaussian solves (Σ + σ² I)(D − μ) = Σ (x − μ), and is μ on the
    /// constant border.
    #[test]
    fn its_denoiser_is_the_gaussian_posterior_mean() {
        use tweedie_core::plan::PlanStep;
        use tweedie_core::Denoiser;
        use tweedie_nn::denoiser::full_gaussian::FullGaussianDenoiser;
        let (n, c, h, w) = (300, 1, 3, 3);
        let ds = Dataset::new(bytes(n * c * h * w), None, c, h, w).unwrap();
        let pre = Preprocess {
            range: DataRange::MinusOneOne,
            pad: 1,
        };
        let g = fit(&ds, pre, 1).unwrap();
        let prior = g.denoiser(Kind::Ve).unwrap();
        let dim = g.dim;
        assert_eq!(prior.rank(), 9);
        let x: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
        for sigma in [0.05, 0.6, 4.0] {
            let step = PlanStep::at_sigma(sigma);
            let mut d = vec![0.0f32; dim];
            FullGaussianDenoiser::new(&prior)
                .denoise(&x, 1, &step, &mut d)
                .unwrap();
            for i in 0..dim {
                let lhs: f64 = (0..dim)
                    .map(|j| {
                        let a = g.cov[i * dim + j] + if i == j { sigma * sigma } else { 0.0 };
                        a * (f64::from(d[j]) - g.mean[j])
                    })
                    .sum();
                let rhs: f64 = (0..dim)
                    .map(|j| g.cov[i * dim + j] * (f64::from(x[j]) - g.mean[j]))
                    .sum();
                assert!(
                    (lhs - rhs).abs() < 1e-5,
                    "sigma {sigma} element {i}: {lhs} vs {rhs}"
                );
            }
            assert_eq!(d[0], -1.0);
        }
    }
}
