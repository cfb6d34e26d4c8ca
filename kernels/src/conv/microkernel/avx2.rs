//! The AVX2+FMA microkernel: 6 × 16 sub-tiles.

use super::{BRows, Tile, MR, NR};
use core::arch::x86_64::*;

/// Rows and columns of the AVX2 sub-tile (12 accumulators of 8 lanes).
const SR: usize = 6;
const SC: usize = 16;

/// The MR × NR tile as (MR/6)·(NR/16) sub-tiles of 6 × 16, each over the whole depth:
/// per k two loads of B, six broadcasts of A and twelve fused multiply-adds. Of a ragged
/// tile only the first `rows` rows are computed (sub-tiles of 6, then 2 or 4 rows: the
/// 32- and 64-channel layers end in a tile of 8 or 4 rows of 12), and only the column
/// blocks of 16 that hold the first `cols` columns.
///
/// # Safety
/// The CPU must support AVX2 and FMA; a.len() ≥ kc·MR, b.len() ≥ b_rows.reach(kc).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn microkernel<B: BRows>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    b_rows: B,
    c: &mut Tile,
    init: Option<&[f32; MR]>,
    (rows, cols): (usize, usize),
) {
    let rows = rows.min(MR);
    for i0 in (0..rows).step_by(SR) {
        for j0 in (0..cols.min(NR)).step_by(SC) {
            let (ap, bp) = (a.as_ptr().add(i0), b.as_ptr().add(j0));
            let s = (kc, ap, bp, b_rows);
            // SAFETY: same contract; the sub-tile offsets stay inside a row of A and B.
            unsafe {
                match rows - i0 {
                    1 | 2 => sub_tile::<2, B>(s, c, i0, j0, init),
                    3 | 4 => sub_tile::<4, B>(s, c, i0, j0, init),
                    _ => sub_tile::<SR, B>(s, c, i0, j0, init),
                }
            }
        }
    }
}

/// Rows i0 .. i0+R (R ≤ 6), columns j0 .. j0+16 of the tile; `ap`, `bp` point at that
/// sub-tile's first A value and at column j0 of B's first value (B row k at
/// `bp + b_rows` offset k).
#[target_feature(enable = "avx2,fma")]
unsafe fn sub_tile<const R: usize, B: BRows>(
    (kc, mut ap, bp, b_rows): (usize, *const f32, *const f32, B),
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
        for o in b_rows.offsets(kc) {
            let b = bp.add(o);
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
