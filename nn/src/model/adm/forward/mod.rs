//! The ADM forward pass (adm_unet.md §2–§6) on the CPU.
//!
//! [`AdmModel`] resolves every weight of an [`AdmArch`] once, plans the activation memory for
//! one input size (the arena) and starts a worker pool; [`AdmModel::forward`] then runs any
//! batch, allocating only the first time the arena needs room for more samples. A batch runs
//! in passes of up to [`samples_per_pass`] samples, layer by layer: every activation holds
//! the pass's samples back to back (`[n, C, H, W]`) and every layer is one pool job over all
//! of them, split between threads over (sample, pixels / output channels / groups / heads)
//! with the fixed rule of [`crate::backend::part`] (the Linears: over output features, every
//! sample in turn). The kernels still run sample by sample on their ranges and compute every
//! element in the same order whatever the range, so a sample's output is bit-identical at any
//! batch size, pass size and thread count.
//!
//! Memory, per sample of a pass: three work buffers of the largest activation (a block input
//! after the skip concatenation, a GroupNorm output, a conv output), the encoder skip stack,
//! the time embedding and the FiLM vector; plus one conv/attention scratch per thread. Within
//! a layer the three buffers play the roles input / scratch / output and the output becomes
//! the next input, so no layer allocates or copies beyond the skip push and the
//! concatenation.
//!
//! Here: the model, its input and its public methods; `params` resolves the weights by
//! PyTorch name, `plan` sizes the arena, `runner` walks the layers of a pass.

use anyhow::{anyhow, bail, Result};
use tweedie_kernels::{self as k, Conv2d, Isa, KernelError};

use super::arch::{
    conv3x3, AdmArch, Block, Layer, QkvOrder, Updown, GROUPNORM_EPS, GROUPNORM_GROUPS, MAX_PERIOD,
};
use crate::backend::profile::{self, Kind};
use crate::backend::{Pool, ThreadScratch};
use crate::model::layers::{
    self, conv_batch, group_norm_batch, linear_batch, ConvPolicy, ConvVisit, LayerForm,
    ParamResolver, WINOGRAD_CACHE_BYTES,
};
pub(super) use crate::model::layers::{ConvP, LinearP, NormP};
use crate::weights::Weights;

mod params;
mod plan;
mod runner;

pub use params::conv_forms;
pub(super) use params::{resolve, BlockP, LayerP, Op, Resolved};
use params::{AttnP, ResP};
pub(super) use plan::MemoryPlan;
pub use plan::{samples_per_pass, PASS_WIDEST_FLOATS};
use plan::{Arena, PerSample};
use runner::Runner;
pub(super) use runner::{others, pair};

/// A batch of network inputs, NCHW.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// `[batch, in_channels, height, width]`, row-major.
    pub x: &'a [f32],
    /// One timestep per sample (0..999, fractional allowed).
    pub t: &'a [f32],
    /// Number of samples.
    pub batch: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
}

/// Runs the network once: `out` is `[batch, out_channels, height, width]`. Builds an
/// [`AdmModel`] for this call; to run repeatedly without allocating, keep an `AdmModel`.
pub fn forward(
    arch: &AdmArch,
    weights: &Weights,
    input: &Input<'_>,
    threads: usize,
    out: &mut [f32],
) -> Result<()> {
    if threads == 0 {
        bail!("forward: threads must be at least 1");
    }
    arch.check_input_size(input.height, input.width)?;
    let mut model = AdmModel::new(arch, weights, input.height, input.width, threads)?;
    model.forward(input, out)
}

/// Called after every top-level stage with (stage name, sample index, activation): the names
/// of the golden `act.*` tensors without the prefix (`emb_sinusoidal`, `emb`,
/// `input_blocks.N`, `middle_block`, `output_blocks.N`).
pub type Observer<'a> = dyn FnMut(&str, usize, &[f32]) + 'a;

/// The ADM U-Net ready to run on `height`×`width` inputs: resolved weights, arena, workers.
#[derive(Debug)]
pub struct AdmModel<'w> {
    arch: AdmArch,
    height: usize,
    width: usize,
    time: [LinearP<'w>; 2],
    input_blocks: Vec<BlockP<'w>>,
    middle: BlockP<'w>,
    output_blocks: Vec<BlockP<'w>>,
    out_norm: NormP<'w>,
    out_conv: ConvP<'w>,
    arena: Arena,
    pool: Pool,
    /// The microkernels of the convolutions.
    isa: Isa,
    /// Every 3×3 'same' convolution's form, in layer order.
    forms: Vec<LayerForm>,
}

impl<'w> AdmModel<'w> {
    /// Resolves the weights of `arch`, allocates the arena for `height`×`width` inputs and
    /// starts `threads − 1` workers, with the convolutions in the forms of
    /// [`ConvPolicy::Auto`]. Also enables the AVX2+FMA kernels where the CPU has them.
    pub fn new(
        arch: &AdmArch,
        weights: &'w Weights,
        height: usize,
        width: usize,
        threads: usize,
    ) -> Result<AdmModel<'w>> {
        AdmModel::with_policy(arch, weights, height, width, threads, ConvPolicy::Auto)
    }

    /// [`AdmModel::new`] with the convolutions in the forms of `policy` (their Winograd
    /// weights transformed here, up to [`WINOGRAD_CACHE_BYTES`], the rest at each call).
    pub fn with_policy(
        arch: &AdmArch,
        weights: &'w Weights,
        height: usize,
        width: usize,
        threads: usize,
        policy: ConvPolicy,
    ) -> Result<AdmModel<'w>> {
        let cache = WINOGRAD_CACHE_BYTES;
        AdmModel::with_cache(arch, weights, height, width, threads, policy, cache)
    }

    /// [`AdmModel::with_policy`] keeping `cache` bytes of transformed Winograd weights
    /// (the same bits for any cache; for tests and tighter memory).
    pub fn with_cache(
        arch: &AdmArch,
        weights: &'w Weights,
        height: usize,
        width: usize,
        threads: usize,
        policy: ConvPolicy,
        cache: usize,
    ) -> Result<AdmModel<'w>> {
        if threads == 0 {
            bail!("forward: threads must be at least 1");
        }
        arch.check_input_size(height, width)?;
        crate::backend::enable_simd();
        let c = &arch.config;
        let ted = arch.time_embed_dim;
        let mut resolved = resolve(arch, weights)?;
        let forms = resolved.set_forms(height, width, policy, Some(cache))?;
        let MemoryPlan {
            needs,
            skip_at,
            skip_len,
        } = MemoryPlan::new(&resolved, c.in_channels, height, width);
        let Resolved {
            time,
            input_blocks,
            middle,
            output_blocks,
            out_norm,
            out_conv,
        } = resolved;
        let scratch = ThreadScratch::new(threads, needs.scratch);
        let mut arena = Arena {
            samples: 0,
            per: PerSample {
                work: needs.work,
                skips: skip_len,
                sin: c.model_channels,
                emb: ted,
                film: needs.film,
            },
            work: Default::default(),
            skips: Vec::new(),
            skip_at,
            emb_sin: Vec::new(),
            emb_hidden: Vec::new(),
            emb: Vec::new(),
            emb_silu: Vec::new(),
            film: Vec::new(),
            scratch,
        };
        arena.reserve(1);
        Ok(AdmModel {
            arch: arch.clone(),
            height,
            width,
            time,
            input_blocks,
            middle,
            output_blocks,
            out_norm,
            out_conv,
            arena,
            pool: Pool::new(threads),
            isa: Isa::detected(),
            forms,
        })
    }

    /// The architecture.
    pub fn arch(&self) -> &AdmArch {
        &self.arch
    }

    /// Every 3×3 'same' convolution's form, in layer order.
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
        let mut bytes = self.out_conv.wino_bytes();
        let blocks = self
            .input_blocks
            .iter()
            .chain([&self.middle])
            .chain(&self.output_blocks);
        for l in blocks.flat_map(|b| &b.layers) {
            bytes += match &l.op {
                Op::Conv(c) => c.wino_bytes(),
                Op::Res(r) => r.in_conv.wino_bytes() + r.out_conv.wino_bytes(),
                Op::Up { conv: Some(c), .. } => c.wino_bytes(),
                _ => 0,
            };
        }
        bytes
    }

    /// The input (height, width) the arena was planned for.
    pub fn size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// Threads per layer.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Bytes of activation memory (work buffers, skip stack, embeddings, per-thread scratch).
    pub fn arena_bytes(&self) -> usize {
        self.arena.bytes()
    }

    /// Sizes the arena for passes of [`samples_per_pass`] of `batch` samples (allocating
    /// only if it has less room). [`AdmModel::forward`] does this itself on its batch.
    pub fn reserve(&mut self, batch: usize) {
        let n = samples_per_pass(&self.arch, self.height, self.width, batch);
        if n > self.arena.samples {
            self.arena.reserve(n);
        }
    }

    /// Runs the network: `out` is `[batch, out_channels, height, width]` (channels
    /// 0..in_channels are ε). Allocates nothing once the arena has room for the batch's
    /// passes ([`AdmModel::reserve`]).
    pub fn forward(&mut self, input: &Input<'_>, out: &mut [f32]) -> Result<()> {
        self.forward_observed(input, out, &mut |_, _, _| {})
    }

    /// [`AdmModel::forward`], calling `observer` after every top-level stage for every sample
    /// (after the stage has run for all samples of the pass, in sample order).
    pub fn forward_observed(
        &mut self,
        input: &Input<'_>,
        out: &mut [f32],
        observer: &mut Observer<'_>,
    ) -> Result<()> {
        let c = &self.arch.config;
        let (n, h, w) = (input.batch, input.height, input.width);
        if (h, w) != (self.height, self.width) {
            bail!(
                "forward: input is {h}x{w}, the model was planned for {}x{}",
                self.height,
                self.width
            );
        }
        let (per_in, per_out) = (c.in_channels * h * w, c.out_channels * h * w);
        if input.x.len() != n * per_in {
            bail!(
                "forward: x has {} values, expected {n}x{}x{h}x{w}",
                input.x.len(),
                c.in_channels
            );
        }
        if input.t.len() != n {
            bail!(
                "forward: t has {} values, expected one per sample ({n})",
                input.t.len()
            );
        }
        if out.len() != n * per_out {
            bail!(
                "forward: out has {} values, expected {n}x{}x{h}x{w}",
                out.len(),
                c.out_channels
            );
        }
        if let Some((i, t)) = input.t.iter().enumerate().find(|(_, t)| !t.is_finite()) {
            bail!("forward: t[{i}] = {t} is not finite");
        }
        self.reserve(n);
        let step = self.arena.samples;
        for (first, ((x, t), o)) in input
            .x
            .chunks(step * per_in)
            .zip(input.t.chunks(step))
            .zip(out.chunks_mut(step * per_out))
            .enumerate()
        {
            let first = first * step;
            self.pass(x, t, o, &mut |name: &str, i: usize, a: &[f32]| {
                observer(name, first + i, a)
            })?;
        }
        Ok(())
    }

    /// The samples of `t` (at most the arena's) through the whole network, layer by layer.
    fn pass(
        &mut self,
        x: &[f32],
        t: &[f32],
        out: &mut [f32],
        observer: &mut Observer<'_>,
    ) -> Result<()> {
        let (height, width) = (self.height, self.width);
        let n = t.len();
        let pool = &self.pool;
        let a = &mut self.arena;
        let ctx = |e: KernelError, what: &str| anyhow!("{what}: {e}");
        // Calls the observer for each sample of `all` (n samples back to back).
        let mut observe = |name: &str, all: &[f32]| {
            for (i, one) in all.chunks_exact(all.len() / n).enumerate() {
                observer(name, i, one);
            }
        };
        let (sin, emb) = (a.per.sin, a.per.emb);
        let emb_sin = &mut a.emb_sin[..n * sin];
        for (&t, e) in t.iter().zip(emb_sin.chunks_exact_mut(sin)) {
            k::timestep_embedding(t, sin, MAX_PERIOD, e)
                .map_err(|e| ctx(e, "timestep_embedding"))?;
        }
        observe("emb_sinusoidal", emb_sin);
        let hidden = &mut a.emb_hidden[..n * emb];
        linear_batch(pool, emb_sin, n, &self.time[0], hidden)
            .map_err(|e| ctx(e, "time_embed.0"))?;
        k::silu_inplace(hidden);
        linear_batch(pool, hidden, n, &self.time[1], &mut a.emb[..n * emb])
            .map_err(|e| ctx(e, "time_embed.2"))?;
        observe("emb", &a.emb[..n * emb]);
        let emb_silu = &mut a.emb_silu[..n * emb];
        emb_silu.copy_from_slice(&a.emb[..n * emb]);
        k::silu_inplace(emb_silu);

        let isa = self.isa;
        let mut run = Runner {
            pool,
            isa,
            work: &mut a.work,
            scratch: &a.scratch,
            film: &mut a.film,
            emb_silu,
            cur: 0,
            batch: n,
            height,
            width,
        };
        run.work[0][..x.len()].copy_from_slice(x);
        for (b, &at) in self.input_blocks.iter().zip(&a.skip_at) {
            run.block(b)?;
            let len = n * b.c_out * (height / b.ds_out) * (width / b.ds_out);
            let _p = profile::scope(Kind::Copy, 0);
            let state = &run.work[run.cur][..len];
            a.skips[n * at..n * at + len].copy_from_slice(state);
            observe(&b.name, state);
        }
        run.block(&self.middle)?;
        observe(&self.middle.name, run.state(&self.middle));
        for (b, &at) in self.output_blocks.iter().zip(a.skip_at.iter().rev()) {
            let [dst, _] = others(run.cur);
            run.concat(b, &a.skips[n * at..], dst)
                .map_err(|e| ctx(e, &b.name))?;
            run.cur = dst;
            run.block(b)?;
            observe(&b.name, run.state(b));
        }
        let hw = height * width;
        let ch = self.arch.out.channels;
        let [tmp, _] = others(run.cur);
        let (src, dst) = pair(run.work, run.cur, tmp);
        let dst = &mut dst[..n * ch * hw];
        group_norm_batch(
            pool,
            &src[..n * ch * hw],
            (n, hw),
            &self.out_norm,
            None,
            true,
            dst,
        )
        .map_err(|e| ctx(e, "out.0"))?;
        conv_batch(
            pool,
            run.scratch,
            isa,
            dst,
            (n, height, width),
            &self.out_conv,
            out,
        )
        .map_err(|e| ctx(e, "out.2"))
    }
}
