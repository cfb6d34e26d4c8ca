//! The ADM forward pass on the CPU (random weights of the right shapes), with the 3×3
//! convolutions direct and in their default (`--conv auto`, Winograd) forms:
//! - `adm_small`: the golden small config, 32×32, batch 2 (PyTorch ≈ 20 ms);
//! - `ffhq256`: the DPS FFHQ-256 network, 256×256, batch 1 and 8 (f32 weights), batch 1 with
//!   f16 weight storage.
//!
//! Throughput is reported in FLOP (2 × MACs of the config, direct-equivalent) per second. The
//! FFHQ group uses 10 flat samples of one forward each (criterion warns that they exceed the
//! 20 s target; a larger target would make it run several forwards per sample), so the whole
//! bench takes ~10 minutes; filter with e.g. `-- ffhq256/f32-auto`:
//! `cargo bench -p tweedie-benches --bench adm_forward`. The side-by-side comparison with
//! PyTorch is `scripts/pytorch/compare.sh` (and `sampling.sh` for whole sampling runs).

use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use tweedie_nn::model::adm::{AdmArch, AdmConfig, AdmModel, Input};
use tweedie_nn::model::config::ModelConfig;
use tweedie_nn::model::layers::ConvPolicy;
use tweedie_nn::weights::{Precision, Weights};

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn small_config() -> AdmConfig {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../golden/adm_small/config.json"
    ));
    let config = ModelConfig::load(path.to_str().expect("a UTF-8 path")).expect("adm_small config");
    config.adm().expect("an ADM config").clone()
}

/// Times `AdmModel::forward` on a fixed input.
fn run(
    c: &mut Criterion,
    group: &str,
    id: &str,
    config: &AdmConfig,
    size: usize,
    (batch, precision, policy): (usize, Precision, ConvPolicy),
) {
    let arch = AdmArch::new(config).expect("a valid architecture");
    let weights = Weights::random(&arch.state_dict(), precision, 0);
    let mut model =
        AdmModel::with_policy(&arch, &weights, size, size, threads(), policy).expect("a model");
    let x: Vec<f32> = (0..batch * config.in_channels * size * size)
        .map(|i| tweedie_core::noise::gaussian(1, 0, tweedie_core::noise::COUNTER_INIT, i as u64))
        .collect();
    let t: Vec<f32> = (0..batch).map(|i| (500 + i) as f32).collect();
    let input = Input {
        x: &x,
        t: &t,
        batch,
        height: size,
        width: size,
    };
    let mut out = vec![0.0f32; batch * config.out_channels * size * size];
    let flops = 2 * arch.macs(size, size) * batch as u64;
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(flops));
    if size >= 128 {
        g.sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(20));
    } else {
        g.measurement_time(Duration::from_secs(5));
    }
    g.bench_function(
        BenchmarkId::new(id, format!("{size}x{size}x{batch}")),
        |b| b.iter(|| model.forward(&input, &mut out).expect("forward")),
    );
    g.finish();
}

const POLICIES: [(&str, ConvPolicy); 2] =
    [("direct", ConvPolicy::Direct), ("auto", ConvPolicy::Auto)];

fn adm_small(c: &mut Criterion) {
    for (name, policy) in POLICIES {
        let id = format!("f32-{name}");
        let what = (2, Precision::F32, policy);
        run(c, "adm_small", &id, &small_config(), 32, what);
    }
}

fn ffhq256(c: &mut Criterion) {
    let config = AdmConfig::ffhq256();
    for batch in [1, 8] {
        for (name, policy) in POLICIES {
            let id = format!("f32-{name}");
            run(
                c,
                "ffhq256",
                &id,
                &config,
                256,
                (batch, Precision::F32, policy),
            );
        }
    }
    let f16 = (1, Precision::F16, ConvPolicy::Auto);
    run(c, "ffhq256", "f16-auto", &config, 256, f16);
}

criterion_group!(benches, adm_small, ffhq256);
criterion_main!(benches);
