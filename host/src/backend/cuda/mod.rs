//! Device selection (`--device cpu|cuda|auto`) and, with the `cuda` cargo feature, the CUDA
//! backend ([`gpu`]): cudarc with dynamic loading, so the binary builds without CUDA and needs
//! only the driver's `libcuda.so.1` at run time. The kernels are the PTX module built from the
//! kernels crate (scripts/build-ptx.sh), embedded (`embed-ptx`) or read from `--ptx PATH`.
//!
//! This module always compiles; without the feature, asking for `cuda` is a clear error and
//! `auto` resolves to the CPU.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

#[cfg(feature = "cuda")]
pub mod gpu;

/// Where to run, as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// The CPU backend (worker pool).
    Cpu,
    /// The CUDA backend; an error if no usable GPU (or the binary lacks the `cuda` feature).
    Cuda,
    /// CUDA when usable, else the CPU with one line on stderr saying why.
    Auto,
}

/// `--device` and `--ptx` of the sampling commands.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct DeviceArgs {
    /// Where to sample: cpu, cuda (an error without a usable GPU) or auto (CUDA when usable,
    /// else the CPU with one line saying why). The GPU runs ADM networks, unconditional; its
    /// samples differ from the CPU's by rounding only.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: Device,
    /// PTX module for the CUDA backend (scripts/build-ptx.sh); not needed when host was built
    /// with --features embed-ptx.
    #[arg(long, value_name = "PATH")]
    pub ptx: Option<PathBuf>,
    /// Convolutions on the GPU's tensor cores (operands rounded to f16, f32 accumulation):
    /// faster, less exact; experimental until `host selftest` has checked it on a GPU.
    #[arg(long)]
    pub tensor_cores: bool,
}

/// Where the PTX module comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PtxSource {
    /// A file given with `--ptx PATH`.
    File(PathBuf),
    /// The module embedded at build time (feature `embed-ptx`).
    Embedded,
}

/// The PTX embedded at build time, if the binary was built with `embed-ptx`.
pub fn embedded_ptx() -> Option<&'static str> {
    #[cfg(feature = "embed-ptx")]
    {
        Some(include_str!(concat!(
            env!("OUT_DIR"),
            "/tweedie_kernels.ptx"
        )))
    }
    #[cfg(not(feature = "embed-ptx"))]
    {
        None
    }
}

/// `--ptx PATH` if given, else the embedded module; an error naming both ways if neither.
pub fn ptx_source(path: Option<&Path>) -> Result<PtxSource> {
    match path {
        Some(p) => Ok(PtxSource::File(p.to_path_buf())),
        None if embedded_ptx().is_some() => Ok(PtxSource::Embedded),
        None => bail!(
            "no PTX module: pass --ptx PATH (built by scripts/build-ptx.sh) or build host with --features embed-ptx"
        ),
    }
}

/// Whether this binary has the CUDA backend compiled in.
pub const CUDA_COMPILED: bool = cfg!(feature = "cuda");

/// The backend a run resolved to.
pub enum Resolved {
    /// Run on the CPU.
    Cpu,
    /// Run on this GPU.
    #[cfg(feature = "cuda")]
    Cuda(Box<gpu::CudaBackend>),
}

/// Opens the backend for `device`: `cpu` always works; `cuda` opens the GPU or fails with one
/// clear reason; `auto` tries CUDA and falls back to the CPU, printing one line that says why.
pub fn open(device: Device, ptx: Option<&Path>) -> Result<Resolved> {
    match device {
        Device::Cpu => Ok(Resolved::Cpu),
        Device::Cuda => open_cuda(ptx),
        Device::Auto => match open_cuda(ptx) {
            Ok(r) => Ok(r),
            Err(e) => {
                eprintln!("note: --device auto: no usable GPU ({e:#}); running on the CPU");
                Ok(Resolved::Cpu)
            }
        },
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ptx: Option<&Path>) -> Result<Resolved> {
    Ok(Resolved::Cuda(Box::new(gpu::CudaBackend::open(ptx)?)))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ptx: Option<&Path>) -> Result<Resolved> {
    bail!("this host binary was built without CUDA support (rebuild with `cargo build --release -p tweedie-host --features cuda`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_always_opens_and_auto_never_fails() {
        assert!(matches!(open(Device::Cpu, None).unwrap(), Resolved::Cpu));
        // On a machine without a GPU (or without the feature) auto falls back; with a GPU it
        // may open it: either way it is not an error.
        assert!(open(Device::Auto, Some(Path::new("/nonexistent.ptx"))).is_ok());
    }

    #[test]
    fn cuda_without_a_usable_gpu_is_one_clear_error() {
        // No machine running the CPU tests has this PTX file, so `cuda` fails whatever the
        // hardware: without the feature, with no driver, or at loading the module.
        let err = open(Device::Cuda, Some(Path::new("/nonexistent/k.ptx")))
            .err()
            .expect("cuda must fail");
        let msg = format!("{err:#}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(
            msg.contains("CUDA")
                || msg.contains("driver")
                || msg.contains("PTX")
                || msg.contains("device"),
            "{msg}"
        );
    }

    #[test]
    fn ptx_source_needs_a_path_unless_embedded() {
        let p = Path::new("k.ptx");
        assert_eq!(ptx_source(Some(p)).unwrap(), PtxSource::File(p.into()));
        match embedded_ptx() {
            Some(_) => assert_eq!(ptx_source(None).unwrap(), PtxSource::Embedded),
            None => assert!(format!("{:#}", ptx_source(None).unwrap_err()).contains("--ptx")),
        }
    }
}
