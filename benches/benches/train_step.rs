//! One training step of the bundled MNIST VP U-Net (`models/mnist-vp.json`, 32×32, batch 64):
//! data → noisy input → DDPM ε-loss forward + backward → gradient clip → AdamW → EMA, exactly
//! `host train`'s step ([`AdmRun::step`]), on random bytes as data and guided-diffusion's
//! initialisation as weights. Throughput is in images per second (Throughput::Elements(64)).
//! The PyTorch counterpart is `scripts/pytorch/train_bench.py`. Each step takes seconds, so:
//! `cargo bench -p tweedie-benches --bench train_step -- --sample-size 10`.
//! Threads: `TWEEDIE_THREADS` if set, else all available cores.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tweedie_nn::data::Dataset;
use tweedie_nn::model::adm::AdmArch;
use tweedie_nn::model::config::ModelConfig;
use tweedie_nn::train::adm_run::{AdmRun, Preset, RunConfig};
use tweedie_nn::train::optim::AdamWConfig;

const BATCH: usize = 64;

fn threads() -> usize {
    std::env::var("TWEEDIE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// 4 batches of 28×28 one-channel images of hashed bytes (padded to 32×32 by the run, as MNIST).
fn data() -> Dataset {
    let n = 4 * BATCH * 28 * 28;
    let pixels = (0..n as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    Dataset::new(pixels, None, 1, 28, 28).expect("a dataset")
}

fn train_step(c: &mut Criterion) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/mnist-vp.json");
    let config = ModelConfig::load(path).expect("models/mnist-vp.json");
    let arch = AdmArch::new(config.adm().expect("an ADM config")).expect("an architecture");
    let data = data();
    let run_config = RunConfig {
        preset: Preset::Vp,
        batch: BATCH,
        lr: 2e-4,
        warmup: 0,
        lr_decay: None,
        ema_decay: 0.999,
        grad_clip: Some(1.0),
        seed: 1,
        adam: AdamWConfig::default(),
        data_sha256: String::new(),
    };
    let mut run = AdmRun::new(&arch, &data, run_config, threads(), None).expect("a run");
    let mut g = c.benchmark_group("train_step");
    g.throughput(Throughput::Elements(BATCH as u64))
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(3))
        .measurement_time(Duration::from_secs(20));
    g.bench_function(format!("mnist-vp/32x32x{BATCH}"), |b| {
        b.iter(|| run.step().expect("a training step"))
    });
    g.finish();
}

criterion_group!(benches, train_step);
criterion_main!(benches);
