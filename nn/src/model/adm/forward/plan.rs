//! The activation memory of a forward: how many samples a pass runs, what one sample needs
//! at one input size ([`Needs`], [`MemoryPlan`]) and the arena that holds a pass.

use super::*;

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

/// Sizes the arena needs, from a walk over the layers at one input size.
#[derive(Default)]
pub(in crate::model::adm) struct Needs {
    pub(in crate::model::adm) work: usize,
    pub(in crate::model::adm) scratch: usize,
    pub(in crate::model::adm) film: usize,
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

/// Activation sizes of one sample at one input size: the work buffers, conv scratch and FiLM
/// ([`Needs`]), and where each encoder output sits in the skip stack.
pub(in crate::model::adm) struct MemoryPlan {
    pub(in crate::model::adm) needs: Needs,
    /// Start of every input block's output inside the skip stack.
    pub(in crate::model::adm) skip_at: Vec<usize>,
    /// Floats of the whole skip stack.
    pub(in crate::model::adm) skip_len: usize,
}

impl MemoryPlan {
    pub(in crate::model::adm) fn new(
        r: &Resolved,
        in_channels: usize,
        height: usize,
        width: usize,
    ) -> MemoryPlan {
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

/// Floats of one sample's activations in the arena.
#[derive(Debug, Clone, Copy)]
pub(super) struct PerSample {
    /// Each work buffer.
    pub(super) work: usize,
    /// The skip stack.
    pub(super) skips: usize,
    /// `emb_sin`.
    pub(super) sin: usize,
    /// The time embedding (and its hidden layer).
    pub(super) emb: usize,
    /// A ResBlock's `emb_layers` output.
    pub(super) film: usize,
}

/// Activation memory for one input size and up to `samples` samples per pass, allocated
/// when the model is built and grown (once) to the largest pass it runs. Every buffer holds
/// the pass's samples back to back, `[samples, …]`.
#[derive(Debug)]
pub(super) struct Arena {
    /// Samples every buffer has room for.
    pub(super) samples: usize,
    pub(super) per: PerSample,
    /// Three work buffers.
    pub(super) work: [Vec<f32>; 3],
    /// The encoder outputs, block after block, each block's for all samples of the pass.
    pub(super) skips: Vec<f32>,
    /// Start of every input block's output inside one sample's share of `skips` (a pass of
    /// n samples keeps block b at n·skip_at[b]).
    pub(super) skip_at: Vec<usize>,
    pub(super) emb_sin: Vec<f32>,
    pub(super) emb_hidden: Vec<f32>,
    pub(super) emb: Vec<f32>,
    pub(super) emb_silu: Vec<f32>,
    /// The ResBlocks' `emb_layers` output.
    pub(super) film: Vec<f32>,
    /// Per thread: conv packing panels or one row of attention weights.
    pub(super) scratch: ThreadScratch,
}

impl Arena {
    /// Sizes every per-sample buffer for `samples` samples (zeroed).
    pub(super) fn reserve(&mut self, samples: usize) {
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

    pub(super) fn bytes(&self) -> usize {
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
