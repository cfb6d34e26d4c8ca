//! The blocked GEMM driver shared by every convolution product (forward, both gradients,
//! the direct path's tiles and the Winograd positions): block sizes, the scratch it needs,
//! and where its result goes ([`Out`]). Operands are packed by the caller's closures
//! (`conv/pack.rs`); each MR × NR tile is one call of the microkernel (`conv/microkernel.rs`).

use super::microkernel::{microkernel, BRows, Packed, Panels, Tile};
use crate::Isa;

/// Rows of the microkernel (output channels).
pub const MR: usize = 12;
/// Columns of the microkernel (output pixels): two 16-lane vectors (AVX-512), four 8-lane
/// ones (AVX2, as 2 × 2 sub-tiles of 6 × 16).
pub const NR: usize = 32;
/// Depth of a packed panel (rows of K): the NR-wide B micro-panel (KC·NR·4 = 24 KiB) stays in
/// L1, and the 3×3 layers' K = 9·c_in (c_in a multiple of 128) splits into whole blocks.
pub(super) const KC: usize = 384;
/// Output pixels packed at once (multiple of NR): each im2col row is copied as one stretch of
/// NC input pixels, which the hardware prefetcher can follow; the B block (KC·NC·4 = 192 KiB)
/// stays in L2.
pub(super) const NC: usize = 128;
/// Most output channels packed at once (multiple of MR): the A block (≤ 387 KiB) stays in L2,
/// and up to 256 channels share one packed B block (each B block is packed once per A block).
pub(super) const MC_MAX: usize = 264;

/// Floats per cache line (64 bytes). Buffers whose rows a product reads or writes side by side
/// (one per channel) are laid out a line further apart than their size: at power-of-two
/// strides (2 or 4 KiB, as 32 × 32 maps and Winograd chunks give) those rows would share a
/// few of the 64 L1 sets and evict each other (measured: microkernel loads stalling on L2).
pub(super) const LINE: usize = 16;

pub(super) fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// Scratch floats [`gemm`] needs for an m × n product of depth `depth`.
pub(super) fn gemm_scratch_len(m: usize, depth: usize) -> usize {
    let kc = depth.clamp(1, KC);
    let mc = round_up(m.max(1), MR).min(MC_MAX);
    mc * kc + kc * NC + MR * NR
}

/// A block of one GEMM operand to pack: rows (of A) or columns (of B) `at .. at + len`, depth
/// `k0 .. k0 + kc`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Block {
    pub(super) at: usize,
    pub(super) len: usize,
    pub(super) k0: usize,
    pub(super) kc: usize,
}

impl Block {
    /// The same block `by` rows or columns further on (a caller's operand starting there).
    pub(super) fn shifted(self, by: usize) -> Block {
        Block {
            at: self.at + by,
            ..self
        }
    }
}

/// The A operand of a product: `m` rows, packed block by block by `pack(block, a)` as
/// [`super::pack::pack_a`] lays them out, and the sums' first terms `init` (one per row; `None`:
/// the values already in the output).
pub(super) struct Lhs<'i, P> {
    pub(super) m: usize,
    pub(super) init: Option<&'i [f32]>,
    pub(super) pack: P,
}

/// The blocked GEMM driver, shared by the forward and both backward products:
/// out[i, j] = init[i] + Σ_k A[i, k]·B[k, j] for an m × n `out` (row stride n), terms added in
/// k order onto `init[i]`, or onto the value already in `out` when `init` is `None`. A is `a`;
/// `pack_b(block, b)` packs depth k0 .. k0+kc, columns at .. at+len of B as
/// [`super::pack::pack_b`] does.
pub(super) fn gemm(
    isa: Isa,
    a: Lhs<impl FnMut(Block, &mut [f32])>,
    n: usize,
    depth: usize,
    mut pack_b: impl FnMut(Block, &mut [f32]),
    mut out: Out,
    scratch: &mut [f32],
) {
    let Lhs {
        m,
        init,
        pack: mut pack_a,
    } = a;
    if m == 0 || n == 0 {
        return;
    }
    let kc_cap = depth.min(KC);
    // Split the row range into equal blocks of at most MC_MAX rows (multiples of MR).
    let blocks = m.div_ceil(MC_MAX);
    let mc_step = round_up(m.div_ceil(blocks), MR);
    let (a_buf, rest) = scratch.split_at_mut(mc_step * kc_cap);
    let (b_buf, rest) = rest.split_at_mut(kc_cap * NC);
    let tmp = &mut rest[..MR * NR];

    for k0 in (0..depth).step_by(KC) {
        let kc = KC.min(depth - k0);
        for m0 in (0..m).step_by(mc_step) {
            let mc = mc_step.min(m - m0);
            let a_blk = &mut a_buf[..round_up(mc, MR) * kc];
            let (at, len) = (m0, mc);
            pack_a(Block { at, len, k0, kc }, a_blk);
            for n0 in (0..n).step_by(NC) {
                let nc = NC.min(n - n0);
                let b_blk = &mut b_buf[..round_up(nc, NR) * kc];
                let (at, len) = (n0, nc);
                pack_b(Block { at, len, k0, kc }, b_blk);
                for (nt, b_pan) in b_blk.chunks_exact(kc * NR).enumerate() {
                    let nj = n0 + nt * NR;
                    let nr = NR.min(n - nj);
                    for (t, a_pan) in a_blk.chunks_exact(kc * MR).enumerate() {
                        let i0 = m0 + t * MR;
                        let mr = MR.min(m - i0);
                        let start = first_terms(init, k0, i0, mr);
                        // The C tile's rows are far apart (cache-unfriendly); fetch the next
                        // tile's while this one computes.
                        out.prefetch(n, i0 + MR, nj);
                        let panels = Panels {
                            kc,
                            a: a_pan,
                            b: b_pan,
                            b_rows: Packed,
                        };
                        let at = (n, i0, mr, nj, nr);
                        tile_product(isa, panels, &mut out, at, tmp, start.as_ref());
                    }
                }
            }
        }
    }
}

/// The running sums a tile starts from: `init` rows i0 .. i0+mr in the first K block (zero
/// rows past mr), else `None` (the values in the output).
#[inline(always)]
pub(super) fn first_terms(
    init: Option<&[f32]>,
    k0: usize,
    i0: usize,
    mr: usize,
) -> Option<[f32; MR]> {
    init.filter(|_| k0 == 0).map(|v| {
        let mut r = [0f32; MR];
        r[..mr].copy_from_slice(&v[i0..i0 + mr]);
        r
    })
}

/// The product of one A micro-panel and one B micro-panel (`p`) into the tile of `out` (row
/// stride n) at rows i0 .. i0+mr, columns nj .. nj+nr: in place for a full tile, else on a copy
/// of the valid part in `tmp` (MR·NR floats).
#[inline(always)]
pub(super) fn tile_product<R: BRows>(
    isa: Isa,
    p: Panels<R>,
    out: &mut Out,
    (n, i0, mr, nj, nr): (usize, usize, usize, usize, usize),
    tmp: &mut [f32],
    start: Option<&[f32; MR]>,
) {
    if mr == MR && nr == NR {
        let mut c = out.tile(n, i0, nj);
        microkernel(isa, p, &mut c, start, (MR, NR));
    } else if let Some(mut c) = (nr == NR)
        .then(|| out.short_tile(n, i0, nj, mr, tmp))
        .flatten()
    {
        microkernel(isa, p, &mut c, start, (mr, NR));
    } else {
        for (i, t) in tmp.chunks_exact_mut(NR).take(mr).enumerate() {
            t[..nr].copy_from_slice(&out.row(n, i0 + i)[nj..nj + nr]);
        }
        let mut c = tile_of(tmp, NR, 0);
        microkernel(isa, p, &mut c, start, (mr, nr));
        for (i, t) in tmp.chunks_exact(NR).take(mr).enumerate() {
            out.row(n, i0 + i)[nj..nj + nr].copy_from_slice(&t[..nr]);
        }
    }
}

/// Where [`gemm`] writes its m × n result: one dense block (row stride n), one slice of
/// n floats per row (the rows of a pixel range of a larger map, see
/// [`Conv2d::forward_pixels`]), or rows `ld` floats apart (interleaved with other products:
/// the Winograd positions of `conv/winograd/`).
pub(super) enum Out<'o, 'r> {
    Dense(&'o mut [f32]),
    Rows(&'o mut [&'r mut [f32]]),
    Strided { c: &'o mut [f32], ld: usize },
}

/// The MR rows of NR floats of a tile at (0, j) of `c` (row stride `ld`).
#[inline(always)]
fn tile_of(c: &mut [f32], ld: usize, j: usize) -> [&mut [f32; NR]; MR] {
    let mut rows = c[j..].chunks_mut(ld);
    core::array::from_fn(|_| {
        let row = rows.next().unwrap_or_default();
        <&mut [f32; NR]>::try_from(&mut row[..NR]).unwrap_or_else(|_| unreachable!())
    })
}

/// The MR × NR tile at the start of `c` (row stride `ld`) with only its first `mr` rows in `c`
/// and the others in `spare` (MR·NR floats; the microkernel computes the first mr rows,
/// rounded up to even ones, so the spare rows only take what it writes past mr).
#[inline(always)]
pub(super) fn tile_with_spare<'s>(
    c: &'s mut [f32],
    ld: usize,
    mr: usize,
    spare: &'s mut [f32],
) -> Tile<'s> {
    let mut rows = c.chunks_mut(ld).take(mr);
    let mut spares = spare.chunks_exact_mut(NR);
    core::array::from_fn(|_| {
        let row = match rows.next() {
            Some(r) => &mut r[..NR],
            None => spares.next().unwrap_or_default(),
        };
        <&mut [f32; NR]>::try_from(row).unwrap_or_else(|_| unreachable!())
    })
}

impl Out<'_, '_> {
    /// The full MR × NR tile at row i0, column j (the driver only asks for tiles inside).
    #[inline(always)]
    fn tile(&mut self, n: usize, i0: usize, j: usize) -> [&mut [f32; NR]; MR] {
        match self {
            Out::Dense(c) => tile_of(&mut c[i0 * n..], n, j),
            Out::Strided { c, ld } => tile_of(&mut c[i0 * *ld..], *ld, j),
            Out::Rows(rows) => {
                let mut it = rows[i0..i0 + MR].iter_mut();
                core::array::from_fn(|_| {
                    let row = it.next().map(|r| &mut r[j..j + NR]).unwrap_or_default();
                    <&mut [f32; NR]>::try_from(row).unwrap_or_else(|_| unreachable!())
                })
            }
        }
    }

    /// The tile at row i0, column j of a block whose last row panel has only `mr` < MR rows
    /// (Dense and Strided), rows past mr in `spare` ([`tile_with_spare`]), so the microkernel
    /// works in place. `None` for Rows.
    #[inline(always)]
    fn short_tile<'s>(
        &'s mut self,
        n: usize,
        i0: usize,
        j: usize,
        mr: usize,
        spare: &'s mut [f32],
    ) -> Option<Tile<'s>> {
        let (c, ld) = match self {
            Out::Dense(c) => (&mut c[i0 * n + j..], n),
            Out::Strided { c, ld } => (&mut c[i0 * *ld + j..], *ld),
            Out::Rows(_) => return None,
        };
        Some(tile_with_spare(c, ld, mr, spare))
    }

    /// Row i (n floats).
    #[inline(always)]
    pub(super) fn row(&mut self, n: usize, i: usize) -> &mut [f32] {
        match self {
            Out::Dense(c) => &mut c[i * n..(i + 1) * n],
            Out::Strided { c, ld } => &mut c[i * *ld..i * *ld + n],
            Out::Rows(rows) => rows[i],
        }
    }

    /// Hints the cache to fetch the MR × NR tile at row i0, column j, where inside.
    #[inline(always)]
    fn prefetch(&self, n: usize, i0: usize, j: usize) {
        #[cfg(target_arch = "x86_64")]
        for i in i0..i0 + MR {
            let row = match self {
                Out::Dense(c) => c.get(i * n + j..i * n + j + NR),
                Out::Strided { c, ld } => c.get(i * ld + j..i * ld + j + NR),
                Out::Rows(rows) => rows.get(i).and_then(|r| r.get(j..j + NR)),
            };
            if let Some(row) = row {
                prefetch(row.as_ptr());
                prefetch(row[NR - 1..].as_ptr());
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (n, i0, j);
    }
}

/// A cache hint (never faults, changes no value).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch(p: *const f32) {
    use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: prefetch is a hint; it does not access memory architecturally.
    #[allow(unused_unsafe)]
    unsafe {
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
    };
}
