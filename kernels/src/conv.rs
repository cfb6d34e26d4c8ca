//! `nn.Conv2d` (and the k = 1 `Conv1d` of attention) as an implicit GEMM:
//! out[M = c_out, N = oh·ow] = W[M, K = c_in·k·k] · im2col(x)[K, N] + bias.
//!
//! Nothing of im2col is materialised beyond one packed panel: for each block of KC rows of K,
//! a block of at most MC_MAX output channels of W is packed (converted from f16 if needed), then
//! for each NC-wide block of output pixels the im2col rows are packed straight from the input,
//! and an MR × NR register-blocked microkernel accumulates into `out`. A caller may hand a
//! thread all channels of a pixel range instead of a channel range
//! ([`Conv2d::forward_pixels`]), so threads do not each pack the same im2col columns.
//!
//! Small maps with few channels (the MNIST U-Net) spend as long packing im2col as multiplying:
//! a stride-1 convolution of such a map takes the direct path of `conv/direct.rs` instead (B
//! read in place from one zero-padded copy of the input), when the caller's scratch allows it.
//! The weight gradient packs im2col(inp)ᵀ from a zero-padded copy with 8 × 8 register
//! transposes, and the input gradient can take its weights pre-flipped
//! ([`Conv2d::flip_weights`]) once per batch.
//!
//! Reduction order (what makes every split bit-identical): every output element is
//! bias + w_0·x_0 + w_1·x_1 + … in the order k = (ci·k + ky)·k + kx, one rounding per step
//! (portable: a product and a sum; AVX2 and AVX-512: one fused multiply-add, so these two agree
//! bit for bit whatever their register tiles). Blocking over K, M or N only
//! decides where the running sum lives (register or `out`), never the order of the terms, so the
//! result is independent of the channel range, the tile an element lands in, and the block sizes.

use crate::{check_len, check_min_len, check_range, KernelError, Weight, WeightsRef};

mod direct;
mod strided;
mod winograd;
use direct::Direct;
pub use winograd::Winograd;

/// Rows of the microkernel (output channels).
pub const MR: usize = 12;
/// Columns of the microkernel (output pixels): two 16-lane vectors (AVX-512), four 8-lane
/// ones (AVX2, as 2 × 2 sub-tiles of 6 × 16).
pub const NR: usize = 32;
/// Depth of a packed panel (rows of K): the NR-wide B micro-panel (KC·NR·4 = 24 KiB) stays in
/// L1, and the 3×3 layers' K = 9·c_in (c_in a multiple of 128) splits into whole blocks.
const KC: usize = 384;
/// Output pixels packed at once (multiple of NR): each im2col row is copied as one stretch of
/// NC input pixels, which the hardware prefetcher can follow; the B block (KC·NC·4 = 192 KiB)
/// stays in L2.
const NC: usize = 128;
/// Most output channels packed at once (multiple of MR): the A block (≤ 387 KiB) stays in L2,
/// and up to 256 channels share one packed B block (each B block is packed once per A block).
const MC_MAX: usize = 264;

/// Floats per cache line (64 bytes). Buffers whose rows a product reads or writes side by side
/// (one per channel) are laid out a line further apart than their size: at power-of-two
/// strides (2 or 4 KiB, as 32 × 32 maps and Winograd chunks give) those rows would share a
/// few of the 64 L1 sets and evict each other (measured: microkernel loads stalling on L2).
const LINE: usize = 16;

/// Most output rows (channels) of a product the direct path takes: every packed im2col value
/// serves all output rows, so wide layers amortise the packing, and the direct path's extra
/// columns (6–12 % more products) would cost them more than it saves.
const DIRECT_MAX_ROWS: usize = 128;

/// Which instruction set the convolution's microkernel uses. Construct with
/// [`Isa::PORTABLE`], [`Isa::detected`] or [`Isa::available`]; the AVX2 path can only be
/// selected when the build targets AVX2+FMA or after the host has called [`enable_avx2_fma`],
/// and the AVX-512 path only after that call found AVX-512F by CPUID (and the OS saving its
/// registers), so safe code can never run them on a CPU without those instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(IsaKind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IsaKind {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

#[cfg(target_arch = "x86_64")]
static AVX2_FMA: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Lets [`Isa::detected`] (and so [`Conv2d::forward`]) use the AVX2+FMA microkernel, or the
/// AVX-512F one where CPUID and XCR0 show the CPU and the OS support it (checked here). The
/// host calls this once, before starting worker threads, after
/// `is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")`.
///
/// # Safety
/// The CPU that runs the kernels must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
pub unsafe fn enable_avx2_fma() {
    AVX2_FMA.store(true, core::sync::atomic::Ordering::Relaxed);
    AVX512.store(avx512::supported(), core::sync::atomic::Ordering::Relaxed);
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

    /// Scratch floats one call (one thread) should get for an h × w input: enough for the
    /// direct path (no im2col packing, see `conv/direct.rs`) where the map is small enough,
    /// else the packed A block, packed B block and one C tile for ragged edges. The packed
    /// path's need, independent of the input size, is the minimum accepted (`forward` falls
    /// back to it when the scratch is smaller; the bits are the same).
    pub fn scratch_len(&self, h: usize, w: usize) -> usize {
        let packed = gemm_scratch_len(self.c_out, self.k_total());
        self.direct(h, w)
            .map_or(packed, |d| packed.max(d.scratch_len(self.c_out)))
    }

    /// The direct geometry of the forward for an h × w input (stride 1, small maps, at most
    /// [`DIRECT_MAX_ROWS`] output channels).
    fn direct(&self, h: usize, w: usize) -> Option<Direct> {
        (self.stride == 1 && self.c_out <= DIRECT_MAX_ROWS)
            .then(|| Direct::new(self.c_in, self.kernel, self.pad, h, w))
            .flatten()
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
        let geo = self.check_forward(inp, h, w, weight, bias, scratch)?;
        check_range(
            "conv2d: output channel range outside 0..c_out",
            &co,
            self.c_out,
        )?;
        check_len("conv2d output", co.len() * geo.n, out.len())?;
        if let Some(d) = self.direct(h, w) {
            if scratch.len() >= d.scratch_len(co.len()) {
                let ys = 0..geo.n / d.ow();
                direct_forward(isa, &d, inp, weight, bias, co, ys, Out::Dense(out), scratch);
                return Ok(());
            }
        }
        let px = 0..geo.n;
        match weight {
            WeightsRef::F32(wt) => {
                conv_gemm(isa, &geo, inp, wt, bias, co, px, Out::Dense(out), scratch)
            }
            WeightsRef::F16(wt) => {
                conv_gemm(isa, &geo, inp, wt, bias, co, px, Out::Dense(out), scratch)
            }
        }
        Ok(())
    }

    /// [`Conv2d::forward_with`] for every output channel and the output pixels `px` only
    /// (numbered y·ow + x): `rows[c]` receives out[c, px] (`rows.len() == c_out`, each
    /// `px.len()` long). Lets threads split a large map by pixels, each packing only its own
    /// im2col columns; every element is computed in the same order as by
    /// [`Conv2d::forward_with`], so the bits are the same for any split.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_pixels(
        &self,
        isa: Isa,
        inp: &[f32],
        h: usize,
        w: usize,
        weight: WeightsRef,
        bias: &[f32],
        px: core::ops::Range<usize>,
        rows: &mut [&mut [f32]],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let geo = self.check_forward(inp, h, w, weight, bias, scratch)?;
        check_range("conv2d: pixel range outside 0..oh·ow", &px, geo.n)?;
        check_len("conv2d output rows", self.c_out, rows.len())?;
        for r in rows.iter() {
            check_len("conv2d output row", px.len(), r.len())?;
        }
        let co = 0..self.c_out;
        if let Some(d) = self.direct(h, w) {
            // Whole output rows only (the threads' pixel ranges usually are).
            let ow = d.ow();
            if scratch.len() >= d.scratch_len(co.len())
                && px.start.is_multiple_of(ow)
                && px.end.is_multiple_of(ow)
            {
                let ys = px.start / ow..px.end / ow;
                direct_forward(isa, &d, inp, weight, bias, co, ys, Out::Rows(rows), scratch);
                return Ok(());
            }
        }
        match weight {
            WeightsRef::F32(wt) => {
                conv_gemm(isa, &geo, inp, wt, bias, co, px, Out::Rows(rows), scratch)
            }
            WeightsRef::F16(wt) => {
                conv_gemm(isa, &geo, inp, wt, bias, co, px, Out::Rows(rows), scratch)
            }
        }
        Ok(())
    }

    /// Checks what both forwards share; returns the im2col geometry.
    fn check_forward(
        &self,
        inp: &[f32],
        h: usize,
        w: usize,
        weight: WeightsRef,
        bias: &[f32],
        scratch: &[f32],
    ) -> Result<Geometry, KernelError> {
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
        let packed = gemm_scratch_len(self.c_out, self.k_total());
        check_min_len("conv2d scratch", packed, scratch.len())?;
        Ok(Geometry {
            c_in: self.c_in,
            kernel: self.kernel,
            stride: self.stride,
            pad: self.pad,
            h,
            w,
            ow,
            n: oh * ow,
            dil: 1,
            real_h: h,
            real_w: w,
        })
    }
}

/// Backward (training). Both products reuse the forward's packed GEMM and microkernel:
/// dinput is the transposed convolution of dout (a stride-1 convolution with the kernel flipped
/// and c_in/c_out swapped, over dout dilated by the stride), dweight = dout · im2col(inp)ᵀ.
/// Every gradient is accumulated (`+=`) onto what the caller's buffer holds, one rounding per
/// term, in a documented order, so the result is bit-identical for any channel split and
/// batches sum in the order the caller calls.
impl Conv2d {
    /// Scratch floats one call of [`Conv2d::backward_input`] or [`Conv2d::backward_params`]
    /// (one thread) needs for an h × w input.
    /// With less (but at least the packed path's need), the input gradient is computed by the
    /// packed path: same bits.
    pub fn backward_scratch_len(&self, h: usize, w: usize) -> usize {
        let direct = self
            .direct_input(h, w)
            .map_or(0, |d| d.scratch_len(self.c_in));
        self.backward_packed_len(h, w).max(direct)
    }

    /// The least scratch both backward calls accept: the packed input gradient's, or the
    /// weight gradient's (its GEMM and the padded input copy).
    fn backward_packed_len(&self, h: usize, w: usize) -> usize {
        let (oh, ow) = self.out_size(h, w);
        let k2 = self.kernel * self.kernel;
        let params = gemm_scratch_len(self.c_out, oh * ow) + self.padded_len(h, w);
        let input = match self.stride {
            1 => gemm_scratch_len(self.c_in, self.c_out * k2),
            _ => strided::scratch_len(self, self.c_in, oh * ow),
        };
        input.max(params)
    }

    /// The direct geometry of the input gradient (a stride-1 convolution of dout padded by
    /// k − 1 − pad) for an h × w input, for small maps.
    fn direct_input(&self, h: usize, w: usize) -> Option<Direct> {
        let (oh, ow) = self.out_size(h, w);
        (self.stride == 1 && self.pad < self.kernel && self.c_in <= DIRECT_MAX_ROWS)
            .then(|| Direct::new(self.c_out, self.kernel, self.kernel - 1 - self.pad, oh, ow))
            .flatten()
    }

    /// Floats of the zero-padded copy of the input that [`Conv2d::backward_params`] packs from.
    fn padded_len(&self, h: usize, w: usize) -> usize {
        self.c_in * (h + 2 * self.pad) * (w + 2 * self.pad)
    }

    /// Checks the layer and the input size; returns the output size.
    fn check_backward(
        &self,
        h: usize,
        w: usize,
        dout: &[f32],
    ) -> Result<(usize, usize), KernelError> {
        if self.kernel == 0 || self.stride == 0 || self.c_in == 0 || self.c_out == 0 {
            return Err(KernelError::Shape(
                "conv2d backward: kernel, stride, c_in and c_out must be ≥ 1",
            ));
        }
        let (oh, ow) = self.out_size(h, w);
        if oh == 0 || ow == 0 {
            return Err(KernelError::Shape(
                "conv2d backward: kernel larger than the padded input",
            ));
        }
        check_len("conv2d backward dout", self.c_out * oh * ow, dout.len())?;
        Ok((oh, ow))
    }

    /// dinp += ∂L/∂inp for the input channels `ci` (`dinp.len() == ci.len()·h·w`), given the
    /// whole `dout` = ∂L/∂out [c_out, oh, ow]:
    /// dinp[c, y, x] += Σ_{o, ky, kx} W[o, c, ky, kx]·dout[o, (y + pad − ky)/stride, (x + pad − kx)/stride]
    /// over the terms whose quotients are exact and inside dout. Term order per element:
    /// o outer, then ky, kx descending (the flipped kernel's order), onto the value in `dinp`.
    /// Needs pad < kernel. A stride s > 1 computes over the dilated dout, s² times the
    /// useful work (the ADM U-Net has no strided convolution: it downsamples by pooling).
    /// A caller that runs many backward passes with the same weights should flip them once
    /// ([`Conv2d::flip_weights`]) and call [`Conv2d::backward_input_flipped`]: same bits.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_input(
        &self,
        isa: Isa,
        dinp: &mut [f32],
        dout: &[f32],
        weight: WeightsRef,
        h: usize,
        w: usize,
        ci: core::ops::Range<usize>,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let (c_in, k) = (self.c_in, self.kernel);
        check_len("conv2d weight", self.c_out * c_in * k * k, weight.len())?;
        let dims = (h, w);
        match weight {
            WeightsRef::F32(wt) => self.backward_input_of(isa, dinp, dout, wt, dims, ci, scratch),
            WeightsRef::F16(wt) => self.backward_input_of(isa, dinp, dout, wt, dims, ci, scratch),
        }
    }

    /// [`Conv2d::backward_input`] for weights stored as `W` (length checked).
    #[allow(clippy::too_many_arguments)]
    fn backward_input_of<W: Weight>(
        &self,
        isa: Isa,
        dinp: &mut [f32],
        dout: &[f32],
        wt: &[W],
        dims: (usize, usize),
        ci: core::ops::Range<usize>,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let (c_in, k, row0) = (self.c_in, self.kernel, ci.start);
        self.backward_input_with(
            isa,
            dinp,
            dout,
            dims,
            ci,
            scratch,
            |m0, mc, k0, kc, a| pack_a_flipped(wt, c_in, k, row0 + m0, mc, k0, kc, a),
            |c, o, q| wt[(o * c_in + c) * k * k + q].to_f32(),
        )
    }

    /// Floats of [`Conv2d::flip_weights`]'s output: as many as the weight.
    pub fn flipped_len(&self) -> usize {
        self.c_out * self.k_total()
    }

    /// The weight as the input gradient reads it, transposed and flipped:
    /// `flipped[(c·c_out + o)·k² + (k−1−ky)·k + (k−1−kx)] = W[o, c, ky, kx]` (f16 widened).
    pub fn flip_weights(&self, weight: WeightsRef, flipped: &mut [f32]) -> Result<(), KernelError> {
        let k2 = self.kernel * self.kernel;
        check_len("conv2d weight", self.flipped_len(), weight.len())?;
        check_len("conv2d flipped weight", self.flipped_len(), flipped.len())?;
        for c in 0..self.c_in {
            for o in 0..self.c_out {
                let dst = &mut flipped[(c * self.c_out + o) * k2..][..k2];
                let src = (o * self.c_in + c) * k2;
                for (q, d) in dst.iter_mut().enumerate() {
                    *d = match weight {
                        WeightsRef::F32(wt) => wt[src + k2 - 1 - q],
                        WeightsRef::F16(wt) => wt[src + k2 - 1 - q].to_f32(),
                    };
                }
            }
        }
        Ok(())
    }

    /// [`Conv2d::backward_input`] with the weight already flipped by
    /// [`Conv2d::flip_weights`]: packing its rows is a plain copy (bit-identical result).
    #[allow(clippy::too_many_arguments)]
    pub fn backward_input_flipped(
        &self,
        isa: Isa,
        dinp: &mut [f32],
        dout: &[f32],
        flipped: &[f32],
        h: usize,
        w: usize,
        ci: core::ops::Range<usize>,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        check_len("conv2d flipped weight", self.flipped_len(), flipped.len())?;
        let (co, k2) = (self.c_out, self.kernel * self.kernel);
        let (depth, row0) = (co * k2, ci.start);
        self.backward_input_with(
            isa,
            dinp,
            dout,
            (h, w),
            ci,
            scratch,
            |m0, mc, k0, kc, a| pack_a(isa, flipped, depth, row0 + m0, mc, k0, kc, a),
            |c, o, q| flipped[(c * co + o) * k2 + k2 - 1 - q],
        )
    }

    /// The input gradient: for stride 1, the transposed convolution's GEMM with A (the flipped
    /// weight rows of `ci`) packed by `pack_a`; for larger strides, the GEMM into columns and
    /// col2im of `conv/strided.rs`, reading `tap(c, o, ky·k + kx)` = W[o, c, ky, kx].
    #[allow(clippy::too_many_arguments)]
    fn backward_input_with(
        &self,
        isa: Isa,
        dinp: &mut [f32],
        dout: &[f32],
        (h, w): (usize, usize),
        ci: core::ops::Range<usize>,
        scratch: &mut [f32],
        pack_a: impl FnMut(usize, usize, usize, usize, &mut [f32]),
        tap: impl Fn(usize, usize, usize) -> f32,
    ) -> Result<(), KernelError> {
        let (oh, ow) = self.check_backward(h, w, dout)?;
        if self.pad >= self.kernel {
            return Err(KernelError::Shape("conv2d backward: pad must be < kernel"));
        }
        check_range(
            "conv2d backward: input channel range outside 0..c_in",
            &ci,
            self.c_in,
        )?;
        check_len("conv2d backward dinp", ci.len() * h * w, dinp.len())?;
        check_min_len(
            "conv2d backward scratch",
            self.backward_packed_len(h, w),
            scratch.len(),
        )?;
        if self.stride > 1 {
            strided::input_gradient(self, isa, dinp, dout, (h, w), ci, scratch, tap);
            return Ok(());
        }
        if let Some(d) = self.direct_input(h, w) {
            if scratch.len() >= d.scratch_len(ci.len()) {
                d.run(
                    isa,
                    ci.len(),
                    None,
                    pack_a,
                    dout,
                    0..h,
                    Out::Dense(dinp),
                    scratch,
                );
                return Ok(());
            }
        }
        // The transposed convolution: dout dilated by the stride to (h + 2·pad − k + 1) rows,
        // padded by k − 1 − pad, convolved at stride 1 with the flipped kernel gives h rows.
        let geo = Geometry {
            c_in: self.c_out,
            kernel: self.kernel,
            stride: 1,
            pad: self.kernel - 1 - self.pad,
            h: h + 2 * self.pad + 1 - self.kernel,
            w: w + 2 * self.pad + 1 - self.kernel,
            ow: w,
            n: h * w,
            dil: self.stride,
            real_h: oh,
            real_w: ow,
        };
        let depth = self.c_out * self.kernel * self.kernel;
        gemm(
            isa,
            None,
            ci.len(),
            h * w,
            depth,
            pack_a,
            |k0, kc, n0, nc, b| pack_b(&geo, dout, k0, kc, n0, nc, b),
            Out::Dense(dinp),
            scratch,
        );
        Ok(())
    }

    /// dweight += ∂L/∂W and dbias += ∂L/∂b for the output channels `co` (`dweight` holds
    /// rows co of W, `co.len()·c_in·k·k`; `dbias.len() == co.len()`), given the whole `inp`
    /// [c_in, h, w] and `dout` [c_out, oh, ow]:
    /// dW[o, k] += Σ_n dout[o, n]·im2col(inp)[k, n], terms in pixel order n = 0, 1, … onto the
    /// value in `dweight`; `db[o] += Σ_n dout[o, n]`, summed in f64 (8 interleaved lanes) and
    /// added once.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_params(
        &self,
        isa: Isa,
        dweight: &mut [f32],
        dbias: &mut [f32],
        dout: &[f32],
        inp: &[f32],
        h: usize,
        w: usize,
        co: core::ops::Range<usize>,
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let (oh, ow) = self.check_backward(h, w, dout)?;
        let k_total = self.k_total();
        check_len("conv2d input", self.c_in * h * w, inp.len())?;
        check_range(
            "conv2d backward: output channel range outside 0..c_out",
            &co,
            self.c_out,
        )?;
        check_len("conv2d backward dweight", co.len() * k_total, dweight.len())?;
        check_len("conv2d backward dbias", co.len(), dbias.len())?;
        check_min_len(
            "conv2d backward scratch",
            self.backward_packed_len(h, w),
            scratch.len(),
        )?;
        let n = oh * ow;
        let rows = &dout[co.start * n..co.end * n];
        for (db, row) in dbias.iter_mut().zip(rows.chunks_exact(n)) {
            *db += sum_f64(row) as f32;
        }
        let geo = Geometry {
            c_in: self.c_in,
            kernel: self.kernel,
            stride: self.stride,
            pad: self.pad,
            h,
            w,
            ow,
            n,
            dil: 1,
            real_h: h,
            real_w: w,
        };
        // im2col(inp)ᵀ is packed from a zero-padded copy, so its rows are plain shifted windows
        // (no bounds test per element: this packing costs as much as the products at 32 or
        // 64 output channels).
        let (scratch, padded) = scratch.split_at_mut(gemm_scratch_len(self.c_out, n));
        let padded: &[f32] = match self.pad {
            0 => inp, // already its own padded copy
            _ => {
                let padded = &mut padded[..self.padded_len(h, w)];
                pad_planes(inp, h, w, self.pad, padded);
                padded
            }
        };
        gemm(
            isa,
            None,
            co.len(),
            k_total,
            n,
            |m0, mc, k0, kc, a| pack_a(isa, rows, n, m0, mc, k0, kc, a),
            |k0, kc, n0, nc, b| pack_b_t(isa, &geo, padded, k0, kc, n0, nc, b),
            Out::Dense(dweight),
            scratch,
        );
        Ok(())
    }
}

/// Σ x in f64 with 8 interleaved lanes (a fixed order), combined as a balanced tree.
fn sum_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v as f64;
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for &v in tail {
        s += v as f64;
    }
    s
}

/// [`pack_a`] of the transposed, flipped weight of the input gradient:
/// A[c, (o·k + ky')·k + kx'] = W[o, c, k−1−ky', k−1−kx'] for the rows c = row0 .. row0+mc.
#[allow(clippy::too_many_arguments)]
fn pack_a_flipped<W: Weight>(
    weight: &[W],
    c_in: usize,
    k: usize,
    row0: usize,
    mc: usize,
    k0: usize,
    kc: usize,
    a: &mut [f32],
) {
    let k2 = k * k;
    for (t, panel) in a.chunks_exact_mut(kc * MR).enumerate() {
        for i in 0..MR {
            let r = t * MR + i;
            if r >= mc {
                for kk in 0..kc {
                    panel[kk * MR + i] = 0.0;
                }
                continue;
            }
            // (o, rem) of depth k0 + kk, advanced without divisions (this runs once per
            // weight per sample, and at 8×8 maps it would otherwise rival the products).
            let (mut o, mut rem) = (k0 / k2, k0 % k2);
            for kk in 0..kc {
                let flipped = k2 - 1 - rem; // (k−1−ky')·k + (k−1−kx')
                panel[kk * MR + i] = weight[(o * c_in + row0 + r) * k2 + flipped].to_f32();
                rem += 1;
                if rem == k2 {
                    rem = 0;
                    o += 1;
                }
            }
        }
    }
}

/// `out` = each h × w plane of `inp` with `pad` zeros on every side ((h + 2·pad) × (w + 2·pad)).
fn pad_planes(inp: &[f32], h: usize, w: usize, pad: usize, out: &mut [f32]) {
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    for (src, dst) in inp.chunks_exact(h * w).zip(out.chunks_exact_mut(hp * wp)) {
        dst[..pad * wp].fill(0.0);
        dst[(pad + h) * wp..].fill(0.0);
        for (s, d) in src
            .chunks_exact(w)
            .zip(dst[pad * wp..].chunks_exact_mut(wp))
        {
            d[..pad].fill(0.0);
            d[pad..pad + w].copy_from_slice(s);
            d[pad + w..].fill(0.0);
        }
    }
}

/// [`pack_b`] of im2col(inp)ᵀ for the weight gradient: depth = output pixels p0 .. p0+pc,
/// columns = im2col rows r0 .. r0+rc:
/// b[(j/NR)·pc·NR + kk·NR + j%NR] = x[ci, oy·s + ky − pad, ox·s + kx − pad] for pixel
/// p0 + kk = (oy, ox) and row r0 + j = (ci, ky, kx) (0 in the padding and past rc), read from
/// `padded`, the input's planes zero-padded by `pad` ([`pad_planes`]). With SIMD and stride 1,
/// eight rows at a time are moved as 8 × 8 register transposes (a pure copy: same values).
#[allow(clippy::too_many_arguments)]
fn pack_b_t(
    isa: Isa,
    geo: &Geometry,
    padded: &[f32],
    p0: usize,
    pc: usize,
    r0: usize,
    rc: usize,
    b: &mut [f32],
) {
    let (k, s) = (geo.kernel, geo.stride);
    let wp = geo.w + 2 * geo.pad;
    let plane_len = (geo.h + 2 * geo.pad) * wp;
    // Where row j's window for output pixel (oy, ox) starts in `padded`.
    let origin = |j: usize| {
        let r = r0 + j;
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        ci * plane_len + ky * wp + kx
    };
    // The output row segments of the pixels p0 .. p0+pc: (first kk, oy, ox, length).
    let segments = || {
        let (mut oy, mut ox, mut kk) = (p0 / geo.ow, p0 % geo.ow, 0);
        core::iter::from_fn(move || {
            (kk < pc).then(|| {
                let len = (geo.ow - ox).min(pc - kk);
                let seg = (kk, oy, ox, len);
                (kk, ox, oy) = (kk + len, 0, oy + 1);
                seg
            })
        })
    };
    for j0 in (0..round_up(rc, NR)).step_by(8) {
        let base = (j0 / NR) * pc * NR + j0 % NR;
        #[cfg(target_arch = "x86_64")]
        if isa.is_simd() && s == 1 && j0 + 8 <= rc {
            let from: [usize; 8] = core::array::from_fn(|t| origin(j0 + t));
            for (kk, oy, ox, len) in segments() {
                let at = oy * wp + ox;
                let len8 = len / 8 * 8;
                let dst = &mut b[base + kk * NR..];
                // SAFETY: Isa::is_simd guarantees AVX2; every window holds len ≥ len8 values
                // (its row fits in the padded plane) and dst holds (len8 − 1)·NR + 8 values.
                unsafe {
                    let srcs = from.map(|f| padded[f + at..f + at + len].as_ptr());
                    avx2::transpose_rows(
                        srcs,
                        len8,
                        dst[..(len.max(1) - 1) * NR + 8].as_mut_ptr(),
                        NR,
                    );
                }
                for (t, &f) in from.iter().enumerate() {
                    for q in len8..len {
                        dst[q * NR + t] = padded[f + at + q];
                    }
                }
            }
            continue;
        }
        let _ = isa;
        for t in 0..8.min(round_up(rc, NR) - j0) {
            let j = j0 + t;
            if j >= rc {
                for kk in 0..pc {
                    b[base + t + kk * NR] = 0.0;
                }
                continue;
            }
            let from = origin(j);
            for (kk, oy, ox, len) in segments() {
                let src = &padded[from + oy * s * wp + ox * s..];
                let dst = &mut b[base + t + kk * NR..];
                for q in 0..len {
                    dst[q * NR] = src[q * s];
                }
            }
        }
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
    /// Input size as the convolution sees it (after dilation).
    h: usize,
    w: usize,
    ow: usize,
    /// Output pixels oh·ow (the GEMM's N).
    n: usize,
    /// Input dilation: the convolution sees the stored input with `dil − 1` zeros between
    /// neighbours (only the backward of a strided convolution uses dil > 1).
    dil: usize,
    /// Size of the stored input planes.
    real_h: usize,
    real_w: usize,
}

impl Geometry {
    fn k_total(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }
}

/// The forward's GEMM: out = bias + W[co, :]·im2col(inp)[:, px]; shapes were checked by the
/// caller.
#[allow(clippy::too_many_arguments)]
fn conv_gemm<W: Weight>(
    isa: Isa,
    geo: &Geometry,
    inp: &[f32],
    weight: &[W],
    bias: &[f32],
    co: core::ops::Range<usize>,
    px: core::ops::Range<usize>,
    out: Out,
    scratch: &mut [f32],
) {
    let k_total = geo.k_total();
    let row0 = co.start;
    // The running sums start at the bias (first term of every element's chain): the first K
    // block starts its registers there instead of a separate pass filling `out`.
    gemm(
        isa,
        Some(&bias[co.clone()]),
        co.len(),
        px.len(),
        k_total,
        |m0, mc, k0, kc, a| pack_a(isa, weight, k_total, row0 + m0, mc, k0, kc, a),
        |k0, kc, n0, nc, b| pack_b(geo, inp, k0, kc, px.start + n0, nc, b),
        out,
        scratch,
    );
}

/// The forward on the direct path: output rows `ys` of channels `co`, from the bias.
#[allow(clippy::too_many_arguments)]
fn direct_forward(
    isa: Isa,
    d: &Direct,
    inp: &[f32],
    weight: WeightsRef,
    bias: &[f32],
    co: core::ops::Range<usize>,
    ys: core::ops::Range<usize>,
    out: Out,
    scratch: &mut [f32],
) {
    let (k_total, row0, m) = (d.depth(), co.start, co.len());
    let bias = Some(&bias[co]);
    match weight {
        WeightsRef::F32(wt) => d.run(
            isa,
            m,
            bias,
            |m0, mc, k0, kc, a| pack_a(isa, wt, k_total, row0 + m0, mc, k0, kc, a),
            inp,
            ys,
            out,
            scratch,
        ),
        WeightsRef::F16(wt) => d.run(
            isa,
            m,
            bias,
            |m0, mc, k0, kc, a| pack_a(isa, wt, k_total, row0 + m0, mc, k0, kc, a),
            inp,
            ys,
            out,
            scratch,
        ),
    }
}

/// Scratch floats [`gemm`] needs for an m × n product of depth `depth`.
fn gemm_scratch_len(m: usize, depth: usize) -> usize {
    let kc = depth.clamp(1, KC);
    let mc = round_up(m.max(1), MR).min(MC_MAX);
    mc * kc + kc * NC + MR * NR
}

/// The blocked GEMM driver, shared by the forward and both backward products:
/// out[i, j] = init[i] + Σ_k A[i, k]·B[k, j] for an m × n `out` (row stride n), terms added in
/// k order onto `init[i]`, or onto the value already in `out` when `init` is `None`. `pack_a(m0, mc, k0, kc, a)` packs rows m0 .. m0+mc,
/// depth k0 .. k0+kc of A as [`pack_a`] does; `pack_b(k0, kc, n0, nc, b)` packs depth
/// k0 .. k0+kc, columns n0 .. n0+nc of B as [`pack_b`] does.
#[allow(clippy::too_many_arguments)]
fn gemm(
    isa: Isa,
    init: Option<&[f32]>,
    m: usize,
    n: usize,
    depth: usize,
    mut pack_a: impl FnMut(usize, usize, usize, usize, &mut [f32]),
    mut pack_b: impl FnMut(usize, usize, usize, usize, &mut [f32]),
    mut out: Out,
    scratch: &mut [f32],
) {
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
            pack_a(m0, mc, k0, kc, a_blk);
            for n0 in (0..n).step_by(NC) {
                let nc = NC.min(n - n0);
                let b_blk = &mut b_buf[..round_up(nc, NR) * kc];
                pack_b(k0, kc, n0, nc, b_blk);
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
                        let b = (b_pan, Packed);
                        let at = (n, i0, mr, nj, nr);
                        tile_product(isa, kc, a_pan, b, &mut out, at, tmp, start.as_ref());
                    }
                }
            }
        }
    }
}

/// The running sums a tile starts from: `init` rows i0 .. i0+mr in the first K block (zero
/// rows past mr), else `None` (the values in the output).
#[inline(always)]
fn first_terms(init: Option<&[f32]>, k0: usize, i0: usize, mr: usize) -> Option<[f32; MR]> {
    init.filter(|_| k0 == 0).map(|v| {
        let mut r = [0f32; MR];
        r[..mr].copy_from_slice(&v[i0..i0 + mr]);
        r
    })
}

/// The product of one A micro-panel and one B micro-panel (`b`: its floats and where its rows
/// lie) into the tile of `out` (row stride n) at rows i0 .. i0+mr, columns nj .. nj+nr: in
/// place for a full tile, else on a copy of the valid part in `tmp` (MR·NR floats).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tile_product<R: BRows>(
    isa: Isa,
    kc: usize,
    a_pan: &[f32],
    (b_pan, b_rows): (&[f32], R),
    out: &mut Out,
    (n, i0, mr, nj, nr): (usize, usize, usize, usize, usize),
    tmp: &mut [f32],
    start: Option<&[f32; MR]>,
) {
    if mr == MR && nr == NR {
        let mut c = out.tile(n, i0, nj);
        microkernel(isa, kc, a_pan, b_pan, b_rows, &mut c, start, (MR, NR));
    } else if let Some(mut c) = (nr == NR)
        .then(|| out.short_tile(n, i0, nj, mr, tmp))
        .flatten()
    {
        microkernel(isa, kc, a_pan, b_pan, b_rows, &mut c, start, (mr, NR));
    } else {
        for (i, t) in tmp.chunks_exact_mut(NR).take(mr).enumerate() {
            t[..nr].copy_from_slice(&out.row(n, i0 + i)[nj..nj + nr]);
        }
        let mut c = tile_of(tmp, NR, 0);
        microkernel(isa, kc, a_pan, b_pan, b_rows, &mut c, start, (mr, nr));
        for (i, t) in tmp.chunks_exact(NR).take(mr).enumerate() {
            out.row(n, i0 + i)[nj..nj + nr].copy_from_slice(&t[..nr]);
        }
    }
}

/// Where [`gemm`] writes its m × n result: one dense block (row stride n), one slice of
/// n floats per row (the rows of a pixel range of a larger map, see
/// [`Conv2d::forward_pixels`]), or rows `ld` floats apart (interleaved with other products:
/// the Winograd positions of `conv/winograd.rs`).
enum Out<'o, 'r> {
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
fn tile_with_spare<'s>(c: &'s mut [f32], ld: usize, mr: usize, spare: &'s mut [f32]) -> Tile<'s> {
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
    fn row(&mut self, n: usize, i: usize) -> &mut [f32] {
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

/// Packs W[row0 .. row0+mc, k0 .. k0+kc] as MR-row micro-panels, k-major inside a panel:
/// a[t·kc·MR + kk·MR + i] = W[row0 + t·MR + i, k0 + kk] (zero rows past mc).
#[allow(clippy::too_many_arguments)]
fn pack_a<W: Weight>(
    isa: Isa,
    weight: &[W],
    k_total: usize,
    row0: usize,
    mc: usize,
    k0: usize,
    kc: usize,
    a: &mut [f32],
) {
    for (t, panel) in a.chunks_exact_mut(kc * MR).enumerate() {
        let mut done = [0; MR]; // depth already packed, per row of this panel
        #[cfg(target_arch = "x86_64")]
        if let (true, Some(wf)) = (isa.is_simd(), W::as_f32(weight)) {
            // f32 rows: 8 × 8 and 4 × 8 register transposes (a pure copy) of the rows inside,
            // also in the last, ragged panel (32- and 64-channel products end in 8 or 4 rows).
            let inside = MR.min(mc.saturating_sub(t * MR));
            let kc8 = kc / 8 * 8;
            let row = |i: usize| wf[(row0 + t * MR + i) * k_total + k0..][..kc].as_ptr();
            let mut rows = 0;
            // SAFETY: AVX2 by Isa::is_simd; every row inside holds kc ≥ kc8 floats, and the
            // panel holds kc·MR ≥ (kc8 − 1)·MR + 12 floats.
            unsafe {
                let p = panel.as_mut_ptr();
                if kc8 > 0 && inside >= 8 {
                    avx2::transpose_rows(core::array::from_fn(row), kc8, p, MR);
                    rows = 8;
                }
                if kc8 > 0 && inside >= rows + 4 {
                    let four = core::array::from_fn(|i| row(rows + i));
                    avx2::transpose4_rows(four, kc8, p.add(rows), MR);
                    rows += 4;
                }
            }
            done[..rows].fill(kc8);
        }
        let _ = isa;
        for (i, &done) in done.iter().enumerate() {
            let r = t * MR + i;
            if r < mc {
                let src = &weight[(row0 + r) * k_total + k0..][..kc];
                for (kk, &v) in src.iter().enumerate().skip(done) {
                    panel[kk * MR + i] = v.to_f32();
                }
            } else {
                for kk in done..kc {
                    panel[kk * MR + i] = 0.0;
                }
            }
        }
    }
}

/// Packs rows k0 .. k0+kc, columns n0 .. n0+nc of the row-major `src` (row stride `ld`) as
/// NR-wide micro-panels: b[(j/NR)·kc·NR + kk·NR + j%NR] = src[k0 + kk, n0 + j] (zero past nc).
fn pack_rows(src: &[f32], ld: usize, k0: usize, kc: usize, n0: usize, nc: usize, b: &mut [f32]) {
    for (pi, panel) in b.chunks_exact_mut(kc * NR).enumerate() {
        let j0 = n0 + pi * NR;
        let width = NR.min(n0 + nc - j0);
        for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
            dst[..width].copy_from_slice(&src[(k0 + kk) * ld + j0..][..width]);
            dst[width..].fill(0.0);
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
    let plane_len = geo.real_h * geo.real_w;
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
            let x0 = run.ox * geo.stride + kx;
            if geo.dil == 1 {
                let src = &plane[iy as usize * geo.w..(iy as usize + 1) * geo.w];
                copy_row(src, dst, x0, geo.pad, geo.stride);
            } else {
                copy_row_dilated(geo, plane, iy as usize, dst, x0);
            }
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

/// [`copy_row`] from the dilated view of `plane` (row `iy` of the dilated input): element
/// (iy, ix) is stored at (iy/dil, ix/dil) when both divide, and is 0 otherwise.
fn copy_row_dilated(geo: &Geometry, plane: &[f32], iy: usize, dst: &mut [f32], x0: usize) {
    if !iy.is_multiple_of(geo.dil) || iy / geo.dil >= geo.real_h {
        dst.fill(0.0);
        return;
    }
    let src = &plane[(iy / geo.dil) * geo.real_w..][..geo.real_w];
    for (q, d) in dst.iter_mut().enumerate() {
        let ix = (x0 + q * geo.stride) as isize - geo.pad as isize;
        let (ix, ok) = (ix as usize, ix >= 0 && ix < geo.w as isize);
        *d = if ok && ix.is_multiple_of(geo.dil) && ix / geo.dil < geo.real_w {
            src[ix / geo.dil]
        } else {
            0.0
        };
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

/// The MR rows of one C tile.
type Tile<'c> = [&'c mut [f32; NR]; MR];

/// Where row k of a B micro-panel starts, in floats from its first value: a packed panel's
/// rows are dense ([`Packed`]); the direct path's are rows of a padded map at increasing
/// offsets (`&[u32]`, see `conv/direct.rs`).
trait BRows: Copy {
    /// Dense rows (the AVX-512 kernel takes only these).
    const PACKED: bool;
    /// The offsets of rows 0 .. kc, in order.
    fn offsets(self, kc: usize) -> impl Iterator<Item = usize>;
    /// Floats from the first value read to past the last one (rows 0 .. kc, NR each).
    fn reach(self, kc: usize) -> usize;
}

/// Row k at k·NR: a packed panel.
#[derive(Clone, Copy)]
struct Packed;

impl BRows for Packed {
    const PACKED: bool = true;

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
    const PACKED: bool = false;

    #[inline(always)]
    fn offsets(self, kc: usize) -> impl Iterator<Item = usize> {
        self[..kc].iter().map(|&o| o as usize)
    }

    fn reach(self, kc: usize) -> usize {
        debug_assert!(self[..kc].windows(2).all(|o| o[0] < o[1]));
        self[..kc].last().map_or(0, |&o| o as usize + NR)
    }
}

/// c[i][j] = s_i + Σ_kk a[kk·MR + i]·b[row(kk) + j] for an MR × NR tile, terms added in kk
/// order onto s_i = init[i], or onto the value in c when `init` is `None`. Only the first
/// `rows` rows and `cols` columns are needed (the others may be left anything): AVX2 then
/// skips whole sub-tiles (a column block of 16 tiles, as 8 × 8 maps give in Winograd form,
/// computes one half of the tile).
#[allow(clippy::too_many_arguments)]
#[inline]
fn microkernel<R: BRows>(
    isa: Isa,
    kc: usize,
    a: &[f32],
    b: &[f32],
    b_rows: R,
    c: &mut Tile,
    init: Option<&[f32; MR]>,
    (rows, cols): (usize, usize),
) {
    assert!(a.len() >= kc * MR && b.len() >= b_rows.reach(kc));
    match isa.0 {
        IsaKind::Portable => microkernel_portable(kc, a, b, b_rows, c, init),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an Avx512 Isa exists only after `enable_avx2_fma` found AVX-512F usable; the
        // slice lengths were checked above.
        IsaKind::Avx512 if R::PACKED => unsafe { avx512::microkernel(kc, a, b, c, init) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an Avx2Fma Isa exists only if the build targets AVX2+FMA or the host vouched
        // for the CPU through `enable_avx2_fma`, and an Avx512 one implies both; the slice
        // lengths were checked above. (AVX-512 runs the direct path's rows here: one FMA per
        // term either way, so the same bits.)
        IsaKind::Avx2Fma | IsaKind::Avx512 => unsafe {
            avx2::microkernel(kc, a, b, b_rows, c, init, (rows, cols))
        },
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

#[cfg(target_arch = "x86_64")]
mod avx2 {
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

    /// For q = 0, 8, … < len8: the 8 × 8 block srcs[t][q .. q+8] (t = 0..8) transposed into
    /// dst[(q + u)·stride + t] (u = 0..8): eight rows laid side by side, eight at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2; each srcs[t] points at ≥ len8 floats and dst at
    /// ≥ (len8 − 1)·stride + 8 (len8 a multiple of 8).
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose_rows(srcs: [*const f32; 8], len8: usize, dst: *mut f32, stride: usize) {
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
    pub unsafe fn transpose4_rows(
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
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Tile, MR, NR};
    use core::arch::x86_64::*;

    /// Whether the CPU has AVX-512F and the OS saves its registers (CPUID leaf 7 EBX bit 16;
    /// OSXSAVE, then XCR0 bits 1, 2, 5, 6, 7: SSE, AVX, opmask, ZMM0–15 upper, ZMM16–31).
    pub fn supported() -> bool {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86_64 CPU.
        let (l1, l7) = unsafe { (__cpuid(1), __cpuid_count(7, 0)) };
        let osxsave = l1.ecx & (1 << 27) != 0;
        // SAFETY: XGETBV is available when OSXSAVE is set (checked first).
        osxsave && l7.ebx & (1 << 16) != 0 && unsafe { xcr0() } & 0xE6 == 0xE6
    }

    #[target_feature(enable = "xsave")]
    unsafe fn xcr0() -> u64 {
        _xgetbv(0)
    }

    /// The 12 × 32 AVX-512 microkernel: 24 accumulators (two 16-lane vectors per row), per k
    /// two loads of B, twelve broadcasts of A and 24 fused multiply-adds (the same roundings
    /// as the AVX2 kernel).
    ///
    /// # Safety
    /// The CPU must support AVX-512F; a.len() ≥ kc·MR, b.len() ≥ kc·NR.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn microkernel(
        kc: usize,
        a: &[f32],
        b: &[f32],
        c: &mut Tile,
        init: Option<&[f32; MR]>,
    ) {
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

    /// Every path this CPU has: portable, AVX2+FMA, AVX-512F (tests enable the SIMD ones; the
    /// flags only ever turn on).
    pub(super) fn isas() -> Vec<Isa> {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: just detected.
            unsafe { enable_avx2_fma() };
        }
        Isa::available().collect()
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
    /// tiles wrapping output rows, K > KC (several K blocks), c_out > MC_MAX (several M blocks);
    /// the wide ones take the direct path ([`DIRECT_SHAPES`]).
    const SHAPES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
        DIRECT_SHAPES[0],
        DIRECT_SHAPES[1],
        DIRECT_SHAPES[2],
        DIRECT_SHAPES[3],
        (3, 5, 3, 1, 1, 7, 9),
        (4, 7, 3, 2, 1, 9, 7),
        (2, 6, 3, 1, 0, 6, 5),
        (3, 4, 3, 2, 0, 8, 8),
        (2, 3, 1, 1, 0, 5, 6),
        (3, 4, 1, 2, 0, 7, 7),
        (5, 13, 3, 1, 1, 3, 17),
        (45, 9, 3, 1, 1, 6, 6),
        (2, 270, 3, 1, 1, 4, 5),
        (1, 1, 3, 1, 1, 1, 1),
    ];
    const _: () = assert!(45 * 9 > KC && 270 > MC_MAX);

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
        // Every SIMD path (AVX2 and AVX-512 alike) rounds once per fused multiply-add, so all
        // agree bit for bit with the fused formula and so with each other.
        for isa in isas().into_iter().filter(|i| i.is_simd()) {
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
                assert_eq!(got, want, "{isa:?} shape {:?}", (ci, co, k, s, p, h, w));
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_detection_agrees_with_std() {
        assert_eq!(avx512::supported(), is_x86_feature_detected!("avx512f"));
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
        for isa in isas() {
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
        for isa in isas() {
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

    /// Shapes the direct path takes (wide maps): pad 1 and 0, 1×1, several K blocks, ragged
    /// output channels.
    pub(super) const DIRECT_SHAPES: [(usize, usize, usize, usize, usize, usize, usize); 4] = [
        (3, 5, 3, 1, 1, 4, 30),
        (45, 13, 3, 1, 1, 3, 30),
        (5, 7, 1, 1, 0, 2, 32),
        (3, 4, 3, 1, 0, 10, 34),
    ];

    #[test]
    fn direct_and_packed_paths_give_the_same_bits() {
        for &(ci, co, k, s, p, h, w) in &DIRECT_SHAPES {
            let conv = Conv2d {
                c_in: ci,
                c_out: co,
                kernel: k,
                stride: s,
                pad: p,
            };
            assert!(conv.direct(h, w).is_some(), "{:?}", (ci, co, h, w));
            let (oh, ow) = conv.out_size(h, w);
            let x = data(ci * h * w, 13);
            let wt = data(co * ci * k * k, 14);
            let b = data(co, 15);
            let packed_len = gemm_scratch_len(co, conv.k_total());
            for isa in isas() {
                for co_r in [0..co, 1..co - 1] {
                    let direct = run(isa, &conv, &x, h, w, WeightsRef::F32(&wt), &b, co_r.clone());
                    let mut out = vec![f32::NAN; co_r.len() * oh * ow];
                    let mut s = vec![f32::NAN; packed_len];
                    let wr = WeightsRef::F32(&wt);
                    conv.forward_with(isa, &x, h, w, wr, &b, co_r.clone(), &mut out, &mut s)
                        .unwrap();
                    assert_eq!(direct, out, "{isa:?} {:?} {co_r:?}", (ci, co, k, p, h, w));
                }
            }
        }
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
            for isa in isas() {
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
    fn every_pixel_split_gives_the_same_bits() {
        for &(ci, co, k, s, p, h, w) in SHAPES {
            let conv = Conv2d {
                c_in: ci,
                c_out: co,
                kernel: k,
                stride: s,
                pad: p,
            };
            let (oh, ow) = conv.out_size(h, w);
            let n = oh * ow;
            let x = data(ci * h * w, 16);
            let w16: Vec<f16> = data(co * ci * k * k, 17)
                .iter()
                .map(|&v| f16::from_f32(v))
                .collect();
            let b = data(co, 18);
            for wt in [
                WeightsRef::F16(&w16),
                WeightsRef::F32(&data(co * ci * k * k, 17)),
            ] {
                for isa in isas() {
                    let whole = run(isa, &conv, &x, h, w, wt, &b, 0..co);
                    // Cuts inside a column tile, at tile edges and inside an output row, and
                    // at row starts (the direct path's row ranges).
                    for cuts in [
                        &[1usize][..],
                        &[n / 2],
                        &[3, NR, NR + 5],
                        &[NC - 1, NC + NR],
                        &[ow, 3 * ow],
                    ] {
                        let mut got = vec![f32::NAN; co * n];
                        let mut bounds: Vec<usize> =
                            cuts.iter().copied().filter(|&c| c < n).collect();
                        bounds.insert(0, 0);
                        bounds.push(n);
                        for r in bounds.windows(2) {
                            let mut rows: Vec<&mut [f32]> = got
                                .chunks_exact_mut(n)
                                .map(|row| &mut row[r[0]..r[1]])
                                .collect();
                            let mut scratch = vec![f32::NAN; conv.scratch_len(h, w)];
                            conv.forward_pixels(
                                isa,
                                &x,
                                h,
                                w,
                                wt,
                                &b,
                                r[0]..r[1],
                                &mut rows,
                                &mut scratch,
                            )
                            .unwrap();
                        }
                        assert_eq!(got, whole, "{isa:?} {:?} cuts {cuts:?}", (ci, co, k, s, p));
                    }
                }
            }
        }
    }

    #[test]
    fn forward_pixels_rejects_bad_rows() {
        let c = Conv2d {
            c_in: 2,
            c_out: 3,
            kernel: 3,
            stride: 1,
            pad: 1,
        };
        let (x, wt, b) = (vec![0f32; 2 * 16], vec![0f32; 3 * 2 * 9], [0f32; 3]);
        let mut s = vec![0f32; c.scratch_len(4, 4)];
        let mut out = [0f32; 3 * 16];
        let wr = WeightsRef::F32(&wt);
        let mut rows: Vec<&mut [f32]> = out.chunks_exact_mut(16).map(|r| &mut r[4..12]).collect();
        assert!(c
            .forward_pixels(Isa::PORTABLE, &x, 4, 4, wr, &b, 4..12, &mut rows, &mut s)
            .is_ok());
        assert!(c
            .forward_pixels(Isa::PORTABLE, &x, 4, 4, wr, &b, 4..11, &mut rows, &mut s)
            .is_err());
        assert!(c
            .forward_pixels(Isa::PORTABLE, &x, 4, 4, wr, &b, 12..20, &mut rows, &mut s)
            .is_err());
        assert!(c
            .forward_pixels(
                Isa::PORTABLE,
                &x,
                4,
                4,
                wr,
                &b,
                4..12,
                &mut rows[1..],
                &mut s
            )
            .is_err());
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
            for isa in isas() {
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
        // Degenerate layers size their scratch without panicking (the calls then fail).
        for bad in [
            Conv2d {
                c_in: 0,
                stride: 1,
                ..c
            },
            Conv2d {
                c_out: 0,
                stride: 1,
                ..c
            },
            Conv2d {
                kernel: 0,
                stride: 1,
                ..c
            },
        ] {
            let _ = (bad.scratch_len(8, 32), bad.backward_scratch_len(8, 32));
        }
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

#[cfg(test)]
mod backward_tests {
    use super::*;
    use crate::gradcheck::{assert_grad, data, dot64, fd_grad, wide};
    use half::f16;

    use super::tests::isas;

    /// x[c, iy, ix] with zero padding (signed indices).
    fn at<T: Copy + Default>(x: &[T], c: usize, h: usize, w: usize, iy: isize, ix: isize) -> T {
        if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
            x[(c * h + iy as usize) * w + ix as usize]
        } else {
            T::default()
        }
    }

    /// The forward from the definition, in f64.
    fn conv64(c: &Conv2d, x: &[f64], h: usize, w: usize, wt: &[f64], b: &[f64]) -> Vec<f64> {
        let (oh, ow, k) = (c.out_size(h, w).0, c.out_size(h, w).1, c.kernel);
        let mut out = vec![0f64; c.c_out * oh * ow];
        for o in 0..c.c_out {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = b[o];
                    for ci in 0..c.c_in {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * c.stride + ky) as isize - c.pad as isize;
                                let ix = (ox * c.stride + kx) as isize - c.pad as isize;
                                acc += wt[((o * c.c_in + ci) * k + ky) * k + kx]
                                    * at(x, ci, h, w, iy, ix);
                            }
                        }
                    }
                    out[(o * oh + oy) * ow + ox] = acc;
                }
            }
        }
        out
    }

    /// (c_in, c_out, kernel, stride, pad, h, w): 3×3 and 1×1, pad 1/0, stride 1/2, odd sizes,
    /// a depth > KC in both products (c_out·9 > KC and oh·ow > KC), c_in > MC_MAX.
    const SHAPES: &[(usize, usize, usize, usize, usize, usize, usize)] = &[
        (3, 5, 3, 1, 1, 7, 9),
        (4, 7, 3, 2, 1, 9, 7),
        (4, 3, 3, 2, 1, 8, 8),
        (2, 6, 3, 1, 0, 6, 5),
        (3, 4, 3, 2, 0, 8, 7),
        (2, 3, 1, 1, 0, 5, 6),
        (3, 4, 1, 2, 0, 7, 7),
        (5, 45, 3, 1, 1, 3, 17),
        (3, 2, 3, 1, 1, 21, 19),
        (270, 2, 1, 1, 0, 3, 4),
        (1, 1, 3, 1, 1, 1, 1),
        // dW's 8-row transposes: full groups, a ragged group, 16-wide rows plus a tail.
        (11, 6, 3, 1, 1, 5, 19),
        (9, 5, 1, 1, 0, 4, 16),
        // A full 12-row panel of flipped weights with a depth tail (36 = 4·8 + 4).
        (16, 4, 3, 1, 1, 6, 10),
        // Wide maps: the input gradient takes the direct path (several K blocks with 13
        // channels: 13·9 < KC, so 45 output channels).
        super::tests::DIRECT_SHAPES[0],
        super::tests::DIRECT_SHAPES[2],
        super::tests::DIRECT_SHAPES[3],
        (3, 45, 3, 1, 1, 2, 30),
    ];
    const _: () = assert!(45 * 9 > KC && 21 * 19 > KC && 270 > MC_MAX);

    fn conv_of(
        &(ci, co, k, s, p, _, _): &(usize, usize, usize, usize, usize, usize, usize),
    ) -> Conv2d {
        Conv2d {
            c_in: ci,
            c_out: co,
            kernel: k,
            stride: s,
            pad: p,
        }
    }

    struct Grads {
        dx: Vec<f32>,
        dw: Vec<f32>,
        db: Vec<f32>,
    }

    /// Backward over the whole layer, starting from `init` in every gradient buffer.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        isa: Isa,
        c: &Conv2d,
        x: &[f32],
        h: usize,
        w: usize,
        wt: &[f32],
        dout: &[f32],
        init: f32,
    ) -> Grads {
        let mut g = Grads {
            dx: vec![init; x.len()],
            dw: vec![init; wt.len()],
            db: vec![init; c.c_out],
        };
        let mut s = vec![f32::NAN; c.backward_scratch_len(h, w)];
        let wr = WeightsRef::F32(wt);
        c.backward_input(isa, &mut g.dx, dout, wr, h, w, 0..c.c_in, &mut s)
            .unwrap();
        c.backward_params(isa, &mut g.dw, &mut g.db, dout, x, h, w, 0..c.c_out, &mut s)
            .unwrap();
        g
    }

    #[test]
    fn gradients_match_finite_differences_of_f64_forward() {
        for shape in SHAPES {
            let c = conv_of(shape);
            let (h, w) = (shape.5, shape.6);
            let (oh, ow) = c.out_size(h, w);
            let k2 = c.kernel * c.kernel;
            let x = data(c.c_in * h * w, 1);
            let wt = data(c.c_out * c.c_in * k2, 2);
            let b = data(c.c_out, 3);
            let r = data(c.c_out * oh * ow, 4);
            let (x64, w64, b64) = (wide(&x), wide(&wt), wide(&b));
            let want_dx = fd_grad(&x64, 1e-3, |v| dot64(&r, &conv64(&c, v, h, w, &w64, &b64)));
            let want_dw = fd_grad(&w64, 1e-3, |v| dot64(&r, &conv64(&c, &x64, h, w, v, &b64)));
            let want_db = fd_grad(&b64, 1e-3, |v| dot64(&r, &conv64(&c, &x64, h, w, &w64, v)));
            for isa in isas() {
                let g = backward(isa, &c, &x, h, w, &wt, &r, 0.0);
                let what = format!("{isa:?} {shape:?}");
                assert_grad(&g.dx, &want_dx, 1e-5, &format!("dx {what}"));
                assert_grad(&g.dw, &want_dw, 1e-5, &format!("dw {what}"));
                assert_grad(&g.db, &want_db, 1e-6, &format!("db {what}"));
            }
        }
    }

    /// The documented term orders, with `step(acc, a, b)` = acc + a·b (portable) or
    /// fma(a, b, acc) (SIMD).
    #[allow(clippy::too_many_arguments)]
    fn reference_orders(
        c: &Conv2d,
        x: &[f32],
        h: usize,
        w: usize,
        wt: &[f32],
        dout: &[f32],
        init: f32,
        step: impl Fn(f32, f32, f32) -> f32,
    ) -> (Vec<f32>, Vec<f32>) {
        let (oh, ow) = c.out_size(h, w);
        let k = c.kernel;
        let (s, p) = (c.stride as isize, c.pad as isize);
        let mut dx = vec![init; x.len()];
        for ci in 0..c.c_in {
            for y in 0..h {
                for xx in 0..w {
                    let mut acc = init;
                    let tap = |ky: usize, kx: usize| {
                        let (ny, nx) =
                            (y as isize + p - ky as isize, xx as isize + p - kx as isize);
                        let hit = ny % s == 0 && nx % s == 0 && ny >= 0 && nx >= 0;
                        let hit = hit && ((ny / s) as usize) < oh && ((nx / s) as usize) < ow;
                        (hit, ny / s, nx / s)
                    };
                    let w_at =
                        |o: usize, ky: usize, kx: usize| wt[((o * c.c_in + ci) * k + ky) * k + kx];
                    if c.stride == 1 {
                        // One chain over (o, flipped taps), the transposed convolution's GEMM.
                        for o in 0..c.c_out {
                            for ky in (0..k).rev() {
                                for kx in (0..k).rev() {
                                    let (_, ny, nx) = tap(ky, kx);
                                    let d = at(dout, o, oh, ow, ny, nx);
                                    acc = step(acc, w_at(o, ky, kx), d);
                                }
                            }
                        }
                    } else {
                        // Per tap (in order) that reaches the pixel, a chain over o from 0
                        // (the GEMM into columns), then added on (col2im).
                        for ky in 0..k {
                            for kx in 0..k {
                                let (hit, ny, nx) = tap(ky, kx);
                                if hit {
                                    let mut col = 0.0;
                                    for o in 0..c.c_out {
                                        let d = at(dout, o, oh, ow, ny, nx);
                                        col = step(col, w_at(o, ky, kx), d);
                                    }
                                    acc += col;
                                }
                            }
                        }
                    }
                    dx[(ci * h + y) * w + xx] = acc;
                }
            }
        }
        let mut dw = vec![init; wt.len()];
        for o in 0..c.c_out {
            for ci in 0..c.c_in {
                for ky in 0..k {
                    for kx in 0..k {
                        let mut acc = init;
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let iy = (oy * c.stride + ky) as isize - p;
                                let ix = (ox * c.stride + kx) as isize - p;
                                acc = step(
                                    acc,
                                    dout[(o * oh + oy) * ow + ox],
                                    at(x, ci, h, w, iy, ix),
                                );
                            }
                        }
                        dw[((o * c.c_in + ci) * k + ky) * k + kx] = acc;
                    }
                }
            }
        }
        (dx, dw)
    }

    #[test]
    fn bit_exact_to_documented_term_order_and_accumulate() {
        for shape in SHAPES {
            let c = conv_of(shape);
            let (h, w) = (shape.5, shape.6);
            let (oh, ow) = c.out_size(h, w);
            let x = data(c.c_in * h * w, 5);
            let wt = data(c.c_out * c.c_in * c.kernel * c.kernel, 6);
            let dout = data(c.c_out * oh * ow, 7);
            for isa in isas() {
                let step = move |acc: f32, a: f32, b: f32| {
                    if isa.is_simd() {
                        a.mul_add(b, acc)
                    } else {
                        acc + a * b
                    }
                };
                // Starting from 0.5 checks that gradients accumulate onto the buffer.
                let (dx, dw) = reference_orders(&c, &x, h, w, &wt, &dout, 0.5, step);
                let g = backward(isa, &c, &x, h, w, &wt, &dout, 0.5);
                assert_eq!(g.dx, dx, "dx {isa:?} {shape:?}");
                assert_eq!(g.dw, dw, "dw {isa:?} {shape:?}");
            }
        }
    }

    /// The strided input gradient's GEMM split into row blocks (30·9 = 270 rows > MC_MAX) and
    /// depth blocks (400 output channels > KC) keeps the documented order (too large for the
    /// finite-difference tests that run over SHAPES).
    #[test]
    fn strided_input_gradient_in_blocks_keeps_the_term_order() {
        let shape = (30, 400, 3, 2, 1, 5, 6);
        let c = conv_of(&shape);
        let (h, w) = (shape.5, shape.6);
        let (oh, ow) = c.out_size(h, w);
        let x = data(c.c_in * h * w, 5);
        let wt = data(c.c_out * c.c_in * 9, 6);
        let dout = data(c.c_out * oh * ow, 7);
        for isa in isas() {
            let step = move |acc: f32, a: f32, b: f32| match isa.is_simd() {
                true => a.mul_add(b, acc),
                false => acc + a * b,
            };
            let (dx, _) = reference_orders(&c, &x, h, w, &wt, &dout, 0.5, step);
            assert_eq!(
                backward(isa, &c, &x, h, w, &wt, &dout, 0.5).dx,
                dx,
                "{isa:?}"
            );
        }
    }

    #[test]
    fn every_split_gives_the_same_bits() {
        for shape in SHAPES {
            let c = conv_of(shape);
            let (h, w) = (shape.5, shape.6);
            let (oh, ow) = c.out_size(h, w);
            let kk = c.c_in * c.kernel * c.kernel;
            let x = data(c.c_in * h * w, 8);
            let wt = data(c.c_out * kk, 9);
            let dout = data(c.c_out * oh * ow, 10);
            let mut s = vec![0f32; c.backward_scratch_len(h, w)];
            for isa in isas() {
                let whole = backward(isa, &c, &x, h, w, &wt, &dout, 0.25);
                for cuts in [&[1usize][..], &[2, 3], &[1, 7, 100, 193]] {
                    let bounds = |n: usize| {
                        let mut b: Vec<usize> = cuts.iter().copied().filter(|&v| v < n).collect();
                        b.insert(0, 0);
                        b.push(n);
                        b
                    };
                    let mut dx = vec![0.25f32; x.len()];
                    for r in bounds(c.c_in).windows(2) {
                        let part = &mut dx[r[0] * h * w..r[1] * h * w];
                        c.backward_input(
                            isa,
                            part,
                            &dout,
                            WeightsRef::F32(&wt),
                            h,
                            w,
                            r[0]..r[1],
                            &mut s,
                        )
                        .unwrap();
                    }
                    assert_eq!(dx, whole.dx, "dx {isa:?} {shape:?} {cuts:?}");
                    // The pre-flipped weight gives the same bits for every split.
                    let mut flipped = vec![0f32; c.flipped_len()];
                    c.flip_weights(WeightsRef::F32(&wt), &mut flipped).unwrap();
                    let mut dx = vec![0.25f32; x.len()];
                    for r in bounds(c.c_in).windows(2) {
                        let part = &mut dx[r[0] * h * w..r[1] * h * w];
                        c.backward_input_flipped(
                            isa,
                            part,
                            &dout,
                            &flipped,
                            h,
                            w,
                            r[0]..r[1],
                            &mut s,
                        )
                        .unwrap();
                    }
                    assert_eq!(dx, whole.dx, "flipped dx {isa:?} {shape:?} {cuts:?}");
                    let (mut dw, mut db) = (vec![0.25f32; wt.len()], vec![0.25f32; c.c_out]);
                    for r in bounds(c.c_out).windows(2) {
                        c.backward_params(
                            isa,
                            &mut dw[r[0] * kk..r[1] * kk],
                            &mut db[r[0]..r[1]],
                            &dout,
                            &x,
                            h,
                            w,
                            r[0]..r[1],
                            &mut s,
                        )
                        .unwrap();
                    }
                    assert_eq!(dw, whole.dw, "dw {isa:?} {shape:?} {cuts:?}");
                    assert_eq!(db, whole.db, "db {isa:?} {shape:?} {cuts:?}");
                }
            }
        }
    }

    #[test]
    fn input_gradient_direct_and_packed_paths_give_the_same_bits() {
        let mut direct_shapes = 0;
        for shape in SHAPES {
            let c = conv_of(shape);
            let (h, w) = (shape.5, shape.6);
            if c.direct_input(h, w).is_none() {
                continue;
            }
            direct_shapes += 1;
            let (oh, ow) = c.out_size(h, w);
            let wt = data(c.c_out * c.c_in * c.kernel * c.kernel, 16);
            let dout = data(c.c_out * oh * ow, 17);
            for isa in isas() {
                for ci in [0..c.c_in, 1..c.c_in] {
                    let mut both = [
                        vec![0.5f32; ci.len() * h * w],
                        vec![0.5f32; ci.len() * h * w],
                    ];
                    let lens = [c.backward_scratch_len(h, w), c.backward_packed_len(h, w)];
                    for (dx, len) in both.iter_mut().zip(lens) {
                        let mut s = vec![f32::NAN; len];
                        let wr = WeightsRef::F32(&wt);
                        c.backward_input(isa, dx, &dout, wr, h, w, ci.clone(), &mut s)
                            .unwrap();
                    }
                    assert_eq!(both[0], both[1], "{isa:?} {shape:?} {ci:?}");
                }
            }
        }
        assert!(direct_shapes >= 3);
    }

    #[test]
    fn f16_weights_and_errors() {
        let c = conv_of(&SHAPES[0]);
        let (h, w) = (7, 9);
        let x = data(c.c_in * h * w, 11);
        let w16: Vec<f16> = data(c.c_out * c.c_in * 9, 12)
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let w32: Vec<f32> = w16.iter().map(|v| v.to_f32()).collect();
        let dout = data(c.c_out * h * w, 13);
        let mut s = vec![0f32; c.backward_scratch_len(h, w)];
        let (mut a, mut b) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        c.backward_input(
            Isa::PORTABLE,
            &mut a,
            &dout,
            WeightsRef::F16(&w16),
            h,
            w,
            0..3,
            &mut s,
        )
        .unwrap();
        c.backward_input(
            Isa::PORTABLE,
            &mut b,
            &dout,
            WeightsRef::F32(&w32),
            h,
            w,
            0..3,
            &mut s,
        )
        .unwrap();
        assert_eq!(a, b);
        let wr = WeightsRef::F32(&w32);
        let p = Isa::PORTABLE;
        // f16 weights flipped (widened once) give the same bits as the f32 values.
        let mut flipped = vec![0f32; c.flipped_len()];
        c.flip_weights(WeightsRef::F16(&w16), &mut flipped).unwrap();
        let mut f = vec![0f32; x.len()];
        c.backward_input_flipped(p, &mut f, &dout, &flipped, h, w, 0..3, &mut s)
            .unwrap();
        assert_eq!(f, b);
        assert!(c
            .backward_input_flipped(p, &mut f, &dout, &flipped[1..], h, w, 0..3, &mut s)
            .is_err());
        assert!(c.flip_weights(wr, &mut flipped[1..]).is_err());
        assert!(c
            .flip_weights(WeightsRef::F32(&w32[1..]), &mut flipped)
            .is_err());
        assert!(c
            .backward_input(p, &mut a, &dout[1..], wr, h, w, 0..3, &mut s)
            .is_err());
        assert!(c
            .backward_input(p, &mut a, &dout, wr, h, w, 0..4, &mut s)
            .is_err());
        assert!(c
            .backward_input(p, &mut a[1..], &dout, wr, h, w, 0..3, &mut s)
            .is_err());
        assert!(c
            .backward_input(
                p,
                &mut a,
                &dout,
                WeightsRef::F32(&w32[1..]),
                h,
                w,
                0..3,
                &mut s
            )
            .is_err());
        assert!(c
            .backward_input(p, &mut a, &dout, wr, h, w, 0..3, &mut s[1..])
            .is_err());
        let big_pad = Conv2d { pad: 3, ..c };
        let (oh, ow) = big_pad.out_size(h, w);
        let d2 = vec![0f32; c.c_out * oh * ow];
        assert!(big_pad
            .backward_input(p, &mut a, &d2, wr, h, w, 0..3, &mut s)
            .is_err());
        let (mut dw, mut db) = (vec![0f32; w32.len()], vec![0f32; c.c_out]);
        assert!(c
            .backward_params(p, &mut dw, &mut db, &dout, &x, h, w, 0..5, &mut s)
            .is_ok());
        assert!(c
            .backward_params(p, &mut dw, &mut db[1..], &dout, &x, h, w, 0..5, &mut s)
            .is_err());
        assert!(c
            .backward_params(p, &mut dw[1..], &mut db, &dout, &x, h, w, 0..5, &mut s)
            .is_err());
        assert!(c
            .backward_params(p, &mut dw, &mut db, &dout, &x[1..], h, w, 0..5, &mut s)
            .is_err());
        assert!(c
            .backward_params(p, &mut dw, &mut db, &dout, &x, h, w, 0..6, &mut s)
            .is_err());
    }
}

/// Throughput of one convolution layer, by default the ADM's dominant 128→128 3×3 at 256×256:
/// `cargo test -p tweedie-kernels --release conv_throughput -- --ignored --nocapture`, with
/// CONV_SHAPE="c_in,c_out,kernel,size", CONV_THREADS=n (output channels split evenly, as the
/// host does for maps with fewer pixels than twice the channels), CONV_REPS=n (default 5) and
/// CONV_SIMD_ONLY=1 (skip the slow portable path). Prints wall and process CPU time per run
/// (CPU time is the steadier measure on a shared machine).
#[cfg(test)]
mod timing {
    use super::*;

    /// CPU time of this process so far (ns), from /proc (0 where unavailable): a measure that
    /// a busy, shared machine disturbs less than wall time.
    fn cpu_ns() -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the comm field.
        (ticks(11) + ticks(12)) * 10_000_000
    }

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
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: just detected.
            unsafe { enable_avx2_fma() };
        }
        let simd_only = std::env::var("CONV_SIMD_ONLY").is_ok();
        let isas: Vec<Isa> = Isa::available()
            .filter(|i| i.is_simd() || !simd_only)
            .collect();
        let per = co.div_ceil(threads);
        let reps: usize = env("CONV_REPS", "5").parse().unwrap();
        for isa in isas {
            for rep in 0..reps {
                let t0 = std::time::Instant::now();
                let cpu0 = cpu_ns();
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
                let cpu = (cpu_ns() - cpu0) as f64 * 1e-9;
                println!(
                    "{isa:?} {ci}->{co} k{k} {size}x{size} {threads} thread(s) rep {rep}: {dt:.4} s, {:.1} GFLOP/s; {cpu:.4} s of CPU, {:.1} GFLOP/s per CPU second",
                    flops / dt / 1e9,
                    flops / cpu / 1e9
                );
            }
        }
    }

    /// Forward, backward_input and backward_params of one 3×3 layer (default 128→128 at
    /// 32×32, a training-size map), one thread:
    /// `cargo test -p tweedie-kernels --release conv_backward_throughput -- --ignored --nocapture`,
    /// CONV_SHAPE="c_in,c_out,kernel,size" as above.
    #[test]
    #[ignore]
    fn conv_backward_throughput() {
        let shape: Vec<usize> = env("CONV_SHAPE", "128,128,3,32")
            .split(',')
            .map(|v| v.trim().parse().unwrap())
            .collect();
        let (ci, co, k, size) = (shape[0], shape[1], shape[2], shape[3]);
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
        let mut dx = vec![0f32; ci * h * w];
        let (mut dw, mut db) = (vec![0f32; wt.len()], vec![0f32; co]);
        let mut s = vec![0f32; conv.scratch_len(h, w).max(conv.backward_scratch_len(h, w))];
        let flops = 2.0 * (co * ci * k * k * h * w) as f64;
        let mut isas = vec![Isa::PORTABLE];
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: just detected.
            unsafe { enable_avx2_fma() };
            isas.push(Isa::detected());
        }
        let wr = WeightsRef::F32(&wt);
        for isa in isas {
            for rep in 0..3 {
                let t0 = std::time::Instant::now();
                conv.forward_with(isa, &x, h, w, wr, &b, 0..co, &mut out, &mut s)
                    .unwrap();
                let t1 = std::time::Instant::now();
                conv.backward_input(isa, &mut dx, &out, wr, h, w, 0..ci, &mut s)
                    .unwrap();
                let t2 = std::time::Instant::now();
                conv.backward_params(isa, &mut dw, &mut db, &out, &x, h, w, 0..co, &mut s)
                    .unwrap();
                let t3 = std::time::Instant::now();
                let g = |a: std::time::Instant, b: std::time::Instant| {
                    flops / (b - a).as_secs_f64() / 1e9
                };
                println!(
                    "{isa:?} {ci}->{co} k{k} {size}x{size} rep {rep}: forward {:.1}, backward_input {:.1}, backward_params {:.1} GFLOP/s",
                    g(t0, t1),
                    g(t1, t2),
                    g(t2, t3)
                );
            }
        }
    }
}
