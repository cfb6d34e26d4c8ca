//! The stride-1 convolution without im2col packing, for maps small enough to copy whole.
//!
//! The input is copied once, zero-padded, into planes of `wp = w + 2·pad` columns (`plane`
//! floats apart). Output pixel (y, x) is then computed at position p = y·wp + x of a "wide"
//! output of oh·wp columns, and its im2col value for row k = (c, ky, kx) is
//! `padded[c·plane + ky·wp + kx + p]`: for a fixed k, consecutive p read consecutive floats,
//! so the microkernel loads B straight from the padded copy through a per-row offset instead
//! of from a packed panel. The wp − ow extra
//! columns of each output row are computed and dropped (6 % more products at 32 × 32, 12.5 %
//! at 16 × 16; narrower maps, which would waste more, keep the packed path), which costs less
//! than packing 9·c_in floats per pixel when c_out is 32 or 64.
//!
//! Every output element is still init + Σ_k A[i, k]·B[k, p] in k order, one FMA (or product
//! and sum, portable) per term, so the bits equal the packed path's for every ISA.

use core::ops::Range;

use super::gemm::{first_terms, tile_product, Block, Lhs, Out, KC, LINE, MC_MAX, MR, NR};
use super::microkernel::Panels;
use super::pack::pad_planes;
use crate::Isa;

/// Largest padded copy (floats) the direct path takes on; bigger maps use the packed path.
const MAX_PADDED: usize = 1 << 18;

/// The geometry of one direct convolution: `c` input planes of h × w, a k × k kernel at stride
/// 1 with `pad` zeros on every side.
#[derive(Clone, Copy, Debug)]
pub(super) struct Direct {
    c: usize,
    k: usize,
    pad: usize,
    h: usize,
    w: usize,
    /// Padded row length, and floats from one padded plane to the next (its hp·wp values plus
    /// a [`LINE`]: 1×1 layers' planes are powers of two).
    wp: usize,
    plane: usize,
    /// Output width.
    ow: usize,
    /// Wide output columns, rounded up to whole NR tiles.
    n_pad: usize,
    /// Floats of the padded copy, with the zero tail the last tiles read past the last plane.
    p_len: usize,
}

impl Direct {
    /// The direct geometry, or `None` if the map is too large (or empty) for it.
    pub(super) fn new(c: usize, k: usize, pad: usize, h: usize, w: usize) -> Option<Direct> {
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        if c == 0 || k == 0 || hp < k || wp < k {
            return None;
        }
        let (oh, ow) = (hp - k + 1, wp - k + 1);
        let plane = hp * wp + LINE;
        let n_pad = (oh * wp).div_ceil(NR) * NR;
        // The last read: the last plane's row k−1, column k−1, plus the last wide column (a row
        // range starting past row 0 may round its columns up by up to NR − 1 more).
        let last = (c - 1) * plane + (k - 1) * wp + (k - 1) + n_pad + NR;
        let p_len = last.max(c * plane);
        // Narrow maps waste too much on the extra columns (8 × 8: 96 wide columns for 64
        // pixels); they stay with the packed path.
        let worth = 8 * n_pad <= 9 * oh * ow;
        (worth && p_len <= MAX_PADDED).then_some(Direct {
            c,
            k,
            pad,
            h,
            w,
            wp,
            plane,
            ow,
            n_pad,
            p_len,
        })
    }

    /// Scratch floats for `m` output rows: the A block, one ragged C tile, the padded copy and
    /// the wide output.
    pub(super) fn scratch_len(&self, m: usize) -> usize {
        a_block_len(m, self.depth()) + MR * NR + self.p_len + m * (self.n_pad + LINE)
    }

    /// Rows of im2col (c·k·k), the depth of the product.
    pub(super) fn depth(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Output rows y of m channels: out[i, (y − ys.start)·ow + x] = init[i] +
    /// Σ_k A[i, k]·im2col[k, (y, x)] for y in `ys`, or accumulated onto `out` when `init` is
    /// `None`; `a` packs A as the packed path's does and holds m and init. `out` holds m rows of
    /// ys.len()·ow floats; `scratch.len() ≥ self.scratch_len(m)` (both checked by the caller).
    pub(super) fn run(
        &self,
        isa: Isa,
        a: Lhs<impl FnMut(Block, &mut [f32])>,
        inp: &[f32],
        ys: Range<usize>,
        mut out: Out,
        scratch: &mut [f32],
    ) {
        let Lhs {
            m,
            init,
            pack: mut pack_a,
        } = a;
        if m == 0 || ys.is_empty() {
            return;
        }
        let depth = self.depth();
        // Wide columns of the rows ys, whole NR tiles (at most self.n_pad).
        let n = (ys.len() * self.wp).div_ceil(NR) * NR;
        // Wide rows a LINE further apart than n (a power of two for 1×1 layers).
        let ld = n + LINE;
        let (a_buf, rest) = scratch.split_at_mut(a_block_len(m, depth));
        let (tmp, rest) = rest.split_at_mut(MR * NR);
        let (padded, rest) = rest.split_at_mut(self.p_len);
        let wide = &mut rest[..m * ld];
        self.pad_input(inp, padded);
        // The tiles read B from the first row of ys on.
        let padded = &padded[ys.start * self.wp..];
        let row_len = ys.len() * self.ow;
        if init.is_none() {
            self.widen(&mut out, row_len, wide, ld);
        }
        // (Starting from `init`, the first K block writes every wide value, the extra columns
        // included: nothing to clear.)
        let mut tiles = Out::Strided {
            c: &mut wide[..],
            ld,
        };
        let blocks = m.div_ceil(MC_MAX);
        let mc_step = m.div_ceil(blocks).div_ceil(MR) * MR;
        let mut offs = [0u32; KC];
        for k0 in (0..depth).step_by(KC) {
            let kc = KC.min(depth - k0);
            self.offsets(k0, &mut offs[..kc]);
            for m0 in (0..m).step_by(mc_step) {
                let mc = mc_step.min(m - m0);
                let a_blk = &mut a_buf[..mc.div_ceil(MR) * MR * kc];
                pack_a(
                    Block {
                        at: m0,
                        len: mc,
                        k0,
                        kc,
                    },
                    a_blk,
                );
                for nj in (0..n).step_by(NR) {
                    for (t, a_pan) in a_blk.chunks_exact(kc * MR).enumerate() {
                        let i0 = m0 + t * MR;
                        let mr = MR.min(m - i0);
                        let start = first_terms(init, k0, i0, mr);
                        let panels = Panels {
                            kc,
                            a: a_pan,
                            b: &padded[nj..],
                            b_rows: &offs[..kc],
                        };
                        let at = (n, i0, mr, nj, NR);
                        tile_product(isa, panels, &mut tiles, at, tmp, start.as_ref());
                    }
                }
            }
        }
        self.narrow(wide, ld, &mut out, row_len);
    }

    /// offs[kk] = where row k0 + kk = (c, ky, kx) starts in the padded copy.
    fn offsets(&self, k0: usize, offs: &mut [u32]) {
        let k2 = self.k * self.k;
        let (mut c, r) = (k0 / k2, k0 % k2);
        let (mut ky, mut kx) = (r / self.k, r % self.k);
        for o in offs {
            *o = (c * self.plane + ky * self.wp + kx) as u32;
            kx += 1;
            if kx == self.k {
                kx = 0;
                ky += 1;
                if ky == self.k {
                    ky = 0;
                    c += 1;
                }
            }
        }
    }

    /// The input's planes zero-padded by `pad` on every side (`plane` apart, zeros between),
    /// then zeros to `p_len`.
    fn pad_input(&self, inp: &[f32], padded: &mut [f32]) {
        let (planes, tail) = padded.split_at_mut(self.c * self.plane);
        let (hp, wp) = (self.h + 2 * self.pad, self.wp);
        let src = inp.chunks_exact(self.h * self.w);
        for (x, dst) in src.zip(planes.chunks_exact_mut(self.plane)) {
            let (map, gap) = dst.split_at_mut(hp * wp);
            pad_planes(x, self.h, self.w, self.pad, map);
            gap.fill(0.0);
        }
        tail.fill(0.0);
    }

    /// The wide output (rows `ld` floats apart) for accumulating onto `out`: its rows (row_len
    /// floats each) spread out, zeros in the extra columns.
    fn widen(&self, out: &mut Out, row_len: usize, wide: &mut [f32], ld: usize) {
        wide.fill(0.0);
        let ow = self.ow;
        for (i, dst) in wide.chunks_exact_mut(ld).enumerate() {
            let src = out.row(row_len, i);
            for (s, d) in src.chunks_exact(ow).zip(dst.chunks_exact_mut(self.wp)) {
                d[..ow].copy_from_slice(s);
            }
        }
    }

    /// `out`'s rows = the wide output's without the extra columns.
    fn narrow(&self, wide: &[f32], ld: usize, out: &mut Out, row_len: usize) {
        let ow = self.ow;
        for (i, src) in wide.chunks_exact(ld).enumerate() {
            let dst = out.row(row_len, i);
            for (s, d) in src.chunks_exact(self.wp).zip(dst.chunks_exact_mut(ow)) {
                d.copy_from_slice(&s[..ow]);
            }
        }
    }

    /// Output row length (the map's width): pixel ranges the direct path takes must be whole
    /// rows.
    pub(super) fn ow(&self) -> usize {
        self.ow
    }
}

/// Floats of the packed A block for m rows of the given depth (as the packed path's).
fn a_block_len(m: usize, depth: usize) -> usize {
    let mc = (m.max(1).div_ceil(MR) * MR).min(MC_MAX);
    mc * depth.clamp(1, KC)
}
