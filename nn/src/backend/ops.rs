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

/// A batch of maps of one size, `[batch, ·, h, w]`: what a convolution runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapBatch {
    /// Images in the batch.
    pub batch: usize,
    /// Map height.
    pub h: usize,
    /// Map width.
    pub w: usize,
}

/// A GroupNorm over x `[batch, channels, hw]`, then FiLM if given, then SiLU if `silu`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormOp {
    /// Images in the batch.
    pub batch: usize,
    /// Channels per image.
    pub channels: usize,
    /// Pixels per channel.
    pub hw: usize,
    /// Groups (dividing `channels`).
    pub groups: usize,
    /// The variance's ε.
    pub eps: f32,
    /// Whether SiLU follows.
    pub silu: bool,
}

/// A linear layer `y[b] = W·x[b] + bias`, W `[out_features, in_features]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearOp {
    /// Rows of x.
    pub batch: usize,
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
}

/// A multi-head attention core: qkv `[batch, 3·channels, t]` → out `[batch, channels, t]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionOp {
    /// Images in the batch.
    pub batch: usize,
    /// Channels of the output.
    pub channels: usize,
    /// Tokens (pixels).
    pub t: usize,
    /// Heads (dividing `channels`).
    pub heads: usize,
    /// How q, k and v are interleaved in qkv.
    pub order: QkvOrder,
}

/// `dst[b, first + c, ·] = src[b, c, ·]`: src `[batch, src_c, hw]`, dst `[batch, dst_c, hw]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelCopy {
    /// Images in the batch.
    pub batch: usize,
    /// Channels of the source.
    pub src_c: usize,
    /// Channels of the destination.
    pub dst_c: usize,
    /// The destination channel of the source's first.
    pub first: usize,
    /// Pixels per channel.
    pub hw: usize,
}

/// The first `n` floats of a sampler state, chains of `chain_len` floats each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chains {
    /// Floats covered (a multiple of `chain_len`).
    pub n: usize,
    /// Floats per chain.
    pub chain_len: usize,
}

/// How the denoised estimate is read from a network's output buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetReadout {
    /// Floats between the starts of consecutive chains in the network's output.
    pub stride: usize,
    /// What the network predicts.
    pub output: NetOutput,
    /// `Parameterization::output_coefficient` (ignored for a denoised output).
    pub coef: f64,
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
    fn conv2d_raw(
        &self,
        conv: &Conv2d,
        at: MapBatch,
        x: &Self::Buf,
        weight: &Self::Weights,
        bias: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// [`DeviceOps::group_norm`] without its checks (sizes already checked).
    fn group_norm_raw(
        &self,
        op: &GroupNormOp,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        film: Option<&Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<()>;

    /// [`DeviceOps::linear`] without its checks (sizes already checked).
    fn linear_raw(
        &self,
        op: LinearOp,
        x: &Self::Buf,
        w: &Self::Weights,
        bias: &Self::Buf,
        y: &mut Self::Buf,
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
    fn attention_raw(
        &self,
        op: &AttentionOp,
        qkv: &Self::Buf,
        scratch: &mut Self::Buf,
        out: &mut Self::Buf,
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
    fn copy_channels_raw(
        &self,
        op: ChannelCopy,
        dst: &mut Self::Buf,
        src: &Self::Buf,
    ) -> Result<()>;
    /// [`DeviceOps::add_channel_bias`] without its checks (sizes already checked).
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
    fn init_state_raw(
        &self,
        x: &mut Self::Buf,
        chains: Chains,
        std: f32,
        seed: u64,
        first_chain: u64,
    ) -> Result<()>;
    /// [`DeviceOps::denoised_from_output`] without its checks (sizes already checked).
    fn denoised_from_output_raw(
        &self,
        d: &mut Self::Buf,
        x: &Self::Buf,
        net: &Self::Buf,
        chains: Chains,
        readout: NetReadout,
    ) -> Result<()>;
    /// [`DeviceOps::template_update`] without its checks (sizes already checked).
    fn template_update_raw(
        &self,
        x: &mut Self::Buf,
        denoised: &Self::Buf,
        lik_grad: Option<&Self::Buf>,
        chains: Chains,
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
    fn conv2d(
        &self,
        conv: &Conv2d,
        at: MapBatch,
        x: &Self::Buf,
        weight: &Self::Weights,
        bias: &Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let MapBatch { batch, h, w } = at;
        let (oh, ow) = conv.out_size(h, w);
        if oh == 0 || ow == 0 || conv.stride == 0 || conv.kernel == 0 || batch == 0 {
            bail!("conv2d: empty output for {conv:?} on {h}x{w}, batch {batch}");
        }
        need("conv2d input", batch * conv.c_in * h * w, self.len(x))?;
        need("conv2d output", batch * conv.c_out * oh * ow, self.len(out))?;
        need("conv2d bias", conv.c_out, self.len(bias))?;
        let kk = conv.c_out * conv.c_in * conv.kernel * conv.kernel;
        need("conv2d weight", kk, self.weights_len(weight))?;
        self.conv2d_raw(conv, at, x, weight, bias, out)
    }

    /// GroupNorm of x `[batch, channels, hw]`, then FiLM with `film` = `[batch, 2·channels]`
    /// (scale, shift) if given, then SiLU if `op.silu`.
    fn group_norm(
        &self,
        op: &GroupNormOp,
        x: &Self::Buf,
        gamma: &Self::Buf,
        beta: &Self::Buf,
        film: Option<&Self::Buf>,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let GroupNormOp {
            batch,
            channels,
            hw,
            groups,
            ..
        } = *op;
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
        self.group_norm_raw(op, x, gamma, beta, film, out)
    }

    /// `y[b] = W·x[b] + bias` for W `[out_features, in_features]`.
    fn linear(
        &self,
        op: LinearOp,
        x: &Self::Buf,
        w: &Self::Weights,
        bias: &Self::Buf,
        y: &mut Self::Buf,
    ) -> Result<()> {
        let LinearOp {
            batch,
            in_features,
            out_features,
        } = op;
        need("linear input", batch * in_features, self.len(x))?;
        need("linear output", batch * out_features, self.len(y))?;
        need("linear bias", out_features, self.len(bias))?;
        need(
            "linear weight",
            out_features * in_features,
            self.weights_len(w),
        )?;
        self.linear_raw(op, x, w, bias, y)
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
    fn attention(
        &self,
        op: &AttentionOp,
        qkv: &Self::Buf,
        scratch: &mut Self::Buf,
        out: &mut Self::Buf,
    ) -> Result<()> {
        let AttentionOp {
            batch,
            channels,
            t,
            heads,
            ..
        } = *op;
        if heads == 0 || !channels.is_multiple_of(heads) || t == 0 {
            bail!("attention: channels {channels} not a multiple of heads {heads}, or T = 0");
        }
        need("attention qkv", batch * 3 * channels * t, self.len(qkv))?;
        need("attention output", batch * channels * t, self.len(out))?;
        let scratch_len = self.attention_scratch_len(batch, heads, t);
        need("attention scratch", scratch_len, self.len(scratch))?;
        self.attention_raw(op, qkv, scratch, out)
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

    /// Copies channels between buffers ([`ChannelCopy`]).
    fn copy_channels(&self, op: ChannelCopy, dst: &mut Self::Buf, src: &Self::Buf) -> Result<()> {
        let ChannelCopy {
            batch,
            src_c,
            dst_c,
            first,
            hw,
        } = op;
        if first + src_c > dst_c {
            bail!("copy channels: {src_c} channels at {first} exceed {dst_c}");
        }
        need("copy source", batch * src_c * hw, self.len(src))?;
        need("copy destination", batch * dst_c * hw, self.len(dst))?;
        self.copy_channels_raw(op, dst, src)
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
        chains: Chains,
        std: f32,
        seed: u64,
        first_chain: u64,
    ) -> Result<()> {
        check_chains("init state", chains)?;
        need("state", chains.n, self.len(x))?;
        self.init_state_raw(x, chains, std, seed, first_chain)
    }

    /// D from the network output for the first `chains.n` floats of x ([`NetReadout`] says
    /// how the network's output is read).
    fn denoised_from_output(
        &self,
        d: &mut Self::Buf,
        x: &Self::Buf,
        net: &Self::Buf,
        chains: Chains,
        readout: NetReadout,
    ) -> Result<()> {
        check_chains("denoised", chains)?;
        let Chains { n, chain_len } = chains;
        need("denoised", n, self.len(d))?;
        need("state", n, self.len(x))?;
        need(
            "network output",
            n / chain_len * readout.stride,
            self.len(net),
        )?;
        self.denoised_from_output_raw(d, x, net, chains, readout)
    }

    /// One fused template step for the first `chains.n` floats of x, in place; returns whether
    /// any result is non-finite only when `check` (reading the flag back waits for the device).
    fn template_update(
        &self,
        x: &mut Self::Buf,
        denoised: &Self::Buf,
        lik_grad: Option<&Self::Buf>,
        chains: Chains,
        step: &UpdateStep,
        check: bool,
    ) -> Result<bool> {
        check_chains("template update", chains)?;
        let n = chains.n;
        need("state", n, self.len(x))?;
        need("denoised", n, self.len(denoised))?;
        if let Some(g) = lik_grad {
            need("likelihood gradient", n, self.len(g))?;
        }
        self.template_update_raw(x, denoised, lik_grad, chains, step, check)
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
pub fn check_chains(what: &str, chains: Chains) -> Result<()> {
    let Chains { n, chain_len } = chains;
    if chain_len == 0 || !n.is_multiple_of(chain_len) {
        bail!("{what}: length {n} is not a multiple of the chain length {chain_len}");
    }
    Ok(())
}
