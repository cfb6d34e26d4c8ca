//! The trainer's plan, resolved once per network and image size: every parameter as a span of
//! the flat parameter buffer (convolutions with their Winograd form), and every saved
//! activation as a span of one sample's tape.

use std::cell::Cell;
use std::ops::Range;

use anyhow::{bail, Result};
use tweedie_kernels::{self as k, Conv2d, Winograd};

use crate::model::adm::arch::{conv1x1, conv3x3, Block, Layer, QkvOrder, Updown};
use crate::train::params::ParamLayout;

/// A contiguous piece of a flat buffer (parameters or the tape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    pub(super) at: usize,
    pub(super) len: usize,
}

impl Span {
    pub(super) fn r(self) -> Range<usize> {
        self.at..self.at + self.len
    }

    pub(super) fn of(self, b: &[f32]) -> &[f32] {
        &b[self.r()]
    }

    /// The first `len` elements.
    pub(super) fn head(self, len: usize) -> Span {
        debug_assert!(len <= self.len);
        Span { at: self.at, len }
    }
}

/// `N` disjoint spans of one buffer, mutable at once (spans must not overlap).
pub(super) fn spans_mut<const N: usize>(buf: &mut [f32], spans: [Span; N]) -> [&mut [f32]; N] {
    spans_mut_list(buf, &spans)
        .try_into()
        .unwrap_or_else(|_| unreachable!())
}

/// [`spans_mut`] for any number of spans.
pub(super) fn spans_mut_list<'b>(buf: &'b mut [f32], spans: &[Span]) -> Vec<&'b mut [f32]> {
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
pub(super) struct WinoT {
    /// The form of the forward and of the input gradient ([`Winograd::for_map`]).
    pub(super) wg: Winograd,
    /// The form of the weight gradient ([`Winograd::for_weight_gradient`]).
    pub(super) dw: Winograd,
    pub(super) u: Span,
    pub(super) u_t: Span,
    pub(super) du: Span,
}

/// Weights and bias of a convolution, as spans of the flat parameter buffer.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConvT {
    pub(super) conv: Conv2d,
    pub(super) w: Span,
    pub(super) b: Span,
    /// Its Winograd form and where its transformed weights lie in [`AdmTrainer::wino`] and
    /// those of its input gradient in [`AdmTrainer::wino_t`], for 3×3 'same' convolutions.
    pub(super) wino: Option<WinoT>,
}

/// GroupNorm32 γ and β.
#[derive(Debug, Clone, Copy)]
pub(super) struct NormT {
    pub(super) g: Span,
    pub(super) b: Span,
    pub(super) c: usize,
}

/// A Linear layer.
#[derive(Debug, Clone, Copy)]
pub(super) struct LinT {
    pub(super) w: Span,
    pub(super) b: Span,
    pub(super) fin: usize,
}

/// The output head `out = conv(SiLU(GN(x)))`: `out.0` and `out.2`, and its input on the tape.
#[derive(Debug)]
pub(super) struct HeadT {
    pub(super) norm: NormT,
    pub(super) conv: ConvT,
    /// Tape: the input of `out.0`.
    pub(super) inp: Span,
}

#[derive(Debug)]
pub(super) struct ResT {
    pub(super) c_in: usize,
    pub(super) c_out: usize,
    pub(super) updown: Updown,
    pub(super) scale_shift: bool,
    pub(super) in_norm: NormT,
    pub(super) in_conv: ConvT,
    pub(super) emb: LinT,
    pub(super) out_norm: NormT,
    pub(super) out_conv: ConvT,
    pub(super) skip: Option<ConvT>,
    /// Tape: the `out_layers` GroupNorm input (in_conv output, plus emb without scale-shift).
    pub(super) h: Span,
    /// Tape: the `emb_layers` output.
    pub(super) film: Span,
    /// Tape: the convolutions' inputs, in_conv's (resampled SiLU(GN(x))) and out_conv's
    /// (SiLU(FiLM(GN(h)))), kept so the backward does not recompute them.
    pub(super) a1: Span,
    pub(super) a2: Span,
}

#[derive(Debug)]
pub(super) struct AttnT {
    pub(super) c: usize,
    pub(super) heads: usize,
    pub(super) order: k::QkvOrder,
    pub(super) norm: NormT,
    pub(super) qkv: ConvT,
    pub(super) proj: ConvT,
    /// Tape: qkv projection [3C, T].
    pub(super) qkv_s: Span,
    /// Tape: attention output [C, T] (proj_out's input).
    pub(super) a_s: Span,
    /// Tape: GN(x) [C, T] (the qkv convolution's input).
    pub(super) n_s: Span,
}

#[derive(Debug)]
pub(super) enum OpT {
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
pub(super) struct LayerT {
    pub(super) name: String,
    /// Downsample factor of the input.
    pub(super) ds: usize,
    /// Tape: the layer input.
    pub(super) inp: Span,
    /// Tape: where the output goes (the next layer's input, or its first part).
    pub(super) out: Span,
    pub(super) op: OpT,
}

#[derive(Debug)]
pub(super) struct BlockT {
    pub(super) layers: Vec<LayerT>,
    /// Output blocks: (channels of the decoder state, index of the input block whose output
    /// is concatenated second).
    pub(super) skip: Option<(usize, usize)>,
    /// Downsample factor of the input.
    pub(super) ds_in: usize,
}

/// Per-sample time-MLP activations on the tape.
#[derive(Debug, Clone, Copy)]
pub(super) struct TimeTape {
    pub(super) sin: Span,
    pub(super) hidden: Span,
    pub(super) hidden_silu: Span,
    pub(super) emb: Span,
    pub(super) emb_silu: Span,
}

/// Looks up parameter spans by name.
pub(super) struct Spans<'a> {
    pub(super) layout: &'a ParamLayout,
    /// Floats of transformed Winograd weights handed out so far (forward, input gradient).
    pub(super) wino: Cell<usize>,
    pub(super) wino_t: Cell<usize>,
    /// Floats of transformed weight gradients handed out so far (a lane's `du`).
    pub(super) du: Cell<usize>,
}

impl Spans<'_> {
    pub(super) fn get(&self, name: &str, len: usize) -> Result<Span> {
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
    pub(super) fn conv(&self, p: &str, conv: Conv2d, (h, w): (usize, usize)) -> Result<ConvT> {
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

    pub(super) fn norm(&self, p: &str, c: usize) -> Result<NormT> {
        Ok(NormT {
            g: self.get(&format!("{p}.weight"), c)?,
            b: self.get(&format!("{p}.bias"), c)?,
            c,
        })
    }

    pub(super) fn linear(&self, p: &str, fin: usize, fout: usize) -> Result<LinT> {
        Ok(LinT {
            w: self.get(&format!("{p}.weight"), fin * fout)?,
            b: self.get(&format!("{p}.bias"), fout)?,
            fin,
        })
    }
}

/// Plans the tape and the work-buffer size while the layers are resolved.
pub(super) struct Planner {
    pub(super) tape: usize,
    pub(super) work: usize,
    pub(super) scratch: usize,
    pub(super) film: usize,
    pub(super) height: usize,
    pub(super) width: usize,
}

impl Planner {
    pub(super) fn alloc(&mut self, len: usize) -> Span {
        let s = Span { at: self.tape, len };
        self.tape += len;
        s
    }

    pub(super) fn work(&mut self, n: usize) {
        self.work = self.work.max(n);
    }

    pub(super) fn conv(&mut self, c: &ConvT, h: usize, w: usize) {
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

    pub(super) fn hw(&self, ds: usize) -> (usize, usize) {
        (self.height / ds, self.width / ds)
    }
}

/// Every convolution of the network (the stem, the ResBlocks' and attention's, the
/// resampling ones, the head).
pub(super) fn all_convs(blocks: &[BlockT], head: &ConvT) -> Vec<ConvT> {
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
pub(super) fn layer_out(op: &OpT, h: usize, w: usize) -> (usize, (usize, usize)) {
    match op {
        OpT::Conv(c) => (c.conv.c_out, c.conv.out_size(h, w)),
        OpT::Res(r) => (r.c_out, r.updown.resampled(h, w)),
        OpT::Attn(a) => (a.c, (h, w)),
        OpT::Down { c, .. } => (*c, (h / 2, w / 2)),
        OpT::Up { c, .. } => (*c, (2 * h, 2 * w)),
    }
}

pub(super) fn resolve_block(
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
pub(super) fn winograd_at(c: &ConvT, h: usize, w: usize) -> Option<Winograd> {
    c.wino
        .map(|wt| wt.wg)
        .filter(|&wg| Winograd::for_map(&c.conv, h, w) == Some(wg))
}
