//! The checks of `host selftest`, generic over the device under test ([`DeviceOps`]) with the
//! CPU reference ops ([`ReferenceOps`]) as the truth: every kernel on random inputs, one
//! template step and a 100-step run (drift), the ADM forward against the adm_small golden
//! output, a short ADM sampling run against the CPU, and timings (the FFHQ-256 forward at
//! batch 1 and 8, sampling steps/s). The CLI runs them on the GPU only; the unit test below
//! runs them with the reference ops on both sides, which exercises every line of the harness
//! on machines without a GPU.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tweedie_core::sampler::UpdateCoefficients;
use tweedie_core::tweedie::{NetKind, NetOutput, Parameterization};
use tweedie_core::{noise, Preset};
use tweedie_kernels::{Conv2d, QkvOrder, WeightsRef};

use super::Report;
use crate::outln;
use crate::run::device::DeviceSampler;
use crate::run::plan::FirstSteps;
use tweedie_nn::backend::ops::{
    AttentionOp, Chains, ChannelCopy, DeviceOps, GroupNormOp, LinearOp, MapBatch, NetReadout,
    UpdateStep,
};
use tweedie_nn::backend::reference::ReferenceOps;
use tweedie_nn::denoiser::network::NoiseInputKind;
use tweedie_nn::model::adm::device::DeviceAdm;
use tweedie_nn::model::adm::{AdmArch, AdmConfig};
use tweedie_nn::model::config::ModelConfig;
use tweedie_nn::tensors::SafetensorsFile;
use tweedie_nn::weights::{Precision, Weights};

/// What to run besides the kernel checks.
pub struct Plan<'a> {
    /// The adm_small golden folder (parity and the sampling run), if any.
    pub golden: Option<&'a Path>,
    /// The network config timed, with its batches (none: no timings).
    pub timing: Option<(AdmConfig, Vec<usize>)>,
}

/// Standard normal test data: stream `tag` of the core's counter-based noise (seed 7).
fn randn(tag: u64, n: usize) -> Vec<f32> {
    let mut v = vec![0.0; n];
    noise::fill_gaussian(&mut v, 7, tag, 0, 0);
    v
}

/// The first `n` floats of a buffer.
fn read<O: DeviceOps>(o: &O, b: &O::Buf, n: usize) -> Result<Vec<f32>> {
    let mut v = vec![0.0; n];
    o.read(b, &mut v)?;
    Ok(v)
}

/// Largest |a − b| and the same relative to max |b| (1 when b is all zeros).
fn errors(dev: &[f32], cpu: &[f32]) -> (f64, f64) {
    if dev.len() != cpu.len() {
        return (f64::INFINITY, f64::INFINITY);
    }
    let max_ref = cpu.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
    let max_err = dev.iter().zip(cpu).fold(0f64, |m, (&a, &b)| {
        let d = (a as f64 - b as f64).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            m.max(d)
        }
    });
    let rel = if max_ref > 0.0 {
        max_err / max_ref
    } else {
        max_err
    };
    (max_err, rel)
}

/// Records one comparison: pass when the error relative to max |cpu| is within `tol`.
fn compare(
    r: &mut Report,
    name: &str,
    shape: &str,
    dev: &[f32],
    cpu: &[f32],
    tol: f64,
) -> Result<()> {
    let (abs, rel) = errors(dev, cpu);
    r.check(
        "kernels",
        json!({"kernel": name, "shape": shape, "max_abs_err": abs, "max_rel_err": rel, "tol_rel": tol}),
        rel <= tol,
    )
}

/// Runs every check; individual failures are recorded, errors (launch, copy) abort.
pub fn run<O: DeviceOps>(dev: &O, plan: &Plan<'_>, r: &mut Report) -> Result<()> {
    let cpu = ReferenceOps;
    sampling_kernels(dev, &cpu, r)?;
    elementwise(dev, &cpu, r)?;
    linear(dev, &cpu, r)?;
    group_norm(dev, &cpu, r)?;
    conv(dev, &cpu, r)?;
    attention(dev, &cpu, r)?;
    template_run(dev, &cpu, r)?;
    match plan.golden {
        Some(dir) => {
            adm_small_parity(dev, dir, r)?;
            sampling_run(dev, &cpu, dir, r)?;
        }
        None => r.set(
            "adm_small_parity",
            json!({"status": "skipped", "reason": "no --golden folder given"}),
        )?,
    }
    if let Some((config, batches)) = &plan.timing {
        timings(dev, config, batches, r)?;
    }
    Ok(())
}

/// Kernels of the sampling loop: noise, x₀, the update, D from the network output, scaling.
fn sampling_kernels<O: DeviceOps>(dev: &O, cpu: &ReferenceOps, r: &mut Report) -> Result<()> {
    fn noise_case<O: DeviceOps>(o: &O) -> Result<Vec<f32>> {
        let mut b = o.alloc(12288)?;
        o.fill_noise(&mut b, 12288, 42, 3, 17, 5)?;
        read(o, &b, 12288)
    }
    compare(
        r,
        "noise_gaussian_f32",
        "12288",
        &noise_case(dev)?,
        &noise_case(cpu)?,
        1e-6,
    )?;

    let (batch, len) = (4, 3 * 32 * 32);
    let n = batch * len;
    fn init_case<O: DeviceOps>(o: &O, n: usize, len: usize) -> Result<Vec<f32>> {
        let mut b = o.alloc(n)?;
        o.init_state(&mut b, Chains { n, chain_len: len }, 80.0, 9, 10)?;
        read(o, &b, n)
    }
    compare(
        r,
        "init_state_f32",
        "4x3072",
        &init_case(dev, n, len)?,
        &init_case(cpu, n, len)?,
        1e-6,
    )?;

    let (x0, den, g) = (randn(1, n), randn(2, n), randn(3, n));
    for (likelihood, shape) in [(0.0, "4x3072 uncond"), (0.2, "4x3072 cond")] {
        let step = UpdateStep {
            coef: UpdateCoefficients {
                drift: 0.3,
                likelihood,
                noise: 0.7,
            },
            seed: 9,
            first_chain: 10,
            counter: 5,
        };
        let g = (likelihood > 0.0).then_some(&g[..]);
        let (dv, dflag) = update_case(dev, &x0, &den, g, len, &step)?;
        let (cv, _) = update_case(cpu, &x0, &den, g, len, &step)?;
        compare(r, "template_update_f32", shape, &dv, &cv, 1e-6)?;
        r.check(
            "kernels",
            json!({"kernel": "template_update_f32", "check": "non-finite flag stays clear", "flag": dflag}),
            !dflag,
        )?;
    }
    // A non-finite state must raise the flag.
    let mut bad = x0.clone();
    bad[123] = f32::INFINITY;
    let step = UpdateStep {
        coef: UpdateCoefficients {
            drift: 0.1,
            likelihood: 0.0,
            noise: 0.0,
        },
        seed: 1,
        first_chain: 0,
        counter: 0,
    };
    let (_, flag) = update_case(dev, &bad, &den, None, len, &step)?;
    r.check(
        "kernels",
        json!({"kernel": "template_update_f32", "check": "non-finite flag raised by an Inf", "flag": flag}),
        flag,
    )?;

    let net = randn(4, batch * 2 * len);
    for (output, coef) in [
        (NetOutput::Eps, -3.5),
        (NetOutput::Score, 12.25),
        (NetOutput::Denoised, 0.0),
    ] {
        let dv = denoised_case(dev, &x0, &net, len, output, coef)?;
        let cv = denoised_case(cpu, &x0, &net, len, output, coef)?;
        compare(
            r,
            "denoised_from_output_f32",
            &format!("4x3072 of 4x6144 {output:?}"),
            &dv,
            &cv,
            1e-6,
        )?;
    }
    fn scale_case<O: DeviceOps>(o: &O, x: &[f32]) -> Result<Vec<f32>> {
        let src = o.upload(x)?;
        let mut dst = o.alloc(x.len())?;
        o.scale(&mut dst, &src, x.len(), 0.37)?;
        read(o, &dst, x.len())
    }
    compare(
        r,
        "scale_f32",
        "12288",
        &scale_case(dev, &x0)?,
        &scale_case(cpu, &x0)?,
        0.0,
    )
}

fn update_case<O: DeviceOps>(
    o: &O,
    x: &[f32],
    d: &[f32],
    g: Option<&[f32]>,
    len: usize,
    step: &UpdateStep,
) -> Result<(Vec<f32>, bool)> {
    let mut xb = o.upload(x)?;
    let db = o.upload(d)?;
    let gb = g.map(|g| o.upload(g)).transpose()?;
    let chains = Chains {
        n: x.len(),
        chain_len: len,
    };
    let flag = o.template_update(&mut xb, &db, gb.as_ref(), chains, step, true)?;
    Ok((read(o, &xb, x.len())?, flag))
}

fn denoised_case<O: DeviceOps>(
    o: &O,
    x: &[f32],
    net: &[f32],
    len: usize,
    output: NetOutput,
    coef: f64,
) -> Result<Vec<f32>> {
    let (xb, nb) = (o.upload(x)?, o.upload(net)?);
    let mut d = o.alloc(x.len())?;
    let chains = Chains {
        n: x.len(),
        chain_len: len,
    };
    let readout = NetReadout {
        stride: 2 * len,
        output,
        coef,
    };
    o.denoised_from_output(&mut d, &xb, &nb, chains, readout)?;
    read(o, &d, x.len())
}

/// SiLU, add, resampling, channel copy and bias, timestep embedding.
fn elementwise<O: DeviceOps>(dev: &O, cpu: &ReferenceOps, r: &mut Report) -> Result<()> {
    let a: Vec<f32> = randn(4, 100_003).iter().map(|v| 8.0 * v).collect();
    let b = randn(5, a.len());
    fn silu_add<O: DeviceOps>(o: &O, a: &[f32], b: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut x = o.upload(a)?;
        o.silu(&mut x, a.len())?;
        let s = read(o, &x, a.len())?;
        let mut y = o.upload(a)?;
        o.add(&mut y, &o.upload(b)?, a.len())?;
        Ok((s, read(o, &y, a.len())?))
    }
    let ((ds, da), (cs, ca)) = (silu_add(dev, &a, &b)?, silu_add(cpu, &a, &b)?);
    compare(r, "silu_f32", "100003", &ds, &cs, 1e-6)?;
    compare(r, "add_f32", "100003", &da, &ca, 0.0)?;

    let (planes, h, w) = (6, 10, 14);
    let x = randn(6, planes * h * w);
    fn resample<O: DeviceOps>(
        o: &O,
        x: &[f32],
        p: usize,
        h: usize,
        w: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let xb = o.upload(x)?;
        let (mut up, mut down) = (o.alloc(p * 4 * h * w)?, o.alloc(p * h * w / 4)?);
        o.upsample2x(&xb, &mut up, p, h, w)?;
        o.avg_pool2x2(&xb, &mut down, p, h, w)?;
        Ok((read(o, &up, p * 4 * h * w)?, read(o, &down, p * h * w / 4)?))
    }
    let ((du, dd), (cu, cd)) = (
        resample(dev, &x, planes, h, w)?,
        resample(cpu, &x, planes, h, w)?,
    );
    compare(r, "upsample_nearest2x_f32", "6x10x14", &du, &cu, 0.0)?;
    compare(r, "avg_pool2x2_f32", "6x10x14", &dd, &cd, 0.0)?;

    // [2, 3, 35] into channels 4..7 of [2, 9, 35], then a per-(image, channel) bias.
    let (batch, hw) = (2, 35);
    let src = randn(7, batch * 3 * hw);
    let base = randn(8, batch * 9 * hw);
    let bias = randn(9, 2 * 20);
    fn copy_bias<O: DeviceOps>(o: &O, src: &[f32], base: &[f32], bias: &[f32]) -> Result<Vec<f32>> {
        let mut dst = o.upload(base)?;
        let copy = ChannelCopy {
            batch: 2,
            src_c: 3,
            dst_c: 9,
            first: 4,
            hw: 35,
        };
        o.copy_channels(copy, &mut dst, &o.upload(src)?)?;
        o.add_channel_bias(&mut dst, &o.upload(bias)?, 20, 2, 9, 35)?;
        read(o, &dst, base.len())
    }
    compare(
        r,
        "copy_channels_f32+add_channel_bias_f32",
        "2x3x35 -> 2x9x35 @4",
        &copy_bias(dev, &src, &base, &bias)?,
        &copy_bias(cpu, &src, &base, &bias)?,
        0.0,
    )?;

    let t = [0.0, 17.0, 833.0, 999.0];
    fn embed<O: DeviceOps>(o: &O, t: &[f32]) -> Result<Vec<f32>> {
        let mut out = o.alloc(t.len() * 128)?;
        o.timestep_embedding(&o.upload(t)?, &mut out, t.len(), 128, 10000.0)?;
        read(o, &out, t.len() * 128)
    }
    compare(
        r,
        "timestep_embedding_f32",
        "4x128",
        &embed(dev, &t)?,
        &embed(cpu, &t)?,
        1e-6,
    )
}

fn linear<O: DeviceOps>(dev: &O, cpu: &ReferenceOps, r: &mut Report) -> Result<()> {
    let (batch, nin, nout) = (3, 515, 260);
    let x = randn(6, batch * nin);
    let w = randn(7, nout * nin);
    let wh: Vec<half::f16> = w.iter().map(|&v| half::f16::from_f32(v)).collect();
    let bias = randn(8, nout);
    fn case<O: DeviceOps>(
        o: &O,
        x: &[f32],
        w: WeightsRef,
        bias: &[f32],
        dims: (usize, usize, usize),
    ) -> Result<Vec<f32>> {
        let (batch, nin, nout) = dims;
        let mut y = o.alloc(batch * nout)?;
        let op = LinearOp {
            batch,
            in_features: nin,
            out_features: nout,
        };
        let (wb, bb) = (o.upload_weights(w)?, o.upload(bias)?);
        o.linear(op, &o.upload(x)?, &wb, &bb, &mut y)?;
        read(o, &y, batch * nout)
    }
    let dims = (batch, nin, nout);
    for (name, wr) in [
        ("linear_f32", WeightsRef::F32(&w)),
        ("linear_f16w", WeightsRef::F16(&wh)),
    ] {
        let (d, c) = (
            case(dev, &x, wr, &bias, dims)?,
            case(cpu, &x, wr, &bias, dims)?,
        );
        compare(r, name, "3x515->260", &d, &c, 1e-5)?;
    }
    Ok(())
}

fn group_norm<O: DeviceOps>(dev: &O, cpu: &ReferenceOps, r: &mut Report) -> Result<()> {
    let (batch, channels, hw) = (2, 64, 17 * 19);
    // An offset mean tests the split-mean centring.
    let x: Vec<f32> = randn(9, batch * channels * hw)
        .iter()
        .map(|v| 3.0 * v + 5.0)
        .collect();
    let (gamma, beta, film) = (
        randn(10, channels),
        randn(11, channels),
        randn(12, batch * 2 * channels),
    );
    fn case<O: DeviceOps>(
        o: &O,
        op: &GroupNormOp,
        x: &[f32],
        (g, b): (&[f32], &[f32]),
        f: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let fb = f.map(|f| o.upload(f)).transpose()?;
        let mut out = o.alloc(x.len())?;
        let (gb, bb) = (o.upload(g)?, o.upload(b)?);
        o.group_norm(op, &o.upload(x)?, &gb, &bb, fb.as_ref(), &mut out)?;
        read(o, &out, x.len())
    }
    for (f, shape) in [
        (None, "2x64x323 g32"),
        (Some(&film[..]), "2x64x323 g32 +FiLM+SiLU"),
    ] {
        let op = GroupNormOp {
            batch,
            channels,
            hw,
            groups: 32,
            eps: 1e-5,
            silu: f.is_some(),
        };
        let d = case(dev, &op, &x, (&gamma, &beta), f)?;
        let c = case(cpu, &op, &x, (&gamma, &beta), f)?;
        compare(r, "group_norm_f32", shape, &d, &c, 1e-5)?;
    }
    Ok(())
}

fn conv<O: DeviceOps>(dev: &O, cpu: &ReferenceOps, r: &mut Report) -> Result<()> {
    let conv = |c_in, c_out, kernel, stride, pad| Conv2d {
        c_in,
        c_out,
        kernel,
        stride,
        pad,
    };
    let cases = [
        (conv(19, 70, 3, 1, 1), 21, 18),
        (conv(32, 64, 3, 2, 1), 16, 16),
        (conv(48, 33, 1, 1, 0), 9, 13),
        (conv(3, 128, 3, 1, 1), 32, 32),
    ];
    let batch = 2;
    fn case<O: DeviceOps>(
        o: &O,
        c: &Conv2d,
        map: MapBatch,
        x: &[f32],
        wr: WeightsRef,
        bias: &[f32],
    ) -> Result<Vec<f32>> {
        let (oh, ow) = c.out_size(map.h, map.w);
        let n = map.batch * c.c_out * oh * ow;
        let mut out = o.alloc(n)?;
        let (wb, bb) = (o.upload_weights(wr)?, o.upload(bias)?);
        o.conv2d(c, map, &o.upload(x)?, &wb, &bb, &mut out)?;
        read(o, &out, n)
    }
    // The tensor-core kernels round operands to f16: their tolerance is f16's, not f32's.
    for tc in [false, true] {
        if tc && !dev.use_tensor_cores(true) {
            r.set(
                "tensor_cores",
                json!({"status": "skipped", "reason": "not available on this device"}),
            )?;
            break;
        }
        let (names, tol) = if tc {
            (["conv2d_tc_f32w", "conv2d_tc_f16w"], 1e-2)
        } else {
            (["conv2d_f32", "conv2d_f16w"], 1e-5)
        };
        for (i, (c, h, w)) in cases.iter().enumerate() {
            let (h, w) = (*h, *w);
            let x = randn(20 + i as u64, batch * c.c_in * h * w);
            let wt = randn(30 + i as u64, c.c_out * c.c_in * c.kernel * c.kernel);
            let wh: Vec<half::f16> = wt.iter().map(|&v| half::f16::from_f32(v)).collect();
            let bias = randn(40 + i as u64, c.c_out);
            let shape = format!(
                "2x{}x{h}x{w} k{} s{} -> {}",
                c.c_in, c.kernel, c.stride, c.c_out
            );
            for (name, wr) in names
                .into_iter()
                .zip([WeightsRef::F32(&wt), WeightsRef::F16(&wh)])
            {
                let map = MapBatch { batch, h, w };
                let d = case(dev, c, map, &x, wr, &bias)?;
                let cc = case(cpu, c, map, &x, wr, &bias)?;
                compare(r, name, &shape, &d, &cc, tol)?;
            }
        }
    }
    dev.use_tensor_cores(false);
    Ok(())
}

/// The attention case's shape: batch, channels, tokens, heads.
const ATTENTION: (usize, usize, usize, usize) = (2, 64, 100, 4);

fn attention<O: DeviceOps>(dev: &O, cpu: &ReferenceOps, r: &mut Report) -> Result<()> {
    let (batch, channels, t, _) = ATTENTION;
    let qkv = randn(50, batch * 3 * channels * t);
    fn case<O: DeviceOps>(o: &O, qkv: &[f32], order: QkvOrder) -> Result<Vec<f32>> {
        let (batch, channels, t, heads) = ATTENTION;
        let mut s = o.alloc(o.attention_scratch_len(batch, heads, t))?;
        let mut out = o.alloc(batch * channels * t)?;
        let op = AttentionOp {
            batch,
            channels,
            t,
            heads,
            order,
        };
        o.attention(&op, &o.upload(qkv)?, &mut s, &mut out)?;
        read(o, &out, batch * channels * t)
    }
    for order in [QkvOrder::Legacy, QkvOrder::New] {
        let (d, c) = (case(dev, &qkv, order)?, case(cpu, &qkv, order)?);
        compare(
            r,
            "attention_f32",
            &format!("2x64x100 h4 {order:?}"),
            &d,
            &c,
            1e-5,
        )?;
    }
    Ok(())
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

/// 100 template steps with a fixed "denoised" image (the update alone, no network): the
/// device and CPU chains must stay together (drift = largest difference after the run).
fn template_run<O: DeviceOps>(dev: &O, cpu: &ReferenceOps, r: &mut Report) -> Result<()> {
    let (len, n, steps) = (3 * 64 * 64, 2 * 3 * 64 * 64, 100u64);
    let den = randn(60, n);
    fn chain<O: DeviceOps>(
        o: &O,
        den: &[f32],
        len: usize,
        steps: u64,
        r: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<Vec<f32>> {
        let n = den.len();
        let mut x = o.alloc(n)?;
        let chains = Chains { n, chain_len: len };
        o.init_state(&mut x, chains, 1.0, 123, 0)?;
        let db = o.upload(den)?;
        let mut first = None;
        for k in 0..steps {
            let step = UpdateStep {
                coef: step_coef(k, steps),
                seed: 123,
                first_chain: 0,
                counter: k,
            };
            o.template_update(&mut x, &db, None, chains, &step, false)?;
            if k == 0 {
                first = Some(read(o, &x, n)?);
            }
        }
        if let (Some(r), Some(f)) = (r, first) {
            r.push(f);
        }
        read(o, &x, n)
    }
    let (mut fd, mut fc) = (Vec::new(), Vec::new());
    let d = chain(dev, &den, len, steps, Some(&mut fd))?;
    let c = chain(cpu, &den, len, steps, Some(&mut fc))?;
    let (abs, _) = errors(&fd[0], &fc[0]);
    r.check(
        "template",
        json!({"check": "one step", "max_abs_err": abs}),
        abs <= 1e-5,
    )?;
    let (abs, rel) = errors(&d, &c);
    r.check(
        "template",
        json!({"check": "100 steps (drift)", "max_abs_err": abs, "max_rel_err": rel}),
        rel <= 1e-4,
    )
}

/// The adm_small golden network and its io tensors.
fn load_adm_small(dir: &Path) -> Result<(AdmArch, Weights, SafetensorsFile)> {
    let config = ModelConfig::load(dir.join("config.json").to_str().context("golden path")?)?;
    let arch = AdmArch::new(config.adm()?)?;
    let file = SafetensorsFile::open(&dir.join("weights.safetensors"))?;
    let weights = Weights::load(&file, &arch.state_dict(), Precision::F32)?;
    let io = SafetensorsFile::open(&dir.join("io.safetensors"))?;
    Ok((arch, weights, io))
}

/// The full ADM forward on the device against PyTorch's output (golden adm_small, batch 2).
fn adm_small_parity<O: DeviceOps>(dev: &O, dir: &Path, r: &mut Report) -> Result<()> {
    let (arch, weights, io) = load_adm_small(dir)?;
    let (x, t, want) = (
        io.tensor_f32("x")?.data,
        io.tensor_f32("t")?.data,
        io.tensor_f32("out")?.data,
    );
    let batch = t.len();
    let mut net = DeviceAdm::new(dev, &arch, &weights, 32, 32, batch)?;
    let mut out = dev.alloc(want.len())?;
    net.forward(&dev.upload(&x)?, &t, &mut out, batch)?;
    let got = read(dev, &out, want.len())?;
    let (abs, rel) = errors(&got, &want);
    // The golden README's tolerance for f32 ports: 1e-4 relative to the output's max |value|.
    let pass = rel <= 1e-4;
    r.set(
        "adm_small_parity",
        json!({"status": if pass { "passed" } else { "failed" }, "max_abs_err": abs, "max_rel_err": rel, "tol_rel": 1e-4}),
    )?;
    r.check(
        "parity",
        json!({"check": "adm_small forward vs PyTorch", "max_abs_err": abs, "max_rel_err": rel}),
        pass,
    )
}

/// 10 steps of the pretrained VP plan's start with adm_small on the device and on the CPU
/// reference (the CPU runner's bits): drift through network, D and update together.
fn sampling_run<O: DeviceOps>(
    dev: &O,
    cpu: &ReferenceOps,
    dir: &Path,
    r: &mut Report,
) -> Result<()> {
    let (arch, weights, _) = load_adm_small(dir)?;
    let param = Parameterization::new(NetKind::Vp, NetOutput::Eps);
    let plan = FirstSteps(Preset::VpUncondPretrained.plan(), 10);
    let (batch, len) = (2, 3 * 32 * 32);
    let run = |o: &dyn Fn(&mut Vec<f32>) -> Result<()>| -> Result<Vec<f32>> {
        let mut v = vec![0.0; batch * len];
        o(&mut v)?;
        Ok(v)
    };
    let d = run(&|out| {
        let mut s = DeviceSampler::new(dev, &arch, &weights, param, NoiseInputKind::Time, batch)?;
        s.sample(&plan, batch, 0, 3, out, &mut |_| {})
    })?;
    let c = run(&|out| {
        let mut s = DeviceSampler::new(cpu, &arch, &weights, param, NoiseInputKind::Time, batch)?;
        s.sample(&plan, batch, 0, 3, out, &mut |_| {})
    })?;
    let (abs, rel) = errors(&d, &c);
    r.check(
        "template",
        json!({"check": "adm_small sampling, 10 steps (network + D + update)", "max_abs_err": abs, "max_rel_err": rel}),
        rel <= 1e-3,
    )
}

/// Median seconds of `iters` runs of `f` (each synchronised), after one warm-up.
fn time<O: DeviceOps>(dev: &O, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    dev.synchronize()?;
    let mut t = Vec::new();
    for _ in 0..iters {
        let start = Instant::now();
        f()?;
        dev.synchronize()?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// The network forward (random weights, f32 and f16 storage) and full sampling steps
/// (forward + D + update) at each batch.
fn timings<O: DeviceOps>(
    dev: &O,
    config: &AdmConfig,
    batches: &[usize],
    r: &mut Report,
) -> Result<()> {
    let arch = AdmArch::new(config)?;
    let size = config.image_size;
    let macs = arch.macs(size, size) as f64;
    for (precision, tc) in [
        (Precision::F32, false),
        (Precision::F16, false),
        (Precision::F32, true),
        (Precision::F16, true),
    ] {
        if tc && !dev.use_tensor_cores(true) {
            break;
        }
        let weights = Weights::random(&arch.state_dict(), precision, 1);
        let what = format!(
            "adm forward {size}x{size} {precision:?} weights{}",
            if tc { " tensor cores" } else { "" }
        );
        for &batch in batches {
            let mut net = DeviceAdm::new(dev, &arch, &weights, size, size, batch)?;
            let x = dev.upload(&randn(80, batch * config.in_channels * size * size))?;
            let mut out = dev.alloc(batch * config.out_channels * size * size)?;
            let t = vec![500.0; batch];
            let s = time(dev, 3, || net.forward(&x, &t, &mut out, batch))?;
            let gflops = 2.0 * macs * batch as f64 / s / 1e9;
            outln!(
                "time: {what}, batch {batch}: {:.2} ms ({gflops:.0} GFLOP/s)",
                s * 1e3
            )?;
            r.check(
                "timings",
                json!({"what": what, "batch": batch, "seconds": s, "gflops": gflops}),
                true,
            )?;
        }
    }
    dev.use_tensor_cores(false);
    let weights = Weights::random(&arch.state_dict(), Precision::F32, 1);
    let param = Parameterization::new(NetKind::Vp, NetOutput::Eps);
    for &batch in batches {
        let mut s = DeviceSampler::new(dev, &arch, &weights, param, NoiseInputKind::Time, batch)?;
        let steps = 5;
        let plan = FirstSteps(Preset::VpUncondSigmoid.plan(), steps);
        let mut out = vec![0.0; batch * s.chain_len()];
        let start = Instant::now();
        s.sample(&plan, batch, 0, 1, &mut out, &mut |_| {})?;
        let per_step = start.elapsed().as_secs_f64() / steps as f64;
        if out.iter().any(|v| !v.is_finite()) {
            bail!("the timing run's samples are not finite");
        }
        outln!(
            "time: sampling step {size}x{size}, batch {batch}: {:.2} ms ({:.2} steps/s)",
            per_step * 1e3,
            1.0 / per_step
        )?;
        r.check(
            "timings",
            json!({"what": format!("sampling step (forward + D + update) {size}x{size}"), "batch": batch, "seconds": per_step, "steps_per_s": 1.0 / per_step}),
            true,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tweedie_nn::testdata::golden;

    /// The whole harness with the reference ops as the "device": every check runs and passes
    /// (errors 0), and the report holds every section.
    #[test]
    fn the_harness_runs_end_to_end_on_the_reference_ops() {
        let dir = golden("adm_small");
        let config = ModelConfig::load(dir.join("config.json").to_str().unwrap()).unwrap();
        let small = config.adm().unwrap().clone();
        let plan = Plan {
            golden: Some(&dir),
            timing: Some((small, vec![1, 2])),
        };
        let path =
            std::env::temp_dir().join(format!("tweedie-selftest-{}.json", std::process::id()));
        let mut r = Report::new(Some(path.clone()));
        run(&ReferenceOps, &plan, &mut r).unwrap();
        assert_eq!(r.failed, 0);
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(json["adm_small_parity"]["status"], "passed");
        assert!(json["kernels"].as_array().unwrap().len() >= 20);
        assert_eq!(json["timings"].as_array().unwrap().len(), 6);
    }
}
