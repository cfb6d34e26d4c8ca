//! A sampling plan: for every step k the noise level σ_k, the network's noise input, the step
//! size γ_k and the temperature T_k (the free choices of the sampling template, eq. 10/11).
//!
//! Plans are computed in f64 (formats §1), on the fly from a handful of parameters (no
//! buffers, so K = 150,000 costs nothing), and turned into f32 update coefficients once per
//! step by [`crate::sampler::UpdateCoefficients`].
//!
//! Anything that yields [`PlanStep`]s implements [`StepPlan`]: the paper's [`Plan`] and the
//! classic samplers of [`crate::classic`] alike, so one sampling loop runs them all.

use crate::error::{check_finite, check_positive};
use crate::schedule::{linspace_at, pretrained_time, Schedule};
use crate::timemap::TimeMap;
use crate::Error;

/// One step of a sampling plan: everything the update and the network need at step k.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanStep {
    /// The step index k (0-based).
    pub k: usize,
    /// σ_k: the noise level of the random walk at this step (VE scale).
    pub sigma: f64,
    /// The noise level given to the network. Equals `sigma` except for the official VE code's
    /// continuous label (spec §7, ≤ 0.0105% apart).
    pub sigma_net: f64,
    /// VP network time t(σ_net) ∈ [0, 999] (0-based, fractional allowed); NaN for plans not
    /// made for a VP network.
    pub t: f64,
    /// γ_k, the step size.
    pub gamma: f64,
    /// T_k, the temperature. 0 on a noise-free step (e.g. the official code's last step).
    pub temperature: f64,
}

impl PlanStep {
    /// A lone denoiser evaluation at noise level σ, outside any walk: σ_net = σ, no VP time
    /// (a VP network maps σ itself), γ = T = 0. For `host denoise`, training and tests.
    pub fn at_sigma(sigma: f64) -> PlanStep {
        PlanStep {
            k: 0,
            sigma,
            sigma_net: sigma,
            t: f64::NAN,
            gamma: 0.0,
            temperature: 0.0,
        }
    }
}

/// A source of plan steps: K and step(k) for k = 0..K−1, plus the law of x₀.
///
/// Implemented by [`Plan`] and by the classic samplers; the sampler only sees this trait.
pub trait StepPlan {
    /// K, the number of steps (= denoiser evaluations).
    fn len(&self) -> usize;
    /// Step k of K, or [`Error::StepOutOfRange`].
    fn step(&self, k: usize) -> Result<PlanStep, Error>;
    /// Standard deviation s of the initial state x₀ ~ N(0, s² I).
    fn init_std(&self) -> Result<f64, Error>;
    /// True when K = 0 (never for a validated plan).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The std in the likelihood weight γ_k/σ_y² at `step` for a measurement of noise std
    /// `sigma_y`: σ_y, except under an annealed step rule. (No default: a wrapper that did
    /// not forward it would silently drop the annealing.)
    fn likelihood_sigma_y(&self, step: &PlanStep, sigma_y: f64) -> f64;
}

/// How γ_k follows from σ_k (formats §8, `--step-rule`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepRule {
    /// γ = c σ² (spec §5.2).
    Paper {
        /// The step constant c (yaml `scaling_constant_of_step_size`).
        c: f64,
    },
    /// γ = min(c σ², σ_y²): the official code's conditional clip (spec §10.2).
    Code {
        /// The step constant c.
        c: f64,
        /// Measurement noise std σ_y.
        sigma_y: f64,
    },
    /// γ = min(c σ², σ_y²/‖A‖²): the likelihood gradient's 1/L bound (spec §10.2, §16.2).
    Lipschitz {
        /// The step constant c.
        c: f64,
        /// Measurement noise std σ_y.
        sigma_y: f64,
        /// ‖A‖₂² of the forward operator.
        norm_sq: f64,
    },
    /// Annealed σ_y (not in the paper): the likelihood of the *noisy* state, y = A x_k + e
    /// with e of variance σ_y,k² = σ_y² + ‖A‖² σ_k² (x_k carries noise σ_k), so the
    /// likelihood weight is γ/σ_y,k² and γ = min(c σ², σ_y,k²/‖A‖²), the Lipschitz bound
    /// at σ_y,k. At large σ the likelihood no longer caps γ (the code rule's γ ≤ σ_y² leaves
    /// the prior drift γ/σ² near 0 there); as σ_k → 0 it is the Lipschitz rule.
    Annealed {
        /// The step constant c.
        c: f64,
        /// Measurement noise std σ_y.
        sigma_y: f64,
        /// ‖A‖₂² of the forward operator.
        norm_sq: f64,
    },
}

/// σ_y,k of [`StepRule::Annealed`]: sqrt(σ_y² + ‖A‖² σ²), the std of y − A x_σ.
pub fn annealed_sigma_y(sigma_y: f64, norm_sq: f64, sigma: f64) -> f64 {
    libm::sqrt(sigma_y * sigma_y + norm_sq * sigma * sigma)
}

impl StepRule {
    /// Checks that every parameter is finite and > 0.
    pub fn validate(&self) -> Result<(), Error> {
        match *self {
            StepRule::Paper { c } => check_positive(c, "step constant c").map(|_| ()),
            StepRule::Code { c, sigma_y } => {
                check_positive(c, "step constant c")?;
                check_positive(sigma_y, "sigma_y").map(|_| ())
            }
            StepRule::Lipschitz {
                c,
                sigma_y,
                norm_sq,
            }
            | StepRule::Annealed {
                c,
                sigma_y,
                norm_sq,
            } => {
                check_positive(c, "step constant c")?;
                check_positive(sigma_y, "sigma_y")?;
                check_positive(norm_sq, "operator norm squared").map(|_| ())
            }
        }
    }

    /// γ for noise level σ.
    pub fn gamma(&self, sigma: f64) -> f64 {
        match *self {
            StepRule::Paper { c } => c * sigma * sigma,
            StepRule::Code { c, sigma_y } => libm::fmin(c * sigma * sigma, sigma_y * sigma_y),
            StepRule::Lipschitz {
                c,
                sigma_y,
                norm_sq,
            } => libm::fmin(c * sigma * sigma, sigma_y * sigma_y / norm_sq),
            StepRule::Annealed {
                c,
                sigma_y,
                norm_sq,
            } => {
                let s_y = annealed_sigma_y(sigma_y, norm_sq, sigma);
                libm::fmin(c * sigma * sigma, s_y * s_y / norm_sq)
            }
        }
    }

    /// The measurement noise std the likelihood weight γ/σ_y² uses at noise level σ, for a
    /// measurement of noise std `sigma_y`: σ_y itself, or σ_y,k under the annealed rule.
    pub fn likelihood_sigma_y(&self, sigma_y: f64, sigma: f64) -> f64 {
        match *self {
            StepRule::Annealed { norm_sq, .. } => annealed_sigma_y(sigma_y, norm_sq, sigma),
            _ => sigma_y,
        }
    }
}

/// Temperature T_k linear in k: T_k = T₀ + (T_end − T₀)·k/(K−1) (spec §5.2, numpy
/// `linspace(T0, T_end, K)`; T_k = T₀ when K = 1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Temperature {
    /// T₀ (yaml `temperature`).
    pub start: f64,
    /// T_{K−1} (1 in every official config).
    pub end: f64,
}

impl Temperature {
    /// Constant temperature T.
    pub const fn constant(t: f64) -> Self {
        Temperature { start: t, end: t }
    }

    /// Checks that both ends are finite and ≥ 0.
    pub fn validate(&self) -> Result<(), Error> {
        check_finite(self.start, "temperature start")?;
        check_finite(self.end, "temperature end")?;
        if self.start < 0.0 || self.end < 0.0 {
            return Err(Error::OutOfRange("temperature (must be >= 0)"));
        }
        Ok(())
    }

    /// T_k of step k of K: `numpy.linspace(start, end, K)[k]` bit for bit.
    pub fn at(&self, k: usize, steps: usize) -> f64 {
        linspace_at(self.start, self.end, steps, k)
    }
}

/// The law of the initial state x₀ (formats §8, `--x0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// x₀ ~ N(0, I): the official code (spec §5.2).
    Unit,
    /// x₀ ~ N(0, σ₀² I): what the derivation implies (spec §16.3).
    Sigma0,
}

/// What the network is told about the noise level (spec §6, §7).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NoiseInput {
    /// A VP ε-network: σ_k is mapped to a VP time t by the [`TimeMap`] (which may snap σ_k
    /// to the grid value). The [`Schedule::VpPretrained`] schedule never snaps: its times are
    /// [`pretrained_time`] = `linspace(0, 999, K)[K−1−k]` exactly (spec §6.3).
    Vp(TimeMap),
    /// A VE network evaluated at σ_net = σ_k.
    Ve,
    /// The official VE code's continuous label (spec §7): σ_net = σ_min (σ_max/σ_min)^{t_k},
    /// t_k = `linspace(1, t_end, K)[k]`, while γ_k uses the discrete level σ_k.
    VeContinuous {
        /// σ_min of the VE SDE (0.01).
        sigma_min: f64,
        /// σ_max of the VE SDE (348).
        sigma_max: f64,
        /// Last time of the grid (score_sde's sampling eps, 1e-5).
        t_end: f64,
    },
}

/// A complete sampling plan of the paper's simplified form (spec §5.2): schedule σ_k,
/// γ_k from a [`StepRule`], linear temperature, optional noise-free last step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// K, the number of steps (network evaluations).
    pub steps: usize,
    /// The noise schedule σ_k (largest first).
    pub schedule: Schedule,
    /// How the network's noise input follows from σ_k.
    pub noise_input: NoiseInput,
    /// γ_k as a function of σ_k.
    pub step_rule: StepRule,
    /// T_k.
    pub temperature: Temperature,
    /// Drop the noise on the last step (T_{K−1} = 0), as the official code does.
    pub last_step_noise_free: bool,
    /// The law of x₀.
    pub init: Init,
}

impl Plan {
    /// A plan with the official code's defaults: noise-free last step and x₀ ~ N(0, I).
    pub fn new(
        steps: usize,
        schedule: Schedule,
        noise_input: NoiseInput,
        step_rule: StepRule,
        temperature: Temperature,
    ) -> Self {
        Plan {
            steps,
            schedule,
            noise_input,
            step_rule,
            temperature,
            last_step_noise_free: true,
            init: Init::Unit,
        }
    }

    /// Checks the parameters and both ends of the schedule (each step is checked again when
    /// computed, so a validated plan can still fail mid-way only on a pathological schedule).
    pub fn validate(&self) -> Result<(), Error> {
        if self.steps == 0 {
            return Err(Error::ZeroSteps);
        }
        self.schedule.validate(self.steps)?;
        self.step_rule.validate()?;
        self.temperature.validate()?;
        if let NoiseInput::VeContinuous {
            sigma_min,
            sigma_max,
            t_end,
        } = self.noise_input
        {
            check_positive(sigma_min, "continuous label sigma_min")?;
            check_positive(sigma_max, "continuous label sigma_max")?;
            check_finite(t_end, "continuous label t_end")?;
        }
        self.step(0)?;
        self.step(self.steps - 1).map(|_| ())
    }

    /// (σ_k, σ_net, t) of step k: applies the noise-input mapping to the schedule's σ.
    fn noise_levels(&self, k: usize) -> Result<(f64, f64, f64), Error> {
        let target = check_positive(self.schedule.sigma(k, self.steps)?, "schedule sigma")?;
        match self.noise_input {
            NoiseInput::Vp(_) if self.schedule == Schedule::VpPretrained => {
                Ok((target, target, pretrained_time(k, self.steps)?))
            }
            NoiseInput::Vp(map) => {
                let p = map.map(target)?;
                Ok((p.sigma, p.sigma, p.t))
            }
            NoiseInput::Ve => Ok((target, target, f64::NAN)),
            NoiseInput::VeContinuous {
                sigma_min,
                sigma_max,
                t_end,
            } => {
                let t = linspace_at(1.0, t_end, self.steps, k);
                let label = sigma_min * libm::pow(sigma_max / sigma_min, t);
                Ok((target, label, f64::NAN))
            }
        }
    }

    /// σ_y of the step rule, if it has one.
    pub fn sigma_y(&self) -> Option<f64> {
        match self.step_rule {
            StepRule::Paper { .. } => None,
            StepRule::Code { sigma_y, .. }
            | StepRule::Lipschitz { sigma_y, .. }
            | StepRule::Annealed { sigma_y, .. } => Some(sigma_y),
        }
    }
}

impl StepPlan for Plan {
    fn len(&self) -> usize {
        self.steps
    }

    fn likelihood_sigma_y(&self, step: &PlanStep, sigma_y: f64) -> f64 {
        self.step_rule.likelihood_sigma_y(sigma_y, step.sigma)
    }

    fn step(&self, k: usize) -> Result<PlanStep, Error> {
        // Checked every step: fmin would silently drop a NaN σ_y, and `sample` need not be
        // handed a validated plan.
        self.step_rule.validate()?;
        if k >= self.steps {
            return Err(Error::StepOutOfRange {
                k,
                steps: self.steps,
            });
        }
        let (sigma, sigma_net, t) = self.noise_levels(k)?;
        let last = k + 1 == self.steps;
        let temperature = if last && self.last_step_noise_free {
            0.0
        } else {
            self.temperature.at(k, self.steps)
        };
        Ok(PlanStep {
            k,
            sigma,
            sigma_net,
            t,
            gamma: self.step_rule.gamma(sigma),
            temperature,
        })
    }

    fn init_std(&self) -> Result<f64, Error> {
        match self.init {
            Init::Unit => Ok(1.0),
            Init::Sigma0 => Ok(self.step(0)?.sigma),
        }
    }
}

/// The seven released configurations of the official code (spec §12.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// VP, pretrained schedule, K 1000, c 0.4, T₀ 0.4.
    VpUncondPretrained,
    /// VP, sigmoid schedule, K 100, c 0.7, T₀ 0.1.
    VpUncondSigmoid,
    /// VE, geometric 348 → 0.01, K 1000, c 0.16, T₀ 0.4.
    VeUncondPretrained,
    /// VP, sigmoid, K 750, c 0.77683, T₀ 0, σ_y 0.2, 92% random inpainting.
    VpInpainting,
    /// VP, sigmoid, K 750, c 0.15651, T₀ 0, σ_y 0.2, 4× SR.
    VpSuperResolution,
    /// VE, geometric, K 1000, c 0.29487, T₀ 0, σ_y 0.2, 92% random inpainting.
    VeInpainting,
    /// VE, geometric, K 1000, c 0.15651, T₀ 0, σ_y 0.2, 4× SR.
    VeSuperResolution,
}

/// σ_y of every conditional official config (in the model's data range, formats §1).
pub const PRESET_SIGMA_Y: f64 = 0.2;

impl Preset {
    /// All presets, in the order of spec §12.1.
    pub const ALL: [Preset; 7] = [
        Preset::VpUncondPretrained,
        Preset::VpUncondSigmoid,
        Preset::VeUncondPretrained,
        Preset::VpInpainting,
        Preset::VpSuperResolution,
        Preset::VeInpainting,
        Preset::VeSuperResolution,
    ];

    /// The official yaml's file stem.
    pub const fn name(self) -> &'static str {
        match self {
            Preset::VpUncondPretrained => "vp_uncond_pretrainedSchedule",
            Preset::VpUncondSigmoid => "vp_uncond_sigmoidSchedule",
            Preset::VeUncondPretrained => "ve_uncond_pretrainedSchedule",
            Preset::VpInpainting => "vp_inpainting",
            Preset::VpSuperResolution => "vp_super_resolution",
            Preset::VeInpainting => "ve_inpainting",
            Preset::VeSuperResolution => "ve_super_resolution",
        }
    }

    /// The preset of a yaml file stem.
    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    /// True for the inpainting and super-resolution configs.
    pub const fn is_conditional(self) -> bool {
        !matches!(
            self,
            Preset::VpUncondPretrained | Preset::VpUncondSigmoid | Preset::VeUncondPretrained
        )
    }

    /// The code-faithful plan: N(0, I) init, noise-free last step, VP sigmoid snapped to the
    /// 10⁶-point grid, VE network label continuous, conditional step rule `Code` (σ_y = 0.2).
    pub fn plan(self) -> Plan {
        let (steps, c, t0) = match self {
            Preset::VpUncondPretrained => (1000, 0.4, 0.4),
            Preset::VpUncondSigmoid => (100, 0.7, 0.1),
            Preset::VeUncondPretrained => (1000, 0.16, 0.4),
            Preset::VpInpainting => (750, 0.77683, 0.0),
            Preset::VpSuperResolution => (750, 0.15651, 0.0),
            Preset::VeInpainting => (1000, 0.29487, 0.0),
            Preset::VeSuperResolution => (1000, 0.15651, 0.0),
        };
        let (schedule, noise_input) = match self {
            Preset::VpUncondPretrained => (Schedule::VpPretrained, NoiseInput::Vp(TimeMap::Grid)),
            Preset::VpUncondSigmoid | Preset::VpInpainting | Preset::VpSuperResolution => {
                (Schedule::sigmoid_paper(), NoiseInput::Vp(TimeMap::Grid))
            }
            _ => (
                Schedule::ve_pretrained(),
                NoiseInput::VeContinuous {
                    sigma_min: VE_SIGMA_MIN,
                    sigma_max: VE_SIGMA_MAX,
                    t_end: VE_T_END,
                },
            ),
        };
        let step_rule = if self.is_conditional() {
            StepRule::Code {
                c,
                sigma_y: PRESET_SIGMA_Y,
            }
        } else {
            StepRule::Paper { c }
        };
        let temperature = Temperature {
            start: t0,
            end: 1.0,
        };
        Plan::new(steps, schedule, noise_input, step_rule, temperature)
    }
}

/// σ_min of the pretrained VE network (score_sde FFHQ-256).
pub const VE_SIGMA_MIN: f64 = 0.01;
/// σ_max of the pretrained VE network.
pub const VE_SIGMA_MAX: f64 = 348.0;
/// score_sde's sampling eps: the last time of the continuous VE grid.
pub const VE_T_END: f64 = 1e-5;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vp;

    fn paper(c: f64) -> StepRule {
        StepRule::Paper { c }
    }

    #[test]
    fn step_rules_follow_formats_8() {
        let s = 2.0;
        assert_eq!(paper(0.5).gamma(s), 2.0);
        let code = StepRule::Code {
            c: 0.5,
            sigma_y: 0.2,
        };
        assert_eq!(code.gamma(s), 0.2 * 0.2);
        assert_eq!(code.gamma(0.1), 0.5 * 0.1 * 0.1);
        let lip = StepRule::Lipschitz {
            c: 0.5,
            sigma_y: 0.2,
            norm_sq: 1.0 / 16.0,
        };
        assert!((lip.gamma(s) - 16.0 * 0.04).abs() < 1e-15);
        assert_eq!(
            paper(-1.0).validate(),
            Err(Error::NotPositive("step constant c"))
        );
        assert_eq!(
            StepRule::Code {
                c: 1.0,
                sigma_y: f64::NAN
            }
            .validate(),
            Err(Error::NotPositive("sigma_y"))
        );
    }

    #[test]
    fn annealed_rule_weighs_the_noisy_state_likelihood() {
        // σ_y,k² = σ_y² + ‖A‖² σ²: with σ_y 0.2, ‖A‖² 1/16 and σ 4, σ_y,k² = 0.04 + 1.
        let rule = StepRule::Annealed {
            c: 2.0,
            sigma_y: 0.2,
            norm_sq: 1.0 / 16.0,
        };
        let s_y = rule.likelihood_sigma_y(0.2, 4.0);
        assert!((s_y * s_y - 1.04).abs() < 1e-12);
        // γ = min(c σ², σ_y,k²/‖A‖²) = min(32, 16.64).
        assert!((rule.gamma(4.0) - 16.64).abs() < 1e-12);
        // Small σ: the Lipschitz rule's values (the annealing has faded).
        let lip = StepRule::Lipschitz {
            c: 2.0,
            sigma_y: 0.2,
            norm_sq: 1.0 / 16.0,
        };
        let (a, b) = (rule.gamma(1e-4), lip.gamma(1e-4));
        assert!((a - b).abs() < 1e-9 * b, "{a} {b}");
        assert!((rule.likelihood_sigma_y(0.2, 1e-4) - 0.2).abs() < 1e-8);
        // The other rules keep σ_y as it is.
        assert_eq!(lip.likelihood_sigma_y(0.2, 4.0), 0.2);
        let bad = StepRule::Annealed {
            c: 1.0,
            sigma_y: 0.2,
            norm_sq: f64::NAN,
        };
        assert_eq!(
            bad.validate(),
            Err(Error::NotPositive("operator norm squared"))
        );
    }

    #[test]
    fn clipped_iterations_match_spec_10_2() {
        // σ* = sqrt(σ_y²/c); spec §10.2: VE inpainting c 0.29487 → 0.368311, clip on the
        // first 655 of 1000 geometric levels. Count with the geometric formula directly.
        let c = 0.29487;
        let rule = StepRule::Code { c, sigma_y: 0.2 };
        let clipped = (0..1000)
            .filter(|&k| {
                let s = 348.0 * libm::pow(0.01 / 348.0, k as f64 / 999.0);
                rule.gamma(s) < c * s * s
            })
            .count();
        assert_eq!(clipped, 655);
        assert!((libm::sqrt(0.04 / c) - 0.368311).abs() < 1e-6);
    }

    #[test]
    fn temperature_is_numpy_linspace() {
        let t = Temperature {
            start: 0.4,
            end: 1.0,
        };
        assert_eq!(t.at(0, 1000), 0.4);
        assert_eq!(t.at(999, 1000), 1.0);
        assert!((t.at(333, 1000) - (0.4 + 0.6 * 333.0 / 999.0)).abs() < 1e-15);
        assert_eq!(t.at(0, 1), 0.4);
        assert_eq!(
            Temperature {
                start: -0.1,
                end: 1.0
            }
            .validate(),
            Err(Error::OutOfRange("temperature (must be >= 0)"))
        );
    }

    #[test]
    fn pretrained_vp_plan_walks_the_table_backwards() {
        let plan = Preset::VpUncondPretrained.plan();
        plan.validate().unwrap();
        for k in [0usize, 1, 500, 998, 999] {
            let s = plan.step(k).unwrap();
            assert_eq!(s.t, (999 - k) as f64);
            assert_eq!(s.sigma, vp::SIGMA[999 - k]);
            assert_eq!(s.sigma_net, s.sigma);
            assert_eq!(s.gamma, 0.4 * s.sigma * s.sigma);
        }
        assert_eq!(
            plan.step(998).unwrap().temperature,
            0.4 + 0.6 * 998.0 / 999.0
        );
        assert_eq!(plan.step(999).unwrap().temperature, 0.0);
        assert_eq!(
            plan.step(1000),
            Err(Error::StepOutOfRange {
                k: 1000,
                steps: 1000
            })
        );
        assert_eq!(plan.init_std(), Ok(1.0));
        let p0 = Plan {
            init: Init::Sigma0,
            last_step_noise_free: false,
            ..plan
        };
        assert_eq!(p0.init_std(), Ok(vp::SIGMA_MAX));
        assert_eq!(p0.step(999).unwrap().temperature, 1.0);
    }

    #[test]
    fn long_pretrained_plans_interpolate() {
        // K = 150,001: t_k = 999 (K−1−k)/(K−1); the middle step is at t = 499.5.
        let plan = Plan::new(
            150_001,
            Schedule::VpPretrained,
            NoiseInput::Vp(TimeMap::Exact),
            paper(0.1),
            Temperature::constant(1.0),
        );
        plan.validate().unwrap();
        let s = plan.step(75_000).unwrap();
        assert!((s.t - 499.5).abs() < 1e-9);
        assert!((s.sigma - 0.5 * (vp::SIGMA[499] + vp::SIGMA[500])).abs() < 1e-12);
        // The first step is exactly t = 999 for every K (no ulp overshoot past the table).
        for steps in [2usize, 3, 300, 750, 150_001] {
            let p = Plan { steps, ..plan };
            assert_eq!(p.step(0).unwrap().t, 999.0);
            assert_eq!(p.step(steps - 1).unwrap().t, 0.0);
        }
    }

    #[test]
    fn bad_plans_are_typed_errors() {
        let mut plan = Preset::VpUncondPretrained.plan();
        plan.steps = 0;
        assert_eq!(plan.validate(), Err(Error::ZeroSteps));
        let mut plan = Preset::VpUncondPretrained.plan();
        plan.step_rule = paper(f64::NAN);
        assert!(plan.validate().is_err());
        let mut plan = Preset::VpUncondPretrained.plan();
        plan.temperature.end = f64::INFINITY;
        assert_eq!(plan.validate(), Err(Error::NotFinite("temperature end")));
    }

    #[test]
    fn presets_match_spec_12_1() {
        assert_eq!(
            Preset::from_name("vp_inpainting"),
            Some(Preset::VpInpainting)
        );
        assert_eq!(Preset::from_name("ve_uncond"), None);
        let p = Preset::VeSuperResolution.plan();
        assert_eq!(p.steps, 1000);
        assert_eq!(
            p.step_rule,
            StepRule::Code {
                c: 0.15651,
                sigma_y: 0.2
            }
        );
        assert_eq!(
            p.temperature,
            Temperature {
                start: 0.0,
                end: 1.0
            }
        );
        assert!(p.last_step_noise_free);
        assert_eq!(p.init, Init::Unit);
        assert_eq!(Preset::VpUncondSigmoid.plan().steps, 100);
        assert_eq!(Preset::ALL.iter().filter(|p| p.is_conditional()).count(), 4);
    }

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs()
    }

    #[test]
    fn sigmoid_preset_snaps_to_the_spec_9_3_grid_values() {
        let plan = Preset::VpUncondSigmoid.plan();
        plan.validate().unwrap();
        // (k, grid σ, t) for K = 100 from spec §9.3.
        for (k, sigma, t) in [
            (0, 157.4072808, 999.0),
            (1, 149.4646117, 993.8631369),
            (2, 141.5614153, 988.4445554),
            (50, 1.999661768, 395.9180819),
            (97, 0.01319987156, 0.6623376623),
            (98, 0.01152056343, 0.3146853147),
            (99, 0.01000050004, 0.0),
        ] {
            let s = plan.step(k).unwrap();
            assert!(rel(s.sigma, sigma) < 1e-8, "k = {k}: {}", s.sigma);
            assert!((s.t - t).abs() < 1e-7, "k = {k}: {}", s.t);
            assert_eq!(s.gamma, 0.7 * s.sigma * s.sigma);
            assert_eq!(s.sigma_net, s.sigma);
        }
        let p750 = Preset::VpInpainting.plan();
        let s = p750.step(375).unwrap();
        assert!(rel(s.sigma, 2.088850765) < 1e-8 && (s.t - 404.5934066).abs() < 1e-7);
    }

    #[test]
    fn conditional_presets_clip_as_in_spec_10_2() {
        for (preset, clipped) in [
            (Preset::VpInpainting, 541),
            (Preset::VpSuperResolution, 482),
            (Preset::VeInpainting, 655),
            (Preset::VeSuperResolution, 625),
        ] {
            let plan = preset.plan();
            plan.validate().unwrap();
            let c = match plan.step_rule {
                StepRule::Code { c, .. } => c,
                _ => unreachable!(),
            };
            let n = (0..plan.steps)
                .filter(|&k| {
                    let s = plan.step(k).unwrap();
                    s.gamma < c * s.sigma * s.sigma
                })
                .count();
            assert_eq!(n, clipped, "{}", preset.name());
        }
    }

    #[test]
    fn ve_preset_uses_the_continuous_label() {
        let plan = Preset::VeUncondPretrained.plan();
        plan.validate().unwrap();
        let first = plan.step(0).unwrap();
        assert_eq!((first.sigma, first.sigma_net), (348.0, 348.0));
        assert!(first.t.is_nan());
        let last = plan.step(999).unwrap();
        assert_eq!(last.sigma, 0.01);
        assert!(rel(last.sigma_net, 0.01 * libm::pow(34800.0, 1e-5)) < 1e-12);
        // spec §7: the label exceeds the level by at most 1.000105.
        for k in [1usize, 500, 998] {
            let s = plan.step(k).unwrap();
            let ratio = s.sigma_net / s.sigma;
            assert!((1.0..=1.000105).contains(&ratio), "k = {k}: {ratio}");
            assert!(rel(s.sigma, 348.0 * libm::pow(0.01 / 348.0, k as f64 / 999.0)) < 1e-12);
        }
        let plain = Plan {
            noise_input: NoiseInput::Ve,
            ..plan
        };
        assert_eq!(
            plain.step(500).unwrap().sigma_net,
            plain.step(500).unwrap().sigma
        );
    }

    #[test]
    fn huge_sigmoid_plans_need_no_buffers() {
        let plan = Plan {
            steps: 150_000,
            ..Preset::VpUncondSigmoid.plan()
        };
        plan.validate().unwrap();
        let a = plan.step(74_999).unwrap();
        let b = plan.step(75_000).unwrap();
        assert!(a.sigma >= b.sigma && a.t >= b.t);
        assert_eq!(plan.step(149_999).unwrap().temperature, 0.0);
    }
}
