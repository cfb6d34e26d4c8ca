//! Check 1: the README's unconditional example (VP sigmoid preset, K = 100, 8 chains × 16,
//! seed 42, the Gaussian denoiser): hashes of every f64 of the plan, of the noise draws and of
//! the sample bits. With a [`Clock`], also the instructions per sampling step and per draw
//! (including its hashing).

use tweedie_core::noise;
use tweedie_core::plan::StepPlan;
use tweedie_core::sampler::{self, Chains};
use tweedie_core::{Error, PlanStep, Preset};

use crate::gaussian::README;
use crate::hash::{self, Fnv1a};
use crate::{Clock, Report, SEED};

/// The check's name in its report lines.
pub const NAME: &str = "readme";
const CHAINS: usize = 8;
const DIM: usize = 16;
const LEN: usize = CHAINS * DIM;

/// Runs the check; reports `plan`, `noise` and `sample` (and `cost` lines if `clock` counts).
pub fn run(report: &mut impl Report, clock: &mut impl Clock) -> Result<(), Error> {
    let plan = Preset::VpUncondSigmoid.plan();
    report.hash(NAME, "plan", &hash::plan(&plan)?);
    let before = clock.instructions();
    report.hash(NAME, "noise", &noise_draws(plan.len()));
    if let (Some(before), Some(after)) = (before, clock.instructions()) {
        report.cost(
            "readme.draw",
            after.wrapping_sub(before) / draw_count(plan.len()),
        );
    }

    let mut x = [0.0f32; LEN];
    let mut scratch = [0.0f32; sampler::sample_scratch_len(LEN)];
    let mut denoiser = README;
    sampler::sample(&mut denoiser, &plan, &mut x, CHAINS, 0, SEED, &mut scratch)?;
    let mut h = Fnv1a::new();
    h.f32s(&x);
    report.hash(NAME, "sample", &h);

    if clock.instructions().is_some() {
        step_cost(report, clock, &plan)?;
    }
    Ok(())
}

/// The number of draws [`noise_draws`] hashes.
fn draw_count(steps: usize) -> u64 {
    ((steps + 1) * LEN) as u64
}

/// Every f64 draw the run may use: chains 0..8, x₀'s counter and steps 0..K, elements 0..16
/// (the f64 values, before the rounding to f32, so libm's last bits show).
fn noise_draws(steps: usize) -> Fnv1a {
    let mut h = Fnv1a::new();
    let counters = core::iter::once(noise::COUNTER_INIT).chain(0..steps as u64);
    for counter in counters {
        for chain in 0..CHAINS as u64 {
            for e in 0..DIM as u64 {
                h.f64(noise::gaussian_f64(SEED, chain, counter, e));
            }
        }
    }
    h
}

/// The same run again, step by step through an observer that reads the clock: reports the
/// mean instructions of a noisy step (denoiser + update of 128 elements) and of the whole run.
fn step_cost(
    report: &mut impl Report,
    clock: &mut impl Clock,
    plan: &impl StepPlan,
) -> Result<(), Error> {
    let chains = Chains {
        batch: CHAINS,
        first_chain: 0,
        seed: SEED,
    };
    let mut x = [0.0f32; LEN];
    let mut scratch = [0.0f32; sampler::sample_scratch_len(LEN)];
    sampler::init_state(&mut x, chains, plan.init_std()?)?;
    let start = clock.instructions().unwrap_or(0);
    let (mut last, mut noisy, mut noisy_steps) = (start, 0u64, 0u64);
    let mut observer = |step: &PlanStep, _: &[f32]| {
        let now = clock.instructions().unwrap_or(0);
        if step.temperature > 0.0 {
            noisy += now.wrapping_sub(last);
            noisy_steps += 1;
        }
        last = now;
    };
    let mut denoiser = README;
    sampler::run(
        &mut denoiser,
        plan,
        &mut x,
        chains,
        &mut scratch,
        &mut observer,
    )?;
    report.cost("readme.step", noisy / noisy_steps.max(1));
    report.cost("readme.run", last.wrapping_sub(start));
    Ok(())
}
