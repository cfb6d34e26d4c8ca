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
//!
//! Here: the model, its types and its arena; `params` resolves the weights by PyTorch name,
//! `plan` sizes the arena by a dry run of the program, `runner` walks the program for one
//! sample.

use std::fmt;
use std::ops::Range;

use anyhow::{anyhow, bail, Result};
use tweedie_kernels::{self as k, Conv2d, Isa, KernelError, WeightsRef};

use super::arch::{groupnorm_groups, Module, NcsnppArch, Op, ResBlock, Updown, GROUPNORM_EPS};
use crate::backend::{enable_simd, Pool, ThreadScratch};
use crate::model::layers::{
    self, conv, group_norm, linear, ConvP, ConvPolicy, ConvVisit, LayerForm, LinearP, NormP,
    ParamResolver, WINOGRAD_CACHE_BYTES,
};
use crate::weights::Weights;

mod params;
mod plan;
mod runner;
#[cfg(test)]
mod tests;

use params::{conv_p, resolve};
use plan::plan;

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
    scratch: ThreadScratch,
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
            + self.scratch.floats();
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
    /// weights transformed here, up to [`WINOGRAD_CACHE_BYTES`], the rest at each call;
    /// [`NcsnppModel::new`]: [`ConvPolicy::Auto`]).
    pub fn with_policy(
        arch: &NcsnppArch,
        weights: &'w Weights,
        threads: usize,
        policy: ConvPolicy,
    ) -> Result<Self> {
        NcsnppModel::with_cache(arch, weights, threads, policy, WINOGRAD_CACHE_BYTES)
    }

    /// [`NcsnppModel::with_policy`] keeping `cache` bytes of transformed Winograd weights
    /// (the same bits for any cache; for tests and tighter memory).
    pub fn with_cache(
        arch: &NcsnppArch,
        weights: &'w Weights,
        threads: usize,
        policy: ConvPolicy,
        cache: usize,
    ) -> Result<Self> {
        if threads == 0 {
            bail!("forward: threads must be at least 1");
        }
        enable_simd();
        let mut params = resolve(arch, weights)?;
        let forms = set_forms(arch, &mut params, policy, Some(cache))?;
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
            scratch: ThreadScratch::new(threads, needs.scratch),
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

/// The form of every 3×3 'same' convolution of `arch` under `policy`, in program order
/// (what [`NcsnppModel::forms`] will be), without transforming weights.
pub fn conv_forms(
    arch: &NcsnppArch,
    weights: &Weights,
    policy: ConvPolicy,
) -> Result<Vec<LayerForm>> {
    set_forms(arch, &mut resolve(arch, weights)?, policy, None)
}

/// Sets every convolution's form by `policy` ([`layers::set_forms`]: given a cache, their
/// Winograd weights transformed) and lists the 3×3 'same' ones.
fn set_forms(
    arch: &NcsnppArch,
    params: &mut [ModP],
    policy: ConvPolicy,
    cache: Option<usize>,
) -> Result<Vec<LayerForm>> {
    layers::set_forms(policy, cache, &mut |f| for_each_conv(arch, params, f))
}

/// Calls `f(name, conv, res, res)` for every convolution with the width of its input in
/// the program, in program order.
fn for_each_conv(arch: &NcsnppArch, params: &mut [ModP], f: &mut ConvVisit) -> Result<()> {
    let mut res = arch.config.image_size;
    for &op in &arch.program {
        let i = match op {
            Op::InputConv(i) | Op::InputSkip(i) | Op::OutputHead { conv: i, .. } => i,
            Op::Res(i) => i,
            _ => continue,
        };
        match &mut params[i] {
            ModP::Conv(c) => f(&format!("all_modules.{i}"), c, res, res)?,
            ModP::Res(r) => {
                res = r.block.res_out();
                f(&format!("all_modules.{i}.Conv_0"), &mut r.conv0, res, res)?;
                f(&format!("all_modules.{i}.Conv_1"), &mut r.conv1, res, res)?;
            }
            _ => bail!("all_modules.{i}: expected a conv or a ResBlock"),
        }
    }
    Ok(())
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
