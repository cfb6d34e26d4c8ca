//! The CUDA backend: one context, one stream and one PTX module (JIT-compiled by the driver
//! once, at [`CudaBackend::open`]), and a typed launch helper per kernel of
//! `tweedie_kernels::ptx`. Buffers stay on the device between calls; only [`CudaBackend::download`]
//! copies back. Launch shapes follow the kernels' module docs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchArgs, LaunchConfig,
    PushKernelArg,
};
use half::f16;
use tweedie_core::tweedie::NetOutput;
use tweedie_kernels::{Conv2d, QkvOrder, WeightsRef};

use crate::backend::ops::{
    AttentionOp, Chains, ChannelCopy, DeviceOps, GroupNormOp, LinearOp, MapBatch, NetReadout,
    UpdateStep,
};

use super::{embedded_ptx, PtxSource};

/// Every kernel the backend launches (also checked by CI: scripts/ptx/entries.txt).
pub const ENTRIES: &[&str] = &[
    "noise_gaussian_f32",
    "init_state_f32",
    "template_update_f32",
    "silu_f32",
    "add_f32",
    "linear_f32",
    "linear_f16w",
    "group_norm_f32",
    "conv2d_f32",
    "conv2d_f16w",
    "attention_weights_f32",
    "attention_output_f32",
    "timestep_embedding_f32",
    "upsample_nearest2x_f32",
    "avg_pool2x2_f32",
    "copy_channels_f32",
    "add_channel_bias_f32",
    "scale_f32",
    "denoised_from_output_f32",
    "conv2d_tc_f32w",
    "conv2d_tc_f16w",
];

/// Block size of the 1-D kernels.
const BLOCK: u32 = 256;
/// Threads per block of `group_norm_f32` (kernels' `GN_THREADS`).
const GN_THREADS: u32 = 256;
/// Conv tile and block (kernels' `conv::{TILE_M, TILE_N, THREADS}`).
const CONV_TILE_M: u32 = 64;
const CONV_TILE_N: u32 = 64;
const CONV_THREADS: u32 = 256;

/// What the self-test logs about the GPU.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    /// Device name (e.g. "NVIDIA H200").
    pub name: String,
    /// CUDA driver API version, e.g. "13.0".
    pub driver: String,
    /// Compute capability, e.g. "9.0".
    pub compute_capability: String,
    /// Device memory in bytes.
    pub total_mem: usize,
}

/// Weights on the device, as uploaded once: f32, or f16 widened in the kernels.
pub enum DevWeights {
    /// Single precision.
    F32(CudaSlice<f32>),
    /// Half precision.
    F16(CudaSlice<f16>),
}

/// An open GPU with the kernels loaded.
pub struct CudaBackend {
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<&'static str, CudaFunction>,
    /// The template update's non-finite flag (set by the kernel, cleared when read).
    nonfinite: Mutex<CudaSlice<u32>>,
    /// Convolutions on the tensor cores (`conv2d_tc_*`).
    tensor_cores: AtomicBool,
    /// The device, for logs.
    pub info: DeviceInfo,
}

/// Opens device 0, with one clear error when there is no driver or no device.
fn open_context() -> Result<Arc<CudaContext>> {
    // cudarc panics when it cannot dlopen libcuda (gpu.md §7), so look first.
    // SAFETY: only tries to dlopen the driver library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        bail!("no NVIDIA driver: libcuda.so.1 not found (on a GPU machine, add the driver's folder to LD_LIBRARY_PATH)");
    }
    let count = std::panic::catch_unwind(CudaContext::device_count)
        .map_err(|_| anyhow!("the CUDA driver library could not be loaded"))?
        .map_err(|e| anyhow!("no CUDA device: {e}"))?;
    if count < 1 {
        bail!("no CUDA device: the driver reports 0 devices");
    }
    CudaContext::new(0).map_err(|e| anyhow!("cannot open CUDA device 0: {e}"))
}

fn driver_version() -> String {
    let mut v: std::ffi::c_int = 0;
    // SAFETY: writes one int; the driver is loaded and initialised by open_context.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    if r == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        format!("{}.{}", v / 1000, v % 1000 / 10)
    } else {
        "unknown".into()
    }
}

fn grid_1d(n: usize) -> Result<LaunchConfig> {
    let n = u32::try_from(n).context("buffer too large for a 1-D launch")?;
    Ok(LaunchConfig {
        grid_dim: (n.div_ceil(BLOCK).max(1), 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    })
}

fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| anyhow!("{what} = {v} does not fit a kernel's u32"))
}

impl CudaBackend {
    /// Opens GPU 0 (first, so a machine without one says so whatever the other arguments),
    /// then loads the PTX from `ptx` or the embedded module (JIT-compiled here, once).
    pub fn open(ptx: Option<&std::path::Path>) -> Result<Self> {
        let ctx = open_context()?;
        let text = match super::ptx_source(ptx)? {
            PtxSource::File(p) => std::fs::read_to_string(&p)
                .with_context(|| format!("cannot read the PTX module {}", p.display()))?,
            PtxSource::Embedded => embedded_ptx()
                .ok_or_else(|| anyhow!("no embedded PTX in this binary"))?
                .to_string(),
        };
        let missing: Vec<_> = ENTRIES
            .iter()
            .filter(|e| !text.contains(&format!(".entry {e}(")))
            .collect();
        if !missing.is_empty() {
            bail!("the PTX module lacks the kernels {missing:?} (rebuild it with scripts/build-ptx.sh)");
        }
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_src(text))
            .map_err(|e| anyhow!("the driver rejected the PTX module: {e}"))?;
        let mut funcs = HashMap::new();
        for &name in ENTRIES {
            let f = module
                .load_function(name)
                .map_err(|e| anyhow!("kernel {name}: {e}"))?;
            funcs.insert(name, f);
        }
        let (major, minor) = ctx.compute_capability()?;
        let info = DeviceInfo {
            name: ctx.name()?,
            driver: driver_version(),
            compute_capability: format!("{major}.{minor}"),
            total_mem: ctx.total_mem()?,
        };
        let stream = ctx.default_stream();
        let nonfinite = Mutex::new(stream.alloc_zeros::<u32>(1)?);
        Ok(CudaBackend {
            stream,
            nonfinite,
            tensor_cores: AtomicBool::new(false),
            _ctx: ctx,
            _module: module,
            funcs,
            info,
        })
    }

    fn func(&self, name: &str) -> &CudaFunction {
        &self.funcs[name]
    }

    /// Launches kernel `name` with the arguments `args` pushes.
    fn launch<'a>(
        &'a self,
        name: &str,
        cfg: LaunchConfig,
        args: impl FnOnce(&mut LaunchArgs<'a>),
    ) -> Result<()> {
        let mut lb = self.stream.launch_builder(self.func(name));
        args(&mut lb);
        // SAFETY: every caller passes the kernel's documented argument list, with sizes
        // checked against the buffers (ops::need) before the launch.
        unsafe { lb.launch(cfg) }.map_err(|e| anyhow!("kernel {name}: {e}"))?;
        Ok(())
    }
}

impl DeviceOps for CudaBackend {
    type Buf = CudaSlice<f32>;
    type Weights = DevWeights;

    fn weights_len(&self, w: &DevWeights) -> usize {
        match w {
            DevWeights::F32(v) => v.len(),
            DevWeights::F16(v) => v.len(),
        }
    }

    fn len(&self, b: &CudaSlice<f32>) -> usize {
        b.len()
    }

    fn alloc(&self, n: usize) -> Result<CudaSlice<f32>> {
        // A zero-length allocation is not a valid device pointer: keep at least one float.
        Ok(self.stream.alloc_zeros::<f32>(n.max(1))?)
    }

    fn upload(&self, v: &[f32]) -> Result<CudaSlice<f32>> {
        Ok(self.stream.clone_htod(v)?)
    }

    fn write_raw(&self, b: &mut CudaSlice<f32>, v: &[f32]) -> Result<()> {
        let mut dst = b.slice_mut(0..v.len());
        Ok(self.stream.memcpy_htod(v, &mut dst)?)
    }

    fn upload_weights(&self, w: WeightsRef<'_>) -> Result<DevWeights> {
        Ok(match w {
            WeightsRef::F32(v) => DevWeights::F32(self.stream.clone_htod(v)?),
            WeightsRef::F16(v) => DevWeights::F16(self.stream.clone_htod(v)?),
        })
    }

    fn read_raw(&self, b: &CudaSlice<f32>, out: &mut [f32]) -> Result<()> {
        let src = b.slice(0..out.len());
        Ok(self.stream.memcpy_dtoh(&src, out)?)
    }

    fn use_tensor_cores(&self, on: bool) -> bool {
        // mma.sync m16n8k16 with f16 operands needs compute capability 8.0 or newer.
        let major: u32 = self
            .info
            .compute_capability
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        let used = on && major >= 8;
        self.tensor_cores.store(used, Ordering::Relaxed);
        used
    }

    fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    fn fill_noise_raw(
        &self,
        out: &mut CudaSlice<f32>,
        n: usize,
        seed: u64,
        chain: u64,
        counter: u64,
        first: u64,
    ) -> Result<()> {
        let n32 = u32_of(n, "noise length")?;
        self.launch("noise_gaussian_f32", grid_1d(n)?, |lb| {
            lb.arg(out)
                .arg(&n32)
                .arg(&seed)
                .arg(&chain)
                .arg(&counter)
                .arg(&first);
        })
    }

    fn conv2d_raw(
        &self,
        conv: &Conv2d,
        at: MapBatch,
        x: &CudaSlice<f32>,
        weight: &DevWeights,
        bias: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let MapBatch { batch, h, w } = at;
        let (oh, ow) = conv.out_size(h, w);
        let cfg = LaunchConfig {
            grid_dim: (
                u32_of(oh * ow, "pixels")?.div_ceil(CONV_TILE_N),
                u32_of(conv.c_out, "c_out")?.div_ceil(CONV_TILE_M),
                u32_of(batch, "batch")?,
            ),
            block_dim: (CONV_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let dims = [
            conv.c_in,
            h,
            w,
            conv.c_out,
            conv.kernel,
            conv.stride,
            conv.pad,
            oh,
            ow,
        ]
        .map(|v| v as u32);
        let tc = self.tensor_cores.load(Ordering::Relaxed);
        let name = match (weight, tc) {
            (DevWeights::F32(_), false) => "conv2d_f32",
            (DevWeights::F16(_), false) => "conv2d_f16w",
            (DevWeights::F32(_), true) => "conv2d_tc_f32w",
            (DevWeights::F16(_), true) => "conv2d_tc_f16w",
        };
        self.launch(name, cfg, |lb| {
            lb.arg(x);
            match weight {
                DevWeights::F32(v) => lb.arg(v),
                DevWeights::F16(v) => lb.arg(v),
            };
            lb.arg(bias).arg(out);
            for d in &dims {
                lb.arg(d);
            }
        })
    }

    fn group_norm_raw(
        &self,
        op: &GroupNormOp,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        beta: &CudaSlice<f32>,
        film: Option<&CudaSlice<f32>>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let GroupNormOp {
            batch,
            channels,
            hw,
            groups,
            eps,
            silu,
        } = *op;
        let cfg = LaunchConfig {
            grid_dim: (u32_of(groups, "groups")?, u32_of(batch, "batch")?, 1),
            block_dim: (GN_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (c, h, g) = (
            u32_of(channels, "channels")?,
            u32_of(hw, "hw")?,
            groups as u32,
        );
        let silu = u32::from(silu);
        let null = 0u64;
        self.launch("group_norm_f32", cfg, |lb| {
            lb.arg(x).arg(gamma).arg(beta);
            match film {
                Some(f) => lb.arg(f),
                None => lb.arg(&null),
            };
            lb.arg(out).arg(&c).arg(&h).arg(&g).arg(&eps).arg(&silu);
        })
    }

    fn linear_raw(
        &self,
        op: LinearOp,
        x: &CudaSlice<f32>,
        w: &DevWeights,
        bias: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let LinearOp {
            batch,
            in_features,
            out_features,
        } = op;
        let (b, i, o) = (
            u32_of(batch, "batch")?,
            u32_of(in_features, "in")?,
            u32_of(out_features, "out")?,
        );
        let name = match w {
            DevWeights::F32(_) => "linear_f32",
            DevWeights::F16(_) => "linear_f16w",
        };
        self.launch(name, grid_1d(batch * out_features)?, |lb| {
            lb.arg(x);
            match w {
                DevWeights::F32(v) => lb.arg(v),
                DevWeights::F16(v) => lb.arg(v),
            };
            lb.arg(bias).arg(y).arg(&b).arg(&i).arg(&o);
        })
    }

    fn silu_raw(&self, x: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        let n32 = u32_of(n, "length")?;
        self.launch("silu_f32", grid_1d(n)?, |lb| {
            lb.arg(x).arg(&n32);
        })
    }

    fn add_raw(&self, dst: &mut CudaSlice<f32>, src: &CudaSlice<f32>, n: usize) -> Result<()> {
        let n32 = u32_of(n, "length")?;
        self.launch("add_f32", grid_1d(n)?, |lb| {
            lb.arg(dst).arg(src).arg(&n32);
        })
    }

    fn scale_raw(
        &self,
        dst: &mut CudaSlice<f32>,
        src: &CudaSlice<f32>,
        n: usize,
        factor: f32,
    ) -> Result<()> {
        let n32 = u32_of(n, "length")?;
        self.launch("scale_f32", grid_1d(n)?, |lb| {
            lb.arg(dst).arg(src).arg(&n32).arg(&factor);
        })
    }

    fn attention_scratch_len(&self, batch: usize, heads: usize, t: usize) -> usize {
        batch * heads * t * t
    }

    fn attention_raw(
        &self,
        op: &AttentionOp,
        qkv: &CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let AttentionOp {
            batch,
            channels,
            t,
            heads,
            order,
        } = *op;
        let (b, c, tt, hd) = (
            u32_of(batch, "batch")?,
            u32_of(channels, "channels")?,
            u32_of(t, "T")?,
            u32_of(heads, "heads")?,
        );
        let legacy = u32::from(order == QkvOrder::Legacy);
        self.launch("attention_weights_f32", grid_1d(batch * heads * t)?, |lb| {
            lb.arg(qkv)
                .arg(&mut *scratch)
                .arg(&b)
                .arg(&c)
                .arg(&tt)
                .arg(&hd)
                .arg(&legacy);
        })?;
        self.launch(
            "attention_output_f32",
            grid_1d(batch * channels * t)?,
            |lb| {
                lb.arg(qkv)
                    .arg(&*scratch)
                    .arg(out)
                    .arg(&b)
                    .arg(&c)
                    .arg(&tt)
                    .arg(&hd)
                    .arg(&legacy);
            },
        )
    }

    fn upsample2x_raw(
        &self,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        let (p, h32, w32) = (u32_of(planes, "planes")?, u32_of(h, "h")?, u32_of(w, "w")?);
        self.launch(
            "upsample_nearest2x_f32",
            grid_1d(planes * 4 * h * w)?,
            |lb| {
                lb.arg(x).arg(out).arg(&p).arg(&h32).arg(&w32);
            },
        )
    }

    fn avg_pool2x2_raw(
        &self,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        planes: usize,
        h: usize,
        w: usize,
    ) -> Result<()> {
        let (p, h32, w32) = (u32_of(planes, "planes")?, u32_of(h, "h")?, u32_of(w, "w")?);
        self.launch(
            "avg_pool2x2_f32",
            grid_1d(planes * (h / 2) * (w / 2))?,
            |lb| {
                lb.arg(x).arg(out).arg(&p).arg(&h32).arg(&w32);
            },
        )
    }

    fn copy_channels_raw(
        &self,
        op: ChannelCopy,
        dst: &mut CudaSlice<f32>,
        src: &CudaSlice<f32>,
    ) -> Result<()> {
        let ChannelCopy {
            batch,
            src_c,
            dst_c,
            first,
            hw,
        } = op;
        let a = [batch, src_c, dst_c, first, hw].map(|v| v as u32);
        u32_of(batch * dst_c * hw, "copy length")?;
        self.launch("copy_channels_f32", grid_1d(batch * src_c * hw)?, |lb| {
            lb.arg(dst).arg(src);
            for v in &a {
                lb.arg(v);
            }
        })
    }

    fn add_channel_bias_raw(
        &self,
        x: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        stride: usize,
        batch: usize,
        channels: usize,
        hw: usize,
    ) -> Result<()> {
        u32_of(batch * channels * hw, "bias target length")?;
        let a = [stride, batch, channels, hw].map(|v| v as u32);
        self.launch(
            "add_channel_bias_f32",
            grid_1d(batch * channels * hw)?,
            |lb| {
                lb.arg(x).arg(bias);
                for v in &a {
                    lb.arg(v);
                }
            },
        )
    }

    fn timestep_embedding_raw(
        &self,
        t: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        batch: usize,
        dim: usize,
        max_period: f32,
    ) -> Result<()> {
        let (b, d) = (u32_of(batch, "batch")?, u32_of(dim, "dim")?);
        self.launch("timestep_embedding_f32", grid_1d(batch * dim)?, |lb| {
            lb.arg(t).arg(out).arg(&b).arg(&d).arg(&max_period);
        })
    }

    fn init_state_raw(
        &self,
        x: &mut CudaSlice<f32>,
        chains: Chains,
        std: f32,
        seed: u64,
        first_chain: u64,
    ) -> Result<()> {
        let Chains { n, chain_len } = chains;
        let (n32, cl) = (u32_of(n, "state length")?, u32_of(chain_len, "chain_len")?);
        self.launch("init_state_f32", grid_1d(n)?, |lb| {
            lb.arg(x)
                .arg(&n32)
                .arg(&cl)
                .arg(&std)
                .arg(&seed)
                .arg(&first_chain);
        })
    }

    fn denoised_from_output_raw(
        &self,
        d: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        net: &CudaSlice<f32>,
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
        let a = [
            u32_of(n, "state length")?,
            u32_of(chain_len, "chain_len")?,
            u32_of(stride, "network stride")?,
            match output {
                NetOutput::Eps => 0,
                NetOutput::Score => 1,
                NetOutput::Denoised => 2,
            },
        ];
        self.launch("denoised_from_output_f32", grid_1d(n)?, |lb| {
            lb.arg(d).arg(x).arg(net);
            for v in &a {
                lb.arg(v);
            }
            lb.arg(&coef);
        })
    }

    fn template_update_raw(
        &self,
        x: &mut CudaSlice<f32>,
        denoised: &CudaSlice<f32>,
        lik_grad: Option<&CudaSlice<f32>>,
        chains: Chains,
        step: &UpdateStep,
        check: bool,
    ) -> Result<bool> {
        let Chains { n, chain_len } = chains;
        let (n32, cl) = (u32_of(n, "state length")?, u32_of(chain_len, "chain_len")?);
        let null = 0u64;
        let c = &step.coef;
        let mut flag = self.nonfinite.lock().unwrap_or_else(|p| p.into_inner());
        self.launch("template_update_f32", grid_1d(n)?, |lb| {
            lb.arg(x).arg(denoised);
            match lik_grad {
                Some(g) => lb.arg(g),
                None => lb.arg(&null),
            };
            lb.arg(&mut *flag)
                .arg(&n32)
                .arg(&cl)
                .arg(&c.drift)
                .arg(&c.likelihood)
                .arg(&c.noise)
                .arg(&step.seed)
                .arg(&step.first_chain)
                .arg(&step.counter);
        })?;
        if !check {
            return Ok(false);
        }
        let set = self
            .stream
            .clone_dtoh(&*flag)?
            .first()
            .copied()
            .unwrap_or(0)
            != 0;
        if set {
            self.stream.memset_zeros(&mut *flag)?;
        }
        Ok(set)
    }
}
