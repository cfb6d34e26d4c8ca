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
//!
//! Where each part lives: this file is the [`Conv2d`] layer (shapes, scratch sizes, checks,
//! forward entry points); `gemm.rs` the blocked GEMM driver and its block sizes; `pack.rs` the
//! packing of weight rows and im2col columns; `microkernel.rs` (with `avx2.rs`, `avx512.rs`)
//! the MR × NR register tiles; `transpose.rs` the AVX2 register transposes the packers use;
//! `direct.rs` the small-map path; `backward.rs` the input and weight gradients (with
//! `strided.rs` for strides > 1); `winograd/` the Winograd form ([`Winograd`]).

use crate::{check_len, check_min_len, check_range, Isa, KernelError, Weight, WeightsRef};

mod backward;
mod direct;
mod gemm;
mod microkernel;
mod pack;
mod strided;
#[cfg(target_arch = "x86_64")]
mod transpose;
mod winograd;
use direct::Direct;
use gemm::{gemm, gemm_scratch_len, Out};
pub use gemm::{MR, NR};
use pack::{pack_a, pack_b, Geometry};
pub use winograd::Winograd;

/// Most output rows (channels) of a product the direct path takes: every packed im2col value
/// serves all output rows, so wide layers amortise the packing, and the direct path's extra
/// columns (6–12 % more products) would cost them more than it saves.
const DIRECT_MAX_ROWS: usize = 128;

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

#[cfg(test)]
mod tests;
