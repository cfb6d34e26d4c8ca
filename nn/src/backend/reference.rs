//! [`DeviceOps`] on the CPU, one thread, with the kernels crate's CPU functions: the reference
//! the device graph and the device sampling loop are tested against on machines without a
//! GPU (the layer arithmetic itself is tested in the kernels crate and, on a GPU, by
//! `host selftest`). Buffers are plain vectors.

use anyhow::{anyhow, Result};
use half::f16;
use tweedie_core::noise;
use tweedie_core::sampler::{update_element, ChainNoise};
use tweedie_core::tweedie::{output_to_denoised, NetOutput};
use tweedie_kernels::{self as k, Conv2d, KernelError, WeightsRef};

use super::ops::{
    AttentionOp, Chains, ChannelCopy, DeviceOps, GroupNormOp, LinearOp, MapBatch, NetReadout,
    UpdateStep,
};

/// Weights as stored in the file.
pub enum OwnedWeights {
    /// Single precision.
    F32(Vec<f32>),
    /// Half precision.
    F16(Vec<f16>),
}

impl OwnedWeights {
    fn as_ref(&self) -> WeightsRef<'_> {
        match self {
            OwnedWeights::F32(v) => WeightsRef::F32(v),
            OwnedWeights::F16(v) => WeightsRef::F16(v),
        }
    }
}

/// The CPU reference device.
#[derive(Debug, Default)]
pub struct ReferenceOps;

fn kernel(what: &str) -> impl Fn(KernelError) -> anyhow::Error + '_ {
    move |e| anyhow!("{what}: {e}")
}

impl DeviceOps for ReferenceOps {
    type Buf = Vec<f32>;
    type Weights = OwnedWeights;

    fn len(&self, b: &Vec<f32>) -> usize {
        b.len()
    }

    fn weights_len(&self, w: &OwnedWeights) -> usize {
        match w {
            OwnedWeights::F32(v) => v.len(),
            OwnedWeights::F16(v) => v.len(),
        }
    }

    fn alloc(&self, n: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; n])
    }

    fn upload(&self, v: &[f32]) -> Result<Vec<f32>> {
        Ok(v.to_vec())
    }

    fn write_raw(&self, b: &mut Vec<f32>, v: &[f32]) -> Result<()> {
        b[..v.len()].copy_from_slice(v);
        Ok(())
    }

    fn upload_weights(&self, w: WeightsRef<'_>) -> Result<OwnedWeights> {
        Ok(match w {
            WeightsRef::F32(v) => OwnedWeights::F32(v.to_vec()),
            WeightsRef::F16(v) => OwnedWeights::F16(v.to_vec()),
        })
    }

    fn read_raw(&self, b: &Vec<f32>, out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(&b[..out.len()]);
        Ok(())
    }

    fn use_tensor_cores(&self, _on: bool) -> bool {
        false
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn fill_noise_raw(
        &self,
        out: &mut Vec<f32>,
        n: usize,
        seed: u64,
        chain: u64,
        counter: u64,
        first: u64,
    ) -> Result<()> {
        noise::fill_gaussian(&mut out[..n], seed, chain, counter, first);
        Ok(())
    }

    fn conv2d_raw(
        &self,
        conv: &Conv2d,
        at: MapBatch,
        x: &Vec<f32>,
        weight: &OwnedWeights,
        bias: &Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let MapBatch { batch, h, w } = at;
        let (oh, ow) = conv.out_size(h, w);
        let (per_in, per_out) = (conv.c_in * h * w, conv.c_out * oh * ow);
        let mut scratch = vec![0.0; conv.scratch_len(h, w)];
        for b in 0..batch {
            conv.forward(
                k::Map::new(&x[b * per_in..][..per_in], h, w),
                k::ConvParams {
                    weight: weight.as_ref(),
                    bias,
                },
                0..conv.c_out,
                &mut out[b * per_out..][..per_out],
                &mut scratch,
            )
            .map_err(kernel("conv2d"))?;
        }
        Ok(())
    }

    fn group_norm_raw(
        &self,
        op: &GroupNormOp,
        x: &Vec<f32>,
        gamma: &Vec<f32>,
        beta: &Vec<f32>,
        film: Option<&Vec<f32>>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let GroupNormOp {
            batch,
            channels,
            hw,
            groups,
            eps,
            silu,
        } = *op;
        let per = channels * hw;
        for b in 0..batch {
            let film = film.map(|f| f[2 * b * channels..][..2 * channels].split_at(channels));
            k::GroupNorm {
                channels,
                hw,
                groups,
                eps,
                silu,
            }
            .forward(
                &x[b * per..][..per],
                &k::NormAffine { gamma, beta, film },
                0..groups,
                &mut out[b * per..][..per],
            )
            .map_err(kernel("group norm"))?;
        }
        Ok(())
    }

    fn linear_raw(
        &self,
        op: LinearOp,
        x: &Vec<f32>,
        w: &OwnedWeights,
        bias: &Vec<f32>,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        let LinearOp {
            batch,
            in_features,
            out_features,
        } = op;
        for b in 0..batch {
            k::linear(
                &x[b * in_features..][..in_features],
                w.as_ref(),
                bias,
                in_features,
                0..out_features,
                &mut y[b * out_features..][..out_features],
            )
            .map_err(kernel("linear"))?;
        }
        Ok(())
    }

    fn silu_raw(&self, x: &mut Vec<f32>, n: usize) -> Result<()> {
        k::silu_inplace(&mut x[..n]);
        Ok(())
    }

    fn add_raw(&self, dst: &mut Vec<f32>, src: &Vec<f32>, n: usize) -> Result<()> {
        k::add_inplace(&mut dst[..n], &src[..n]);
        Ok(())
    }

    fn scale_raw(&self, dst: &mut Vec<f32>, src: &Vec<f32>, n: usize, factor: f32) -> Result<()> {
        for (d, &s) in dst[..n].iter_mut().zip(&src[..n]) {
            *d = factor * s;
        }
        Ok(())
    }

    fn attention_scratch_len(&self, _batch: usize, _heads: usize, t: usize) -> usize {
        k::attention_scratch_len(t)
    }

    fn attention_raw(
        &self,
        op: &AttentionOp,
        qkv: &Vec<f32>,
        scratch: &mut Vec<f32>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let AttentionOp {
            batch,
            channels,
            t,
            heads,
            order,
        } = *op;
        let (per_in, per_out) = (3 * channels * t, channels * t);
        for b in 0..batch {
            k::QkvAttention {
                channels,
                t,
                heads,
                order,
            }
            .forward(
                &qkv[b * per_in..][..per_in],
                0..heads,
                &mut out[b * per_out..][..per_out],
                scratch,
            )
            .map_err(kernel("attention"))?;
        }
        Ok(())
    }

    fn upsample2x_raw(
        &self,
        x: &Vec<f32>,
        out: &mut Vec<f32>,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        k::upsample_nearest2x(x, h, w, 0..planes, &mut out[..planes * 4 * h * w]);
        Ok(())
    }

    fn avg_pool2x2_raw(
        &self,
        x: &Vec<f32>,
        out: &mut Vec<f32>,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        k::avg_pool2x2(x, h, w, 0..planes, &mut out[..planes * (h / 2) * (w / 2)]);
        Ok(())
    }

    fn copy_channels_raw(&self, op: ChannelCopy, dst: &mut Vec<f32>, src: &Vec<f32>) -> Result<()> {
        let ChannelCopy {
            batch,
            src_c,
            dst_c,
            first,
            hw,
        } = op;
        for b in 0..batch {
            let s = &src[b * src_c * hw..][..src_c * hw];
            dst[(b * dst_c + first) * hw..][..src_c * hw].copy_from_slice(s);
        }
        Ok(())
    }

    fn add_channel_bias_raw(
        &self,
        x: &mut Vec<f32>,
        bias: &Vec<f32>,
        stride: usize,
        batch: usize,
        channels: usize,
        hw: usize,
    ) -> Result<()> {
        for b in 0..batch {
            for c in 0..channels {
                let e = bias[b * stride + c];
                x[(b * channels + c) * hw..][..hw]
                    .iter_mut()
                    .for_each(|v| *v += e);
            }
        }
        Ok(())
    }

    fn timestep_embedding_raw(
        &self,
        t: &Vec<f32>,
        out: &mut Vec<f32>,
        batch: usize,
        dim: usize,
        max_period: f32,
    ) -> Result<()> {
        for b in 0..batch {
            k::timestep_embedding(t[b], dim, max_period, &mut out[b * dim..][..dim])
                .map_err(kernel("timestep embedding"))?;
        }
        Ok(())
    }

    fn init_state_raw(
        &self,
        x: &mut Vec<f32>,
        chains: Chains,
        std: f32,
        seed: u64,
        first_chain: u64,
    ) -> Result<()> {
        let Chains { n, chain_len } = chains;
        for (i, v) in x[..n].iter_mut().enumerate() {
            let (c, e) = (i / chain_len, i % chain_len);
            let z = noise::gaussian(seed, first_chain + c as u64, noise::COUNTER_INIT, e as u64);
            *v = std * z;
        }
        Ok(())
    }

    fn denoised_from_output_raw(
        &self,
        d: &mut Vec<f32>,
        x: &Vec<f32>,
        net: &Vec<f32>,
        chains: Chains,
        readout: NetReadout,
    ) -> Result<()> {
        let (
            Chains { n, chain_len },
            NetReadout {
                stride,
                output,
                coef,
            },
        ) = (chains, readout);
        for (i, v) in d[..n].iter_mut().enumerate() {
            let y = net[i / chain_len * stride + i % chain_len];
            *v = match output {
                NetOutput::Denoised => y,
                _ => output_to_denoised(output, x[i], y, coef),
            };
        }
        Ok(())
    }

    fn template_update_raw(
        &self,
        x: &mut Vec<f32>,
        denoised: &Vec<f32>,
        lik_grad: Option<&Vec<f32>>,
        chains: Chains,
        step: &UpdateStep,
        _check: bool,
    ) -> Result<bool> {
        let Chains { n, chain_len } = chains;
        let mut nonfinite = false;
        for (i, v) in x[..n].iter_mut().enumerate() {
            let key = ChainNoise {
                seed: step.seed,
                chain: step.first_chain + (i / chain_len) as u64,
                counter: step.counter,
            };
            let g = lik_grad.map_or(0.0, |g| g[i]);
            let z = key.draw(&step.coef, i % chain_len);
            *v = update_element(*v, denoised[i], g, z, &step.coef);
            nonfinite |= !v.is_finite();
        }
        Ok(nonfinite)
    }
}
