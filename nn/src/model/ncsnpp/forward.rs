//! The NCSN++ forward pass (ncsnpp.md §3–§5) on the CPU.
//!
//! [`NcsnppModel`] resolves every weight of an [`NcsnppArch`] once and plans the activation
//! memory (the arena) for the network's one input size; [`NcsnppModel::forward`] then runs any
//! batch without allocating. Samples run one after the other through the same arena, and
//! every layer is split between the threads of a persistent worker pool by output channels or
//! groups ([`Pool::split`], the pool the ADM forward uses); since the kernels compute every
//! element in the same order whatever the split, a sample's output is bit-identical at any
//! batch size and thread count.
//!
//! Memory: four work buffers of the largest activation (a ResBlock input after the skip
//! concatenation), the skip stack (one slot per push, sized by a dry run of the program), the
//! input and output image pyramids, the embeddings and one conv/attention scratch per thread.

use std::fmt;
use std::ops::Range;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};
use tweedie_kernels::{self as k, Conv2d, Isa, KernelError, WeightsRef};

use super::arch::{groupnorm_groups, Module, NcsnppArch, Op, ResBlock, Updown, GROUPNORM_EPS};
use crate::backend::{enable_simd, Pool};
use crate::model::layers::{
    conv, group_norm, linear, ConvForm, ConvP, ConvPolicy, LayerForm, LinearP, NormP, ParamResolver,
};
use crate::weights::Weights;

/// A batch of network inputs, NCHW, in the data range the network was trained on
/// ([0, 1] for score_sde's uncentred configs; the network maps it to 2x − 1 itself).
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// `[batch, num_channels, image_size, image_size]`, row-major.
    pub x: &'a [f32],
    /// One noise level σ per sample (the label itself, not ln σ, not a time).
    pub sigma: &'a [f32],
    /// Number of samples.
    pub batch: usize,
}

/// What the forward writes into `out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The network's output: the score s(x, σ) = pyramid/σ (with scale_by_sigma), exactly
    /// `model(x, sigma)`.
    Score,
    /// Tweedie's denoiser D = x + σ²·s, formed as x + σ·pyramid (one rounding fewer than
    /// through s; ncsnpp.md §2), or x + σ²·pyramid without scale_by_sigma.
    Denoised,
}

/// An intermediate activation, named as the golden `act.*` tensors (without `act.`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// 2x − 1 (or x when the data is centred).
    XScaled,
    /// The output of `all_modules.{i}` (head GroupNorms: before SiLU; Combine: h after the
    /// sum; module 1: before SiLU).
    Module(usize),
    /// Input / output of the k-th input-pyramid FIR downsampling.
    PyramidDown(usize, bool),
    /// Input / output of the k-th output-pyramid FIR upsampling.
    PyramidUp(usize, bool),
    /// The final pyramid before the division by σ.
    PreSigmaDivision,
}

impl fmt::Display for Act {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let io = |out: bool| if out { "out" } else { "in" };
        match *self {
            Act::XScaled => write!(f, "x_scaled"),
            Act::Module(i) => write!(f, "all_modules.{i}"),
            Act::PyramidDown(k, out) => write!(f, "pyramid_downsample.{k}.{}", io(out)),
            Act::PyramidUp(k, out) => write!(f, "pyramid_upsample.{k}.{}", io(out)),
            Act::PreSigmaDivision => write!(f, "pre_sigma_division"),
        }
    }
}

/// Called with (activation, sample index, values) after every module of every sample.
pub type Observer<'a> = dyn FnMut(Act, usize, &[f32]) + 'a;

/// Runs the network once: `out` is `[batch, num_channels, image_size, image_size]`. Builds an
/// [`NcsnppModel`] for this call; to run repeatedly without allocating, keep the model.
pub fn forward(
    arch: &NcsnppArch,
    weights: &Weights,
    input: &Input<'_>,
    threads: usize,
    out: &mut [f32],
) -> Result<()> {
    NcsnppModel::new(arch, weights, threads)?.forward(input, Output::Score, out)
}

/// `out = f(x)` channel by channel on the pool, for per-channel maps (`units` channels).
fn map<F>(pool: &Pool, out: &mut [f32], units: usize, f: F) -> Result<(), KernelError>
where
    F: Fn(Range<usize>, &mut [f32]) -> Result<(), KernelError> + Sync,
{
    pool.split(out, units, 1, |_, r, piece| f(r, piece))
}

#[derive(Debug, Clone, Copy)]
struct NinP<'w> {
    weight: WeightsRef<'w>,
    bias: &'w [f32],
}

#[derive(Debug)]
struct ResP<'w> {
    block: ResBlock,
    norm0: NormP<'w>,
    conv0: ConvP<'w>,
    dense: LinearP<'w>,
    norm1: NormP<'w>,
    conv1: ConvP<'w>,
    conv2: Option<ConvP<'w>>,
}

#[derive(Debug)]
struct AttnP<'w> {
    channels: usize,
    norm: NormP<'w>,
    /// NIN_0 (q), NIN_1 (k), NIN_2 (v), NIN_3 (output).
    nin: [NinP<'w>; 4],
}

/// The resolved parameters of one `all_modules` entry.
#[derive(Debug)]
enum ModP<'w> {
    Fourier(&'w [f32]),
    Linear(LinearP<'w>),
    Conv(ConvP<'w>),
    Res(Box<ResP<'w>>),
    Attn(Box<AttnP<'w>>),
    Norm(NormP<'w>),
}

/// Resolves NCSN++'s `all_modules.N` by their PyTorch names.
struct Resolver<'w> {
    params: ParamResolver<'w>,
}

impl<'w> Resolver<'w> {
    fn any(&self, name: &str, len: usize) -> Result<WeightsRef<'w>> {
        self.params.any(name, len)
    }

    fn f32(&self, name: &str, len: usize) -> Result<&'w [f32]> {
        self.params.f32(name, len)
    }

    /// GroupNorm with min(C/4, 32) groups and eps 1e-6.
    fn norm(&self, p: &str, channels: usize) -> Result<NormP<'w>> {
        self.params
            .norm(p, channels, groupnorm_groups(channels), GROUPNORM_EPS)
    }

    /// A 'same' convolution (stride 1, padding kernel/2).
    fn conv(&self, p: &str, c_in: usize, c_out: usize, kernel: usize) -> Result<ConvP<'w>> {
        let conv = Conv2d {
            c_in,
            c_out,
            kernel,
            stride: 1,
            pad: kernel / 2,
        };
        self.params.conv(p, conv)
    }

    fn linear(&self, p: &str, in_features: usize, out_features: usize) -> Result<LinearP<'w>> {
        self.params.linear(p, in_features, out_features)
    }

    fn module(&self, i: usize, m: &Module, temb: usize) -> Result<ModP<'w>> {
        let p = format!("all_modules.{i}");
        Ok(match *m {
            Module::Fourier { size } => ModP::Fourier(self.f32(&format!("{p}.W"), size)?),
            Module::Linear { c_in, c_out } => ModP::Linear(self.linear(&p, c_in, c_out)?),
            Module::Conv3x3 { c_in, c_out, .. } => ModP::Conv(self.conv(&p, c_in, c_out, 3)?),
            Module::Combine { c_in, c_out, .. } => {
                ModP::Conv(self.conv(&format!("{p}.Conv_0"), c_in, c_out, 1)?)
            }
            Module::HeadNorm { channels, .. } => ModP::Norm(self.norm(&p, channels)?),
            Module::Res(r) => {
                let conv2 = if r.has_conv2() {
                    Some(self.conv(&format!("{p}.Conv_2"), r.c_in, r.c_out, 1)?)
                } else {
                    None
                };
                ModP::Res(Box::new(ResP {
                    block: r,
                    norm0: self.norm(&format!("{p}.GroupNorm_0"), r.c_in)?,
                    conv0: self.conv(&format!("{p}.Conv_0"), r.c_in, r.c_out, 3)?,
                    dense: self.linear(&format!("{p}.Dense_0"), temb, r.c_out)?,
                    norm1: self.norm(&format!("{p}.GroupNorm_1"), r.c_out)?,
                    conv1: self.conv(&format!("{p}.Conv_1"), r.c_out, r.c_out, 3)?,
                    conv2,
                }))
            }
            Module::Attn { channels, .. } => {
                let c = channels;
                let nin = |k: usize| -> Result<NinP<'w>> {
                    Ok(NinP {
                        weight: self.any(&format!("{p}.NIN_{k}.W"), c * c)?,
                        bias: self.f32(&format!("{p}.NIN_{k}.b"), c)?,
                    })
                };
                ModP::Attn(Box::new(AttnP {
                    channels: c,
                    norm: self.norm(&format!("{p}.GroupNorm_0"), c)?,
                    nin: [nin(0)?, nin(1)?, nin(2)?, nin(3)?],
                }))
            }
        })
    }
}

/// Activation memory for the network's input size, allocated once.
#[derive(Debug)]
struct Arena {
    /// Four work buffers of `work_len` floats each.
    work: [Vec<f32>; 4],
    /// The skip stack: slot d (offset, length) holds the tensor pushed at depth d.
    skips: Vec<f32>,
    slots: Vec<(usize, usize)>,
    x_scaled: Vec<f32>,
    /// Input pyramid (ping-pong) and output pyramid (ping-pong), plus one head.
    pyr_in: [Vec<f32>; 2],
    pyr_out: [Vec<f32>; 2],
    head: Vec<f32>,
    fourier: Vec<f32>,
    hidden: Vec<f32>,
    temb: Vec<f32>,
    temb_silu: Vec<f32>,
    /// A ResBlock's Dense_0 output.
    dense: Vec<f32>,
    /// Per thread: conv packing panels or one row of attention weights.
    scratch: Vec<Mutex<Vec<f32>>>,
}

impl Arena {
    fn bytes(&self) -> usize {
        let plain = [
            &self.skips,
            &self.x_scaled,
            &self.pyr_in[0],
            &self.pyr_in[1],
            &self.pyr_out[0],
            &self.pyr_out[1],
            &self.head,
            &self.fourier,
            &self.hidden,
            &self.temb,
            &self.temb_silu,
            &self.dense,
        ];
        let floats = 4 * self.work[0].len()
            + plain.iter().map(|v| v.len()).sum::<usize>()
            + self
                .scratch
                .iter()
                .map(|s| s.lock().map_or(0, |s| s.len()))
                .sum::<usize>();
        4 * floats
    }
}

/// NCSN++ ready to run: resolved weights, arena, thread count.
#[derive(Debug)]
pub struct NcsnppModel<'w> {
    arch: NcsnppArch,
    params: Vec<ModP<'w>>,
    arena: Arena,
    pool: Pool,
    /// The microkernels of the convolutions.
    isa: Isa,
    /// Every 3×3 'same' convolution's form, in program order.
    forms: Vec<LayerForm>,
}

/// Sizes the arena needs, from a dry run of the program.
#[derive(Default)]
struct Needs {
    work: usize,
    scratch: usize,
    dense: usize,
    slots: Vec<(usize, usize)>,
}

impl Needs {
    fn work(&mut self, n: usize) {
        self.work = self.work.max(n);
    }

    fn conv(&mut self, c: &ConvP, res: usize) {
        self.scratch = self.scratch.max(c.scratch_len(res, res));
        self.work(c.conv.c_in * res * res);
        self.work(c.conv.c_out * res * res);
    }
}

impl<'w> NcsnppModel<'w> {
    /// Resolves the weights of `arch` and allocates the arena for `threads` threads. Also
    /// enables the AVX2+FMA convolution where the CPU has it.
    pub fn new(arch: &NcsnppArch, weights: &'w Weights, threads: usize) -> Result<Self> {
        NcsnppModel::with_policy(arch, weights, threads, ConvPolicy::Auto)
    }

    /// [`NcsnppModel::new`] with the convolutions in the forms of `policy` (their Winograd
    /// weights transformed once, here; [`NcsnppModel::new`]: [`ConvPolicy::Auto`]).
    pub fn with_policy(
        arch: &NcsnppArch,
        weights: &'w Weights,
        threads: usize,
        policy: ConvPolicy,
    ) -> Result<Self> {
        if threads == 0 {
            bail!("forward: threads must be at least 1");
        }
        enable_simd();
        let mut params = resolve(arch, weights)?;
        let forms = set_forms(arch, &mut params, policy, true)?;
        let needs = plan(arch, &params)?;
        let (ch, s) = (arch.channels(), arch.config.image_size);
        let image = ch * s * s;
        let nf = arch.config.nf;
        let skip_len = needs.slots.last().map_or(0, |&(o, l)| o + l);
        let arena = Arena {
            work: std::array::from_fn(|_| vec![0.0; needs.work]),
            skips: vec![0.0; skip_len],
            slots: needs.slots,
            x_scaled: vec![0.0; image],
            pyr_in: [vec![0.0; image], vec![0.0; image]],
            pyr_out: [vec![0.0; image], vec![0.0; image]],
            head: vec![0.0; image],
            fourier: vec![0.0; 2 * nf],
            hidden: vec![0.0; arch.temb_dim],
            temb: vec![0.0; arch.temb_dim],
            temb_silu: vec![0.0; arch.temb_dim],
            dense: vec![0.0; needs.dense],
            scratch: (0..threads)
                .map(|_| Mutex::new(vec![0.0; needs.scratch]))
                .collect(),
        };
        Ok(NcsnppModel {
            arch: arch.clone(),
            params,
            arena,
            pool: Pool::new(threads),
            isa: Isa::detected(),
            forms,
        })
    }

    /// Every 3×3 'same' convolution's form, in program order.
    pub fn forms(&self) -> &[LayerForm] {
        &self.forms
    }

    /// Runs the convolutions with the microkernels of `isa` instead of [`Isa::detected`]'s
    /// (for tests comparing them: every SIMD path gives the same bits).
    pub fn set_isa(&mut self, isa: Isa) {
        self.isa = isa;
    }

    /// Bytes of the transformed Winograd weights.
    pub fn wino_bytes(&self) -> usize {
        let mut bytes = 0;
        for p in &self.params {
            bytes += match p {
                ModP::Conv(c) => c.wino_bytes(),
                ModP::Res(r) => r.conv0.wino_bytes() + r.conv1.wino_bytes(),
                _ => 0,
            };
        }
        bytes
    }

    /// The architecture.
    pub fn arch(&self) -> &NcsnppArch {
        &self.arch
    }

    /// Threads per layer.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Bytes of activation memory (work buffers, skip stack, pyramids, per-thread scratch).
    pub fn arena_bytes(&self) -> usize {
        self.arena.bytes()
    }

    /// Runs the network: `out` is `[batch, num_channels, image_size, image_size]`, the score
    /// or the denoised image per `output`. Allocates nothing.
    pub fn forward(&mut self, input: &Input<'_>, output: Output, out: &mut [f32]) -> Result<()> {
        self.forward_observed(input, output, out, &mut |_, _, _| {})
    }

    /// [`NcsnppModel::forward`], calling `observer` after every module of every sample.
    pub fn forward_observed(
        &mut self,
        input: &Input<'_>,
        output: Output,
        out: &mut [f32],
        observer: &mut Observer<'_>,
    ) -> Result<()> {
        let (ch, s) = (self.arch.channels(), self.arch.config.image_size);
        let (n, per) = (input.batch, ch * s * s);
        if input.x.len() != n * per {
            bail!(
                "forward: x has {} values, expected {n}x{ch}x{s}x{s}",
                input.x.len()
            );
        }
        if input.sigma.len() != n {
            bail!(
                "forward: sigma has {} values, expected one per sample ({n})",
                input.sigma.len()
            );
        }
        if out.len() != n * per {
            bail!(
                "forward: out has {} values, expected {n}x{ch}x{s}x{s}",
                out.len()
            );
        }
        for (i, ((x, &sigma), o)) in input
            .x
            .chunks_exact(per)
            .zip(input.sigma)
            .zip(out.chunks_exact_mut(per))
            .enumerate()
        {
            if !(sigma > 0.0 && sigma.is_finite()) {
                bail!("forward: sigma[{i}] = {sigma} is not a positive finite number");
            }
            self.sample(x, sigma, output, o, &mut |a: Act, v: &[f32]| {
                observer(a, i, v)
            })?;
        }
        Ok(())
    }

    /// One sample through the whole network.
    fn sample(
        &mut self,
        x: &[f32],
        sigma: f32,
        output: Output,
        out: &mut [f32],
        observe: &mut dyn FnMut(Act, &[f32]),
    ) -> Result<()> {
        let pool = &self.pool;
        let a = &mut self.arena;
        let p = &self.params;
        let ctx = |e: KernelError, i: usize| anyhow!("all_modules.{i}: {e}");
        // Noise embedding and temb MLP (modules 0, 1, 2).
        let ModP::Fourier(w) = p[0] else {
            bail!("all_modules.0 is not the Fourier projection");
        };
        k::gaussian_fourier_projection(sigma.ln(), w, &mut a.fourier).map_err(|e| ctx(e, 0))?;
        observe(Act::Module(0), &a.fourier);
        let (ModP::Linear(l1), ModP::Linear(l2)) = (&p[1], &p[2]) else {
            bail!("all_modules.1 and .2 are not the temb Linears");
        };
        linear(pool, &a.fourier, l1, &mut a.hidden).map_err(|e| ctx(e, 1))?;
        observe(Act::Module(1), &a.hidden);
        k::silu_inplace(&mut a.hidden);
        linear(pool, &a.hidden, l2, &mut a.temb).map_err(|e| ctx(e, 2))?;
        observe(Act::Module(2), &a.temb);
        a.temb_silu.copy_from_slice(&a.temb);
        k::silu_inplace(&mut a.temb_silu);
        // Input mapping: 2x − 1 (f32: a product, then a difference), the pyramid starts as it.
        if self.arch.config.centered {
            a.x_scaled.copy_from_slice(x);
        } else {
            for (d, &v) in a.x_scaled.iter_mut().zip(x) {
                *d = 2.0 * v - 1.0;
            }
        }
        observe(Act::XScaled, &a.x_scaled);
        a.pyr_in[0].copy_from_slice(&a.x_scaled);

        let s = self.arch.config.image_size;
        let mut run = Runner {
            pool,
            isa: self.isa,
            params: p,
            arena: a,
            skip_rescale: self.arch.config.skip_rescale,
            image_channels: self.arch.channels(),
            cur: 0,
            c: 0,
            res: s,
            depth: 0,
            pyr_in: (0, s),
            pyr_out: 0,
            downs: 0,
            ups: 0,
        };
        for &op in &self.arch.program {
            run.op(op, observe)?;
        }
        let pre = &run.arena.pyr_out[run.pyr_out];
        observe(Act::PreSigmaDivision, pre);
        let scale = self.arch.config.scale_by_sigma;
        match output {
            Output::Score if scale => {
                for (o, &v) in out.iter_mut().zip(pre.iter()) {
                    *o = v / sigma;
                }
            }
            Output::Score => out.copy_from_slice(pre),
            Output::Denoised => {
                // x + σ²·s with s = pyramid/σ (scale_by_sigma) or s = pyramid.
                let f = if scale { sigma } else { sigma * sigma };
                for ((o, &v), &xv) in out.iter_mut().zip(pre.iter()).zip(x) {
                    *o = xv + f * v;
                }
            }
        }
        Ok(())
    }
}

/// Every module of `arch` resolved by name and size.
fn resolve<'w>(arch: &NcsnppArch, weights: &'w Weights) -> Result<Vec<ModP<'w>>> {
    let r = Resolver {
        params: ParamResolver { weights },
    };
    arch.modules
        .iter()
        .enumerate()
        .map(|(i, m)| r.module(i, m, arch.temb_dim))
        .collect()
}

/// The form of every 3×3 'same' convolution of `arch` under `policy`, in program order
/// (what [`NcsnppModel::forms`] will be), without transforming weights.
pub fn conv_forms(
    arch: &NcsnppArch,
    weights: &Weights,
    policy: ConvPolicy,
) -> Result<Vec<LayerForm>> {
    set_forms(arch, &mut resolve(arch, weights)?, policy, false)
}

/// Sets every convolution's form by `policy` at the width of its input in the program
/// (transforming the Winograd layers' weights) and lists the 3×3 'same' ones; with
/// `transform` false, only lists what the forms would be.
fn set_forms(
    arch: &NcsnppArch,
    params: &mut [ModP],
    policy: ConvPolicy,
    transform: bool,
) -> Result<Vec<LayerForm>> {
    let mut forms = Vec::new();
    let mut form = |name: String, c: &mut ConvP, res: usize| -> Result<()> {
        let f = if transform {
            c.set_form(policy, res, res)?
        } else {
            ConvForm::chosen(policy, &c.conv, res, res)
        };
        if k::Winograd::of(&c.conv).is_some() {
            forms.push(LayerForm {
                name,
                map: (res, res),
                channels: (c.conv.c_in, c.conv.c_out),
                form: f,
            });
        }
        Ok(())
    };
    let mut res = arch.config.image_size;
    for &op in &arch.program {
        let i = match op {
            Op::InputConv(i) | Op::InputSkip(i) | Op::OutputHead { conv: i, .. } => i,
            Op::Res(i) => i,
            _ => continue,
        };
        match &mut params[i] {
            ModP::Conv(c) => form(format!("all_modules.{i}"), c, res)?,
            ModP::Res(r) => {
                res = r.block.res_out();
                form(format!("all_modules.{i}.Conv_0"), &mut r.conv0, res)?;
                form(format!("all_modules.{i}.Conv_1"), &mut r.conv1, res)?;
            }
            _ => bail!("all_modules.{i}: expected a conv or a ResBlock"),
        }
    }
    Ok(forms)
}

/// Dry run of the program: work-buffer size, scratch, Dense width and the skip-stack slots.
fn plan(arch: &NcsnppArch, params: &[ModP]) -> Result<Needs> {
    let s = arch.config.image_size;
    let mut needs = Needs::default();
    needs.work(arch.channels() * s * s);
    let (mut c, mut res) = (0usize, s);
    let mut stack: Vec<usize> = Vec::new();
    let mut next = 0;
    for &op in &arch.program {
        match op {
            Op::InputConv(i) => {
                let ModP::Conv(cv) = &params[i] else {
                    bail!("all_modules.{i}: expected a conv");
                };
                needs.conv(cv, res);
                c = cv.conv.c_out;
            }
            Op::Res(i) => {
                let ModP::Res(r) = &params[i] else {
                    bail!("all_modules.{i}: expected a ResBlock");
                };
                let ro = r.block.res_out();
                needs.work(r.block.c_in * res.max(ro) * res.max(ro));
                needs.conv(&r.conv0, ro);
                needs.conv(&r.conv1, ro);
                if let Some(c2) = &r.conv2 {
                    needs.conv(c2, ro);
                }
                needs.dense = needs.dense.max(r.block.c_out);
                (c, res) = (r.block.c_out, ro);
            }
            Op::Attn(i) => {
                let ModP::Attn(at) = &params[i] else {
                    bail!("all_modules.{i}: expected an attention block");
                };
                needs.work(3 * at.channels * res * res);
                needs.scratch = needs.scratch.max(k::attention_scratch_len(res * res));
            }
            Op::Push => {
                let len = c * res * res;
                if needs.slots.len() == stack.len() {
                    needs.slots.push((next, len));
                    next += len;
                } else if needs.slots[stack.len()].1 < len {
                    bail!(
                        "ncsnpp: skip slot {} reused with a larger tensor",
                        stack.len()
                    );
                }
                stack.push(len);
            }
            Op::PopConcat => {
                let Some(len) = stack.pop() else {
                    bail!("ncsnpp: pop from an empty skip stack");
                };
                c += len / (res * res);
                needs.work(c * res * res);
            }
            Op::InputSkip(i) => {
                let ModP::Conv(cv) = &params[i] else {
                    bail!("all_modules.{i}: expected the Combine conv");
                };
                needs.conv(cv, res);
            }
            Op::OutputHead { conv, .. } => {
                let ModP::Conv(cv) = &params[conv] else {
                    bail!("all_modules.{conv}: expected the head conv");
                };
                needs.conv(cv, res);
            }
        }
    }
    Ok(needs)
}

/// Two different work buffers: `src` shared, `dst` mutable.
fn two(work: &mut [Vec<f32>; 4], src: usize, dst: usize) -> (&[f32], &mut [f32]) {
    debug_assert_ne!(src, dst);
    if src < dst {
        let (lo, hi) = work.split_at_mut(dst);
        (&lo[src], &mut hi[0])
    } else {
        let (lo, hi) = work.split_at_mut(src);
        (&hi[0], &mut lo[dst])
    }
}

/// The work buffers other than `i`, in index order.
fn others(i: usize) -> [usize; 3] {
    let mut o = [0; 3];
    for (slot, j) in o.iter_mut().zip((0..4).filter(|&j| j != i)) {
        *slot = j;
    }
    o
}

/// Walks the program for one sample.
struct Runner<'a, 'w> {
    pool: &'a Pool,
    isa: Isa,
    params: &'a [ModP<'w>],
    arena: &'a mut Arena,
    skip_rescale: bool,
    image_channels: usize,
    /// The work buffer holding h, its channels and width.
    cur: usize,
    c: usize,
    res: usize,
    /// Skip-stack depth.
    depth: usize,
    /// Input pyramid: (buffer, width); output pyramid: buffer.
    pyr_in: (usize, usize),
    pyr_out: usize,
    /// FIR pyramid steps so far (observer indices).
    downs: usize,
    ups: usize,
}

impl Runner<'_, '_> {
    fn op(&mut self, op: Op, observe: &mut dyn FnMut(Act, &[f32])) -> Result<()> {
        let hw = |r: usize| r * r;
        let params = self.params;
        match op {
            Op::InputConv(i) => {
                let cv = conv_p(params, i)?;
                let [o, ..] = others(self.cur);
                let res = self.res;
                conv(
                    self.pool,
                    &self.arena.scratch,
                    self.isa,
                    &self.arena.x_scaled,
                    res,
                    res,
                    cv,
                    &mut self.arena.work[o][..cv.conv.c_out * hw(res)],
                )
                .map_err(|e| anyhow!("all_modules.{i}: {e}"))?;
                (self.cur, self.c) = (o, cv.conv.c_out);
                self.observe_h(Act::Module(i), observe);
            }
            Op::Res(i) => {
                let ModP::Res(r) = &params[i] else {
                    bail!("all_modules.{i}: expected a ResBlock");
                };
                self.res_block(r)
                    .map_err(|e| anyhow!("all_modules.{i}: {e}"))?;
                self.observe_h(Act::Module(i), observe);
            }
            Op::Attn(i) => {
                let ModP::Attn(at) = &params[i] else {
                    bail!("all_modules.{i}: expected an attention block");
                };
                self.attention(at)
                    .map_err(|e| anyhow!("all_modules.{i}: {e}"))?;
                self.observe_h(Act::Module(i), observe);
            }
            Op::Push => {
                let (at, _) = self.arena.slots[self.depth];
                let len = self.c * hw(self.res);
                self.arena.skips[at..at + len].copy_from_slice(&self.arena.work[self.cur][..len]);
                self.depth += 1;
            }
            Op::PopConcat => {
                self.depth -= 1;
                let (at, len) = self.arena.slots[self.depth];
                let start = self.c * hw(self.res);
                self.arena.work[self.cur][start..start + len]
                    .copy_from_slice(&self.arena.skips[at..at + len]);
                self.c += len / hw(self.res);
            }
            Op::InputSkip(i) => {
                let cv = conv_p(params, i)?;
                self.input_skip(i, cv, observe)
                    .map_err(|e| anyhow!("all_modules.{i}: {e}"))?
            }
            Op::OutputHead { norm, conv, first } => {
                let ModP::Norm(np) = &params[norm] else {
                    bail!("all_modules.{norm}: expected the head GroupNorm");
                };
                let cv = conv_p(params, conv)?;
                self.output_head((norm, np), (conv, cv), first, observe)
                    .map_err(|e| anyhow!("all_modules.{norm}/{conv} (output head): {e}"))?
            }
        }
        Ok(())
    }

    fn observe_h(&self, act: Act, observe: &mut dyn FnMut(Act, &[f32])) {
        observe(
            act,
            &self.arena.work[self.cur][..self.c * self.res * self.res],
        );
    }

    /// `work[dst] = conv(work[src])` at width `res`.
    fn conv(&mut self, c: &ConvP, src: usize, dst: usize, res: usize) -> Result<(), KernelError> {
        let (x, out) = two(&mut self.arena.work, src, dst);
        conv(
            self.pool,
            &self.arena.scratch,
            self.isa,
            &x[..c.conv.c_in * res * res],
            res,
            res,
            c,
            &mut out[..c.conv.c_out * res * res],
        )
    }

    /// `work[dst] = GroupNorm(work[src])` (+ SiLU) over `p.channels` maps of `hw`.
    fn norm(
        &mut self,
        p: &NormP,
        silu: bool,
        src: usize,
        dst: usize,
        hw: usize,
    ) -> Result<(), KernelError> {
        let n = p.channels * hw;
        let (x, out) = two(&mut self.arena.work, src, dst);
        group_norm(self.pool, &x[..n], hw, p, None, silu, &mut out[..n])
    }

    /// `work[dst] = FIR-resample(work[src])` over `channels` maps of width `res`.
    fn resample(
        &mut self,
        up: Updown,
        channels: usize,
        src: usize,
        dst: usize,
        res: usize,
    ) -> Result<(), KernelError> {
        let (x, out) = two(&mut self.arena.work, src, dst);
        fir(
            self.pool,
            up,
            &x[..channels * res * res],
            channels,
            res,
            out,
        )
    }

    /// `work[dst] ← merge(work[dst], work[src])`: (x + h)/√2 with skip_rescale, else x + h.
    fn merge(
        &mut self,
        skip: usize,
        dst: usize,
        n_ch: usize,
        hw: usize,
    ) -> Result<(), KernelError> {
        let rescale = self.skip_rescale;
        let (x, out) = two(&mut self.arena.work, skip, dst);
        let x = &x[..n_ch * hw];
        map(self.pool, &mut out[..n_ch * hw], n_ch, |r, piece| {
            let xs = &x[r.start * hw..r.end * hw];
            if rescale {
                k::add_skip_rescale(piece, xs)
            } else {
                k::add_inplace(piece, xs);
                Ok(())
            }
        })
    }

    /// `ResnetBlockBigGANpp` (ncsnpp.md §4.2); h in `cur`, result in another buffer.
    fn res_block(&mut self, r: &ResP) -> Result<(), KernelError> {
        let b = &r.block;
        let (x, [bb, cb, db]) = (self.cur, others(self.cur));
        let (res, ro) = (b.res, b.res_out());
        let (hw, hwo) = (res * res, ro * ro);
        if self.c != b.c_in || self.res != res {
            return Err(KernelError::Shape(
                "ResBlock input does not match the program",
            ));
        }
        // Dense_0(SiLU(temb)) (the SiLU was applied once for all blocks).
        {
            let a = &mut *self.arena;
            linear(self.pool, &a.temb_silu, &r.dense, &mut a.dense[..b.c_out])?;
        }
        // GroupNorm_0 + SiLU, then [FIR resample], then Conv_0 (+ Dense_0 per channel).
        self.norm(&r.norm0, true, x, bb, hw)?;
        let src0 = if b.updown == Updown::None {
            bb
        } else {
            self.resample(b.updown, b.c_in, bb, cb, res)?;
            cb
        };
        self.conv(&r.conv0, src0, db, ro)?;
        {
            let dense = &self.arena.dense[..b.c_out];
            map(
                self.pool,
                &mut self.arena.work[db][..b.c_out * hwo],
                b.c_out,
                |cr, piece| {
                    for (row, &e) in piece.chunks_exact_mut(hwo).zip(&dense[cr]) {
                        row.iter_mut().for_each(|v| *v += e);
                    }
                    Ok(())
                },
            )?;
        }
        // GroupNorm_1 + SiLU, (Dropout: identity), Conv_1.
        self.norm(&r.norm1, true, db, src0, hwo)?;
        self.conv(&r.conv1, src0, db, ro)?;
        // Shortcut: [FIR resample] x, [Conv_2], then merge into db.
        let mut skip = x;
        if b.updown != Updown::None {
            self.resample(b.updown, b.c_in, x, bb, res)?;
            skip = bb;
        }
        if let Some(c2) = &r.conv2 {
            let spare = if skip == bb { cb } else { bb };
            self.conv(c2, skip, spare, ro)?;
            skip = spare;
        }
        self.merge(skip, db, b.c_out, hwo)?;
        (self.cur, self.c, self.res) = (db, b.c_out, ro);
        Ok(())
    }

    /// `AttnBlockpp` (ncsnpp.md §4.3), single head; h in `cur`, result in another buffer.
    fn attention(&mut self, at: &AttnP) -> Result<(), KernelError> {
        let (c, t) = (at.channels, self.res * self.res);
        if self.c != c {
            return Err(KernelError::Shape(
                "attention input does not match the program",
            ));
        }
        let (x, [bb, cb, db]) = (self.cur, others(self.cur));
        self.norm(&at.norm, false, x, bb, t)?;
        // q | k | v stacked as [3C, T]: the `New` (q|k|v first) order with one head.
        {
            let (h, qkv) = two(&mut self.arena.work, bb, cb);
            let h = &h[..c * t];
            for (j, part) in qkv[..3 * c * t].chunks_exact_mut(c * t).enumerate() {
                nin(self.pool, h, c, t, &at.nin[j], part)?;
            }
        }
        {
            let (qkv, out) = two(&mut self.arena.work, cb, db);
            let qkv = &qkv[..3 * c * t];
            let scratch = &self.arena.scratch;
            self.pool.split(&mut out[..c * t], 1, 1, |i, hr, piece| {
                let mut s = scratch[i].lock().unwrap_or_else(|e| e.into_inner());
                k::QkvAttention {
                    channels: c,
                    t,
                    heads: 1,
                    order: k::QkvOrder::New,
                }
                .forward(qkv, hr, piece, &mut s)
            })?;
        }
        {
            let (o, dst) = two(&mut self.arena.work, db, bb);
            nin(self.pool, &o[..c * t], c, t, &at.nin[3], &mut dst[..c * t])?;
        }
        self.merge(x, bb, c, t)?;
        self.cur = bb;
        Ok(())
    }

    /// input_skip: FIR-downsample the input pyramid, then h = Conv_0(pyramid) + h.
    fn input_skip(
        &mut self,
        i: usize,
        cv: &ConvP,
        observe: &mut dyn FnMut(Act, &[f32]),
    ) -> Result<(), KernelError> {
        let ch = self.image_channels;
        let (src, r) = self.pyr_in;
        let dst = 1 - src;
        let n_in = ch * r * r;
        let n_out = n_in / 4;
        {
            let [p0, p1] = &mut self.arena.pyr_in;
            let (x, out) = if src == 0 { (&*p0, p1) } else { (&*p1, p0) };
            observe(Act::PyramidDown(self.downs, false), &x[..n_in]);
            fir(
                self.pool,
                Updown::Down,
                &x[..n_in],
                ch,
                r,
                &mut out[..n_out],
            )?;
            observe(Act::PyramidDown(self.downs, true), &out[..n_out]);
        }
        self.downs += 1;
        self.pyr_in = (dst, r / 2);
        if self.res != r / 2 || self.c != cv.conv.c_out {
            return Err(KernelError::Shape(
                "Combine input does not match the program",
            ));
        }
        let [o, ..] = others(self.cur);
        let hw = self.res * self.res;
        {
            let a = &mut *self.arena;
            let pyr = &a.pyr_in[dst][..n_out];
            conv(
                self.pool,
                &a.scratch,
                self.isa,
                pyr,
                self.res,
                self.res,
                cv,
                &mut a.work[o][..self.c * hw],
            )?;
        }
        let (y, h) = two(&mut self.arena.work, o, self.cur);
        let y = &y[..self.c * hw];
        map(self.pool, &mut h[..self.c * hw], self.c, |r, piece| {
            k::add_inplace(piece, &y[r.start * hw..r.end * hw]);
            Ok(())
        })?;
        self.observe_h(Act::Module(i), observe);
        Ok(())
    }

    /// output_skip: head = Conv(SiLU(GroupNorm(h))); pyramid = head or FIR-up(pyramid) + head.
    fn output_head(
        &mut self,
        (norm_i, np): (usize, &NormP),
        (conv_i, cv): (usize, &ConvP),
        first: bool,
        observe: &mut dyn FnMut(Act, &[f32]),
    ) -> Result<(), KernelError> {
        let (res, hw) = (self.res, self.res * self.res);
        let [o, ..] = others(self.cur);
        self.norm(np, false, self.cur, o, hw)?;
        let n = np.channels * hw;
        observe(Act::Module(norm_i), &self.arena.work[o][..n]);
        map(
            self.pool,
            &mut self.arena.work[o][..n],
            np.channels,
            |_, piece| {
                k::silu_inplace(piece);
                Ok(())
            },
        )?;
        let ch = self.image_channels;
        let m = ch * hw;
        {
            let a = &mut *self.arena;
            conv(
                self.pool,
                &a.scratch,
                self.isa,
                &a.work[o][..n],
                res,
                res,
                cv,
                &mut a.head[..m],
            )?;
        }
        observe(Act::Module(conv_i), &self.arena.head[..m]);
        let a = &mut *self.arena;
        if first {
            a.pyr_out[self.pyr_out][..m].copy_from_slice(&a.head[..m]);
            return Ok(());
        }
        let src = self.pyr_out;
        let [p0, p1] = &mut a.pyr_out;
        let (x, out) = if src == 0 { (&*p0, p1) } else { (&*p1, p0) };
        let n_in = m / 4;
        observe(Act::PyramidUp(self.ups, false), &x[..n_in]);
        fir(
            self.pool,
            Updown::Up,
            &x[..n_in],
            ch,
            res / 2,
            &mut out[..m],
        )?;
        observe(Act::PyramidUp(self.ups, true), &out[..m]);
        k::add_inplace(&mut out[..m], &a.head[..m]);
        self.ups += 1;
        self.pyr_out = 1 - src;
        Ok(())
    }
}

/// The conv of module `i`.
fn conv_p<'a, 'w>(params: &'a [ModP<'w>], i: usize) -> Result<&'a ConvP<'w>> {
    match &params[i] {
        ModP::Conv(c) => Ok(c),
        _ => bail!("all_modules.{i}: expected a conv"),
    }
}

/// `out = NIN(x)` over `t` positions, split over output channels.
fn nin(
    pool: &Pool,
    x: &[f32],
    c_in: usize,
    t: usize,
    p: &NinP,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let c_out = p.bias.len();
    pool.split(out, c_out, 8, |_, o, piece| {
        k::nin(x, c_in, t, p.weight, p.bias, o, piece)
    })
}

/// FIR up/down-sampling of `channels` maps of width `res`, split over channels.
fn fir(
    pool: &Pool,
    dir: Updown,
    x: &[f32],
    channels: usize,
    res: usize,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let n = match dir {
        Updown::Up => channels * 4 * res * res,
        Updown::Down => channels * res * res / 4,
        Updown::None => return Err(KernelError::Shape("fir: no resampling requested")),
    };
    map(pool, &mut out[..n], channels, |cr, piece| match dir {
        Updown::Up => k::fir_upsample2x(x, res, res, cr, piece),
        _ => k::fir_downsample2x(x, res, res, cr, piece),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ncsnpp::NcsnppConfig;
    use crate::parity::{compare, TOL_F16, TOL_NCSNPP};
    use crate::tensors::SafetensorsFile;
    use crate::testdata::golden;
    use crate::weights::Precision;
    use crate::weights::TensorData;

    fn golden_arch() -> NcsnppArch {
        let text = std::fs::read_to_string(golden("ncsnpp_small").join("config.json")).unwrap();
        let config = NcsnppConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        NcsnppArch::new(&config).unwrap()
    }

    fn golden_weights(arch: &NcsnppArch, precision: Precision) -> Weights {
        let file =
            SafetensorsFile::open(&golden("ncsnpp_small").join("weights.safetensors")).unwrap();
        Weights::load(&file, &arch.state_dict(), precision).unwrap()
    }

    fn io() -> SafetensorsFile {
        SafetensorsFile::open(&golden("ncsnpp_small").join("io.safetensors")).unwrap()
    }

    const POLICIES: [ConvPolicy; 3] = [ConvPolicy::Auto, ConvPolicy::Winograd, ConvPolicy::Direct];

    #[test]
    fn golden_small_out_and_every_activation_within_tolerance() {
        for policy in POLICIES {
            golden_small_within_tolerance(policy);
        }
    }

    /// The golden's 32×32 maps put the forms to work under auto: F(4×4) at 32×32 and 16×16,
    /// F(2×2) at 8×8, direct for the thin input and output convolutions (and at 4×4).
    #[test]
    fn auto_runs_every_form_on_the_golden() {
        let arch = golden_arch();
        let weights = golden_weights(&arch, Precision::F32);
        let forms = NcsnppModel::new(&arch, &weights, 1).unwrap().forms;
        for form in [ConvForm::F4x4, ConvForm::F2x2, ConvForm::Direct] {
            assert!(forms.iter().any(|l| l.form == form), "{form:?}");
        }
        assert_eq!(
            forms,
            conv_forms(&arch, &weights, ConvPolicy::Auto).unwrap()
        );
    }

    fn golden_small_within_tolerance(policy: ConvPolicy) {
        // formats.md §7: per sample, max |ours − ref| ≤ 2e-4 · max(1, max |ref|), for `out`
        // and every recorded `act.*` tensor.
        let arch = golden_arch();
        let weights = golden_weights(&arch, Precision::F32);
        let io = io();
        let (x, sigma, reference) = (
            io.tensor_f32("x").unwrap(),
            io.tensor_f32("sigma").unwrap(),
            io.tensor_f32("out").unwrap(),
        );
        let mut model = NcsnppModel::with_policy(&arch, &weights, 2, policy).unwrap();
        let input = Input {
            x: &x.data,
            sigma: &sigma.data,
            batch: 2,
        };
        let mut out = vec![0f32; x.data.len()];
        let mut acts: Vec<(String, usize, Vec<f32>)> = Vec::new();
        model
            .forward_observed(&input, Output::Score, &mut out, &mut |a, i, v| {
                acts.push((a.to_string(), i, v.to_vec()))
            })
            .unwrap();
        let mut worst = (String::new(), 0f64);
        let mut check = |name: &str, sample: usize, ours: &[f32], reference: &[f32]| {
            let s = compare(ours, reference, 1, TOL_NCSNPP).unwrap()[0];
            if s.rel > worst.1 {
                worst = (format!("{name}[{sample}]"), s.rel);
            }
            assert!(
                s.pass,
                "{policy:?}: {name} sample {sample}: rel err {:.3e}",
                s.rel
            );
            if name == "out" {
                eprintln!(
                    "out[{sample}]: max abs err {:.3e}, rel {:.3e}",
                    s.max_abs, s.rel
                );
            }
        };
        let per = out.len() / 2;
        for i in 0..2 {
            check(
                "out",
                i,
                &out[i * per..][..per],
                &reference.data[i * per..][..per],
            );
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, i, v) in &acts {
            let r = io.tensor_f32(&format!("act.{name}")).unwrap();
            let n = r.data.len() / 2;
            assert_eq!(v.len(), n, "{name}");
            check(name, *i, v, &r.data[i * n..][..n]);
            seen.insert(name.clone());
        }
        // Every act.* tensor of the file was produced: 37 modules, x_scaled, 2×2 pyramid
        // downsample and 2×2 upsample in/out, pre_sigma_division.
        let st = io.view().unwrap();
        let file_acts = st
            .names()
            .into_iter()
            .filter(|n| n.starts_with("act."))
            .count();
        assert_eq!(seen.len(), file_acts);
        assert_eq!(seen.len(), 37 + 1 + 8 + 1);
        eprintln!(
            "{policy:?}: worst relative error {} {:.3e}",
            worst.0, worst.1
        );
    }

    #[test]
    fn golden_small_f16_weights_within_f16_tolerance() {
        let arch = golden_arch();
        let weights = golden_weights(&arch, Precision::F16);
        assert!(matches!(
            weights.get("all_modules.0.W").unwrap().data,
            TensorData::F32(_)
        ));
        let io = io();
        let (x, sigma, reference) = (
            io.tensor_f32("x").unwrap(),
            io.tensor_f32("sigma").unwrap(),
            io.tensor_f32("out").unwrap(),
        );
        let mut out = vec![0f32; x.data.len()];
        let input = Input {
            x: &x.data,
            sigma: &sigma.data,
            batch: 2,
        };
        for policy in POLICIES {
            NcsnppModel::with_policy(&arch, &weights, 1, policy)
                .unwrap()
                .forward(&input, Output::Score, &mut out)
                .unwrap();
            for (i, s) in compare(&out, &reference.data, 2, TOL_F16)
                .unwrap()
                .iter()
                .enumerate()
            {
                assert!(s.pass, "{policy:?} sample {i}: rel err {:.3e}", s.rel);
            }
        }
    }

    #[test]
    fn batch_and_threads_do_not_change_a_bit_and_denoised_is_tweedie() {
        for policy in POLICIES {
            batch_and_threads_do_not_change_a_bit(policy);
        }
    }

    fn batch_and_threads_do_not_change_a_bit(policy: ConvPolicy) {
        let arch = golden_arch();
        let weights = golden_weights(&arch, Precision::F32);
        let io = io();
        let (x, sigma) = (io.tensor_f32("x").unwrap(), io.tensor_f32("sigma").unwrap());
        let per = x.data.len() / 2;
        let both = Input {
            x: &x.data,
            sigma: &sigma.data,
            batch: 2,
        };
        let mut a = vec![0f32; 2 * per];
        NcsnppModel::with_policy(&arch, &weights, 1, policy)
            .unwrap()
            .forward(&both, Output::Score, &mut a)
            .unwrap();
        let mut model3 = NcsnppModel::with_policy(&arch, &weights, 3, policy).unwrap();
        let second = Input {
            x: &x.data[per..],
            sigma: &sigma.data[1..],
            batch: 1,
        };
        let mut b = vec![0f32; per];
        model3.forward(&second, Output::Score, &mut b).unwrap();
        assert_eq!(
            &a[per..],
            &b[..],
            "batch 2 / 1 thread vs batch 1 / 3 threads"
        );
        // The pool persists across calls: a second and third forward on 2 threads agree too.
        let mut model2 = NcsnppModel::with_policy(&arch, &weights, 2, policy).unwrap();
        for _ in 0..2 {
            let mut c = vec![0f32; 2 * per];
            model2.forward(&both, Output::Score, &mut c).unwrap();
            assert_eq!(a, c, "1 thread vs 2 threads (pool reused)");
        }
        // Denoised = x + σ²·s up to the one rounding saved.
        let mut d = vec![0f32; 2 * per];
        model3.forward(&both, Output::Denoised, &mut d).unwrap();
        for i in 0..2 {
            let s = sigma.data[i] as f64;
            let rng = i * per..(i + 1) * per;
            for ((&dv, &sv), &xv) in d[rng.clone()].iter().zip(&a[rng.clone()]).zip(&x.data[rng]) {
                let want = xv as f64 + s * s * sv as f64;
                assert!(
                    (dv as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "{dv} vs {want}"
                );
            }
        }
    }

    /// The full FFHQ-256 topology runs end to end (random weights; ~266 GMAC, seconds).
    /// `cargo test -p tweedie-host --lib ffhq256_runs -- --ignored --nocapture`
    #[test]
    #[ignore = "FFHQ-256 forward: ~266 GMAC"]
    fn ffhq256_runs_on_random_weights() {
        let arch = NcsnppArch::new(&NcsnppConfig::ffhq256()).unwrap();
        let weights = Weights::random(&arch.state_dict(), Precision::F32, 1);
        let mut model = NcsnppModel::new(&arch, &weights, 2).unwrap();
        let n = 3 * 256 * 256;
        let x: Vec<f32> = (0..n).map(|i| (i % 255) as f32 / 255.0).collect();
        let mut out = vec![0f32; n];
        let start = std::time::Instant::now();
        let input = Input {
            x: &x,
            sigma: &[50.0],
            batch: 1,
        };
        model.forward(&input, Output::Score, &mut out).unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert!(out.iter().all(|v| v.is_finite()));
        eprintln!(
            "ffhq256: {secs:.2} s, {:.1} GFLOP/s, arena {:.0} MB",
            2.0 * arch.macs() as f64 / secs / 1e9,
            model.arena_bytes() as f64 / 1e6
        );
    }

    #[test]
    fn bad_inputs_are_errors() {
        let arch = golden_arch();
        let weights = golden_weights(&arch, Precision::F32);
        let mut m = NcsnppModel::new(&arch, &weights, 1).unwrap();
        let x = vec![0.5f32; 3 * 32 * 32];
        let mut out = vec![0f32; x.len()];
        let e = |m: &mut NcsnppModel, sigma: &[f32], x: &[f32], out: &mut [f32]| {
            let input = Input { x, sigma, batch: 1 };
            format!("{:#}", m.forward(&input, Output::Score, out).unwrap_err())
        };
        assert!(e(&mut m, &[0.0], &x, &mut out).contains("sigma[0] = 0"));
        assert!(e(&mut m, &[1.0, 2.0], &x, &mut out).contains("sigma has 2 values"));
        assert!(e(&mut m, &[1.0], &x[1..], &mut out).contains("x has"));
        assert!(e(&mut m, &[1.0], &x, &mut out[1..]).contains("out has"));
        assert!(NcsnppModel::new(&arch, &weights, 0).is_err());
        assert!(m.arena_bytes() > 0 && m.threads() == 1);
    }
}
