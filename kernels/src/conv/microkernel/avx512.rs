//! The AVX-512F microkernel: sub-tiles of up to 12 rows by 32 or 16 columns.

use super::{BRows, Tile, MR, NR};
use core::arch::x86_64::*;

/// Lanes of one AVX-512 vector.
const LANES: usize = 16;

/// The MR × NR tile as one sub-tile over the whole depth: per k one or two loads of B, a
/// broadcast of A per row and a fused multiply-add per row and vector (the same roundings as
/// the AVX2 kernel). Only the first `rows` rows are computed, rounded up to 4, 8 or 12 (the
/// 32- and 64-channel layers end in a tile of 8 or 4 rows of 12), and only the first 16
/// columns when `cols` ≤ 16 (the half tiles of Winograd F(4 × 4) chunks); a whole tile holds
/// 24 accumulators.
///
/// # Safety
/// The CPU must support AVX-512F; a.len() ≥ kc·MR, b.len() ≥ b_rows.reach(kc).
#[target_feature(enable = "avx512f")]
pub unsafe fn microkernel<B: BRows>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    b_rows: B,
    c: &mut Tile,
    init: Option<&[f32; MR]>,
    (rows, cols): (usize, usize),
) {
    let s = (kc, a.as_ptr(), b.as_ptr(), b_rows);
    // SAFETY: same contract; every sub-tile stays inside the MR × NR tile.
    unsafe {
        match (rows.min(MR), cols.min(NR)) {
            (0, _) | (_, 0) => {}
            (1..=4, 1..=LANES) => sub_tile::<4, 1, B>(s, c, init),
            (1..=4, _) => sub_tile::<4, 2, B>(s, c, init),
            (5..=8, 1..=LANES) => sub_tile::<8, 1, B>(s, c, init),
            (5..=8, _) => sub_tile::<8, 2, B>(s, c, init),
            (_, 1..=LANES) => sub_tile::<MR, 1, B>(s, c, init),
            _ => sub_tile::<MR, 2, B>(s, c, init),
        }
    }
}

/// Rows 0 .. R, columns 0 .. 16·V of the tile; `ap`, `bp` point at the first A and B values
/// (B row k at `bp + b_rows` offset k).
#[target_feature(enable = "avx512f")]
unsafe fn sub_tile<const R: usize, const V: usize, B: BRows>(
    (kc, mut ap, bp, b_rows): (usize, *const f32, *const f32, B),
    c: &mut Tile,
    init: Option<&[f32; MR]>,
) {
    // SAFETY (whole body): every pointer stays inside the slices by the length contract.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for (i, r) in acc.iter_mut().enumerate() {
            let cp = c[i].as_ptr();
            for (v, x) in r.iter_mut().enumerate() {
                *x = match init {
                    Some(s) => _mm512_set1_ps(s[i]),
                    None => _mm512_loadu_ps(cp.add(v * LANES)),
                };
            }
        }
        for o in b_rows.offsets(kc) {
            let b = bp.add(o);
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(b.add(v * LANES));
            }
            for (i, r) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(i));
                for (x, &bj) in r.iter_mut().zip(&bv) {
                    *x = _mm512_fmadd_ps(ai, bj, *x);
                }
            }
            ap = ap.add(MR);
        }
        for (i, r) in acc.iter().enumerate() {
            let cp = c[i].as_mut_ptr();
            for (v, &x) in r.iter().enumerate() {
                _mm512_storeu_ps(cp.add(v * LANES), x);
            }
        }
    }
}
