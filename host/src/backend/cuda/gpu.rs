//! The CUDA backend: one context, one stream and one PTX module (JIT-compiled by the driver
//! once, at [`CudaBackend::open`]), and a typed launch helper per kernel of
//! `tweedie_kernels::ptx`. Buffers stay on the device between calls; only [`CudaBackend::download`]
//! copies back. Launch shapes follow the kernels' module docs.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use half::f16;
use tweedie_core::sampler::UpdateCoefficients;
use tweedie_kernels::{Conv2d, QkvOrder};

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

fn check(what: &str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        bail!("{what}: {got} elements on the device, expected {expected}");
    }
    Ok(())
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
        Ok(CudaBackend {
            stream: ctx.default_stream(),
            _ctx: ctx,
            _module: module,
            funcs,
            info,
        })
    }

    fn func(&self, name: &str) -> &CudaFunction {
        &self.funcs[name]
    }

    /// Copies host data to a new device buffer.
    pub fn upload<T: cudarc::driver::DeviceRepr>(&self, v: &[T]) -> Result<CudaSlice<T>> {
        Ok(self.stream.clone_htod(v)?)
    }

    /// Uploads f32 weights, or converts them to f16 first (half the device memory).
    pub fn upload_weights(&self, w: &[f32], as_f16: bool) -> Result<DevWeights> {
        Ok(if as_f16 {
            let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            DevWeights::F16(self.stream.clone_htod(&h)?)
        } else {
            DevWeights::F32(self.stream.clone_htod(w)?)
        })
    }

    /// A zeroed device buffer.
    pub fn zeros(&self, n: usize) -> Result<CudaSlice<f32>> {
        Ok(self.stream.alloc_zeros::<f32>(n)?)
    }

    /// Copies a device buffer back (waits for the work queued before it).
    pub fn download(&self, d: &CudaSlice<f32>) -> Result<Vec<f32>> {
        Ok(self.stream.clone_dtoh(d)?)
    }

    /// Reads a one-element `u32` flag back (e.g. the template update's non-finite flag).
    pub fn stream_flag(&self, flag: &CudaSlice<u32>) -> Result<u32> {
        Ok(self.stream.clone_dtoh(flag)?.first().copied().unwrap_or(0))
    }

    /// Waits until every queued kernel has finished (for timings).
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    /// `out[i] = noise::gaussian(seed, chain, counter, first_element + i)`.
    pub fn noise(
        &self,
        out: &mut CudaSlice<f32>,
        seed: u64,
        chain: u64,
        counter: u64,
        first: u64,
    ) -> Result<()> {
        let n = u32_of(out.len(), "noise length")?;
        let cfg = grid_1d(out.len())?;
        let mut lb = self.stream.launch_builder(self.func("noise_gaussian_f32"));
        lb.arg(out)
            .arg(&n)
            .arg(&seed)
            .arg(&chain)
            .arg(&counter)
            .arg(&first);
        // SAFETY: argument list and sizes match the kernel's signature and contract.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }

    /// x₀ = std·gaussian(seed, first_chain + c, COUNTER_INIT, e) for chains of `chain_len`.
    pub fn init_state(
        &self,
        x: &mut CudaSlice<f32>,
        chain_len: usize,
        std: f32,
        seed: u64,
        first_chain: u64,
    ) -> Result<()> {
        if chain_len == 0 || !x.len().is_multiple_of(chain_len) {
            bail!(
                "init_state: length {} is not a multiple of chain_len {chain_len}",
                x.len()
            );
        }
        let (n, cl) = (
            u32_of(x.len(), "state length")?,
            u32_of(chain_len, "chain_len")?,
        );
        let cfg = grid_1d(x.len())?;
        let mut lb = self.stream.launch_builder(self.func("init_state_f32"));
        lb.arg(x)
            .arg(&n)
            .arg(&cl)
            .arg(&std)
            .arg(&seed)
            .arg(&first_chain);
        // SAFETY: as above.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }

    /// One fused template step (eq. 11, or eq. 24 with `lik_grad`) for every chain, in place;
    /// a non-finite result sets `nonfinite[0] = 1`.
    #[allow(clippy::too_many_arguments)]
    pub fn template_update(
        &self,
        x: &mut CudaSlice<f32>,
        denoised: &CudaSlice<f32>,
        lik_grad: Option<&CudaSlice<f32>>,
        nonfinite: &mut CudaSlice<u32>,
        chain_len: usize,
        coef: &UpdateCoefficients,
        seed: u64,
        first_chain: u64,
        counter: u64,
    ) -> Result<()> {
        check("denoised", x.len(), denoised.len())?;
        if let Some(g) = lik_grad {
            check("likelihood gradient", x.len(), g.len())?;
        }
        if chain_len == 0 || !x.len().is_multiple_of(chain_len) {
            bail!(
                "template update: length {} is not a multiple of chain_len {chain_len}",
                x.len()
            );
        }
        let (n, cl) = (
            u32_of(x.len(), "state length")?,
            u32_of(chain_len, "chain_len")?,
        );
        let cfg = grid_1d(x.len())?;
        let null = 0u64;
        let mut lb = self.stream.launch_builder(self.func("template_update_f32"));
        lb.arg(x).arg(denoised);
        match lik_grad {
            Some(g) => lb.arg(g),
            None => lb.arg(&null),
        };
        lb.arg(nonfinite)
            .arg(&n)
            .arg(&cl)
            .arg(&coef.drift)
            .arg(&coef.likelihood)
            .arg(&coef.noise)
            .arg(&seed)
            .arg(&first_chain)
            .arg(&counter);
        // SAFETY: as above; a null lik_grad is the kernel's documented "absent".
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }

    /// x ← SiLU(x).
    pub fn silu(&self, x: &mut CudaSlice<f32>) -> Result<()> {
        let n = u32_of(x.len(), "length")?;
        let cfg = grid_1d(x.len())?;
        let mut lb = self.stream.launch_builder(self.func("silu_f32"));
        lb.arg(x).arg(&n);
        // SAFETY: as above.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }

    /// dst += src.
    pub fn add(&self, dst: &mut CudaSlice<f32>, src: &CudaSlice<f32>) -> Result<()> {
        check("add source", dst.len(), src.len())?;
        let n = u32_of(dst.len(), "length")?;
        let cfg = grid_1d(dst.len())?;
        let mut lb = self.stream.launch_builder(self.func("add_f32"));
        lb.arg(dst).arg(src).arg(&n);
        // SAFETY: as above.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }

    /// y[b] = W·x[b] + bias for a batch; W is [out, in].
    pub fn linear(
        &self,
        x: &CudaSlice<f32>,
        w: &DevWeights,
        bias: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        batch: usize,
    ) -> Result<()> {
        let out_f = bias.len();
        let in_f = x.len().checked_div(batch).unwrap_or(0);
        check("linear input", batch * in_f, x.len())?;
        check("linear output", batch * out_f, y.len())?;
        let wlen = match w {
            DevWeights::F32(w) => w.len(),
            DevWeights::F16(w) => w.len(),
        };
        check("linear weight", out_f * in_f, wlen)?;
        let (b, i, o) = (
            u32_of(batch, "batch")?,
            u32_of(in_f, "in")?,
            u32_of(out_f, "out")?,
        );
        let cfg = grid_1d(y.len())?;
        let mut lb = match w {
            DevWeights::F32(w) => {
                let mut lb = self.stream.launch_builder(self.func("linear_f32"));
                lb.arg(x).arg(w);
                lb
            }
            DevWeights::F16(w) => {
                let mut lb = self.stream.launch_builder(self.func("linear_f16w"));
                lb.arg(x).arg(w);
                lb
            }
        };
        lb.arg(bias).arg(y).arg(&b).arg(&i).arg(&o);
        // SAFETY: sizes checked above.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }

    /// GroupNorm (+ FiLM `[batch, channels]` scale/shift, + SiLU) of x [batch, channels, hw].
    #[allow(clippy::too_many_arguments)]
    pub fn group_norm(
        &self,
        x: &CudaSlice<f32>,
        gamma: &CudaSlice<f32>,
        beta: &CudaSlice<f32>,
        film: Option<(&CudaSlice<f32>, &CudaSlice<f32>)>,
        out: &mut CudaSlice<f32>,
        batch: usize,
        hw: usize,
        groups: usize,
        eps: f32,
        silu_after: bool,
    ) -> Result<()> {
        let channels = gamma.len();
        if groups == 0 || !channels.is_multiple_of(groups) || hw == 0 {
            bail!("group norm: channels {channels} not a multiple of groups {groups}, or hw = 0");
        }
        check("group norm input", batch * channels * hw, x.len())?;
        check("group norm output", x.len(), out.len())?;
        check("group norm beta", channels, beta.len())?;
        if let Some((s, t)) = film {
            check("FiLM scale", batch * channels, s.len())?;
            check("FiLM shift", batch * channels, t.len())?;
        }
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
        let silu = u32::from(silu_after);
        let null = 0u64;
        let mut lb = self.stream.launch_builder(self.func("group_norm_f32"));
        lb.arg(x).arg(gamma).arg(beta);
        match film {
            Some((s, t)) => lb.arg(s).arg(t),
            None => lb.arg(&null).arg(&null),
        };
        lb.arg(out).arg(&c).arg(&h).arg(&g).arg(&eps).arg(&silu);
        // SAFETY: sizes checked; block shape as the kernel requires.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }

    /// Conv2d of x [batch, c_in, h, w] into out [batch, c_out, oh, ow].
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &self,
        conv: &Conv2d,
        x: &CudaSlice<f32>,
        h: usize,
        w: usize,
        weight: &DevWeights,
        bias: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        batch: usize,
    ) -> Result<()> {
        let (oh, ow) = conv.out_size(h, w);
        if oh == 0 || ow == 0 || conv.stride == 0 || conv.kernel == 0 {
            bail!("conv2d: empty output for {conv:?} on {h}x{w}");
        }
        check("conv2d input", batch * conv.c_in * h * w, x.len())?;
        check("conv2d output", batch * conv.c_out * oh * ow, out.len())?;
        check("conv2d bias", conv.c_out, bias.len())?;
        let wlen = match weight {
            DevWeights::F32(v) => v.len(),
            DevWeights::F16(v) => v.len(),
        };
        check(
            "conv2d weight",
            conv.c_out * conv.c_in * conv.kernel * conv.kernel,
            wlen,
        )?;
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
        let mut lb = match weight {
            DevWeights::F32(v) => {
                let mut lb = self.stream.launch_builder(self.func("conv2d_f32"));
                lb.arg(x).arg(v);
                lb
            }
            DevWeights::F16(v) => {
                let mut lb = self.stream.launch_builder(self.func("conv2d_f16w"));
                lb.arg(x).arg(v);
                lb
            }
        };
        lb.arg(bias).arg(out);
        for d in &dims {
            lb.arg(d);
        }
        // SAFETY: sizes checked; block shape as the kernel requires.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }

    /// Scratch floats [`CudaBackend::attention`] needs: one softmax row per (image, head, query).
    pub fn attention_scratch_len(batch: usize, heads: usize, t: usize) -> usize {
        batch * heads * t * t
    }

    /// Multi-head attention core: qkv [batch, 3C, T] → out [batch, C, T].
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        qkv: &CudaSlice<f32>,
        scratch: &mut CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        batch: usize,
        channels: usize,
        t: usize,
        heads: usize,
        order: QkvOrder,
    ) -> Result<()> {
        if heads == 0 || !channels.is_multiple_of(heads) || t == 0 {
            bail!("attention: channels {channels} not a multiple of heads {heads}, or T = 0");
        }
        check("attention qkv", batch * 3 * channels * t, qkv.len())?;
        check("attention output", batch * channels * t, out.len())?;
        check(
            "attention scratch",
            Self::attention_scratch_len(batch, heads, t),
            scratch.len(),
        )?;
        let (b, c, tt, hd) = (batch as u32, channels as u32, t as u32, heads as u32);
        let legacy = u32::from(order == QkvOrder::Legacy);
        let cfg = grid_1d(batch * heads * t)?;
        let mut lb = self
            .stream
            .launch_builder(self.func("attention_weights_f32"));
        lb.arg(qkv)
            .arg(&mut *scratch)
            .arg(&b)
            .arg(&c)
            .arg(&tt)
            .arg(&hd)
            .arg(&legacy);
        // SAFETY: sizes checked above.
        unsafe { lb.launch(cfg) }?;
        let cfg = grid_1d(out.len())?;
        let mut lb = self
            .stream
            .launch_builder(self.func("attention_output_f32"));
        lb.arg(qkv)
            .arg(&*scratch)
            .arg(out)
            .arg(&b)
            .arg(&c)
            .arg(&tt)
            .arg(&hd)
            .arg(&legacy);
        // SAFETY: as above.
        unsafe { lb.launch(cfg) }?;
        Ok(())
    }
}
