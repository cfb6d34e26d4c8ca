//! Bad input through the public sampling API (issue "tests/" item 5): every case returns a
//! typed [`Error`], never a panic. Only what core's unit tests do not already cover: the
//! whole-run drivers (`sample`, `sample_conditional`, `final_denoise`) fed plans that were
//! never validated — each plan step must still be checked when it is computed.

use tweedie_core::classic::{Levels, Ncsn, VeReverseDiffusion};
use tweedie_core::denoiser::GaussianOracle;
use tweedie_core::operator::Inpainting;
use tweedie_core::plan::{Init, NoiseInput, StepRule, Temperature};
use tweedie_core::sampler::{
    conditional_scratch_len, final_denoise, sample, sample_conditional, Chains, Likelihood,
};
use tweedie_core::{Error, Plan, Preset, Schedule, StepPlan, TimeMap};

const ORACLE: GaussianOracle = GaussianOracle {
    mean: 0.0,
    std: 1.0,
};

fn ve_plan(schedule: Schedule) -> Plan {
    Plan::new(
        10,
        schedule,
        NoiseInput::Ve,
        StepRule::Paper { c: 0.5 },
        Temperature::constant(1.0),
    )
}

/// Runs `plan` on 2 chains of 4 and returns the result.
fn run(plan: &impl StepPlan) -> Result<(), Error> {
    let mut x = [0.0f32; 8];
    let mut scratch = [0.0f32; 8];
    sample(&mut { ORACLE }, plan, &mut x, 2, 0, 1, &mut scratch)
}

#[test]
fn zero_steps() {
    let plan = Plan {
        steps: 0,
        ..Preset::VpUncondSigmoid.plan()
    };
    assert_eq!(run(&plan), Err(Error::ZeroSteps));
    let ncsn = Ncsn {
        levels: Levels::Table(&[1.0, 0.1]),
        steps_per_level: 0,
        eps: 2e-5,
    };
    assert_eq!(run(&ncsn), Err(Error::ZeroSteps));
    // Empty level tables say K = 0 too, before x₀'s law (σ₀) is asked for.
    let empty = VeReverseDiffusion {
        levels: Levels::Table(&[]),
        noise_removal: true,
    };
    assert_eq!(run(&empty), Err(Error::ZeroSteps));
    let sigma0 = Plan {
        init: Init::Sigma0,
        ..plan
    };
    assert!(run(&sigma0).is_err());
    let mut out = [0.0f32; 8];
    assert_eq!(
        final_denoise(&mut { ORACLE }, &plan, &[0.0; 8], 2, &mut out),
        Err(Error::ZeroSteps)
    );
}

#[test]
fn zero_steps_with_sigma0_init_is_zero_steps() {
    let plan = Plan {
        steps: 0,
        init: Init::Sigma0,
        ..Preset::VpUncondSigmoid.plan()
    };
    assert_eq!(run(&plan), Err(Error::ZeroSteps));
}

#[test]
fn non_positive_noise_levels() {
    for (min, max) in [
        (0.0, 10.0),
        (-0.1, 10.0),
        (0.01, 0.0),
        (0.01, -5.0),
        (1.0, 0.5),
    ] {
        for schedule in [
            Schedule::Geometric {
                sigma_max: max,
                sigma_min: min,
            },
            Schedule::Linear {
                sigma_max: max,
                sigma_min: min,
            },
            Schedule::Karras {
                sigma_max: max,
                sigma_min: min,
                rho: 7.0,
            },
        ] {
            let r = run(&ve_plan(schedule));
            assert!(
                matches!(r, Err(Error::NotPositive(_) | Error::OutOfRange(_))),
                "{schedule:?}: {r:?}"
            );
        }
    }
    // A level table with a zero or negative level.
    for table in [&[1.0, 0.0][..], &[1.0, -0.5][..], &[2.0, 2.0][..]] {
        let ve = VeReverseDiffusion {
            levels: Levels::Table(table),
            noise_removal: true,
        };
        assert!(matches!(
            run(&ve),
            Err(Error::NotPositive(_) | Error::OutOfRange(_))
        ));
    }
}

#[test]
fn sigma_outside_the_vp_table() {
    // VE levels given to a VP network: 348 > σ_999 = 157.4 at the first step…
    let plan = Plan {
        noise_input: NoiseInput::Vp(TimeMap::Exact),
        ..ve_plan(Schedule::ve_pretrained())
    };
    assert_eq!(run(&plan), Err(Error::SigmaOutsideVpTable { sigma: 348.0 }));
    // …and below σ_0 = 0.0100005 after some good steps, for both time maps.
    for map in [TimeMap::Exact, TimeMap::Grid] {
        let plan = Plan {
            noise_input: NoiseInput::Vp(map),
            ..ve_plan(Schedule::Geometric {
                sigma_max: 100.0,
                sigma_min: 0.001,
            })
        };
        // Geometric 100 → 0.001 in 10 steps leaves the table at step 8 (σ ≈ 0.0036).
        let r = run(&plan);
        assert!(
            matches!(r, Err(Error::SigmaOutsideVpTable { sigma }) if sigma < 0.01),
            "{r:?}"
        );
    }
}

#[test]
fn nan_and_infinite_parameters() {
    let base = Preset::VpUncondSigmoid.plan();
    let cases = [
        Plan {
            step_rule: StepRule::Paper { c: f64::NAN },
            ..base
        },
        Plan {
            step_rule: StepRule::Paper { c: -0.5 },
            ..base
        },
        Plan {
            step_rule: StepRule::Paper { c: f64::INFINITY },
            ..base
        },
        Plan {
            temperature: Temperature::constant(f64::NAN),
            ..base
        },
        Plan {
            temperature: Temperature {
                start: 0.1,
                end: f64::INFINITY,
            },
            ..base
        },
        Plan {
            temperature: Temperature::constant(-1.0),
            ..base
        },
        ve_plan(Schedule::Geometric {
            sigma_max: f64::NAN,
            sigma_min: 0.01,
        }),
        ve_plan(Schedule::Geometric {
            sigma_max: f64::INFINITY,
            sigma_min: 0.01,
        }),
        // γ = c σ² overflows f64.
        ve_plan(Schedule::Geometric {
            sigma_max: 1e200,
            sigma_min: 0.01,
        }),
        Plan {
            schedule: Schedule::Sigmoid {
                start: 0.0,
                end: 3.0,
                tau: f64::NAN,
                clip_min: 1e-9,
                sigma_min: 0.0100005,
                sigma_max: 157.0,
            },
            ..base
        },
    ];
    for plan in cases {
        let r = run(&plan);
        assert!(r.is_err(), "{plan:?} was accepted");
        assert!(
            !matches!(r, Err(Error::NonFiniteState { .. })),
            "{plan:?}: {r:?}"
        );
    }
    // An initial state that overflows f32 (σ₀ = 1e200) is caught as a non-finite state.
    let huge = Plan {
        init: Init::Sigma0,
        ..ve_plan(Schedule::Geometric {
            sigma_max: 1e100,
            sigma_min: 0.01,
        })
    };
    assert!(run(&huge).is_err());
    let ncsn = Ncsn {
        levels: Levels::Table(&[1.0, 0.1]),
        steps_per_level: 3,
        eps: f64::NAN,
    };
    assert_eq!(run(&ncsn), Err(Error::NotPositive("NCSN eps")));
}

#[test]
fn nan_sigma_y_in_the_step_rule_is_an_error() {
    let base = Preset::VpInpainting.plan();
    for step_rule in [
        StepRule::Code {
            c: 0.5,
            sigma_y: f64::NAN,
        },
        StepRule::Code {
            c: 0.5,
            sigma_y: -0.2,
        },
        StepRule::Lipschitz {
            c: 0.5,
            sigma_y: 0.2,
            norm_sq: 0.0,
        },
    ] {
        let plan = Plan {
            steps: 5,
            step_rule,
            ..base
        };
        assert!(run(&plan).is_err(), "{step_rule:?} was accepted");
    }
}

#[test]
fn conditional_buffers_and_sigma_y() {
    let mask = [1.0f32, 0.0, 1.0, 0.0];
    let op = Inpainting::new(1, 2, 2, &mask).unwrap();
    let y = [0.5f32, 0.0, -0.5, 0.0];
    let plan = Plan {
        steps: 5,
        ..Preset::VpInpainting.plan()
    };
    let chains = Chains {
        batch: 2,
        first_chain: 0,
        seed: 3,
    };
    let mut x = [0.0f32; 8];
    let need = conditional_scratch_len(&op, x.len());
    let mut scratch = vec![0.0f32; need];
    for sigma_y in [0.0, -0.2, f64::NAN, f64::INFINITY] {
        let lik = Likelihood {
            operator: &op,
            y: &y,
            sigma_y,
        };
        assert_eq!(
            sample_conditional(&mut { ORACLE }, &plan, &lik, &mut x, chains, &mut scratch),
            Err(Error::NotPositive("sigma_y")),
            "sigma_y {sigma_y}"
        );
    }
    let lik = Likelihood {
        operator: &op,
        y: &y,
        sigma_y: 0.2,
    };
    // Scratch one short.
    assert!(matches!(
        sample_conditional(
            &mut { ORACLE },
            &plan,
            &lik,
            &mut x,
            chains,
            &mut scratch[..need - 1]
        ),
        Err(Error::LengthMismatch { .. })
    ));
    // Chains of 8 for an operator on 4: the state is one chain of 8, not two of 4.
    let one = Chains { batch: 1, ..chains };
    assert!(matches!(
        sample_conditional(&mut { ORACLE }, &plan, &lik, &mut x, one, &mut scratch),
        Err(Error::LengthMismatch { .. })
    ));
    // Final denoise into a wrong-sized output.
    let mut out = [0.0f32; 7];
    assert!(matches!(
        final_denoise(&mut { ORACLE }, &plan, &x, 2, &mut out),
        Err(Error::LengthMismatch { .. })
    ));
    // An empty state.
    assert!(matches!(
        sample(&mut { ORACLE }, &plan, &mut [], 1, 0, 0, &mut []),
        Err(Error::Shape(_))
    ));
}
