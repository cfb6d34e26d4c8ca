//! # tweedie-kernels
//!
//! The layers of the ADM U-Net (and later NCSN++) and the sampling-update kernels, written as
//! plain functions over slices in the style of llm.c: `layer_forward(out, inp, weight, dims…)`.
//! Each kernel is a per-element or per-tile body plus a CPU driver that processes a caller-given
//! range, so the host can split work across threads (also within one image) and the same bodies
//! compile to PTX. `no_std`, no allocation: scratch buffers are the caller's.
//!
//! Conventions shared by every layer:
//! - tensors are `f32`, one sample at a time, NCHW without N: `[C, H, W]` row-major;
//! - a driver takes an output range (channels, groups or heads) and the `out` slice for exactly
//!   that range; every output element is computed in the same order whatever the range, so any
//!   split across threads gives bit-identical results;
//! - bad shapes or lengths are reported as [`KernelError`], never by a panic;
//! - a layer with more than a handful of dimensions is a shape struct ([`Conv2d`],
//!   [`Winograd`], [`GroupNorm`], [`QkvAttention`]) whose methods take the data, with small
//!   structs for what travels together ([`Map`]: planes and their size; [`ConvParams`],
//!   [`NormAffine`]: a layer's parameters; [`ConvGrads`], [`NormGrads`]: its gradients).
//!
//! # Modules
//!
//! - [`isa`]: which instruction set the SIMD paths use ([`Isa`], [`enable_avx2_fma`]);
//! - [`conv`]: [`Conv2d`] as an implicit GEMM (`gemm`, `pack`, `microkernel`, `direct`,
//!   `backward`, `strided` inside) and its Winograd form ([`Winograd`], `conv/winograd/`);
//! - [`norm`]: GroupNorm (+FiLM, +SiLU); [`attention`]: the QKV attention core;
//! - [`linear`](mod@linear), [`nin`](mod@nin), [`embedding`], [`fourier`], [`elementwise`], [`resample`], [`fir`],
//!   [`rescale`]: the other layers;
//! - `ptx` (NVPTX builds only): the GPU entry points, over the same per-element bodies.
//!
//! # Backward (training)
//!
//! Each layer's backward sits next to its forward, llm.c style, gradients first:
//! `layer_backward(dinp, dweight, dbias, dout, inp, weight, dims…, range)`.
//! - Every gradient is **accumulated** (`+=`) onto the caller's buffer, inputs' and
//!   parameters' alike: the model zeroes its gradient buffers once per step, a tensor read by
//!   two layers (a residual input, a skip) simply receives both contributions, and a batch is
//!   summed by calling the backward once per sample in a fixed order.
//! - Tensors a backward reads (`dout`, the saved input, weights) are passed whole; the
//!   gradients it writes are the slices for its range (input channels for dinput, output
//!   channels for dweight/dbias, groups for GroupNorm), so threads own disjoint slices.
//! - Within a call each gradient element is one chain of roundings in a documented order
//!   (pixel order for conv dweight, output-channel-then-tap order for conv dinput, f64 sums for
//!   biases and normalisation statistics), independent of the range: any split across threads
//!   gives the same bits, and the same calls in the same order give the same bits for any
//!   thread count. The conv's AVX2 path rounds differently from the portable one (fused
//!   multiply-adds); all threads of a step must use the same [`Isa`].
//! - Nothing needs saving beyond each layer's input: GroupNorm recomputes its statistics and
//!   attention its softmax weights exactly as the forward computes them.
//! - The 3×3 'same' convolutions also have a Winograd form ([`Winograd`], F(2×2, 3×3) or
//!   F(4×4, 3×3): forward, input gradient through the flipped weights, weight gradient, which
//!   can also be summed over samples in transformed form and turned into dW once), which the
//!   trainer uses where maps are large enough: 2.25× or 4× fewer products, a different
//!   (fixed) rounding order than [`Conv2d`]'s, so the trainer's bits differ from a
//!   direct-convolution trainer's while staying independent of threads and splits.
//! - Layers without a kernel: the residual `y = a + b` sends dy to both (`add_inplace` twice);
//!   the channel concatenation `[h, skip]` of the decoder splits its gradient into the first and
//!   last channel blocks (slices, no copy); the timestep embedding has no parameters and its
//!   input t is not differentiated; ResBlock's FiLM gradient comes out of
//!   [`GroupNorm::backward`] as dscale/dshift, to be written into the two halves of the
//!   emb-Linear's dout.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]
#![cfg_attr(
    target_arch = "nvptx64",
    feature(abi_ptx, stdarch_nvptx, asm_experimental_arch)
)]

/// Calls `$plain(args…)`, or its twin `$avx2` compiled with AVX2 when [`crate::Isa::detected`]
/// reports the CPU has it, or `$avx512` compiled with AVX-512F when it reports that (the
/// GroupNorm and attention kernels; without `$avx512`, AVX-512 CPUs run `$avx2`). The bodies
/// are plain IEEE f32/f64 arithmetic without fused multiply-adds (Rust never contracts
/// a·b + c), so every compilation gives the same bits: AVX2 and AVX-512 only widen the
/// vectors (the portable build targets baseline x86-64, 4 f32 lanes). Everything the body
/// calls must be `#[inline(always)]` to be compiled with it.
macro_rules! dispatch {
    ($plain:ident $(::<$g:tt>)?, $avx2:ident, $args:expr) => {
        dispatch!($plain $(::<$g>)?, $avx2, $avx2, $args)
    };
    ($plain:ident $(::<$g:tt>)?, $avx2:ident, $avx512:ident, $args:expr) => {{
        let args = $args;
        #[cfg(target_arch = "x86_64")]
        {
            match crate::Isa::detected().kind() {
                // SAFETY: Isa::detected() reports AVX-512 only when the CPU and the OS
                // support AVX-512F (and AVX2: enable_avx2_fma), ...
                crate::isa::IsaKind::Avx512 => unsafe { $avx512 $(::<$g>)? (args) },
                // ... and AVX2 only when the CPU has AVX2 and FMA (checked by the host before
                // enable_avx2_fma, or compiled in).
                crate::isa::IsaKind::Avx2Fma => unsafe { $avx2 $(::<$g>)? (args) },
                crate::isa::IsaKind::Portable => $plain $(::<$g>)? (args),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $plain $(::<$g>)? (args)
        }
    }};
}

/// Defines the twins [`dispatch!`] calls: `$avx2` and `$avx512`, the body `$call` compiled
/// with AVX2 and with AVX2 + AVX-512F (each `unsafe`: the CPU must have those features),
/// both generic over the `<const G: T>` written after the second name, if any.
macro_rules! simd_twins {
    ($avx2:ident, $avx512:ident $(<const $g:ident: $gt:ty>)?, ($a:ident: $t:ty) $(-> $r:ty)?, $call:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $avx2 $(<const $g: $gt>)? ($a: $t) $(-> $r)? {
            $call
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,avx512f")]
        unsafe fn $avx512 $(<const $g: $gt>)? ($a: $t) $(-> $r)? {
            $call
        }
    };
}

pub mod attention;
pub mod conv;
pub mod distance;
pub mod elementwise;
pub mod embedding;
pub mod fir;
pub mod fourier;
#[cfg(test)]
mod gradcheck;
pub mod isa;
pub mod linear;
pub mod nin;
pub mod norm;
#[cfg(target_arch = "nvptx64")]
pub mod ptx;
pub mod resample;
pub mod rescale;

pub use attention::{
    attention_backward_scratch_len, attention_scratch_len, QkvAttention, QkvOrder,
};
pub use conv::{Conv2d, ConvGrads, ConvParams, Map, MapMut, Winograd};
pub use elementwise::{add_inplace, silu, silu_backward, silu_grad, silu_inplace};
pub use embedding::timestep_embedding;
pub use fir::{fir_downsample2x, fir_upsample2x};
pub use fourier::gaussian_fourier_projection;
#[cfg(target_arch = "x86_64")]
pub use isa::enable_avx2_fma;
pub use isa::Isa;
pub use linear::{linear, linear_backward_input, linear_backward_params};
pub use nin::nin;
pub use norm::{GroupNorm, NormAffine, NormGrads};
pub use resample::{
    avg_pool2x2, avg_pool2x2_backward, upsample_nearest2x, upsample_nearest2x_backward,
};
pub use rescale::add_skip_rescale;

use core::fmt;

/// What a kernel rejected. Kernels check every shape and length up front and return this instead
/// of panicking, so the host can name the layer at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// Inconsistent dimensions or an output range outside the layer (the text says which).
    Shape(&'static str),
    /// A buffer whose length does not match what the layer needs.
    Length {
        /// Which buffer.
        what: &'static str,
        /// The length needed (the minimum, for scratch buffers).
        expected: usize,
        /// The length given.
        got: usize,
    },
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            KernelError::Shape(what) => write!(f, "inconsistent shape: {what}"),
            KernelError::Length {
                what,
                expected,
                got,
            } => write!(f, "{what} has length {got}, expected {expected}"),
        }
    }
}

/// Checks `got == expected` for the buffer `what`.
pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if got == expected {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            got,
        })
    }
}

/// Checks that a scratch (or other "at least") buffer has `got >= expected` elements.
pub(crate) fn check_min_len(
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if got >= expected {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            got,
        })
    }
}

/// Checks that `r` is a valid (non-reversed) sub-range of `0..n`.
pub(crate) fn check_range(
    what: &'static str,
    r: &core::ops::Range<usize>,
    n: usize,
) -> Result<(), KernelError> {
    if r.start <= r.end && r.end <= n {
        Ok(())
    } else {
        Err(KernelError::Shape(what))
    }
}

/// Weights as stored: f32, or f16 converted to f32 on the fly (when a panel is packed or a row
/// is read), so a half-precision checkpoint needs no f32 copy in memory.
#[derive(Clone, Copy, Debug)]
pub enum WeightsRef<'a> {
    /// Single precision.
    F32(&'a [f32]),
    /// Half precision (IEEE binary16).
    F16(&'a [half::f16]),
}

impl WeightsRef<'_> {
    /// Number of weights.
    pub fn len(&self) -> usize {
        match self {
            WeightsRef::F32(w) => w.len(),
            WeightsRef::F16(w) => w.len(),
        }
    }

    /// Whether there are no weights.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stored weight element that widens to f32 (exactly: every f16 is an f32).
pub(crate) trait Weight: Copy {
    fn to_f32(self) -> f32;

    /// The slice itself when the weights are already f32 (a packer can then move them as
    /// vectors).
    fn as_f32(_s: &[Self]) -> Option<&[f32]> {
        None
    }
}

impl Weight for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    fn as_f32(s: &[f32]) -> Option<&[f32]> {
        Some(s)
    }
}

impl Weight for half::f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
}
