//! The stride-1 convolution without im2col packing, for maps small enough to copy whole.
//!
//! The input is copied once, zero-padded, into planes of `wp = w + 2·pad` columns. Output pixel
//! (y, x) is then computed at position p = y·wp + x of a "wide" output of oh·wp columns, and
//! its im2col value for row k = (c, ky, kx) is `padded[c·plane + ky·wp + kx + p]`: for a fixed
//! k, consecutive p read consecutive floats, so the microkernel loads B straight from the
//! padded copy through a per-row offset instead of from a packed panel. The wp − ow extra
//! columns of each output row are computed and dropped (6 % more products at 32 × 32, 12.5 %
//! at 16 × 16; narrower maps, which would waste more, keep the packed path), which costs less
//! than packing 9·c_in floats per pixel when c_out is 32 or 64.
//!
//! Every output element is still init + Σ_k A[i, k]·B[k, p] in k order, one FMA (or product
//! and sum, portable) per term, so the bits equal the packed path's for every ISA.

use core::ops::Range;

use super::{Isa, IsaKind, Out, Tile, KC, MC_MAX, MR, NR};

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
    /// Padded row length and plane size.
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
        let plane = hp * wp;
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
        a_block_len(m, self.depth()) + MR * NR + self.p_len + m * self.n_pad
    }

    /// Rows of im2col (c·k·k), the depth of the product.
    pub(super) fn depth(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Output rows y of m channels: out[i, (y − ys.start)·ow + x] = init[i] +
    /// Σ_k A[i, k]·im2col[k, (y, x)] for y in `ys`, or accumulated onto `out` when `init` is
    /// `None`; `pack_a` packs A as the packed path's does. `out` holds m rows of
    /// ys.len()·ow floats; `scratch.len() ≥ self.scratch_len(m)` (both checked by the caller).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        &self,
        isa: Isa,
        m: usize,
        init: Option<&[f32]>,
        mut pack_a: impl FnMut(usize, usize, usize, usize, &mut [f32]),
        inp: &[f32],
        ys: Range<usize>,
        mut out: Out,
        scratch: &mut [f32],
    ) {
        if m == 0 || ys.is_empty() {
            return;
        }
        let depth = self.depth();
        // Wide columns of the rows ys, whole NR tiles (at most self.n_pad).
        let n = (ys.len() * self.wp).div_ceil(NR) * NR;
        let (a_buf, rest) = scratch.split_at_mut(a_block_len(m, depth));
        let (tmp, rest) = rest.split_at_mut(MR * NR);
        let (padded, rest) = rest.split_at_mut(self.p_len);
        let wide = &mut rest[..m * n];
        self.pad_input(inp, padded);
        // The tiles read B from the first row of ys on.
        let padded = &padded[ys.start * self.wp..];
        let row_len = ys.len() * self.ow;
        self.widen(&mut out, row_len, wide, n, init.is_none());
        let blocks = m.div_ceil(MC_MAX);
        let mc_step = m.div_ceil(blocks).div_ceil(MR) * MR;
        let mut offs = [0u32; KC];
        for k0 in (0..depth).step_by(KC) {
            let kc = KC.min(depth - k0);
            self.offsets(k0, &mut offs[..kc]);
            for m0 in (0..m).step_by(mc_step) {
                let mc = mc_step.min(m - m0);
                let a_blk = &mut a_buf[..mc.div_ceil(MR) * MR * kc];
                pack_a(m0, mc, k0, kc, a_blk);
                for nj in (0..n).step_by(NR) {
                    let b = &padded[nj..];
                    for (t, a_pan) in a_blk.chunks_exact(kc * MR).enumerate() {
                        let i0 = m0 + t * MR;
                        let mr = MR.min(m - i0);
                        let start = init.filter(|_| k0 == 0).map(|v| {
                            let mut r = [0f32; MR];
                            r[..mr].copy_from_slice(&v[i0..i0 + mr]);
                            r
                        });
                        if mr == MR {
                            let mut c = super::tile_of(&mut wide[i0 * n..], n, nj);
                            kernel(isa, kc, a_pan, b, &offs[..kc], &mut c, start.as_ref(), MR);
                        } else {
                            for (i, t) in tmp.chunks_exact_mut(NR).take(mr).enumerate() {
                                t.copy_from_slice(&wide[(i0 + i) * n + nj..][..NR]);
                            }
                            let mut c = super::tile_of(tmp, NR, 0);
                            kernel(isa, kc, a_pan, b, &offs[..kc], &mut c, start.as_ref(), mr);
                            for (i, t) in tmp.chunks_exact(NR).take(mr).enumerate() {
                                wide[(i0 + i) * n + nj..][..NR].copy_from_slice(t);
                            }
                        }
                    }
                }
            }
        }
        self.narrow(wide, n, &mut out, row_len);
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

    /// The input's planes zero-padded by `pad` on every side, then zeros to `p_len`.
    fn pad_input(&self, inp: &[f32], padded: &mut [f32]) {
        let (h, w, p, wp) = (self.h, self.w, self.pad, self.wp);
        padded.fill(0.0);
        for (src, dst) in inp
            .chunks_exact(h * w)
            .zip(padded.chunks_exact_mut(self.plane))
        {
            for (s, d) in src.chunks_exact(w).zip(dst[p * wp..].chunks_exact_mut(wp)) {
                d[p..p + w].copy_from_slice(s);
            }
        }
    }

    /// The wide output (rows of n columns): `out`'s rows (row_len floats each) spread out
    /// when accumulating onto them, zeros elsewhere.
    fn widen(&self, out: &mut Out, row_len: usize, wide: &mut [f32], n: usize, accumulate: bool) {
        wide.fill(0.0);
        if accumulate {
            let ow = self.ow;
            for (i, dst) in wide.chunks_exact_mut(n).enumerate() {
                let src = out.row(row_len, i);
                for (s, d) in src.chunks_exact(ow).zip(dst.chunks_exact_mut(self.wp)) {
                    d[..ow].copy_from_slice(s);
                }
            }
        }
    }

    /// `out`'s rows = the wide output's without the extra columns.
    fn narrow(&self, wide: &[f32], n: usize, out: &mut Out, row_len: usize) {
        let ow = self.ow;
        for (i, src) in wide.chunks_exact(n).enumerate() {
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

/// c[i][j] = s_i + Σ_kk a[kk·MR + i]·b[offs[kk] + j] for the first `rows` rows of a tile
/// (the same terms, in the same order, as the packed microkernel).
#[allow(clippy::too_many_arguments)]
#[inline]
fn kernel(
    isa: Isa,
    kc: usize,
    a: &[f32],
    b: &[f32],
    offs: &[u32],
    c: &mut Tile,
    init: Option<&[f32; MR]>,
    rows: usize,
) {
    // The offsets increase (Direct::offsets walks c, ky, kx in order), so the last is the
    // farthest read.
    debug_assert!(offs.windows(2).all(|o| o[0] < o[1]));
    let reach = offs.last().map_or(0, |&o| o as usize + NR);
    assert!(a.len() >= kc * MR && offs.len() == kc && b.len() >= reach);
    match isa.0 {
        IsaKind::Portable => kernel_portable(kc, a, b, offs, c, init),
        // SAFETY: an Avx2Fma or Avx512 Isa exists only on a CPU with AVX2 and FMA (see
        // `enable_avx2_fma`); every read stays below `reach` (asserted above).
        #[cfg(target_arch = "x86_64")]
        IsaKind::Avx2Fma | IsaKind::Avx512 => unsafe {
            avx2::kernel(kc, a, b, offs, c, init, rows)
        },
    }
}

fn kernel_portable(
    kc: usize,
    a: &[f32],
    b: &[f32],
    offs: &[u32],
    c: &mut Tile,
    init: Option<&[f32; MR]>,
) {
    let mut acc = [[0f32; NR]; MR];
    for (i, row) in acc.iter_mut().enumerate() {
        *row = match init {
            Some(v) => [v[i]; NR],
            None => *c[i],
        };
    }
    for (ak, &o) in a.chunks_exact(MR).zip(offs).take(kc) {
        let bk = &b[o as usize..o as usize + NR];
        for (row, &ai) in acc.iter_mut().zip(ak) {
            for (s, &bj) in row.iter_mut().zip(bk) {
                *s += ai * bj;
            }
        }
    }
    for (ci, row) in c.iter_mut().zip(&acc) {
        **ci = *row;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Tile, MR, NR};
    use core::arch::x86_64::*;

    const SR: usize = 6;
    const SC: usize = 16;

    /// As the packed AVX2 microkernel (sub-tiles of 6 × 16, ragged rows in 2 or 4), with B
    /// read at `b + offs[k]`.
    ///
    /// # Safety
    /// AVX2 and FMA; a.len() ≥ kc·MR, offs.len() = kc, b.len() ≥ max(offs) + NR.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel(
        kc: usize,
        a: &[f32],
        b: &[f32],
        offs: &[u32],
        c: &mut Tile,
        init: Option<&[f32; MR]>,
        rows: usize,
    ) {
        let rows = rows.min(MR);
        for i0 in (0..rows).step_by(SR) {
            for j0 in (0..NR).step_by(SC) {
                let (ap, bp) = (a.as_ptr().add(i0), b.as_ptr().add(j0));
                // SAFETY: same contract; the offsets stay inside a row of A and of B's reach.
                unsafe {
                    match rows - i0 {
                        1 | 2 => sub_tile::<2>(kc, ap, bp, offs, c, i0, j0, init),
                        3 | 4 => sub_tile::<4>(kc, ap, bp, offs, c, i0, j0, init),
                        _ => sub_tile::<SR>(kc, ap, bp, offs, c, i0, j0, init),
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sub_tile<const R: usize>(
        kc: usize,
        mut ap: *const f32,
        bp: *const f32,
        offs: &[u32],
        c: &mut Tile,
        i0: usize,
        j0: usize,
        init: Option<&[f32; MR]>,
    ) {
        // SAFETY (whole body): every pointer stays inside the slices by the length contract.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for (i, r) in acc.iter_mut().enumerate() {
                let cp = c[i0 + i].as_ptr().add(j0);
                *r = match init {
                    Some(v) => [_mm256_set1_ps(v[i0 + i]); 2],
                    None => [_mm256_loadu_ps(cp), _mm256_loadu_ps(cp.add(8))],
                };
            }
            for &o in &offs[..kc] {
                let b = bp.add(o as usize);
                let b0 = _mm256_loadu_ps(b);
                let b1 = _mm256_loadu_ps(b.add(8));
                for (i, r) in acc.iter_mut().enumerate() {
                    let ai = _mm256_broadcast_ss(&*ap.add(i));
                    r[0] = _mm256_fmadd_ps(ai, b0, r[0]);
                    r[1] = _mm256_fmadd_ps(ai, b1, r[1]);
                }
                ap = ap.add(MR);
            }
            for (i, r) in acc.iter().enumerate() {
                let cp = c[i0 + i].as_mut_ptr().add(j0);
                _mm256_storeu_ps(cp, r[0]);
                _mm256_storeu_ps(cp.add(8), r[1]);
            }
        }
    }
}
