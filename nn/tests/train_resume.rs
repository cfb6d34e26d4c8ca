//! `--resume` is bit-exact: N steps straight give the same bits as N/2 steps, a checkpoint
//! written on a stop request, a load into fresh objects and N/2 more steps.
//!
//! The "model" is a toy quadratic denoiser D(x_σ) = w ⊙ x_σ + b trained with the template
//! loss (core's σ and noise draws), so the run exercises everything a real loop does: the
//! data order across epoch boundaries, padding, noise streams, clipping, warm-up, AdamW with
//! weight decay, EMA, the loss log and the stop flag.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tweedie_core::training::{draw_noise, perturb_with, NoiseDistribution};
use tweedie_nn::data::{DataRange, Dataset, Preprocess};
use tweedie_nn::train::checkpoint::{Integrity, TrainState};
use tweedie_nn::train::clip::clip_grad_norm;
use tweedie_nn::train::log::{read_column, LossCsv};
use tweedie_nn::train::optim::AdamWConfig;
use tweedie_nn::train::params::ParamLayout;
use tweedie_nn::train::schedule::{LrSchedule, Warmup};
use tweedie_nn::train::signal::StopFlag;

const BATCH: usize = 4;
const SEED: u64 = 11;
const STEPS: u64 = 12;

/// 23 images of 1×3×3 (23 is prime, so batches straddle epoch boundaries).
fn dataset() -> Dataset {
    let pixels = (0..23 * 9)
        .map(|i| (tweedie_core::noise::bits(5, 0, 0, i) >> 56) as u8)
        .collect();
    Dataset::new(pixels, None, 1, 3, 3).unwrap()
}

const PRE: Preprocess = Preprocess {
    range: DataRange::MinusOneOne,
    pad: 1,
};

fn layout() -> ParamLayout {
    ParamLayout::new([("w", vec![1, 5, 5]), ("b", vec![1])]).unwrap()
}

fn fresh_state(layout: &ParamLayout, n: usize) -> TrainState {
    let mut params = layout.zeros();
    params[..25].fill(0.5);
    let config = AdamWConfig {
        betas: (0.9, 0.99),
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut metadata = BTreeMap::new();
    metadata.insert(
        "tweedie.train".to_string(),
        r#"{"preset":"toy"}"#.to_string(),
    );
    TrainState::new(params, config, 0.9, n, SEED, metadata).unwrap()
}

/// One training step of the toy model; returns the batch loss.
fn train_step(state: &mut TrainState, ds: &Dataset) -> f64 {
    let d = PRE.example_len(ds);
    let mut idx = [0usize; BATCH];
    state.data.next_batch(&mut idx).unwrap();
    let mut x = vec![0.0f32; BATCH * d];
    ds.fill_batch(&idx, PRE, &mut x).unwrap();
    let dist = NoiseDistribution::LogUniform {
        sigma_min: 0.01,
        sigma_max: 2.0,
    };
    let mut grads = vec![0.0f32; 26];
    let (mut n, mut xs) = (vec![0.0f32; d], vec![0.0f32; d]);
    let mut loss = 0.0;
    for (b, xb) in x.chunks_exact(d).enumerate() {
        let sigma = dist.draw(SEED, state.step, b as u64).unwrap().sigma;
        draw_noise(&mut n, SEED, state.step, b as u64).unwrap();
        perturb_with(xb, &n, sigma, &mut xs).unwrap();
        for e in 0..d {
            let den = state.params[e] * xs[e] + state.params[25];
            let r = den - xb[e];
            loss += (r as f64).powi(2) / (d * BATCH) as f64;
            let g = 2.0 * r / (d * BATCH) as f32;
            grads[e] += g * xs[e];
            grads[25] += g;
        }
    }
    clip_grad_norm(&mut grads, 0.05).unwrap();
    let lr = Warmup {
        lr: 0.05,
        warmup: 4,
    }
    .lr(state.step);
    state.optimizer.step(&mut state.params, &grads, lr).unwrap();
    state.ema.update(&state.params).unwrap();
    state.step += 1;
    loss
}

/// Trains until `until` steps, polling `stop` like the real loop (stop → checkpoint, return).
fn run(
    state: &mut TrainState,
    ds: &Dataset,
    until: u64,
    stop: &StopFlag,
    ckpt: &Path,
    log: &mut LossCsv,
) {
    while state.step < until {
        let loss = train_step(state, ds);
        // Row s is the loss of the step that completed update s (as `host train` logs).
        log.append(state.step, &[loss]).unwrap();
        if stop.requested() {
            state.save(ckpt, &layout()).unwrap();
            return;
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn assert_same(a: &TrainState, b: &TrainState) {
    assert_eq!(a.step, b.step);
    assert_eq!(bits(&a.params), bits(&b.params));
    assert_eq!(bits(a.ema.weights()), bits(b.ema.weights()));
    assert_eq!(bits(a.optimizer.exp_avg()), bits(b.optimizer.exp_avg()));
    assert_eq!(
        bits(a.optimizer.exp_avg_sq()),
        bits(b.optimizer.exp_avg_sq())
    );
    assert_eq!(a.optimizer.steps(), b.optimizer.steps());
    assert_eq!(a.data, b.data);
    assert_eq!(a, b);
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tweedie-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn resume_is_bit_exact() {
    let (ds, layout) = (dataset(), layout());
    let never = StopFlag::new();

    let straight_log = tmp("straight.csv");
    let mut log = LossCsv::open(&straight_log, &["loss"], 0).unwrap();
    let mut straight = fresh_state(&layout, ds.len());
    run(
        &mut straight,
        &ds,
        STEPS,
        &never,
        &tmp("unused.st"),
        &mut log,
    );
    assert_eq!(straight.step, STEPS);
    // 48 examples over epochs of 23: the stream is in epoch 2.
    assert_eq!((straight.data.epoch(), straight.data.position()), (2, 2));

    // Half, stopped by the flag (as SIGTERM would), checkpointed.
    let ckpt = tmp("ckpt.safetensors");
    let resumed_log = tmp("resumed.csv");
    let mut log = LossCsv::open(&resumed_log, &["loss"], 0).unwrap();
    let mut first = fresh_state(&layout, ds.len());
    let stop = StopFlag::new();
    run(&mut first, &ds, STEPS / 2 - 1, &never, &ckpt, &mut log);
    stop.request(15);
    run(&mut first, &ds, STEPS, &stop, &ckpt, &mut log);
    assert_eq!(first.step, STEPS / 2);
    drop(first);

    // Fresh process: load, then the rest.
    let (mut second, integrity) = TrainState::load(&ckpt, &layout, ds.len()).unwrap();
    assert_eq!(integrity, Integrity::Verified);
    assert_eq!(second.step, STEPS / 2);
    assert_eq!(second.metadata["tweedie.train"], r#"{"preset":"toy"}"#);
    let mut log = LossCsv::open(&resumed_log, &["loss"], second.step).unwrap();
    run(&mut second, &ds, STEPS, &never, &ckpt, &mut log);
    assert_same(&straight, &second);
    assert_eq!(
        read_column(&straight_log, "loss").unwrap(),
        read_column(&resumed_log, "loss").unwrap()
    );
    // The model learned something (the loss log is not constant).
    let losses = read_column(&straight_log, "loss").unwrap();
    assert!(losses.iter().all(|&(_, l)| l.is_finite() && l > 0.0));

    // A save/load round trip of the final state is exact too.
    straight.save(&ckpt, &layout).unwrap();
    assert_same(
        &straight,
        &TrainState::load(&ckpt, &layout, ds.len()).unwrap().0,
    );
    std::fs::remove_dir_all(ckpt.parent().unwrap()).unwrap();
}
