//! The exact denoiser of a Gaussian mixture prior X ~ Σₖ πₖ N(μₖ, Σₖ)
//! (`--weights gaussian-mixture-fit:DATA`: one full-covariance Gaussian per class, πₖ the
//! class proportions). The noisy law is the mixture of N(μₖ, Σₖ + σ²I), so Tweedie gives
//!
//! D(x, σ) = Σₖ wₖ(x, σ) Dₖ(x, σ),  wₖ ∝ πₖ N(x; μₖ, Σₖ + σ²I),
//!
//! with Dₖ each component's own denoiser ([`FullGaussian`]). The weights are a softmax of
//! log densities (shifted by their maximum), so far from every mean they stay finite. A
//! closed form for a multi-modal law: the report uses it to show that a low temperature
//! sharpens the sampled law towards its densest modes.

use anyhow::{bail, Result};
use tweedie_core::plan::PlanStep;
use tweedie_core::{Denoiser, Error};

use super::full_gaussian::{checked_sigma, FullGaussian};
use crate::weights::meta::Kind;

/// Σₖ πₖ N(μₖ, Σₖ) over `dim` elements.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianMixture {
    components: Vec<FullGaussian>,
    log_weights: Vec<f64>,
}

impl GaussianMixture {
    /// The mixture of `components` (same kind and dimension) with weights ∝ `weights`
    /// (positive, normalised here).
    pub fn new(components: Vec<FullGaussian>, weights: &[f64]) -> Result<GaussianMixture> {
        let Some(first) = components.first() else {
            bail!("Gaussian mixture: no components");
        };
        if weights.len() != components.len() {
            bail!(
                "Gaussian mixture: {} weights for {} components",
                weights.len(),
                components.len()
            );
        }
        if components
            .iter()
            .any(|c| c.dim() != first.dim() || c.kind != first.kind)
        {
            bail!("Gaussian mixture: components differ in dimension or kind");
        }
        if weights.iter().any(|w| !(w.is_finite() && *w > 0.0)) {
            bail!("Gaussian mixture: weights must be finite and > 0");
        }
        let total: f64 = weights.iter().sum();
        Ok(GaussianMixture {
            log_weights: weights.iter().map(|w| (w / total).ln()).collect(),
            components,
        })
    }

    /// VP or VE (the components').
    pub fn kind(&self) -> Kind {
        self.components[0].kind
    }

    /// Elements per image.
    pub fn dim(&self) -> usize {
        self.components[0].dim()
    }

    /// Number of components.
    pub fn len(&self) -> usize {
        self.components.len()
    }

    /// Always false (a mixture has a component).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The largest component rank (the coefficient scratch a denoiser needs).
    fn max_rank(&self) -> usize {
        self.components
            .iter()
            .map(FullGaussian::rank)
            .max()
            .unwrap_or(0)
    }
}

/// A worker's denoiser over a shared [`GaussianMixture`] (its own scratch: every component's
/// D of one chain, their log weights, the weighted sum and the coefficients).
pub struct GaussianMixtureDenoiser<'a> {
    prior: &'a GaussianMixture,
    coef: Vec<f32>,
    each: Vec<f32>,
    log_w: Vec<f64>,
    acc: Vec<f64>,
}

impl<'a> GaussianMixtureDenoiser<'a> {
    /// A denoiser for one worker thread.
    pub fn new(prior: &'a GaussianMixture) -> Self {
        GaussianMixtureDenoiser {
            prior,
            coef: vec![0.0; prior.max_rank()],
            each: vec![0.0; prior.len() * prior.dim()],
            log_w: vec![0.0; prior.len()],
            acc: vec![0.0; prior.dim()],
        }
    }

    /// D of one chain: every component's D and log weight, then their softmax average.
    fn chain(&mut self, x: &[f32], sigma: f64, out: &mut [f32]) {
        let dim = self.prior.dim();
        let parts = self.prior.components.iter().zip(&self.prior.log_weights);
        for ((c, &lw), (d, l)) in parts.zip(self.each.chunks_exact_mut(dim).zip(&mut self.log_w)) {
            *l = lw + c.denoise_chain(x, sigma, &mut self.coef[..c.rank()], d);
        }
        let top = self.log_w.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut total = 0.0;
        for l in &mut self.log_w {
            *l = (*l - top).exp();
            total += *l;
        }
        self.acc.fill(0.0);
        for (d, &w) in self.each.chunks_exact(dim).zip(&self.log_w) {
            for (a, &v) in self.acc.iter_mut().zip(d) {
                *a += w * f64::from(v);
            }
        }
        for (o, &a) in out.iter_mut().zip(&self.acc) {
            *o = (a / total) as f32;
        }
    }
}

impl Denoiser for GaussianMixtureDenoiser<'_> {
    fn denoise(
        &mut self,
        x: &[f32],
        batch: usize,
        step: &PlanStep,
        out: &mut [f32],
    ) -> Result<(), Error> {
        let dim = self.prior.dim();
        let errors = [
            "Gaussian mixture: x is not batch × dim",
            "Gaussian mixture: sigma must be > 0",
        ];
        let sigma = checked_sigma(self.prior.kind(), dim, (x, batch, out), step, errors)?;
        for (xc, oc) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
            self.chain(xc, sigma, oc);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoiser::full_gaussian::FullGaussianDenoiser;

    fn diagonal(mean: &[f64], var: &[f64]) -> FullGaussian {
        let n = mean.len();
        let mut vectors = vec![0.0; n * n];
        for i in 0..n {
            vectors[i * n + i] = 1.0;
        }
        FullGaussian::new(Kind::Ve, mean, &vectors, var).unwrap()
    }

    fn denoise(prior: &GaussianMixture, x: &[f32], sigma: f64) -> Vec<f32> {
        let mut out = vec![0.0f32; x.len()];
        let batch = x.len() / prior.dim();
        GaussianMixtureDenoiser::new(prior)
            .denoise(x, batch, &PlanStep::at_sigma(sigma), &mut out)
            .unwrap();
        out
    }

    /// One component: the mixture is that Gaussian, bit for bit.
    #[test]
    fn one_component_is_the_gaussian() {
        let g = diagonal(&[0.1, -0.4, 0.3], &[0.5, 0.0, 2.0]);
        let mix = GaussianMixture::new(vec![g.clone()], &[3.0]).unwrap();
        let x = [0.9f32, 0.4, -0.7, 2.0, -1.0, 0.25];
        for sigma in [0.01, 0.7, 30.0] {
            let mut want = vec![0.0f32; 6];
            FullGaussianDenoiser::new(&g)
                .denoise(&x, 2, &PlanStep::at_sigma(sigma), &mut want)
                .unwrap();
            assert_eq!(denoise(&mix, &x, sigma), want, "sigma {sigma}");
        }
    }

    /// 1-D, two components (one with zero variance, a point mass): E[X | x] by quadrature of
    /// p(u) N(x; u, σ²) against the closed form.
    #[test]
    fn matches_quadrature_in_one_dimension() {
        let (m1, v1, p1) = (-1.0, 0.3, 0.7);
        let (m2, p2) = (2.0, 0.3);
        let mix = GaussianMixture::new(
            vec![diagonal(&[m1], &[v1]), diagonal(&[m2], &[0.0])],
            &[p1, p2],
        )
        .unwrap();
        let normal = |u: f64, m: f64, v: f64| {
            (-(u - m).powi(2) / (2.0 * v)).exp() / (2.0 * std::f64::consts::PI * v).sqrt()
        };
        for sigma in [0.2, 1.0, 3.0] {
            for x in [-2.5f64, -0.3, 0.6, 1.4, 4.0] {
                // Continuous part by the midpoint rule on [−12, 12], the point mass exactly.
                let (mut num, mut den) = (0.0, 0.0);
                let n = 200_000;
                let h = 24.0 / n as f64;
                for i in 0..n {
                    let u = -12.0 + (i as f64 + 0.5) * h;
                    let w = p1 * normal(u, m1, v1) * normal(x, u, sigma * sigma) * h;
                    num += u * w;
                    den += w;
                }
                let w2 = p2 * normal(x, m2, sigma * sigma);
                let want = (num + m2 * w2) / (den + w2);
                let got = f64::from(denoise(&mix, &[x as f32], sigma)[0]);
                assert!(
                    (got - want).abs() < 2e-5,
                    "sigma {sigma} x {x}: {got} vs {want}"
                );
            }
        }
    }

    /// Far from both means the weights stay finite: D picks the nearer component.
    #[test]
    fn far_points_pick_the_nearer_component() {
        let mix = GaussianMixture::new(
            vec![
                diagonal(&[-1.0, 0.0], &[0.1, 0.1]),
                diagonal(&[1.0, 0.0], &[0.1, 0.1]),
            ],
            &[0.5, 0.5],
        )
        .unwrap();
        let got = denoise(&mix, &[1e4, 0.0], 0.05);
        assert!(got.iter().all(|v| v.is_finite()));
        assert!((got[0] - (1.0 + 0.1 / 0.1025 * (1e4 - 1.0)) as f32).abs() < 1.0);
        assert!(GaussianMixture::new(vec![], &[]).is_err());
        let g = diagonal(&[0.0], &[1.0]);
        assert!(GaussianMixture::new(vec![g.clone()], &[0.0]).is_err());
        assert!(GaussianMixture::new(
            vec![g.clone(), diagonal(&[0.0, 1.0], &[1.0, 1.0])],
            &[1.0, 1.0]
        )
        .is_err());
    }
}
