//! The ADM forward pass against the original PyTorch code (golden adm_small and adm_variant):
//! the output and every stored per-block activation under the formats.md §7 criterion, f16
//! weight storage, and bit-identical outputs across batch sizes and thread counts.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tweedie_kernels::Isa;
use tweedie_nn::model::adm::forward::{AdmModel, Input};
use tweedie_nn::model::adm::AdmArch;
use tweedie_nn::model::config::ModelConfig;
use tweedie_nn::model::layers::{ConvForm, ConvPolicy};
use tweedie_nn::parity::{compare, TOL_ADM, TOL_F16};
use tweedie_nn::tensors::{SafetensorsFile, TensorF32};
use tweedie_nn::weights::{Precision, Weights};

/// One folder of the repository's golden data.
fn golden(folder: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../golden")).join(folder)
}

struct Golden {
    arch: AdmArch,
    weights_file: SafetensorsFile,
    io: SafetensorsFile,
    x: TensorF32,
    t: TensorF32,
    out: TensorF32,
}

fn load(folder: &str) -> Golden {
    let dir = golden(folder);
    let config = ModelConfig::load(dir.join("config.json").to_str().unwrap()).unwrap();
    let arch = AdmArch::new(config.adm().unwrap()).unwrap();
    let weights_file = SafetensorsFile::open(&dir.join("weights.safetensors")).unwrap();
    let io = SafetensorsFile::open(&dir.join("io.safetensors")).unwrap();
    let (x, t, out) = (
        io.tensor_f32("x").unwrap(),
        io.tensor_f32("t").unwrap(),
        io.tensor_f32("out").unwrap(),
    );
    Golden {
        arch,
        weights_file,
        io,
        x,
        t,
        out,
    }
}

impl Golden {
    fn weights(&self, precision: Precision) -> Weights {
        Weights::load(&self.weights_file, &self.arch.state_dict(), precision).unwrap()
    }

    fn batch(&self) -> usize {
        self.x.shape[0]
    }

    fn size(&self) -> (usize, usize) {
        (self.x.shape[2], self.x.shape[3])
    }

    /// Runs samples `range` of the golden input with the convolutions in the forms of
    /// `policy`, on the microkernels of `isa` if given; returns the output and, per stage
    /// name, the activations of those samples back to back.
    fn run_with(
        &self,
        weights: &Weights,
        range: std::ops::Range<usize>,
        threads: usize,
        (policy, isa): (ConvPolicy, Option<Isa>),
    ) -> (Vec<f32>, BTreeMap<String, Vec<f32>>) {
        let (h, w) = self.size();
        let per_in = self.x.data.len() / self.batch();
        let per_out = self.out.data.len() / self.batch();
        let mut model = AdmModel::with_policy(&self.arch, weights, h, w, threads, policy).unwrap();
        if let Some(isa) = isa {
            model.set_isa(isa);
        }
        let input = Input {
            x: &self.x.data[range.start * per_in..range.end * per_in],
            t: &self.t.data[range.clone()],
            batch: range.len(),
            height: h,
            width: w,
        };
        let mut out = vec![f32::NAN; range.len() * per_out];
        let mut acts: BTreeMap<String, Vec<f32>> = BTreeMap::new();
        model
            .forward_observed(&input, &mut out, &mut |name, _, a| {
                acts.entry(name.to_string())
                    .or_default()
                    .extend_from_slice(a)
            })
            .unwrap();
        (out, acts)
    }

    /// Every `act.*` tensor of the io file.
    fn activations(&self) -> Vec<(String, TensorF32)> {
        let mut names: Vec<String> = self
            .io
            .view()
            .unwrap()
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix("act.").map(str::to_string))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let t = self.io.tensor_f32(&format!("act.{n}")).unwrap();
                (n, t)
            })
            .collect()
    }
}

/// Fails naming every tensor (and sample) outside `tol`.
fn check(
    what: &str,
    ours: &[f32],
    reference: &[f32],
    batch: usize,
    tol: f64,
    failures: &mut Vec<String>,
) {
    match compare(ours, reference, batch, tol) {
        Ok(samples) => {
            for (i, s) in samples.iter().enumerate() {
                if !s.pass {
                    failures.push(format!(
                        "{what} sample {i}: rel err {:.3e} > {tol:e}",
                        s.rel
                    ));
                }
            }
        }
        Err(e) => failures.push(format!("{what}: {e:#}")),
    }
}

fn parity_with_every_activation(folder: &str, policy: ConvPolicy) {
    let g = load(folder);
    let weights = g.weights(Precision::F32);
    let (out, acts) = g.run_with(&weights, 0..g.batch(), 2, (policy, None));
    let mut failures = Vec::new();
    check("out", &out, &g.out.data, g.batch(), TOL_ADM, &mut failures);
    let stored = g.activations();
    assert!(
        stored.len() >= 10,
        "{folder}: only {} act.* tensors",
        stored.len()
    );
    for (name, reference) in &stored {
        match acts.get(name) {
            // act.emb_sinusoidal is formed in f32 by PyTorch (~3e-5 off an exact evaluation);
            // 1e-4 covers it, as the golden README suggests.
            Some(ours) => check(
                &format!("act.{name}"),
                ours,
                &reference.data,
                g.batch(),
                TOL_ADM,
                &mut failures,
            ),
            None => failures.push(format!("act.{name}: no stage of that name was observed")),
        }
    }
    assert!(
        failures.is_empty(),
        "{folder} ({policy:?}):\n{}",
        failures.join("\n")
    );
}

const POLICIES: [ConvPolicy; 3] = [ConvPolicy::Auto, ConvPolicy::Winograd, ConvPolicy::Direct];

#[test]
fn adm_small_matches_pytorch_at_every_block() {
    for policy in POLICIES {
        parity_with_every_activation("adm_small", policy);
    }
}

#[test]
fn adm_variant_matches_pytorch_at_every_block() {
    for policy in POLICIES {
        parity_with_every_activation("adm_variant", policy);
    }
}

/// The goldens' 32×32 maps put every form to work under auto: F(4×4) at 32×32 and 16×16,
/// F(2×2) at 8×8, direct for the thin input and output layers and at 4×4.
#[test]
fn auto_runs_every_form_on_the_goldens() {
    let g = load("adm_variant");
    let weights = g.weights(Precision::F32);
    let model = AdmModel::new(&g.arch, &weights, 32, 32, 1).unwrap();
    for form in [ConvForm::F4x4, ConvForm::F2x2, ConvForm::Direct] {
        assert!(model.forms().iter().any(|l| l.form == form), "{form:?}");
    }
    for l in model.forms() {
        let want = match (l.map.0, l.channels.0.min(l.channels.1) >= 8) {
            (16.., true) => ConvForm::F4x4,
            (8, true) => ConvForm::F2x2,
            _ => ConvForm::Direct,
        };
        assert_eq!(l.form, want, "{} at {:?}", l.name, l.map);
    }
}

#[test]
fn f16_weight_storage_stays_within_2e_3() {
    for (folder, policy) in ["adm_small", "adm_variant"]
        .into_iter()
        .flat_map(|f| POLICIES.map(|p| (f, p)))
    {
        let g = load(folder);
        let weights = g.weights(Precision::F16);
        let (out, _) = g.run_with(&weights, 0..g.batch(), 2, (policy, None));
        let mut failures = Vec::new();
        check(
            "out (f16)",
            &out,
            &g.out.data,
            g.batch(),
            TOL_F16,
            &mut failures,
        );
        assert!(
            failures.is_empty(),
            "{folder} ({policy:?}): {}",
            failures.join("\n")
        );
    }
}

/// A model keeping none of its transformed Winograd weights (every Winograd layer makes
/// them at each call into one shared buffer) gives the bits of one keeping them all, with
/// f32 and f16 weights, in every policy.
#[test]
fn per_call_winograd_weights_give_the_kept_bits() {
    let g = load("adm_variant");
    let (h, w) = g.size();
    for precision in [Precision::F32, Precision::F16] {
        let weights = g.weights(precision);
        for policy in POLICIES {
            let run = |cache| {
                let mut model =
                    AdmModel::with_cache(&g.arch, &weights, h, w, 2, policy, cache).unwrap();
                let input = Input {
                    x: &g.x.data,
                    t: &g.t.data,
                    batch: g.batch(),
                    height: h,
                    width: w,
                };
                let mut out = vec![f32::NAN; g.out.data.len()];
                model.forward(&input, &mut out).unwrap();
                (out, model.wino_bytes())
            };
            let (kept, bytes) = run(usize::MAX);
            let (made, none) = run(0);
            assert_eq!(none, 0);
            assert_eq!(bytes > 0, policy != ConvPolicy::Direct, "{policy:?}");
            assert!(
                kept.iter()
                    .zip(&made)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{precision:?} {policy:?}: per-call weights change the output"
            );
        }
    }
}

/// Same bits for any batch split and thread count, in every policy (3 threads cut the 8×8
/// maps' four F(2×2) tile rows 1 + 1 + 2, the 16×16 maps' four F(4×4) rows likewise).
#[test]
fn outputs_are_bit_identical_across_batch_sizes_and_thread_counts() {
    let g = load("adm_variant");
    let weights = g.weights(Precision::F32);
    for policy in POLICIES {
        let run = |range, threads| g.run_with(&weights, range, threads, (policy, None)).0;
        let all = run(0..3, 2);
        let per = all.len() / 3;
        for threads in [1, 2, 3, 5] {
            let one = run(1..2, threads);
            assert!(
                one.iter()
                    .zip(&all[per..2 * per])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{policy:?}: sample 1 alone on {threads} threads differs from the batch of 3"
            );
            let two = run(0..2, threads);
            assert!(
                two.iter()
                    .zip(&all[..2 * per])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{policy:?}: batch 2 on {threads} threads differs"
            );
        }
    }
}

/// The Winograd forms give the same bits on every SIMD microkernel the CPU has (AVX2 and,
/// where present, AVX-512: both fuse the same products in the same order).
#[test]
fn every_simd_isa_gives_the_same_bits() {
    let g = load("adm_small");
    let weights = g.weights(Precision::F32);
    tweedie_nn::backend::enable_simd();
    let simd: Vec<Isa> = Isa::available().filter(|i| i.is_simd()).collect();
    if simd.len() < 2 {
        eprintln!("only {simd:?} here: nothing to compare");
    }
    for policy in POLICIES {
        let outs: Vec<Vec<f32>> = simd
            .iter()
            .map(|&isa| g.run_with(&weights, 0..2, 2, (policy, Some(isa))).0)
            .collect();
        for (isa, out) in simd.iter().zip(&outs).skip(1) {
            assert!(
                out.iter()
                    .zip(&outs[0])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{policy:?}: {isa:?} differs from {:?}",
                simd[0]
            );
        }
    }
}

#[test]
fn a_model_runs_repeatedly_and_refuses_other_sizes() {
    let g = load("adm_small");
    let weights = g.weights(Precision::F32);
    let (h, w) = g.size();
    let mut model = AdmModel::new(&g.arch, &weights, h, w, 2).unwrap();
    let input = Input {
        x: &g.x.data,
        t: &g.t.data,
        batch: g.batch(),
        height: h,
        width: w,
    };
    let mut first = vec![0.0; g.out.data.len()];
    let mut second = vec![1.0; g.out.data.len()];
    model.forward(&input, &mut first).unwrap();
    model.forward(&input, &mut second).unwrap();
    assert_eq!(first, second);
    let bigger = vec![0.0; 3 * 64 * 64];
    let e = model
        .forward(
            &Input {
                x: &bigger,
                t: &[1.0],
                batch: 1,
                height: 64,
                width: 64,
            },
            &mut vec![0.0; 6 * 64 * 64],
        )
        .unwrap_err();
    assert!(format!("{e}").contains("planned for 32x32"), "{e}");
    let e = model
        .forward(
            &Input {
                t: &[f32::NAN, 0.0],
                ..input
            },
            &mut first,
        )
        .unwrap_err();
    assert!(format!("{e}").contains("t[0] = NaN"), "{e}");
}
