//! Check 4: other plans through the one sampling template — the VE preset (geometric
//! 348 → 0.01, K = 1000, continuous network label) and a classic sampler instance, DDPM as
//! score_sde's VP-SDE ancestral predictor (K = 1000) — on 2 chains × 8 with the README's
//! Gaussian denoiser. Reports each plan's f64s and each sample.

use tweedie_core::classic::Ddpm;
use tweedie_core::plan::StepPlan;
use tweedie_core::sampler::{sample, sample_scratch_len};
use tweedie_core::{Error, Preset};

use crate::gaussian::README;
use crate::hash::{self, Fnv1a};
use crate::{Report, SEED};

/// The check's name in its report lines.
pub const NAME: &str = "template";
const CHAINS: usize = 2;
const LEN: usize = CHAINS * 8;

/// Runs the check; reports `ve-plan`, `ve-sample`, `ddpm-plan` and `ddpm-sample`.
pub fn run(report: &mut impl Report) -> Result<(), Error> {
    let ve = Preset::VeUncondPretrained.plan();
    report.hash(NAME, "ve-plan", &hash::plan(&ve)?);
    report.hash(NAME, "ve-sample", &sampled(&ve)?);
    let ddpm = Ddpm::vp_sde_ancestral();
    report.hash(NAME, "ddpm-plan", &hash::plan(&ddpm)?);
    report.hash(NAME, "ddpm-sample", &sampled(&ddpm)?);
    Ok(())
}

fn sampled(plan: &impl StepPlan) -> Result<Fnv1a, Error> {
    let mut x = [0.0f32; LEN];
    let mut scratch = [0.0f32; sample_scratch_len(LEN)];
    let mut denoiser = README;
    sample(&mut denoiser, plan, &mut x, CHAINS, 0, SEED, &mut scratch)?;
    let mut h = Fnv1a::new();
    h.f32s(&x);
    Ok(h)
}
