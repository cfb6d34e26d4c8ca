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
use gemm::{gemm, gemm_scratch_len, Block, Lhs, Out};
pub use gemm::{MR, NR};
use pack::{pack_a, pack_b, Geometry};
pub use winograd::Winograd;

/// Most output rows (channels) of a product the direct path takes: every packed im2col value
/// serves all output rows, so wide layers amortise the packing, and the direct path's extra
/// columns (6–12 % more products) would cost them more than it saves.
const DIRECT_MAX_ROWS: usize = 128;

/// Input planes with their size: `data` holds the layer's channels of h × w floats each,
/// channel-major (`[c, h, w]`).
#[derive(Clone, Copy, Debug)]
pub struct Map<'a> {
    /// The planes.
    pub data: &'a [f32],
    /// Rows per plane.
    pub h: usize,
    /// Columns per plane.
    pub w: usize,
}

impl<'a> Map<'a> {
    /// `data` as planes of h × w.
    pub fn new(data: &'a [f32], h: usize, w: usize) -> Map<'a> {
        Map { data, h, w }
    }
}

/// Planes a call writes (or accumulates into), with their size, as [`Map`].
#[derive(Debug)]
pub struct MapMut<'a> {
    /// The planes.
    pub data: &'a mut [f32],
    /// Rows per plane.
    pub h: usize,
    /// Columns per plane.
    pub w: usize,
}

impl<'a> MapMut<'a> {
    /// `data` as planes of h × w.
    pub fn new(data: &'a mut [f32], h: usize, w: usize) -> MapMut<'a> {
        MapMut { data, h, w }
    }
}

/// A convolution's parameters as its kernel reads them: the weight (`W`: [`WeightsRef`] in
/// PyTorch's layout [c_out, c_in, k, k] for [`Conv2d`]; the transformed weights for
/// [`Winograd::forward_pixels`]) and the bias `[c_out]`.
#[derive(Clone, Copy, Debug)]
pub struct ConvParams<'a, W = WeightsRef<'a>> {
    /// The weight.
    pub weight: W,
    /// The bias.
    pub bias: &'a [f32],
}

/// The parameter gradients a convolution's backward accumulates (`+=`) into.
#[derive(Debug)]
pub struct ConvGrads<'a> {
    /// ∂L/∂W (the rows of the call's output channels; transformed for
    /// [`Winograd::backward_params_transformed`]).
    pub dweight: &'a mut [f32],
    /// ∂L/∂bias (the call's output channels).
    pub dbias: &'a mut [f32],
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

    /// out = conv(x) + bias for the output channels `co` (`out.len() == co.len()·oh·ow`),
    /// with PyTorch semantics (cross-correlation, weight [c_out, c_in, k, k], bias `[c_out]`),
    /// using the microkernel chosen by [`Isa::detected`].
    pub fn forward(
        &self,
        x: Map,
        p: ConvParams,
        co: core::ops::Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        self.forward_with(Isa::detected(), x, p, co, out, scratch)
    }

    /// [`Conv2d::forward`] with an explicit microkernel (all threads of one layer must use the
    /// same `isa` for split-invariant results).
    pub fn forward_with(
        &self,
        isa: Isa,
        x: Map,
        p: ConvParams,
        co: core::ops::Range<usize>,
        out: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let geo = self.check_forward(x, &p, scratch)?;
        check_range(
            "conv2d: output channel range outside 0..c_out",
            &co,
            self.c_out,
        )?;
        check_len("conv2d output", co.len() * geo.n, out.len())?;
        let f = Forward {
            isa,
            inp: x.data,
            p,
        };
        if let Some(d) = self.direct(x.h, x.w) {
            if scratch.len() >= d.scratch_len(co.len()) {
                let ys = 0..geo.n / d.ow();
                f.direct(&d, co, ys, Out::Dense(out), scratch);
                return Ok(());
            }
        }
        f.gemm(&geo, co, 0..geo.n, Out::Dense(out), scratch);
        Ok(())
    }

    /// [`Conv2d::forward_with`] for every output channel and the output pixels `px` only
    /// (numbered y·ow + x): `rows[c]` receives out[c, px] (`rows.len() == c_out`, each
    /// `px.len()` long). Lets threads split a large map by pixels, each packing only its own
    /// im2col columns; every element is computed in the same order as by
    /// [`Conv2d::forward_with`], so the bits are the same for any split.
    pub fn forward_pixels(
        &self,
        isa: Isa,
        x: Map,
        p: ConvParams,
        px: core::ops::Range<usize>,
        rows: &mut [&mut [f32]],
        scratch: &mut [f32],
    ) -> Result<(), KernelError> {
        let geo = self.check_forward(x, &p, scratch)?;
        check_range("conv2d: pixel range outside 0..oh·ow", &px, geo.n)?;
        check_len("conv2d output rows", self.c_out, rows.len())?;
        for r in rows.iter() {
            check_len("conv2d output row", px.len(), r.len())?;
        }
        let co = 0..self.c_out;
        let f = Forward {
            isa,
            inp: x.data,
            p,
        };
        if let Some(d) = self.direct(x.h, x.w) {
            // Whole output rows only (the threads' pixel ranges usually are).
            let ow = d.ow();
            if scratch.len() >= d.scratch_len(co.len())
                && px.start.is_multiple_of(ow)
                && px.end.is_multiple_of(ow)
            {
                let ys = px.start / ow..px.end / ow;
                f.direct(&d, co, ys, Out::Rows(rows), scratch);
                return Ok(());
            }
        }
        f.gemm(&geo, co, px, Out::Rows(rows), scratch);
        Ok(())
    }

    /// Checks what both forwards share; returns the im2col geometry.
    fn check_forward(
        &self,
        x: Map,
        p: &ConvParams,
        scratch: &[f32],
    ) -> Result<Geometry, KernelError> {
        let (h, w) = (x.h, x.w);
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
        check_len("conv2d input", self.c_in * h * w, x.data.len())?;
        check_len("conv2d weight", self.c_out * self.k_total(), p.weight.len())?;
        check_len("conv2d bias", self.c_out, p.bias.len())?;
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

/// One checked forward call: the microkernels, the input planes and the parameters.
struct Forward<'a> {
    isa: Isa,
    inp: &'a [f32],
    p: ConvParams<'a>,
}

impl Forward<'_> {
    /// The packed path: out = bias + W[co, :]·im2col(inp)[:, px].
    fn gemm(
        &self,
        geo: &Geometry,
        co: core::ops::Range<usize>,
        px: core::ops::Range<usize>,
        out: Out,
        scratch: &mut [f32],
    ) {
        match self.p.weight {
            WeightsRef::F32(wt) => self.gemm_of(wt, geo, co, px, out, scratch),
            WeightsRef::F16(wt) => self.gemm_of(wt, geo, co, px, out, scratch),
        }
    }

    /// [`Forward::gemm`] for weights stored as `W`.
    fn gemm_of<W: Weight>(
        &self,
        weight: &[W],
        geo: &Geometry,
        co: core::ops::Range<usize>,
        px: core::ops::Range<usize>,
        out: Out,
        scratch: &mut [f32],
    ) {
        let (isa, k_total, row0) = (self.isa, geo.k_total(), co.start);
        // The running sums start at the bias (first term of every element's chain): the first
        // K block starts its registers there instead of a separate pass filling `out`.
        let a = Lhs {
            m: co.len(),
            init: Some(&self.p.bias[co.clone()]),
            pack: |blk: Block, a: &mut [f32]| pack_a(isa, weight, k_total, blk.shifted(row0), a),
        };
        let pack_b = |blk: Block, b: &mut [f32]| pack_b(geo, self.inp, blk.shifted(px.start), b);
        gemm(isa, a, px.len(), k_total, pack_b, out, scratch);
    }

    /// The direct path: output rows `ys` of channels `co`, from the bias.
    fn direct(
        &self,
        d: &Direct,
        co: core::ops::Range<usize>,
        ys: core::ops::Range<usize>,
        out: Out,
        scratch: &mut [f32],
    ) {
        let (isa, k_total, row0) = (self.isa, d.depth(), co.start);
        let (m, init) = (co.len(), Some(&self.p.bias[co]));
        match self.p.weight {
            WeightsRef::F32(wt) => {
                let pack =
                    |blk: Block, a: &mut [f32]| pack_a(isa, wt, k_total, blk.shifted(row0), a);
                d.run(isa, Lhs { m, init, pack }, self.inp, ys, out, scratch)
            }
            WeightsRef::F16(wt) => {
                let pack =
                    |blk: Block, a: &mut [f32]| pack_a(isa, wt, k_total, blk.shifted(row0), a);
                d.run(isa, Lhs { m, init, pack }, self.inp, ys, out, scratch)
            }
        }
    }
}

#[cfg(test)]
mod tests;
