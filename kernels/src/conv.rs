//! `nn.Conv2d` (and the k = 1 `Conv1d` of attention) as an implicit GEMM:
//! out[M = c_out, N = oh·ow] = W[M, K = c_in·k·k] · im2col(x)[K, N] + bias.
//!
//! Nothing of im2col is materialised beyond one packed panel: for each block of KC rows of K,
//! a block of at most MC_MAX output channels of W is packed (converted from f16 if needed), then
//! for each NR-wide column tile the im2col rows are packed straight from the input, and an
//! MR × NR register-blocked microkernel accumulates into `out`.
//!
//! Reduction order (what makes every split bit-identical): every output element is
//! bias + w_0·x_0 + w_1·x_1 + … in the order k = (ci·k + ky)·k + kx, one rounding per step
//! (portable: a product and a sum; AVX2: one fused multiply-add). Blocking over K, M or N only
//! decides where the running sum lives (register or `out`), never the order of the terms, so the
//! result is independent of the channel range, the tile an element lands in, and the block sizes.

use crate::{check_len, check_min_len, check_range, KernelError, Weight, WeightsRef};

/// Rows of the microkernel (output channels).
pub const MR: usize = 6;
/// Columns of the microkernel (output pixels): two 8-lane vectors.
pub const NR: usize = 16;
/// Depth of a packed panel (rows of K): the NR-wide B micro-panel (KC·NR·4 = 16 KiB) stays in L1.
const KC: usize = 256;
/// Output pixels packed at once (multiple of NR): each im2col row is copied as one stretch of
/// NC input pixels, which the hardware prefetcher can follow; the B block (KC·NC·4 = 128 KiB)
/// stays in L2.
const NC: usize = 128;
/// Most output channels packed at once (multiple of MR): the A block (≤ 192 KiB) stays in L2.
const MC_MAX: usize = 192;

/// Which instruction set the convolution's microkernel uses. Construct with
/// [`Isa::PORTABLE`] or [`Isa::detected`]; the AVX2 path can only be selected when the build
/// targets AVX2+FMA or after the host has called [`enable_avx2_fma`], so safe code can never
/// run it on a CPU without those instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(IsaKind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IsaKind {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

#[cfg(target_arch = "x86_64")]
static AVX2_FMA: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Lets [`Isa::detected`] (and so [`Conv2d::forward`]) use the AVX2+FMA microkernel. The host
/// calls this once, before starting worker threads, after
/// `is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")`.
///
/// # Safety
/// The CPU that runs the kernels must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
pub unsafe fn enable_avx2_fma() {
    AVX2_FMA.store(true, core::sync::atomic::Ordering::Relaxed);
}

impl Isa {
    /// Plain Rust (separate multiply and add): the reference path, on every target.
    pub const PORTABLE: Isa = Isa(IsaKind::Portable);

    /// The fastest path known to be available: AVX2+FMA if compiled with those target features
    /// or enabled by [`enable_avx2_fma`], else portable.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if cfg!(all(target_feature = "avx2", target_feature = "fma"))
                || AVX2_FMA.load(core::sync::atomic::Ordering::Relaxed)
            {
                return Isa(IsaKind::Avx2Fma);
            }
        }
        Isa::PORTABLE
    }

    /// Whether this is a SIMD path (whose results differ from the portable path by rounding).
    pub fn is_simd(self) -> bool {
        self.0 != IsaKind::Portable
    }
}

/// A 2-D convolution layer's shape (PyTorch `nn.Conv2d(c_in, c_out, kernel, stride, pad)`,
/// square kernel, zero padding, no dilation or groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel size (1 or 3 in the ADM U-Net; any size ≥ 1 works).
    pub kernel: usize,
    /// Stride (1 or 2; any ≥ 1 works).
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl Conv2d {
    /// Output size for an h × w input: ⌊(h + 2·pad − kernel)/stride⌋ + 1 (0 if the kernel does
    /// not fit).
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let o = |n: usize| {
            if self.stride == 0 || n + 2 * self.pad < self.kernel {
                0
            } else {
                (n + 2 * self.pad - self.kernel) / self.stride + 1
            }
        };
        (o(h), o(w))
    }

    /// Rows of K = c_in·k·k.
    fn k_total(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }

    /// Scratch floats one call (one thread) needs: packed A block, packed B block and one
    /// C tile for ragged edges. Independent of the input size.
    pub fn scratch_len(&self, _h: usize, _w: usize) -> usize {
        let kc = self.k_total().clamp(1, KC);
        let mc = round_up(self.c_out.max(1), MR).min(MC_MAX);
        mc * kc + kc * NC + MR * NR
    }

    /// out = conv(inp) + bias for the output channels `co` (`out.len() == co.len()·oh·ow`),
    /// with PyTorch semantics (cross-correlation, weight [c_out, c_in, k, k], bias `[c_out]`), using
    /// the microkernel chosen by [`Isa::detected`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        inp: &[f32],
        h: usize,
        w: usize,
        weight: WeightsRef,
        bias: &[f32],
        co: core::ops::Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        self.forward_with(Isa::detected(), inp, h, w, weight, bias, co, out, scratch)
    }

    /// [`Conv2d::forward`] with an explicit microkernel (all threads of one layer must use the
    /// same `isa` for split-invariant results).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with(
        &self,
        isa: Isa,
        inp: &[f32],
        h: usize,
        w: usize,
        weight: WeightsRef,
        bias: &[f32],
        co: core::ops::Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        if self.kernel == 0 || self.stride == 0 || self.c_in == 0 {
            return Err(KernelError::Shape(
                "conv2d: kernel, stride and c_in must be ≥ 1",
            ));
        }
        let (oh, ow) = self.out_size(h, w);
        if oh == 0 || ow == 0 {
            return Err(KernelError::Shape(
                "conv2d: kernel larger than the padded input",
            ));
        }
        check_len("conv2d input", self.c_in * h * w, inp.len())?;
        check_len("conv2d weight", self.c_out * self.k_total(), weight.len())?;
        check_len("conv2d bias", self.c_out, bias.len())?;
        check_range(
            "conv2d: output channel range outside 0..c_out",
            &co,
            self.c_out,
        )?;
        check_len("conv2d output", co.len() * oh * ow, out.len())?;
        check_min_len("conv2d scratch", self.scratch_len(h, w), scratch.len())?;
        let geo = Geometry {
            c_in: self.c_in,
            kernel: self.kernel,
            stride: self.stride,
            pad: self.pad,
            h,
            w,
            ow,
            n: oh * ow,
        };
        match weight {
            WeightsRef::F32(wt) => gemm(isa, &geo, inp, wt, bias, co, out, scratch),
            WeightsRef::F16(wt) => gemm(isa, &geo, inp, wt, bias, co, out, scratch),
        }
        Ok(())
    }
}

fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// Everything the im2col packing needs to know about the input and output maps.
struct Geometry {
    c_in: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    h: usize,
    w: usize,
    ow: usize,
    /// Output pixels oh·ow (the GEMM's N).
    n: usize,
}

impl Geometry {
    fn k_total(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }
}

/// The blocked GEMM driver; shapes were checked by the caller.
#[allow(clippy::too_many_arguments)]
fn gemm<W: Weight>(
    isa: Isa,
    geo: &Geometry,
    inp: &[f32],
    weight: &[W],
    bias: &[f32],
    co: core::ops::Range<usize>,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let (n, k_total, m) = (geo.n, geo.k_total(), co.len());
    // The running sums start at the bias (first term of every element's chain).
    for (row, &b) in out.chunks_exact_mut(n).zip(&bias[co.clone()]) {
        row.fill(b);
    }
    if m == 0 {
        return;
    }
    let kc_cap = k_total.min(KC);
    // Split the channel range into equal blocks of at most MC_MAX rows (multiples of MR).
    let blocks = m.div_ceil(MC_MAX);
    let mc_step = round_up(m.div_ceil(blocks), MR);
    let (a_buf, rest) = scratch.split_at_mut(mc_step * kc_cap);
    let (b_buf, rest) = rest.split_at_mut(kc_cap * NC);
    let tmp = &mut rest[..MR * NR];

    for k0 in (0..k_total).step_by(KC) {
        let kc = KC.min(k_total - k0);
        for m0 in (0..m).step_by(mc_step) {
            let mc = mc_step.min(m - m0);
            let a_blk = &mut a_buf[..round_up(mc, MR) * kc];
            pack_a(weight, k_total, co.start + m0, mc, k0, kc, a_blk);
            for n0 in (0..n).step_by(NC) {
                let nc = NC.min(n - n0);
                let b_blk = &mut b_buf[..round_up(nc, NR) * kc];
                pack_b(geo, inp, k0, kc, n0, nc, b_blk);
                for (nt, b_pan) in b_blk.chunks_exact(kc * NR).enumerate() {
                    let nj = n0 + nt * NR;
                    let nr = NR.min(n - nj);
                    for (t, a_pan) in a_blk.chunks_exact(kc * MR).enumerate() {
                        let i0 = m0 + t * MR;
                        let mr = MR.min(m - i0);
                        let c_at = i0 * n + nj;
                        // The C tile's rows are n floats apart (cache-unfriendly); fetch the
                        // next tile's while this one computes.
                        prefetch_tile(out, c_at + MR * n, n);
                        if mr == MR && nr == NR {
                            microkernel(isa, kc, a_pan, b_pan, &mut out[c_at..], n);
                        } else {
                            // Ragged edge: the same microkernel on a copy of the valid part.
                            for i in 0..mr {
                                tmp[i * NR..i * NR + nr]
                                    .copy_from_slice(&out[c_at + i * n..][..nr]);
                            }
                            microkernel(isa, kc, a_pan, b_pan, tmp, NR);
                            for i in 0..mr {
                                out[c_at + i * n..][..nr]
                                    .copy_from_slice(&tmp[i * NR..i * NR + nr]);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Hints the cache to fetch the MR × NR tile of `c` at `at` (row stride `ldc`), if inside `c`.
#[inline(always)]
fn prefetch_tile(c: &[f32], at: usize, ldc: usize) {
    #[cfg(target_arch = "x86_64")]
    for i in 0..MR {
        if let Some(row) = c.get(at + i * ldc..at + i * ldc + NR) {
            prefetch(row.as_ptr());
            prefetch(row[NR - 1..].as_ptr());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (c, at, ldc);
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

/// Packs W[row0 .. row0+mc, k0 .. k0+kc] as MR-row micro-panels, k-major inside a panel:
/// a[t·kc·MR + kk·MR + i] = W[row0 + t·MR + i, k0 + kk] (zero rows past mc).
fn pack_a<W: Weight>(
    weight: &[W],
    k_total: usize,
    row0: usize,
    mc: usize,
    k0: usize,
    kc: usize,
    a: &mut [f32],
) {
    for (t, panel) in a.chunks_exact_mut(kc * MR).enumerate() {
        for i in 0..MR {
            let r = t * MR + i;
            if r < mc {
                let src = &weight[(row0 + r) * k_total + k0..][..kc];
                for (kk, &v) in src.iter().enumerate() {
                    panel[kk * MR + i] = v.to_f32();
                }
            } else {
                for kk in 0..kc {
                    panel[kk * MR + i] = 0.0;
                }
            }
        }
    }
}

/// A run of output pixels of one output row inside one column tile: block columns
/// j0 .. j0+len are pixels (oy, ox .. ox+len).
#[derive(Clone, Copy, Default)]
struct Run {
    j0: usize,
    oy: usize,
    ox: usize,
    len: usize,
}

/// Packs im2col rows k0 .. k0+kc for output pixels n0 .. n0+nc as NR-wide micro-panels:
/// b[(j/NR)·kc·NR + kk·NR + j%NR] = x[ci, oy·s + ky − pad, ox·s + kx − pad] (0 in the padding
/// and in the columns past nc of the last panel). Row by row (k outer), so each row of the
/// input is read as one forward stretch.
fn pack_b(geo: &Geometry, inp: &[f32], k0: usize, kc: usize, n0: usize, nc: usize, b: &mut [f32]) {
    // Cut the block into runs along output rows and tile boundaries.
    let mut runs = [Run::default(); NC];
    let mut n_runs = 0;
    let mut j = 0;
    while j < nc {
        let (oy, ox) = ((n0 + j) / geo.ow, (n0 + j) % geo.ow);
        let len = (geo.ow - ox).min(nc - j).min(NR - j % NR);
        runs[n_runs] = Run { j0: j, oy, ox, len };
        n_runs += 1;
        j += len;
    }
    let runs = &runs[..n_runs];
    let tail = (NR - nc % NR) % NR;
    // (ci, ky, kx) of row k, advanced in k order (no divisions in the loop).
    let kk2 = geo.kernel * geo.kernel;
    let (mut ci, r) = (k0 / kk2, k0 % kk2);
    let (mut ky, mut kx) = (r / geo.kernel, r % geo.kernel);
    let plane_len = geo.h * geo.w;
    for kk in 0..kc {
        let plane = &inp[ci * plane_len..(ci + 1) * plane_len];
        for run in runs {
            let at = (run.j0 / NR) * kc * NR + kk * NR + run.j0 % NR;
            let dst = &mut b[at..at + run.len];
            let iy = (run.oy * geo.stride + ky) as isize - geo.pad as isize;
            if iy < 0 || iy >= geo.h as isize {
                dst.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * geo.w..(iy as usize + 1) * geo.w];
            copy_row(src, dst, run.ox * geo.stride + kx, geo.pad, geo.stride);
        }
        if tail > 0 {
            let at = (nc / NR) * kc * NR + kk * NR + nc % NR;
            b[at..at + tail].fill(0.0);
        }
        kx += 1;
        if kx == geo.kernel {
            kx = 0;
            ky += 1;
            if ky == geo.kernel {
                ky = 0;
                ci += 1;
            }
        }
    }
}

/// dst[q] = src[x0 + q·stride − pad] where that index is inside src, else 0.
fn copy_row(src: &[f32], dst: &mut [f32], x0: usize, pad: usize, stride: usize) {
    let w = src.len() as isize;
    let first = x0 as isize - pad as isize;
    if stride == 1 && first >= 0 && first + dst.len() as isize <= w {
        // Interior run (the common case): a plain copy, fixed-size for a full tile so it
        // compiles to a few vector moves instead of a memcpy call.
        let s = &src[first as usize..first as usize + dst.len()];
        match (
            <&mut [f32; NR]>::try_from(&mut *dst),
            <&[f32; NR]>::try_from(s),
        ) {
            (Ok(d), Ok(s)) => *d = *s,
            _ => dst.copy_from_slice(s),
        }
    } else if stride == 1 {
        // Valid q: 0 ≤ first + q < w.
        let lo = (-first).clamp(0, dst.len() as isize) as usize;
        let hi = (w - first).clamp(lo as isize, dst.len() as isize) as usize;
        dst[..lo].fill(0.0);
        if hi > lo {
            let s = (first + lo as isize) as usize;
            dst[lo..hi].copy_from_slice(&src[s..s + (hi - lo)]);
        }
        dst[hi..].fill(0.0);
    } else {
        for (q, d) in dst.iter_mut().enumerate() {
            let ix = first + (q * stride) as isize;
            *d = if ix >= 0 && ix < w {
                src[ix as usize]
            } else {
                0.0
            };
        }
    }
}

/// c[i·ldc + j] += Σ_kk a[kk·MR + i]·b[kk·NR + j] for an MR × NR tile, terms added in kk order.
#[inline]
fn microkernel(isa: Isa, kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize) {
    debug_assert!(a.len() >= kc * MR && b.len() >= kc * NR && c.len() >= (MR - 1) * ldc + NR);
    match isa.0 {
        IsaKind::Portable => microkernel_portable(kc, a, b, c, ldc),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an Avx2Fma Isa exists only if the build targets AVX2+FMA or the host vouched
        // for the CPU through `enable_avx2_fma`; the slice lengths were checked above (and are
        // guaranteed by the driver).
        IsaKind::Avx2Fma => unsafe { avx2::microkernel(kc, a, b, c, ldc) },
    }
}

/// The reference microkernel: separate product and sum, as the plain formula.
fn microkernel_portable(kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize) {
    let mut acc = [[0f32; NR]; MR];
    for (i, row) in acc.iter_mut().enumerate() {
        row.copy_from_slice(&c[i * ldc..i * ldc + NR]);
    }
    for (ak, bk) in a.chunks_exact(MR).zip(b.chunks_exact(NR)).take(kc) {
        for (row, &ai) in acc.iter_mut().zip(ak) {
            for (s, &bj) in row.iter_mut().zip(bk) {
                *s += ai * bj;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        c[i * ldc..i * ldc + NR].copy_from_slice(row);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use core::arch::x86_64::*;

    /// The 6 × 16 AVX2 microkernel: 12 accumulators, per k two loads of B, six broadcasts of
    /// A and twelve fused multiply-adds.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; a.len() ≥ kc·MR, b.len() ≥ kc·NR,
    /// c.len() ≥ (MR−1)·ldc + NR.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn microkernel(kc: usize, a: &[f32], b: &[f32], c: &mut [f32], ldc: usize) {
        let cp = c.as_mut_ptr();
        let (mut ap, mut bp) = (a.as_ptr(), b.as_ptr());
        // SAFETY (whole body): every pointer stays inside the slices by the length contract.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            for (i, r) in acc.iter_mut().enumerate() {
                r[0] = _mm256_loadu_ps(cp.add(i * ldc));
                r[1] = _mm256_loadu_ps(cp.add(i * ldc + 8));
            }
            for _ in 0..kc {
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                for (i, r) in acc.iter_mut().enumerate() {
                    let ai = _mm256_broadcast_ss(&*ap.add(i));
                    r[0] = _mm256_fmadd_ps(ai, b0, r[0]);
                    r[1] = _mm256_fmadd_ps(ai, b1, r[1]);
                }
                ap = ap.add(MR);
                bp = bp.add(NR);
            }
            for (i, r) in acc.iter().enumerate() {
                _mm256_storeu_ps(cp.add(i * ldc), r[0]);
                _mm256_storeu_ps(cp.add(i * ldc + 8), r[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = (i as u32)
                    .wrapping_add(seed.wrapping_mul(0x9E37_79B9))
                    .wrapping_mul(2654435761);
                ((v ^ (v >> 15)) >> 8) as f32 / 8388608.0 - 1.0
            })
            .collect()
    }

    /// The SIMD path if this CPU has it (tests enable it; the flag only ever turns on).
    fn simd() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: just detected.
            unsafe { enable_avx2_fma() };
            return Some(Isa::detected());
        }
        None
    }

    /// Direct convolution from the definition, in the documented term order, with the given
    /// step `acc ← step(acc, w, x)`; padding contributes x = 0 terms like the GEMM.
    fn reference(
        conv: &Conv2d,
        x: &[f32],
        h: usize,
        w: usize,
        wt: &[f32],
        b: &[f32],
        step: impl Fn(f32, f32, f32) -> f32,
    ) -> Vec<f32> {
        let (oh, ow) = conv.out_size(h, w);
        let k = conv.kernel;
        let mut out = vec![0f32; conv.c_out * oh * ow];
        for o in 0..conv.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b[o];
                    for ci in 0..conv.c_in {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * conv.stride + ky) as isize - conv.pad as isize;
                                let ix = (ox * conv.stride + kx) as isize - conv.pad as isize;
                                let v =
                                    if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w
                                    {
                                        x[(ci * h + iy as usize) * w + ix as usize]
                                    } else {
                                        0.0
                                    };
                                acc = step(acc, wt[((o * conv.c_in + ci) * k + ky) * k + kx], v);
                            }
                        }
                    }
                    out[(o * oh + oy) * ow + ox] = acc;
                }
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        isa: Isa,
        conv: &Conv2d,
        x: &[f32],
        h: usize,
        w: usize,
        wt: WeightsRef,
        b: &[f32],
        co: core::ops::Range<usize>,
    ) -> Vec<f32> {
        let (oh, ow) = conv.out_size(h, w);
        let mut out = vec![f32::NAN; co.len() * oh * ow];
        let mut scratch = vec![f32::NAN; conv.scratch_len(h, w)];
        conv.forward_with(isa, x, h, w, wt, b, co, &mut out, &mut scratch)
            .unwrap();
        out
    }

    /// (c_in, c_out, kernel, stride, pad, h, w): 3×3 and 1×1, pad 1/0, stride 1/2, odd sizes,
    /// tiles wrapping output rows, K > KC (several K blocks), c_out > MC_MAX (several M blocks).
    const SHAPES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
        (3, 5, 3, 1, 1, 7, 9),
        (4, 7, 3, 2, 1, 9, 7),
        (2, 6, 3, 1, 0, 6, 5),
        (3, 4, 3, 2, 0, 8, 8),
        (2, 3, 1, 1, 0, 5, 6),
        (3, 4, 1, 2, 0, 7, 7),
        (5, 13, 3, 1, 1, 3, 17),
        (40, 9, 3, 1, 1, 6, 6),
        (2, 200, 3, 1, 1, 4, 5),
        (1, 1, 3, 1, 1, 1, 1),
    ];

    #[test]
    fn portable_is_bit_exact_to_direct_formula() {
        for &(ci, co, k, s, p, h, w) in SHAPES {
            let conv = Conv2d {
                c_in: ci,
                c_out: co,
                kernel: k,
                stride: s,
                pad: p,
            };
            let x = data(ci * h * w, 1);
            let wt = data(co * ci * k * k, 2);
            let b = data(co, 3);
            let want = reference(&conv, &x, h, w, &wt, &b, |acc, a, v| acc + a * v);
            let got = run(
                Isa::PORTABLE,
                &conv,
                &x,
                h,
                w,
                WeightsRef::F32(&wt),
                &b,
                0..co,
            );
            assert_eq!(got, want, "shape {:?}", (ci, co, k, s, p, h, w));
        }
    }

    #[test]
    fn simd_is_bit_exact_to_fused_formula() {
        let Some(isa) = simd() else { return };
        for &(ci, co, k, s, p, h, w) in SHAPES {
            let conv = Conv2d {
                c_in: ci,
                c_out: co,
                kernel: k,
                stride: s,
                pad: p,
            };
            let x = data(ci * h * w, 4);
            let wt = data(co * ci * k * k, 5);
            let b = data(co, 6);
            let want = reference(&conv, &x, h, w, &wt, &b, |acc, a, v| a.mul_add(v, acc));
            let got = run(isa, &conv, &x, h, w, WeightsRef::F32(&wt), &b, 0..co);
            assert_eq!(got, want, "shape {:?}", (ci, co, k, s, p, h, w));
        }
    }

    #[test]
    fn close_to_f64_convolution() {
        // Independent of the term order: an f64 evaluation agrees to f32 round-off.
        let conv = Conv2d {
            c_in: 40,
            c_out: 9,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let (h, w) = (6, 6);
        let x = data(40 * 36, 7);
        let wt = data(9 * 40 * 9, 8);
        let b = data(9, 9);
        let exact = reference(&conv, &x, h, w, &wt, &b, |acc, a, v| {
            (acc as f64 + a as f64 * v as f64) as f32
        });
        for isa in [Some(Isa::PORTABLE), simd()].into_iter().flatten() {
            let got = run(isa, &conv, &x, h, w, WeightsRef::F32(&wt), &b, 0..9);
            for (g, e) in got.iter().zip(&exact) {
                assert!((g - e).abs() < 1e-4, "{g} vs {e}");
            }
        }
    }

    #[test]
    fn hand_computed_box_filter() {
        // Ones kernel on x = 1..9 (3×3), pad 1: each output is the sum of its 3×3 neighbourhood.
        let conv = Conv2d {
            c_in: 1,
            c_out: 1,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let want = [12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0];
        for isa in [Some(Isa::PORTABLE), simd()].into_iter().flatten() {
            assert_eq!(
                run(
                    isa,
                    &conv,
                    &x,
                    3,
                    3,
                    WeightsRef::F32(&[1.0; 9]),
                    &[0.0],
                    0..1
                ),
                want
            );
            // Stride 2 (+ bias 1): the windows centred on input pixels (0,0), (0,2), (2,0), (2,2).
            let s2 = Conv2d { stride: 2, ..conv };
            assert_eq!(
                run(isa, &s2, &x, 3, 3, WeightsRef::F32(&[1.0; 9]), &[1.0], 0..1),
                [13.0, 17.0, 25.0, 29.0]
            );
        }
        // 1×1: a per-pixel channel mix, out = 2·x0 − x1 + 0.5.
        let c1 = Conv2d {
            c_in: 2,
            c_out: 1,
            kernel: 1,
            stride: 1,
            pad: 0,
        };
        let x = [1.0, 2.0, 3.0, 10.0, 20.0, 30.0];
        assert_eq!(
            run(
                Isa::PORTABLE,
                &c1,
                &x,
                1,
                3,
                WeightsRef::F32(&[2.0, -1.0]),
                &[0.5],
                0..1
            ),
            [-7.5, -15.5, -23.5]
        );
    }

    #[test]
    fn every_split_gives_the_same_bits() {
        for &(ci, co, k, s, p, h, w) in SHAPES {
            let conv = Conv2d {
                c_in: ci,
                c_out: co,
                kernel: k,
                stride: s,
                pad: p,
            };
            let (oh, ow) = conv.out_size(h, w);
            let x = data(ci * h * w, 10);
            let wt = data(co * ci * k * k, 11);
            let b = data(co, 12);
            for isa in [Some(Isa::PORTABLE), simd()].into_iter().flatten() {
                let whole = run(isa, &conv, &x, h, w, WeightsRef::F32(&wt), &b, 0..co);
                // Cuts that put channels in different microkernel rows and M blocks.
                for cuts in [&[1usize][..], &[co / 2], &[1, 2, 7], &[5, 11, 97, 193]] {
                    let mut bounds: Vec<usize> = cuts.iter().copied().filter(|&c| c < co).collect();
                    bounds.insert(0, 0);
                    bounds.push(co);
                    let mut split = Vec::new();
                    for r in bounds.windows(2) {
                        split.extend(run(
                            isa,
                            &conv,
                            &x,
                            h,
                            w,
                            WeightsRef::F32(&wt),
                            &b,
                            r[0]..r[1],
                        ));
                    }
                    assert_eq!(split.len(), co * oh * ow);
                    assert_eq!(
                        split,
                        whole,
                        "{isa:?} shape {:?} cuts {cuts:?}",
                        (ci, co, k, s, p, h, w)
                    );
                }
            }
        }
    }

    #[test]
    fn f16_weights_equal_their_f32_values() {
        for &(ci, co, k, s, p, h, w) in SHAPES {
            let conv = Conv2d {
                c_in: ci,
                c_out: co,
                kernel: k,
                stride: s,
                pad: p,
            };
            let x = data(ci * h * w, 13);
            let w16: Vec<f16> = data(co * ci * k * k, 14)
                .iter()
                .map(|&v| f16::from_f32(v))
                .collect();
            let w32: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
            let b = data(co, 15);
            for isa in [Some(Isa::PORTABLE), simd()].into_iter().flatten() {
                let a = run(isa, &conv, &x, h, w, WeightsRef::F16(&w16), &b, 0..co);
                let c = run(isa, &conv, &x, h, w, WeightsRef::F32(&w32), &b, 0..co);
                assert_eq!(a, c);
            }
        }
    }

    #[test]
    fn out_size_and_errors() {
        let c = Conv2d {
            c_in: 2,
            c_out: 3,
            kernel: 3,
            stride: 2,
            pad: 1,
        };
        assert_eq!(c.out_size(7, 8), (4, 4));
        assert_eq!(
            Conv2d {
                stride: 1,
                pad: 0,
                ..c
            }
            .out_size(2, 5),
            (0, 3)
        );
        let (h, w) = (4, 4);
        let x = vec![0f32; 2 * 16];
        let wt = vec![0f32; 3 * 2 * 9];
        let b = [0f32; 3];
        let mut out = vec![0f32; 3 * 4];
        let mut s = vec![0f32; c.scratch_len(h, w)];
        assert!(c
            .forward(&x, h, w, WeightsRef::F32(&wt), &b, 0..3, &mut out, &mut s)
            .is_ok());
        assert!(c
            .forward(
                &x[1..],
                h,
                w,
                WeightsRef::F32(&wt),
                &b,
                0..3,
                &mut out,
                &mut s
            )
            .is_err());
        assert!(c
            .forward(
                &x,
                h,
                w,
                WeightsRef::F32(&wt[1..]),
                &b,
                0..3,
                &mut out,
                &mut s
            )
            .is_err());
        assert!(c
            .forward(
                &x,
                h,
                w,
                WeightsRef::F32(&wt),
                &b[1..],
                0..3,
                &mut out,
                &mut s
            )
            .is_err());
        assert!(c
            .forward(&x, h, w, WeightsRef::F32(&wt), &b, 0..4, &mut out, &mut s)
            .is_err());
        assert!(c
            .forward(&x, h, w, WeightsRef::F32(&wt), &b, 0..2, &mut out, &mut s)
            .is_err());
        assert!(c
            .forward(
                &x,
                h,
                w,
                WeightsRef::F32(&wt),
                &b,
                0..3,
                &mut out,
                &mut s[1..]
            )
            .is_err());
        let bad = Conv2d { stride: 0, ..c };
        assert!(bad
            .forward(&x, h, w, WeightsRef::F32(&wt), &b, 0..3, &mut out, &mut s)
            .is_err());
    }
}

/// Throughput of one convolution layer, by default the ADM's dominant 128→128 3×3 at 256×256:
/// `cargo test -p tweedie-kernels --release conv_throughput -- --ignored --nocapture`, with
/// CONV_SHAPE="c_in,c_out,kernel,size", CONV_THREADS=n (output channels split evenly, as the
/// host does) and CONV_SIMD_ONLY=1 (skip the slow portable path).
#[cfg(test)]
mod timing {
    use super::*;

    fn env(name: &str, default: &str) -> String {
        std::env::var(name).unwrap_or_else(|_| default.into())
    }

    #[test]
    #[ignore]
    fn conv_throughput() {
        let shape: Vec<usize> = env("CONV_SHAPE", "128,128,3,256")
            .split(',')
            .map(|v| v.trim().parse().unwrap())
            .collect();
        let (ci, co, k, size) = (shape[0], shape[1], shape[2], shape[3]);
        let threads: usize = env("CONV_THREADS", "1").parse().unwrap();
        let conv = Conv2d {
            c_in: ci,
            c_out: co,
            kernel: k,
            stride: 1,
            pad: k / 2,
        };
        let (h, w) = (size, size);
        let x: Vec<f32> = (0..ci * h * w)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let wt: Vec<f32> = (0..co * ci * k * k)
            .map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let b = vec![0.1f32; co];
        let mut out = vec![0f32; co * h * w];
        let slen = conv.scratch_len(h, w);
        let mut scratch = vec![0f32; slen * threads];
        let flops = 2.0 * (co * ci * k * k * h * w) as f64;
        let mut isas = vec![];
        if std::env::var("CONV_SIMD_ONLY").is_err() {
            isas.push(Isa::PORTABLE);
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: just detected.
            unsafe { enable_avx2_fma() };
            isas.push(Isa::detected());
        }
        let per = co.div_ceil(threads);
        for isa in isas {
            for rep in 0..5 {
                let t0 = std::time::Instant::now();
                std::thread::scope(|sc| {
                    let mut rest = &mut out[..];
                    for (t, s) in scratch.chunks_mut(slen).enumerate() {
                        let r = (t * per).min(co)..((t + 1) * per).min(co);
                        let (mine, tail) = std::mem::take(&mut rest).split_at_mut(r.len() * h * w);
                        rest = tail;
                        let (x, wt, b) = (&x, &wt, &b);
                        sc.spawn(move || {
                            conv.forward_with(isa, x, h, w, WeightsRef::F32(wt), b, r, mine, s)
                                .unwrap()
                        });
                    }
                });
                let dt = t0.elapsed().as_secs_f64();
                println!(
                    "{isa:?} {ci}->{co} k{k} {size}x{size} {threads} thread(s) rep {rep}: {dt:.4} s, {:.1} GFLOP/s",
                    flops / dt / 1e9
                );
            }
        }
    }
}
