//! Small-step limit (issue "tests/" item 2): with many steps, T = 1 and x₀ ~ N(0, σ₀²), the
//! chain law approaches the target law — N(μ, s²) unconditionally, the exact Gaussian posterior
//! for inpainting (observed coordinates: mean (s² y + σ_y² μ)/(s² + σ_y²), variance
//! s² σ_y²/(s² + σ_y²); unobserved coordinates keep the prior).
//!
//! Tolerance (stated): |var/target − 1| ≤ 2% and |mean − target mean| ≤ 0.025 target sd.
//!
//! Why these settings: with γ = c σ² the steps vanish as σ → 0, so the chain stops moving once
//! σ ≪ s and the law it reaches lags the target by ≈ ln(σ_max/σ_min)/(cK) (relative variance).
//! The closed-form chain law ([`tweedie_tests::chain_law`]) shows the bias is below the
//! tolerance for geometric 3 → 0.01, c = 1, K = 1000 (variance +0.4% to +1.24%, observed means
//! within 0.003 sd here; up to ≈ 0.019 sd for other measurements y); the steps are small where
//! it matters, γ/(s² + σ²) ≤ c σ²/s² → 0.
//! Then the samples must match that chain law (4 standard errors, as in `chain_law.rs`) and,
//! pooled over coordinates, the target within the tolerance plus 4 standard errors.

use tweedie_core::operator::Inpainting;
use tweedie_core::plan::{Init, NoiseInput, StepRule, Temperature};
use tweedie_core::sampler::{
    conditional_scratch_len, sample, sample_conditional, sample_scratch_len, Chains, Likelihood,
};
use tweedie_core::{Plan, Schedule};
use tweedie_tests::{
    chain_law, column_moments, compare_with_laws, DiagonalGaussian, Moments, Observation,
};

const CHAINS: usize = 10_000;
const TOL_VAR: f64 = 0.02;
const TOL_MEAN: f64 = 0.025;

fn plan(step_rule: StepRule) -> Plan {
    Plan {
        steps: 1000,
        schedule: Schedule::Geometric {
            sigma_max: 3.0,
            sigma_min: 0.01,
        },
        noise_input: NoiseInput::Ve,
        step_rule,
        temperature: Temperature::constant(1.0),
        last_step_noise_free: false,
        init: Init::Sigma0,
    }
}

/// (relative variance error, mean error in target sds) of `law` against `target`.
fn bias(law: Moments, target: Moments) -> (f64, f64) {
    (
        law.var / target.var - 1.0,
        (law.mean - target.mean) / target.var.sqrt(),
    )
}

/// Checks the closed-form bias, the samples against the chain law, and the pooled samples
/// against the targets.
fn check(what: &str, x: &[f32], laws: &[Moments], targets: &[Moments]) {
    for (i, (&law, &target)) in laws.iter().zip(targets).enumerate() {
        let (dv, dm) = bias(law, target);
        eprintln!("{what} coordinate {i}: chain-law bias: var {dv:+.4}, mean {dm:+.4} sd");
        assert!(dv.abs() <= TOL_VAR && dm.abs() <= TOL_MEAN, "{what} {i}");
    }
    let summary = compare_with_laws(x, laws);
    eprintln!("{what}: samples vs chain law {summary:?}");
    summary.assert_pass(what);

    // Pooled over coordinates: mean of the per-coordinate (relative var error, mean error/sd).
    let n = laws.len();
    let samples = column_moments(x, n);
    let (mut dv, mut dm) = (0.0, 0.0);
    for (s, t) in samples.iter().zip(targets) {
        let (v, m) = bias(*s, *t);
        dv += v / n as f64;
        dm += m / n as f64;
    }
    let pooled = (CHAINS * n) as f64;
    let (se_v, se_m) = ((2.0 / pooled).sqrt(), (1.0 / pooled).sqrt());
    eprintln!("{what}: samples vs target, pooled: var {dv:+.4} (se {se_v:.4}), mean {dm:+.4} sd");
    assert!(
        dv.abs() <= TOL_VAR + 4.0 * se_v,
        "{what}: pooled var error {dv}"
    );
    assert!(
        dm.abs() <= TOL_MEAN + 4.0 * se_m,
        "{what}: pooled mean error {dm}"
    );
}

#[test]
fn unconditional_chain_law_approaches_the_prior() {
    let prior = DiagonalGaussian::spread(4);
    let plan = plan(StepRule::Paper { c: 1.0 });
    let laws: Vec<Moments> = (0..prior.len())
        .map(|i| chain_law(&plan, prior.prior(i), None).unwrap())
        .collect();
    let targets: Vec<Moments> = (0..prior.len()).map(|i| prior.prior(i)).collect();
    let mut x = vec![0.0f32; CHAINS * prior.len()];
    let mut scratch = vec![0.0f32; sample_scratch_len(x.len())];
    sample(
        &mut prior.clone(),
        &plan,
        &mut x,
        CHAINS,
        0,
        21,
        &mut scratch,
    )
    .unwrap();
    check("unconditional", &x, &laws, &targets);
}

#[test]
fn inpainting_chain_law_approaches_the_exact_posterior() {
    // 1×2×4 image, every other pixel observed, σ_y = 0.2, the code's clip γ = min(cσ², σ_y²).
    let sigma_y = 0.2;
    let prior = DiagonalGaussian::spread(8);
    let mask: Vec<f32> = (0..8).map(|i| ((i + 1) % 2) as f32).collect();
    let y: Vec<f32> = (0..8)
        .map(|i| mask[i] * (prior.mean[i] + prior.std[i] * (0.9 - 0.3 * i as f64)) as f32)
        .collect();
    let plan = plan(StepRule::Code { c: 1.0, sigma_y });
    let mut laws = Vec::new();
    let mut targets = Vec::new();
    for i in 0..8 {
        let obs = Observation {
            mask: mask[i] as f64,
            y: y[i] as f64,
            sigma_y,
        };
        laws.push(chain_law(&plan, prior.prior(i), Some(obs)).unwrap());
        targets.push(if mask[i] == 1.0 {
            prior.posterior(i, y[i] as f64, sigma_y)
        } else {
            prior.prior(i)
        });
    }
    let op = Inpainting::new(1, 2, 4, &mask).unwrap();
    let lik = Likelihood {
        operator: &op,
        y: &y,
        sigma_y,
    };
    let chains = Chains {
        batch: CHAINS,
        first_chain: 0,
        seed: 22,
    };
    let mut x = vec![0.0f32; CHAINS * 8];
    let mut scratch = vec![0.0f32; conditional_scratch_len(&op, x.len())];
    sample_conditional(
        &mut prior.clone(),
        &plan,
        &lik,
        &mut x,
        chains,
        &mut scratch,
    )
    .unwrap();
    check("inpainting", &x, &laws, &targets);
}
