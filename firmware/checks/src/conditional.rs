//! Check 2: conditional sampling (eq. 24) on a 1×8×8 image, 2 chains, with two core operators —
//! random inpainting (half the pixels missing) and the 4× SR resizer (8×8 → 2×2) — and the
//! README's Gaussian denoiser. Every buffer is sized at compile time from the operators'
//! `lens_for`. Reports the measurement (mask and y) and the sample of each.

use tweedie_core::operator::{fill_random_mask, Inpainting, SuperResolution4};
use tweedie_core::plan::PRESET_SIGMA_Y;
use tweedie_core::sampler::{conditional_scratch_len_for, sample_conditional, Chains, Likelihood};
use tweedie_core::{noise, Error, ForwardOperator, OperatorLens, Plan, Preset};

use crate::gaussian::README;
use crate::hash::Fnv1a;
use crate::{Report, SEED};

/// The check's name in its report lines.
pub const NAME: &str = "conditional";
const C: usize = 1;
const H: usize = 8;
const W: usize = 8;
const BATCH: usize = 2;
/// K of both runs (the presets' schedules, shortened).
const STEPS: usize = 50;
const INPAINT: OperatorLens = Inpainting::lens_for(C, H, W);
const SR: OperatorLens = SuperResolution4::lens_for(C, H, W);
const X_LEN: usize = BATCH * INPAINT.input;
/// One scratch buffer serves both runs: the larger of their needs.
const SCRATCH: usize = max(
    conditional_scratch_len_for(INPAINT, X_LEN),
    conditional_scratch_len_for(SR, X_LEN),
);

const fn max(a: usize, b: usize) -> usize {
    if a > b {
        a
    } else {
        b
    }
}

/// Runs the check; reports `inpaint-y`, `inpaint-x`, `sr-y` and `sr-x`.
pub fn run(report: &mut impl Report) -> Result<(), Error> {
    let mut mask = [0.0f32; H * W];
    fill_random_mask(&mut mask, H, W, 0.5, SEED)?;
    let inpaint = Inpainting::new(C, H, W, &mask)?;
    let mut y = [0.0f32; INPAINT.output];
    measure(&inpaint, &mut y)?;
    let mut h = Fnv1a::new();
    h.f32s(&mask);
    h.f32s(&y);
    report.hash(NAME, "inpaint-y", &h);
    report.hash(
        NAME,
        "inpaint-x",
        &posterior(&inpaint, &y, Preset::VpInpainting)?,
    );

    let sr = SuperResolution4::new(C, H, W)?;
    let mut y = [0.0f32; SR.output];
    measure(&sr, &mut y)?;
    let mut h = Fnv1a::new();
    h.f32s(&y);
    report.hash(NAME, "sr-y", &h);
    report.hash(
        NAME,
        "sr-x",
        &posterior(&sr, &y, Preset::VpSuperResolution)?,
    );
    Ok(())
}

/// y = A x* + σ_y e for a fixed image x* (values in [0, 1)), e from the measurement counter.
fn measure(op: &impl ForwardOperator, y: &mut [f32]) -> Result<(), Error> {
    const N: usize = INPAINT.input;
    let mut truth = [0.0f32; N];
    for (i, v) in truth.iter_mut().enumerate() {
        *v = ((i * 37) % N) as f32 / N as f32;
    }
    let mut scratch = [0.0f32; max(INPAINT.scratch, SR.scratch)];
    op.forward(&truth, y, &mut scratch)?;
    for (i, v) in y.iter_mut().enumerate() {
        let e = noise::gaussian(SEED, 0, noise::COUNTER_MEASUREMENT, i as u64);
        *v += PRESET_SIGMA_Y as f32 * e;
    }
    Ok(())
}

/// `sample_conditional` with the preset's plan shortened to [`STEPS`]; the hash of x.
fn posterior<O: ForwardOperator>(op: &O, y: &[f32], preset: Preset) -> Result<Fnv1a, Error> {
    let plan = Plan {
        steps: STEPS,
        ..preset.plan()
    };
    let likelihood = Likelihood {
        operator: op,
        y,
        sigma_y: PRESET_SIGMA_Y,
    };
    let chains = Chains {
        batch: BATCH,
        first_chain: 0,
        seed: SEED,
    };
    let mut x = [0.0f32; X_LEN];
    let mut scratch = [0.0f32; SCRATCH];
    let mut denoiser = README;
    sample_conditional(
        &mut denoiser,
        &plan,
        &likelihood,
        &mut x,
        chains,
        &mut scratch,
    )?;
    let mut h = Fnv1a::new();
    h.f32s(&x);
    Ok(h)
}
