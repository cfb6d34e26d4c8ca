//! The README's main job as a whole: `host sample --preset vp-uncond-sigmoid --n 64` (the
//! bundled MNIST VP model, K = 100, batch = the default), with the convolutions direct and in
//! their default (`--conv auto`, Winograd) forms. Throughput in images per second. Each run
//! takes tens of seconds: `cargo bench -p tweedie-benches --bench sampling` (10 samples per
//! policy). The PyTorch counterpart, interleaved round by round, is
//! `scripts/pytorch/sampling.sh`. Threads: `TWEEDIE_THREADS` if set, else all cores.

use std::time::Duration;

use clap::Parser;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tweedie_host::cli::Cli;

const N: usize = 64;

fn threads() -> usize {
    std::env::var("TWEEDIE_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn sampling(c: &mut Criterion) {
    let root = std::env::temp_dir().join(format!("tweedie-bench-sampling-{}", std::process::id()));
    let mut g = c.benchmark_group("main_job");
    g.throughput(Throughput::Elements(N as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(60));
    let mut run = 0;
    for conv in ["direct", "auto"] {
        g.bench_function(format!("64x32x32-{conv}"), |b| {
            b.iter(|| {
                run += 1;
                let out = root.join(run.to_string());
                let (n, t, out) = (
                    N.to_string(),
                    threads().to_string(),
                    out.display().to_string(),
                );
                let args = [
                    "host",
                    "sample",
                    "--preset",
                    "vp-uncond-sigmoid",
                    "--n",
                    &n,
                    "--threads",
                    &t,
                    "--conv",
                    conv,
                    "--out",
                    &out,
                    "--quiet",
                ];
                let code = tweedie_host::cli::run(Cli::parse_from(args)).expect("a sampling run");
                assert_eq!(code, std::process::ExitCode::SUCCESS);
                std::fs::remove_dir_all(&out).expect("the run's folder");
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&root);
}

criterion_group!(benches, sampling);
criterion_main!(benches);
