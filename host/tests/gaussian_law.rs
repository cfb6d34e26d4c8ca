//! `host sample` and `host restore` with `--weights gaussian:MEAN,STD` reproduce the exact
//! law of the chains, through the command line.
//!
//! With X ~ N(μ, s² I) the denoiser is linear, D(x, σ) = μ + a(σ)(x − μ), a = s²/(s² + σ²)
//! (spec §8.5), so every element of the template chain (eq. 11 / 24) is a linear Gaussian
//! recursion. Per element, with drift δ = γ/σ², likelihood weight λ = γ/σ_y², observation
//! indicator o (inpainting mask), noise std η = sqrt(2γT):
//!
//!   x_{k+1} = r_k x_k + δ(1 − a)μ + λ o y + η n,   r_k = 1 − δ(1 − a) − λ o,
//!   mean m_{k+1} = r_k m_k + δ(1 − a)μ + λ o y,    variance v_{k+1} = r_k² v_k + η²,
//!
//! from x₀ ~ N(0, 1). Elements are independent, so the standardised values z = (x − m)/√v of
//! all chains and elements are i.i.d. N(0, 1): their mean must lie within 4/√M of 0 and their
//! variance within 4·√(2/M) of 1 (M values). The plan (σ_k, γ_k, T_k) comes from core for the
//! same flags and is checked against `host schedule`'s CSV.

use std::path::{Path, PathBuf};
use std::process::Command;

use tweedie_core::plan::{NoiseInput, Plan, PlanStep, Preset, StepPlan, StepRule, Temperature};
use tweedie_core::Schedule;

const MU: f64 = 0.3;
const STD: f64 = 0.5;

fn host(args: &[String]) {
    let out = Command::new(env!("CARGO_BIN_EXE_host"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("gaussian_law")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let data = t
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (t.shape().to_vec(), data)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The CSV of `host schedule` equals core's plan, value for value.
fn check_schedule_csv(flags: &[String], plan: &impl StepPlan) {
    let mut args = strings(&["schedule"]);
    args.extend(flags.iter().cloned());
    let out = Command::new(env!("CARGO_BIN_EXE_host"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), plan.len());
    for (k, row) in rows.iter().enumerate() {
        let v: Vec<f64> = row.split(',').map(|x| x.parse().unwrap()).collect();
        let s = plan.step(k).unwrap();
        assert_eq!(
            (v[1], v[2], v[4], v[5]),
            (s.sigma, s.sigma_net, s.gamma, s.temperature),
            "step {k}"
        );
    }
}

/// Mean and variance of every element after the plan (o = observed, y = measurement value).
fn chain_law(plan: &impl StepPlan, sigma_y: Option<f64>, o: f64, y: f64) -> (f64, f64) {
    let (mut m, mut v) = (0.0, 1.0);
    let s2 = STD * STD;
    for k in 0..plan.len() {
        let PlanStep {
            sigma,
            sigma_net,
            gamma,
            temperature,
            ..
        } = plan.step(k).unwrap();
        let a = s2 / (s2 + sigma_net * sigma_net);
        let drift = gamma / (sigma * sigma);
        let lik = sigma_y.map_or(0.0, |sy| gamma / (sy * sy)) * o;
        let r = 1.0 - drift * (1.0 - a) - lik;
        m = r * m + drift * (1.0 - a) * MU + lik * y;
        v = r * r * v + 2.0 * gamma * temperature;
    }
    (m, v)
}

/// Pooled standardised values: mean within 4/√M of 0, variance within 4√(2/M) of 1.
fn check_standardised(z: &[f64], what: &str) {
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let var = z.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    assert!(
        mean.abs() < 4.0 / n.sqrt(),
        "{what}: mean of z = {mean} over {n} values"
    );
    assert!(
        (var - 1.0).abs() < 4.0 * (2.0 / n).sqrt(),
        "{what}: variance of z = {var} over {n} values"
    );
}

#[test]
fn sample_reproduces_the_closed_form_law_ve_and_vp() {
    let dir = scratch("sample");
    let chains = 1500;
    // VE: explicit geometric schedule on [0.05, 20].
    let ve_flags = strings(&[
        "--weights",
        "gaussian:0.3,0.5",
        "--kind",
        "ve",
        "--size",
        "4",
        "--sigma-min",
        "0.05",
        "--sigma-max",
        "20",
        "--schedule",
        "geometric",
        "--steps",
        "25",
        "--c",
        "0.3",
        "--t0",
        "0.5",
    ]);
    let ve_plan = Plan::new(
        25,
        Schedule::Geometric {
            sigma_max: 20.0,
            sigma_min: 0.05,
        },
        NoiseInput::Ve,
        StepRule::Paper { c: 0.3 },
        Temperature {
            start: 0.5,
            end: 1.0,
        },
    );
    // VP: the sigmoid preset with K = 30 (grid time map, σ snapped).
    let vp_flags = strings(&[
        "--weights",
        "gaussian:0.3,0.5",
        "--kind",
        "vp",
        "--size",
        "4",
        "--preset",
        "vp-uncond-sigmoid",
        "--steps",
        "30",
    ]);
    let mut vp_plan = Preset::VpUncondSigmoid.plan();
    vp_plan.steps = 30;
    for (name, flags, plan) in [("ve", ve_flags, ve_plan), ("vp", vp_flags, vp_plan)] {
        check_schedule_csv(&flags, &plan);
        let out = dir.join(name);
        let mut args = strings(&["sample"]);
        args.extend(flags);
        args.extend(strings(&[
            "--n",
            &chains.to_string(),
            "--batch",
            "64",
            "--seed",
            "11",
            "--quiet",
            "--out",
            &out.display().to_string(),
        ]));
        host(&args);
        let (shape, x) = tensor(&out.join("samples.safetensors"), "samples");
        assert_eq!(shape, vec![chains, 3, 4, 4]);
        let (m, v) = chain_law(&plan, None, 0.0, 0.0);
        let z: Vec<f64> = x.iter().map(|&xi| (f64::from(xi) - m) / v.sqrt()).collect();
        check_standardised(&z, name);
    }
}

#[test]
fn restore_reproduces_the_closed_form_law() {
    let dir = scratch("restore");
    let gt = dir.join("gt.png");
    let img = image::RgbImage::from_fn(4, 4, |x, y| {
        image::Rgb([(40 * x + 20 * y) as u8, 200, (60 * y) as u8])
    });
    img.save(&gt).unwrap();
    let chains = 1500;
    let sigma_y = 0.3;
    let flags = strings(&[
        "--weights",
        "gaussian:0.3,0.5",
        "--kind",
        "ve",
        "--size",
        "4",
        "--sigma-min",
        "0.05",
        "--sigma-max",
        "20",
        "--schedule",
        "geometric",
        "--steps",
        "25",
        "--c",
        "0.4",
        "--t0",
        "0.2",
    ]);
    let plan = Plan::new(
        25,
        Schedule::Geometric {
            sigma_max: 20.0,
            sigma_min: 0.05,
        },
        NoiseInput::Ve,
        StepRule::Code { c: 0.4, sigma_y },
        Temperature {
            start: 0.2,
            end: 1.0,
        },
    );
    let mut sched = flags.clone();
    sched.extend(strings(&["--sigma-y", "0.3", "--task", "inpaint"]));
    check_schedule_csv(&sched, &plan);
    let out = dir.join("inpaint");
    let mut args = strings(&["restore"]);
    args.extend(flags);
    args.extend(strings(&[
        "--task",
        "inpaint",
        "--p",
        "0.5",
        "--sigma-y",
        "0.3",
        "--input",
        &gt.display().to_string(),
        "--n",
        &chains.to_string(),
        "--batch",
        "50",
        "--seed",
        "5",
        "--quiet",
        "--out",
        &out.display().to_string(),
    ]));
    host(&args);
    let (_, x) = tensor(&out.join("samples.safetensors"), "samples");
    let (_, y) = tensor(&out.join("measurement.safetensors"), "y");
    let (_, mask) = tensor(&out.join("measurement.safetensors"), "mask");
    assert_eq!(
        mask.iter().filter(|&&m| m == 0.0).count(),
        8,
        "floor(16 * 0.5) missing"
    );
    let laws: Vec<(f64, f64)> = (0..48)
        .map(|e| {
            chain_law(
                &plan,
                Some(sigma_y),
                f64::from(mask[e % 16]),
                f64::from(y[e]),
            )
        })
        .collect();
    for observed in [0.0f32, 1.0] {
        let z: Vec<f64> = x
            .chunks_exact(48)
            .flat_map(|chain| {
                let laws = &laws;
                let mask = &mask;
                chain
                    .iter()
                    .enumerate()
                    .filter(move |(e, _)| mask[e % 16] == observed)
                    .map(move |(e, &xi)| {
                        let (m, v) = laws[e];
                        (f64::from(xi) - m) / v.sqrt()
                    })
            })
            .collect();
        check_standardised(
            &z,
            if observed == 1.0 {
                "observed pixels"
            } else {
                "missing pixels"
            },
        );
    }
    // The observed pixels are pulled towards y: their law differs from the prior's.
    let (m_obs, _) = laws[mask.iter().position(|&m| m == 1.0).unwrap()];
    let (m_miss, _) = laws[mask.iter().position(|&m| m == 0.0).unwrap()];
    assert!((m_obs - m_miss).abs() > 1e-3);
}
