//! One sample's forward with saving: each layer reads its input from the tape and writes its
//! output and the extras its backward needs.

use tweedie_kernels as k;

use super::layers::{linear_fwd, Ctx, KResult, NormIn};
use super::tape::{spans_mut, HeadT, LayerT, OpT, TimeTape};
use crate::model::adm::arch::Updown;

/// One layer forward: reads `tape[l.inp]`, writes `tape[l.out]` and its saved extras.
pub(super) fn layer_fwd(
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
                cx.norm(&r.in_norm, NormIn::new(x, hw, None, true), a1r)?;
            } else {
                let a1 = &mut t0[..r.c_in * hw];
                cx.norm(&r.in_norm, NormIn::new(x, hw, None, true), a1)?;
                cx.resample(r.updown, r.c_in, a1, h, w, a1r)?;
            }
            cx.conv(&r.in_conv, a1r, ho, wo, hs)?;
            if !r.scale_shift {
                for (row, &e) in hs.chunks_exact_mut(hwo).zip(film.iter()) {
                    row.iter_mut().for_each(|v| *v += e);
                }
            }
            let f = r.scale_shift.then(|| film.split_at(r.c_out));
            cx.norm(&r.out_norm, NormIn::new(hs, hwo, f, true), a2)?;
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
            cx.norm(&a.norm, NormIn::new(x, t, None, false), n)?;
            cx.conv(&a.qkv, n, h, w, qkv)?;
            {
                let s = &mut cx.scratch.lock(0);
                k::QkvAttention {
                    channels: a.c,
                    t,
                    heads: a.heads,
                    order: a.order,
                }
                .forward(qkv, 0..a.heads, att, s)?;
            }
            cx.conv(&a.proj, att, h, w, y)?;
            k::add_inplace(y, x);
            Ok(())
        }
    }
}

/// The output head forward: out = conv(SiLU(GN(tape[inp]))).
pub(super) fn head_fwd(
    cx: &mut Ctx,
    tape: &[f32],
    t0: &mut [f32],
    head: &HeadT,
    (h, w): (usize, usize),
    out: &mut [f32],
) -> KResult {
    let a = &mut t0[..head.inp.len];
    cx.norm(
        &head.norm,
        NormIn::new(head.inp.of(tape), h * w, None, true),
        a,
    )?;
    cx.conv(&head.conv, a, h, w, out)
}
