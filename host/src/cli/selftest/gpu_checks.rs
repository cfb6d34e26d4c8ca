//! The checks of `host selftest` that need the CUDA backend: each kernel against the CPU path
//! on random inputs, the template update (one step and 100 steps), and timings.

use std::time::Instant;

use anyhow::Result;
use serde_json::json;
use tweedie_core::noise;
use tweedie_core::sampler::{self, Chains, UpdateCoefficients};
use tweedie_kernels::{Conv2d, QkvOrder, WeightsRef};

use super::{Report, SelftestArgs};
use crate::backend::cuda::gpu::{CudaBackend, DevWeights};

/// The core's and kernels' errors (no_std, no `std::error::Error`) as anyhow errors.
trait OrAnyhow<T> {
    fn or_anyhow(self) -> Result<T>;
}

impl<T, E: std::fmt::Display> OrAnyhow<T> for std::result::Result<T, E> {
    fn or_anyhow(self) -> Result<T> {
        self.map_err(|e| anyhow::anyhow!("CPU reference: {e}"))
    }
}

/// Standard normal test data: stream `tag` of the core's counter-based noise (seed 7).
fn randn(tag: u64, n: usize) -> Vec<f32> {
    let mut v = vec![0.0; n];
    noise::fill_gaussian(&mut v, 7, tag, 0, 0);
    v
}

/// Largest |a − b| and the same relative to max |b| (1 when b is all zeros).
fn errors(gpu: &[f32], cpu: &[f32]) -> (f64, f64) {
    let max_ref = cpu.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let max_err = gpu.iter().zip(cpu).fold(0f64, |m, (&a, &b)| {
        let d = (a as f64 - b as f64).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    });
    let len_ok = gpu.len() == cpu.len();
    let rel = if max_ref > 0.0 {
        max_err / max_ref
    } else {
        max_err
    };
    if len_ok {
        (max_err, rel)
    } else {
        (f64::INFINITY, f64::INFINITY)
    }
}

/// Records one kernel comparison: pass when the error relative to max |cpu| is within `tol`.
fn compare(
    r: &mut Report,
    name: &str,
    shape: &str,
    gpu: &[f32],
    cpu: &[f32],
    tol: f64,
) -> Result<()> {
    let (abs, rel) = errors(gpu, cpu);
    let pass = rel <= tol;
    r.check(
        "kernels",
        json!({"kernel": name, "shape": shape, "max_abs_err": abs, "max_rel_err": rel, "tol_rel": tol}),
        pass,
    )
}

/// Runs every check; individual failures are recorded, errors (launch, copy) abort.
pub fn run(gpu: &CudaBackend, args: &SelftestArgs, r: &mut Report) -> Result<()> {
    println!(
        "gpu: {} (compute {}), driver API {}, {:.1} GiB",
        gpu.info.name,
        gpu.info.compute_capability,
        gpu.info.driver,
        gpu.info.total_mem as f64 / (1u64 << 30) as f64
    );
    r.set("device", serde_json::to_value(&gpu.info)?)?;
    sampling_kernels(gpu, r)?;
    elementwise(gpu, r)?;
    linear(gpu, r)?;
    group_norm(gpu, r)?;
    conv(gpu, r)?;
    attention(gpu, r)?;
    template_run(gpu, r)?;
    r.set(
        "adm_small_parity",
        json!({"status": "skipped", "reason": "the full ADM forward does not run on the device yet",
               "golden": args.golden.as_ref().map(|p| p.display().to_string())}),
    )?;
    if !args.no_timings {
        timings(gpu, r)?;
    }
    Ok(())
}

fn sampling_kernels(gpu: &CudaBackend, r: &mut Report) -> Result<()> {
    let n = 3 * 64 * 64;
    let mut want = vec![0.0; n];
    noise::fill_gaussian(&mut want, 42, 3, 17, 5);
    let mut d = gpu.zeros(n)?;
    gpu.noise(&mut d, 42, 3, 17, 5)?;
    compare(
        r,
        "noise_gaussian_f32",
        "12288",
        &gpu.download(&d)?,
        &want,
        1e-6,
    )?;

    let (batch, len) = (4, 3 * 32 * 32);
    let chains = Chains {
        batch,
        first_chain: 10,
        seed: 9,
    };
    let mut want = vec![0.0; batch * len];
    sampler::init_state(&mut want, chains, 80.0).or_anyhow()?;
    let mut d = gpu.zeros(batch * len)?;
    gpu.init_state(&mut d, len, 80.0, 9, 10)?;
    compare(
        r,
        "init_state_f32",
        "4x3072",
        &gpu.download(&d)?,
        &want,
        1e-6,
    )?;

    // One template step, unconditional and with a likelihood gradient.
    let x0 = randn(1, batch * len);
    let den = randn(2, batch * len);
    let g = randn(3, batch * len);
    let coef = UpdateCoefficients {
        drift: 0.3,
        likelihood: 0.0,
        noise: 0.7,
    };
    let mut want = x0.clone();
    sampler::update_chains(&mut want, &den, &coef, chains, 5).or_anyhow()?;
    let (mut x, dd) = (gpu.upload(&x0)?, gpu.upload(&den)?);
    let mut flag = gpu.upload(&[0u32])?;
    gpu.template_update(&mut x, &dd, None, &mut flag, len, &coef, 9, 10, 5)?;
    compare(
        r,
        "template_update_f32",
        "4x3072 uncond",
        &gpu.download(&x)?,
        &want,
        1e-6,
    )?;

    let coef = UpdateCoefficients {
        likelihood: 0.2,
        ..coef
    };
    let mut want = x0.clone();
    for (c, (xc, (dc, gc))) in want
        .chunks_exact_mut(len)
        .zip(den.chunks_exact(len).zip(g.chunks_exact(len)))
        .enumerate()
    {
        sampler::update_range(xc, dc, Some(gc), &coef, chains.noise(c, 5), 0).or_anyhow()?;
    }
    let (mut x, gd) = (gpu.upload(&x0)?, gpu.upload(&g)?);
    gpu.template_update(&mut x, &dd, Some(&gd), &mut flag, len, &coef, 9, 10, 5)?;
    compare(
        r,
        "template_update_f32",
        "4x3072 cond",
        &gpu.download(&x)?,
        &want,
        1e-6,
    )?;
    let nonfinite = gpu.stream_flag(&flag)?;
    r.check(
        "kernels",
        json!({"kernel": "template_update_f32", "check": "finite flag stays 0", "flag": nonfinite}),
        nonfinite == 0,
    )
}

fn elementwise(gpu: &CudaBackend, r: &mut Report) -> Result<()> {
    let a = randn(4, 100_003)
        .iter()
        .map(|v| 8.0 * v)
        .collect::<Vec<_>>();
    let b = randn(5, a.len());
    let mut want = a.clone();
    tweedie_kernels::silu_inplace(&mut want);
    let mut d = gpu.upload(&a)?;
    gpu.silu(&mut d)?;
    compare(r, "silu_f32", "100003", &gpu.download(&d)?, &want, 1e-6)?;
    let mut want = a.clone();
    tweedie_kernels::add_inplace(&mut want, &b);
    let mut d = gpu.upload(&a)?;
    gpu.add(&mut d, &gpu.upload(&b)?)?;
    compare(r, "add_f32", "100003", &gpu.download(&d)?, &want, 0.0)
}

fn linear(gpu: &CudaBackend, r: &mut Report) -> Result<()> {
    let (batch, nin, nout) = (3, 515, 260);
    let x = randn(6, batch * nin);
    let w = randn(7, nout * nin);
    let bias = randn(8, nout);
    for f16 in [false, true] {
        let wh: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
        let wref = if f16 {
            WeightsRef::F16(&wh)
        } else {
            WeightsRef::F32(&w)
        };
        let mut want = vec![0.0; batch * nout];
        for (xb, yb) in x.chunks_exact(nin).zip(want.chunks_exact_mut(nout)) {
            tweedie_kernels::linear(xb, wref, &bias, nin, 0..nout, yb).or_anyhow()?;
        }
        let dw = gpu.upload_weights(&w, f16)?;
        let mut y = gpu.zeros(batch * nout)?;
        gpu.linear(&gpu.upload(&x)?, &dw, &gpu.upload(&bias)?, &mut y, batch)?;
        let name = if f16 { "linear_f16w" } else { "linear_f32" };
        compare(r, name, "3x515->260", &gpu.download(&y)?, &want, 1e-5)?;
    }
    Ok(())
}

fn group_norm(gpu: &CudaBackend, r: &mut Report) -> Result<()> {
    let (batch, channels, hw, groups) = (2, 64, 17 * 19, 32);
    // An offset mean tests the split-mean centring.
    let x: Vec<f32> = randn(9, batch * channels * hw)
        .iter()
        .map(|v| 3.0 * v + 5.0)
        .collect();
    let gamma = randn(10, channels);
    let beta = randn(11, channels);
    let scale = randn(12, batch * channels);
    let shift = randn(13, batch * channels);
    for film in [false, true] {
        let mut want = vec![0.0; x.len()];
        for b in 0..batch {
            let n = channels * hw;
            let f = film.then(|| {
                (
                    &scale[b * channels..(b + 1) * channels],
                    &shift[b * channels..(b + 1) * channels],
                )
            });
            tweedie_kernels::group_norm(
                &x[b * n..(b + 1) * n],
                channels,
                hw,
                groups,
                1e-5,
                &gamma,
                &beta,
                f,
                film,
                0..groups,
                &mut want[b * n..(b + 1) * n],
            )
            .or_anyhow()?;
        }
        let (sd, td) = (gpu.upload(&scale)?, gpu.upload(&shift)?);
        let mut out = gpu.zeros(x.len())?;
        gpu.group_norm(
            &gpu.upload(&x)?,
            &gpu.upload(&gamma)?,
            &gpu.upload(&beta)?,
            film.then_some((&sd, &td)),
            &mut out,
            batch,
            hw,
            groups,
            1e-5,
            film,
        )?;
        let shape = if film {
            "2x64x323 g32 +FiLM+SiLU"
        } else {
            "2x64x323 g32"
        };
        compare(
            r,
            "group_norm_f32",
            shape,
            &gpu.download(&out)?,
            &want,
            1e-5,
        )?;
    }
    Ok(())
}

fn conv(gpu: &CudaBackend, r: &mut Report) -> Result<()> {
    let cases = [
        (
            Conv2d {
                c_in: 19,
                c_out: 70,
                kernel: 3,
                stride: 1,
                pad: 1,
            },
            21,
            18,
        ),
        (
            Conv2d {
                c_in: 32,
                c_out: 64,
                kernel: 3,
                stride: 2,
                pad: 1,
            },
            16,
            16,
        ),
        (
            Conv2d {
                c_in: 48,
                c_out: 33,
                kernel: 1,
                stride: 1,
                pad: 0,
            },
            9,
            13,
        ),
        (
            Conv2d {
                c_in: 3,
                c_out: 128,
                kernel: 3,
                stride: 1,
                pad: 1,
            },
            32,
            32,
        ),
    ];
    let batch = 2;
    for (i, (c, h, w)) in cases.into_iter().enumerate() {
        let (oh, ow) = c.out_size(h, w);
        let x = randn(20 + i as u64, batch * c.c_in * h * w);
        let wt = randn(30 + i as u64, c.c_out * c.c_in * c.kernel * c.kernel);
        let bias = randn(40 + i as u64, c.c_out);
        for f16 in [false, true] {
            let wh: Vec<half::f16> = wt.iter().map(|&v| half::f16::from_f32(v)).collect();
            let wref = if f16 {
                WeightsRef::F16(&wh)
            } else {
                WeightsRef::F32(&wt)
            };
            let mut want = vec![0.0; batch * c.c_out * oh * ow];
            let mut scratch = vec![0.0; c.scratch_len(h, w)];
            let (ni, no) = (c.c_in * h * w, c.c_out * oh * ow);
            for b in 0..batch {
                c.forward(
                    &x[b * ni..(b + 1) * ni],
                    h,
                    w,
                    wref,
                    &bias,
                    0..c.c_out,
                    &mut want[b * no..(b + 1) * no],
                    &mut scratch,
                )
                .or_anyhow()?;
            }
            let dw = gpu.upload_weights(&wt, f16)?;
            let mut out = gpu.zeros(want.len())?;
            gpu.conv2d(
                &c,
                &gpu.upload(&x)?,
                h,
                w,
                &dw,
                &gpu.upload(&bias)?,
                &mut out,
                batch,
            )?;
            let name = if f16 { "conv2d_f16w" } else { "conv2d_f32" };
            let shape = format!(
                "2x{}x{h}x{w} k{} s{} -> {}",
                c.c_in, c.kernel, c.stride, c.c_out
            );
            compare(r, name, &shape, &gpu.download(&out)?, &want, 1e-5)?;
        }
    }
    Ok(())
}

fn attention(gpu: &CudaBackend, r: &mut Report) -> Result<()> {
    let (batch, channels, t, heads) = (2, 64, 100, 4);
    let qkv = randn(50, batch * 3 * channels * t);
    for order in [QkvOrder::Legacy, QkvOrder::New] {
        let mut want = vec![0.0; batch * channels * t];
        let mut scratch = vec![0.0; tweedie_kernels::attention_scratch_len(t)];
        let (ni, no) = (3 * channels * t, channels * t);
        for b in 0..batch {
            tweedie_kernels::qkv_attention(
                &qkv[b * ni..(b + 1) * ni],
                channels,
                t,
                heads,
                order,
                0..heads,
                &mut want[b * no..(b + 1) * no],
                &mut scratch,
            )
            .or_anyhow()?;
        }
        let mut s = gpu.zeros(CudaBackend::attention_scratch_len(batch, heads, t))?;
        let mut out = gpu.zeros(want.len())?;
        gpu.attention(
            &gpu.upload(&qkv)?,
            &mut s,
            &mut out,
            batch,
            channels,
            t,
            heads,
            order,
        )?;
        compare(
            r,
            "attention_f32",
            &format!("2x64x100 h4 {order:?}"),
            &gpu.download(&out)?,
            &want,
            1e-5,
        )?;
    }
    Ok(())
}

/// 100 template steps with a fixed "denoised" image (the update alone, no network): the CPU
/// and GPU chains must stay together (drift = largest difference after the run).
fn template_run(gpu: &CudaBackend, r: &mut Report) -> Result<()> {
    let (batch, len, steps) = (2, 3 * 64 * 64, 100u64);
    let chains = Chains {
        batch,
        first_chain: 0,
        seed: 123,
    };
    let den = randn(60, batch * len);
    let mut cpu = vec![0.0; batch * len];
    sampler::init_state(&mut cpu, chains, 1.0).or_anyhow()?;
    let mut x = gpu.zeros(batch * len)?;
    gpu.init_state(&mut x, len, 1.0, 123, 0)?;
    let dd = gpu.upload(&den)?;
    let mut flag = gpu.upload(&[0u32])?;
    for k in 0..steps {
        let coef = step_coef(k, steps);
        sampler::update_chains(&mut cpu, &den, &coef, chains, k).or_anyhow()?;
        gpu.template_update(&mut x, &dd, None, &mut flag, len, &coef, 123, 0, k)?;
        if k == 0 {
            let (abs, _) = errors(&gpu.download(&x)?, &cpu);
            r.check(
                "template",
                json!({"check": "one step", "max_abs_err": abs}),
                abs <= 1e-5,
            )?;
        }
    }
    let (abs, rel) = errors(&gpu.download(&x)?, &cpu);
    r.check(
        "template",
        json!({"check": "100 steps (drift)", "max_abs_err": abs, "max_rel_err": rel}),
        rel <= 1e-4,
    )
}

/// A schedule-like step: drift rising to 0.5, noise falling to 0.
fn step_coef(k: u64, steps: u64) -> UpdateCoefficients {
    let s = k as f32 / steps as f32;
    UpdateCoefficients {
        drift: 0.05 + 0.45 * s,
        likelihood: 0.0,
        noise: 0.5 * (1.0 - s),
    }
}

/// Median seconds of `iters` runs of `f` (each synchronised), after one warm-up.
fn time(gpu: &CudaBackend, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    gpu.synchronize()?;
    let mut t = Vec::new();
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        gpu.synchronize()?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// FFHQ-256 (adm-ffhq256) shapes: the largest conv (128 → 128 at 256², the model's costliest
/// layer kind), GroupNorm+SiLU at that size, and template steps/s at batch 1 and 8.
fn timings(gpu: &CudaBackend, r: &mut Report) -> Result<()> {
    for batch in [1usize, 8] {
        let c = Conv2d {
            c_in: 128,
            c_out: 128,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let (h, w) = (256, 256);
        let x = gpu.upload(&randn(70, batch * 128 * h * w))?;
        let dw: DevWeights = gpu.upload_weights(&randn(71, 128 * 128 * 9), false)?;
        let bias = gpu.upload(&randn(72, 128))?;
        let mut out = gpu.zeros(batch * 128 * h * w)?;
        let s = time(gpu, 5, || {
            gpu.conv2d(&c, &x, h, w, &dw, &bias, &mut out, batch)
        })?;
        let gflops = 2.0 * (batch * 128 * 128 * 9 * h * w) as f64 / s / 1e9;
        println!(
            "time: conv2d 128->128 3x3 at 256x256, batch {batch}: {:.3} ms, {gflops:.0} GFLOP/s",
            s * 1e3
        );
        r.check("timings", json!({"what": "conv2d_f32 128->128 k3 256x256", "batch": batch, "seconds": s, "gflops": gflops}), true)?;

        let gamma = gpu.upload(&randn(73, 128))?;
        let beta = gpu.upload(&randn(74, 128))?;
        let mut y = gpu.zeros(batch * 128 * h * w)?;
        let s = time(gpu, 5, || {
            gpu.group_norm(
                &out,
                &gamma,
                &beta,
                None,
                &mut y,
                batch,
                h * w,
                32,
                1e-5,
                true,
            )
        })?;
        r.check(
            "timings",
            json!({"what": "group_norm_f32+silu 128x256x256", "batch": batch, "seconds": s}),
            true,
        )?;

        let n = batch * 3 * h * w;
        let mut xs = gpu.zeros(n)?;
        gpu.init_state(&mut xs, 3 * h * w, 1.0, 1, 0)?;
        let dd = gpu.upload(&randn(75, n))?;
        let mut flag = gpu.upload(&[0u32])?;
        let coef = step_coef(10, 100);
        let mut k = 0;
        let s = time(gpu, 20, || {
            k += 1;
            gpu.template_update(&mut xs, &dd, None, &mut flag, 3 * h * w, &coef, 1, 0, k)
        })?;
        println!(
            "time: template update 3x256x256, batch {batch}: {:.3} ms, {:.0} updates/s",
            s * 1e3,
            1.0 / s
        );
        r.check("timings", json!({"what": "template_update_f32 3x256x256 (update only, no forward)", "batch": batch, "seconds": s, "steps_per_s": 1.0 / s}), true)?;
    }
    r.set(
        "ffhq256_forward",
        json!({"status": "skipped", "reason": "the full ADM forward does not run on the device yet; see timings for its layers"}),
    )
}
