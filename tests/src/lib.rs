//! Shared helpers of the cross-crate tests: closed-form denoisers, the exact law of the
//! sampling template under a Gaussian prior, sample statistics and an output hash.
//!
//! Everything here is written from the formulas of spec §5.1 (eq. 11), §10.1 (eq. 24) and
//! §8.5, in f64, without calling the sampler's own coefficient code, so the statistical tests
//! check the sampler against an independent derivation.

use tweedie_core::plan::StepPlan;
use tweedie_core::{Denoiser, Error, PlanStep};

/// Mean and variance of one scalar law.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Moments {
    /// Mean.
    pub mean: f64,
    /// Variance.
    pub var: f64,
}

/// The exact MMSE denoiser of a diagonal Gaussian prior X_i ~ N(μ_i, s_i²), independent
/// coordinates (spec §8.5 per coordinate): D_i(x, σ) = μ_i + s_i²/(s_i² + σ²)(x_i − μ_i).
///
/// A chain has `mean.len()` coordinates; buffer element j belongs to coordinate j mod n.
/// Evaluated at `step.sigma_net` in f64 and rounded once to f32, like
/// [`tweedie_core::denoiser::GaussianOracle`].
#[derive(Clone, Debug, PartialEq)]
pub struct DiagonalGaussian {
    /// μ_i.
    pub mean: Vec<f64>,
    /// s_i > 0.
    pub std: Vec<f64>,
}

impl DiagonalGaussian {
    /// n coordinates with means spread over [−1, 1] and standard deviations over [0.2, 1.5]
    /// (a fixed, deterministic pattern, so each coordinate is a different test case).
    pub fn spread(n: usize) -> Self {
        let t = |i: usize| {
            if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                0.5
            }
        };
        DiagonalGaussian {
            mean: (0..n).map(|i| -1.0 + 2.0 * t((i * 7) % n)).collect(),
            std: (0..n).map(|i| 0.2 + 1.3 * t(i)).collect(),
        }
    }

    /// Number of coordinates of one chain.
    pub fn len(&self) -> usize {
        self.mean.len()
    }

    /// True when there are no coordinates.
    pub fn is_empty(&self) -> bool {
        self.mean.is_empty()
    }

    /// D_i(x, σ) in f64.
    pub fn denoised(&self, i: usize, x: f64, sigma: f64) -> f64 {
        let s2 = self.std[i] * self.std[i];
        self.mean[i] + s2 / (s2 + sigma * sigma) * (x - self.mean[i])
    }

    /// The prior law of coordinate i.
    pub fn prior(&self, i: usize) -> Moments {
        Moments {
            mean: self.mean[i],
            var: self.std[i] * self.std[i],
        }
    }

    /// The exact posterior of coordinate i given y_i = x_i + e, e ~ N(0, σ_y²):
    /// mean (s² y + σ_y² μ)/(s² + σ_y²), variance s² σ_y²/(s² + σ_y²).
    pub fn posterior(&self, i: usize, y: f64, sigma_y: f64) -> Moments {
        let (s2, v) = (self.std[i] * self.std[i], sigma_y * sigma_y);
        Moments {
            mean: (s2 * y + v * self.mean[i]) / (s2 + v),
            var: s2 * v / (s2 + v),
        }
    }
}

impl Denoiser for DiagonalGaussian {
    fn denoise(
        &mut self,
        x: &[f32],
        _batch: usize,
        step: &PlanStep,
        out: &mut [f32],
    ) -> Result<(), Error> {
        if x.len() != out.len() || !x.len().is_multiple_of(self.len()) {
            return Err(Error::Shape("diagonal oracle: buffer is not whole chains"));
        }
        let n = self.len();
        for (j, (o, &v)) in out.iter_mut().zip(x).enumerate() {
            *o = self.denoised(j % n, v as f64, step.sigma_net) as f32;
        }
        Ok(())
    }
}

/// A diagonal observation of one coordinate for the exact chain law: y_i = x_i + e with
/// mask m_i ∈ {0, 1} (inpainting, A = diag(m), Aᵀ(y − A x) = m (y − x)).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation {
    /// m_i: 1 observed, 0 missing.
    pub mask: f64,
    /// y_i (ignored where m_i = 0).
    pub y: f64,
    /// σ_y > 0.
    pub sigma_y: f64,
}

/// The exact law of x_K for one coordinate with prior N(μ, s²) and, optionally, a diagonal
/// observation, under ANY plan (schedule, step rule, temperature, noise-free last step, init).
///
/// With D(x, σ_net) = μ + ρ (x − μ), ρ = s²/(s² + σ_net²), the template (eq. 11/24)
///   x_{k+1} = x_k + (γ/σ²)(D − x_k) + (γ/σ_y²) m (y − x_k) + sqrt(2 γ T) n_k
/// is affine in x_k plus independent Gaussian noise:
///   x_{k+1} = a_k x_k + b_k + c_k n_k,
///   a_k = 1 − (γ/σ²)(1 − ρ) − (γ/σ_y²) m,   b_k = (γ/σ²)(1 − ρ) μ + (γ/σ_y²) m y,
///   c_k = sqrt(2 γ T),
/// so from x₀ ~ N(0, s₀²): mean' = a·mean + b, var' = a²·var + c². All in f64 from the
/// plan's own (σ_k, σ_net, γ_k, T_k).
pub fn chain_law(
    plan: &impl StepPlan,
    prior: Moments,
    observation: Option<Observation>,
) -> Result<Moments, Error> {
    let s0 = plan.init_std()?;
    let mut law = Moments {
        mean: 0.0,
        var: s0 * s0,
    };
    for k in 0..plan.len() {
        let step = plan.step(k)?;
        let observation = observation.map(|o| Observation {
            sigma_y: plan.likelihood_sigma_y(&step, o.sigma_y),
            ..o
        });
        law = chain_step(&step, prior, observation, law);
    }
    Ok(law)
}

/// One step of [`chain_law`]: the law of x_{k+1} from the law of x_k.
pub fn chain_step(
    step: &PlanStep,
    prior: Moments,
    observation: Option<Observation>,
    law: Moments,
) -> Moments {
    let drift = step.gamma / (step.sigma * step.sigma);
    let shrink = 1.0 - prior.var / (prior.var + step.sigma_net * step.sigma_net);
    let (lik, pull) = match observation {
        Some(o) => {
            let w = step.gamma / (o.sigma_y * o.sigma_y) * o.mask;
            (w, w * o.y)
        }
        None => (0.0, 0.0),
    };
    let a = 1.0 - drift * shrink - lik;
    let b = drift * shrink * prior.mean + pull;
    let c2 = 2.0 * step.gamma * step.temperature;
    Moments {
        mean: a * law.mean + b,
        var: a * a * law.var + c2,
    }
}

/// Per-coordinate sample moments of `x` (chains of `n` coordinates, back to back): the mean
/// and the unbiased variance, accumulated in f64 (two passes).
pub fn column_moments(x: &[f32], n: usize) -> Vec<Moments> {
    let chains = x.len() / n;
    let mut mean = vec![0.0f64; n];
    for chain in x.chunks_exact(n) {
        for (m, &v) in mean.iter_mut().zip(chain) {
            *m += v as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= chains as f64);
    let mut var = vec![0.0f64; n];
    for chain in x.chunks_exact(n) {
        for ((s, &v), &m) in var.iter_mut().zip(chain).zip(&mean) {
            *s += (v as f64 - m) * (v as f64 - m);
        }
    }
    mean.into_iter()
        .zip(var)
        .map(|(mean, s)| Moments {
            mean,
            var: s / (chains - 1) as f64,
        })
        .collect()
}

/// z-scores of a sample's moments (from `count` independent draws) against an exact Gaussian
/// law: (mean − μ)/sqrt(v/n) and (var − v)/(v sqrt(2/(n − 1))), the large-sample standard
/// errors of the sample mean and of the unbiased sample variance of a Gaussian.
pub fn z_scores(sample: Moments, exact: Moments, count: usize) -> (f64, f64) {
    let n = count as f64;
    let se_mean = (exact.var / n).sqrt();
    let se_var = exact.var * (2.0 / (n - 1.0)).sqrt();
    (
        (sample.mean - exact.mean) / se_mean,
        (sample.var - exact.var) / se_var,
    )
}

/// Summary of many z-scores: the largest |z| and the mean of z² (≈ 1 when every sample
/// follows its law).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ZSummary {
    /// max |z|.
    pub max_abs: f64,
    /// mean of z².
    pub mean_sq: f64,
    /// Number of z-scores.
    pub count: usize,
}

impl ZSummary {
    /// Summarises `z`.
    pub fn of(z: &[f64]) -> Self {
        ZSummary {
            max_abs: z.iter().fold(0.0f64, |m, v| m.max(v.abs())),
            mean_sq: z.iter().map(|v| v * v).sum::<f64>() / z.len() as f64,
            count: z.len(),
        }
    }

    /// Passes when max |z| ≤ max(4, [`bonferroni_z`]`(count, 1e-3)`) (each test at 4 standard
    /// errors, the family at 0.1%) and mean z² ≤ 1 + 5 sqrt(2/count) (a χ² test on the sum,
    /// which catches a small bias shared by all coordinates that no single z would show).
    pub fn assert_pass(&self, what: &str) {
        let limit = bonferroni_z(self.count, 1e-3).max(4.0);
        assert!(
            self.max_abs <= limit,
            "{what}: max |z| = {:.3} > {limit:.3} ({self:?})",
            self.max_abs
        );
        let chi = 1.0 + 5.0 * (2.0 / self.count as f64).sqrt();
        assert!(
            self.mean_sq <= chi,
            "{what}: mean z^2 = {:.3} > {chi:.3} ({self:?})",
            self.mean_sq
        );
    }
}

/// The two-sided Bonferroni threshold: the z with `tests`·P(|N(0,1)| > z) = `alpha`
/// (bisection on erfc).
pub fn bonferroni_z(tests: usize, alpha: f64) -> f64 {
    let p = alpha / tests as f64;
    let (mut lo, mut hi) = (0.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if libm::erfc(mid / std::f64::consts::SQRT_2) > p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Compares per-coordinate sample moments of `x` (chains of `exact.len()` coordinates) with
/// the exact laws; returns the summary of all 2n z-scores (means and variances).
pub fn compare_with_laws(x: &[f32], exact: &[Moments]) -> ZSummary {
    let n = exact.len();
    let chains = x.len() / n;
    let z: Vec<f64> = column_moments(x, n)
        .into_iter()
        .zip(exact)
        .flat_map(|(s, &e)| {
            let (zm, zv) = z_scores(s, e, chains);
            [zm, zv]
        })
        .collect();
    ZSummary::of(&z)
}

/// FNV-1a (64-bit) over the little-endian bytes of the f32 bit patterns of `x`: a hash of the
/// exact output bits.
pub fn fnv1a_f32(x: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in x {
        for b in v.to_bits().to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The exact MMSE denoiser of an isotropic Gaussian mixture Σ_j w_j N(m_j, v_j I) in
/// dimension d:
///   D(x, σ) = Σ_j r_j(x) [m_j + v_j/(v_j + σ²)(x − m_j)],
/// with responsibilities r_j ∝ w_j N(x; m_j, (v_j + σ²) I) (the law of X + σ N). Evaluated
/// at `step.sigma_net` in f64, responsibilities through log-sum-exp.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianMixture {
    /// Dimension d of one chain.
    pub dim: usize,
    /// w_j (sum 1).
    pub weights: Vec<f64>,
    /// m_j, d values per component, back to back.
    pub means: Vec<f64>,
    /// v_j > 0 (isotropic variance of component j).
    pub vars: Vec<f64>,
}

impl GaussianMixture {
    /// The most components [`GaussianMixture::denoised`] handles (stack buffer, no allocation
    /// in the sampling loop).
    pub const MAX_COMPONENTS: usize = 8;

    /// Number of components.
    pub fn components(&self) -> usize {
        self.weights.len()
    }

    /// m_j.
    pub fn mean(&self, j: usize) -> &[f64] {
        &self.means[j * self.dim..(j + 1) * self.dim]
    }

    /// r_j(x) for the law of X + σ N, written to `r` (one per component).
    pub fn responsibilities(&self, x: &[f64], sigma: f64, r: &mut [f64]) {
        let d = self.dim as f64;
        for (j, rj) in r.iter_mut().enumerate() {
            let var = self.vars[j] + sigma * sigma;
            let dist2: f64 = x
                .iter()
                .zip(self.mean(j))
                .map(|(a, m)| (a - m) * (a - m))
                .sum();
            *rj = self.weights[j].ln() - 0.5 * d * var.ln() - 0.5 * dist2 / var;
        }
        let top = r.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
        let total: f64 = r.iter().map(|v| (v - top).exp()).sum();
        r.iter_mut().for_each(|v| *v = (*v - top).exp() / total);
    }

    /// D(x, σ) for one chain x (length d), written to `out`. At most
    /// [`GaussianMixture::MAX_COMPONENTS`] components.
    pub fn denoised(&self, x: &[f64], sigma: f64, out: &mut [f64]) {
        let mut buf = [0.0; Self::MAX_COMPONENTS];
        let r = &mut buf[..self.components()];
        self.responsibilities(x, sigma, r);
        out.iter_mut().for_each(|o| *o = 0.0);
        for (j, &rj) in r.iter().enumerate() {
            let shrink = self.vars[j] / (self.vars[j] + sigma * sigma);
            for ((o, &xi), &m) in out.iter_mut().zip(x).zip(self.mean(j)) {
                *o += rj * (m + shrink * (xi - m));
            }
        }
    }
}

impl Denoiser for GaussianMixture {
    fn denoise(
        &mut self,
        x: &[f32],
        _batch: usize,
        step: &PlanStep,
        out: &mut [f32],
    ) -> Result<(), Error> {
        if x.len() != out.len() || !x.len().is_multiple_of(self.dim) {
            return Err(Error::Shape("mixture oracle: buffer is not whole chains"));
        }
        let mut xc = vec![0.0f64; self.dim];
        let mut dc = vec![0.0f64; self.dim];
        for (xs, os) in x.chunks_exact(self.dim).zip(out.chunks_exact_mut(self.dim)) {
            xc.iter_mut().zip(xs).for_each(|(a, &b)| *a = b as f64);
            self.denoised(&xc, step.sigma_net, &mut dc);
            os.iter_mut().zip(&dc).for_each(|(o, &v)| *o = v as f32);
        }
        Ok(())
    }
}

/// An estimate with its standard error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// The estimate.
    pub value: f64,
    /// Its (large-sample) standard error.
    pub se: f64,
}

impl Estimate {
    /// (value − truth)/se.
    pub fn z(&self, truth: f64) -> f64 {
        (self.value - truth) / self.se
    }
}

/// Per-component weight, mean and variance of 1-D samples, estimated with the mixture's own
/// responsibilities r_j(x) = P(component j | x) at noise level σ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ComponentFit {
    /// ŵ_j = mean of r_j(x).
    pub weight: Estimate,
    /// m̂_j = Σ r_j x / Σ r_j.
    pub mean: Estimate,
    /// v̂_j = Σ r_j (x − m_j)² / Σ r_j (about the TRUE mean m_j).
    pub var: Estimate,
}

impl GaussianMixture {
    /// Fits every component of a 1-D mixture to `x` (one coordinate per chain).
    ///
    /// For samples of X_σ (this mixture smoothed by σ) the identities E[r_j] = w_j,
    /// E[r_j X] = w_j m_j and E[r_j (X − m_j)²] = w_j (v_j + σ²) hold exactly, however much
    /// the components overlap, so these estimators are consistent; standard errors by the
    /// delta method on the per-sample terms.
    pub fn fit_1d(&self, x: &[f32], sigma: f64) -> Vec<ComponentFit> {
        assert_eq!(self.dim, 1, "fit_1d needs a 1-D mixture");
        let n = x.len() as f64;
        let mut r = vec![0.0; self.components()];
        let rows: Vec<Vec<f64>> = x
            .iter()
            .map(|&v| {
                self.responsibilities(&[v as f64], sigma, &mut r);
                r.clone()
            })
            .collect();
        (0..self.components())
            .map(|j| {
                let m_true = self.means[j];
                let mean_of = |f: &dyn Fn(f64, f64) -> f64| -> f64 {
                    rows.iter()
                        .zip(x)
                        .map(|(r, &v)| f(r[j], v as f64))
                        .sum::<f64>()
                        / n
                };
                let sd_of = |f: &dyn Fn(f64, f64) -> f64| -> f64 {
                    let m = mean_of(f);
                    let ss: f64 = rows
                        .iter()
                        .zip(x)
                        .map(|(r, &v)| (f(r[j], v as f64) - m).powi(2))
                        .sum();
                    (ss / (n - 1.0)).sqrt()
                };
                let w = mean_of(&|r, _| r);
                let m = mean_of(&|r, v| r * v) / w;
                let var = mean_of(&|r, v| r * (v - m_true).powi(2)) / w;
                ComponentFit {
                    weight: Estimate {
                        value: w,
                        se: sd_of(&|r, _| r) / n.sqrt(),
                    },
                    mean: Estimate {
                        value: m,
                        se: sd_of(&|r, v| r * (v - m)) / (w * n.sqrt()),
                    },
                    var: Estimate {
                        value: var,
                        se: sd_of(&|r, v| r * ((v - m_true).powi(2) - var)) / (w * n.sqrt()),
                    },
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bonferroni_threshold_is_the_normal_tail() {
        // P(|Z| > 1.959964) = 0.05, P(|Z| > 3.890592) = 1e-4.
        assert!((bonferroni_z(1, 0.05) - 1.959964).abs() < 1e-5);
        assert!((bonferroni_z(100, 0.01) - 3.890592).abs() < 1e-5);
    }

    #[test]
    fn mixture_with_one_component_is_the_gaussian_oracle() {
        let g = GaussianMixture {
            dim: 2,
            weights: vec![1.0],
            means: vec![0.3, -0.2],
            vars: vec![0.49],
        };
        let d = DiagonalGaussian {
            mean: vec![0.3, -0.2],
            std: vec![0.7, 0.7],
        };
        let mut out = [0.0; 2];
        g.denoised(&[1.5, 2.0], 0.8, &mut out);
        assert!((out[0] - d.denoised(0, 1.5, 0.8)).abs() < 1e-15);
        assert!((out[1] - d.denoised(1, 2.0, 0.8)).abs() < 1e-15);
    }

    #[test]
    fn mixture_denoiser_is_tweedie_of_the_smoothed_density() {
        // D(x, σ) = x + σ² ∇ log p_σ(x), checked by central differences in 1-D.
        let g = GaussianMixture {
            dim: 1,
            weights: vec![0.3, 0.7],
            means: vec![-1.5, 2.0],
            vars: vec![0.2, 0.5],
        };
        let log_p = |x: f64, s: f64| -> f64 {
            (0..2)
                .map(|j| {
                    let v = g.vars[j] + s * s;
                    g.weights[j] * (-(x - g.means[j]).powi(2) / (2.0 * v)).exp()
                        / (2.0 * std::f64::consts::PI * v).sqrt()
                })
                .sum::<f64>()
                .ln()
        };
        for (x, s) in [(0.1, 0.5), (-2.0, 1.0), (3.0, 0.1), (0.7, 4.0)] {
            let h = 1e-5;
            let score = (log_p(x + h, s) - log_p(x - h, s)) / (2.0 * h);
            let mut out = [0.0];
            g.denoised(&[x], s, &mut out);
            assert!((out[0] - (x + s * s * score)).abs() < 1e-6, "x {x} s {s}");
        }
    }

    #[test]
    fn chain_step_of_a_pure_langevin_level_has_the_ula_fixed_point() {
        // Constant σ, γ, T: the fixed point of var' = a² var + 2γT is 2γT/(1 − a²) with
        // a = 1 − γ/(s² + σ²); for small γ → T (s² + σ²) (spec §8.5).
        let step = PlanStep {
            k: 0,
            sigma: 0.5,
            sigma_net: 0.5,
            t: f64::NAN,
            gamma: 1e-4,
            temperature: 0.7,
        };
        let prior = Moments {
            mean: 0.2,
            var: 0.81,
        };
        let mut law = Moments {
            mean: 0.0,
            var: 1.0,
        };
        for _ in 0..2_000_000 {
            law = chain_step(&step, prior, None, law);
        }
        assert!((law.mean - 0.2).abs() < 1e-12);
        assert!((law.var / (0.7 * (0.81 + 0.25)) - 1.0).abs() < 1e-4);
    }
}
