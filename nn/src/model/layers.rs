//! The layer vocabulary both networks share on the CPU: parameter views resolved by PyTorch
//! name and size from a [`Weights`] file ([`ParamResolver`], after candle's `VarBuilder`), and
//! the layer calls split over the worker pool ([`linear`], [`group_norm`], [`conv`]).
//!
//! Every split only decides which thread computes which outputs; the kernels compute each
//! element in the same order whatever range they get, so no split changes a bit.

use std::sync::Mutex;

use anyhow::Result;
use tweedie_kernels::{self as k, Conv2d, KernelError, WeightsRef};

use crate::backend::profile::{self, Kind};
use crate::backend::Pool;
use crate::weights::Weights;

/// A convolution with its weights.
#[derive(Debug, Clone, Copy)]
pub struct ConvP<'w> {
    /// Shape.
    pub conv: Conv2d,
    /// Weights, OIHW.
    pub weight: WeightsRef<'w>,
    /// Bias, one per output channel.
    pub bias: &'w [f32],
}

/// A GroupNorm layer: its shape and affine parameters.
#[derive(Debug, Clone, Copy)]
pub struct NormP<'w> {
    /// Normalised channels.
    pub channels: usize,
    /// Groups (dividing `channels`).
    pub groups: usize,
    /// Added to the variance.
    pub eps: f32,
    /// Scale, one per channel.
    pub gamma: &'w [f32],
    /// Shift, one per channel.
    pub beta: &'w [f32],
}

/// A Linear layer.
#[derive(Debug, Clone, Copy)]
pub struct LinearP<'w> {
    /// Weights, out × in.
    pub weight: WeightsRef<'w>,
    /// Bias, one per output feature.
    pub bias: &'w [f32],
    /// Input features.
    pub in_features: usize,
}

/// Looks up tensors by PyTorch name and checks their sizes.
#[derive(Clone, Copy)]
pub struct ParamResolver<'w> {
    /// The loaded weights.
    pub weights: &'w Weights,
}

impl<'w> ParamResolver<'w> {
    /// A weight in its storage precision (f32 or f16), `len` elements.
    pub fn any(&self, name: &str, len: usize) -> Result<WeightsRef<'w>> {
        self.weights.kernel_ref(name, len)
    }

    /// An f32 tensor of `len` elements (biases, norms).
    pub fn f32(&self, name: &str, len: usize) -> Result<&'w [f32]> {
        self.weights.f32_exact(name, len)
    }

    /// `{p}.weight` and `{p}.bias` of a GroupNorm over `channels` in `groups`.
    pub fn norm(&self, p: &str, channels: usize, groups: usize, eps: f32) -> Result<NormP<'w>> {
        Ok(NormP {
            channels,
            groups,
            eps,
            gamma: self.f32(&format!("{p}.weight"), channels)?,
            beta: self.f32(&format!("{p}.bias"), channels)?,
        })
    }

    /// `{p}.weight` and `{p}.bias` of a convolution.
    pub fn conv(&self, p: &str, conv: Conv2d) -> Result<ConvP<'w>> {
        let len = conv.c_out * conv.c_in * conv.kernel * conv.kernel;
        Ok(ConvP {
            conv,
            weight: self.any(&format!("{p}.weight"), len)?,
            bias: self.f32(&format!("{p}.bias"), conv.c_out)?,
        })
    }

    /// `{p}.weight` and `{p}.bias` of a Linear layer.
    pub fn linear(&self, p: &str, in_features: usize, out_features: usize) -> Result<LinearP<'w>> {
        Ok(LinearP {
            weight: self.any(&format!("{p}.weight"), in_features * out_features)?,
            bias: self.f32(&format!("{p}.bias"), out_features)?,
            in_features,
        })
    }
}

/// `out = linear(x)` split over output features.
pub fn linear(pool: &Pool, x: &[f32], p: &LinearP, out: &mut [f32]) -> Result<(), KernelError> {
    let n = out.len();
    let _p = profile::scope(Kind::Linear, (n * p.in_features) as u64);
    pool.split(out, n, 16, |_, o, piece| {
        k::linear(x, p.weight, p.bias, p.in_features, o, piece)
    })
}

/// GroupNorm (+FiLM, +SiLU) of `channels` maps of `hw` pixels, split over groups.
pub fn group_norm(
    pool: &Pool,
    x: &[f32],
    hw: usize,
    p: &NormP,
    film: Option<(&[f32], &[f32])>,
    silu: bool,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let _p = profile::scope(Kind::GroupNorm, 0);
    pool.split(out, p.groups, 1, |_, g, piece| {
        k::group_norm(
            x, p.channels, hw, p.groups, p.eps, p.gamma, p.beta, film, silu, g, piece,
        )
    })
}

/// A convolution of an `h`×`w` input split between threads: a map with more pixels than
/// output channels by pixel ranges (each thread then packs only its own im2col columns),
/// others by output channels in multiples of the microkernel's rows. `scratch` holds one
/// buffer per thread.
pub fn conv(
    pool: &Pool,
    scratch: &[Mutex<Vec<f32>>],
    x: &[f32],
    h: usize,
    w: usize,
    p: &ConvP,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let kind = if p.conv.kernel == 1 {
        Kind::Conv1x1
    } else {
        Kind::Conv3x3
    };
    let k_total = p.conv.c_in * p.conv.kernel * p.conv.kernel;
    let _p = profile::scope(kind, (out.len() * k_total) as u64);
    let (oh, ow) = p.conv.out_size(h, w);
    if oh * ow >= 2 * p.conv.c_out {
        let isa = k::Isa::detected();
        return pool.split_columns(out, p.conv.c_out, k::conv::NR, |i, px, rows| {
            let mut s = scratch[i].lock().unwrap_or_else(|e| e.into_inner());
            p.conv
                .forward_pixels(isa, x, h, w, p.weight, p.bias, px, rows, &mut s)
        });
    }
    pool.split(out, p.conv.c_out, k::conv::MR, |i, co, piece| {
        let mut s = scratch[i].lock().unwrap_or_else(|e| e.into_inner());
        p.conv.forward(x, h, w, p.weight, p.bias, co, piece, &mut s)
    })
}
