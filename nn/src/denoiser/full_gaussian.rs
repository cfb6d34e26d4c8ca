//! The exact denoiser of a full-covariance Gaussian prior X ~ N(μ, Σ), given Σ by its
//! eigendecomposition Σ = V Λ Vᵀ (`--weights gaussian-fit:DATA`; the host fits μ and Σ):
//!
//! D(x, σ) = μ + Σ (Σ + σ² I)⁻¹ (x − μ) = μ + V diag(λ/(λ + σ²)) Vᵀ (x − μ).
//!
//! Both kinds evaluate this directly (the VP ε path of a network is the same map); kind `vp`
//! refuses σ outside the VP table, as a VP network would. Only eigenvectors with λ > 0 are
//! kept: the others contribute nothing (gain 0), so D = μ off Σ's range.

use anyhow::{bail, Result};
use tweedie_core::plan::PlanStep;
use tweedie_core::{Denoiser, Error, TimeMap};

use crate::weights::meta::Kind;

/// N(μ, V Λ Vᵀ) on `dim` elements, stored for fast evaluation (f32 vectors).
#[derive(Debug, Clone, PartialEq)]
pub struct FullGaussian {
    /// VP (σ checked against the VP table) or VE.
    pub kind: Kind,
    mean: Vec<f32>,
    /// The kept eigenvectors, one per row (`values.len()` rows of `dim`).
    vectors: Vec<f32>,
    /// Their eigenvalues, all > 0.
    values: Vec<f64>,
}

impl FullGaussian {
    /// The prior with mean `mean` (dim) and covariance Σ = Σᵢ λᵢ vᵢ vᵢᵀ: `vectors` holds the
    /// orthonormal vᵢ back to back (dim each), `values` the λᵢ (≥ 0; zeros are dropped).
    pub fn new(kind: Kind, mean: &[f64], vectors: &[f64], values: &[f64]) -> Result<FullGaussian> {
        let dim = mean.len();
        if dim == 0 || vectors.len() != dim * values.len() {
            bail!(
                "full Gaussian: {} vector entries for {} eigenvalues of dimension {dim}",
                vectors.len(),
                values.len()
            );
        }
        if mean.iter().chain(vectors).any(|v| !v.is_finite()) {
            bail!("full Gaussian: non-finite mean or eigenvector");
        }
        if values.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            bail!("full Gaussian: eigenvalues must be finite and >= 0");
        }
        let mut kept = Vec::new();
        let mut kept_values = Vec::new();
        for (v, &l) in vectors.chunks_exact(dim).zip(values) {
            if l > 0.0 {
                kept.extend(v.iter().map(|&e| e as f32));
                kept_values.push(l);
            }
        }
        Ok(FullGaussian {
            kind,
            mean: mean.iter().map(|&m| m as f32).collect(),
            vectors: kept,
            values: kept_values,
        })
    }

    /// Elements per image.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Number of eigenvectors kept (the rank of Σ).
    pub fn rank(&self) -> usize {
        self.values.len()
    }

    /// D(x, σ) for each chain of `x` (batch × dim) into `out`; `coef` is scratch of `rank`.
    fn apply(&self, x: &[f32], sigma: f64, coef: &mut [f32], out: &mut [f32]) {
        let dim = self.dim();
        for (xc, oc) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            self.denoise_chain(xc, sigma, coef, oc);
        }
    }

    /// D(x, σ) of one chain `x` (dim) into `out`, and ln N(x; μ, Σ + σ²I) + (dim/2)·ln 2π, the
    /// log density of the noisy law at x without its constant (a mixture weighs its
    /// components by it). `coef` is scratch of `rank`.
    ///
    /// With r = x − μ and zᵢ = vᵢᵀ r: the quadratic form is Σ zᵢ²/(λᵢ + σ²) plus the part of
    /// r off Σ's range, (‖r‖² − Σ zᵢ²)/σ²; the log determinant Σ ln(λᵢ + σ²) + (dim − rank)·ln σ².
    pub fn denoise_chain(&self, x: &[f32], sigma: f64, coef: &mut [f32], out: &mut [f32]) -> f64 {
        let dim = self.dim();
        let s2 = sigma * sigma;
        // out = x − μ, then the coefficients gᵢ vᵢᵀ (x − μ).
        for ((o, &v), &m) in out.iter_mut().zip(x).zip(&self.mean) {
            *o = v - m;
        }
        let r2: f64 = out.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
        let (mut on_range, mut quad, mut log_det) = (0.0f64, 0.0f64, 0.0f64);
        for ((c, v), &l) in coef
            .iter_mut()
            .zip(self.vectors.chunks_exact(dim))
            .zip(&self.values)
        {
            let z = dot(v, out);
            on_range += z * z;
            quad += z * z / (l + s2);
            log_det += (l + s2).ln();
            *c = (z * (l / (l + s2))) as f32;
        }
        quad += (r2 - on_range).max(0.0) / s2;
        log_det += (dim - self.rank()) as f64 * s2.ln();
        out.copy_from_slice(&self.mean);
        for (&c, v) in coef.iter().zip(self.vectors.chunks_exact(dim)) {
            for (o, &e) in out.iter_mut().zip(v) {
                *o += c * e;
            }
        }
        -0.5 * (quad + log_det)
    }
}

/// Σ a·b with eight f32 lanes (vectorises), summed in f64.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(&x, &y)| f64::from(x * y)).sum();
    lanes.iter().map(|&l| f64::from(l)).sum::<f64>() + tail
}

/// The σ of a closed-form prior's `denoise` call, after checking the call: `batch` rows of
/// `dim` in `x` and as many in `out`, σ finite and > 0, and for a VP prior inside the VP
/// table (a VP network can only be asked for σ there; formats §1). `errors` are the shape
/// and the σ message, naming the prior.
pub(super) fn checked_sigma(
    kind: Kind,
    dim: usize,
    (x, batch, out): (&[f32], usize, &[f32]),
    step: &PlanStep,
    errors: [&'static str; 2],
) -> Result<f64, Error> {
    if batch == 0 || x.len() != batch * dim || out.len() != x.len() {
        return Err(Error::Shape(errors[0]));
    }
    let sigma = step.sigma_net;
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(Error::Denoiser(errors[1]));
    }
    if kind == Kind::Vp {
        TimeMap::Exact.map(sigma)?;
    }
    Ok(sigma)
}

/// A worker's denoiser over a shared [`FullGaussian`] (its own coefficient scratch).
pub struct FullGaussianDenoiser<'a> {
    prior: &'a FullGaussian,
    coef: Vec<f32>,
}

impl<'a> FullGaussianDenoiser<'a> {
    /// A denoiser for one worker thread.
    pub fn new(prior: &'a FullGaussian) -> Self {
        FullGaussianDenoiser {
            prior,
            coef: vec![0.0; prior.rank()],
        }
    }
}

impl Denoiser for FullGaussianDenoiser<'_> {
    fn denoise(
        &mut self,
        x: &[f32],
        batch: usize,
        step: &PlanStep,
        out: &mut [f32],
    ) -> Result<(), Error> {
        let dim = self.prior.dim();
        let errors = [
            "full Gaussian: x is not batch × dim",
            "full Gaussian: sigma must be > 0",
        ];
        let sigma = checked_sigma(self.prior.kind, dim, (x, batch, out), step, errors)?;
        self.prior.apply(x, sigma, &mut self.coef, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(prior: &FullGaussian, x: &[f32], sigma: f64) -> Vec<f32> {
        let mut out = vec![0.0f32; x.len()];
        let batch = x.len() / prior.dim();
        FullGaussianDenoiser::new(prior)
            .denoise(x, batch, &PlanStep::at_sigma(sigma), &mut out)
            .unwrap();
        out
    }

    /// 2-D: Σ = R diag(4, 0.25) Rᵀ with R a 30° rotation; D = μ + Σ (Σ + σ² I)⁻¹ (x − μ)
    /// worked out with the explicit 2×2 inverse.
    #[test]
    fn matches_the_two_dimensional_closed_form() {
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let vectors = [c, s, -s, c];
        let (l1, l2) = (4.0, 0.25);
        let cov = [
            l1 * c * c + l2 * s * s,
            (l1 - l2) * c * s,
            (l1 - l2) * c * s,
            l1 * s * s + l2 * c * c,
        ];
        let mean = [0.5, -0.25];
        let prior = FullGaussian::new(Kind::Ve, &mean, &vectors, &[l1, l2]).unwrap();
        let x = [1.5f32, 2.0, -3.0, 0.5];
        for sigma in [0.1, 1.0, 7.0] {
            let got = run(&prior, &x, sigma);
            let s2 = sigma * sigma;
            let (a, b, d) = (cov[0] + s2, cov[1], cov[3] + s2);
            let det = a * d - b * b;
            let inv = [d / det, -b / det, -b / det, a / det];
            for chain in 0..2 {
                let r = [
                    f64::from(x[2 * chain]) - mean[0],
                    f64::from(x[2 * chain + 1]) - mean[1],
                ];
                let w = [inv[0] * r[0] + inv[1] * r[1], inv[2] * r[0] + inv[3] * r[1]];
                for i in 0..2 {
                    let want = mean[i] + cov[2 * i] * w[0] + cov[2 * i + 1] * w[1];
                    let g = f64::from(got[2 * chain + i]);
                    assert!(
                        (g - want).abs() < 1e-5,
                        "sigma {sigma} chain {chain}: {g} vs {want}"
                    );
                }
            }
        }
    }

    /// Diagonal Σ with a zero variance: per-coordinate shrinkage s²/(s² + σ²); σ → 0 gives
    /// x on the support and μ off it, σ → ∞ gives μ.
    #[test]
    fn diagonal_limits() {
        let var = [0.5, 0.0, 2.0];
        let mean = [0.1, -1.0, 0.3];
        let mut vectors = [0.0; 9];
        for i in 0..3 {
            vectors[i * 3 + i] = 1.0;
        }
        let prior = FullGaussian::new(Kind::Ve, &mean, &vectors, &var).unwrap();
        assert_eq!(prior.rank(), 2);
        let x = [0.9f32, 0.4, -0.7];
        for sigma in [0.002, 0.3, 80.0] {
            let got = run(&prior, &x, sigma);
            for i in 0..3 {
                let want =
                    mean[i] + var[i] / (var[i] + sigma * sigma) * (f64::from(x[i]) - mean[i]);
                assert!((f64::from(got[i]) - want).abs() < 1e-6, "{sigma} {i}");
            }
        }
        let near = run(&prior, &x, 0.002);
        assert!((near[0] - x[0]).abs() < 1e-4 && (near[2] - x[2]).abs() < 1e-4);
        assert_eq!(near[1], -1.0);
        let far = run(&prior, &x, 80.0);
        for i in 0..3 {
            assert!((f64::from(far[i]) - mean[i]).abs() < 1e-3);
        }
        // VP: σ beyond the VP table is refused; a bad shape or eigenvalue is an error.
        let mut out = [0.0f32; 3];
        let vp = FullGaussian {
            kind: Kind::Vp,
            ..prior.clone()
        };
        assert!(FullGaussianDenoiser::new(&vp)
            .denoise(&x, 1, &PlanStep::at_sigma(348.0), &mut out)
            .is_err());
        FullGaussianDenoiser::new(&vp)
            .denoise(&x, 1, &PlanStep::at_sigma(1.0), &mut out)
            .unwrap();
        assert!(FullGaussianDenoiser::new(&prior)
            .denoise(&x[..2], 1, &PlanStep::at_sigma(1.0), &mut out[..2])
            .is_err());
        assert!(FullGaussian::new(Kind::Ve, &mean, &vectors, &[1.0, -1.0, 1.0]).is_err());
        assert!(FullGaussian::new(Kind::Ve, &mean, &vectors[..6], &var).is_err());
    }

    /// The call checks both closed-form priors share: the shape, σ finite and > 0, and σ in
    /// the VP table for a VP prior only.
    #[test]
    fn checked_sigma_refuses_bad_calls() {
        let x = [0.0f32; 4];
        let check = |kind, batch, out: &[f32], sigma| {
            checked_sigma(
                kind,
                2,
                (&x, batch, out),
                &PlanStep::at_sigma(sigma),
                ["shape", "sigma"],
            )
        };
        assert_eq!(check(Kind::Ve, 2, &x, 0.5), Ok(0.5));
        assert_eq!(check(Kind::Ve, 0, &x, 0.5), Err(Error::Shape("shape")));
        assert_eq!(check(Kind::Ve, 1, &x, 0.5), Err(Error::Shape("shape")));
        assert_eq!(check(Kind::Ve, 2, &x[..2], 0.5), Err(Error::Shape("shape")));
        for sigma in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(check(Kind::Ve, 2, &x, sigma), Err(Error::Denoiser("sigma")));
        }
        assert_eq!(check(Kind::Ve, 2, &x, 348.0), Ok(348.0));
        assert!(matches!(
            check(Kind::Vp, 2, &x, 348.0),
            Err(Error::SigmaOutsideVpTable { .. })
        ));
    }
}
