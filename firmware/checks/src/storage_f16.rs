//! Check 3: the f16-storage update path. One chain of 64 elements kept in f16 runs the VP
//! inpainting preset's plan (γ clipped to σ_y², shortened to K = 100) by hand: per step the
//! state is widened to f32, denoised, and updated by `update_range_f16` in two ranges (as two
//! threads would split it); odd steps add the likelihood term of A = I, y = 0.25. Reports the
//! f16 bits of the final state.

use half::f16;
use tweedie_core::operator::Identity;
use tweedie_core::plan::{StepPlan, PRESET_SIGMA_Y};
use tweedie_core::sampler::{
    init_state, likelihood_gradient, likelihood_scratch_len_for, update_range_f16, Chains,
    UpdateCoefficients,
};
use tweedie_core::{Denoiser, Error, Plan, Preset};

use crate::gaussian::README;
use crate::hash::Fnv1a;
use crate::{Report, SEED};

/// The check's name in its report lines.
pub const NAME: &str = "f16";
const LEN: usize = 64;
const STEPS: usize = 100;
/// The first element of the second range.
const SPLIT: usize = 24;

/// Runs the check; reports `state`.
pub fn run(report: &mut impl Report) -> Result<(), Error> {
    let plan = Plan {
        steps: STEPS,
        ..Preset::VpInpainting.plan()
    };
    let chains = Chains {
        batch: 1,
        first_chain: 0,
        seed: SEED,
    };
    let op = Identity::new(1, 1, LEN)?;
    let y = [0.25f32; LEN];
    let mut wide = [0.0f32; LEN];
    init_state(&mut wide, chains, plan.init_std()?)?;
    let mut x = [f16::ZERO; LEN];
    for (s, &v) in x.iter_mut().zip(&wide) {
        *s = f16::from_f32(v);
    }
    let mut denoised = [0.0f32; LEN];
    let mut grad = [0.0f32; LEN];
    let mut scratch = [0.0f32; likelihood_scratch_len_for(Identity::lens_for(1, 1, LEN))];
    let mut denoiser = README;
    for k in 0..plan.len() {
        let step = plan.step(k)?;
        for (w, s) in wide.iter_mut().zip(&x) {
            *w = s.to_f32();
        }
        denoiser.denoise(&wide, 1, &step, &mut denoised)?;
        let (coef, g) = if k % 2 == 1 {
            likelihood_gradient(&op, &wide, &y, &mut grad, &mut scratch)?;
            let coef = UpdateCoefficients::conditional(&step, PRESET_SIGMA_Y)?;
            (coef, Some((&grad[..SPLIT], &grad[SPLIT..])))
        } else {
            (UpdateCoefficients::new(&step)?, None)
        };
        let key = chains.noise(0, k as u64);
        let (head, tail) = x.split_at_mut(SPLIT);
        let (d_head, d_tail) = denoised.split_at(SPLIT);
        let finite = update_range_f16(head, d_head, g.map(|g| g.0), &coef, key, 0)?
            & update_range_f16(tail, d_tail, g.map(|g| g.1), &coef, key, SPLIT)?;
        if !finite {
            return Err(Error::NonFiniteState { step: k });
        }
    }
    let mut h = Fnv1a::new();
    for s in &x {
        h.bytes(&s.to_bits().to_le_bytes());
    }
    report.hash(NAME, "state", &h);
    Ok(())
}
