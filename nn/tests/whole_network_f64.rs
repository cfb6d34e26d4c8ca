//! Accuracy of the whole f32 CPU forward (issue 20) against the f64 reference forward of
//! nn/tests/f64_reference (itself checked against PyTorch in f64_reference_golden.rs), on the
//! FFHQ networks' topology with random weights, random inputs and random noise levels: the
//! output of every conv policy (direct, auto, winograd) under formats.md §7's criterion
//! (max |ours − ref| ≤ tol · max(1, max |ref|) per sample), and the worst error of every
//! stage the forwards expose (ADM: the embeddings and every block; NCSN++: every module and
//! pyramid step), printed per policy.
//!
//! In CI the networks are reduced (the FFHQ topologies at 64×64 with narrow channels, as in
//! nn/tests/winograd_accuracy.rs); `scripts/winograd-accuracy.sh` runs the same check at full
//! FFHQ-256 size (`TWEEDIE_WINO_FULL=1`, ignored test).

mod f64_reference;

use std::collections::BTreeMap;

use safetensors::Dtype;
use tweedie_core::noise;
use tweedie_nn::model::adm::forward::{AdmModel, Input};
use tweedie_nn::model::adm::{AdmArch, AdmConfig};
use tweedie_nn::model::layers::ConvPolicy;
use tweedie_nn::model::ncsnpp::{
    Input as NcsnppInput, NcsnppArch, NcsnppConfig, NcsnppModel, Output,
};
use tweedie_nn::parity::{compare, TOL_ADM, TOL_NCSNPP};
use tweedie_nn::tensors::{serialize_sorted, SafetensorsFile, TensorBytes};
use tweedie_nn::weights::spec::{ParamKind, TensorSpec};
use tweedie_nn::weights::{Precision, Weights};

use f64_reference::{adm, ncsnpp, to_f32};

const POLICIES: [ConvPolicy; 3] = [ConvPolicy::Direct, ConvPolicy::Auto, ConvPolicy::Winograd];

/// Random weights with every parameter non-zero (unlike `Weights::random`, whose biases,
/// norm shifts and Fourier frequencies are 0): conv/linear weights N(0, 1/fan_in), biases and
/// norm shifts N(0, 0.1²), norm scales 1 + N(0, 0.1²), NCSN++'s Fourier frequencies
/// N(0, 16²) (score_sde's fourier_scale), loaded through the strict loader.
fn random_weights(specs: &[TensorSpec], seed: u64) -> Weights {
    let values: Vec<Vec<u8>> = specs
        .iter()
        .enumerate()
        .map(|(chain, spec)| {
            let g = |i: usize| noise::gaussian(seed, chain as u64, 0, i as u64);
            let value = |i: usize| match spec.kind {
                _ if spec.name == "all_modules.0.W" => 16.0 * g(i),
                ParamKind::Weight { fan_in } => g(i) / (fan_in.max(1) as f32).sqrt(),
                ParamKind::NormWeight => 1.0 + 0.1 * g(i),
                ParamKind::Bias | ParamKind::NormBias => 0.1 * g(i),
            };
            (0..spec.numel())
                .flat_map(|i| value(i).to_le_bytes())
                .collect()
        })
        .collect();
    let tensors: Vec<TensorBytes<'_>> = specs
        .iter()
        .zip(&values)
        .map(|(s, v)| (s.name.clone(), Dtype::F32, s.shape.clone(), &v[..]))
        .collect();
    let bytes = serialize_sorted(&tensors, &BTreeMap::new()).unwrap();
    let file = SafetensorsFile::from_bytes(bytes, "random weights".into()).unwrap();
    Weights::load(&file, specs, Precision::F32).unwrap()
}

/// `n` standard normal values of stream `chain`.
fn gaussian(n: usize, seed: u64, chain: u64) -> Vec<f32> {
    (0..n)
        .map(|i| noise::gaussian(seed, chain, 0, i as u64))
        .collect()
}

/// The reference's activations of one sample, by stage name (`out` for the output), rounded
/// to f32 for `compare` (half the memory at full size).
type Acts = BTreeMap<String, Vec<f32>>;

/// Runs `reference` on every sample; keeps the stage names in forward order.
fn reference_acts(
    batch: usize,
    mut reference: impl FnMut(usize, &mut dyn FnMut(&str, &[f64])) -> Vec<f64>,
) -> (Vec<Acts>, Vec<String>) {
    let mut order = Vec::new();
    let samples = (0..batch)
        .map(|i| {
            let mut acts = Acts::new();
            let out = reference(i, &mut |name: &str, v: &[f64]| {
                if i == 0 {
                    order.push(name.to_string());
                }
                acts.insert(name.to_string(), to_f32(v));
            });
            acts.insert("out".into(), to_f32(&out));
            acts
        })
        .collect();
    (samples, order)
}

/// One policy's run: `forward(policy, observer)` returns the batch's output and calls
/// `observer(stage, sample, values)` after every stage.
type Forward<'a> = dyn FnMut(ConvPolicy, &mut dyn FnMut(&str, usize, &[f32])) -> Vec<f32> + 'a;

/// Judges every policy's stages and output against the reference; prints one line per stage
/// (worst over the samples, per policy) and asserts every output within `tol`. Returns the
/// worst output error per policy.
fn judge(
    net: &str,
    tol: f64,
    reference: &[Acts],
    order: &[String],
    forward: &mut Forward<'_>,
) -> [f64; 3] {
    let rel = |ours: &[f32], r: &[f32]| compare(ours, r, 1, tol).unwrap()[0].rel;
    let mut stages: BTreeMap<String, [f64; 3]> = BTreeMap::new();
    let mut outputs = [0f64; 3];
    for (p, &policy) in POLICIES.iter().enumerate() {
        let out = forward(policy, &mut |name, i, v| {
            if let Some(r) = reference[i].get(name) {
                let e = &mut stages.entry(name.to_string()).or_default()[p];
                *e = e.max(rel(v, r));
            }
        });
        let per = out.len() / reference.len();
        for (o, acts) in out.chunks_exact(per).zip(reference) {
            outputs[p] = outputs[p].max(rel(o, &acts["out"]));
        }
    }
    for name in order {
        if let Some(e) = stages.get(name) {
            eprintln!(
                "{net} {name:<26} direct {:.2e}  auto {:.2e}  winograd {:.2e}",
                e[0], e[1], e[2]
            );
        }
    }
    eprintln!(
        "{net} output against f64: direct {:.2e}  auto {:.2e}  winograd {:.2e} (tol {tol:e}; {} stages compared)",
        outputs[0],
        outputs[1],
        outputs[2],
        stages.len()
    );
    assert!(!stages.is_empty(), "{net}: no stage was compared");
    for (policy, e) in POLICIES.iter().zip(outputs) {
        assert!(e <= tol, "{net} {policy:?}: output error {e:.3e} > {tol:e}");
    }
    outputs
}

/// Samples per network: three in CI, two at full size (where the f64 reference takes
/// minutes per sample).
fn samples(full: bool) -> usize {
    if full {
        2
    } else {
        3
    }
}

fn adm(full: bool) {
    let mut config = AdmConfig::ffhq256();
    if !full {
        // nn/tests/winograd_accuracy.rs's reduction: the FFHQ topology (6 levels, attention
        // at 16×16, scale-shift, resblock up/down) at 64×64 with 32 base channels.
        config.image_size = 64;
        config.model_channels = 32;
        config.num_head_channels = Some(32);
    }
    let arch = AdmArch::new(&config).unwrap();
    let weights = random_weights(&arch.state_dict(), 21);
    let (batch, size) = (samples(full), config.image_size);
    let per = config.in_channels * size * size;
    let x = gaussian(batch * per, 22, 0);
    // t = 999 (the largest embedding phases), then uniform in [0, 1000).
    let t: Vec<f32> = (0..batch)
        .map(|i| match i {
            0 => 999.0,
            _ => (1000.0 * noise::uniform(22, 1, 0, i as u64)) as f32,
        })
        .collect();
    let (reference, order) = reference_acts(batch, |i, record| {
        let xs = &x[i * per..][..per];
        adm::forward(&config, &weights, (xs, t[i]), (size, size), record)
    });
    let input = Input {
        x: &x,
        t: &t,
        batch,
        height: size,
        width: size,
    };
    judge(
        "adm",
        TOL_ADM,
        &reference,
        &order,
        &mut |policy, observe| {
            let mut out = vec![f32::NAN; batch * config.out_channels * size * size];
            AdmModel::with_policy(&arch, &weights, size, size, 2, policy)
                .unwrap()
                .forward_observed(&input, &mut out, &mut |name, i, a| observe(name, i, a))
                .unwrap();
            out
        },
    );
}

fn ncsnpp(full: bool) {
    let mut config = NcsnppConfig::ffhq256();
    if !full {
        // nn/tests/winograd_accuracy.rs's reduction: the FFHQ topology (7 levels, two res
        // blocks each, attention at 16×16, FIR pyramids) at 64×64 with 16 base channels.
        config.image_size = 64;
        config.nf = 16;
    }
    let arch = NcsnppArch::new(&config).unwrap();
    let weights = random_weights(&arch.state_dict(), 31);
    let (batch, size) = (samples(full), config.image_size);
    let per = arch.channels() * size * size;
    // σ_max (the largest Fourier phases), σ_min (the largest scores), then log-uniform over
    // the VE range; x = clean data in [0, 1] plus σ·z.
    let (lo, hi) = (config.sigma_min.ln(), config.sigma_max.ln());
    let sigma: Vec<f32> = (0..batch)
        .map(|i| match i {
            0 => config.sigma_max as f32,
            1 => config.sigma_min as f32,
            _ => (lo + (hi - lo) * noise::uniform(32, 0, 0, i as u64)).exp() as f32,
        })
        .collect();
    let z = gaussian(batch * per, 32, 1);
    let x: Vec<f32> = z
        .iter()
        .enumerate()
        .map(|(j, &z)| noise::uniform(32, 2, 0, j as u64) as f32 + sigma[j / per] * z)
        .collect();
    let (reference, order) = reference_acts(batch, |i, record| {
        ncsnpp::forward(&config, &weights, (&x[i * per..][..per], sigma[i]), record)
    });
    let input = NcsnppInput {
        x: &x,
        sigma: &sigma,
        batch,
    };
    judge(
        "ncsnpp",
        TOL_NCSNPP,
        &reference,
        &order,
        &mut |policy, observe| {
            let mut out = vec![f32::NAN; x.len()];
            NcsnppModel::with_policy(&arch, &weights, 2, policy)
                .unwrap()
                .forward_observed(&input, Output::Score, &mut out, &mut |act, i, v| {
                    observe(&act.to_string(), i, v)
                })
                .unwrap();
            out
        },
    );
}

#[test]
fn adm_ffhq_topology_at_64_matches_f64() {
    adm(false);
}

#[test]
fn ncsnpp_ffhq_topology_at_64_matches_f64() {
    ncsnpp(false);
}

/// Full FFHQ-256 size: `scripts/winograd-accuracy.sh`.
#[test]
#[ignore]
fn ffhq256_full_size_matches_f64() {
    assert_eq!(
        std::env::var("TWEEDIE_WINO_FULL").as_deref(),
        Ok("1"),
        "run through scripts/winograd-accuracy.sh"
    );
    adm(true);
    ncsnpp(true);
}
