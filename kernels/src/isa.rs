//! Which instruction set the SIMD kernels use: [`Isa`], the host's one switch
//! [`enable_avx2_fma`] and the CPUID checks behind it. The convolution's microkernels take an
//! `Isa` per call; the GroupNorm and attention kernels follow [`Isa::detected`].

/// Which instruction set the convolution's microkernel uses. Construct with
/// [`Isa::PORTABLE`], [`Isa::detected`] or [`Isa::available`]; the AVX2 path can only be
/// selected when the build targets AVX2+FMA or after the host has called [`enable_avx2_fma`],
/// and the AVX-512 path only after that call found AVX-512F by CPUID (and the OS saving its
/// registers), so safe code can never run them on a CPU without those instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(IsaKind);

/// The paths (named as [`Isa`]'s `Debug` shows them: run records keep that text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IsaKind {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

#[cfg(target_arch = "x86_64")]
static AVX2_FMA: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Lets [`Isa::detected`] (and so [`crate::Conv2d::forward`]) use the AVX2+FMA microkernel, or the
/// AVX-512F one where CPUID and XCR0 show the CPU and the OS support it (checked here). The
/// host calls this once, before starting worker threads, after
/// `is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")`.
///
/// # Safety
/// The CPU that runs the kernels must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
pub unsafe fn enable_avx2_fma() {
    AVX2_FMA.store(true, core::sync::atomic::Ordering::Relaxed);
    AVX512.store(avx512_supported(), core::sync::atomic::Ordering::Relaxed);
}

/// Set by [`enable_avx2_fma`] when the CPU and the OS also support AVX-512F.
#[cfg(target_arch = "x86_64")]
static AVX512: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

impl Isa {
    /// Plain Rust (separate multiply and add): the reference path, on every target.
    pub const PORTABLE: Isa = Isa(IsaKind::Portable);

    /// The fastest path known to be available: AVX-512F if [`enable_avx2_fma`] found it, else
    /// AVX2+FMA if compiled with those target features or enabled by [`enable_avx2_fma`], else
    /// portable.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if AVX512.load(core::sync::atomic::Ordering::Relaxed) {
                return Isa(IsaKind::Avx512);
            }
            if cfg!(all(target_feature = "avx2", target_feature = "fma"))
                || AVX2_FMA.load(core::sync::atomic::Ordering::Relaxed)
            {
                return Isa(IsaKind::Avx2Fma);
            }
        }
        Isa::PORTABLE
    }

    /// Every path usable here, slowest first: portable, then AVX2+FMA and AVX-512F when
    /// enabled (for tests and benchmarks that compare them).
    pub fn available() -> impl Iterator<Item = Isa> {
        let mut all = [None; 3];
        all[0] = Some(Isa::PORTABLE);
        #[cfg(target_arch = "x86_64")]
        {
            use core::sync::atomic::Ordering::Relaxed;
            if cfg!(all(target_feature = "avx2", target_feature = "fma")) || AVX2_FMA.load(Relaxed)
            {
                all[1] = Some(Isa(IsaKind::Avx2Fma));
            }
            if AVX512.load(Relaxed) {
                all[2] = Some(Isa(IsaKind::Avx512));
            }
        }
        all.into_iter().flatten()
    }

    /// Whether this is a SIMD path (whose results differ from the portable path by rounding).
    pub fn is_simd(self) -> bool {
        self.0 != IsaKind::Portable
    }

    /// Which path (for the microkernels' dispatch).
    pub(crate) fn kind(self) -> IsaKind {
        self.0
    }
}

/// Whether the CPU has AVX-512F and the OS saves its registers (CPUID leaf 7 EBX bit 16;
/// OSXSAVE, then XCR0 bits 1, 2, 5, 6, 7: SSE, AVX, opmask, ZMM0–15 upper, ZMM16–31).
#[cfg(target_arch = "x86_64")]
fn avx512_supported() -> bool {
    use core::arch::x86_64::{__cpuid, __cpuid_count};
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU.
    let (l1, l7) = unsafe { (__cpuid(1), __cpuid_count(7, 0)) };
    let osxsave = l1.ecx & (1 << 27) != 0;
    // SAFETY: XGETBV is available when OSXSAVE is set (checked first).
    osxsave && l7.ebx & (1 << 16) != 0 && unsafe { xcr0() } & 0xE6 == 0xE6
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    core::arch::x86_64::_xgetbv(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Every path this CPU has: portable, AVX2+FMA, AVX-512F (tests enable the SIMD ones; the
    /// flags only ever turn on).
    pub(crate) fn isas() -> Vec<Isa> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: just detected.
            unsafe { crate::enable_avx2_fma() };
        }
        Isa::available().collect()
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_detection_agrees_with_std() {
        assert_eq!(avx512_supported(), is_x86_feature_detected!("avx512f"));
        let n = isas().len();
        let want = if is_x86_feature_detected!("avx512f") {
            3
        } else {
            2
        };
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            assert_eq!(n, want);
        }
    }
}
