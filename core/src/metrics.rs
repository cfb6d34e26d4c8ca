//! Image metrics (spec §11): PSNR in both conventions, SSIM, and streaming per-pixel moments.
//!
//! - [`psnr`]: the textbook PSNR with MAX = the data-range width (2 for [-1, 1], 1 for [0, 1]).
//! - [`psnr_minmax`] / [`minmax_metrics`]: the official code's convention (spec §11.1): both
//!   images min-max normalised by their own global min and max, then PSNR with data range 1
//!   (plus the SNR and MSE the code also reports).
//! - [`ssim`]: skimage `structural_similarity` with its defaults.
//! - [`RunningMoments`]: per-element mean and variance over many samples (e.g. 500 restoration
//!   chains, spec §11.2), mergeable across threads or batches.
//!
//! Everything accumulates in f64; images come in as f32, C×H×W row-major where a shape matters.
//! Identical images have MSE 0 and PSNR = +∞ (as skimage, without its warning).

use crate::error::{check_len, check_positive};
use crate::operator::ImageShape;
use crate::Error;

/// Checks two images for equal, non-zero length.
fn check_pair(reference: &[f32], estimate: &[f32]) -> Result<(), Error> {
    check_len(
        "estimate (same length as reference)",
        reference.len(),
        estimate.len(),
    )?;
    if reference.is_empty() {
        return Err(Error::Shape("an image must have at least one element"));
    }
    Ok(())
}

/// `10·log10(max² / mse)`; +∞ when mse = 0.
pub fn psnr_of_mse(max: f64, mse: f64) -> f64 {
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * libm::log10(max * max / mse)
    }
}

/// Mean squared error `(1/d) Σ (estimate − reference)²` in f64. Non-finite values → NotFinite.
pub fn mse(reference: &[f32], estimate: &[f32]) -> Result<f64, Error> {
    check_pair(reference, estimate)?;
    let sum: f64 = reference
        .iter()
        .zip(estimate)
        .map(|(&a, &b)| {
            let d = f64::from(b) - f64::from(a);
            d * d
        })
        .sum();
    let m = sum / reference.len() as f64;
    if m.is_finite() {
        Ok(m)
    } else {
        Err(Error::NotFinite("image values"))
    }
}

/// PSNR = 10·log10(MAX² / MSE) with MAX = `data_range`, the width of the data range (2 for
/// [-1, 1], 1 for [0, 1]; skimage's `data_range`). Identical images give +∞.
pub fn psnr(reference: &[f32], estimate: &[f32], data_range: f64) -> Result<f64, Error> {
    check_positive(data_range, "data_range")?;
    Ok(psnr_of_mse(data_range, mse(reference, estimate)?))
}

/// The official code's metrics on min-max normalised images (spec §11.1), all on the normalised
/// arrays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MinMaxMetrics {
    /// PSNR with data range 1: −10·log10(MSE); +∞ for MSE = 0.
    pub psnr: f64,
    /// SNR = 10·log10(mean(ref²) / MSE); +∞ for MSE = 0.
    pub snr: f64,
    /// MSE of the normalised images.
    pub mse: f64,
}

/// Global (min, max − min) of an image; a constant image (max = min) has no min-max
/// normalisation and is an error (`NotPositive`), a non-finite value `NotFinite`.
fn min_and_range(z: &[f32]) -> Result<(f64, f64), Error> {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in z {
        if !v.is_finite() {
            return Err(Error::NotFinite("image values"));
        }
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let range = f64::from(hi) - f64::from(lo);
    check_positive(range, "image range max − min (min-max normalisation)")?;
    Ok((f64::from(lo), range))
}

/// PSNR, SNR and MSE after min-max normalising BOTH images, each by its own global min and max
/// over all pixels and channels, `z ← (z − min z)/(max z − min z)` (spec §11.1, the official
/// `compute_metrics`). The normalisation is done in f64 (the code does it in float32; the
/// difference is float rounding). A constant image is an error (`NotPositive`): the code would
/// divide 0 by 0.
pub fn minmax_metrics(reference: &[f32], estimate: &[f32]) -> Result<MinMaxMetrics, Error> {
    check_pair(reference, estimate)?;
    let (ref_min, ref_range) = min_and_range(reference)?;
    let (est_min, est_range) = min_and_range(estimate)?;
    let (mut signal, mut error) = (0.0f64, 0.0f64);
    for (&a, &b) in reference.iter().zip(estimate) {
        let r = (f64::from(a) - ref_min) / ref_range;
        let e = (f64::from(b) - est_min) / est_range;
        signal += r * r;
        error += (e - r) * (e - r);
    }
    let d = reference.len() as f64;
    let (signal, mse) = (signal / d, error / d);
    let snr = if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * libm::log10(signal / mse)
    };
    Ok(MinMaxMetrics {
        psnr: psnr_of_mse(1.0, mse),
        snr,
        mse,
    })
}

/// The official code's PSNR (spec §11.1): [`minmax_metrics`]`(..).psnr`.
pub fn psnr_minmax(reference: &[f32], estimate: &[f32]) -> Result<f64, Error> {
    Ok(minmax_metrics(reference, estimate)?.psnr)
}

/// Side of skimage's default SSIM window (uniform, not Gaussian).
pub const SSIM_WIN: usize = 7;
/// skimage's K1.
pub const SSIM_K1: f64 = 0.01;
/// skimage's K2.
pub const SSIM_K2: f64 = 0.03;

/// Sums (x, y, x², y², xy) over one 7×7 window with top-left (r0, c0) of a W-wide plane.
fn window_sums(x: &[f32], y: &[f32], w: usize, r0: usize, c0: usize) -> [f64; 5] {
    let mut s = [0.0f64; 5];
    for r in r0..r0 + SSIM_WIN {
        let (xr, yr) = (&x[r * w + c0..][..SSIM_WIN], &y[r * w + c0..][..SSIM_WIN]);
        for (&a, &b) in xr.iter().zip(yr) {
            let (a, b) = (f64::from(a), f64::from(b));
            s[0] += a;
            s[1] += b;
            s[2] += a * a;
            s[3] += b * b;
            s[4] += a * b;
        }
    }
    s
}

/// The SSIM map value of one window from its sums (skimage's formula, sample covariance).
fn ssim_of_sums(s: [f64; 5], c1: f64, c2: f64) -> f64 {
    let np = (SSIM_WIN * SSIM_WIN) as f64;
    let cov_norm = np / (np - 1.0);
    let (ux, uy) = (s[0] / np, s[1] / np);
    let vx = cov_norm * (s[2] / np - ux * ux);
    let vy = cov_norm * (s[3] / np - uy * uy);
    let vxy = cov_norm * (s[4] / np - ux * uy);
    let (a1, a2) = (2.0 * ux * uy + c1, 2.0 * vxy + c2);
    let (b1, b2) = (ux * ux + uy * uy + c1, vx + vy + c2);
    (a1 * a2) / (b1 * b2)
}

/// Mean SSIM as skimage's `structural_similarity(reference, estimate, data_range=…,
/// channel_axis=0)` with its defaults: 7×7 uniform window, K1 = 0.01, K2 = 0.03, sample
/// covariances (factor 49/48), the SSIM map averaged over the valid region (every window fully
/// inside the image, i.e. skimage's crop of 3 pixels per side, so its filter's border mode does
/// not matter), then averaged over the C channels. H and W must be ≥ 7. Computed directly per
/// window in f64 (skimage works in the input's float type), allocation-free; symmetric in its
/// two images.
pub fn ssim(
    reference: &[f32],
    estimate: &[f32],
    (c, h, w): (usize, usize, usize),
    data_range: f64,
) -> Result<f64, Error> {
    let shape = ImageShape::new(c, h, w)?;
    check_positive(data_range, "data_range")?;
    check_len("reference (C·H·W)", shape.len(), reference.len())?;
    check_len("estimate (C·H·W)", shape.len(), estimate.len())?;
    if h < SSIM_WIN || w < SSIM_WIN {
        return Err(Error::Shape(
            "SSIM needs H and W of at least 7 (the window)",
        ));
    }
    let c1 = (SSIM_K1 * data_range) * (SSIM_K1 * data_range);
    let c2 = (SSIM_K2 * data_range) * (SSIM_K2 * data_range);
    let plane = shape.plane();
    let mut total = 0.0f64;
    for (x, y) in reference
        .chunks_exact(plane)
        .zip(estimate.chunks_exact(plane))
    {
        let mut channel = 0.0f64;
        for r0 in 0..=h - SSIM_WIN {
            for c0 in 0..=w - SSIM_WIN {
                channel += ssim_of_sums(window_sums(x, y, w, r0, c0), c1, c2);
            }
        }
        total += channel / ((h - SSIM_WIN + 1) * (w - SSIM_WIN + 1)) as f64;
    }
    let value = total / c as f64;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::NotFinite("image values"))
    }
}

/// Streaming per-element mean and variance over samples of equal length (Welford's update),
/// mergeable (Chan et al.'s pairwise combination), over caller-owned f64 buffers: `mean[i]` and
/// `m2[i]` = Σ (x_i − mean_i)² of the samples pushed so far.
#[derive(Debug, PartialEq)]
pub struct RunningMoments<'a> {
    mean: &'a mut [f64],
    m2: &'a mut [f64],
    count: u64,
}

impl<'a> RunningMoments<'a> {
    /// Empty moments over `mean.len()` elements; zero-fills both buffers (equal lengths).
    pub fn new(mean: &'a mut [f64], m2: &'a mut [f64]) -> Result<Self, Error> {
        check_len("m2 (same length as mean)", mean.len(), m2.len())?;
        mean.fill(0.0);
        m2.fill(0.0);
        Ok(Self { mean, m2, count: 0 })
    }

    /// Resumes from a saved state (`mean`, `m2` as returned by [`Self::mean`] and [`Self::m2`]
    /// after `count` samples), e.g. a partial result written by another thread.
    pub fn from_parts(mean: &'a mut [f64], m2: &'a mut [f64], count: u64) -> Result<Self, Error> {
        check_len("m2 (same length as mean)", mean.len(), m2.len())?;
        Ok(Self { mean, m2, count })
    }

    /// Number of samples so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Elements per sample.
    pub fn len(&self) -> usize {
        self.mean.len()
    }

    /// True for zero elements per sample.
    pub fn is_empty(&self) -> bool {
        self.mean.is_empty()
    }

    /// The running per-element mean (all zeros before the first sample).
    pub fn mean(&self) -> &[f64] {
        self.mean
    }

    /// The running per-element sum of squared deviations from the mean.
    pub fn m2(&self) -> &[f64] {
        self.m2
    }

    /// Adds one sample (Welford): δ = x − mean, mean += δ/n, m2 += δ·(x − mean_new).
    pub fn push(&mut self, sample: &[f32]) -> Result<(), Error> {
        check_len("sample", self.mean.len(), sample.len())?;
        self.count += 1;
        let inv_n = 1.0 / self.count as f64;
        for ((m, q), &x) in self.mean.iter_mut().zip(self.m2.iter_mut()).zip(sample) {
            let x = f64::from(x);
            let delta = x - *m;
            *m += delta * inv_n;
            *q += delta * (x - *m);
        }
        Ok(())
    }

    /// Adds all samples summarised by `other` (Chan et al.): with δ = mean_b − mean_a,
    /// mean = mean_a + δ·n_b/n, m2 = m2_a + m2_b + δ²·n_a·n_b/n.
    pub fn merge(&mut self, other: &RunningMoments<'_>) -> Result<(), Error> {
        check_len("merged moments", self.mean.len(), other.mean.len())?;
        if other.count == 0 {
            return Ok(());
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let (fb, fab) = (nb / n, na * nb / n);
        let pairs = self.mean.iter_mut().zip(self.m2.iter_mut());
        for ((m, q), (&mb, &qb)) in pairs.zip(other.mean.iter().zip(other.m2.iter())) {
            let delta = mb - *m;
            *m += delta * fb;
            *q += qb + delta * delta * fab;
        }
        self.count += other.count;
        Ok(())
    }

    /// out = m2 / (n − ddof), checking the lengths and that n > ddof.
    fn scaled_m2(&self, out: &mut [f64], ddof: u64) -> Result<(), Error> {
        check_len("variance out", self.mean.len(), out.len())?;
        if self.count <= ddof {
            return Err(Error::NotPositive("number of samples (minus ddof)"));
        }
        let inv = 1.0 / (self.count - ddof) as f64;
        for (o, &q) in out.iter_mut().zip(self.m2.iter()) {
            *o = q * inv;
        }
        Ok(())
    }

    /// Population variance m2/n (numpy's default, ddof = 0); needs n ≥ 1.
    pub fn variance(&self, out: &mut [f64]) -> Result<(), Error> {
        self.scaled_m2(out, 0)
    }

    /// Unbiased sample variance m2/(n − 1) (torch's default); needs n ≥ 2.
    pub fn sample_variance(&self, out: &mut [f64]) -> Result<(), Error> {
        self.scaled_m2(out, 1)
    }

    /// Population standard deviation √(m2/n); needs n ≥ 1.
    pub fn std(&self, out: &mut [f64]) -> Result<(), Error> {
        self.variance(out)?;
        out.iter_mut().for_each(|v| *v = libm::sqrt(*v));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise;

    fn gauss(n: usize, seed: u64) -> Vec<f32> {
        let mut v = vec![0.0f32; n];
        noise::fill_gaussian(&mut v, seed, 0, 0, 0);
        v
    }

    #[test]
    fn psnr_closed_forms() {
        // A constant error of 0.1 everywhere: MSE = 0.01 (in f32 0.1 is not exact; tolerance).
        let a = [0.0f32; 12];
        let b = [0.1f32; 12];
        assert!((psnr(&a, &b, 1.0).unwrap() - 20.0).abs() < 1e-5);
        // Range [-1, 1]: MAX = 2 adds 20·log10(2) dB.
        let want = 20.0 + 20.0 * libm::log10(2.0);
        assert!((psnr(&a, &b, 2.0).unwrap() - want).abs() < 1e-5);
        // One of four elements off by 1: MSE = 1/4, PSNR = 10·log10(4).
        let c = [0.0f32, 0.0, 1.0, 0.0];
        assert!((psnr(&[0.0; 4], &c, 1.0).unwrap() - 10.0 * libm::log10(4.0)).abs() < 1e-12);
        assert_eq!(psnr(&b, &b, 1.0).unwrap(), f64::INFINITY);
        assert!(matches!(psnr(&a, &b, 0.0), Err(Error::NotPositive(_))));
        assert!(matches!(
            psnr(&a, &c, 1.0),
            Err(Error::LengthMismatch { .. })
        ));
        assert!(matches!(psnr(&[], &[], 1.0), Err(Error::Shape(_))));
        assert!(matches!(
            psnr(&[f32::NAN], &[0.0], 1.0),
            Err(Error::NotFinite(_))
        ));
    }

    #[test]
    fn minmax_psnr_is_range_invariant_and_has_closed_forms() {
        // An affine map of either image changes nothing after min-max normalisation.
        let x = gauss(300, 1);
        let y: Vec<f32> = x
            .iter()
            .zip(gauss(300, 2))
            .map(|(a, n)| a + 0.2 * n)
            .collect();
        let p = psnr_minmax(&x, &y).unwrap();
        let x01: Vec<f32> = x.iter().map(|v| v * 0.5 + 0.5).collect();
        let y3: Vec<f32> = y.iter().map(|v| 3.0 * v - 7.0).collect();
        assert!((psnr_minmax(&x01, &y3).unwrap() - p).abs() < 1e-4);
        // Reference [0, 1, 2, 3] → [0, 1/3, 2/3, 1]; estimate [0, 2, 1, 3] → [0, 2/3, 1/3, 1]:
        // MSE = 2·(1/3)²/4 = 1/18, PSNR = 10·log10(18); mean(ref²) = (0 + 1/9 + 4/9 + 1)/4 = 7/18,
        // SNR = 10·log10(7).
        let m = minmax_metrics(&[0.0, 1.0, 2.0, 3.0], &[0.0, 2.0, 1.0, 3.0]).unwrap();
        assert!((m.mse - 1.0 / 18.0).abs() < 1e-15);
        assert!((m.psnr - 10.0 * libm::log10(18.0)).abs() < 1e-12);
        assert!((m.snr - 10.0 * libm::log10(7.0)).abs() < 1e-12);
        // Same image up to an (exactly representable) scaling: +∞.
        let half: Vec<f32> = x.iter().map(|v| 0.5 * v).collect();
        assert_eq!(psnr_minmax(&x, &half).unwrap(), f64::INFINITY);
        assert!(matches!(
            psnr_minmax(&[1.0; 4], &[0.0, 1.0, 2.0, 3.0]),
            Err(Error::NotPositive(_))
        ));
        assert!(matches!(
            psnr_minmax(&[0.0, f32::INFINITY], &[0.0, 1.0]),
            Err(Error::NotFinite(_))
        ));
    }

    /// skimage's SSIM map value for windows with means (ux, uy), variances vx, vy, covariance vxy.
    fn ssim_formula(ux: f64, uy: f64, vx: f64, vy: f64, vxy: f64, range: f64) -> f64 {
        let (c1, c2) = ((0.01 * range).powi(2), (0.03 * range).powi(2));
        (2.0 * ux * uy + c1) * (2.0 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    }

    fn checkerboard(h: usize, w: usize) -> Vec<f32> {
        (0..h * w)
            .map(|i| {
                if (i / w + i % w).is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect()
    }

    /// Mean over the valid windows of f(m), where m = ±1/49 is the window mean of the
    /// checkerboard (+ when the window's top-left pixel is +1, i.e. r0 + c0 even).
    fn checkerboard_mean(h: usize, w: usize, f: impl Fn(f64) -> f64) -> f64 {
        let (ph, pw) = (h - 6, w - 6);
        let even = (0..ph * pw)
            .filter(|i| (i / pw + i % pw).is_multiple_of(2))
            .count() as f64;
        let total = (ph * pw) as f64;
        (even * f(1.0 / 49.0) + (total - even) * f(-1.0 / 49.0)) / total
    }

    #[test]
    fn ssim_identical_constant_and_symmetric() {
        let (h, w) = (10, 9);
        let x = gauss(2 * h * w, 3);
        assert!((ssim(&x, &x, (2, h, w), 2.0).unwrap() - 1.0).abs() < 1e-12);
        // Two constant images a, b: variances vanish, S = (2ab + C1)/(a² + b² + C1).
        let (a, b) = (0.25f32, -0.5f32);
        let (ca, cb) = (vec![a; h * w], vec![b; h * w]);
        let want = ssim_formula(a.into(), b.into(), 0.0, 0.0, 0.0, 2.0);
        assert!((ssim(&ca, &cb, (1, h, w), 2.0).unwrap() - want).abs() < 1e-12);
        let y = gauss(2 * h * w, 4);
        let (s1, s2) = (
            ssim(&x, &y, (2, h, w), 2.0).unwrap(),
            ssim(&y, &x, (2, h, w), 2.0).unwrap(),
        );
        assert!((s1 - s2).abs() < 1e-12 && s1 < 1.0);
        // Multichannel: the mean of the channels' SSIMs.
        let mut two = ca.clone();
        two.extend_from_slice(&x[..h * w]);
        let mut other = cb.clone();
        other.extend_from_slice(&x[..h * w]);
        let got = ssim(&two, &other, (2, h, w), 2.0).unwrap();
        assert!((got - (want + 1.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn ssim_checkerboard_closed_forms() {
        let (h, w, range) = (11, 12, 2.0);
        let x = checkerboard(h, w);
        // Every window: 25 of one sign, 24 of the other; E[x²] = 1, so the sample variance is
        // 49/48·(1 − m²).
        let var = |m: f64| 49.0 / 48.0 * (1.0 - m * m);
        // Constant offset d: the covariance terms cancel, S = (2m(m+d) + C1)/(m² + (m+d)² + C1).
        let d = 0.3f64;
        let y: Vec<f32> = x.iter().map(|&v| v + d as f32).collect();
        let want = checkerboard_mean(h, w, |m| {
            ssim_formula(m, m + d, var(m), var(m), var(m), range)
        });
        let got = ssim(&x, &y, (1, h, w), range).unwrap();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // Negation: uy = −m, vy = vx, vxy = −vx (tests the N/(N−1) covariance factor).
        let neg: Vec<f32> = x.iter().map(|&v| -v).collect();
        let want = checkerboard_mean(h, w, |m| {
            ssim_formula(m, -m, var(m), var(m), -var(m), range)
        });
        let got = ssim(&x, &neg, (1, h, w), range).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    }

    #[test]
    fn ssim_rejects_bad_shapes() {
        let x = [0.0f32; 36];
        assert!(matches!(ssim(&x, &x, (1, 6, 6), 1.0), Err(Error::Shape(_))));
        assert!(matches!(
            ssim(&x, &x[..35], (1, 6, 6), 1.0),
            Err(Error::LengthMismatch { .. })
        ));
        let y = [0.0f32; 49];
        assert!(matches!(
            ssim(&y, &y, (1, 7, 7), -1.0),
            Err(Error::NotPositive(_))
        ));
        assert!(matches!(ssim(&y, &y, (0, 7, 7), 1.0), Err(Error::Shape(_))));
    }

    fn rel_close(a: &[f64], b: &[f64], tol: f64) {
        for (&p, &q) in a.iter().zip(b) {
            assert!((p - q).abs() <= tol * p.abs().max(q.abs()), "{p} vs {q}");
        }
    }

    #[test]
    fn merged_halves_equal_one_pass_and_two_pass() {
        let (len, n, split) = (40, 101, 37);
        let samples: Vec<Vec<f32>> = (0..n)
            .map(|s| gauss(len, s).iter().map(|v| 3.0 + 0.5 * v).collect())
            .collect();
        let (mut m_all, mut q_all) = (vec![0.0; len], vec![0.0; len]);
        let mut all = RunningMoments::new(&mut m_all, &mut q_all).unwrap();
        samples.iter().for_each(|s| all.push(s).unwrap());
        let (mut ma, mut qa, mut mb, mut qb) = (
            vec![1.0; len],
            vec![1.0; len],
            vec![0.0; len],
            vec![0.0; len],
        );
        let mut a = RunningMoments::new(&mut ma, &mut qa).unwrap();
        let mut b = RunningMoments::new(&mut mb, &mut qb).unwrap();
        samples[..split].iter().for_each(|s| a.push(s).unwrap());
        samples[split..].iter().for_each(|s| b.push(s).unwrap());
        a.merge(&b).unwrap();
        assert_eq!(a.count(), n);
        rel_close(a.mean(), all.mean(), 1e-12);
        rel_close(a.m2(), all.m2(), 1e-12);
        // Two-pass reference in f64.
        let mut mean2 = vec![0.0f64; len];
        let mut var2 = vec![0.0f64; len];
        for s in &samples {
            mean2
                .iter_mut()
                .zip(s)
                .for_each(|(m, &x)| *m += f64::from(x) / n as f64);
        }
        for s in &samples {
            for ((v, &m), &x) in var2.iter_mut().zip(&mean2).zip(s) {
                *v += (f64::from(x) - m).powi(2) / n as f64;
            }
        }
        let mut var = vec![0.0f64; len];
        a.variance(&mut var).unwrap();
        rel_close(a.mean(), &mean2, 1e-12);
        rel_close(&var, &var2, 1e-12);
        let mut sd = vec![0.0f64; len];
        a.std(&mut sd).unwrap();
        let sd2: Vec<f64> = var2.iter().map(|v| v.sqrt()).collect();
        rel_close(&sd, &sd2, 1e-12);
        let mut unbiased = vec![0.0f64; len];
        a.sample_variance(&mut unbiased).unwrap();
        let unbiased2: Vec<f64> = var2.iter().map(|v| v * n as f64 / (n - 1) as f64).collect();
        rel_close(&unbiased, &unbiased2, 1e-12);
    }

    #[test]
    fn moments_edge_cases() {
        let (mut m, mut q) = (vec![0.0; 2], vec![0.0; 2]);
        let mut r = RunningMoments::new(&mut m, &mut q).unwrap();
        let mut out = [0.0f64; 2];
        assert!(matches!(r.variance(&mut out), Err(Error::NotPositive(_))));
        assert!(matches!(r.push(&[1.0]), Err(Error::LengthMismatch { .. })));
        // Merging into an empty accumulator copies; merging an empty one changes nothing.
        let (mut m2, mut q2) = (vec![0.0; 2], vec![0.0; 2]);
        let mut s = RunningMoments::new(&mut m2, &mut q2).unwrap();
        s.push(&[1.0, 2.0]).unwrap();
        s.push(&[3.0, 2.0]).unwrap();
        r.merge(&s).unwrap();
        assert_eq!(
            (r.count(), r.mean(), r.m2()),
            (2, &[2.0, 2.0][..], &[2.0, 0.0][..])
        );
        let (mut m3, mut q3) = (vec![0.0; 2], vec![0.0; 2]);
        r.merge(&RunningMoments::new(&mut m3, &mut q3).unwrap())
            .unwrap();
        assert_eq!(r.count(), 2);
        r.variance(&mut out).unwrap();
        assert_eq!(out, [1.0, 0.0]);
        let (mut m4, mut q4) = (vec![0.0; 3], vec![0.0; 3]);
        let other = RunningMoments::new(&mut m4, &mut q4).unwrap();
        assert!(matches!(r.merge(&other), Err(Error::LengthMismatch { .. })));
        let (mut m5, mut q5) = (vec![0.0; 3], vec![0.0; 2]);
        assert!(RunningMoments::new(&mut m5, &mut q5).is_err());
    }
}
