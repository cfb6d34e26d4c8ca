//! The 12 × 32 AVX-512F microkernel.

use super::{Tile, MR, NR};
use core::arch::x86_64::*;

/// The 12 × 32 AVX-512 microkernel: 24 accumulators (two 16-lane vectors per row), per k
/// two loads of B, twelve broadcasts of A and 24 fused multiply-adds (the same roundings
/// as the AVX2 kernel).
///
/// # Safety
/// The CPU must support AVX-512F; a.len() ≥ kc·MR, b.len() ≥ kc·NR.
#[target_feature(enable = "avx512f")]
pub unsafe fn microkernel(kc: usize, a: &[f32], b: &[f32], c: &mut Tile, init: Option<&[f32; MR]>) {
    let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr());
    // SAFETY (whole body): every pointer stays inside the slices by the length contract.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for (i, r) in acc.iter_mut().enumerate() {
            let cp = c[i].as_ptr();
            *r = match init {
                Some(v) => [_mm512_set1_ps(v[i]); 2],
                None => [_mm512_loadu_ps(cp), _mm512_loadu_ps(cp.add(16))],
            };
        }
        for _ in 0..kc {
            let b0 = _mm512_loadu_ps(bp);
            let b1 = _mm512_loadu_ps(bp.add(16));
            for (i, r) in acc.iter_mut().enumerate() {
                let ai = _mm512_set1_ps(*ap.add(i));
                r[0] = _mm512_fmadd_ps(ai, b0, r[0]);
                r[1] = _mm512_fmadd_ps(ai, b1, r[1]);
            }
            ap = ap.add(MR);
            bp = bp.add(NR);
        }
        for (ci, r) in c.iter_mut().zip(&acc) {
            _mm512_storeu_ps(ci.as_mut_ptr(), r[0]);
            _mm512_storeu_ps(ci.as_mut_ptr().add(16), r[1]);
        }
    }
}
