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
use tweedie_kernels::{self as k, Conv2d, Isa, KernelError, WeightsRef, Winograd};

use crate::backend::Pool;
use crate::model::adm::arch::{
    conv1x1, conv3x3, AdmArch, Block, Layer, QkvOrder, Updown, GROUPNORM_EPS, GROUPNORM_GROUPS,
    MAX_PERIOD,
};
use crate::train::params::ParamLayout;
use crate::weights::spec::ParamKind;

/// A contiguous piece of a flat buffer (parameters or the tape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    at: usize,
    len: usize,
}

impl Span {
    fn r(self) -> Range<usize> {
        self.at..self.at + self.len
    }

    fn of(self, b: &[f32]) -> &[f32] {
        &b[self.r()]
    }

    /// The first `len` elements.
    fn head(self, len: usize) -> Span {
        debug_assert!(len <= self.len);
        Span { at: self.at, len }
    }
}

/// `N` disjoint spans of one buffer, mutable at once (spans must not overlap).
fn spans_mut<const N: usize>(buf: &mut [f32], spans: [Span; N]) -> [&mut [f32]; N] {
    spans_mut_list(buf, &spans)
        .try_into()
        .unwrap_or_else(|_| unreachable!())
}

/// [`spans_mut`] for any number of spans.
fn spans_mut_list<'b>(buf: &'b mut [f32], spans: &[Span]) -> Vec<&'b mut [f32]> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| spans[i].at);
    let mut out: Vec<&mut [f32]> = spans.iter().map(|_| Default::default()).collect();
    let mut rest = buf;
    let mut pos = 0;
    for &i in &order {
        let s = spans[i];
        assert!(s.at >= pos, "overlapping spans");
        let tail = std::mem::take(&mut rest);
        let (_, tail) = tail.split_at_mut(s.at - pos);
        let (piece, tail) = tail.split_at_mut(s.len);
        out[i] = piece;
        rest = tail;
        pos = s.at + s.len;
    }
    out
}

/// The Winograd form of a convolution: where its transformed weights lie in
/// [`AdmTrainer::wino`], those of its input gradient in [`AdmTrainer::wino_t`], and its
/// transformed weight gradient in a lane's `du`.
#[derive(Debug, Clone, Copy)]
struct WinoT {
    /// The form of the forward and of the input gradient ([`Winograd::for_map`]).
    wg: Winograd,
    /// The form of the weight gradient ([`Winograd::for_weight_gradient`]).
    dw: Winograd,
    u: Span,
    u_t: Span,
    du: Span,
}

/// Weights and bias of a convolution, as spans of the flat parameter buffer.
#[derive(Debug, Clone, Copy)]
struct ConvT {
    conv: Conv2d,
    w: Span,
    b: Span,
    /// Its Winograd form and where its transformed weights lie in [`AdmTrainer::wino`] and
    /// those of its input gradient in [`AdmTrainer::wino_t`], for 3×3 'same' convolutions.
    wino: Option<WinoT>,
}

/// GroupNorm32 γ and β.
#[derive(Debug, Clone, Copy)]
struct NormT {
    g: Span,
    b: Span,
    c: usize,
}

/// A Linear layer.
#[derive(Debug, Clone, Copy)]
struct LinT {
    w: Span,
    b: Span,
    fin: usize,
}

#[derive(Debug)]
struct ResT {
    c_in: usize,
    c_out: usize,
    updown: Updown,
    scale_shift: bool,
    in_norm: NormT,
    in_conv: ConvT,
    emb: LinT,
    out_norm: NormT,
    out_conv: ConvT,
    skip: Option<ConvT>,
    /// Tape: the `out_layers` GroupNorm input (in_conv output, plus emb without scale-shift).
    h: Span,
    /// Tape: the `emb_layers` output.
    film: Span,
    /// Tape: the convolutions' inputs, in_conv's (resampled SiLU(GN(x))) and out_conv's
    /// (SiLU(FiLM(GN(h)))), kept so the backward does not recompute them.
    a1: Span,
    a2: Span,
}

#[derive(Debug)]
struct AttnT {
    c: usize,
    heads: usize,
    order: k::QkvOrder,
    norm: NormT,
    qkv: ConvT,
    proj: ConvT,
    /// Tape: qkv projection [3C, T].
    qkv_s: Span,
    /// Tape: attention output [C, T] (proj_out's input).
    a_s: Span,
    /// Tape: GN(x) [C, T] (the qkv convolution's input).
    n_s: Span,
}

#[derive(Debug)]
enum OpT {
    Conv(ConvT),
    Res(Box<ResT>),
    Attn(Box<AttnT>),
    Down {
        c: usize,
        conv: Option<ConvT>,
    },
    Up {
        c: usize,
        conv: Option<(ConvT, Span)>,
    },
}

#[derive(Debug)]
struct LayerT {
    name: String,
    /// Downsample factor of the input.
    ds: usize,
    /// Tape: the layer input.
    inp: Span,
    /// Tape: where the output goes (the next layer's input, or its first part).
    out: Span,
    op: OpT,
}

#[derive(Debug)]
struct BlockT {
    layers: Vec<LayerT>,
    /// Output blocks: (channels of the decoder state, index of the input block whose output
    /// is concatenated second).
    skip: Option<(usize, usize)>,
    /// Downsample factor of the input.
    ds_in: usize,
}

/// Per-sample time-MLP activations on the tape.
#[derive(Debug, Clone, Copy)]
struct TimeTape {
    sin: Span,
    hidden: Span,
    hidden_silu: Span,
    emb: Span,
    emb_silu: Span,
}

/// Looks up parameter spans by name.
struct Spans<'a> {
    layout: &'a ParamLayout,
    /// Floats of transformed Winograd weights handed out so far (forward, input gradient).
    wino: Cell<usize>,
    wino_t: Cell<usize>,
    /// Floats of transformed weight gradients handed out so far (a lane's `du`).
    du: Cell<usize>,
}

impl Spans<'_> {
    fn get(&self, name: &str, len: usize) -> Result<Span> {
        let v = self.layout.get(name)?;
        if v.len != len {
            bail!("parameter `{name}` has {} values, expected {len}", v.len);
        }
        Ok(Span {
            at: v.offset,
            len: v.len,
        })
    }

    /// The convolution `p` on an input map of `hw` (its Winograd form chosen for that map).
    fn conv(&self, p: &str, conv: Conv2d, (h, w): (usize, usize)) -> Result<ConvT> {
        let n = conv.c_out * conv.c_in * conv.kernel * conv.kernel;
        let take = |next: &Cell<usize>, len: usize| {
            let at = next.replace(next.get() + len);
            Span { at, len }
        };
        let forms = Winograd::for_map(&conv, h, w).zip(Winograd::for_weight_gradient(&conv, h, w));
        let wino = forms.map(|(wg, dw)| WinoT {
            wg,
            dw,
            u: take(&self.wino, wg.weights_len()),
            u_t: take(&self.wino_t, wg.transposed().weights_len()),
            du: take(&self.du, dw.weight_gradient_len()),
        });
        Ok(ConvT {
            conv,
            w: self.get(&format!("{p}.weight"), n)?,
            b: self.get(&format!("{p}.bias"), conv.c_out)?,
            wino,
        })
    }

    fn norm(&self, p: &str, c: usize) -> Result<NormT> {
        Ok(NormT {
            g: self.get(&format!("{p}.weight"), c)?,
            b: self.get(&format!("{p}.bias"), c)?,
            c,
        })
    }

    fn linear(&self, p: &str, fin: usize, fout: usize) -> Result<LinT> {
        Ok(LinT {
            w: self.get(&format!("{p}.weight"), fin * fout)?,
            b: self.get(&format!("{p}.bias"), fout)?,
            fin,
        })
    }
}

/// Plans the tape and the work-buffer size while the layers are resolved.
struct Planner {
    tape: usize,
    work: usize,
    scratch: usize,
    film: usize,
    height: usize,
    width: usize,
}

impl Planner {
    fn alloc(&mut self, len: usize) -> Span {
        let s = Span { at: self.tape, len };
        self.tape += len;
        s
    }

    fn work(&mut self, n: usize) {
        self.work = self.work.max(n);
    }

    fn conv(&mut self, c: &ConvT, h: usize, w: usize) {
        let mut s = c
            .conv
            .scratch_len(h, w)
            .max(c.conv.backward_scratch_len(h, w));
        if let (Some(wg), Some(WinoT { dw, .. })) = (winograd_at(c, h, w), c.wino) {
            s = s
                .max(wg.scratch_len(h, w))
                .max(wg.transposed().scratch_len(h, w))
                .max(dw.backward_scratch_len(h, w));
        }
        self.scratch = self.scratch.max(s);
        let (oh, ow) = c.conv.out_size(h, w);
        self.work(c.conv.c_in * h * w);
        self.work(c.conv.c_out * oh * ow);
    }

    fn hw(&self, ds: usize) -> (usize, usize) {
        (self.height / ds, self.width / ds)
    }
}

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
    head_norm: NormT,
    head_conv: ConvT,
    /// Tape: the input of `out.0`.
    head_in: Span,
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
    scratch: Vec<Mutex<Vec<f32>>>,
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
            scratch: vec![Mutex::new(vec![0.0; pl.scratch])],
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
            head_norm,
            head_conv,
            head_in,
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
        head_fwd(
            &mut ctx_run,
            &lane.tape,
            t0,
            &self.head_norm,
            &self.head_conv,
            self.head_in,
            h,
            w,
            out,
        )
        .map_err(|e| ctx(e, "out"))
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
        let n_head = self.head_in.len;
        g[..n_head].fill(0.0);
        bw.head(
            &mut run,
            &self.head_norm,
            &self.head_conv,
            self.head_in,
            dout,
            &mut g[..n_head],
            h,
            w,
        )
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
            let r = this.chunk_loss_grad(&mut lane, params, x, t, eps, samples, n, &mut g);
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
    #[allow(clippy::too_many_arguments)]
    fn chunk_loss_grad(
        &self,
        lane: &mut Lane,
        params: &[f32],
        x: &[f32],
        t: &[f32],
        eps: &[f32],
        samples: Range<usize>,
        n: f64,
        g: &mut [f32],
    ) -> Result<f64> {
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

impl Lane {
    fn bytes(&self) -> usize {
        let scratch: usize = self.scratch.iter().map(|s| lock(s).len()).sum();
        4 * (self.tape.len()
            + self.work.iter().map(Vec::len).sum::<usize>()
            + self.grad.iter().map(Vec::len).sum::<usize>()
            + self.dskip.len()
            + self.dfilm.len()
            + self.du.len()
            + scratch)
    }
}

/// Every convolution of the network (the stem, the ResBlocks' and attention's, the
/// resampling ones, the head).
fn all_convs(blocks: &[BlockT], head: &ConvT) -> Vec<ConvT> {
    let mut v = Vec::new();
    for l in blocks.iter().flat_map(|b| &b.layers) {
        match &l.op {
            OpT::Conv(c) => v.push(*c),
            OpT::Res(r) => v.extend(
                [Some(r.in_conv), Some(r.out_conv), r.skip]
                    .into_iter()
                    .flatten(),
            ),
            OpT::Attn(a) => v.extend([a.qkv, a.proj]),
            OpT::Down { conv, .. } => v.extend(*conv),
            OpT::Up { conv, .. } => v.extend(conv.map(|(c, _)| c)),
        }
    }
    v.push(*head);
    v
}

/// Output channels and size of a layer for an `h`×`w` input.
fn layer_out(op: &OpT, h: usize, w: usize) -> (usize, (usize, usize)) {
    match op {
        OpT::Conv(c) => (c.conv.c_out, c.conv.out_size(h, w)),
        OpT::Res(r) => (r.c_out, r.updown.resampled(h, w)),
        OpT::Attn(a) => (a.c, (h, w)),
        OpT::Down { c, .. } => (*c, (h / 2, w / 2)),
        OpT::Up { c, .. } => (*c, (2 * h, 2 * w)),
    }
}

fn resolve_block(
    sp: &Spans,
    pl: &mut Planner,
    b: &Block,
    bi: usize,
    n_input: usize,
) -> Result<BlockT> {
    let skip = if b.skip_channels > 0 {
        // Output block j pops the skip of input block n_input − 1 − j.
        let j = bi - n_input - 1;
        Some((b.c_in - b.skip_channels, n_input - 1 - j))
    } else {
        None
    };
    let mut layers = Vec::with_capacity(b.layers.len());
    for (li, l) in b.layers.iter().enumerate() {
        let name = l.name().to_string();
        let (ds, c_in) = match l {
            Layer::Conv(c) => (c.ds, c.c_in),
            Layer::Res(r) => (r.ds, r.c_in),
            Layer::Attention(a) => (a.ds, a.channels),
            Layer::Downsample(r) | Layer::Upsample(r) => (r.ds, r.channels),
        };
        let (h, w) = pl.hw(ds);
        let c_in = if li == 0 { b.c_in } else { c_in };
        let inp = pl.alloc(c_in * h * w);
        pl.work(c_in * h * w);
        let op = match l {
            Layer::Conv(c) => {
                let cv = sp.conv(&name, conv3x3(c.c_in, c.c_out), (h, w))?;
                pl.conv(&cv, h, w);
                OpT::Conv(cv)
            }
            Layer::Res(r) => {
                let emb_out = if r.scale_shift { 2 * r.c_out } else { r.c_out };
                let (ho, wo) = r.updown.resampled(h, w);
                let skip = if r.c_in != r.c_out {
                    Some(sp.conv(
                        &format!("{name}.skip_connection"),
                        conv1x1(r.c_in, r.c_out),
                        (ho, wo),
                    )?)
                } else {
                    None
                };
                let res = ResT {
                    c_in: r.c_in,
                    c_out: r.c_out,
                    updown: r.updown,
                    scale_shift: r.scale_shift,
                    in_norm: sp.norm(&format!("{name}.in_layers.0"), r.c_in)?,
                    in_conv: sp.conv(
                        &format!("{name}.in_layers.2"),
                        conv3x3(r.c_in, r.c_out),
                        (ho, wo),
                    )?,
                    emb: sp.linear(&format!("{name}.emb_layers.1"), r.emb_dim, emb_out)?,
                    out_norm: sp.norm(&format!("{name}.out_layers.0"), r.c_out)?,
                    out_conv: sp.conv(
                        &format!("{name}.out_layers.3"),
                        conv3x3(r.c_out, r.c_out),
                        (ho, wo),
                    )?,
                    skip,
                    h: pl.alloc(r.c_out * ho * wo),
                    film: pl.alloc(emb_out),
                    a1: pl.alloc(r.c_in * ho * wo),
                    a2: pl.alloc(r.c_out * ho * wo),
                };
                pl.work(r.c_in * h.max(ho) * w.max(wo));
                pl.conv(&res.in_conv, ho, wo);
                pl.conv(&res.out_conv, ho, wo);
                if let Some(s) = &res.skip {
                    pl.conv(s, ho, wo);
                }
                pl.film = pl.film.max(emb_out);
                OpT::Res(Box::new(res))
            }
            Layer::Attention(a) => {
                let (c, t) = (a.channels, h * w);
                let at = AttnT {
                    c,
                    heads: a.heads,
                    order: match a.order {
                        QkvOrder::Legacy => k::QkvOrder::Legacy,
                        QkvOrder::New => k::QkvOrder::New,
                    },
                    norm: sp.norm(&format!("{name}.norm"), c)?,
                    qkv: sp.conv(&format!("{name}.qkv"), conv1x1(c, 3 * c), (h, w))?,
                    proj: sp.conv(&format!("{name}.proj_out"), conv1x1(c, c), (h, w))?,
                    qkv_s: pl.alloc(3 * c * t),
                    a_s: pl.alloc(c * t),
                    n_s: pl.alloc(c * t),
                };
                pl.conv(&at.qkv, h, w);
                pl.conv(&at.proj, h, w);
                pl.scratch = pl
                    .scratch
                    .max(k::attention_scratch_len(t))
                    .max(k::attention_backward_scratch_len(t));
                OpT::Attn(Box::new(at))
            }
            Layer::Downsample(r) => {
                let conv = if r.use_conv {
                    let c = Conv2d {
                        stride: 2,
                        ..conv3x3(r.channels, r.channels)
                    };
                    let cv = sp.conv(&format!("{name}.op"), c, (h, w))?;
                    pl.conv(&cv, h, w);
                    Some(cv)
                } else {
                    None
                };
                OpT::Down {
                    c: r.channels,
                    conv,
                }
            }
            Layer::Upsample(r) => {
                pl.work(r.channels * 4 * h * w);
                let conv = if r.use_conv {
                    let cv = sp.conv(
                        &format!("{name}.conv"),
                        conv3x3(r.channels, r.channels),
                        (2 * h, 2 * w),
                    )?;
                    pl.conv(&cv, 2 * h, 2 * w);
                    Some((cv, pl.alloc(r.channels * 4 * h * w)))
                } else {
                    None
                };
                OpT::Up {
                    c: r.channels,
                    conv,
                }
            }
        };
        layers.push(LayerT {
            name,
            ds,
            inp,
            out: Span { at: 0, len: 0 },
            op,
        });
    }
    Ok(BlockT {
        layers,
        skip,
        ds_in: b.ds_in,
    })
}

/// The Winograd form of `c` if it has one for its `h`×`w` input ([`Winograd::for_map`], as
/// chosen when the layers were resolved).
fn winograd_at(c: &ConvT, h: usize, w: usize) -> Option<Winograd> {
    c.wino
        .map(|wt| wt.wg)
        .filter(|&wg| Winograd::for_map(&c.conv, h, w) == Some(wg))
}

/// What every layer call needs besides buffers.
struct Ctx<'a> {
    pool: &'a Pool,
    scratch: &'a [Mutex<Vec<f32>>],
    isa: Isa,
    params: &'a [f32],
    /// The convolution weights flipped for the input gradient (backward only; empty in the
    /// forward).
    flipped: &'a [f32],
    /// The Winograd weights of the forward and of the input gradient (empty in the forward).
    wino: &'a [f32],
    wino_t: &'a [f32],
    /// [`AdmTrainer::zeros`] (empty in the forward).
    zeros: &'a [f32],
}

impl Ctx<'_> {
    fn p(&self, s: Span) -> &[f32] {
        s.of(self.params)
    }

    fn wref(&self, s: Span) -> WeightsRef<'_> {
        WeightsRef::F32(s.of(self.params))
    }

    /// `out = conv(x)`: in Winograd form on the first thread where that pays, else split
    /// over output channels.
    fn conv(&self, c: &ConvT, x: &[f32], h: usize, w: usize, out: &mut [f32]) -> KResult {
        let (isa, wt, b) = (self.isa, self.wref(c.w), self.p(c.b));
        let scratch = self.scratch;
        if let (Some(wg), Some(WinoT { u, .. })) = (winograd_at(c, h, w), c.wino) {
            let mut s = lock(&scratch[0]);
            return wg.forward(isa, x, h, w, u.of(self.wino), Some(b), out, &mut s);
        }
        self.pool
            .split(out, c.conv.c_out, k::conv::MR, |i, co, piece| {
                let mut s = lock(&scratch[i]);
                c.conv.forward_with(isa, x, h, w, wt, b, co, piece, &mut s)
            })
    }

    /// GroupNorm32 (+FiLM, +SiLU) split over groups.
    #[allow(clippy::too_many_arguments)]
    fn norm(
        &self,
        n: &NormT,
        x: &[f32],
        hw: usize,
        film: Option<(&[f32], &[f32])>,
        silu: bool,
        out: &mut [f32],
    ) -> KResult {
        let (g, b, c) = (self.p(n.g), self.p(n.b), n.c);
        self.pool.split(out, GROUPNORM_GROUPS, 1, |_, gr, piece| {
            k::group_norm(
                x,
                c,
                hw,
                GROUPNORM_GROUPS,
                GROUPNORM_EPS,
                g,
                b,
                film,
                silu,
                gr,
                piece,
            )
        })
    }

    /// `out = R(x)` for `c` maps of `h`×`w`.
    fn resample(
        &self,
        r: Updown,
        c: usize,
        x: &[f32],
        h: usize,
        w: usize,
        out: &mut [f32],
    ) -> KResult {
        self.pool.split(out, c, 1, |_, cr, piece| {
            match r {
                Updown::Up => k::upsample_nearest2x(x, h, w, cr, piece),
                Updown::Down => k::avg_pool2x2(x, h, w, cr, piece),
                Updown::None => piece.copy_from_slice(&x[cr.start * h * w..cr.end * h * w]),
            }
            Ok(())
        })
    }

    /// `dx += R^T(dout)`, `dx` is [c, h, w] (the input size of R).
    fn resample_back(
        &self,
        r: Updown,
        c: usize,
        dout: &[f32],
        h: usize,
        w: usize,
        dx: &mut [f32],
    ) -> KResult {
        self.pool.split(dx, c, 1, |_, cr, piece| match r {
            Updown::Up => k::upsample_nearest2x_backward(piece, dout, h, w, cr),
            Updown::Down => k::avg_pool2x2_backward(piece, dout, h, w, cr),
            Updown::None => {
                k::add_inplace(piece, &dout[cr.start * h * w..cr.end * h * w]);
                Ok(())
            }
        })
    }

    /// dW, db += conv weight gradients, split over output channels; for a Winograd
    /// convolution, dW in transformed form into `du` (see `Lane::du`).
    #[allow(clippy::too_many_arguments)]
    fn conv_params(
        &self,
        c: &ConvT,
        dout: &[f32],
        x: &[f32],
        h: usize,
        w: usize,
        grads: &mut [f32],
        du: &mut [f32],
    ) -> KResult {
        let [dw, db] = spans_mut(grads, [c.w, c.b]);
        let (isa, scratch) = (self.isa, self.scratch);
        if let (Some(_), Some(WinoT { dw, du: span, .. })) = (winograd_at(c, h, w), c.wino) {
            let mut s = lock(&scratch[0]);
            let du = &mut du[span.r()];
            return dw.backward_params_transformed(isa, du, db, dout, x, h, w, &mut s);
        }
        self.pool
            .split_n(c.conv.c_out, k::conv::MR, [dw, db], |i, co, [dw, db]| {
                let mut s = lock(&scratch[i]);
                c.conv
                    .backward_params(isa, dw, db, dout, x, h, w, co, &mut s)
            })
    }

    /// dx = conv input gradient.
    fn conv_input_set(
        &self,
        c: &ConvT,
        dout: &[f32],
        h: usize,
        w: usize,
        dx: &mut [f32],
    ) -> KResult {
        self.input_gradient(c, dout, h, w, dx, true)
    }

    /// dx += conv input gradient.
    fn conv_input(&self, c: &ConvT, dout: &[f32], h: usize, w: usize, dx: &mut [f32]) -> KResult {
        self.input_gradient(c, dout, h, w, dx, false)
    }

    /// The conv input gradient, written over `dx` (`set`) or added to it: in Winograd form on
    /// the first thread where that pays (from a zero bias when set), else split over input
    /// channels.
    fn input_gradient(
        &self,
        c: &ConvT,
        dout: &[f32],
        h: usize,
        w: usize,
        dx: &mut [f32],
        set: bool,
    ) -> KResult {
        let (isa, scratch, wt) = (self.isa, self.scratch, c.w.of(self.flipped));
        if let (Some(wg), Some(WinoT { u_t, .. })) = (winograd_at(c, h, w), c.wino) {
            let mut s = lock(&scratch[0]);
            let u = u_t.of(self.wino_t);
            let zeros = set.then(|| &self.zeros[..c.conv.c_in]);
            return wg
                .transposed()
                .forward(isa, dout, h, w, u, zeros, dx, &mut s);
        }
        if set {
            dx.fill(0.0);
        }
        self.pool
            .split(dx, c.conv.c_in, k::conv::MR, |i, ci, piece| {
                let mut s = lock(&scratch[i]);
                c.conv
                    .backward_input_flipped(isa, piece, dout, wt, h, w, ci, &mut s)
            })
    }

    /// GroupNorm backward split over groups: dx, dγ, dβ (and the FiLM gradient) accumulate.
    #[allow(clippy::too_many_arguments)]
    fn norm_back(
        &self,
        n: &NormT,
        dx: &mut [f32],
        grads: &mut [f32],
        dfilm: Option<&mut [f32]>,
        dout: &[f32],
        x: &[f32],
        hw: usize,
        film: Option<(&[f32], &[f32])>,
        silu: bool,
    ) -> KResult {
        let (g, b, c) = (self.p(n.g), self.p(n.b), n.c);
        let [dg, db] = spans_mut(grads, [n.g, n.b]);
        let body = |gr: Range<usize>,
                    dx: &mut [f32],
                    dg: &mut [f32],
                    db: &mut [f32],
                    df: Option<(&mut [f32], &mut [f32])>| {
            k::group_norm_backward(
                dx,
                dg,
                db,
                df,
                dout,
                x,
                c,
                hw,
                GROUPNORM_GROUPS,
                GROUPNORM_EPS,
                g,
                b,
                film,
                silu,
                gr,
            )
        };
        match dfilm {
            Some(df) => {
                let (ds, dsh) = df.split_at_mut(c);
                self.pool.split_n(
                    GROUPNORM_GROUPS,
                    1,
                    [dx, dg, db, ds, dsh],
                    |_, gr, [dx, dg, db, ds, dsh]| body(gr, dx, dg, db, Some((ds, dsh))),
                )
            }
            None => self
                .pool
                .split_n(GROUPNORM_GROUPS, 1, [dx, dg, db], |_, gr, [dx, dg, db]| {
                    body(gr, dx, dg, db, None)
                }),
        }
    }
}

type KResult = Result<(), KernelError>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `out = W·x + b` on the calling thread.
fn linear_fwd(params: &[f32], l: &LinT, x: &[f32], out: &mut [f32]) -> KResult {
    let n = out.len();
    k::linear(
        x,
        WeightsRef::F32(l.w.of(params)),
        l.b.of(params),
        l.fin,
        0..n,
        out,
    )
}

/// One layer forward: reads `tape[l.inp]`, writes `tape[l.out]` and its saved extras.
fn layer_fwd(
    cx: &mut Ctx,
    tape: &mut [f32],
    work: &mut [Vec<f32>; 5],
    tt: TimeTape,
    l: &LayerT,
    height: usize,
    width: usize,
) -> KResult {
    let (h, w) = (height / l.ds, width / l.ds);
    let [t0, t1, t2, ..] = work;
    match &l.op {
        OpT::Conv(c) => {
            let [x, y] = spans_mut(tape, [l.inp, l.out]);
            cx.conv(c, x, h, w, y)
        }
        OpT::Down { c, conv } => {
            let [x, y] = spans_mut(tape, [l.inp, l.out]);
            match conv {
                Some(cv) => cx.conv(cv, x, h, w, y),
                None => cx.resample(Updown::Down, *c, x, h, w, y),
            }
        }
        OpT::Up { c, conv } => match conv {
            Some((cv, u)) => {
                let [x, y, us] = spans_mut(tape, [l.inp, l.out, *u]);
                cx.resample(Updown::Up, *c, x, h, w, us)?;
                cx.conv(cv, us, 2 * h, 2 * w, y)
            }
            None => {
                let [x, y] = spans_mut(tape, [l.inp, l.out]);
                cx.resample(Updown::Up, *c, x, h, w, y)
            }
        },
        OpT::Res(r) => {
            let spans = [l.inp, l.out, r.h, r.film, tt.emb_silu, r.a1, r.a2];
            let [x, y, hs, film, emb_s, a1r, a2] = spans_mut(tape, spans);
            let (ho, wo) = r.updown.resampled(h, w);
            let (hw, hwo) = (h * w, ho * wo);
            linear_fwd(cx.params, &r.emb, emb_s, film)?;
            if r.updown == Updown::None {
                cx.norm(&r.in_norm, x, hw, None, true, a1r)?;
            } else {
                let a1 = &mut t0[..r.c_in * hw];
                cx.norm(&r.in_norm, x, hw, None, true, a1)?;
                cx.resample(r.updown, r.c_in, a1, h, w, a1r)?;
            }
            cx.conv(&r.in_conv, a1r, ho, wo, hs)?;
            if !r.scale_shift {
                for (row, &e) in hs.chunks_exact_mut(hwo).zip(film.iter()) {
                    row.iter_mut().for_each(|v| *v += e);
                }
            }
            let f = r.scale_shift.then(|| film.split_at(r.c_out));
            cx.norm(&r.out_norm, hs, hwo, f, true, a2)?;
            cx.conv(&r.out_conv, a2, ho, wo, y)?;
            let xs: &[f32] = if r.updown == Updown::None {
                x
            } else {
                let xr = &mut t1[..r.c_in * hwo];
                cx.resample(r.updown, r.c_in, x, h, w, xr)?;
                xr
            };
            match &r.skip {
                None => k::add_inplace(y, xs),
                Some(s) => {
                    let sk = &mut t2[..r.c_out * hwo];
                    cx.conv(s, xs, ho, wo, sk)?;
                    k::add_inplace(y, sk);
                }
            }
            Ok(())
        }
        OpT::Attn(a) => {
            let [x, y, qkv, att, n] = spans_mut(tape, [l.inp, l.out, a.qkv_s, a.a_s, a.n_s]);
            let t = h * w;
            cx.norm(&a.norm, x, t, None, false, n)?;
            cx.conv(&a.qkv, n, h, w, qkv)?;
            {
                let s = &mut lock(&cx.scratch[0]);
                k::qkv_attention(qkv, a.c, t, a.heads, a.order, 0..a.heads, att, s)?;
            }
            cx.conv(&a.proj, att, h, w, y)?;
            k::add_inplace(y, x);
            Ok(())
        }
    }
}

/// The output head forward: out = conv(SiLU(GN(tape[inp]))).
#[allow(clippy::too_many_arguments)]
fn head_fwd(
    cx: &mut Ctx,
    tape: &[f32],
    t0: &mut [f32],
    norm: &NormT,
    conv: &ConvT,
    inp: Span,
    h: usize,
    w: usize,
    out: &mut [f32],
) -> KResult {
    let a = &mut t0[..inp.len];
    cx.norm(norm, inp.of(tape), h * w, None, true, a)?;
    cx.conv(conv, a, h, w, out)
}

/// Backward state: the tape (read), temporaries and gradient accumulators.
struct Bwd<'a> {
    tape: &'a [f32],
    work: &'a mut [Vec<f32>; 5],
    dfilm: &'a mut [f32],
    demb_silu: &'a mut [f32],
    emb_silu: &'a [f32],
    grads: &'a mut [f32],
    /// The lane's transformed Winograd weight gradients (see `Lane::du`).
    du: &'a mut [f32],
}

impl Bwd<'_> {
    fn conv_params(
        &mut self,
        cx: &mut Ctx,
        c: &ConvT,
        dout: &[f32],
        inp: Span,
        h: usize,
        w: usize,
    ) -> KResult {
        cx.conv_params(c, dout, inp.of(self.tape), h, w, self.grads, self.du)
    }

    #[allow(clippy::too_many_arguments)]
    fn head(
        &mut self,
        cx: &mut Ctx,
        norm: &NormT,
        conv: &ConvT,
        inp: Span,
        dout: &[f32],
        dx: &mut [f32],
        h: usize,
        w: usize,
    ) -> KResult {
        let hw = h * w;
        let x = inp.of(self.tape);
        let [t0, d1, ..] = &mut *self.work;
        let a = &mut t0[..inp.len];
        cx.norm(norm, x, hw, None, true, a)?;
        cx.conv_params(conv, dout, a, h, w, self.grads, self.du)?;
        let da = &mut d1[..inp.len];
        cx.conv_input_set(conv, dout, h, w, da)?;
        cx.norm_back(norm, dx, self.grads, None, da, x, hw, None, true)
    }

    /// One layer backward: `dx += ∂L/∂input` given `dy` = ∂L/∂output; parameter gradients
    /// accumulate into `grads`.
    fn layer(
        &mut self,
        cx: &mut Ctx,
        l: &LayerT,
        dy: &[f32],
        dx: &mut [f32],
        height: usize,
        width: usize,
    ) -> KResult {
        let (h, w) = (height / l.ds, width / l.ds);
        let x = l.inp.of(self.tape);
        match &l.op {
            OpT::Conv(c) => {
                cx.conv_params(c, dy, x, h, w, self.grads, self.du)?;
                cx.conv_input(c, dy, h, w, dx)
            }
            OpT::Down { c, conv } => match conv {
                Some(cv) => {
                    cx.conv_params(cv, dy, x, h, w, self.grads, self.du)?;
                    cx.conv_input(cv, dy, h, w, dx)
                }
                None => cx.resample_back(Updown::Down, *c, dy, h, w, dx),
            },
            OpT::Up { c, conv } => match conv {
                Some((cv, u)) => {
                    let (h2, w2) = (2 * h, 2 * w);
                    cx.conv_params(cv, dy, u.of(self.tape), h2, w2, self.grads, self.du)?;
                    let du = &mut self.work[0][..c * h2 * w2];
                    cx.conv_input_set(cv, dy, h2, w2, du)?;
                    cx.resample_back(Updown::Up, *c, du, h, w, dx)
                }
                None => cx.resample_back(Updown::Up, *c, dy, h, w, dx),
            },
            OpT::Res(r) => self.res(cx, r, x, dy, dx, h, w),
            OpT::Attn(a) => self.attn(cx, a, x, dy, dx, h, w),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn res(
        &mut self,
        cx: &mut Ctx,
        r: &ResT,
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        h: usize,
        w: usize,
    ) -> KResult {
        let (ho, wo) = r.updown.resampled(h, w);
        let (hw, hwo) = (h * w, ho * wo);
        let [_, t1, d0, d1, d2] = &mut *self.work;
        let hs = r.h.of(self.tape);
        let film = r.film.of(self.tape);
        // skip(x_upd(x)): dx += R^T(skip^T dy).
        let xs: &[f32] = if r.updown == Updown::None {
            x
        } else {
            let xr = &mut t1[..r.c_in * hwo];
            cx.resample(r.updown, r.c_in, x, h, w, xr)?;
            xr
        };
        match &r.skip {
            Some(s) => {
                cx.conv_params(s, dy, xs, ho, wo, self.grads, self.du)?;
                let dxs = &mut d0[..r.c_in * hwo];
                cx.conv_input_set(s, dy, ho, wo, dxs)?;
                cx.resample_back(r.updown, r.c_in, dxs, h, w, dx)?;
            }
            None => cx.resample_back(r.updown, r.c_in, dy, h, w, dx)?,
        }
        // out_layers: conv(SiLU(FiLM(GN(h)))), its input from the tape.
        let f = r.scale_shift.then(|| film.split_at(r.c_out));
        cx.conv_params(
            &r.out_conv,
            dy,
            r.a2.of(self.tape),
            ho,
            wo,
            self.grads,
            self.du,
        )?;
        let da2 = &mut d1[..r.c_out * hwo];
        cx.conv_input_set(&r.out_conv, dy, ho, wo, da2)?;
        let dh = &mut d2[..r.c_out * hwo];
        dh.fill(0.0);
        let dfilm = &mut self.dfilm[..film.len()];
        dfilm.fill(0.0);
        if r.scale_shift {
            cx.norm_back(
                &r.out_norm,
                dh,
                self.grads,
                Some(dfilm),
                da2,
                hs,
                hwo,
                f,
                true,
            )?;
        } else {
            cx.norm_back(&r.out_norm, dh, self.grads, None, da2, hs, hwo, None, true)?;
            // h + emb[c] broadcast: d emb[c] = Σ_pixels dh[c] (f64, pixel order).
            for (d, row) in dfilm.iter_mut().zip(dh.chunks_exact(hwo)) {
                *d += row.iter().map(|&v| v as f64).sum::<f64>() as f32;
            }
        }
        // emb_layers.1: Linear(SiLU(emb)).
        let [dw, db] = spans_mut(self.grads, [r.emb.w, r.emb.b]);
        let n = dfilm.len();
        k::linear_backward_params(dw, db, dfilm, self.emb_silu, r.emb.fin, 0..n)?;
        k::linear_backward_input(
            self.demb_silu,
            dfilm,
            WeightsRef::F32(r.emb.w.of(cx.params)),
            r.emb.fin,
            0..r.emb.fin,
        )?;
        // in_layers: conv(R(SiLU(GN(x)))), its input from the tape.
        cx.conv_params(
            &r.in_conv,
            dh,
            r.a1.of(self.tape),
            ho,
            wo,
            self.grads,
            self.du,
        )?;
        let da1r = &mut d1[..r.c_in * hwo];
        cx.conv_input_set(&r.in_conv, dh, ho, wo, da1r)?;
        let da1: &[f32] = if r.updown == Updown::None {
            da1r
        } else {
            let da1 = &mut d0[..r.c_in * hw];
            da1.fill(0.0);
            cx.resample_back(r.updown, r.c_in, da1r, h, w, da1)?;
            da1
        };
        cx.norm_back(&r.in_norm, dx, self.grads, None, da1, x, hw, None, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn attn(
        &mut self,
        cx: &mut Ctx,
        a: &AttnT,
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        h: usize,
        w: usize,
    ) -> KResult {
        let (c, t) = (a.c, h * w);
        let [_, _, d0, d1, d2] = &mut *self.work;
        k::add_inplace(dx, dy);
        let att = a.a_s.of(self.tape);
        let qkv = a.qkv_s.of(self.tape);
        cx.conv_params(&a.proj, dy, att, h, w, self.grads, self.du)?;
        let datt = &mut d0[..c * t];
        cx.conv_input_set(&a.proj, dy, h, w, datt)?;
        let dqkv = &mut d1[..3 * c * t];
        dqkv.fill(0.0);
        {
            let s = &mut lock(&cx.scratch[0]);
            k::qkv_attention_backward(dqkv, datt, qkv, c, t, a.heads, a.order, 0..a.heads, s)?;
        }
        cx.conv_params(&a.qkv, dqkv, a.n_s.of(self.tape), h, w, self.grads, self.du)?;
        let dn = &mut d2[..c * t];
        cx.conv_input_set(&a.qkv, dqkv, h, w, dn)?;
        cx.norm_back(&a.norm, dx, self.grads, None, dn, x, t, None, false)
    }

    /// The time MLP: emb = L2(SiLU(L1(sinusoid(t)))); `d[0]` holds ∂L/∂SiLU(emb), summed
    /// over every ResBlock's emb_layers.
    fn time_mlp(
        &mut self,
        cx: &Ctx,
        time: &[LinT; 2],
        tt: TimeTape,
        d: &mut [Vec<f32>; 3],
    ) -> KResult {
        let [demb, dhs, dhid] = d;
        demb.fill(0.0);
        k::silu_backward(demb, self.demb_silu, tt.emb.of(self.tape))?;
        let [l0, l1] = time;
        {
            let [dw, db] = spans_mut(self.grads, [l1.w, l1.b]);
            let n = demb.len();
            k::linear_backward_params(dw, db, demb, tt.hidden_silu.of(self.tape), l1.fin, 0..n)?;
        }
        dhs.fill(0.0);
        k::linear_backward_input(dhs, demb, cx.wref(l1.w), l1.fin, 0..l1.fin)?;
        dhid.fill(0.0);
        k::silu_backward(dhid, dhs, tt.hidden.of(self.tape))?;
        let [dw, db] = spans_mut(self.grads, [l0.w, l0.b]);
        let n = dhid.len();
        k::linear_backward_params(dw, db, dhid, tt.sin.of(self.tape), l0.fin, 0..n)
    }
}

/// guided-diffusion's initialisation (PyTorch defaults): conv/linear weights and biases
/// U(−1/√fan_in, 1/√fan_in) (`kaiming_uniform_(a=√5)` and the bias rule), GroupNorm γ = 1,
/// β = 0, and `zero_module` on every ResBlock's `out_layers.3`, every attention `proj_out` and
/// the output conv `out.2`. Tensor i, element e draws `noise::uniform(seed, i, COUNTER_INIT, e)`.
pub fn init_params(layout: &ParamLayout, kinds: &[ParamKind], seed: u64) -> Vec<f32> {
    let mut p = layout.zeros();
    let mut fan_in = 1usize;
    for (i, (v, kind)) in layout.views().iter().zip(kinds).enumerate() {
        let zero = v.name.contains(".out_layers.3.")
            || v.name.contains(".proj_out.")
            || v.name.starts_with("out.2.");
        let bound = match *kind {
            ParamKind::Weight { fan_in: f } => {
                fan_in = f.max(1);
                Some(1.0 / (fan_in as f64).sqrt())
            }
            // A bias follows its weight in state_dict order.
            ParamKind::Bias => Some(1.0 / (fan_in as f64).sqrt()),
            ParamKind::NormWeight => {
                p[v.range()].fill(1.0);
                None
            }
            ParamKind::NormBias => None,
        };
        if let (Some(b), false) = (bound, zero) {
            for (e, x) in p[v.range()].iter_mut().enumerate() {
                let u = tweedie_core::noise::uniform(
                    seed,
                    i as u64,
                    tweedie_core::noise::COUNTER_INIT,
                    e as u64,
                );
                *x = ((2.0 * u - 1.0) * b) as f32;
            }
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::ModelConfig;
    use crate::tensors::SafetensorsFile;
    use crate::testdata::golden;

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
