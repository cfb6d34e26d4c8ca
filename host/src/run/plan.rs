//! What a sampling run follows: the plan (the template's, or one of core's classic samplers),
//! what it is for (unconditional, or conditional with σ_y and ‖A‖²), and the released
//! presets by name. The command line's flags build plans through [`PlanSource`]
//! (`cli::plan_args`).

use anyhow::Result;
use tweedie_core::classic::{Ddpm, Ncsn, VeReverseDiffusion};
use tweedie_core::plan::{Plan, PlanStep, Preset, StepPlan};
use tweedie_core::Error;

use tweedie_nn::denoiser::Model;

/// Any plan the CLI can run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AnyPlan {
    /// The paper's template.
    Template(Plan),
    /// DDPM.
    Ddpm(Ddpm),
    /// NCSN.
    Ncsn(Ncsn<'static>),
    /// VE predictor–corrector.
    VePc {
        /// The predictor levels.
        predictor: VeReverseDiffusion<'static>,
        /// Corrector snr.
        snr: f64,
    },
}

impl StepPlan for AnyPlan {
    fn likelihood_sigma_y(&self, step: &PlanStep, sigma_y: f64) -> f64 {
        match self {
            AnyPlan::Template(p) => p.likelihood_sigma_y(step, sigma_y),
            AnyPlan::Ddpm(p) => p.likelihood_sigma_y(step, sigma_y),
            AnyPlan::Ncsn(p) => p.likelihood_sigma_y(step, sigma_y),
            AnyPlan::VePc { predictor, .. } => predictor.likelihood_sigma_y(step, sigma_y),
        }
    }
    fn len(&self) -> usize {
        match self {
            AnyPlan::Template(p) => p.len(),
            AnyPlan::Ddpm(p) => p.len(),
            AnyPlan::Ncsn(p) => p.len(),
            AnyPlan::VePc { predictor, .. } => predictor.len(),
        }
    }
    fn step(&self, k: usize) -> Result<PlanStep, Error> {
        match self {
            AnyPlan::Template(p) => p.step(k),
            AnyPlan::Ddpm(p) => p.step(k),
            AnyPlan::Ncsn(p) => p.step(k),
            AnyPlan::VePc { predictor, .. } => predictor.step(k),
        }
    }
    fn init_std(&self) -> Result<f64, Error> {
        match self {
            AnyPlan::Template(p) => p.init_std(),
            AnyPlan::Ddpm(p) => p.init_std(),
            AnyPlan::Ncsn(p) => p.init_std(),
            AnyPlan::VePc { predictor, .. } => predictor.init_std(),
        }
    }
}

/// What the plan is for: unconditional, or conditional with σ_y and ‖A‖².
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Purpose {
    /// `host sample`.
    Unconditional,
    /// `host restore` (σ_y, ‖A‖², and whether the task is super-resolution).
    Conditional {
        /// σ_y.
        sigma_y: f64,
        /// ‖A‖².
        norm_sq: f64,
        /// Default preset family: SR (true) or inpainting/denoising (false).
        sr: bool,
    },
}

/// Builds the plan of a run for a model and a purpose (the command line's schedule and
/// sampler flags implement it), so layers below the command line never see flags.
pub trait PlanSource {
    /// The plan for `model` and `purpose`; every bad setting is one error naming its flag.
    fn build(&self, model: &Model, purpose: Purpose) -> Result<AnyPlan>;
}

/// Preset names on the command line → core presets.
pub const PRESETS: &[(&str, Preset)] = &[
    ("vp-uncond-pretrained", Preset::VpUncondPretrained),
    ("vp-uncond-sigmoid", Preset::VpUncondSigmoid),
    ("ve-uncond", Preset::VeUncondPretrained),
    ("vp-inpaint", Preset::VpInpainting),
    ("vp-sr4", Preset::VpSuperResolution),
    ("ve-inpaint", Preset::VeInpainting),
    ("ve-sr4", Preset::VeSuperResolution),
];

/// The first `steps` steps of a plan (short device checks and tests: a run through the
/// noisiest levels only).
pub struct FirstSteps<P: StepPlan>(pub P, pub usize);

impl<P: StepPlan> StepPlan for FirstSteps<P> {
    fn len(&self) -> usize {
        self.1.min(self.0.len())
    }

    fn step(&self, k: usize) -> Result<PlanStep, Error> {
        if k >= self.len() {
            return Err(Error::StepOutOfRange {
                k,
                steps: self.len(),
            });
        }
        self.0.step(k)
    }

    fn init_std(&self) -> Result<f64, Error> {
        self.0.init_std()
    }

    fn likelihood_sigma_y(&self, step: &PlanStep, sigma_y: f64) -> f64 {
        self.0.likelihood_sigma_y(step, sigma_y)
    }
}
