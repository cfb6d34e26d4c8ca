//! Exact chain laws (issue "tests/" item 1): under a Gaussian prior every sampler of the
//! template is a linear-Gaussian recursion, so the law of x_K is known in closed form
//! ([`tweedie_tests::chain_law`]) for any schedule, step rule, temperature, init and
//! noise-free last step. 10,000 chains of 64 (the headline VP preset) or 32 independent
//! coordinates (each coordinate its own μ_i, s_i; DDPM, with its 1000 steps, 4) must match
//! those laws: per coordinate, the sample mean and variance within the Bonferroni-aware
//! threshold (4.0 to 4.4 standard errors), and the mean of all z² within a χ² bound.
//!
//! Cost: the counter-based noise dominates (≈ 50–70 ns per element and step), so the sizes are
//! chosen to keep this file near 20 s of CPU.

use tweedie_core::classic::{Ddpm, DdpmVariance};
use tweedie_core::noise;
use tweedie_core::operator::{fill_random_mask, Inpainting};
use tweedie_core::plan::{Init, NoiseInput, StepRule, Temperature};
use tweedie_core::sampler::{
    conditional_scratch_len, sample, sample_conditional, sample_scratch_len, Chains, Likelihood,
};
use tweedie_core::{Plan, Preset, Schedule, StepPlan};
use tweedie_tests::{
    chain_law, compare_with_laws, z_scores, DiagonalGaussian, Moments, Observation, ZSummary,
};

const CHAINS: usize = 10_000;
const SEED: u64 = 0x5eed_2025;
/// The inpainting image: one channel, H×W = 32 coordinates.
const H: usize = 8;
const W: usize = 4;

/// Runs `plan` unconditionally on `chains` chains of the prior's coordinates and returns
/// the final states.
fn run_uncond(plan: &impl StepPlan, prior: &DiagonalGaussian, chains: usize) -> Vec<f32> {
    let mut x = vec![0.0f32; chains * prior.len()];
    let mut scratch = vec![0.0f32; sample_scratch_len(x.len())];
    sample(
        &mut prior.clone(),
        plan,
        &mut x,
        chains,
        0,
        SEED,
        &mut scratch,
    )
    .unwrap();
    x
}

fn exact_uncond(plan: &impl StepPlan, prior: &DiagonalGaussian) -> Vec<Moments> {
    (0..prior.len())
        .map(|i| chain_law(plan, prior.prior(i), None).unwrap())
        .collect()
}

fn check_uncond(what: &str, plan: &impl StepPlan, prior: &DiagonalGaussian) -> ZSummary {
    let x = run_uncond(plan, prior, CHAINS);
    let summary = compare_with_laws(&x, &exact_uncond(plan, prior));
    eprintln!("{what}: {summary:?}");
    summary.assert_pass(what);
    summary
}

#[test]
fn vp_sigmoid_preset_matches_its_exact_law_and_not_the_target() {
    // The paper's finite-K setting: VP sigmoid, K = 100, c = 0.7, T0 = 0.1 → 1, noise-free last
    // step, x0 ~ N(0, I), σ snapped to the official grid.
    let plan = Preset::VpUncondSigmoid.plan();
    // For unit data variance the chain ends at ≈ 0.88 of the target variance.
    let unit = chain_law(
        &plan,
        Moments {
            mean: 0.0,
            var: 1.0,
        },
        None,
    )
    .unwrap();
    eprintln!(
        "VP sigmoid K=100: var(x_K)/s^2 = {:.5} (mean {:.2e})",
        unit.var, unit.mean
    );
    assert!((unit.var - 0.88).abs() < 0.01, "ratio {}", unit.var);
    assert_eq!(unit.mean, 0.0);

    let prior = DiagonalGaussian::spread(64);
    let x = run_uncond(&plan, &prior, CHAINS);
    let exact = exact_uncond(&plan, &prior);
    let summary = compare_with_laws(&x, &exact);
    eprintln!("VP sigmoid preset: {summary:?}");
    summary.assert_pass("VP sigmoid preset");

    // Power: the same samples are far from the target law N(μ, s²) itself (the finite-K
    // variance deficit is many standard errors), so the test above can tell the two apart.
    let target: Vec<Moments> = (0..prior.len()).map(|i| prior.prior(i)).collect();
    let against_target = compare_with_laws(&x, &target);
    eprintln!("VP sigmoid preset vs the target law: {against_target:?}");
    assert!(against_target.max_abs > 8.0 && against_target.mean_sq > 10.0);
}

#[test]
fn ve_geometric_preset_with_continuous_label_matches_its_exact_law() {
    // VE geometric 348 → 0.01 shortened to K = 200, c = 0.16, T0 = 0.4, network label
    // continuous (σ_net ≠ σ: the law uses σ_net in D and σ in γ/σ²).
    let plan = Plan {
        steps: 100,
        ..Preset::VeUncondPretrained.plan()
    };
    check_uncond(
        "VE geometric preset K=100",
        &plan,
        &DiagonalGaussian::spread(32),
    );
}

#[test]
fn karras_constant_temperature_sigma0_init_noisy_last_step_matches_its_exact_law() {
    // Every free choice away from the presets: Karras ρ = 7 levels, constant T = 0.6,
    // x0 ~ N(0, σ0²), noise on the last step too, plain VE noise input.
    let plan = Plan {
        steps: 100,
        schedule: Schedule::Karras {
            sigma_max: 40.0,
            sigma_min: 0.02,
            rho: 7.0,
        },
        noise_input: NoiseInput::Ve,
        step_rule: StepRule::Paper { c: 0.3 },
        temperature: Temperature::constant(0.6),
        last_step_noise_free: false,
        init: Init::Sigma0,
    };
    check_uncond(
        "Karras T=0.6 sigma0 init",
        &plan,
        &DiagonalGaussian::spread(32),
    );
}

#[test]
fn ddpm_ancestral_sampling_matches_its_exact_law() {
    // Ho et al. Alg. 2 as a template plan (K = 1000, x0 ~ N(0, (1 + σ_T²) I), z = 0 at t = 1),
    // both reverse variances. 4 coordinates keep the 1000 steps cheap.
    let prior = DiagonalGaussian::spread(4);
    for variance in [DdpmVariance::Beta, DdpmVariance::BetaTilde] {
        let plan = Ddpm { variance };
        check_uncond(&format!("DDPM {variance:?}"), &plan, &prior);
    }
}

/// An 8×4 single-channel inpainting problem: mask with half the pixels missing, and one
/// measurement y = mask ⊙ (x_ref + σ_y e) shared by every chain (so the chain law is the law
/// given that y).
struct Problem {
    mask: Vec<f32>,
    y: Vec<f32>,
}

fn problem(prior: &DiagonalGaussian, sigma_y: f64) -> Problem {
    let mut mask = vec![0.0f32; H * W];
    assert_eq!(
        fill_random_mask(&mut mask, H, W, 0.5, 17).unwrap(),
        H * W / 2
    );
    let y = (0..H * W)
        .map(|i| {
            // x_ref drawn from the prior, then measured.
            let x = prior.mean[i] + prior.std[i] * noise::gaussian(3, 0, 0, i as u64) as f64;
            let e = noise::gaussian(3, 0, noise::COUNTER_MEASUREMENT, i as u64) as f64;
            mask[i] * (x + sigma_y * e) as f32
        })
        .collect();
    Problem { mask, y }
}

fn exact_conditional(
    plan: &impl StepPlan,
    prior: &DiagonalGaussian,
    p: &Problem,
    sigma_y: f64,
) -> Vec<Moments> {
    (0..prior.len())
        .map(|i| {
            let obs = Observation {
                mask: p.mask[i] as f64,
                y: p.y[i] as f64,
                sigma_y,
            };
            chain_law(plan, prior.prior(i), Some(obs)).unwrap()
        })
        .collect()
}

fn run_conditional(
    plan: &impl StepPlan,
    prior: &DiagonalGaussian,
    p: &Problem,
    sigma_y: f64,
    chains: usize,
) -> Vec<f32> {
    let op = Inpainting::new(1, H, W, &p.mask).unwrap();
    let lik = Likelihood {
        operator: &op,
        y: &p.y,
        sigma_y,
    };
    let mut x = vec![0.0f32; chains * H * W];
    let mut scratch = vec![0.0f32; conditional_scratch_len(&op, x.len())];
    let batch = Chains {
        batch: chains,
        first_chain: 0,
        seed: SEED,
    };
    sample_conditional(&mut prior.clone(), plan, &lik, &mut x, batch, &mut scratch).unwrap();
    x
}

fn check_conditional(what: &str, plan: &Plan, prior: &DiagonalGaussian) -> Vec<f32> {
    let sigma_y = plan.sigma_y().unwrap();
    let p = problem(prior, sigma_y);
    let x = run_conditional(plan, prior, &p, sigma_y, CHAINS);
    let summary = compare_with_laws(&x, &exact_conditional(plan, prior, &p, sigma_y));
    eprintln!("{what}: {summary:?}");
    summary.assert_pass(what);
    x
}

#[test]
fn vp_inpainting_preset_with_the_code_clip_matches_its_exact_law() {
    // vp-inpaint shortened to K = 100: sigmoid, c = 0.77683, T0 = 0, σ_y = 0.2, and
    // γ = min(c σ², σ_y²) (clipped on the early steps, where the observed pixels are set to y
    // in one step).
    let plan = Plan {
        steps: 100,
        ..Preset::VpInpainting.plan()
    };
    let clipped = (0..plan.steps)
        .filter(|&k| {
            let s = plan.step(k).unwrap();
            s.gamma < 0.77683 * s.sigma * s.sigma
        })
        .count();
    assert!(
        clipped > 10 && clipped < 90,
        "clip active on {clipped} steps"
    );
    check_conditional(
        "VP inpainting K=100",
        &plan,
        &DiagonalGaussian::spread(H * W),
    );
}

#[test]
fn annealed_sigma_y_matches_its_exact_law() {
    // vp-inpaint at K = 100 with σ_y annealed (σ_y,k² = σ_y² + σ_k² for the mask): the chain
    // law, weight γ/σ_y,k² included, is still exact in closed form. Its law differs from the
    // code rule's, so a sampler that ignored the annealing would fail here.
    let code = Plan {
        steps: 100,
        ..Preset::VpInpainting.plan()
    };
    let plan = Plan {
        step_rule: StepRule::Annealed {
            c: 0.77683,
            sigma_y: 0.2,
            norm_sq: 1.0,
        },
        ..code
    };
    let prior = DiagonalGaussian::spread(H * W);
    let x = check_conditional("VP inpainting annealed K=100", &plan, &prior);
    let wrong = compare_with_laws(
        &x,
        &exact_conditional(&code, &prior, &problem(&prior, 0.2), 0.2),
    );
    eprintln!("annealed chains against the code rule's law: {wrong:?}");
    assert!(
        wrong.max_abs > 10.0,
        "the code rule's law fits too: {wrong:?}"
    );
}

#[test]
fn ve_inpainting_preset_matches_its_exact_law() {
    let plan = Plan {
        steps: 100,
        ..Preset::VeInpainting.plan()
    };
    check_conditional(
        "VE inpainting K=100",
        &plan,
        &DiagonalGaussian::spread(H * W),
    );
}

#[test]
fn lipschitz_rule_with_sigma0_init_matches_its_exact_law() {
    let plan = Plan {
        steps: 100,
        schedule: Schedule::Geometric {
            sigma_max: 20.0,
            sigma_min: 0.01,
        },
        noise_input: NoiseInput::Ve,
        step_rule: StepRule::Lipschitz {
            c: 0.5,
            sigma_y: 0.1,
            norm_sq: 1.0,
        },
        temperature: Temperature {
            start: 0.3,
            end: 0.9,
        },
        last_step_noise_free: true,
        init: Init::Sigma0,
    };
    check_conditional("Lipschitz sigma0", &plan, &DiagonalGaussian::spread(H * W));
}

#[test]
fn z_scores_detect_a_wrong_variance() {
    // Sanity of the statistics themselves: 10,000 exact N(0, 1) draws pass against N(0, 1)
    // and fail against N(0, 1.1) (a 10% variance error is ≈ 7 standard errors).
    let x: Vec<f32> = (0..CHAINS as u64)
        .map(|c| noise::gaussian(1, c, 0, 0))
        .collect();
    let unit = Moments {
        mean: 0.0,
        var: 1.0,
    };
    let (zm, zv) = z_scores(tweedie_tests::column_moments(&x, 1)[0], unit, CHAINS);
    assert!(zm.abs() < 4.0 && zv.abs() < 4.0, "{zm} {zv}");
    let wrong = Moments {
        mean: 0.0,
        var: 1.1,
    };
    let (_, zv) = z_scores(tweedie_tests::column_moments(&x, 1)[0], wrong, CHAINS);
    assert!(zv < -5.0, "{zv}");
}
