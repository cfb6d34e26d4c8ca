//! What the Winograd transforms compute with: [`Lanes`], one f32 or eight (AVX2), and
//! [`by_isa`], which picks the eight-lane instance where the ISA allows.

use core::ops::{Add, Mul, Neg, Sub};

/// What the transforms compute with: one f32 (the portable code, and every row's tail) or
/// eight of them ([`V8`], AVX2). The transforms add, subtract, flip signs and multiply by
/// constants, each operation rounded on its own (no fused multiply-adds), so both give the
/// same bits. Loads and stores take raw pointers: the transforms check their buffers' lengths
/// once per row, not once per value (the checks cost as much as the sums).
pub(super) trait Lanes:
    Copy + Add<Output = Self> + Sub<Output = Self> + Neg<Output = Self> + Mul<Output = Self>
{
    /// Floats per value.
    const N: usize;
    /// The same with half the lanes (for runs too short for N; f32 for f32).
    type Half: Lanes;
    /// p[0 .. N].
    ///
    /// # Safety
    /// p must be valid for reading N floats.
    unsafe fn load(p: *const f32) -> Self;
    /// p[0 .. N] = self.
    ///
    /// # Safety
    /// p must be valid for writing N floats.
    unsafe fn store(self, p: *mut f32);
    /// N copies of x.
    fn splat(x: f32) -> Self;
    /// The even and the odd floats of a[0 .. N], b[0 .. N] laid end to end.
    fn split(a: Self, b: Self) -> (Self, Self);
    /// a[0], b[0], a[1], b[1], …: floats 0 .. N in the first value, N .. 2N in the second.
    fn interleave(a: Self, b: Self) -> (Self, Self);
    /// The even and the odd floats of p[0 .. 2N].
    ///
    /// # Safety
    /// p must be valid for reading 2N floats.
    #[inline(always)]
    unsafe fn load_split(p: *const f32) -> (Self, Self) {
        // SAFETY: the caller's contract.
        unsafe { Self::split(Self::load(p), Self::load(p.add(Self::N))) }
    }
}

impl Lanes for f32 {
    const N: usize = 1;
    type Half = f32;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> f32 {
        // SAFETY: the caller's contract.
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { *p = self }
    }
    #[inline(always)]
    fn splat(x: f32) -> f32 {
        x
    }
    #[inline(always)]
    fn split(a: f32, b: f32) -> (f32, f32) {
        (a, b)
    }
    #[inline(always)]
    fn interleave(a: f32, b: f32) -> (f32, f32) {
        (a, b)
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use v8::V8;

/// Eight f32 in an AVX register. Only the functions that [`by_isa`] compiles for AVX2 and
/// enters when [`crate::Isa::is_simd`] vouched for it create and use them.
#[cfg(target_arch = "x86_64")]
mod v8 {
    use super::Lanes;
    use core::arch::x86_64::*;
    use core::ops::{Add, Mul, Neg, Sub};

    #[derive(Clone, Copy)]
    pub(crate) struct V8(__m256);

    /// Four f32 in an SSE register (runs of 4 tiles: the tile rows of 8 × 8 maps).
    #[derive(Clone, Copy)]
    pub(crate) struct V4(__m128);

    // SAFETY (the intrinsics below): a V8 or V4 exists only on a CPU with AVX2 (see above);
    // the pointers follow the trait's contracts.

    /// +, −, × and sign flip (xor with −0.0, as f32's negation) of a register type.
    macro_rules! lane_ops {
        ($t:ident, $add:ident, $sub:ident, $mul:ident, $xor:ident, $set1:ident) => {
            impl Add for $t {
                type Output = $t;
                #[inline(always)]
                fn add(self, o: $t) -> $t {
                    $t(unsafe { $add(self.0, o.0) })
                }
            }

            impl Sub for $t {
                type Output = $t;
                #[inline(always)]
                fn sub(self, o: $t) -> $t {
                    $t(unsafe { $sub(self.0, o.0) })
                }
            }

            impl Mul for $t {
                type Output = $t;
                #[inline(always)]
                fn mul(self, o: $t) -> $t {
                    $t(unsafe { $mul(self.0, o.0) })
                }
            }

            impl Neg for $t {
                type Output = $t;
                #[inline(always)]
                fn neg(self) -> $t {
                    $t(unsafe { $xor(self.0, $set1(-0.0)) })
                }
            }
        };
    }

    lane_ops!(
        V8,
        _mm256_add_ps,
        _mm256_sub_ps,
        _mm256_mul_ps,
        _mm256_xor_ps,
        _mm256_set1_ps
    );
    lane_ops!(
        V4,
        _mm_add_ps,
        _mm_sub_ps,
        _mm_mul_ps,
        _mm_xor_ps,
        _mm_set1_ps
    );

    impl Lanes for V8 {
        const N: usize = 8;
        type Half = V4;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> V8 {
            V8(unsafe { _mm256_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm256_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        fn splat(x: f32) -> V8 {
            V8(unsafe { _mm256_set1_ps(x) })
        }
        #[inline(always)]
        fn split(a: V8, b: V8) -> (V8, V8) {
            unsafe {
                // [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit quarters put in order 0, 2, 1, 3.
                let even = _mm256_shuffle_ps::<0b10_00_10_00>(a.0, b.0);
                let odd = _mm256_shuffle_ps::<0b11_01_11_01>(a.0, b.0);
                let order = |v: __m256| {
                    _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(v)))
                };
                (V8(order(even)), V8(order(odd)))
            }
        }
        #[inline(always)]
        fn interleave(a: V8, b: V8) -> (V8, V8) {
            unsafe {
                let lo = _mm256_unpacklo_ps(a.0, b.0); // a0 b0 a1 b1 | a4 b4 a5 b5
                let hi = _mm256_unpackhi_ps(a.0, b.0); // a2 b2 a3 b3 | a6 b6 a7 b7
                (
                    V8(_mm256_permute2f128_ps::<0x20>(lo, hi)),
                    V8(_mm256_permute2f128_ps::<0x31>(lo, hi)),
                )
            }
        }
    }

    impl Lanes for V4 {
        const N: usize = 4;
        type Half = f32;
        #[inline(always)]
        unsafe fn load(p: *const f32) -> V4 {
            V4(unsafe { _mm_loadu_ps(p) })
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            unsafe { _mm_storeu_ps(p, self.0) }
        }
        #[inline(always)]
        fn splat(x: f32) -> V4 {
            V4(unsafe { _mm_set1_ps(x) })
        }
        #[inline(always)]
        fn split(a: V4, b: V4) -> (V4, V4) {
            unsafe {
                (
                    V4(_mm_shuffle_ps::<0b10_00_10_00>(a.0, b.0)),
                    V4(_mm_shuffle_ps::<0b11_01_11_01>(a.0, b.0)),
                )
            }
        }
        #[inline(always)]
        fn interleave(a: V4, b: V4) -> (V4, V4) {
            unsafe { (V4(_mm_unpacklo_ps(a.0, b.0)), V4(_mm_unpackhi_ps(a.0, b.0))) }
        }
    }
}

/// Runs `$f::<V8, N>(args)` in a function compiled for AVX2 when `$isa` vouches for AVX2,
/// else `$f::<f32, N>(args)` (N: the form's n, a const parameter of the caller).
macro_rules! by_isa {
    ($isa:expr, $f:ident::<N>($($a:ident: $t:ty),*)) => {{
        #[cfg(target_arch = "x86_64")]
        if $isa.is_simd() {
            #[target_feature(enable = "avx2")]
            unsafe fn simd<const N: usize>($($a: $t),*) {
                $f::<super::lanes::V8, N>($($a),*)
            }
            // SAFETY: Isa::is_simd guarantees AVX2.
            unsafe { simd::<N>($($a),*) };
            return;
        }
        let _ = $isa;
        $f::<f32, N>($($a),*)
    }};
}
pub(super) use by_isa;
