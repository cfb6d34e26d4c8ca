//! Layer calls on spans of the tape and of the parameters, forward and backward, on one
//! thread ([`Ctx`]): convolutions (direct or Winograd), GroupNorm, resampling, linear.

use std::ops::Range;
use std::sync::Mutex;

use tweedie_kernels::{self as k, Isa, KernelError, WeightsRef};

use super::tape::{spans_mut, winograd_at, ConvT, LinT, NormT, Span, WinoT};
use crate::backend::{Pool, ThreadScratch};
use crate::model::adm::arch::{Updown, GROUPNORM_EPS, GROUPNORM_GROUPS};
use crate::model::layers::NormP;

/// What every layer call needs besides buffers.
pub(super) struct Ctx<'a> {
    pub(super) pool: &'a Pool,
    pub(super) scratch: &'a ThreadScratch,
    pub(super) isa: Isa,
    pub(super) params: &'a [f32],
    /// The convolution weights flipped for the input gradient (backward only; empty in the
    /// forward).
    pub(super) flipped: &'a [f32],
    /// The Winograd weights of the forward and of the input gradient (empty in the forward).
    pub(super) wino: &'a [f32],
    pub(super) wino_t: &'a [f32],
    /// [`AdmTrainer::zeros`] (empty in the forward).
    pub(super) zeros: &'a [f32],
}

impl Ctx<'_> {
    pub(super) fn p(&self, s: Span) -> &[f32] {
        s.of(self.params)
    }

    pub(super) fn wref(&self, s: Span) -> WeightsRef<'_> {
        WeightsRef::F32(s.of(self.params))
    }

    /// `out = conv(x)`: in Winograd form on the first thread where that pays, else split
    /// over output channels.
    pub(super) fn conv(
        &self,
        c: &ConvT,
        x: &[f32],
        h: usize,
        w: usize,
        out: &mut [f32],
    ) -> KResult {
        let (isa, wt, b) = (self.isa, self.wref(c.w), self.p(c.b));
        let scratch = self.scratch;
        if let (Some(wg), Some(WinoT { u, .. })) = (winograd_at(c, h, w), c.wino) {
            let mut s = scratch.lock(0);
            let x = k::Map::new(x, h, w);
            return wg.forward(isa, x, u.of(self.wino), Some(b), out, &mut s);
        }
        self.pool
            .split(out, c.conv.c_out, k::conv::MR, |i, co, piece| {
                let mut s = scratch.lock(i);
                let p = k::ConvParams {
                    weight: wt,
                    bias: b,
                };
                c.conv
                    .forward_with(isa, k::Map::new(x, h, w), p, co, piece, &mut s)
            })
    }

    /// GroupNorm32 (+FiLM, +SiLU) split over groups.
    pub(super) fn norm(&self, n: &NormT, inp: NormIn, out: &mut [f32]) -> KResult {
        let NormIn { x, hw, film, silu } = inp;
        let p = NormP {
            channels: n.c,
            groups: GROUPNORM_GROUPS,
            eps: GROUPNORM_EPS,
            gamma: self.p(n.g),
            beta: self.p(n.b),
        };
        self.pool.split(out, GROUPNORM_GROUPS, 1, |_, gr, piece| {
            p.forward_groups(x, hw, film, silu, gr, piece)
        })
    }

    /// `out = R(x)` for `c` maps of `h`×`w`.
    pub(super) fn resample(
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
    pub(super) fn resample_back(
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
    pub(super) fn conv_params(
        &self,
        c: &ConvT,
        dout: &[f32],
        x: k::Map,
        grads: &mut [f32],
        du: &mut [f32],
    ) -> KResult {
        let k::Map { data: x, h, w } = x;
        let [dw, db] = spans_mut(grads, [c.w, c.b]);
        let (isa, scratch) = (self.isa, self.scratch);
        if let (Some(_), Some(WinoT { dw, du: span, .. })) = (winograd_at(c, h, w), c.wino) {
            let mut s = scratch.lock(0);
            let du = &mut du[span.r()];
            let grads = k::ConvGrads {
                dweight: du,
                dbias: db,
            };
            let x = k::Map::new(x, h, w);
            return dw.backward_params_transformed(isa, grads, dout, x, &mut s);
        }
        self.pool
            .split_n(c.conv.c_out, k::conv::MR, [dw, db], |i, co, [dw, db]| {
                let mut s = scratch.lock(i);
                let grads = k::ConvGrads {
                    dweight: dw,
                    dbias: db,
                };
                c.conv
                    .backward_params(isa, grads, dout, k::Map::new(x, h, w), co, &mut s)
            })
    }

    /// dx = conv input gradient.
    pub(super) fn conv_input_set(
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
    pub(super) fn conv_input(
        &self,
        c: &ConvT,
        dout: &[f32],
        h: usize,
        w: usize,
        dx: &mut [f32],
    ) -> KResult {
        self.input_gradient(c, dout, h, w, dx, false)
    }

    /// The conv input gradient, written over `dx` (`set`) or added to it: in Winograd form on
    /// the first thread where that pays (from a zero bias when set), else split over input
    /// channels.
    pub(super) fn input_gradient(
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
            let mut s = scratch.lock(0);
            let u = u_t.of(self.wino_t);
            let zeros = set.then(|| &self.zeros[..c.conv.c_in]);
            return wg
                .transposed()
                .forward(isa, k::Map::new(dout, h, w), u, zeros, dx, &mut s);
        }
        if set {
            dx.fill(0.0);
        }
        self.pool
            .split(dx, c.conv.c_in, k::conv::MR, |i, ci, piece| {
                let mut s = scratch.lock(i);
                c.conv.backward_input_flipped(
                    isa,
                    k::MapMut::new(piece, h, w),
                    dout,
                    wt,
                    ci,
                    &mut s,
                )
            })
    }

    /// GroupNorm backward split over groups: dx, dγ, dβ (and the FiLM gradient) accumulate.
    pub(super) fn norm_back(
        &self,
        n: &NormT,
        dx: &mut [f32],
        grads: &mut [f32],
        dfilm: Option<&mut [f32]>,
        dout: &[f32],
        inp: NormIn,
    ) -> KResult {
        let NormIn { x, hw, film, silu } = inp;
        let (g, b, c) = (self.p(n.g), self.p(n.b), n.c);
        let [dg, db] = spans_mut(grads, [n.g, n.b]);
        let body = |gr: Range<usize>,
                    dx: &mut [f32],
                    dg: &mut [f32],
                    db: &mut [f32],
                    df: Option<(&mut [f32], &mut [f32])>| {
            k::GroupNorm {
                channels: c,
                hw,
                groups: GROUPNORM_GROUPS,
                eps: GROUPNORM_EPS,
                silu,
            }
            .backward(
                k::NormGrads {
                    dx,
                    dgamma: dg,
                    dbeta: db,
                    dfilm: df,
                },
                dout,
                x,
                &k::NormAffine {
                    gamma: g,
                    beta: b,
                    film,
                },
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

pub(super) type KResult = Result<(), KernelError>;

/// What a GroupNorm forward reads: its input (planes of `hw`), the FiLM (scale, shift) of a
/// scale-shift ResBlock and whether SiLU follows; its backward takes the same.
#[derive(Clone, Copy)]
pub(super) struct NormIn<'a> {
    pub(super) x: &'a [f32],
    pub(super) hw: usize,
    pub(super) film: Option<(&'a [f32], &'a [f32])>,
    pub(super) silu: bool,
}

impl<'a> NormIn<'a> {
    pub(super) fn new(
        x: &'a [f32],
        hw: usize,
        film: Option<(&'a [f32], &'a [f32])>,
        silu: bool,
    ) -> NormIn<'a> {
        NormIn { x, hw, film, silu }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `out = W·x + b` on the calling thread.
pub(super) fn linear_fwd(params: &[f32], l: &LinT, x: &[f32], out: &mut [f32]) -> KResult {
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
