//! One sample's backward ([`Bwd`]): walks the layers in reverse, reading the tape, and
//! accumulates parameter gradients.

use tweedie_kernels::{self as k, WeightsRef};

use super::layers::{Ctx, KResult, NormIn};
use super::tape::{spans_mut, AttnT, ConvT, HeadT, LayerT, LinT, OpT, ResT, Span, TimeTape};
use crate::model::adm::arch::Updown;

/// Backward state: the tape (read), temporaries and gradient accumulators.
pub(super) struct Bwd<'a> {
    pub(super) tape: &'a [f32],
    pub(super) work: &'a mut [Vec<f32>; 5],
    pub(super) dfilm: &'a mut [f32],
    pub(super) demb_silu: &'a mut [f32],
    pub(super) emb_silu: &'a [f32],
    pub(super) grads: &'a mut [f32],
    /// The lane's transformed Winograd weight gradients (see `Lane::du`).
    pub(super) du: &'a mut [f32],
}

impl Bwd<'_> {
    pub(super) fn conv_params(
        &mut self,
        cx: &mut Ctx,
        c: &ConvT,
        dout: &[f32],
        inp: Span,
        h: usize,
        w: usize,
    ) -> KResult {
        cx.conv_params(
            c,
            dout,
            k::Map::new(inp.of(self.tape), h, w),
            self.grads,
            self.du,
        )
    }

    pub(super) fn head(
        &mut self,
        cx: &mut Ctx,
        head: &HeadT,
        dout: &[f32],
        dx: &mut [f32],
        (h, w): (usize, usize),
    ) -> KResult {
        let (norm, conv, inp) = (&head.norm, &head.conv, head.inp);
        let hw = h * w;
        let x = inp.of(self.tape);
        let [t0, d1, ..] = &mut *self.work;
        let a = &mut t0[..inp.len];
        cx.norm(norm, NormIn::new(x, hw, None, true), a)?;
        cx.conv_params(conv, dout, k::Map::new(a, h, w), self.grads, self.du)?;
        let da = &mut d1[..inp.len];
        cx.conv_input_set(conv, dout, h, w, da)?;
        cx.norm_back(
            norm,
            dx,
            self.grads,
            None,
            da,
            NormIn::new(x, hw, None, true),
        )
    }

    /// One layer backward: `dx += ∂L/∂input` given `dy` = ∂L/∂output; parameter gradients
    /// accumulate into `grads`.
    pub(super) fn layer(
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
                cx.conv_params(c, dy, k::Map::new(x, h, w), self.grads, self.du)?;
                cx.conv_input(c, dy, h, w, dx)
            }
            OpT::Down { c, conv } => match conv {
                Some(cv) => {
                    cx.conv_params(cv, dy, k::Map::new(x, h, w), self.grads, self.du)?;
                    cx.conv_input(cv, dy, h, w, dx)
                }
                None => cx.resample_back(Updown::Down, *c, dy, h, w, dx),
            },
            OpT::Up { c, conv } => match conv {
                Some((cv, u)) => {
                    let (h2, w2) = (2 * h, 2 * w);
                    cx.conv_params(
                        cv,
                        dy,
                        k::Map::new(u.of(self.tape), h2, w2),
                        self.grads,
                        self.du,
                    )?;
                    let du = &mut self.work[0][..c * h2 * w2];
                    cx.conv_input_set(cv, dy, h2, w2, du)?;
                    cx.resample_back(Updown::Up, *c, du, h, w, dx)
                }
                None => cx.resample_back(Updown::Up, *c, dy, h, w, dx),
            },
            OpT::Res(r) => self.res(cx, r, x, dy, dx, (h, w)),
            OpT::Attn(a) => self.attn(cx, a, x, dy, dx, (h, w)),
        }
    }

    pub(super) fn res(
        &mut self,
        cx: &mut Ctx,
        r: &ResT,
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        (h, w): (usize, usize),
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
                cx.conv_params(s, dy, k::Map::new(xs, ho, wo), self.grads, self.du)?;
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
            k::Map::new(r.a2.of(self.tape), ho, wo),
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
                NormIn::new(hs, hwo, f, true),
            )?;
        } else {
            cx.norm_back(
                &r.out_norm,
                dh,
                self.grads,
                None,
                da2,
                NormIn::new(hs, hwo, None, true),
            )?;
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
            k::Map::new(r.a1.of(self.tape), ho, wo),
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
        cx.norm_back(
            &r.in_norm,
            dx,
            self.grads,
            None,
            da1,
            NormIn::new(x, hw, None, true),
        )
    }

    pub(super) fn attn(
        &mut self,
        cx: &mut Ctx,
        a: &AttnT,
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        (h, w): (usize, usize),
    ) -> KResult {
        let (c, t) = (a.c, h * w);
        let [_, _, d0, d1, d2] = &mut *self.work;
        k::add_inplace(dx, dy);
        let att = a.a_s.of(self.tape);
        let qkv = a.qkv_s.of(self.tape);
        cx.conv_params(&a.proj, dy, k::Map::new(att, h, w), self.grads, self.du)?;
        let datt = &mut d0[..c * t];
        cx.conv_input_set(&a.proj, dy, h, w, datt)?;
        let dqkv = &mut d1[..3 * c * t];
        dqkv.fill(0.0);
        {
            let s = &mut cx.scratch.lock(0);
            k::QkvAttention {
                channels: c,
                t,
                heads: a.heads,
                order: a.order,
            }
            .backward(dqkv, datt, qkv, 0..a.heads, s)?;
        }
        cx.conv_params(
            &a.qkv,
            dqkv,
            k::Map::new(a.n_s.of(self.tape), h, w),
            self.grads,
            self.du,
        )?;
        let dn = &mut d2[..c * t];
        cx.conv_input_set(&a.qkv, dqkv, h, w, dn)?;
        cx.norm_back(
            &a.norm,
            dx,
            self.grads,
            None,
            dn,
            NormIn::new(x, t, None, false),
        )
    }

    /// The time MLP: emb = L2(SiLU(L1(sinusoid(t)))); `d[0]` holds ∂L/∂SiLU(emb), summed
    /// over every ResBlock's emb_layers.
    pub(super) fn time_mlp(
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
