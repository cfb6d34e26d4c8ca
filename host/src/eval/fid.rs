//! Sample-quality statistics in the feature space of the digit classifier
//! ([`tweedie_nn::model::classifier`]):
//!
//! - [`FeatureStats`]: mean and (unbiased) covariance of a set of feature vectors, in f64.
//! - [`frechet_distance`]: ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^½ Σ₂ Σ₁^½)^½ (Heusel et al.
//!   2017; the last trace equals tr (Σ₁Σ₂)^½ and stays symmetric, so [`eigen`] does
//!   all of it). Biased upward at small n: always state n.
//! - [`inception_score`]: exp E_x KL(p(y|x) ‖ p(y)) from the logits (Salimans et al. 2016).
//! - [`precision_recall`]: Kynkäänniemi et al. 2019 with k nearest neighbours: a sample counts
//!   for precision when it lies within the k-NN radius of some real feature vector, a real one
//!   for recall when it lies within the k-NN radius of some sample.
//! - [`mean_pairwise_distance`]: the diversity of a set, the mean Euclidean distance between
//!   two of its vectors (compared with the same count of real digits: a collapsed sampler
//!   scores lower).
//!
//! [`eigen`]: super::eigen

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use super::eigen::{matmul, sqrt_psd, symmetric};
use super::nearest::squared_distance;
use tweedie_nn::backend::part;

/// Mean and covariance of `n` feature vectors of `dim` elements.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    /// Number of vectors.
    pub n: usize,
    /// Their length.
    pub dim: usize,
    /// The mean.
    pub mean: Vec<f64>,
    /// Row-major dim×dim covariance, divided by n − 1.
    pub cov: Vec<f64>,
}

impl FeatureStats {
    /// The statistics of `features` (`n·dim` values, n ≥ 2), accumulated in f64 in row order.
    pub fn of(features: &[f32], dim: usize) -> Result<FeatureStats> {
        if dim == 0 || !features.len().is_multiple_of(dim) || features.len() < 2 * dim {
            bail!(
                "feature statistics need at least 2 vectors of {dim} ({} values given)",
                features.len()
            );
        }
        let n = features.len() / dim;
        let mut mean = vec![0.0f64; dim];
        for row in features.chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0.0f64; dim * dim];
        let mut centred = vec![0.0f64; dim];
        for row in features.chunks_exact(dim) {
            for ((c, &v), m) in centred.iter_mut().zip(row).zip(&mean) {
                *c = f64::from(v) - m;
            }
            for i in 0..dim {
                let ci = centred[i];
                for (o, &cj) in cov[i * dim..i * dim + i + 1].iter_mut().zip(&centred) {
                    *o += ci * cj;
                }
            }
        }
        for i in 0..dim {
            for j in 0..=i {
                let v = cov[i * dim + j] / (n - 1) as f64;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        if mean.iter().chain(&cov).any(|v| !v.is_finite()) {
            bail!("feature statistics: non-finite features");
        }
        Ok(FeatureStats { n, dim, mean, cov })
    }
}

/// The squared Fréchet (2-Wasserstein) distance between the Gaussians N(μ₁, Σ₁), N(μ₂, Σ₂).
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<f64> {
    let m = a.dim;
    if b.dim != m || a.mean.len() != m || b.cov.len() != m * m || a.cov.len() != m * m {
        bail!("Fréchet distance of {}-d and {}-d statistics", a.dim, b.dim);
    }
    let mean_term: f64 = a
        .mean
        .iter()
        .zip(&b.mean)
        .map(|(x, y)| (x - y).powi(2))
        .sum();
    let trace = |c: &[f64]| (0..m).map(|i| c[i * m + i]).sum::<f64>();
    let root_a = sqrt_psd(&a.cov, m)?;
    let mut inner = matmul(&matmul(&root_a, &b.cov, m), &root_a, m);
    // Symmetrise away the rounding of the two products.
    for i in 0..m {
        for j in 0..i {
            let v = 0.5 * (inner[i * m + j] + inner[j * m + i]);
            inner[i * m + j] = v;
            inner[j * m + i] = v;
        }
    }
    let cross: f64 = symmetric(&inner, m)?
        .values
        .iter()
        .map(|&l| l.max(0.0).sqrt())
        .sum();
    Ok((mean_term + trace(&a.cov) + trace(&b.cov) - 2.0 * cross).max(0.0))
}

/// Softmax of one row of logits, in f64.
pub fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let e: Vec<f64> = logits.iter().map(|&v| f64::from(v - max).exp()).collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|v| v / total).collect()
}

/// exp(mean over images of KL(p(y|x) ‖ p̄(y))), p̄ the mean of the p(y|x); `logits` holds
/// `classes` values per image. Between 1 (every image the same distribution) and `classes`
/// (confident and balanced).
pub fn inception_score(logits: &[f32], classes: usize) -> Result<f64> {
    if classes == 0 || logits.is_empty() || !logits.len().is_multiple_of(classes) {
        bail!(
            "inception score: {} logits for {classes} classes",
            logits.len()
        );
    }
    let p: Vec<Vec<f64>> = logits.chunks_exact(classes).map(softmax).collect();
    let n = p.len() as f64;
    let mut mean = vec![0.0f64; classes];
    for row in &p {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += v / n;
        }
    }
    let kl: f64 = p
        .iter()
        .map(|row| {
            row.iter()
                .zip(&mean)
                .filter(|(&v, _)| v > 0.0)
                .map(|(v, m)| v * (v / m).ln())
                .sum::<f64>()
        })
        .sum::<f64>()
        / n;
    Ok(kl.exp())
}

/// Improved precision and recall (Kynkäänniemi et al. 2019).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PrecisionRecall {
    /// Fraction of samples inside the real manifold estimate.
    pub precision: f64,
    /// Fraction of real vectors inside the sample manifold estimate.
    pub recall: f64,
    /// The k of the k-NN radii.
    pub k: usize,
    /// Real vectors used.
    pub real: usize,
    /// Samples used.
    pub samples: usize,
}

/// Squared distance of each vector of `set` to its k-th nearest other vector of `set`.
fn knn_radii(set: &[f32], dim: usize, k: usize, threads: usize) -> Result<Vec<f32>> {
    let n = set.len() / dim;
    if n <= k {
        bail!("precision/recall: {n} vectors, need more than k = {k}");
    }
    parallel_map(n, threads, |i| {
        let q = &set[i * dim..(i + 1) * dim];
        // The k smallest distances so far, ascending.
        let mut best = vec![f32::INFINITY; k];
        for (j, v) in set.chunks_exact(dim).enumerate() {
            if j == i {
                continue;
            }
            let d = squared_distance(q, v);
            if d < best[k - 1] {
                let mut pos = k - 1;
                while pos > 0 && best[pos - 1] > d {
                    best[pos] = best[pos - 1];
                    pos -= 1;
                }
                best[pos] = d;
            }
        }
        best[k - 1]
    })
}

/// How many `queries` lie within the radius of at least one vector of `set`.
fn covered(queries: &[f32], set: &[f32], radii: &[f32], dim: usize, threads: usize) -> usize {
    let n = queries.len() / dim;
    let hits = parallel_map(n, threads, |i| {
        let q = &queries[i * dim..(i + 1) * dim];
        set.chunks_exact(dim)
            .zip(radii)
            .any(|(v, &r)| squared_distance(q, v) <= r)
    });
    hits.map_or(0, |h| h.iter().filter(|&&b| b).count())
}

/// `f(i)` for i in 0..n, split over `threads` contiguous ranges (each value independent of
/// the split).
fn parallel_map<T: Send + Clone + Default>(
    n: usize,
    threads: usize,
    f: impl Fn(usize) -> T + Sync,
) -> Result<Vec<T>> {
    let parts = threads.clamp(1, n.max(1));
    let mut out = vec![T::default(); n];
    std::thread::scope(|s| -> Result<()> {
        let mut rest = out.as_mut_slice();
        let mut handles = Vec::new();
        for t in 0..parts {
            let r = part(n, parts, 1, t);
            let (mine, tail) = rest.split_at_mut(r.len());
            rest = tail;
            let f = &f;
            handles.push(s.spawn(move || {
                for (o, i) in mine.iter_mut().zip(r) {
                    *o = f(i);
                }
            }));
        }
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("a distance thread panicked"))?;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Precision and recall of `samples` against `real` (each `count·dim` values) with k-NN
/// radii.
pub fn precision_recall(
    real: &[f32],
    samples: &[f32],
    dim: usize,
    k: usize,
    threads: usize,
) -> Result<PrecisionRecall> {
    if dim == 0 || !real.len().is_multiple_of(dim) || !samples.len().is_multiple_of(dim) || k == 0 {
        bail!("precision/recall: inconsistent sizes");
    }
    let real_radii = knn_radii(real, dim, k, threads)?;
    let sample_radii = knn_radii(samples, dim, k, threads)?;
    let (nr, ns) = (real.len() / dim, samples.len() / dim);
    let precision = covered(samples, real, &real_radii, dim, threads) as f64 / ns as f64;
    let recall = covered(real, samples, &sample_radii, dim, threads) as f64 / nr as f64;
    Ok(PrecisionRecall {
        precision,
        recall,
        k,
        real: nr,
        samples: ns,
    })
}

/// The mean Euclidean distance over all pairs of distinct vectors of `set` (`count·dim`
/// values, count ≥ 2), summed in f64 per row (each row's sum is independent of the thread
/// split, so the result is too).
pub fn mean_pairwise_distance(set: &[f32], dim: usize, threads: usize) -> Result<f64> {
    if dim == 0 || !set.len().is_multiple_of(dim) || set.len() < 2 * dim {
        bail!("mean pairwise distance: need at least two vectors of {dim} values");
    }
    let n = set.len() / dim;
    let rows = parallel_map(n, threads, |i| {
        let q = &set[i * dim..(i + 1) * dim];
        set.chunks_exact(dim)
            .skip(i + 1)
            .map(|v| f64::from(squared_distance(q, v)).sqrt())
            .sum::<f64>()
    })?;
    Ok(rows.iter().sum::<f64>() / (n * (n - 1) / 2) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pairwise_distance_of_known_points() {
        // Corners of a 3-4-5 right triangle: (3 + 4 + 5) / 3.
        let set = [0.0f32, 0.0, 3.0, 0.0, 0.0, 4.0];
        for threads in [1, 2, 5] {
            let d = mean_pairwise_distance(&set, 2, threads).unwrap();
            assert!((d - 4.0).abs() < 1e-12, "{d}");
        }
        assert!(mean_pairwise_distance(&set[..2], 2, 1).is_err());
    }

    fn stats(mean: Vec<f64>, cov: Vec<f64>) -> FeatureStats {
        FeatureStats {
            n: 0,
            dim: mean.len(),
            mean,
            cov,
        }
    }

    #[test]
    fn frechet_distance_of_isotropic_gaussians() {
        // N(μ₁, a·I) vs N(μ₂, b·I) in d dims: ‖μ₁ − μ₂‖² + d (√a − √b)².
        let d = 5;
        let eye = |s: f64| {
            let mut c = vec![0.0; d * d];
            (0..d).for_each(|i| c[i * d + i] = s);
            c
        };
        let a = stats(vec![1.0; d], eye(4.0));
        let b = stats(vec![0.0, 1.0, 1.0, 1.0, 3.0], eye(9.0));
        let want = (1.0 + 4.0) + d as f64 * 1.0;
        assert!((frechet_distance(&a, &b).unwrap() - want).abs() < 1e-10);
        assert!(frechet_distance(&a, &a).unwrap().abs() < 1e-10);
    }

    #[test]
    fn frechet_distance_of_non_commuting_2d_gaussians() {
        // For 2×2 SPD Σ₁, Σ₂: tr (Σ₁Σ₂)^½ = √(tr Σ₁Σ₂ + 2 √det Σ₁Σ₂).
        let s1 = vec![2.0, 0.5, 0.5, 1.0];
        let s2 = vec![1.0, -0.3, -0.3, 3.0];
        let p = matmul(&s1, &s2, 2);
        let det = p[0] * p[3] - p[1] * p[2];
        let cross = (p[0] + p[3] + 2.0 * det.sqrt()).sqrt();
        let want = (0.5f64.powi(2) + 2.0f64.powi(2)) + 3.0 + 4.0 - 2.0 * cross;
        let got = frechet_distance(&stats(vec![0.5, 0.0], s1), &stats(vec![0.0, 2.0], s2));
        assert!((got.unwrap() - want).abs() < 1e-12, "{want}");
    }

    #[test]
    fn feature_statistics_are_the_unbiased_moments() {
        // Vectors (1, 2), (3, 2), (5, 8): mean (3, 4), covariance [[4, 6], [6, 12]].
        let s = FeatureStats::of(&[1.0, 2.0, 3.0, 2.0, 5.0, 8.0], 2).unwrap();
        assert_eq!(s.n, 3);
        assert_eq!(s.mean, vec![3.0, 4.0]);
        assert_eq!(s.cov, vec![4.0, 6.0, 6.0, 12.0]);
        assert!(FeatureStats::of(&[1.0, 2.0], 2).is_err());
        assert!(FeatureStats::of(&[1.0, f32::NAN, 1.0, 1.0], 2).is_err());
    }

    #[test]
    fn inception_score_extremes() {
        // Confident and balanced over 4 classes: IS = 4; identical rows: IS = 1.
        let mut sharp = Vec::new();
        for c in 0..4 {
            let mut row = [0.0f32; 4];
            row[c] = 100.0;
            sharp.extend(row);
        }
        assert!((inception_score(&sharp, 4).unwrap() - 4.0).abs() < 1e-9);
        let same = [1.0f32, 2.0, 3.0, 4.0].repeat(5);
        assert!((inception_score(&same, 4).unwrap() - 1.0).abs() < 1e-12);
        assert!(inception_score(&[1.0; 5], 4).is_err());
    }

    /// Points on the x axis of a 2-d space.
    fn line(xs: &[f32]) -> Vec<f32> {
        xs.iter().flat_map(|&x| [x, 0.0]).collect()
    }

    #[test]
    fn precision_recall_on_a_constructed_case() {
        // Real: 0, 1, …, 9 (3rd-NN radius 2 inside, 3 at the ends).
        let real = line(&(0..10).map(|i| i as f32).collect::<Vec<_>>());
        // Samples 0.5 … 3.5 are inside; 50 is outside every real radius.
        let samples = line(&[0.5, 1.5, 2.5, 3.5, 50.0]);
        for threads in [1, 3] {
            let pr = precision_recall(&real, &samples, 2, 3, threads).unwrap();
            assert_eq!(pr.precision, 0.8);
            // The outlier's own 3-NN radius (48.5) covers every real point from 2 on, and
            // 0.5 (radius 3) covers 0 and 1: recall 1 (the metric's known outlier weakness).
            assert_eq!(pr.recall, 1.0);
        }
        // Without it: radii 3, 2, 2, 3 cover the real points 0 … 6.
        let pr = precision_recall(&real, &line(&[0.5, 1.5, 2.5, 3.5]), 2, 3, 2).unwrap();
        assert_eq!((pr.precision, pr.recall), (1.0, 0.7));
        assert!(precision_recall(&real, &line(&[1.0, 2.0, 3.0]), 2, 3, 1).is_err());
    }
}
