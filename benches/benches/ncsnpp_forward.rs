//! The NCSN++ forward pass on the CPU: score_sde's FFHQ-256 network (random weights), 256×256,
//! batch 1, with the 3×3 convolutions direct and in their default (`--conv auto`, Winograd)
//! forms. Throughput in FLOP (2 × MACs, direct-equivalent) per second; 10 flat samples of
//! one forward each: `cargo bench -p tweedie-benches --bench ncsnpp_forward`. The side-by-side
//! comparison with PyTorch is `scripts/pytorch/compare.sh --config ncsnpp-ffhq256`.

use std::time::Duration;

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use tweedie_nn::model::layers::ConvPolicy;
use tweedie_nn::model::ncsnpp::{Input, NcsnppArch, NcsnppConfig, NcsnppModel, Output};
use tweedie_nn::weights::{Precision, Weights};

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn ffhq256(c: &mut Criterion) {
    let config = NcsnppConfig::ffhq256();
    let arch = NcsnppArch::new(&config).expect("a valid architecture");
    let weights = Weights::random(&arch.state_dict(), Precision::F32, 0);
    let size = config.image_size;
    let x: Vec<f32> = (0..arch.channels() * size * size)
        .map(|i| tweedie_core::noise::gaussian(1, 0, tweedie_core::noise::COUNTER_INIT, i as u64))
        .collect();
    let sigma = [10.0];
    let input = Input {
        x: &x,
        sigma: &sigma,
        batch: 1,
    };
    let mut out = vec![0.0f32; x.len()];
    let mut g = c.benchmark_group("ncsnpp_ffhq256");
    g.throughput(Throughput::Elements(2 * arch.macs()))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(20));
    for (name, policy) in [("direct", ConvPolicy::Direct), ("auto", ConvPolicy::Auto)] {
        let mut model =
            NcsnppModel::with_policy(&arch, &weights, threads(), policy).expect("a model");
        g.bench_function(BenchmarkId::new(format!("f32-{name}"), "256x256x1"), |b| {
            b.iter(|| {
                model
                    .forward(&input, Output::Score, &mut out)
                    .expect("forward")
            })
        });
    }
    g.finish();
}

criterion_group!(benches, ffhq256);
criterion_main!(benches);
