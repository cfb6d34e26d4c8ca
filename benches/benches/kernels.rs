//! Single layer kernels, one thread, the microkernels of `Isa::detected()` (AVX2+FMA or
//! AVX-512F when the CPU has them):
//! - `conv_forward`: [`Conv2d::forward_with`] at 128→128 3×3 on 32×32 (the direct path) and
//!   64×64 (packed im2col), and Winograd F(2×2) and F(4×4) on the same 32×32 layer;
//! - `conv_backward`: [`Conv2d::backward_input`] and [`Conv2d::backward_params`] of the
//!   32×32 layer, and the Winograd weight gradient;
//! - `group_norm`: [`GroupNorm::forward`] and [`GroupNorm::backward`] with FiLM and SiLU,
//!   128 channels in 32 groups on 32×32;
//! - `distance`: the training-set denoiser's two passes over a block of 64 MNIST-sized images
//!   (784 elements): [`squared_distances`] and [`add_weighted_rows`] (all weights nonzero).
//!
//! Throughput is in FLOP (2 × MACs of the direct convolution) or elements per second:
//! `cargo bench -p tweedie-benches --bench kernels` (filter with e.g. `-- conv_forward`).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tweedie_kernels::distance::{add_weighted_rows, squared_distances};
use tweedie_kernels::{
    Conv2d, ConvGrads, ConvParams, GroupNorm, Isa, Map, MapMut, NormAffine, NormGrads, WeightsRef,
    Winograd,
};

/// Values in [−0.5, 0.5) from a multiplicative hash (no RNG dependency).
fn data(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i.wrapping_add(seed) * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect()
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: just detected.
        unsafe { tweedie_kernels::enable_avx2_fma() };
    }
    Isa::detected()
}

/// The 3×3 'same' convolution of `c` channels.
fn conv3(c: usize) -> Conv2d {
    Conv2d {
        c_in: c,
        c_out: c,
        kernel: 3,
        stride: 1,
        pad: 1,
    }
}

fn conv_forward(cr: &mut Criterion) {
    let isa = isa();
    let mut g = cr.benchmark_group("conv_forward");
    let (c, conv) = (128, conv3(128));
    let (wt, b) = (data(c * c * 9, 2), data(c, 3));
    let p = ConvParams {
        weight: WeightsRef::F32(&wt),
        bias: &b,
    };
    for n in [32, 64] {
        let x = data(c * n * n, 1);
        let mut out = vec![0.0; c * n * n];
        let mut s = vec![0.0; conv.scratch_len(n, n)];
        g.throughput(Throughput::Elements(2 * (c * c * 9 * n * n) as u64));
        g.bench_function(BenchmarkId::new("direct", n), |bch| {
            bch.iter(|| {
                conv.forward_with(isa, Map::new(&x, n, n), p, 0..c, &mut out, &mut s)
                    .expect("forward")
            })
        });
    }
    let n = 32;
    let x = data(c * n * n, 1);
    let mut out = vec![0.0; c * n * n];
    g.throughput(Throughput::Elements(2 * (c * c * 9 * n * n) as u64));
    for (name, wg) in winograd_forms(&conv) {
        let mut u = vec![0.0; wg.weights_len()];
        wg.transform_weights(&wt, &mut u).expect("transform");
        let mut s = vec![0.0; wg.scratch_len(n, n)];
        g.bench_function(BenchmarkId::new(name, n), |bch| {
            bch.iter(|| {
                wg.forward(isa, Map::new(&x, n, n), &u, Some(&b), &mut out, &mut s)
                    .expect("forward")
            })
        });
    }
    g.finish();
}

/// F(2×2, 3×3) and F(4×4, 3×3) of a layer.
fn winograd_forms(conv: &Conv2d) -> [(&'static str, Winograd); 2] {
    let wg = Winograd::of(conv).expect("a 3×3 'same' layer");
    [("winograd2x2", wg), ("winograd4x4", wg.with_4x4_tiles())]
}

fn conv_backward(cr: &mut Criterion) {
    let isa = isa();
    let mut g = cr.benchmark_group("conv_backward");
    let (c, n, conv) = (128, 32, conv3(128));
    let (x, wt, dout) = (data(c * n * n, 1), data(c * c * 9, 2), data(c * n * n, 4));
    let (mut dx, mut dw, mut db) = (vec![0.0; c * n * n], vec![0.0; c * c * 9], vec![0.0; c]);
    let mut s = vec![0.0; conv.backward_scratch_len(n, n)];
    g.throughput(Throughput::Elements(2 * (c * c * 9 * n * n) as u64));
    g.bench_function(BenchmarkId::new("input", n), |bch| {
        bch.iter(|| {
            let dinp = MapMut::new(&mut dx, n, n);
            let w = WeightsRef::F32(&wt);
            conv.backward_input(isa, dinp, &dout, w, 0..c, &mut s)
                .expect("backward_input")
        })
    });
    g.bench_function(BenchmarkId::new("params", n), |bch| {
        bch.iter(|| {
            let grads = ConvGrads {
                dweight: &mut dw,
                dbias: &mut db,
            };
            conv.backward_params(isa, grads, &dout, Map::new(&x, n, n), 0..c, &mut s)
                .expect("backward_params")
        })
    });
    for (name, wg) in winograd_forms(&conv) {
        let mut s = vec![0.0; wg.backward_scratch_len(n, n)];
        g.bench_function(BenchmarkId::new(format!("params-{name}"), n), |bch| {
            bch.iter(|| {
                let grads = ConvGrads {
                    dweight: &mut dw,
                    dbias: &mut db,
                };
                wg.backward_params(isa, grads, &dout, Map::new(&x, n, n), &mut s)
                    .expect("backward_params")
            })
        });
    }
    g.finish();
}

fn group_norm(cr: &mut Criterion) {
    isa();
    let mut g = cr.benchmark_group("group_norm");
    let (c, hw, groups) = (128, 32 * 32, 32);
    let norm = GroupNorm {
        channels: c,
        hw,
        groups,
        eps: 1e-5,
        silu: true,
    };
    let (x, dout) = (data(c * hw, 1), data(c * hw, 2));
    let (gamma, beta, scale, shift) = (data(c, 3), data(c, 4), data(c, 5), data(c, 6));
    let p = NormAffine {
        gamma: &gamma,
        beta: &beta,
        film: Some((&scale, &shift)),
    };
    let mut y = vec![0.0; c * hw];
    g.throughput(Throughput::Elements((c * hw) as u64));
    g.bench_function("forward", |bch| {
        bch.iter(|| norm.forward(&x, &p, 0..groups, &mut y).expect("forward"))
    });
    let mut dx = vec![0.0; c * hw];
    let mut d = [(); 4].map(|_| vec![0.0; c]);
    g.bench_function("backward", |bch| {
        bch.iter(|| {
            let [dgamma, dbeta, dscale, dshift] = &mut d;
            let grads = NormGrads {
                dx: &mut dx,
                dgamma,
                dbeta,
                dfilm: Some((dscale, dshift)),
            };
            norm.backward(grads, &dout, &x, &p, 0..groups)
                .expect("backward")
        })
    });
    g.finish();
}

fn distance(cr: &mut Criterion) {
    isa();
    let mut g = cr.benchmark_group("distance");
    let (dim, n) = (784, 64);
    let (x, images) = (data(dim, 1), data(n * dim, 2));
    let mut d = vec![0.0f64; n];
    g.throughput(Throughput::Elements((n * dim) as u64));
    g.bench_function("squared_distances", |b| {
        b.iter(|| squared_distances(&x, &images, &mut d).unwrap())
    });
    let weights: Vec<f64> = (0..n).map(|i| 1.0 + i as f64 * 1e-3).collect();
    let mut acc = vec![0.0f64; dim];
    g.bench_function("add_weighted_rows", |b| {
        b.iter(|| add_weighted_rows(&mut acc, &weights, &images).unwrap())
    });
    g.finish();
}

criterion_group!(benches, conv_forward, conv_backward, group_norm, distance);
criterion_main!(benches);
