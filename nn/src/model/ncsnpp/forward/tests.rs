use super::*;
use crate::model::layers::ConvForm;
use crate::model::ncsnpp::NcsnppConfig;
use crate::parity::{compare, TOL_F16, TOL_NCSNPP};
use crate::tensors::SafetensorsFile;
use crate::testdata::golden;
use crate::weights::Precision;
use crate::weights::TensorData;

fn golden_arch() -> NcsnppArch {
    let text = std::fs::read_to_string(golden("ncsnpp_small").join("config.json")).unwrap();
    let config = NcsnppConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
    NcsnppArch::new(&config).unwrap()
}

fn golden_weights(arch: &NcsnppArch, precision: Precision) -> Weights {
    let file = SafetensorsFile::open(&golden("ncsnpp_small").join("weights.safetensors")).unwrap();
    Weights::load(&file, &arch.state_dict(), precision).unwrap()
}

fn io() -> SafetensorsFile {
    SafetensorsFile::open(&golden("ncsnpp_small").join("io.safetensors")).unwrap()
}

const POLICIES: [ConvPolicy; 3] = [ConvPolicy::Auto, ConvPolicy::Winograd, ConvPolicy::Direct];

#[test]
fn golden_small_out_and_every_activation_within_tolerance() {
    for policy in POLICIES {
        golden_small_within_tolerance(policy);
    }
}

/// The golden's 32×32 maps put the forms to work under auto: F(4×4) at 32×32 and 16×16,
/// F(2×2) at 8×8, direct for the thin input and output convolutions (and at 4×4).
#[test]
fn auto_runs_every_form_on_the_golden() {
    let arch = golden_arch();
    let weights = golden_weights(&arch, Precision::F32);
    let forms = NcsnppModel::new(&arch, &weights, 1).unwrap().forms;
    for form in [ConvForm::F4x4, ConvForm::F2x2, ConvForm::Direct] {
        assert!(forms.iter().any(|l| l.form == form), "{form:?}");
    }
    assert_eq!(
        forms,
        conv_forms(&arch, &weights, ConvPolicy::Auto).unwrap()
    );
}

fn golden_small_within_tolerance(policy: ConvPolicy) {
    // formats.md §7: per sample, max |ours − ref| ≤ 2e-4 · max(1, max |ref|), for `out`
    // and every recorded `act.*` tensor.
    let arch = golden_arch();
    let weights = golden_weights(&arch, Precision::F32);
    let io = io();
    let (x, sigma, reference) = (
        io.tensor_f32("x").unwrap(),
        io.tensor_f32("sigma").unwrap(),
        io.tensor_f32("out").unwrap(),
    );
    let mut model = NcsnppModel::with_policy(&arch, &weights, 2, policy).unwrap();
    let input = Input {
        x: &x.data,
        sigma: &sigma.data,
        batch: 2,
    };
    let mut out = vec![0f32; x.data.len()];
    let mut acts: Vec<(String, usize, Vec<f32>)> = Vec::new();
    model
        .forward_observed(&input, Output::Score, &mut out, &mut |a, i, v| {
            acts.push((a.to_string(), i, v.to_vec()))
        })
        .unwrap();
    let mut worst = (String::new(), 0f64);
    let mut check = |name: &str, sample: usize, ours: &[f32], reference: &[f32]| {
        let s = compare(ours, reference, 1, TOL_NCSNPP).unwrap()[0];
        if s.rel > worst.1 {
            worst = (format!("{name}[{sample}]"), s.rel);
        }
        assert!(
            s.pass,
            "{policy:?}: {name} sample {sample}: rel err {:.3e}",
            s.rel
        );
        if name == "out" {
            eprintln!(
                "out[{sample}]: max abs err {:.3e}, rel {:.3e}",
                s.max_abs, s.rel
            );
        }
    };
    let per = out.len() / 2;
    for i in 0..2 {
        check(
            "out",
            i,
            &out[i * per..][..per],
            &reference.data[i * per..][..per],
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (name, i, v) in &acts {
        let r = io.tensor_f32(&format!("act.{name}")).unwrap();
        let n = r.data.len() / 2;
        assert_eq!(v.len(), n, "{name}");
        check(name, *i, v, &r.data[i * n..][..n]);
        seen.insert(name.clone());
    }
    // Every act.* tensor of the file was produced: 37 modules, x_scaled, 2×2 pyramid
    // downsample and 2×2 upsample in/out, pre_sigma_division.
    let st = io.view().unwrap();
    let file_acts = st
        .names()
        .into_iter()
        .filter(|n| n.starts_with("act."))
        .count();
    assert_eq!(seen.len(), file_acts);
    assert_eq!(seen.len(), 37 + 1 + 8 + 1);
    eprintln!(
        "{policy:?}: worst relative error {} {:.3e}",
        worst.0, worst.1
    );
}

#[test]
fn golden_small_f16_weights_within_f16_tolerance() {
    let arch = golden_arch();
    let weights = golden_weights(&arch, Precision::F16);
    assert!(matches!(
        weights.get("all_modules.0.W").unwrap().data,
        TensorData::F32(_)
    ));
    let io = io();
    let (x, sigma, reference) = (
        io.tensor_f32("x").unwrap(),
        io.tensor_f32("sigma").unwrap(),
        io.tensor_f32("out").unwrap(),
    );
    let mut out = vec![0f32; x.data.len()];
    let input = Input {
        x: &x.data,
        sigma: &sigma.data,
        batch: 2,
    };
    for policy in POLICIES {
        NcsnppModel::with_policy(&arch, &weights, 1, policy)
            .unwrap()
            .forward(&input, Output::Score, &mut out)
            .unwrap();
        for (i, s) in compare(&out, &reference.data, 2, TOL_F16)
            .unwrap()
            .iter()
            .enumerate()
        {
            assert!(s.pass, "{policy:?} sample {i}: rel err {:.3e}", s.rel);
        }
    }
}

#[test]
fn batch_and_threads_do_not_change_a_bit_and_denoised_is_tweedie() {
    for policy in POLICIES {
        batch_and_threads_do_not_change_a_bit(policy);
    }
}

fn batch_and_threads_do_not_change_a_bit(policy: ConvPolicy) {
    let arch = golden_arch();
    let weights = golden_weights(&arch, Precision::F32);
    let io = io();
    let (x, sigma) = (io.tensor_f32("x").unwrap(), io.tensor_f32("sigma").unwrap());
    let per = x.data.len() / 2;
    let both = Input {
        x: &x.data,
        sigma: &sigma.data,
        batch: 2,
    };
    let mut a = vec![0f32; 2 * per];
    NcsnppModel::with_policy(&arch, &weights, 1, policy)
        .unwrap()
        .forward(&both, Output::Score, &mut a)
        .unwrap();
    // Keeping no transformed weights (each Winograd layer makes them at each call) changes
    // no bit either.
    let mut model3 = NcsnppModel::with_cache(&arch, &weights, 3, policy, 0).unwrap();
    assert_eq!(model3.wino_bytes(), 0);
    let second = Input {
        x: &x.data[per..],
        sigma: &sigma.data[1..],
        batch: 1,
    };
    let mut b = vec![0f32; per];
    model3.forward(&second, Output::Score, &mut b).unwrap();
    assert_eq!(
        &a[per..],
        &b[..],
        "batch 2 / 1 thread vs batch 1 / 3 threads"
    );
    // The pool persists across calls: a second and third forward on 2 threads agree too.
    let mut model2 = NcsnppModel::with_policy(&arch, &weights, 2, policy).unwrap();
    for _ in 0..2 {
        let mut c = vec![0f32; 2 * per];
        model2.forward(&both, Output::Score, &mut c).unwrap();
        assert_eq!(a, c, "1 thread vs 2 threads (pool reused)");
    }
    // Denoised = x + σ²·s up to the one rounding saved.
    let mut d = vec![0f32; 2 * per];
    model3.forward(&both, Output::Denoised, &mut d).unwrap();
    for i in 0..2 {
        let s = sigma.data[i] as f64;
        let rng = i * per..(i + 1) * per;
        for ((&dv, &sv), &xv) in d[rng.clone()].iter().zip(&a[rng.clone()]).zip(&x.data[rng]) {
            let want = xv as f64 + s * s * sv as f64;
            assert!(
                (dv as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{dv} vs {want}"
            );
        }
    }
}

/// The full FFHQ-256 topology runs end to end (random weights; ~266 GMAC, seconds).
/// `cargo test -p tweedie-host --lib ffhq256_runs -- --ignored --nocapture`
#[test]
#[ignore = "FFHQ-256 forward: ~266 GMAC"]
fn ffhq256_runs_on_random_weights() {
    let arch = NcsnppArch::new(&NcsnppConfig::ffhq256()).unwrap();
    let weights = Weights::random(&arch.state_dict(), Precision::F32, 1);
    let mut model = NcsnppModel::new(&arch, &weights, 2).unwrap();
    let n = 3 * 256 * 256;
    let x: Vec<f32> = (0..n).map(|i| (i % 255) as f32 / 255.0).collect();
    let mut out = vec![0f32; n];
    let start = std::time::Instant::now();
    let input = Input {
        x: &x,
        sigma: &[50.0],
        batch: 1,
    };
    model.forward(&input, Output::Score, &mut out).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert!(out.iter().all(|v| v.is_finite()));
    eprintln!(
        "ffhq256: {secs:.2} s, {:.1} GFLOP/s, arena {:.0} MB",
        2.0 * arch.macs() as f64 / secs / 1e9,
        model.arena_bytes() as f64 / 1e6
    );
}

#[test]
fn bad_inputs_are_errors() {
    let arch = golden_arch();
    let weights = golden_weights(&arch, Precision::F32);
    let mut m = NcsnppModel::new(&arch, &weights, 1).unwrap();
    let x = vec![0.5f32; 3 * 32 * 32];
    let mut out = vec![0f32; x.len()];
    let e = |m: &mut NcsnppModel, sigma: &[f32], x: &[f32], out: &mut [f32]| {
        let input = Input { x, sigma, batch: 1 };
        format!("{:#}", m.forward(&input, Output::Score, out).unwrap_err())
    };
    assert!(e(&mut m, &[0.0], &x, &mut out).contains("sigma[0] = 0"));
    assert!(e(&mut m, &[1.0, 2.0], &x, &mut out).contains("sigma has 2 values"));
    assert!(e(&mut m, &[1.0], &x[1..], &mut out).contains("x has"));
    assert!(e(&mut m, &[1.0], &x, &mut out[1..]).contains("out has"));
    assert!(NcsnppModel::new(&arch, &weights, 0).is_err());
    assert!(m.arena_bytes() > 0 && m.threads() == 1);
}
