//! The classic samplers as instances of the sampling template (spec §8, Table 1 of the paper).
//!
//! Each one is a [`StepPlan`]: it yields (σ_k, γ_k, T_k) and the law of x₀, and the template
//! loop of [`crate::sampler`] runs it. The tests run each original algorithm in its own
//! coordinates beside the template, with the same noise draws, and find the same iterates.
//!
//! - [`Ddpm`]: Ho et al. Alg. 2 with σ'² = β or β̃ (§8.2); score_sde's VP-SDE ancestral
//!   predictor is [`Ddpm::vp_sde_ancestral`] (DDPM with σ'² = β). The template state is
//!   u_k = x_{T−k}/sqrt(ᾱ_{T−k}) (VE coordinates).
//! - [`Ncsn`]: Song & Ermon's annealed Langevin dynamics, Alg. 1 (§8.3), with α_i = ε σ_i²/σ_L²
//!   and σ_L the SMALLEST level (spec §16.1; Table 1 prints σ_max).
//! - [`VeReverseDiffusion`]: score_sde's reverse-diffusion predictor for the VE SDE (§8.4),
//!   with `noise_removal`; [`pc_sample`] adds the Langevin corrector (snr rule) before each
//!   predictor step, as score_sde's PC sampler does.

use crate::error::check_positive;
use crate::plan::{PlanStep, StepPlan};
use crate::sampler::{update_chains, Chains, Observer, UpdateCoefficients};
use crate::schedule::Schedule;
use crate::{noise, vp, Denoiser, Error};

/// A finite sequence of noise levels, largest first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Levels<'a> {
    /// The caller's table (largest first).
    Table(&'a [f64]),
    /// `count` levels of a schedule: σ_i = schedule.sigma(i, count).
    Schedule {
        /// The schedule.
        schedule: Schedule,
        /// Number of levels.
        count: usize,
    },
}

impl Levels<'_> {
    /// Number of levels.
    pub fn len(&self) -> usize {
        match *self {
            Levels::Table(t) => t.len(),
            Levels::Schedule { count, .. } => count,
        }
    }

    /// True when there are no levels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Level i (0 = largest), checked finite and > 0.
    pub fn sigma(&self, i: usize) -> Result<f64, Error> {
        let steps = self.len();
        if i >= steps {
            return Err(Error::StepOutOfRange { k: i, steps });
        }
        let s = match *self {
            Levels::Table(t) => t[i],
            Levels::Schedule { schedule, count } => schedule.sigma(i, count)?,
        };
        check_positive(s, "noise level")
    }
}

fn out_of_range(k: usize, steps: usize) -> Error {
    Error::StepOutOfRange { k, steps }
}

/// The reverse-process variance σ'²_t of DDPM (Ho et al. §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DdpmVariance {
    /// σ'²_t = β_t.
    Beta,
    /// σ'²_t = β̃_t = β_t (1 − ᾱ_{t−1})/(1 − ᾱ_t).
    BetaTilde,
}

/// DDPM ancestral sampling (Ho et al. Alg. 2) on the linear-β table, T = 1000 steps.
///
/// Step k is DDPM's t = T − k (1-based; table index t − 1): σ_k = σ_t, γ_k = β_t/ᾱ_t,
/// T_k = σ'²_t α_t/(2 β_t), and T_{K−1} = 0 (z = 0 at t = 1). x₀ = u₀ ~ N(0, (1 + σ_T²) I).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ddpm {
    /// σ'²_t.
    pub variance: DdpmVariance,
}

impl Ddpm {
    /// score_sde's VP-SDE ancestral predictor (discrete β = linspace(1e-4, 0.02, 1000)):
    /// identical to DDPM with σ'² = β (spec §8.2).
    pub const fn vp_sde_ancestral() -> Self {
        Ddpm {
            variance: DdpmVariance::Beta,
        }
    }

    /// ᾱ at 1-based DDPM time t, with ᾱ_0 := 1.
    fn alpha_bar(t: usize) -> f64 {
        if t == 0 {
            1.0
        } else {
            vp::ALPHA_BAR[t - 1]
        }
    }

    /// (σ_t, τ_t, calT_t) of Table 1 at 1-based DDPM time t ∈ 1..=1000, before the
    /// z = 0 rule of the last step.
    pub fn row(&self, t: usize) -> Result<(f64, f64, f64), Error> {
        if t == 0 || t > vp::STEPS {
            return Err(Error::OutOfRange("DDPM time t (1..=1000)"));
        }
        let beta = vp::BETA[t - 1];
        let abar = Self::alpha_bar(t);
        let variance = match self.variance {
            DdpmVariance::Beta => beta,
            DdpmVariance::BetaTilde => beta * (1.0 - Self::alpha_bar(t - 1)) / (1.0 - abar),
        };
        let tau = beta / abar;
        let temperature = variance * (1.0 - beta) / (2.0 * beta);
        Ok((vp::SIGMA[t - 1], tau, temperature))
    }
}

impl StepPlan for Ddpm {
    /// Unconditional only (its γ_k are fixed by the algorithm): σ_y as it is.
    fn likelihood_sigma_y(&self, _step: &PlanStep, sigma_y: f64) -> f64 {
        sigma_y
    }

    fn len(&self) -> usize {
        vp::STEPS
    }

    fn step(&self, k: usize) -> Result<PlanStep, Error> {
        if k >= vp::STEPS {
            return Err(out_of_range(k, vp::STEPS));
        }
        let t = vp::STEPS - k;
        let (sigma, gamma, temperature) = self.row(t)?;
        Ok(PlanStep {
            k,
            sigma,
            sigma_net: sigma,
            t: (t - 1) as f64,
            gamma,
            temperature: if t == 1 { 0.0 } else { temperature },
        })
    }

    fn init_std(&self) -> Result<f64, Error> {
        Ok(1.0 / libm::sqrt(Self::alpha_bar(vp::STEPS)))
    }
}

/// NCSN annealed Langevin dynamics (Song & Ermon 2019, Alg. 1).
///
/// K = L·T_inner; step k uses level i = ⌊k/T_inner⌋ with γ_k = ε σ_i²/(2 σ_L²), σ_L the
/// smallest level, and T_k = 1 (no noise-free last step). Alg. 1 starts from uniform noise;
/// [`StepPlan::init_std`] gives 1 (x₀ ~ N(0, I)): fill x yourself and call
/// [`crate::sampler::run`] for the original init.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ncsn<'a> {
    /// σ_1 > … > σ_L (NCSN: 10 geometric levels 1 → 0.01).
    pub levels: Levels<'a>,
    /// T_inner, Langevin steps per level (NCSN: 100).
    pub steps_per_level: usize,
    /// ε (NCSN: 2e-5).
    pub eps: f64,
}

impl StepPlan for Ncsn<'_> {
    /// Unconditional only (its γ_k are fixed by the algorithm): σ_y as it is.
    fn likelihood_sigma_y(&self, _step: &PlanStep, sigma_y: f64) -> f64 {
        sigma_y
    }

    fn len(&self) -> usize {
        self.levels.len() * self.steps_per_level
    }

    fn step(&self, k: usize) -> Result<PlanStep, Error> {
        let steps = self.len();
        if k >= steps {
            return Err(out_of_range(k, steps));
        }
        let eps = check_positive(self.eps, "NCSN eps")?;
        let sigma = self.levels.sigma(k / self.steps_per_level)?;
        let sigma_l = self.levels.sigma(self.levels.len() - 1)?;
        Ok(PlanStep {
            k,
            sigma,
            sigma_net: sigma,
            t: f64::NAN,
            gamma: eps * sigma * sigma / (2.0 * sigma_l * sigma_l),
            temperature: 1.0,
        })
    }

    fn init_std(&self) -> Result<f64, Error> {
        Ok(1.0)
    }
}

/// score_sde's reverse-diffusion predictor for the VE SDE (§8.4).
///
/// K = N levels; step k: σ_k = level k, γ_k = σ_k² − σ_{k+1}² (σ_N := 0), T_k = 1/2, and
/// T_{K−1} = 0 with `noise_removal` (score_sde's default). x₀ ~ N(0, σ_max² I) (the prior).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VeReverseDiffusion<'a> {
    /// σ_max = level 0 > … > level N−1 = σ_min (score_sde: geometric, N = 2000 for FFHQ).
    pub levels: Levels<'a>,
    /// Drop the noise of the last step (output x_mean).
    pub noise_removal: bool,
}

impl StepPlan for VeReverseDiffusion<'_> {
    /// Unconditional only (its γ_k are fixed by the algorithm): σ_y as it is.
    fn likelihood_sigma_y(&self, _step: &PlanStep, sigma_y: f64) -> f64 {
        sigma_y
    }

    fn len(&self) -> usize {
        self.levels.len()
    }

    fn step(&self, k: usize) -> Result<PlanStep, Error> {
        let steps = self.len();
        if k >= steps {
            return Err(out_of_range(k, steps));
        }
        let sigma = self.levels.sigma(k)?;
        let next = if k + 1 < steps {
            self.levels.sigma(k + 1)?
        } else {
            0.0
        };
        if next >= sigma {
            return Err(Error::OutOfRange("VE levels (must strictly decrease)"));
        }
        let last = k + 1 == steps;
        Ok(PlanStep {
            k,
            sigma,
            sigma_net: sigma,
            t: f64::NAN,
            gamma: sigma * sigma - next * next,
            temperature: if last && self.noise_removal { 0.0 } else { 0.5 },
        })
    }

    fn init_std(&self) -> Result<f64, Error> {
        self.levels.sigma(0)
    }
}

/// The Langevin corrector's step size: γ = 2 (r ‖z‖/‖s‖)², with r the signal-to-noise ratio,
/// z the step's noise and s the score (score_sde `LangevinCorrector`, α = 1 for VE).
pub fn corrector_step_size(snr: f64, noise_norm: f64, score_norm: f64) -> f64 {
    let ratio = snr * noise_norm / score_norm;
    2.0 * ratio * ratio
}

/// score_sde's PC sampler for the VE SDE: at every level one Langevin corrector step, then the
/// reverse-diffusion predictor step (this order: score_sde issue #50), from the given x.
///
/// Template view: 2N steps. Level k's corrector is template step 2k (noise counter 2k, γ from
/// [`corrector_step_size`], T = 1), its predictor step 2k + 1 (counter 2k + 1). The denoiser
/// is called with the predictor's [`PlanStep`] of level k in both cases.
///
/// Unlike score_sde, which AVERAGES ‖z‖ and ‖s‖ over the batch (so each chain's step size
/// depends on the other chains), the norms here are PER CHAIN: chains are independent and
/// batch-invariant. For batch 1 the two agree. Scratch: `x.len()` (the denoised batch).
/// The observer sees the state after each predictor step.
pub fn pc_sample(
    denoiser: &mut impl Denoiser,
    predictor: &VeReverseDiffusion<'_>,
    snr: f64,
    x: &mut [f32],
    chains: Chains,
    scratch: &mut [f32],
    observer: &mut impl Observer,
) -> Result<(), Error> {
    let snr = check_positive(snr, "corrector snr")?;
    if predictor.is_empty() {
        return Err(Error::ZeroSteps);
    }
    let n = chains.chain_len(x.len())?;
    if scratch.len() < x.len() {
        return Err(Error::LengthMismatch {
            what: "PC sampler scratch",
            expected: x.len(),
            got: scratch.len(),
        });
    }
    let denoised = &mut scratch[..x.len()];
    for k in 0..predictor.len() {
        let step = predictor.step(k)?;
        let counter = 2 * k as u64;
        denoiser.denoise(x, chains.batch, &step, denoised)?;
        for (i, (xc, dc)) in x
            .chunks_exact_mut(n)
            .zip(denoised.chunks_exact(n))
            .enumerate()
        {
            let coef = corrector_coefficients(&step, snr, xc, dc, chains, i, counter)?;
            let one = Chains {
                batch: 1,
                first_chain: chains.first_chain + i as u64,
                seed: chains.seed,
            };
            if !update_chains(xc, dc, &coef, one, counter)? {
                return Err(Error::NonFiniteState { step: 2 * k });
            }
        }
        denoiser.denoise(x, chains.batch, &step, denoised)?;
        let coef = UpdateCoefficients::new(&step)?;
        if !update_chains(x, denoised, &coef, chains, counter + 1)? {
            return Err(Error::NonFiniteState { step: 2 * k + 1 });
        }
        observer.observe(&step, x)?;
    }
    Ok(())
}

/// The corrector's coefficients for buffer chain i: ‖z‖ from the step's own draws,
/// ‖s‖ = ‖D − x‖/σ² (Tweedie), γ = [`corrector_step_size`], T = 1.
fn corrector_coefficients(
    step: &PlanStep,
    snr: f64,
    x: &[f32],
    denoised: &[f32],
    chains: Chains,
    i: usize,
    counter: u64,
) -> Result<UpdateCoefficients, Error> {
    let key = chains.noise(i, counter);
    let mut z2 = 0.0f64;
    let mut d2 = 0.0f64;
    for (e, (&v, &d)) in x.iter().zip(denoised).enumerate() {
        let z = noise::gaussian(key.seed, key.chain, key.counter, e as u64) as f64;
        z2 += z * z;
        d2 += (d as f64 - v as f64) * (d as f64 - v as f64);
    }
    let score_norm = libm::sqrt(d2) / (step.sigma * step.sigma);
    let gamma = corrector_step_size(snr, libm::sqrt(z2), score_norm);
    if !gamma.is_finite() {
        return Err(Error::NonFiniteState { step: step.k * 2 });
    }
    UpdateCoefficients::new(&PlanStep {
        gamma,
        temperature: 1.0,
        ..*step
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::denoiser::GaussianOracle;
    use crate::sampler::{init_state, run};

    const ORACLE: GaussianOracle = GaussianOracle {
        mean: 0.25,
        std: 0.5,
    };

    /// formats §7: max |a − b| ≤ tol · max(1, max |b|).
    fn assert_close(a: &[f64], b: &[f64], tol: f64) {
        let scale = b.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let err = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(err <= tol * scale, "max error {err} > {tol} * {scale}");
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(1e-300)
    }

    fn z(seed: u64, chain: usize, counter: u64, e: usize) -> f64 {
        noise::gaussian(seed, chain as u64, counter, e as u64) as f64
    }

    fn geometric(max: f64, min: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| max * libm::pow(min / max, i as f64 / (n - 1) as f64))
            .collect()
    }

    #[test]
    fn ddpm_rows_match_the_spec_8_2_table() {
        // (1-based t, σ_t, τ, calT(β), calT(β̃), τ/σ²) from spec §8.2.
        let table = [
            (
                1000,
                157.4072808,
                495.561041,
                0.49,
                0.4899995964,
                0.0200008072,
            ),
            (
                999,
                155.8251938,
                485.1661149,
                0.49000996,
                0.4900095485,
                0.0199809029,
            ),
            (
                500,
                3.424136619,
                0.1277566138,
                0.49497998,
                0.4945518228,
                0.0108963545,
            ),
            (
                2,
                0.01483092371,
                1.199462971e-4,
                0.49994004,
                0.2273406169,
                0.5453187661,
            ),
            (1, 0.01000050004, 1.00010001e-4, 0.49995, 0.0, 1.0),
        ];
        let beta = Ddpm {
            variance: DdpmVariance::Beta,
        };
        let tilde = Ddpm {
            variance: DdpmVariance::BetaTilde,
        };
        for (t, sigma, tau, tb, tt, ratio) in table {
            let (s, g, temp) = beta.row(t).unwrap();
            assert!(rel(s, sigma) < 1e-9, "sigma at t = {t}");
            assert!(rel(g, tau) < 1e-8, "tau at t = {t}: {g}");
            assert!(rel(temp, tb) < 1e-8, "calT(beta) at t = {t}: {temp}");
            assert!(rel(g / (s * s), ratio) < 1e-8, "tau/sigma^2 at t = {t}");
            let (_, _, temp) = tilde.row(t).unwrap();
            assert!(
                (temp - tt).abs() < 1e-9,
                "calT(beta tilde) at t = {t}: {temp}"
            );
            // Our step k = T − t sees table index t − 1 (0-based time, formats §1).
            let step = beta.step(1000 - t).unwrap();
            assert_eq!(step.t, (t - 1) as f64);
            assert_eq!(step.sigma, s);
        }
        assert_eq!(beta.step(999).unwrap().temperature, 0.0);
        assert!(beta.row(0).is_err() && beta.row(1001).is_err());
        assert!(beta.step(1000).is_err());
    }

    /// Ho et al. Alg. 2 on x_t with the ε-oracle, beside the template on u = x/sqrt(ᾱ), with the
    /// same draws (z of DDPM time t is the template's step k = T − t).
    fn ddpm_matches_alg_2(variance: DdpmVariance) {
        let plan = Ddpm { variance };
        let (batch, n, seed) = (2usize, 12usize, 21u64);
        let chains = Chains {
            batch,
            first_chain: 0,
            seed,
        };
        let mut u = vec![0.0f32; batch * n];
        init_state(&mut u, chains, plan.init_std().unwrap()).unwrap();
        let mut template: Vec<Vec<f64>> = Vec::new();
        let mut scratch = vec![0.0f32; u.len()];
        run(
            &mut { ORACLE },
            &plan,
            &mut u,
            chains,
            &mut scratch,
            &mut |s: &PlanStep, x: &[f32]| {
                // After step k the state is u_{k+1} ↔ x_{t−1}, t = T − k; scale by sqrt(ᾱ_{t−1}).
                let scale = libm::sqrt(Ddpm::alpha_bar(vp::STEPS - s.k - 1));
                template.push(x.iter().map(|&v| v as f64 * scale).collect());
            },
        )
        .unwrap();

        let mut x: Vec<f64> = (0..batch * n)
            .map(|i| z(seed, i / n, noise::COUNTER_INIT, i % n))
            .collect();
        for t in (1..=vp::STEPS).rev() {
            let (beta, abar) = (vp::BETA[t - 1], vp::ALPHA_BAR[t - 1]);
            let var = match variance {
                DdpmVariance::Beta => beta,
                DdpmVariance::BetaTilde => beta * (1.0 - Ddpm::alpha_bar(t - 1)) / (1.0 - abar),
            };
            let k = (vp::STEPS - t) as u64;
            for (i, v) in x.iter_mut().enumerate() {
                let zz = if t > 1 { z(seed, i / n, k, i % n) } else { 0.0 };
                let eps = ORACLE.eps(*v, abar);
                *v = (*v - beta / libm::sqrt(1.0 - abar) * eps) / libm::sqrt(1.0 - beta)
                    + libm::sqrt(var) * zz;
            }
            assert_close(&template[k as usize], &x, 1e-5);
        }
    }

    #[test]
    fn ddpm_beta_is_ho_alg_2() {
        ddpm_matches_alg_2(DdpmVariance::Beta);
    }

    #[test]
    fn ddpm_beta_tilde_is_ho_alg_2() {
        ddpm_matches_alg_2(DdpmVariance::BetaTilde);
    }

    #[test]
    fn vp_sde_ancestral_predictor_is_ddpm_with_beta() {
        // score_sde: x_{i−1} = (x_i + β_i s_VP(x_i))/sqrt(1 − β_i) + sqrt(β_i) z, with
        // s_VP = −ε/sqrt(1 − ᾱ). Same draws as the template; compare the final state.
        let plan = Ddpm::vp_sde_ancestral();
        let (n, seed) = (16usize, 4u64);
        let chains = Chains {
            batch: 1,
            first_chain: 0,
            seed,
        };
        let mut u = vec![0.0f32; n];
        init_state(&mut u, chains, plan.init_std().unwrap()).unwrap();
        let mut scratch = vec![0.0f32; n];
        run(
            &mut { ORACLE },
            &plan,
            &mut u,
            chains,
            &mut scratch,
            &mut (),
        )
        .unwrap();
        let mut x: Vec<f64> = (0..n).map(|e| z(seed, 0, noise::COUNTER_INIT, e)).collect();
        for t in (1..=vp::STEPS).rev() {
            let (beta, abar) = (vp::BETA[t - 1], vp::ALPHA_BAR[t - 1]);
            for (e, v) in x.iter_mut().enumerate() {
                let score = -ORACLE.eps(*v, abar) / libm::sqrt(1.0 - abar);
                let zz = if t > 1 {
                    z(seed, 0, (vp::STEPS - t) as u64, e)
                } else {
                    0.0
                };
                *v = (*v + beta * score) / libm::sqrt(1.0 - beta) + libm::sqrt(beta) * zz;
            }
        }
        let u: Vec<f64> = u.iter().map(|&v| v as f64).collect();
        assert_close(&u, &x, 1e-5);
    }

    #[test]
    fn ncsn_is_annealed_langevin_alg_1() {
        let levels = geometric(1.0, 0.01, 10);
        let plan = Ncsn {
            levels: Levels::Table(&levels),
            steps_per_level: 7,
            eps: 2e-5,
        };
        assert_eq!(plan.len(), 70);
        // γ = 0.1 σ² for the NCSN defaults (spec §8.3).
        assert!(rel(plan.step(0).unwrap().gamma, 0.1) < 1e-12);
        let (n, seed) = (9usize, 8u64);
        let x0: Vec<f64> = (0..n)
            .map(|e| noise::uniform(seed, 0, noise::COUNTER_INIT, e as u64))
            .collect();
        let mut x: Vec<f32> = x0.iter().map(|&v| v as f32).collect();
        let mut r: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let chains = Chains {
            batch: 1,
            first_chain: 0,
            seed,
        };
        let mut scratch = vec![0.0f32; n];
        run(
            &mut { ORACLE },
            &plan,
            &mut x,
            chains,
            &mut scratch,
            &mut (),
        )
        .unwrap();
        let sigma_l = levels[9];
        let mut k = 0u64;
        for &sigma in &levels {
            let alpha = 2e-5 * sigma * sigma / (sigma_l * sigma_l);
            for _ in 0..7 {
                for (e, v) in r.iter_mut().enumerate() {
                    *v += alpha / 2.0 * ORACLE.score(*v, sigma)
                        + libm::sqrt(alpha) * z(seed, 0, k, e);
                }
                k += 1;
            }
        }
        let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        assert_close(&x, &r, 1e-5);
    }

    #[test]
    fn ve_reverse_diffusion_is_the_score_sde_predictor() {
        let levels = geometric(348.0, 0.01, 200);
        for noise_removal in [true, false] {
            let plan = VeReverseDiffusion {
                levels: Levels::Table(&levels),
                noise_removal,
            };
            let (n, seed) = (10usize, 3u64);
            let chains = Chains {
                batch: 1,
                first_chain: 0,
                seed,
            };
            let mut x = vec![0.0f32; n];
            init_state(&mut x, chains, plan.init_std().unwrap()).unwrap();
            let mut r: Vec<f64> = (0..n)
                .map(|e| 348.0 * z(seed, 0, noise::COUNTER_INIT, e))
                .collect();
            let mut scratch = vec![0.0f32; n];
            run(
                &mut { ORACLE },
                &plan,
                &mut x,
                chains,
                &mut scratch,
                &mut (),
            )
            .unwrap();
            for (k, &sigma) in levels.iter().enumerate() {
                let adjacent = if k + 1 < levels.len() {
                    levels[k + 1]
                } else {
                    0.0
                };
                let g2 = sigma * sigma - adjacent * adjacent;
                let last = k + 1 == levels.len();
                for (e, v) in r.iter_mut().enumerate() {
                    let x_mean = *v + g2 * ORACLE.score(*v, sigma);
                    let zz = if last && noise_removal {
                        0.0
                    } else {
                        z(seed, 0, k as u64, e)
                    };
                    *v = x_mean + libm::sqrt(g2) * zz;
                }
            }
            let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            assert_close(&x, &r, 1e-5);
        }
        let bad = [1.0, 2.0];
        let plan = VeReverseDiffusion {
            levels: Levels::Table(&bad),
            noise_removal: true,
        };
        assert!(plan.step(0).is_err());
    }

    /// score_sde's PC loop (corrector then predictor, batch-averaged norms) in its own
    /// coordinates, for `batch` chains.
    fn score_sde_pc(levels: &[f64], snr: f64, x: &mut [f64], batch: usize, seed: u64) {
        let n = x.len() / batch;
        for (k, &sigma) in levels.iter().enumerate() {
            let c = 2 * k as u64;
            let (mut gn, mut zn) = (0.0, 0.0);
            for b in 0..batch {
                let xs = &x[b * n..(b + 1) * n];
                gn += libm::sqrt(
                    xs.iter()
                        .map(|&v| ORACLE.score(v, sigma).powi(2))
                        .sum::<f64>(),
                );
                zn += libm::sqrt((0..n).map(|e| z(seed, b, c, e).powi(2)).sum::<f64>());
            }
            let step = 2.0 * (snr * (zn / batch as f64) / (gn / batch as f64)).powi(2);
            for (i, v) in x.iter_mut().enumerate() {
                let mean = *v + step * ORACLE.score(*v, sigma);
                *v = mean + libm::sqrt(2.0 * step) * z(seed, i / n, c, i % n);
            }
            let adjacent = if k + 1 < levels.len() {
                levels[k + 1]
            } else {
                0.0
            };
            let g2 = sigma * sigma - adjacent * adjacent;
            let last = k + 1 == levels.len();
            for (i, v) in x.iter_mut().enumerate() {
                let mean = *v + g2 * ORACLE.score(*v, sigma);
                *v = mean
                    + if last {
                        0.0
                    } else {
                        libm::sqrt(g2) * z(seed, i / n, c + 1, i % n)
                    };
            }
        }
    }

    #[test]
    fn pc_sampler_is_score_sde_for_one_chain_and_batch_invariant() {
        let levels = geometric(50.0, 0.01, 100);
        let plan = VeReverseDiffusion {
            levels: Levels::Table(&levels),
            noise_removal: true,
        };
        let (n, seed, snr) = (64usize, 17u64, 0.075);
        let x0: Vec<f32> = (0..2 * n)
            .map(|i| 50.0 * z(seed, i / n, noise::COUNTER_INIT, i % n) as f32)
            .collect();
        let mut scratch = vec![0.0f32; 2 * n];

        let mut one = x0[..n].to_vec();
        let chains = Chains {
            batch: 1,
            first_chain: 0,
            seed,
        };
        pc_sample(
            &mut { ORACLE },
            &plan,
            snr,
            &mut one,
            chains,
            &mut scratch,
            &mut (),
        )
        .unwrap();
        let mut r: Vec<f64> = x0[..n].iter().map(|&v| v as f64).collect();
        score_sde_pc(&levels, snr, &mut r, 1, seed);
        let got: Vec<f64> = one.iter().map(|&v| v as f64).collect();
        assert_close(&got, &r, 1e-5);

        // Per-chain norms: chain 1 of a batch of 2 equals chain 1 run alone.
        let mut both = x0.clone();
        let chains2 = Chains {
            batch: 2,
            first_chain: 0,
            seed,
        };
        pc_sample(
            &mut { ORACLE },
            &plan,
            snr,
            &mut both,
            chains2,
            &mut scratch,
            &mut (),
        )
        .unwrap();
        let mut second = x0[n..].to_vec();
        let chain1 = Chains {
            batch: 1,
            first_chain: 1,
            seed,
        };
        pc_sample(
            &mut { ORACLE },
            &plan,
            snr,
            &mut second,
            chain1,
            &mut scratch,
            &mut (),
        )
        .unwrap();
        assert_eq!(both[n..], second[..]);
        assert_eq!(both[..n], one[..]);
        assert!(pc_sample(
            &mut { ORACLE },
            &plan,
            0.0,
            &mut one,
            chains,
            &mut scratch,
            &mut ()
        )
        .is_err());
    }
}
