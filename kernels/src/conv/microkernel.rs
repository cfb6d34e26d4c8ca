//! The register-blocked MR × NR microkernel: portable (a product and a sum per term), AVX2+FMA
//! and AVX-512F (one fused multiply-add per term: the two SIMD kernels agree bit for bit).

use super::gemm::{MR, NR};
use crate::isa::IsaKind;
use crate::Isa;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// The MR rows of one C tile.
pub(super) type Tile<'c> = [&'c mut [f32; NR]; MR];

/// Where row k of a B micro-panel starts, in floats from its first value: a packed panel's
/// rows are dense ([`Packed`]); the direct path's are rows of a padded map at increasing
/// offsets (`&[u32]`, see `conv/direct.rs`).
pub(super) trait BRows: Copy {
    /// The offsets of rows 0 .. kc, in order.
    fn offsets(self, kc: usize) -> impl Iterator<Item = usize>;
    /// Floats from the first value read to past the last one (rows 0 .. kc, NR each).
    fn reach(self, kc: usize) -> usize;
}

/// Row k at k·NR: a packed panel.
#[derive(Clone, Copy)]
pub(super) struct Packed;

impl BRows for Packed {
    #[inline(always)]
    fn offsets(self, kc: usize) -> impl Iterator<Item = usize> {
        (0..kc).map(|k| k * NR)
    }

    fn reach(self, kc: usize) -> usize {
        kc * NR
    }
}

/// Row k at offs[k] (increasing).
impl BRows for &[u32] {
    #[inline(always)]
    fn offsets(self, kc: usize) -> impl Iterator<Item = usize> {
        self[..kc].iter().map(|&o| o as usize)
    }

    fn reach(self, kc: usize) -> usize {
        debug_assert!(self[..kc].windows(2).all(|o| o[0] < o[1]));
        self[..kc].last().map_or(0, |&o| o as usize + NR)
    }
}

/// The operands of one microkernel call: `kc` rows of an A micro-panel (MR values each) and of
/// a B micro-panel (NR values each, where `b_rows` says).
#[derive(Clone, Copy)]
pub(super) struct Panels<'p, R> {
    pub(super) kc: usize,
    pub(super) a: &'p [f32],
    pub(super) b: &'p [f32],
    pub(super) b_rows: R,
}

/// c[i][j] = s_i + Σ_kk a[kk·MR + i]·b[row(kk) + j] for an MR × NR tile, terms added in kk
/// order onto s_i = init[i], or onto the value in c when `init` is `None`. Only the first
/// `rows` rows and `cols` columns are needed (the others may be left anything): the SIMD
/// kernels then skip whole sub-tiles (a column block of 16 tiles, as 8 × 8 maps give in
/// Winograd form, computes one half of the tile).
#[inline]
pub(super) fn microkernel<R: BRows>(
    isa: Isa,
    p: Panels<R>,
    c: &mut Tile,
    init: Option<&[f32; MR]>,
    (rows, cols): (usize, usize),
) {
    let Panels { kc, a, b, b_rows } = p;
    assert!(a.len() >= kc * MR && b.len() >= b_rows.reach(kc));
    match isa.kind() {
        IsaKind::Portable => microkernel_portable(kc, a, b, b_rows, c, init),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an Avx512 Isa exists only after `enable_avx2_fma` found AVX-512F usable; the
        // slice lengths were checked above.
        IsaKind::Avx512 => unsafe { avx512::microkernel(kc, a, b, b_rows, c, init, (rows, cols)) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an Avx2Fma Isa exists only if the build targets AVX2+FMA or the host vouched
        // for the CPU through `enable_avx2_fma`; the slice lengths were checked above.
        IsaKind::Avx2Fma => unsafe { avx2::microkernel(kc, a, b, b_rows, c, init, (rows, cols)) },
    }
}

/// The reference microkernel: separate product and sum, as the plain formula.
fn microkernel_portable<R: BRows>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    b_rows: R,
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
    for (ak, o) in a.chunks_exact(MR).zip(b_rows.offsets(kc)) {
        let bk = &b[o..o + NR];
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
