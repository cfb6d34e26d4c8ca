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
///
/// A backend implements the `*_raw` methods, which may assume their sizes were checked; callers
/// use the provided methods of the same name without `_raw`, which check every size and shape
/// once, here, for every backend, and then call the raw one.
pub trait DeviceOps {
    /// A device buffer of `f32`.
    type Buf;
    /// Conv or linear weights on the device.
    type Weights;

    /// Floats in a buffer.
    fn len(&self, b: &Self::Buf) -> usize;
    /// Elements in stored weights.
    fn weights_len(&self, w: &Self::Weights) -> usize;
    /// A zeroed buffer of `n` floats.
    fn alloc(&self, n: usize) -> Result<Self::Buf>;
    /// A buffer holding a copy of `v`.
    fn upload(&self, v: &[f32]) -> Result<Self::Buf>;
    /// [`DeviceOps::write`] without its checks (sizes already checked).
    fn write_raw(&self, b: &mut Self::Buf, v: &[f32]) -> Result<()>;
    /// Weights as stored (f32 stays f32, f16 stays f16).
    fn upload_weights(&self, w: WeightsRef<'_>) -> Result<Self::Weights>;
    /// [`DeviceOps::read`] without its checks (sizes already checked).
    fn read_raw(&self, b: &Self::Buf, out: &mut [f32]) -> Result<()>;
    /// Routes convolutions to tensor-core kernels (operands rounded to f16, f32 accumulation)
    /// when `on` and the device has them; returns whether they are used from now on.
    fn use_tensor_cores(&self, on: bool) -> bool;
    /// Waits until all queued work is done (for timings).
    fn synchronize(&self) -> Result<()>;
    /// [`DeviceOps::fill_noise`] without its checks (sizes already checked).
    fn fill_noise_raw(
        &self,
        out: &mut Self::Buf,
        n: usize,
        seed: u64,
        chain: u64,
        counter: u64,
        first: u64,
    ) -> Result<()>;

    /// [`DeviceOps::conv2d`] without its checks (sizes already checked).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_raw(
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

    /// [`DeviceOps::group_norm`] without its checks (sizes already checked).
    #[allow(clippy::too_many_arguments)]
    fn group_norm_raw(
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

    /// [`DeviceOps::linear`] without its checks (sizes already checked).
    #[allow(clippy::too_many_arguments)]
    fn linear_raw(
        &self,
        x: &Self::Buf,
        w: &Self::Weights,
        bias: &Self::Buf,
        y: &mut Self::Buf,
        batch: usize,
        in_features: usize,
        out_features: usize,
    ) -> Result<()>;

    /// [`DeviceOps::silu`] without its checks (sizes already checked).
    fn silu_raw(&self, x: &mut Self::Buf, n: usize) -> Result<()>;
    /// [`DeviceOps::add`] without its checks (sizes already checked).
    fn add_raw(&self, dst: &mut Self::Buf, src: &Self::Buf, n: usize) -> Result<()>;
    /// [`DeviceOps::scale`] without its checks (sizes already checked).
    fn scale_raw(&self, dst: &mut Self::Buf, src: &Self::Buf, n: usize, factor: f32) -> Result<()>;

    /// Floats of scratch [`DeviceOps::attention`] needs.
    fn attention_scratch_len(&self, batch: usize, heads: usize, t: usize) -> usize;
    /// [`DeviceOps::attention`] without its checks (sizes already checked).
    #[allow(clippy::too_many_arguments)]
    fn attention_raw(
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

    /// [`DeviceOps::upsample2x`] without its checks (sizes already checked).
    fn upsample2x_raw(
        &self,
        x: &Self::Buf,
        out: &mut Self::Buf,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()>;
    /// [`DeviceOps::avg_pool2x2`] without its checks (sizes already checked).
    fn avg_pool2x2_raw(
        &self,
        x: &Self::Buf,
        out: &mut Self::Buf,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()>;
    /// [`DeviceOps::copy_channels`] without its checks (sizes already checked).
    #[allow(clippy::too_many_arguments)]
    fn copy_channels_raw(
        &self,
        dst: &mut Self::Buf,
        src: &Self::Buf,
        batch: usize,
        src_c: usize,
        dst_c: usize,
        first: usize,
        hw: usize,
    ) -> Result<()>;
    /// [`DeviceOps::add_channel_bias`] without its checks (sizes already checked).
    #[allow(clippy::too_many_arguments)]
    fn add_channel_bias_raw(
        &self,
        x: &mut Self::Buf,
        bias: &Self::Buf,
        stride: usize,
        batch: usize,
        channels: usize,
        hw: usize,
    ) -> Result<()>;
    /// [`DeviceOps::timestep_embedding`] without its checks (sizes already checked).
    fn timestep_embedding_raw(
        &self,
        t: &Self::Buf,
        out: &mut Self::Buf,
        batch: usize,
        dim: usize,
        max_period: f32,
    ) -> Result<()>;

    /// [`DeviceOps::init_state`] without its checks (sizes already checked).
    #[allow(clippy::too_many_arguments)]
    fn init_state_raw(
        &self,
        x: &mut Self::Buf,
        n: usize,
        chain_len: usize,
        std: f32,
        seed: u64,
        first_chain: u64,
    ) -> Result<()>;
    /// [`DeviceOps::denoised_from_output`] without its checks (sizes already checked).
    #[allow(clippy::too_many_arguments)]
    fn denoised_from_output_raw(
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
    /// [`DeviceOps::template_update`] without its checks (sizes already checked).
    #[allow(clippy::too_many_arguments)]
    fn template_update_raw(
        &self,
        x: &mut Self::Buf,
        denoised: &Self::Buf,
        lik_grad: Option<&Self::Buf>,
        n: usize,
        chain_len: usize,
        step: &UpdateStep,
        check: bool,
    ) -> Result<bool>;

    // ---- The checked entry points (one place for every backend's size checks). ----

    /// Copies `v` into the start of `b`.
    fn write(&self, b: &mut Self::Buf, v: &[f32]) -> Result<()> {
        need("write", v.len(), self.len(b))?;
        self.write_raw(b, v)
    }

    /// The first `out.len()` floats of `b` (waits for the queued work).
    fn read(&self, b: &Self::Buf, out: &mut [f32]) -> Result<()> {
        need("read", out.len(), self.len(b))?;
        self.read_raw(b, out)
    }

    /// `out[i] = noise::gaussian(seed, chain, counter, first + i)` for i < n.
    fn fill_noise(
        &self,
        out: &mut Self::Buf,
        n: usize,
        seed: u64,
        chain: u64,
        counter: u64,
        first: u64,
    ) -> Result<()> {
        need("noise", n, self.len(out))?;
        self.fill_noise_raw(out, n, seed, chain, counter, first)
    }

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
    ) -> Result<()> {
        let (oh, ow) = conv.out_size(h, w);
        if oh == 0 || ow == 0 || conv.stride == 0 || conv.kernel == 0 || batch == 0 {
            bail!("conv2d: empty output for {conv:?} on {h}x{w}, batch {batch}");
        }
        need("conv2d input", batch * conv.c_in * h * w, self.len(x))?;
        need("conv2d output", batch * conv.c_out * oh * ow, self.len(out))?;
        need("conv2d bias", conv.c_out, self.len(bias))?;
        let kk = conv.c_out * conv.c_in * conv.kernel * conv.kernel;
        need("conv2d weight", kk, self.weights_len(weight))?;
        self.conv2d_raw(conv, x, h, w, weight, bias, out, batch)
    }

    /// GroupNorm of x `[batch, channels, hw]`, then FiLM with `film` = `[batch, 2·channels]`
    /// (scale, shift) if given, then SiLU if `silu`.
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
    ) -> Result<()> {
        if groups == 0 || !channels.is_multiple_of(groups) || hw == 0 || batch == 0 {
            bail!("group norm: channels {channels} not a multiple of groups {groups}, or an empty input");
        }
        need("group norm input", batch * channels * hw, self.len(x))?;
        need("group norm output", batch * channels * hw, self.len(out))?;
        need("group norm gamma", channels, self.len(gamma))?;
        need("group norm beta", channels, self.len(beta))?;
        if let Some(f) = film {
            need("FiLM", batch * 2 * channels, self.len(f))?;
        }
        self.group_norm_raw(
            x, gamma, beta, film, out, batch, channels, hw, groups, eps, silu,
        )
    }

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
    ) -> Result<()> {
        need("linear input", batch * in_features, self.len(x))?;
        need("linear output", batch * out_features, self.len(y))?;
        need("linear bias", out_features, self.len(bias))?;
        need(
            "linear weight",
            out_features * in_features,
            self.weights_len(w),
        )?;
        self.linear_raw(x, w, bias, y, batch, in_features, out_features)
    }

    /// `x[..n] ← SiLU(x[..n])`.
    fn silu(&self, x: &mut Self::Buf, n: usize) -> Result<()> {
        need("silu", n, self.len(x))?;
        self.silu_raw(x, n)
    }

    /// `dst[..n] += src[..n]`.
    fn add(&self, dst: &mut Self::Buf, src: &Self::Buf, n: usize) -> Result<()> {
        need("add destination", n, self.len(dst))?;
        need("add source", n, self.len(src))?;
        self.add_raw(dst, src, n)
    }

    /// `dst[..n] = factor · src[..n]`.
    fn scale(&self, dst: &mut Self::Buf, src: &Self::Buf, n: usize, factor: f32) -> Result<()> {
        need("scale destination", n, self.len(dst))?;
        need("scale source", n, self.len(src))?;
        self.scale_raw(dst, src, n, factor)
    }

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
    ) -> Result<()> {
        if heads == 0 || !channels.is_multiple_of(heads) || t == 0 {
            bail!("attention: channels {channels} not a multiple of heads {heads}, or T = 0");
        }
        need("attention qkv", batch * 3 * channels * t, self.len(qkv))?;
        need("attention output", batch * channels * t, self.len(out))?;
        let scratch_len = self.attention_scratch_len(batch, heads, t);
        need("attention scratch", scratch_len, self.len(scratch))?;
        self.attention_raw(qkv, scratch, out, batch, channels, t, heads, order)
    }

    /// Nearest 2× upsampling of `planes` maps of h×w.
    fn upsample2x(
        &self,
        x: &Self::Buf,
        out: &mut Self::Buf,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        need("upsample input", planes * h * w, self.len(x))?;
        need("upsample output", planes * 4 * h * w, self.len(out))?;
        self.upsample2x_raw(x, out, planes, h, w)
    }

    /// 2×2 average pooling of `planes` maps of h×w.
    fn avg_pool2x2(
        &self,
        x: &Self::Buf,
        out: &mut Self::Buf,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        need("avg pool input", planes * h * w, self.len(x))?;
        need("avg pool output", planes * (h / 2) * (w / 2), self.len(out))?;
        self.avg_pool2x2_raw(x, out, planes, h, w)
    }

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
    ) -> Result<()> {
        if first + src_c > dst_c {
            bail!("copy channels: {src_c} channels at {first} exceed {dst_c}");
        }
        need("copy source", batch * src_c * hw, self.len(src))?;
        need("copy destination", batch * dst_c * hw, self.len(dst))?;
        self.copy_channels_raw(dst, src, batch, src_c, dst_c, first, hw)
    }

    /// `x[b, c, ·] += bias[b·stride + c]`.
    fn add_channel_bias(
        &self,
        x: &mut Self::Buf,
        bias: &Self::Buf,
        stride: usize,
        batch: usize,
        channels: usize,
        hw: usize,
    ) -> Result<()> {
        need("bias target", batch * channels * hw, self.len(x))?;
        if batch > 0 {
            need("bias", (batch - 1) * stride + channels, self.len(bias))?;
        }
        self.add_channel_bias_raw(x, bias, stride, batch, channels, hw)
    }

    /// `out[b, ·]` = the sinusoidal embedding of `t[b]`, `[batch, dim]`.
    fn timestep_embedding(
        &self,
        t: &Self::Buf,
        out: &mut Self::Buf,
        batch: usize,
        dim: usize,
        max_period: f32,
    ) -> Result<()> {
        need("timestep input", batch, self.len(t))?;
        need("timestep embedding", batch * dim, self.len(out))?;
        self.timestep_embedding_raw(t, out, batch, dim, max_period)
    }

    /// x₀: `x[c·chain_len + e] = std · gaussian(seed, first_chain + c, COUNTER_INIT, e)` for
    /// the first `n` floats.
    fn init_state(
        &self,
        x: &mut Self::Buf,
        n: usize,
        chain_len: usize,
        std: f32,
        seed: u64,
        first_chain: u64,
    ) -> Result<()> {
        check_chains("init state", n, chain_len)?;
        need("state", n, self.len(x))?;
        self.init_state_raw(x, n, chain_len, std, seed, first_chain)
    }

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
    ) -> Result<()> {
        check_chains("denoised", n, chain_len)?;
        need("denoised", n, self.len(d))?;
        need("state", n, self.len(x))?;
        need("network output", n / chain_len * net_stride, self.len(net))?;
        self.denoised_from_output_raw(d, x, net, n, chain_len, net_stride, output, coef)
    }

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
    ) -> Result<bool> {
        check_chains("template update", n, chain_len)?;
        need("state", n, self.len(x))?;
        need("denoised", n, self.len(denoised))?;
        if let Some(g) = lik_grad {
            need("likelihood gradient", n, self.len(g))?;
        }
        self.template_update_raw(x, denoised, lik_grad, n, chain_len, step, check)
    }
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
