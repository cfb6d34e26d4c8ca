//! Packing the GEMM's operands into micro-panels: weight rows (A, MR rows, f16 widened) and
//! im2col columns (B, NR wide) read straight from the input maps, without materialising
//! im2col.

use super::gemm::{Block, MR, NC, NR};
#[cfg(target_arch = "x86_64")]
use super::transpose;
use crate::{Isa, Weight};

/// Everything the im2col packing needs to know about the input and output maps.
pub(super) struct Geometry {
    pub(super) c_in: usize,
    pub(super) kernel: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    /// Input size as the convolution sees it (after dilation).
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) ow: usize,
    /// Output pixels oh·ow (the GEMM's N).
    pub(super) n: usize,
    /// Input dilation: the convolution sees the stored input with `dil − 1` zeros between
    /// neighbours (only the backward of a strided convolution uses dil > 1).
    pub(super) dil: usize,
    /// Size of the stored input planes.
    pub(super) real_h: usize,
    pub(super) real_w: usize,
}

impl Geometry {
    pub(super) fn k_total(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }
}

/// `out` = each h × w plane of `inp` with `pad` zeros on every side ((h + 2·pad) × (w + 2·pad)).
pub(super) fn pad_planes(inp: &[f32], h: usize, w: usize, pad: usize, out: &mut [f32]) {
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    for (src, dst) in inp.chunks_exact(h * w).zip(out.chunks_exact_mut(hp * wp)) {
        dst[..pad * wp].fill(0.0);
        dst[(pad + h) * wp..].fill(0.0);
        for (s, d) in src
            .chunks_exact(w)
            .zip(dst[pad * wp..].chunks_exact_mut(wp))
        {
            d[..pad].fill(0.0);
            d[pad..pad + w].copy_from_slice(s);
            d[pad + w..].fill(0.0);
        }
    }
}

/// Packs the block W[row0 .. row0+mc, k0 .. k0+kc] (`blk`: at = row0, len = mc) of the
/// row-major W (row stride `k_total`) as MR-row micro-panels, k-major inside a panel:
/// a[t·kc·MR + kk·MR + i] = W[row0 + t·MR + i, k0 + kk] (zero rows past mc).
pub(super) fn pack_a<W: Weight>(isa: Isa, weight: &[W], k_total: usize, blk: Block, a: &mut [f32]) {
    let Block {
        at: row0,
        len: mc,
        k0,
        kc,
    } = blk;
    for (t, panel) in a.chunks_exact_mut(kc * MR).enumerate() {
        let mut done = [0; MR]; // depth already packed, per row of this panel
        #[cfg(target_arch = "x86_64")]
        if let (true, Some(wf)) = (isa.is_simd(), W::as_f32(weight)) {
            // f32 rows: 8 × 8 and 4 × 8 register transposes (a pure copy) of the rows inside,
            // also in the last, ragged panel (32- and 64-channel products end in 8 or 4 rows).
            let inside = MR.min(mc.saturating_sub(t * MR));
            let kc8 = kc / 8 * 8;
            let row = |i: usize| wf[(row0 + t * MR + i) * k_total + k0..][..kc].as_ptr();
            let mut rows = 0;
            // SAFETY: AVX2 by Isa::is_simd; every row inside holds kc ≥ kc8 floats, and the
            // panel holds kc·MR ≥ (kc8 − 1)·MR + 12 floats.
            unsafe {
                let p = panel.as_mut_ptr();
                if kc8 > 0 && inside >= 8 {
                    transpose::transpose_rows(core::array::from_fn(row), kc8, p, MR);
                    rows = 8;
                }
                if kc8 > 0 && inside >= rows + 4 {
                    let four = core::array::from_fn(|i| row(rows + i));
                    transpose::transpose4_rows(four, kc8, p.add(rows), MR);
                    rows += 4;
                }
            }
            done[..rows].fill(kc8);
        }
        let _ = isa;
        for (i, &done) in done.iter().enumerate() {
            let r = t * MR + i;
            if r < mc {
                let src = &weight[(row0 + r) * k_total + k0..][..kc];
                for (kk, &v) in src.iter().enumerate().skip(done) {
                    panel[kk * MR + i] = v.to_f32();
                }
            } else {
                for kk in done..kc {
                    panel[kk * MR + i] = 0.0;
                }
            }
        }
    }
}

/// Packs rows k0 .. k0+kc, columns n0 .. n0+nc (`blk`: at = n0, len = nc) of the row-major
/// `src` (row stride `ld`) as NR-wide micro-panels:
/// b[(j/NR)·kc·NR + kk·NR + j%NR] = src[k0 + kk, n0 + j] (zero past nc).
pub(super) fn pack_rows(src: &[f32], ld: usize, blk: Block, b: &mut [f32]) {
    let Block {
        at: n0,
        len: nc,
        k0,
        kc,
    } = blk;
    for (pi, panel) in b.chunks_exact_mut(kc * NR).enumerate() {
        let j0 = n0 + pi * NR;
        let width = NR.min(n0 + nc - j0);
        for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
            dst[..width].copy_from_slice(&src[(k0 + kk) * ld + j0..][..width]);
            dst[width..].fill(0.0);
        }
    }
}

/// A run of output pixels of one output row inside one column tile: block columns
/// j0 .. j0+len are pixels (oy, ox .. ox+len).
#[derive(Clone, Copy, Default)]
struct Run {
    j0: usize,
    oy: usize,
    ox: usize,
    len: usize,
}

/// Packs im2col rows k0 .. k0+kc for output pixels n0 .. n0+nc (`blk`: at = n0, len = nc) as
/// NR-wide micro-panels:
/// b[(j/NR)·kc·NR + kk·NR + j%NR] = x[ci, oy·s + ky − pad, ox·s + kx − pad] (0 in the padding
/// and in the columns past nc of the last panel). Row by row (k outer), so each row of the
/// input is read as one forward stretch.
pub(super) fn pack_b(geo: &Geometry, inp: &[f32], blk: Block, b: &mut [f32]) {
    let Block {
        at: n0,
        len: nc,
        k0,
        kc,
    } = blk;
    // Cut the block into runs along output rows and tile boundaries.
    let mut runs = [Run::default(); NC];
    let mut n_runs = 0;
    let mut j = 0;
    while j < nc {
        let (oy, ox) = ((n0 + j) / geo.ow, (n0 + j) % geo.ow);
        let len = (geo.ow - ox).min(nc - j).min(NR - j % NR);
        runs[n_runs] = Run { j0: j, oy, ox, len };
        n_runs += 1;
        j += len;
    }
    let runs = &runs[..n_runs];
    let tail = (NR - nc % NR) % NR;
    // (ci, ky, kx) of row k, advanced in k order (no divisions in the loop).
    let kk2 = geo.kernel * geo.kernel;
    let (mut ci, r) = (k0 / kk2, k0 % kk2);
    let (mut ky, mut kx) = (r / geo.kernel, r % geo.kernel);
    let plane_len = geo.real_h * geo.real_w;
    for kk in 0..kc {
        let plane = &inp[ci * plane_len..(ci + 1) * plane_len];
        for run in runs {
            let at = (run.j0 / NR) * kc * NR + kk * NR + run.j0 % NR;
            let dst = &mut b[at..at + run.len];
            let iy = (run.oy * geo.stride + ky) as isize - geo.pad as isize;
            if iy < 0 || iy >= geo.h as isize {
                dst.fill(0.0);
                continue;
            }
            let x0 = run.ox * geo.stride + kx;
            if geo.dil == 1 {
                let src = &plane[iy as usize * geo.w..(iy as usize + 1) * geo.w];
                copy_row(src, dst, x0, geo.pad, geo.stride);
            } else {
                copy_row_dilated(geo, plane, iy as usize, dst, x0);
            }
        }
        if tail > 0 {
            let at = (nc / NR) * kc * NR + kk * NR + nc % NR;
            b[at..at + tail].fill(0.0);
        }
        kx += 1;
        if kx == geo.kernel {
            kx = 0;
            ky += 1;
            if ky == geo.kernel {
                ky = 0;
                ci += 1;
            }
        }
    }
}

/// [`copy_row`] from the dilated view of `plane` (row `iy` of the dilated input): element
/// (iy, ix) is stored at (iy/dil, ix/dil) when both divide, and is 0 otherwise.
fn copy_row_dilated(geo: &Geometry, plane: &[f32], iy: usize, dst: &mut [f32], x0: usize) {
    if !iy.is_multiple_of(geo.dil) || iy / geo.dil >= geo.real_h {
        dst.fill(0.0);
        return;
    }
    let src = &plane[(iy / geo.dil) * geo.real_w..][..geo.real_w];
    for (q, d) in dst.iter_mut().enumerate() {
        let ix = (x0 + q * geo.stride) as isize - geo.pad as isize;
        let (ix, ok) = (ix as usize, ix >= 0 && ix < geo.w as isize);
        *d = if ok && ix.is_multiple_of(geo.dil) && ix / geo.dil < geo.real_w {
            src[ix / geo.dil]
        } else {
            0.0
        };
    }
}

/// dst[q] = src[x0 + q·stride − pad] where that index is inside src, else 0.
fn copy_row(src: &[f32], dst: &mut [f32], x0: usize, pad: usize, stride: usize) {
    let w = src.len() as isize;
    let first = x0 as isize - pad as isize;
    if stride == 1 && first >= 0 && first + dst.len() as isize <= w {
        // Interior run (the common case): a plain copy, fixed-size for a full tile so it
        // compiles to a few vector moves instead of a memcpy call.
        let s = &src[first as usize..first as usize + dst.len()];
        match (
            <&mut [f32; NR]>::try_from(&mut *dst),
            <&[f32; NR]>::try_from(s),
        ) {
            (Ok(d), Ok(s)) => *d = *s,
            _ => dst.copy_from_slice(s),
        }
    } else if stride == 1 {
        // Valid q: 0 ≤ first + q < w.
        let lo = (-first).clamp(0, dst.len() as isize) as usize;
        let hi = (w - first).clamp(lo as isize, dst.len() as isize) as usize;
        dst[..lo].fill(0.0);
        if hi > lo {
            let s = (first + lo as isize) as usize;
            dst[lo..hi].copy_from_slice(&src[s..s + (hi - lo)]);
        }
        dst[hi..].fill(0.0);
    } else {
        for (q, d) in dst.iter_mut().enumerate() {
            let ix = first + (q * stride) as isize;
            *d = if ix >= 0 && ix < w {
                src[ix as usize]
            } else {
                0.0
            };
        }
    }
}
