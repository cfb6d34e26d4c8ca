//! Training forward and backward of the ADM U-Net (llm.c style, hand-written backward).
//!
//! [`AdmTrainer`] resolves every parameter of an [`AdmArch`] to a span of one flat f32 buffer
//! laid out by [`ParamLayout`] (state_dict order), so the same offsets index the weights, the
//! gradients, the EMA and both AdamW moments. Each sample is processed on its own: forward
//! with saving, then backward, accumulating (`+=`) into a gradient buffer. The per-sample
//! forward/backward keeps the saved activations to one sample (the "tape", planned once
//! from the arch and the image size).
//!
//! What is saved (the inputs the backward needs; everything else is recomputed, as the
//! kernels' backward conventions allow): every layer's input, each ResBlock's `out_layers`
//! GroupNorm input `h`, its `emb_layers` output (FiLM) and both convolutions' inputs (the
//! GroupNorm+SiLU outputs, in_conv's resampled), each attention's GroupNorm output, qkv and
//! attention output, an Upsample-with-conv's upsampled input, the time-MLP activations. The
//! GroupNorm backward recomputes its statistics from its saved input; a ResBlock's resampled
//! skip input is recomputed.
//!
//! Threads: a batch is split over samples, not inside layers. Sample b goes to partial
//! gradient accumulator b·P/batch (P = min([`ACCUMULATORS`], batch), a constant, so chunks are
//! contiguous and fixed); a thread runs a whole chunk alone, in its own activation memory (a
//! `Lane`, one per thread, single-threaded layer calls), and the P partials are summed in
//! accumulator order. The bits therefore do not depend on the thread count or on which
//! thread ran which chunk.
//!
//! Convolutions: the 3×3 'same' convolutions of maps with 16 tiles or more run in Winograd
//! form, forward and input gradient by [`k::Winograd::for_map`] (F(4×4, 3×3) from 16×16
//! maps, 4× fewer products; F(2×2, 3×3) on 8×8 maps, 2.25× fewer), the weight gradient by
//! [`k::Winograd::for_weight_gradient`] (F(4×4) only from 32×32 maps); their weights are
//! transformed once per call of the trainer. The others, and every convolution of the
//! sampler, run as the direct convolution.

use std::cell::Cell;
use std::ops::Range;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};
use tweedie_kernels::{self as k, Isa, KernelError, WeightsRef};

use crate::backend::{Pool, ThreadScratch};
use crate::model::adm::arch::{conv3x3, AdmArch, MAX_PERIOD};
use crate::train::params::ParamLayout;
use crate::weights::spec::ParamKind;

mod backward;
mod forward;
mod init;
mod layers;
mod tape;

use backward::Bwd;
use forward::{head_fwd, layer_fwd};
pub use init::init_params;
use layers::{linear_fwd, lock, Ctx};
use tape::{
    all_convs, layer_out, resolve_block, spans_mut, spans_mut_list, BlockT, ConvT, HeadT, LinT,
    OpT, Planner, Span, Spans, TimeTape, WinoT,
};

/// The ADM U-Net prepared for training on `height`×`width` images.
#[derive(Debug)]
pub struct AdmTrainer {
    arch: AdmArch,
    layout: ParamLayout,
    kinds: Vec<ParamKind>,
    height: usize,
    width: usize,
    time: [LinT; 2],
    blocks: Vec<BlockT>,
    /// Number of input blocks (the first blocks of `blocks`).
    n_input: usize,
    head: HeadT,
    time_tape: TimeTape,
    /// Output span of every input block (its skip), on the tape.
    skip_src: Vec<Span>,
    dskip_at: Vec<Span>,
    /// One activation arena per thread (a thread holds one while it runs a chunk).
    lanes: Vec<Mutex<Lane>>,
    /// The [`ACCUMULATORS`] partial gradients of a batch (allocated on first use).
    partials: Vec<Mutex<Vec<f32>>>,
    /// Every convolution, for [`AdmTrainer::prepare_convs`].
    convs: Vec<ConvT>,
    /// Each convolution's weight flipped for its input gradient ([`Conv2d::flip_weights`]),
    /// at the weight's own offset (other entries unused): done once per batch instead of once
    /// per sample inside the backward.
    flipped: Vec<f32>,
    /// The Winograd convolutions' transformed weights ([`Winograd::transform_weights`]), and
    /// those of their input gradients (from `flipped`), at each one's `ConvT::wino` span.
    wino: Vec<f32>,
    wino_t: Vec<f32>,
    /// Zeros, one per channel of the widest convolution input: the zero "bias" with which a
    /// Winograd input gradient overwrites its output instead of adding to a cleared one.
    zeros: Vec<f32>,
    pool: Pool,
    isa: Isa,
}

/// The partial-gradient accumulators of a batch: a constant, so the batch sum is the same
/// bits for any thread count.
pub const ACCUMULATORS: usize = 8;

/// One sample's activation memory and a one-thread pool: everything a thread needs to run a
/// sample's forward and backward on its own.
#[derive(Debug)]
struct Lane {
    tape: Vec<f32>,
    /// Recomputation and gradient temporaries, each `work_len` floats.
    work: [Vec<f32>; 5],
    /// Gradient of the current layer output / input.
    grad: [Vec<f32>; 2],
    /// Gradients of the encoder outputs arriving through the skips, one span per input block.
    dskip: Vec<f32>,
    /// FiLM gradient (a ResBlock's emb_layers dout).
    dfilm: Vec<f32>,
    /// ∂L/∂SiLU(emb), accumulated over the ResBlocks.
    demb_silu: Vec<f32>,
    /// Time-MLP gradients: d emb, d hidden_silu, d hidden.
    dtime: [Vec<f32>; 3],
    scratch: ThreadScratch,
    /// The Winograd convolutions' weight gradients in transformed form, summed over the
    /// samples of a chunk and turned into weight gradients once at its end
    /// ([`AdmTrainer::flush_du`]); `du_dirty` when it may hold a sum not yet flushed.
    du: Vec<f32>,
    du_dirty: bool,
    /// A pool of one thread: the layer calls of a lane run on the thread that holds it.
    pool: Pool,
}

impl AdmTrainer {
    /// Resolves `arch` for `height`×`width` inputs, plans the tape and work buffers, starts
    /// `threads − 1` workers.
    pub fn new(arch: &AdmArch, height: usize, width: usize, threads: usize) -> Result<AdmTrainer> {
        if threads == 0 {
            bail!("train: threads must be at least 1");
        }
        arch.check_input_size(height, width)?;
        crate::backend::enable_simd();
        let specs = arch.state_dict();
        let layout = ParamLayout::from_specs(&specs)?;
        let kinds = specs.iter().map(|s| s.kind).collect();
        let sp = Spans {
            layout: &layout,
            wino: Cell::new(0),
            wino_t: Cell::new(0),
            du: Cell::new(0),
        };
        let c = &arch.config;
        let ted = arch.time_embed_dim;
        let time = [
            sp.linear("time_embed.0", c.model_channels, ted)?,
            sp.linear("time_embed.2", ted, ted)?,
        ];
        let mut pl = Planner {
            tape: 0,
            work: 0,
            scratch: 0,
            film: 0,
            height,
            width,
        };
        let time_tape = TimeTape {
            sin: pl.alloc(c.model_channels),
            hidden: pl.alloc(ted),
            hidden_silu: pl.alloc(ted),
            emb: pl.alloc(ted),
            emb_silu: pl.alloc(ted),
        };
        // Resolve every layer with its input slot; outputs are wired afterwards.
        let n_input = arch.input_blocks.len();
        let mut blocks = Vec::new();
        for (bi, b) in arch.blocks().enumerate() {
            blocks.push(resolve_block(&sp, &mut pl, b, bi, n_input)?);
        }
        let head_norm = sp.norm("out.0", arch.out.channels)?;
        let head_conv = sp.conv(
            "out.2",
            conv3x3(arch.out.channels, arch.out.out_channels),
            (height, width),
        )?;
        let head_in = pl.alloc(arch.out.channels * height * width);
        pl.conv(&head_conv, height, width);
        // Wire each layer's output to the next input (the first part after a concatenation).
        let inputs: Vec<Span> = blocks
            .iter()
            .flat_map(|b| b.layers.iter().map(|l| l.inp))
            .chain([head_in])
            .collect();
        let mut i = 0;
        let mut skip_src = Vec::with_capacity(n_input);
        for (bi, b) in blocks.iter_mut().enumerate() {
            let nl = b.layers.len();
            for (li, l) in b.layers.iter_mut().enumerate() {
                let (h, w) = pl.hw(l.ds);
                let (c_out, (ho, wo)) = layer_out(&l.op, h, w);
                l.out = inputs[i + 1].head(c_out * ho * wo);
                i += 1;
                if bi < n_input && li + 1 == nl {
                    skip_src.push(l.out);
                }
            }
        }
        let mut dskip_at = Vec::with_capacity(n_input);
        let mut dskip_len = 0;
        for s in &skip_src {
            dskip_at.push(Span {
                at: dskip_len,
                len: s.len,
            });
            dskip_len += s.len;
        }
        let work = pl.work;
        let total = layout.total();
        let convs = all_convs(&blocks, &head_conv);
        let (wino_len, wino_t_len, du_len) = (sp.wino.get(), sp.wino_t.get(), sp.du.get());
        let max_c_in = convs.iter().map(|c| c.conv.c_in).max().unwrap_or(0);
        let lane = || Lane {
            tape: vec![0.0; pl.tape],
            work: std::array::from_fn(|_| vec![0.0; work]),
            grad: std::array::from_fn(|_| vec![0.0; work]),
            dskip: vec![0.0; dskip_len],
            dfilm: vec![0.0; pl.film],
            demb_silu: vec![0.0; ted],
            dtime: [vec![0.0; ted], vec![0.0; ted], vec![0.0; ted]],
            scratch: ThreadScratch::new(1, pl.scratch),
            du: vec![0.0; du_len],
            du_dirty: false,
            pool: Pool::new(1),
        };
        Ok(AdmTrainer {
            arch: arch.clone(),
            layout,
            kinds,
            height,
            width,
            time,
            blocks,
            n_input,
            head: HeadT {
                norm: head_norm,
                conv: head_conv,
                inp: head_in,
            },
            time_tape,
            skip_src,
            dskip_at,
            lanes: (0..threads).map(|_| Mutex::new(lane())).collect(),
            partials: Vec::new(),
            convs,
            flipped: vec![0.0; total],
            wino: vec![0.0; wino_len],
            wino_t: vec![0.0; wino_t_len],
            zeros: vec![0.0; max_c_in],
            pool: Pool::new(threads),
            isa: Isa::detected(),
        })
    }

    /// Refreshes [`AdmTrainer::flipped`], [`AdmTrainer::wino`] and [`AdmTrainer::wino_t`]
    /// from `params` (checked by the caller): one convolution per pool chunk (each writes
    /// only its own spans, so the same bits for any thread count).
    fn prepare_convs(&mut self, params: &[f32]) -> Result<()> {
        let convs = &self.convs;
        let winos: Vec<WinoT> = convs.iter().filter_map(|c| c.wino).collect();
        let flipped = spans_mut_list(
            &mut self.flipped,
            &convs.iter().map(|c| c.w).collect::<Vec<_>>(),
        );
        let mut u = spans_mut_list(
            &mut self.wino,
            &winos.iter().map(|t| t.u).collect::<Vec<_>>(),
        )
        .into_iter();
        let mut u_t = spans_mut_list(
            &mut self.wino_t,
            &winos.iter().map(|t| t.u_t).collect::<Vec<_>>(),
        )
        .into_iter();
        // (conv, its flipped weights, its transformed weights and those of its input gradient)
        let jobs: Vec<_> = convs
            .iter()
            .zip(flipped)
            .map(|(c, f)| {
                let t = c.wino.and_then(|_| u.next().zip(u_t.next()));
                Mutex::new((c, f, t))
            })
            .collect();
        let error = Mutex::new(Ok(()));
        self.pool.run(jobs.len(), &|_, j| {
            let mut job = lock(&jobs[j]);
            let (c, flipped, transformed) = &mut *job;
            let weight = c.w.of(params);
            let mut r = c
                .conv
                .flip_weights(WeightsRef::F32(weight), flipped)
                .map_err(|e| anyhow!("flipping a conv weight: {e}"));
            if let (Some(WinoT { wg, .. }), Some((u, u_t)), Ok(())) = (c.wino, transformed, &r) {
                r = wg
                    .transform_weights(weight, u)
                    .and_then(|()| wg.transposed().transform_weights(flipped, u_t))
                    .map_err(|e| anyhow!("transforming a conv weight: {e}"));
            }
            let mut first = lock(&error);
            if first.is_ok() {
                *first = r;
            }
        });
        error.into_inner().unwrap_or_else(|e| e.into_inner())
    }

    /// The architecture.
    pub fn arch(&self) -> &AdmArch {
        &self.arch
    }

    /// The flat-buffer layout (state_dict order) of parameters and gradients.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Threads (each runs whole samples).
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Bytes of the tape, work buffers, transformed weight gradients and scratch of one thread
    /// (one sample's activation memory; every thread has one).
    pub fn memory_bytes(&self) -> usize {
        let lane = lock(&self.lanes[0]);
        lane.bytes()
    }

    /// guided-diffusion's initialisation, drawn from `seed` (see [`init_params`]).
    pub fn init_params(&self, seed: u64) -> Vec<f32> {
        init_params(&self.layout, &self.kinds, seed)
    }

    fn check_params(&self, params: &[f32]) -> Result<()> {
        self.layout.check_buffer(params.len())
    }

    /// Forward of one sample (`x` [in_channels, H, W], noise input `t`), keeping on the tape
    /// what [`AdmTrainer::backward_sample`] needs; `out` is [out_channels, H, W].
    pub fn forward_sample(
        &mut self,
        params: &[f32],
        x: &[f32],
        t: f32,
        out: &mut [f32],
    ) -> Result<()> {
        self.check_params(params)?;
        self.prepare_convs(params)?;
        let mut lane = lock(&self.lanes[0]);
        self.forward_in(&mut lane, params, x, t, out)
    }

    /// [`AdmTrainer::forward_sample`] in `lane`.
    fn forward_in(
        &self,
        lane: &mut Lane,
        params: &[f32],
        x: &[f32],
        t: f32,
        out: &mut [f32],
    ) -> Result<()> {
        self.check_params(params)?;
        let (h, w) = (self.height, self.width);
        let c = &self.arch.config;
        if x.len() != c.in_channels * h * w || out.len() != c.out_channels * h * w {
            bail!("train forward: x or out has the wrong length for one {h}x{w} sample");
        }
        if !t.is_finite() {
            bail!("train forward: noise input {t} is not finite");
        }
        let ctx = |e: KernelError, what: &str| anyhow!("{what}: {e}");
        let tt = self.time_tape;
        {
            let [sin, hid, hid_s, emb, emb_s] = spans_mut(
                &mut lane.tape,
                [tt.sin, tt.hidden, tt.hidden_silu, tt.emb, tt.emb_silu],
            );
            k::timestep_embedding(t, sin.len(), MAX_PERIOD, sin)
                .map_err(|e| ctx(e, "timestep_embedding"))?;
            linear_fwd(params, &self.time[0], sin, hid).map_err(|e| ctx(e, "time_embed.0"))?;
            hid_s.copy_from_slice(hid);
            k::silu_inplace(hid_s);
            linear_fwd(params, &self.time[1], hid_s, emb).map_err(|e| ctx(e, "time_embed.2"))?;
            emb_s.copy_from_slice(emb);
            k::silu_inplace(emb_s);
        }
        let first = self.blocks[0].layers[0].inp;
        lane.tape[first.r()].copy_from_slice(x);
        let mut ctx_run = Ctx {
            pool: &lane.pool,
            scratch: &lane.scratch,
            isa: self.isa,
            params,
            flipped: &[],
            wino: &self.wino,
            wino_t: &[],
            zeros: &[],
        };
        for b in &self.blocks {
            if let Some((state, src)) = b.skip {
                let hw = (h / b.ds_in) * (w / b.ds_in);
                let s = self.skip_src[src];
                let dst = b.layers[0].inp.at + state * hw;
                lane.tape.copy_within(s.r(), dst);
            }
            for l in &b.layers {
                layer_fwd(&mut ctx_run, &mut lane.tape, &mut lane.work, tt, l, h, w)
                    .map_err(|e| anyhow!("{}: {e}", l.name))?;
            }
        }
        let [t0, ..] = &mut lane.work;
        head_fwd(&mut ctx_run, &lane.tape, t0, &self.head, (h, w), out).map_err(|e| ctx(e, "out"))
    }

    /// Backward of the sample last run by [`AdmTrainer::forward_sample`] (same `params`):
    /// `grads += ∂L/∂params` given `dout` = ∂L/∂out [out_channels, H, W].
    pub fn backward_sample(
        &mut self,
        params: &[f32],
        dout: &[f32],
        grads: &mut [f32],
    ) -> Result<()> {
        self.check_params(params)?;
        self.prepare_convs(params)?;
        let mut lane = lock(&self.lanes[0]);
        self.layout.check_buffer(grads.len())?;
        self.clear_du(&mut lane);
        self.backward_in(&mut lane, params, dout, grads)?;
        self.flush_du(&mut lane, grads)
    }

    /// Zeros the lane's transformed weight gradients if a sum may be left in them (an error
    /// stopped a chunk before its flush).
    fn clear_du(&self, lane: &mut Lane) {
        if lane.du_dirty {
            lane.du.fill(0.0);
        }
        lane.du_dirty = true;
    }

    /// grads += the weight gradients of the lane's transformed sums (one adjoint transform
    /// per weight), which are left zero.
    fn flush_du(&self, lane: &mut Lane, grads: &mut [f32]) -> Result<()> {
        for c in &self.convs {
            if let Some(WinoT { dw, du, .. }) = c.wino {
                let du = &mut lane.du[du.r()];
                dw.weight_gradient(du, &mut grads[c.w.r()])
                    .map_err(|e| anyhow!("conv weight gradient: {e}"))?;
                du.fill(0.0);
            }
        }
        lane.du_dirty = false;
        Ok(())
    }

    /// [`AdmTrainer::backward_sample`] in `lane` (which ran the forward).
    fn backward_in(
        &self,
        lane: &mut Lane,
        params: &[f32],
        dout: &[f32],
        grads: &mut [f32],
    ) -> Result<()> {
        self.check_params(params)?;
        self.layout.check_buffer(grads.len())?;
        let (h, w) = (self.height, self.width);
        if dout.len() != self.arch.config.out_channels * h * w {
            bail!("train backward: dout has the wrong length for one {h}x{w} sample");
        }
        let ctx = |e: KernelError, what: &str| anyhow!("{what}: {e}");
        lane.dskip.fill(0.0);
        lane.demb_silu.fill(0.0);
        let mut run = Ctx {
            pool: &lane.pool,
            scratch: &lane.scratch,
            isa: self.isa,
            params,
            flipped: &self.flipped,
            wino: &self.wino,
            wino_t: &self.wino_t,
            zeros: &self.zeros,
        };
        let tt = self.time_tape;
        let mut bw = Bwd {
            tape: &lane.tape,
            work: &mut lane.work,
            dfilm: &mut lane.dfilm,
            demb_silu: &mut lane.demb_silu,
            emb_silu: tt.emb_silu.of(&lane.tape),
            grads,
            du: &mut lane.du,
        };
        // Head: out = conv(SiLU(GN(x))).
        let [ga, gb] = &mut lane.grad;
        let (mut g, mut gx) = (ga, gb);
        let n_head = self.head.inp.len;
        g[..n_head].fill(0.0);
        bw.head(&mut run, &self.head, dout, &mut g[..n_head], (h, w))
            .map_err(|e| ctx(e, "out"))?;
        let mut glen = n_head;
        for (bi, b) in self.blocks.iter().enumerate().rev() {
            if bi < self.n_input {
                // This block's output is also skip `bi`: add what the decoder sent back.
                let d = self.dskip_at[bi];
                debug_assert_eq!(d.len, glen);
                k::add_inplace(&mut g[..glen], d.of(&lane.dskip));
            }
            for (li, l) in b.layers.iter().enumerate().rev() {
                if bi == 0 && li == 0 {
                    // The stem: parameter gradients only (x is not differentiated).
                    let OpT::Conv(cv) = &l.op else {
                        bail!("internal: the first layer is not the stem conv");
                    };
                    bw.conv_params(&mut run, cv, &g[..glen], l.inp, h, w)
                        .map_err(|e| ctx(e, &l.name))?;
                    continue;
                }
                let nx = l.inp.len;
                gx[..nx].fill(0.0);
                bw.layer(&mut run, l, &g[..glen], &mut gx[..nx], h, w)
                    .map_err(|e| ctx(e, &l.name))?;
                std::mem::swap(&mut g, &mut gx);
                glen = nx;
            }
            if let Some((state, src)) = b.skip {
                let hw = (h / b.ds_in) * (w / b.ds_in);
                let d = self.dskip_at[src];
                k::add_inplace(&mut lane.dskip[d.r()], &g[state * hw..glen]);
                glen = state * hw;
            }
        }
        bw.time_mlp(&run, &self.time, tt, &mut lane.dtime)
            .map_err(|e| ctx(e, "time_embed"))
    }

    /// The DDPM ε-loss of a batch and its gradient: for each sample b, the network runs on
    /// `x[b]` with noise input `t[b]`, and with out[:, 0:C] = ε̂, loss = mean over all
    /// batch·C·H·W elements of (ε̂ − eps)² (formats §7). `grads` is overwritten with
    /// ∂loss/∂params. Returns the loss.
    ///
    /// Parallel over samples, deterministic for any thread count: sample b goes to partial
    /// accumulator `b·P/batch` (P = min([`ACCUMULATORS`], batch); contiguous chunks, in
    /// sample order), a thread runs a whole chunk alone in its own lane, and the partial
    /// gradients and losses are then summed in accumulator order.
    pub fn eps_loss_grad(
        &mut self,
        params: &[f32],
        x: &[f32],
        t: &[f32],
        eps: &[f32],
        grads: &mut [f32],
    ) -> Result<f64> {
        let ci = self.arch.config.in_channels;
        let hw = self.height * self.width;
        let batch = t.len();
        if batch == 0 || x.len() != batch * ci * hw || eps.len() != x.len() {
            bail!("eps loss: x, t and eps disagree on the batch ({batch} timesteps)");
        }
        self.check_params(params)?;
        self.layout.check_buffer(grads.len())?;
        self.prepare_convs(params)?;
        let p = ACCUMULATORS.min(batch);
        let len = grads.len();
        while self.partials.len() < p {
            self.partials.push(Mutex::new(vec![0.0; len]));
        }
        let n = (batch * ci * hw) as f64;
        let losses: Vec<Mutex<Result<f64>>> = (0..p).map(|_| Mutex::new(Ok(0.0))).collect();
        let this = &*self;
        this.pool.run(p, &|thread, j| {
            let samples = (j * batch).div_ceil(p)..((j + 1) * batch).div_ceil(p);
            let mut lane = lock(&this.lanes[thread]);
            let mut g = lock(&this.partials[j]);
            let batch = EpsBatch { x, t, eps };
            let r = this.chunk_loss_grad(&mut lane, params, &batch, samples, n, &mut g);
            *lock(&losses[j]) = r;
        });
        // The partials summed in accumulator order, element ranges split over the threads.
        let parts: Vec<_> = self.partials[..p].iter().map(|g| lock(g)).collect();
        self.pool
            .split(grads, len, 1 << 14, |_, r, piece| {
                piece.copy_from_slice(&parts[0][r.clone()]);
                for part in &parts[1..] {
                    k::add_inplace(piece, &part[r.clone()]);
                }
                Ok(())
            })
            .map_err(|e| anyhow!("summing the partial gradients: {e}"))?;
        drop(parts);
        let mut total = 0.0f64;
        for l in losses {
            total += l.into_inner().unwrap_or_else(|e| e.into_inner())?;
        }
        Ok(total / n)
    }

    /// Runs `samples` of the batch one after the other in `lane`: `g` is overwritten with
    /// their gradient of the ε-loss (normalised by `n` elements); returns their Σ(ε̂ − eps)².
    fn chunk_loss_grad(
        &self,
        lane: &mut Lane,
        params: &[f32],
        batch: &EpsBatch,
        samples: Range<usize>,
        n: f64,
        g: &mut [f32],
    ) -> Result<f64> {
        let EpsBatch { x, t, eps } = *batch;
        let c = &self.arch.config;
        let (ci, co) = (c.in_channels, c.out_channels);
        let hw = self.height * self.width;
        g.fill(0.0);
        self.clear_du(lane);
        let mut out = vec![0.0f32; co * hw];
        let mut dout = vec![0.0f32; co * hw];
        let scale = (2.0 / n) as f32;
        let mut total = 0.0f64;
        for b in samples {
            let xb = &x[b * ci * hw..(b + 1) * ci * hw];
            let eb = &eps[b * ci * hw..(b + 1) * ci * hw];
            self.forward_in(lane, params, xb, t[b], &mut out)?;
            for ((d, &o), &e) in dout.iter_mut().zip(&out).zip(eb) {
                let diff = o - e;
                total += diff as f64 * diff as f64;
                *d = scale * diff;
            }
            self.backward_in(lane, params, &dout, g)?;
        }
        self.flush_du(lane, g)?;
        Ok(total)
    }
}

/// A training batch of the ε-loss: network inputs, noise inputs and the noise to predict.
#[derive(Clone, Copy)]
struct EpsBatch<'a> {
    x: &'a [f32],
    t: &'a [f32],
    eps: &'a [f32],
}

impl Lane {
    fn bytes(&self) -> usize {
        let scratch = self.scratch.floats();
        4 * (self.tape.len()
            + self.work.iter().map(Vec::len).sum::<usize>()
            + self.grad.iter().map(Vec::len).sum::<usize>()
            + self.dskip.len()
            + self.dfilm.len()
            + self.du.len()
            + scratch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;
    use crate::tensors::SafetensorsFile;
    use crate::testdata::golden;
    use tweedie_kernels::Winograd;

    fn golden_trainer(threads: usize) -> (AdmTrainer, Vec<f32>, SafetensorsFile) {
        let dir = golden("adm_small");
        let io = golden("adm_train").join("io.safetensors");
        let config = ModelConfig::load(dir.join("config.json").to_str().unwrap()).unwrap();
        let arch = AdmArch::new(config.adm().unwrap()).unwrap();
        let tr = AdmTrainer::new(&arch, 32, 32, threads).unwrap();
        let file = SafetensorsFile::open(&dir.join("weights.safetensors")).unwrap();
        let mut params = tr.layout().zeros();
        for v in tr.layout().views() {
            let t = file.tensor_f32(&v.name).unwrap();
            assert_eq!(t.shape, v.shape, "{}", v.name);
            params[v.range()].copy_from_slice(&t.data);
        }
        (tr, params, SafetensorsFile::open(&io).unwrap())
    }

    /// The golden DDPM step (../golden/adm_train): loss within 1e-5, output within 1e-5, and
    /// every parameter's gradient within 1e-4·max|g_ref| + 1e-7 (its README's tolerances).
    #[test]
    fn gradients_match_pytorch() {
        let (mut tr, params, io) = golden_trainer(2);
        let get = |n: &str| io.tensor_f32(n).unwrap().data;
        let (x, t, eps) = (get("x_t"), get("t"), get("eps"));
        let mut grads = tr.layout().zeros();
        let loss = tr.eps_loss_grad(&params, &x, &t, &eps, &mut grads).unwrap();
        let loss_ref = get("loss")[0] as f64;
        assert!((loss - loss_ref).abs() <= 1e-5, "loss {loss} vs {loss_ref}");
        // The output of the last sample is still reproducible through forward_sample.
        let out_ref = get("out");
        let per = out_ref.len() / 4;
        let mut out = vec![0.0; per];
        let in_per = x.len() / 4;
        let mut worst_out = 0f32;
        for b in 0..4 {
            tr.forward_sample(&params, &x[b * in_per..(b + 1) * in_per], t[b], &mut out)
                .unwrap();
            for (o, r) in out.iter().zip(&out_ref[b * per..(b + 1) * per]) {
                worst_out = worst_out.max((o - r).abs());
            }
        }
        assert!(worst_out <= 1e-5, "out max abs diff {worst_out}");
        let mut worst = (0f64, String::new());
        for v in tr.layout().views() {
            let r = get(&format!("grad.{}", v.name));
            let g = &grads[v.range()];
            let scale = r.iter().fold(0f64, |m, &x| m.max(x.abs() as f64));
            let err = g
                .iter()
                .zip(&r)
                .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
            assert!(
                err <= 1e-4 * scale + 1e-7,
                "grad.{}: max diff {err:e}, max |g_ref| {scale:e}",
                v.name
            );
            if scale > 1e-6 && err / scale > worst.0 {
                worst = (err / scale, v.name.clone());
            }
        }
        eprintln!(
            "loss {loss} (ref {loss_ref}); out max diff {worst_out:e}; worst grad diff / max|g_ref| = {:e} ({})",
            worst.0, worst.1
        );
    }

    /// Tiny configurations covering both ResBlock variants (FiLM / additive emb), both
    /// resampling styles (up/down ResBlocks / standalone conv resamplers) and both qkv orders.
    fn tiny(variant: u32) -> AdmArch {
        let json = if variant == 0 {
            serde_json::json!({"arch": "adm", "image_size": 8, "num_channels": 32,
                "num_res_blocks": 1, "channel_mult": "1,2", "attention_resolutions": "4",
                "num_head_channels": 16, "use_scale_shift_norm": true, "resblock_updown": true,
                "learn_sigma": true, "in_channels": 1})
        } else {
            serde_json::json!({"arch": "adm", "image_size": 8, "num_channels": 32,
                "num_res_blocks": 1, "channel_mult": "1,2", "attention_resolutions": "4",
                "num_heads": 2, "use_new_attention_order": true, "in_channels": 1})
        };
        let config = ModelConfig::from_json(&json).unwrap();
        AdmArch::new(config.adm().unwrap()).unwrap()
    }

    /// The PyTorch init plus a small perturbation, so that no tensor (zero modules included)
    /// is zero and every path carries gradient.
    fn perturbed(tr: &AdmTrainer, seed: u64) -> Vec<f32> {
        let mut p = tr.init_params(seed);
        for (i, v) in p.iter_mut().enumerate() {
            let u = tweedie_core::noise::uniform(seed + 1, 0, 0, i as u64);
            *v += (0.1 * (2.0 * u - 1.0)) as f32;
        }
        p
    }

    fn batch(n: usize, len: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let x = (0..n * len)
            .map(|i| tweedie_core::noise::gaussian(seed, 0, 1, i as u64))
            .collect();
        let eps = (0..n * len)
            .map(|i| tweedie_core::noise::gaussian(seed, 0, 2, i as u64))
            .collect();
        let t = (0..n).map(|b| [3.0, 250.0, 600.0, 999.0][b % 4]).collect();
        (x, t, eps)
    }

    /// Central differences of the f32 network's loss (accumulated in f64) at the element of
    /// largest gradient of every third tensor: agreement to 1 % of |g| plus 1e-5. The f32
    /// forward's rounding over a step h limits it (measured: ≤ 2.4e-5 absolute; ≤ 0.33 %
    /// relative while only F(2×2) Winograd ran, up to 1.5 % on gradients of ~1e-3 with the
    /// F(4×4) form on 16×16 maps); a wrong backward is off by O(1).
    #[test]
    fn gradients_match_finite_differences() {
        // Size 8 mixes F(2×2) Winograd convolutions (8×8 maps) and direct ones; size 16 adds
        // F(4×4) forwards and input gradients (16×16 maps; their weight gradients are F(2×2)).
        for (variant, size) in [(0, 8), (1, 8), (0, 16), (1, 16)] {
            let tile = |s: usize| Winograd::for_map(&conv3x3(32, 32), s, s).map(|wg| wg.tile());
            let top = if size == 16 { 4 } else { 2 };
            assert!(tile(size) == Some(top) && tile(size / 4).is_none());
            let arch = tiny(variant);
            let mut tr = AdmTrainer::new(&arch, size, size, 2).unwrap();
            let mut params = perturbed(&tr, 7);
            let (x, t, eps) = batch(2, size * size, 11);
            let mut grads = tr.layout().zeros();
            tr.eps_loss_grad(&params, &x, &t, &eps, &mut grads).unwrap();
            let mut scratch = tr.layout().zeros();
            let views = tr.layout().views().to_vec();
            let (mut checked, mut worst) = (0, 0f64);
            for v in views.iter().step_by(3) {
                let (i, g) = grads[v.range()]
                    .iter()
                    .enumerate()
                    .fold(
                        (0, 0f32),
                        |m, (i, &g)| if g.abs() > m.1.abs() { (i, g) } else { m },
                    );
                if g.abs() < 1e-4 {
                    continue; // (structurally) zero gradient: nothing to compare
                }
                let at = v.offset + i;
                let p0 = params[at];
                let h = 1e-2f32;
                params[at] = p0 + h;
                let up = tr
                    .eps_loss_grad(&params, &x, &t, &eps, &mut scratch)
                    .unwrap();
                params[at] = p0 - h;
                let down = tr
                    .eps_loss_grad(&params, &x, &t, &eps, &mut scratch)
                    .unwrap();
                params[at] = p0;
                let fd = (up - down) / (2.0 * h as f64);
                let err = (fd - g as f64).abs();
                assert!(
                    err <= 1e-2 * (g.abs() as f64) + 1e-5,
                    "variant {variant} {}[{i}]: backward {g:e}, finite difference {fd:e}",
                    v.name
                );
                checked += 1;
                worst = worst.max(err / g.abs() as f64);
            }
            assert!(checked >= 10, "only {checked} tensors checked");
            eprintln!("variant {variant}: {checked} tensors, worst relative error {worst:e}");
        }
    }

    /// Gradients are bit-identical for 1, 2 and 3 threads.
    #[test]
    fn gradients_do_not_depend_on_threads() {
        for (variant, size) in [(0, 8), (1, 8), (0, 16), (1, 16)] {
            let arch = tiny(variant);
            // 3 samples (< ACCUMULATORS: one per accumulator) and 11 (uneven chunks).
            for n in [3, 11] {
                let mut reference: Option<(Vec<f32>, f64)> = None;
                for threads in 1..=3 {
                    let mut tr = AdmTrainer::new(&arch, size, size, threads).unwrap();
                    let params = perturbed(&tr, 3);
                    let (x, t, eps) = batch(n, size * size, 5);
                    let mut grads = tr.layout().zeros();
                    let loss = tr.eps_loss_grad(&params, &x, &t, &eps, &mut grads).unwrap();
                    match &reference {
                        None => reference = Some((grads, loss)),
                        Some((r, l)) => assert!(
                            l.to_bits() == loss.to_bits()
                                && r.iter()
                                    .zip(&grads)
                                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "variant {variant}, batch {n}: {threads} threads differ from 1"
                        ),
                    }
                }
            }
        }
    }

    /// The batch gradient is the mean of the one-sample gradients (summed in f64 here): the
    /// accumulator split changes only the f32 rounding of the sum.
    #[test]
    fn batch_gradient_is_the_mean_of_sample_gradients() {
        let arch = tiny(1);
        let mut tr = AdmTrainer::new(&arch, 8, 8, 2).unwrap();
        let params = perturbed(&tr, 3);
        let (n, len) = (11, 64);
        let (x, t, eps) = batch(n, len, 7);
        let mut grads = tr.layout().zeros();
        let loss = tr.eps_loss_grad(&params, &x, &t, &eps, &mut grads).unwrap();
        let mut sum = vec![0.0f64; grads.len()];
        let mut loss_sum = 0.0;
        let mut g1 = tr.layout().zeros();
        for b in 0..n {
            let s = b * len..(b + 1) * len;
            loss_sum += tr
                .eps_loss_grad(&params, &x[s.clone()], &t[b..b + 1], &eps[s], &mut g1)
                .unwrap();
            for (a, &g) in sum.iter_mut().zip(&g1) {
                *a += g as f64;
            }
        }
        let scale = sum.iter().fold(0.0f64, |m, a| m.max(a.abs())) / n as f64;
        let worst = sum
            .iter()
            .zip(&grads)
            .map(|(a, &g)| (a / n as f64 - g as f64).abs())
            .fold(0.0, f64::max);
        assert!(
            scale > 0.0 && worst <= 1e-5 * scale,
            "worst {worst} scale {scale}"
        );
        assert!((loss - loss_sum / n as f64).abs() <= 1e-12 * loss.abs().max(1.0));
    }

    /// Initialisation: PyTorch bounds, GroupNorm (1, 0), zero modules exactly zero,
    /// deterministic in the seed.
    #[test]
    fn init_follows_guided_diffusion() {
        let tr = AdmTrainer::new(&tiny(0), 8, 8, 1).unwrap();
        let p = tr.init_params(5);
        assert_eq!(p, tr.init_params(5));
        assert_ne!(p, tr.init_params(6));
        let l = tr.layout();
        let s = |n: &str| l.slice(&p, n).unwrap();
        assert!(s("out.2.weight").iter().all(|&v| v == 0.0));
        assert!(s("input_blocks.1.0.out_layers.3.bias")
            .iter()
            .all(|&v| v == 0.0));
        assert!(s("middle_block.1.proj_out.weight")
            .iter()
            .all(|&v| v == 0.0));
        assert!(s("out.0.weight").iter().all(|&v| v == 1.0));
        assert!(s("out.0.bias").iter().all(|&v| v == 0.0));
        // input_blocks.1.0.in_layers.2: fan_in 32·9 = 288.
        let w = s("input_blocks.1.0.in_layers.2.weight");
        let bound = 1.0 / 288f32.sqrt();
        assert!(w.iter().all(|v| v.abs() <= bound));
        assert!(w.iter().fold(0f32, |m, v| m.max(v.abs())) > 0.9 * bound);
        let b = s("time_embed.0.bias");
        assert!(b.iter().all(|v| v.abs() <= 1.0 / 32f32.sqrt()) && b.iter().any(|&v| v != 0.0));
    }
}
