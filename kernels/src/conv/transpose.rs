//! 8 × 8 and 4 × 8 register transposes (AVX2): the packers lay eight (or four) source rows
//! side by side with them. A pure copy: the same values as the portable loops.

use core::arch::x86_64::*;

/// For q = 0, 8, … < len8: the 8 × 8 block srcs[t][q .. q+8] (t = 0..8) transposed into
/// dst[(q + u)·stride + t] (u = 0..8): eight rows laid side by side, eight at a time.
///
/// # Safety
/// The CPU must support AVX2; each srcs[t] points at ≥ len8 floats and dst at
/// ≥ (len8 − 1)·stride + 8 (len8 a multiple of 8).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transpose_rows(
    srcs: [*const f32; 8],
    len8: usize,
    dst: *mut f32,
    stride: usize,
) {
    // SAFETY (whole body): the offsets stay inside the ranges of the contract.
    unsafe {
        for q in (0..len8).step_by(8) {
            let r = srcs.map(|p| _mm256_loadu_ps(p.add(q)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (u, v) in out.iter().enumerate() {
                _mm256_storeu_ps(dst.add((q + u) * stride), *v);
            }
        }
    }
}

/// For q = 0, 8, … < len8: the 4 × 8 block srcs[t][q .. q+8] (t = 0..4) transposed into
/// dst[(q + u)·stride + t] (u = 0..8).
///
/// # Safety
/// The CPU must support AVX2; each srcs[t] points at ≥ len8 floats and dst at
/// ≥ (len8 − 1)·stride + 4 (len8 a multiple of 8).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transpose4_rows(
    srcs: [*const f32; 4],
    len8: usize,
    dst: *mut f32,
    stride: usize,
) {
    // SAFETY (whole body): the offsets stay inside the ranges of the contract.
    unsafe {
        for q in (0..len8).step_by(8) {
            let r = srcs.map(|p| _mm256_loadu_ps(p.add(q)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            // Column u in the low half of out[u % 4] for u < 4, the high half for u ≥ 4.
            let out = [
                _mm256_shuffle_ps::<0x44>(t0, t2),
                _mm256_shuffle_ps::<0xEE>(t0, t2),
                _mm256_shuffle_ps::<0x44>(t1, t3),
                _mm256_shuffle_ps::<0xEE>(t1, t3),
            ];
            for (u, v) in out.iter().enumerate() {
                _mm_storeu_ps(dst.add((q + u) * stride), _mm256_castps256_ps128(*v));
                _mm_storeu_ps(
                    dst.add((q + u + 4) * stride),
                    _mm256_extractf128_ps::<1>(*v),
                );
            }
        }
    }
}
