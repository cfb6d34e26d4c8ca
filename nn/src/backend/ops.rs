//! The operations a device runs on its own buffers, as one trait: the ADM layer graph
//! (`model::adm::device`) and the device sampling loop are written once over it, and run on
//! the CUDA backend (`cuda::gpu::CudaBackend`, the PTX kernels) or on [`super::reference`]
//! (the CPU kernels, one thread), which lets the graph be tested on machines without a GPU.
//!
//! Tensors are batched NCHW, `[batch, C, H·W]`. A buffer may be longer than an operation needs
//! (buffers are planned for the largest batch); sizes come from the arguments, and a buffer too
//! short for them is an error, never an out-of-bounds access.

use anyhow::{bail, Result};
use tweedie_core::sampler::UpdateCoefficients;
use tweedie_core::tweedie::NetOutput;
use tweedie_kernels::{Conv2d, QkvOrder, WeightsRef};

/// What a template update needs besides the buffers (eq. 11 / 24 and the noise key).
#[derive(Clone, Copy, Debug)]
pub struct UpdateStep {
    /// The step's drift, likelihood and noise coefficients.
    pub coef: UpdateCoefficients,
    /// The run's seed.
    pub seed: u64,
    /// Chain index of the buffer's first chain.
    pub first_chain: u64,
    /// The step's noise counter.
    pub counter: u64,
}

/// Device operations over buffers of `f32` ([`DeviceOps::Buf`]) and conv/linear weights stored
/// as f32 or f16 ([`DeviceOps::Weights`]).
pub trait DeviceOps {
    /// A device buffer of `f32`.
    type Buf;
    /// Conv or linear weights on the device.
    type Weights;

    /// Floats in a buffer.
    fn len(&self, b: &Self::Buf) -> usize;
    /// A zeroed buffer of `n` floats.
    fn alloc(&self, n: usize) -> Result<Self::Buf>;
    /// A buffer holding a copy of `v`.
    fn upload(&self, v: &[f32]) -> Result<Self::Buf>;
    /// Copies `v` into the start of `b`.
    fn write(&self, b: &mut Self::Buf, v: &[f32]) -> Result<()>;
    /// Weights as stored (f32 stays f32, f16 stays f16).
    fn upload_weights(&self, w: WeightsRef<'_>) -> Result<Self::Weights>;
    /// The first `out.len()` floats of `b` (waits for the queued work).
    fn read(&self, b: &Self::Buf, out: &mut [f32]) -> Result<()>;
    /// Routes convolutions to tensor-core kernels (operands rounded to f16, f32 accumulation)
    /// when `on` and the device has them; returns whether they are used from now on.
    fn use_tensor_cores(&self, on: bool) -> bool;
    /// Waits until all queued work is done (for timings).
    fn synchronize(&self) -> Result<()>;
    /// `out[i] = noise::gaussian(seed, chain, counter, first + i)` for i < n.
    fn fill_noise(
        &self,
        out: &mut Self::Buf,
        n: usize,
        seed: u64,
        chain: u64,
        counter: u64,
        first: u64,
    ) -> Result<()>;

    /// `out = conv(x)` for x `[batch, c_in, h, w]`, out `[batch, c_out, oh, ow]`.
    #[allow(clippy::too_many_arguments)]
    fn conv2d(
        &self,
        conv: &Conv2d,
        x: &Self::Buf,
        h: usize,
        w: usize,
        weight: &Self::Weights,
        bias: &Self::Buf,
        out: &mut Self::Buf,
        batch: usize,
    ) -> Result<()>;

    /// GroupNorm of x `[batch, channels, hw]` (channels = gamma's length), then FiLM with
    /// `film` = `[batch, 2·channels]` (scale, shift) if given, then SiLU if `silu`.
    #[allow(clippy::too_many_arguments)]
    fn group_norm(
        &self,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        film: Option<&Self::Buf>,
        out: &mut Self::Buf,
        batch: usize,
        channels: usize,
        hw: usize,
        groups: usize,
        eps: f32,
        silu: bool,
    ) -> Result<()>;

    /// `y[b] = W·x[b] + bias` for W `[out_features, in_features]`.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        x: &Self::Buf,
        w: &Self::Weights,
        bias: &Self::Buf,
        y: &mut Self::Buf,
        batch: usize,
        in_features: usize,
        out_features: usize,
    ) -> Result<()>;

    /// `x[..n] ← SiLU(x[..n])`.
    fn silu(&self, x: &mut Self::Buf, n: usize) -> Result<()>;
    /// `dst[..n] += src[..n]`.
    fn add(&self, dst: &mut Self::Buf, src: &Self::Buf, n: usize) -> Result<()>;
    /// `dst[..n] = factor · src[..n]`.
    fn scale(&self, dst: &mut Self::Buf, src: &Self::Buf, n: usize, factor: f32) -> Result<()>;

    /// Floats of scratch [`DeviceOps::attention`] needs.
    fn attention_scratch_len(&self, batch: usize, heads: usize, t: usize) -> usize;
    /// Multi-head attention core: qkv `[batch, 3C, T]` → out `[batch, C, T]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        qkv: &Self::Buf,
        scratch: &mut Self::Buf,
        out: &mut Self::Buf,
        batch: usize,
        channels: usize,
        t: usize,
        heads: usize,
        order: QkvOrder,
    ) -> Result<()>;

    /// Nearest 2× upsampling of `planes` maps of h×w.
    fn upsample2x(
        &self,
        x: &Self::Buf,
        out: &mut Self::Buf,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()>;
    /// 2×2 average pooling of `planes` maps of h×w.
    fn avg_pool2x2(
        &self,
        x: &Self::Buf,
        out: &mut Self::Buf,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()>;
    /// `dst[b, first + c, ·] = src[b, c, ·]`: src `[batch, src_c, hw]`, dst `[batch, dst_c, hw]`.
    #[allow(clippy::too_many_arguments)]
    fn copy_channels(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        batch: usize,
        src_c: usize,
        dst_c: usize,
        first: usize,
        hw: usize,
    ) -> Result<()>;
    /// `x[b, c, ·] += bias[b·stride + c]`.
    #[allow(clippy::too_many_arguments)]
    fn add_channel_bias(
        &self,
        x: &mut Self::Buf,
        bias: &Self::Buf,
        stride: usize,
        batch: usize,
        channels: usize,
        hw: usize,
    ) -> Result<()>;
    /// `out[b, ·]` = the sinusoidal embedding of `t[b]`, `[batch, dim]`.
    fn timestep_embedding(
        &self,
        t: &Self::Buf,
        out: &mut Self::Buf,
        batch: usize,
        dim: usize,
        max_period: f32,
    ) -> Result<()>;

    /// x₀: `x[c·chain_len + e] = std · gaussian(seed, first_chain + c, COUNTER_INIT, e)` for
    /// the first `n` floats.
    #[allow(clippy::too_many_arguments)]
    fn init_state(
        &self,
        x: &mut Self::Buf,
        n: usize,
        chain_len: usize,
        std: f32,
        seed: u64,
        first_chain: u64,
    ) -> Result<()>;
    /// D from the network output for the first `n` floats of x (chains of `chain_len`; the
    /// network's chains are `net_stride` apart), with `coef` from
    /// `Parameterization::output_coefficient` (ignored for a denoised output).
    #[allow(clippy::too_many_arguments)]
    fn denoised_from_output(
        &self,
        d: &mut Self::Buf,
        x: &Self::Buf,
        net: &Self::Buf,
        n: usize,
        chain_len: usize,
        net_stride: usize,
        output: NetOutput,
        coef: f64,
    ) -> Result<()>;
    /// One fused template step for the first `n` floats of x, in place; returns whether any
    /// result is non-finite only when `check` (reading the flag back waits for the device).
    #[allow(clippy::too_many_arguments)]
    fn template_update(
        &self,
        x: &mut Self::Buf,
        denoised: &Self::Buf,
        lik_grad: Option<&Self::Buf>,
        n: usize,
        chain_len: usize,
        step: &UpdateStep,
        check: bool,
    ) -> Result<bool>;
}

/// An error unless `len` floats hold at least `need`.
pub fn need(what: &str, need: usize, len: usize) -> Result<()> {
    if len < need {
        bail!("{what}: buffer of {len} floats, the operation needs {need}");
    }
    Ok(())
}

/// An error unless `chain_len` is positive and divides `n`.
pub fn check_chains(what: &str, n: usize, chain_len: usize) -> Result<()> {
    if chain_len == 0 || !n.is_multiple_of(chain_len) {
        bail!("{what}: length {n} is not a multiple of the chain length {chain_len}");
    }
    Ok(())
}
