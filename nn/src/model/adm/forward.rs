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

use anyhow::{anyhow, bail, Result};
use tweedie_kernels::{self as k, Conv2d, Isa, KernelError};

use super::arch::{
    conv3x3, AdmArch, Block, Layer, QkvOrder, Updown, GROUPNORM_EPS, GROUPNORM_GROUPS, MAX_PERIOD,
};
use crate::backend::profile::{self, Kind};
use crate::backend::{Pool, ThreadScratch};
use crate::model::layers::{
    conv_batch, group_norm_batch, linear_batch, ConvForm, ConvPolicy, LayerForm, ParamResolver,
};
pub(super) use crate::model::layers::{ConvP, LinearP, NormP};
use crate::weights::Weights;

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

#[derive(Debug)]
pub(super) struct ResP<'w> {
    pub(super) c_in: usize,
    pub(super) c_out: usize,
    pub(super) updown: Updown,
    pub(super) scale_shift: bool,
    pub(super) in_norm: NormP<'w>,
    pub(super) in_conv: ConvP<'w>,
    pub(super) emb: LinearP<'w>,
    pub(super) out_norm: NormP<'w>,
    pub(super) out_conv: ConvP<'w>,
    pub(super) skip: Option<ConvP<'w>>,
}

#[derive(Debug)]
pub(super) struct AttnP<'w> {
    pub(super) channels: usize,
    pub(super) heads: usize,
    pub(super) order: k::QkvOrder,
    pub(super) norm: NormP<'w>,
    pub(super) qkv: ConvP<'w>,
    pub(super) proj: ConvP<'w>,
}

#[derive(Debug)]
pub(super) enum Op<'w> {
    Conv(ConvP<'w>),
    Res(Box<ResP<'w>>),
    Attn(Box<AttnP<'w>>),
    Down {
        channels: usize,
        conv: Option<ConvP<'w>>,
    },
    Up {
        channels: usize,
        conv: Option<ConvP<'w>>,
    },
}

/// A layer: its PyTorch name, the downsample factor of its input, what it does.
#[derive(Debug)]
pub(super) struct LayerP<'w> {
    pub(super) name: String,
    pub(super) ds: usize,
    pub(super) op: Op<'w>,
}

#[derive(Debug)]
pub(super) struct BlockP<'w> {
    pub(super) name: String,
    pub(super) layers: Vec<LayerP<'w>>,
    /// Channels of the decoder state entering an output block (before the concatenation).
    pub(super) c_state: usize,
    pub(super) skip_channels: usize,
    pub(super) ds_in: usize,
    pub(super) c_out: usize,
    pub(super) ds_out: usize,
}

/// Most floats the widest activation of one pass may take, all its samples together: a
/// larger batch runs in passes of fewer samples ([`samples_per_pass`]). The arena holds
/// about a dozen activations of that size, so this bounds it (for the bundled 32×32 model,
/// passes of 16 samples and 27 MB of arena with the scratch of 2 threads).
pub const PASS_WIDEST_FLOATS: usize = 3 << 19;

/// Samples of a `batch` that one pass of the forward runs layer by layer together on
/// `height`×`width` inputs: as many as keep the widest block input of the pass within
/// [`PASS_WIDEST_FLOATS`], at least one (the arena is sized for that many samples).
pub fn samples_per_pass(arch: &AdmArch, height: usize, width: usize, batch: usize) -> usize {
    let widest = arch
        .blocks()
        .map(|b| {
            b.c_in
                .saturating_mul(height / b.ds_in)
                .saturating_mul(width / b.ds_in)
        })
        .max()
        .unwrap_or(1);
    (PASS_WIDEST_FLOATS / widest.max(1)).clamp(1, batch.max(1))
}

/// Floats of one sample's activations in the arena.
#[derive(Debug, Clone, Copy)]
struct PerSample {
    /// Each work buffer.
    work: usize,
    /// The skip stack.
    skips: usize,
    /// `emb_sin`.
    sin: usize,
    /// The time embedding (and its hidden layer).
    emb: usize,
    /// A ResBlock's `emb_layers` output.
    film: usize,
}

/// Activation memory for one input size and up to `samples` samples per pass, allocated
/// when the model is built and grown (once) to the largest pass it runs. Every buffer holds
/// the pass's samples back to back, `[samples, …]`.
#[derive(Debug)]
struct Arena {
    /// Samples every buffer has room for.
    samples: usize,
    per: PerSample,
    /// Three work buffers.
    work: [Vec<f32>; 3],
    /// The encoder outputs, block after block, each block's for all samples of the pass.
    skips: Vec<f32>,
    /// Start of every input block's output inside one sample's share of `skips` (a pass of
    /// n samples keeps block b at n·skip_at[b]).
    skip_at: Vec<usize>,
    emb_sin: Vec<f32>,
    emb_hidden: Vec<f32>,
    emb: Vec<f32>,
    emb_silu: Vec<f32>,
    /// The ResBlocks' `emb_layers` output.
    film: Vec<f32>,
    /// Per thread: conv packing panels or one row of attention weights.
    scratch: ThreadScratch,
}

impl Arena {
    /// Sizes every per-sample buffer for `samples` samples (zeroed).
    fn reserve(&mut self, samples: usize) {
        let (n, p) = (samples, self.per);
        self.samples = n;
        self.work = std::array::from_fn(|_| vec![0.0; n * p.work]);
        self.skips = vec![0.0; n * p.skips];
        self.emb_sin = vec![0.0; n * p.sin];
        self.emb_hidden = vec![0.0; n * p.emb];
        self.emb = vec![0.0; n * p.emb];
        self.emb_silu = vec![0.0; n * p.emb];
        self.film = vec![0.0; n * p.film];
    }

    fn bytes(&self) -> usize {
        let floats = 3 * self.work[0].len()
            + self.skips.len()
            + self.emb_sin.len()
            + self.emb_hidden.len()
            + self.emb.len()
            + self.emb_silu.len()
            + self.film.len()
            + self.scratch.floats();
        4 * floats
    }
}

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

/// Resolves the ADM's layers by their PyTorch names.
struct Resolver<'w> {
    params: ParamResolver<'w>,
}

impl<'w> Resolver<'w> {
    fn norm(&self, p: &str, c: usize) -> Result<NormP<'w>> {
        self.params.norm(p, c, GROUPNORM_GROUPS, GROUPNORM_EPS)
    }

    fn conv(&self, p: &str, conv: Conv2d) -> Result<ConvP<'w>> {
        self.params.conv(p, conv)
    }

    fn linear(&self, p: &str, in_features: usize, out_features: usize) -> Result<LinearP<'w>> {
        self.params.linear(p, in_features, out_features)
    }

    fn layer(&self, layer: &Layer) -> Result<LayerP<'w>> {
        let name = layer.name().to_string();
        let (ds, op) = match layer {
            Layer::Conv(c) => (c.ds, Op::Conv(self.conv(&name, conv3x3(c.c_in, c.c_out))?)),
            Layer::Res(r) => {
                let emb_out = if r.scale_shift { 2 * r.c_out } else { r.c_out };
                let skip = if r.c_in != r.c_out {
                    let conv = Conv2d {
                        c_in: r.c_in,
                        c_out: r.c_out,
                        kernel: 1,
                        stride: 1,
                        pad: 0,
                    };
                    Some(self.conv(&format!("{name}.skip_connection"), conv)?)
                } else {
                    None
                };
                let res = ResP {
                    c_in: r.c_in,
                    c_out: r.c_out,
                    updown: r.updown,
                    scale_shift: r.scale_shift,
                    in_norm: self.norm(&format!("{name}.in_layers.0"), r.c_in)?,
                    in_conv: self.conv(&format!("{name}.in_layers.2"), conv3x3(r.c_in, r.c_out))?,
                    emb: self.linear(&format!("{name}.emb_layers.1"), r.emb_dim, emb_out)?,
                    out_norm: self.norm(&format!("{name}.out_layers.0"), r.c_out)?,
                    out_conv: self
                        .conv(&format!("{name}.out_layers.3"), conv3x3(r.c_out, r.c_out))?,
                    skip,
                };
                (r.ds, Op::Res(Box::new(res)))
            }
            Layer::Attention(a) => {
                let c = a.channels;
                let one = |c_out| Conv2d {
                    c_in: c,
                    c_out,
                    kernel: 1,
                    stride: 1,
                    pad: 0,
                };
                let attn = AttnP {
                    channels: c,
                    heads: a.heads,
                    order: match a.order {
                        QkvOrder::Legacy => k::QkvOrder::Legacy,
                        QkvOrder::New => k::QkvOrder::New,
                    },
                    norm: self.norm(&format!("{name}.norm"), c)?,
                    qkv: self.conv(&format!("{name}.qkv"), one(3 * c))?,
                    proj: self.conv(&format!("{name}.proj_out"), one(c))?,
                };
                (a.ds, Op::Attn(Box::new(attn)))
            }
            Layer::Downsample(r) => {
                let conv = if r.use_conv {
                    let stride2 = Conv2d {
                        stride: 2,
                        ..conv3x3(r.channels, r.channels)
                    };
                    Some(self.conv(&format!("{name}.op"), stride2)?)
                } else {
                    None
                };
                (
                    r.ds,
                    Op::Down {
                        channels: r.channels,
                        conv,
                    },
                )
            }
            Layer::Upsample(r) => {
                let conv = if r.use_conv {
                    Some(self.conv(&format!("{name}.conv"), conv3x3(r.channels, r.channels))?)
                } else {
                    None
                };
                (
                    r.ds,
                    Op::Up {
                        channels: r.channels,
                        conv,
                    },
                )
            }
        };
        Ok(LayerP { name, ds, op })
    }

    fn block(&self, b: &Block) -> Result<BlockP<'w>> {
        Ok(BlockP {
            name: b.name.clone(),
            layers: b
                .layers
                .iter()
                .map(|l| self.layer(l))
                .collect::<Result<_>>()?,
            c_state: b.c_in - b.skip_channels,
            skip_channels: b.skip_channels,
            ds_in: b.ds_in,
            c_out: b.c_out,
            ds_out: b.ds_out,
        })
    }
}

/// Sizes the arena needs, from a walk over the layers at one input size.
#[derive(Default)]
pub(super) struct Needs {
    pub(super) work: usize,
    pub(super) scratch: usize,
    pub(super) film: usize,
}

impl Needs {
    fn work(&mut self, n: usize) {
        self.work = self.work.max(n);
    }

    fn conv(&mut self, c: &ConvP, h: usize, w: usize) {
        self.scratch = self.scratch.max(c.scratch_len(h, w));
        let (oh, ow) = c.conv.out_size(h, w);
        self.work(c.conv.c_in * h * w);
        self.work(c.conv.c_out * oh * ow);
    }

    fn layer(&mut self, l: &LayerP, h: usize, w: usize) {
        let (h, w) = (h / l.ds, w / l.ds);
        match &l.op {
            Op::Conv(c) => self.conv(c, h, w),
            Op::Res(r) => {
                let (ho, wo) = r.updown.resampled(h, w);
                self.work(r.c_in * h.max(ho) * w.max(wo));
                self.conv(&r.in_conv, ho, wo);
                self.conv(&r.out_conv, ho, wo);
                if let Some(s) = &r.skip {
                    self.conv(s, ho, wo);
                }
                self.film = self.film.max(r.emb.bias.len());
            }
            Op::Attn(a) => {
                self.conv(&a.qkv, h, w);
                self.conv(&a.proj, h, w);
                self.scratch = self.scratch.max(k::attention_scratch_len(h * w));
            }
            Op::Down { channels, conv } => {
                self.work(channels * h * w);
                if let Some(c) = conv {
                    self.conv(c, h, w);
                }
            }
            Op::Up { channels, conv } => {
                self.work(channels * 4 * h * w);
                if let Some(c) = conv {
                    self.conv(c, 2 * h, 2 * w);
                }
            }
        }
    }
}

/// Every tensor of an [`AdmArch`] resolved by name and size check, in layer order: the CPU
/// forward runs from it and the device graph (`super::device`) uploads it.
pub(super) struct Resolved<'w> {
    pub(super) time: [LinearP<'w>; 2],
    pub(super) input_blocks: Vec<BlockP<'w>>,
    pub(super) middle: BlockP<'w>,
    pub(super) output_blocks: Vec<BlockP<'w>>,
    pub(super) out_norm: NormP<'w>,
    pub(super) out_conv: ConvP<'w>,
}

/// Resolves every weight of `arch` (one clear error naming the first missing or mis-sized
/// tensor).
pub(super) fn resolve<'w>(arch: &AdmArch, weights: &'w Weights) -> Result<Resolved<'w>> {
    let c = &arch.config;
    let r = Resolver {
        params: ParamResolver { weights },
    };
    let ted = arch.time_embed_dim;
    let blocks = |bs: &[Block]| bs.iter().map(|b| r.block(b)).collect::<Result<Vec<_>>>();
    Ok(Resolved {
        time: [
            r.linear("time_embed.0", c.model_channels, ted)?,
            r.linear("time_embed.2", ted, ted)?,
        ],
        input_blocks: blocks(&arch.input_blocks)?,
        middle: r.block(&arch.middle_block)?,
        output_blocks: blocks(&arch.output_blocks)?,
        out_norm: r.norm("out.0", arch.out.channels)?,
        out_conv: r.conv("out.2", conv3x3(arch.out.channels, arch.out.out_channels))?,
    })
}

impl Resolved<'_> {
    /// Calls `f(name, conv, h, w)` for every convolution with the size of its input map,
    /// in layer order, for `height`×`width` inputs.
    fn for_each_conv(
        &mut self,
        height: usize,
        width: usize,
        f: &mut dyn FnMut(&str, &mut ConvP, usize, usize) -> Result<()>,
    ) -> Result<()> {
        let blocks = self
            .input_blocks
            .iter_mut()
            .chain([&mut self.middle])
            .chain(self.output_blocks.iter_mut());
        for l in blocks.flat_map(|b| b.layers.iter_mut()) {
            let (h, w) = (height / l.ds, width / l.ds);
            let n = &l.name;
            match &mut l.op {
                Op::Conv(c) => f(n, c, h, w)?,
                Op::Res(r) => {
                    let (ho, wo) = r.updown.resampled(h, w);
                    f(&format!("{n}.in_layers.2"), &mut r.in_conv, ho, wo)?;
                    f(&format!("{n}.out_layers.3"), &mut r.out_conv, ho, wo)?;
                    if let Some(s) = &mut r.skip {
                        f(&format!("{n}.skip_connection"), s, ho, wo)?;
                    }
                }
                Op::Attn(a) => {
                    f(&format!("{n}.qkv"), &mut a.qkv, h, w)?;
                    f(&format!("{n}.proj_out"), &mut a.proj, h, w)?;
                }
                Op::Down { conv: Some(c), .. } => f(&format!("{n}.op"), c, h, w)?,
                Op::Up { conv: Some(c), .. } => f(&format!("{n}.conv"), c, 2 * h, 2 * w)?,
                Op::Down { .. } | Op::Up { .. } => {}
            }
        }
        f("out.2", &mut self.out_conv, height, width)
    }

    /// Sets every convolution's form by `policy` (transforming the Winograd layers' weights)
    /// and lists the 3×3 'same' ones; with `transform` false, only lists what the forms
    /// would be.
    fn set_forms(
        &mut self,
        height: usize,
        width: usize,
        policy: ConvPolicy,
        transform: bool,
    ) -> Result<Vec<LayerForm>> {
        let mut forms = Vec::new();
        self.for_each_conv(height, width, &mut |name, c, h, w| {
            let form = if transform {
                c.set_form(policy, h, w)?
            } else {
                ConvForm::chosen(policy, &c.conv, h, w)
            };
            if k::Winograd::of(&c.conv).is_some() {
                forms.push(LayerForm {
                    name: name.to_string(),
                    map: (h, w),
                    channels: (c.conv.c_in, c.conv.c_out),
                    form,
                });
            }
            Ok(())
        })?;
        Ok(forms)
    }
}

/// The form of every 3×3 'same' convolution of `arch` under `policy` for `height`×`width`
/// inputs, in layer order (what [`AdmModel::forms`] will be), without transforming weights.
pub fn conv_forms(
    arch: &AdmArch,
    weights: &Weights,
    height: usize,
    width: usize,
    policy: ConvPolicy,
) -> Result<Vec<LayerForm>> {
    arch.check_input_size(height, width)?;
    resolve(arch, weights)?.set_forms(height, width, policy, false)
}

/// Activation sizes of one sample at one input size: the work buffers, conv scratch and FiLM
/// ([`Needs`]), and where each encoder output sits in the skip stack.
pub(super) struct MemoryPlan {
    pub(super) needs: Needs,
    /// Start of every input block's output inside the skip stack.
    pub(super) skip_at: Vec<usize>,
    /// Floats of the whole skip stack.
    pub(super) skip_len: usize,
}

impl MemoryPlan {
    pub(super) fn new(r: &Resolved, in_channels: usize, height: usize, width: usize) -> MemoryPlan {
        let (input_blocks, middle, output_blocks) = (&r.input_blocks, &r.middle, &r.output_blocks);
        let mut needs = Needs::default();
        needs.work(in_channels * height * width);
        for b in input_blocks.iter().chain([middle]).chain(output_blocks) {
            let hw = height / b.ds_in * (width / b.ds_in);
            needs.work((b.c_state + b.skip_channels) * hw);
            for l in &b.layers {
                needs.layer(l, height, width);
            }
        }
        let mut skip_at = Vec::with_capacity(input_blocks.len());
        let mut skip_len = 0;
        for b in input_blocks.iter() {
            skip_at.push(skip_len);
            skip_len += b.c_out * (height / b.ds_out) * (width / b.ds_out);
        }
        needs.conv(&r.out_conv, height, width);
        MemoryPlan {
            needs,
            skip_at,
            skip_len,
        }
    }
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
    /// weights transformed once, here).
    pub fn with_policy(
        arch: &AdmArch,
        weights: &'w Weights,
        height: usize,
        width: usize,
        threads: usize,
        policy: ConvPolicy,
    ) -> Result<AdmModel<'w>> {
        if threads == 0 {
            bail!("forward: threads must be at least 1");
        }
        arch.check_input_size(height, width)?;
        crate::backend::enable_simd();
        let c = &arch.config;
        let ted = arch.time_embed_dim;
        let mut resolved = resolve(arch, weights)?;
        let forms = resolved.set_forms(height, width, policy, true)?;
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

/// The two buffer indices other than `i`.
pub(super) fn others(i: usize) -> [usize; 2] {
    [(i + 1) % 3, (i + 2) % 3]
}

/// Buffer `src` shared and buffer `dst` mutable (`src != dst`).
pub(super) fn pair<B>(work: &mut [B; 3], src: usize, dst: usize) -> (&B, &mut B) {
    debug_assert_ne!(src, dst);
    let [a, b, c] = work;
    match (src, dst) {
        (0, 1) => (a, b),
        (0, 2) => (a, c),
        (1, 0) => (b, a),
        (1, 2) => (b, c),
        (2, 0) => (c, a),
        _ => (c, b),
    }
}

/// Walks the layers of a pass through the three work buffers, each layer one pool job over
/// all `batch` samples (a buffer holds them back to back).
struct Runner<'a> {
    pool: &'a Pool,
    isa: Isa,
    work: &'a mut [Vec<f32>; 3],
    scratch: &'a ThreadScratch,
    film: &'a mut [f32],
    /// SiLU(emb), `[batch, time_embed_dim]`.
    emb_silu: &'a [f32],
    /// The buffer holding the current activation.
    cur: usize,
    /// Samples in the pass.
    batch: usize,
    height: usize,
    width: usize,
}

impl Runner<'_> {
    /// The block's output (in the current buffer), all samples.
    fn state(&self, b: &BlockP) -> &[f32] {
        let len = self.batch * b.c_out * (self.height / b.ds_out) * (self.width / b.ds_out);
        &self.work[self.cur][..len]
    }

    fn block(&mut self, b: &BlockP) -> Result<()> {
        for l in &b.layers {
            self.layer(l).map_err(|e| anyhow!("{}: {e}", l.name))?;
        }
        Ok(())
    }

    /// `work[dst]` = the decoder state (current buffer) and the encoder output `skips` (the
    /// pass's samples back to back) concatenated along channels, sample by sample.
    fn concat(&mut self, b: &BlockP, skips: &[f32], dst: usize) -> Result<(), KernelError> {
        let _p = profile::scope(Kind::Copy, 0);
        let hw = (self.height / b.ds_in) * (self.width / b.ds_in);
        let (cs, ck) = (b.c_state, b.skip_channels);
        let n = self.batch;
        let (src, cat) = pair(self.work, self.cur, dst);
        let (src, skips) = (&src[..n * cs * hw], &skips[..n * ck * hw]);
        self.pool.split_batch(
            &mut cat[..n * (cs + ck) * hw],
            n,
            cs + ck,
            1,
            |_, s, cr, piece| {
                for (c, row) in cr.zip(piece.chunks_exact_mut(hw)) {
                    let from = match c.checked_sub(cs) {
                        None => &src[(s * cs + c) * hw..][..hw],
                        Some(k) => &skips[(s * ck + k) * hw..][..hw],
                    };
                    row.copy_from_slice(from);
                }
                Ok(())
            },
        )
    }

    fn layer(&mut self, l: &LayerP) -> Result<(), KernelError> {
        let (h, w) = (self.height / l.ds, self.width / l.ds);
        match &l.op {
            Op::Conv(c) => {
                let [o, _] = others(self.cur);
                self.conv(c, self.cur, o, h, w)?;
                self.cur = o;
            }
            Op::Res(r) => self.res(r, h, w)?,
            Op::Attn(a) => self.attention(a, h, w)?,
            Op::Down { channels, conv } => {
                let [a, _] = others(self.cur);
                match conv {
                    Some(c) => self.conv(c, self.cur, a, h, w)?,
                    None => self.resample(Updown::Down, *channels, self.cur, a, h, w)?,
                }
                self.cur = a;
            }
            Op::Up { channels, conv } => {
                let [a, b] = others(self.cur);
                self.resample(Updown::Up, *channels, self.cur, a, h, w)?;
                self.cur = a;
                if let Some(c) = conv {
                    self.conv(c, a, b, 2 * h, 2 * w)?;
                    self.cur = b;
                }
            }
        }
        Ok(())
    }

    /// `work[dst] = conv(work[src])` for `h`×`w` inputs.
    fn conv(
        &mut self,
        c: &ConvP,
        src: usize,
        dst: usize,
        h: usize,
        w: usize,
    ) -> Result<(), KernelError> {
        let n = self.batch;
        let (oh, ow) = c.conv.out_size(h, w);
        let (x, out) = pair(self.work, src, dst);
        conv_batch(
            self.pool,
            self.scratch,
            self.isa,
            &x[..n * c.conv.c_in * h * w],
            (n, h, w),
            c,
            &mut out[..n * c.conv.c_out * oh * ow],
        )
    }

    /// GroupNorm (+FiLM from `film`, +SiLU) of `work[src]` into `work[dst]`.
    fn norm(
        &mut self,
        p: &NormP,
        src: usize,
        dst: usize,
        hw: usize,
        film: Option<&[f32]>,
        silu: bool,
    ) -> Result<(), KernelError> {
        let len = self.batch * p.channels * hw;
        let (x, out) = pair(self.work, src, dst);
        group_norm_batch(
            self.pool,
            &x[..len],
            (self.batch, hw),
            p,
            film,
            silu,
            &mut out[..len],
        )
    }

    /// `work[dst] = R(work[src])` for `channels` maps of `h`×`w`.
    fn resample(
        &mut self,
        r: Updown,
        channels: usize,
        src: usize,
        dst: usize,
        h: usize,
        w: usize,
    ) -> Result<(), KernelError> {
        let (ho, wo) = r.resampled(h, w);
        let _p = profile::scope(Kind::Resample, 0);
        let n = self.batch;
        let (x, out) = pair(self.work, src, dst);
        let per = channels * h * w;
        let x = &x[..n * per];
        self.pool.split_batch(
            &mut out[..n * channels * ho * wo],
            n,
            channels,
            1,
            |_, s, cr, piece| {
                let x = &x[s * per..(s + 1) * per];
                match r {
                    Updown::Up => k::upsample_nearest2x(x, h, w, cr, piece),
                    Updown::Down => k::avg_pool2x2(x, h, w, cr, piece),
                    Updown::None => piece.copy_from_slice(&x[cr.start * h * w..cr.end * h * w]),
                }
                Ok(())
            },
        )
    }

    /// `work[dst] += work[src]` over the first `channels·hw` values of every sample.
    fn add(
        &mut self,
        src: usize,
        dst: usize,
        channels: usize,
        hw: usize,
    ) -> Result<(), KernelError> {
        let _p = profile::scope(Kind::Add, 0);
        let rows = self.batch * channels;
        let (x, out) = pair(self.work, src, dst);
        let x = &x[..rows * hw];
        self.pool
            .split(&mut out[..rows * hw], rows, 1, |_, cr, piece| {
                k::add_inplace(piece, &x[cr.start * hw..cr.end * hw]);
                Ok(())
            })
    }

    /// guided-diffusion ResBlock (adm_unet.md §4), input in `cur`, output in another buffer.
    fn res(&mut self, r: &ResP, h: usize, w: usize) -> Result<(), KernelError> {
        let x = self.cur;
        let [a, b] = others(x);
        let (ho, wo) = r.updown.resampled(h, w);
        let (hw, hwo) = (h * w, ho * wo);
        let nb = self.batch;
        // emb_layers: Linear(SiLU(emb)) (the SiLU was applied once for all blocks).
        let emb_out = r.emb.bias.len();
        linear_batch(
            self.pool,
            self.emb_silu,
            nb,
            &r.emb,
            &mut self.film[..nb * emb_out],
        )?;
        // in_layers: GroupNorm, SiLU, [resample], conv. `hb` holds h, `fb` is free.
        self.norm(&r.in_norm, x, a, hw, None, true)?;
        let (hb, fb) = if r.updown == Updown::None {
            self.conv(&r.in_conv, a, b, h, w)?;
            (b, a)
        } else {
            self.resample(r.updown, r.c_in, a, b, h, w)?;
            self.conv(&r.in_conv, b, a, ho, wo)?;
            (a, b)
        };
        let n = r.c_out * hwo;
        let film = std::mem::take(&mut self.film);
        let film_all = &film[..nb * emb_out];
        if !r.scale_shift {
            // h + emb_out[:, :, None, None] before the whole out_layers.
            let _p = profile::scope(Kind::Add, 0);
            let (_, hbuf) = pair(self.work, fb, hb);
            self.pool
                .split_batch(&mut hbuf[..nb * n], nb, r.c_out, 1, |_, s, cr, piece| {
                    let film = &film_all[s * emb_out..(s + 1) * emb_out];
                    for (row, &e) in piece.chunks_exact_mut(hwo).zip(&film[cr]) {
                        row.iter_mut().for_each(|v| *v += e);
                    }
                    Ok(())
                })?;
        }
        // out_layers: GroupNorm (then FiLM: scale = first half, shift = second), SiLU, conv.
        let scale_shift = r.scale_shift.then_some(film_all);
        let normed = self.norm(&r.out_norm, hb, fb, hwo, scale_shift, true);
        self.film = film;
        normed?;
        self.conv(&r.out_conv, fb, hb, ho, wo)?;
        // skip_connection(x_upd(x)) + h.
        let mut skip_src = x;
        if r.updown != Updown::None {
            self.resample(r.updown, r.c_in, x, fb, h, w)?;
            skip_src = fb;
        }
        match &r.skip {
            None => self.add(skip_src, hb, r.c_out, hwo)?,
            Some(s) => {
                let spare = if skip_src == x { fb } else { x };
                self.conv(s, skip_src, spare, ho, wo)?;
                self.add(spare, hb, r.c_out, hwo)?;
            }
        }
        self.cur = hb;
        Ok(())
    }

    /// guided-diffusion AttentionBlock (adm_unet.md §5): x + proj_out(attention(qkv(norm(x)))).
    fn attention(&mut self, at: &AttnP, h: usize, w: usize) -> Result<(), KernelError> {
        let x = self.cur;
        let [a, b] = others(x);
        let (c, t) = (at.channels, h * w);
        let n = self.batch;
        self.norm(&at.norm, x, a, t, None, false)?;
        self.conv(&at.qkv, a, b, h, w)?;
        {
            let (qkv, dst) = pair(self.work, b, a);
            let qkv = &qkv[..n * 3 * c * t];
            let scratch = self.scratch;
            let (heads, order) = (at.heads, at.order);
            let _p = profile::scope(Kind::Attention, (n * 2 * c * t * t) as u64);
            self.pool
                .split_batch(&mut dst[..n * c * t], n, heads, 1, |i, s, hr, piece| {
                    let mut sc = scratch.lock(i);
                    let qkv = &qkv[s * 3 * c * t..(s + 1) * 3 * c * t];
                    k::QkvAttention {
                        channels: c,
                        t,
                        heads,
                        order,
                    }
                    .forward(qkv, hr, piece, &mut sc)
                })?;
        }
        self.conv(&at.proj, a, b, h, w)?;
        self.add(x, b, c, t)?;
        self.cur = b;
        Ok(())
    }
}
