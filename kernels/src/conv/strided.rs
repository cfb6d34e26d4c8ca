//! The input gradient of a strided convolution (the ADM U-Net's stride-2 downsampling) as
//! one GEMM into columns and a scatter (col2im): dcol[(c, k), n] = Σ_o W[o, c, k]·dout[o, n]
//! for every input channel c, tap k and output pixel n, then each value added into the input
//! pixel that tap k of output pixel n reads. The transposed convolution the stride-1 layers
//! use would first dilate dout by the stride, so at stride 2 three quarters of its products
//! would be with zeros.
//!
//! Terms are added in a fixed order (the GEMM's over o, then taps in order k = 0, 1, … per
//! input pixel), so the bits depend only on the inputs and the ISA, not on how the caller
//! splits the input channels.

use super::gemm::{gemm, gemm_scratch_len, Block, Lhs, Out, MR};
use super::pack::pack_rows;
use super::{Conv2d, MapMut};
use crate::Isa;

/// Floats of scratch [`input_gradient`] needs for `channels` input channels and an output of
/// `n` pixels: the columns, zero initial sums for their rows, and the GEMM's packing.
pub(super) fn scratch_len(conv: &Conv2d, channels: usize, n: usize) -> usize {
    let rows = channels * conv.kernel * conv.kernel;
    rows * n + rows + gemm_scratch_len(rows, conv.c_out)
}

/// dinp [ci.len(), h, w] += ∂L/∂inp for the input channels `ci`, given dout [c_out, oh, ow]
/// and `tap(c, o, k)` = W[o, c, k] (k = ky·kernel + kx). The caller checked the shapes and
/// that `scratch` holds [`scratch_len`] floats.
pub(super) fn input_gradient(
    conv: &Conv2d,
    isa: Isa,
    dinp: MapMut,
    dout: &[f32],
    ci: core::ops::Range<usize>,
    scratch: &mut [f32],
    tap: impl Fn(usize, usize, usize) -> f32,
) {
    let MapMut { data: dinp, h, w } = dinp;
    let (oh, ow) = conv.out_size(h, w);
    let (n, k2) = (oh * ow, conv.kernel * conv.kernel);
    let rows = ci.len() * k2;
    let (dcol, rest) = scratch.split_at_mut(rows * n);
    let (zeros, gs) = rest.split_at_mut(rows);
    zeros.fill(0.0);
    let pack = |blk: Block, a: &mut [f32]| {
        let Block {
            at: m0,
            len: mc,
            k0,
            kc,
        } = blk;
        for (t, panel) in a.chunks_exact_mut(kc * MR).enumerate() {
            for i in 0..MR {
                let r = t * MR + i;
                for kk in 0..kc {
                    panel[kk * MR + i] = match r < mc {
                        true => tap(ci.start + (m0 + r) / k2, k0 + kk, (m0 + r) % k2),
                        false => 0.0,
                    };
                }
            }
        }
    };
    let a = Lhs {
        m: rows,
        init: Some(zeros),
        pack,
    };
    let pack_b = |blk: Block, b: &mut [f32]| pack_rows(dout, n, blk, b);
    gemm(isa, a, n, conv.c_out, pack_b, Out::Dense(dcol), gs);
    scatter(conv, dcol, (h, w), (oh, ow), dinp);
}

/// dinp[c, oy·s + ky − pad, ox·s + kx − pad] += dcol[(c, ky·kernel + kx), oy·ow + ox] for
/// the pixels inside the map, channel by channel, tap by tap.
fn scatter(
    conv: &Conv2d,
    dcol: &[f32],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    dinp: &mut [f32],
) {
    let (k, s, pad) = (conv.kernel, conv.stride, conv.pad);
    // The output indices o whose o·s + t − pad lands in 0..len (t a tap offset).
    let inside = |t: usize, len: usize, out: usize| {
        let first = pad.saturating_sub(t).div_ceil(s);
        let last = (len + pad).saturating_sub(t).div_ceil(s).min(out);
        first..last.max(first)
    };
    let mut cols = dcol.chunks_exact(oh * ow);
    for plane in dinp.chunks_exact_mut(h * w) {
        for ky in 0..k {
            for kx in 0..k {
                let Some(col) = cols.next() else { return };
                let xs = inside(kx, w, ow);
                for oy in inside(ky, h, oh) {
                    let y = oy * s + ky - pad;
                    let line = &mut plane[y * w..(y + 1) * w];
                    let src = &col[oy * ow..(oy + 1) * ow];
                    for ox in xs.clone() {
                        line[ox * s + kx - pad] += src[ox];
                    }
                }
            }
        }
    }
}
