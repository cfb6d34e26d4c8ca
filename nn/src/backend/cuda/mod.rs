//! The CUDA backend, with the `cuda` cargo feature ([`gpu`]): cudarc with dynamic loading, so
//! the binary builds without CUDA and needs
//! only the driver's `libcuda.so.1` at run time. The kernels are the PTX module built from the
//! kernels crate (scripts/build-ptx.sh), embedded (`embed-ptx`) or read from `--ptx PATH`.
//!
//! This module always compiles; without the feature, [`open_cuda`] is a clear error.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

#[cfg(feature = "cuda")]
pub mod gpu;

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

/// Opens the GPU with the PTX module from `ptx` (else the embedded one), or fails with one
/// clear reason.
#[cfg(feature = "cuda")]
pub fn open_cuda(ptx: Option<&Path>) -> Result<Resolved> {
    Ok(Resolved::Cuda(Box::new(gpu::CudaBackend::open(ptx)?)))
}

/// Without the `cuda` feature: always the error saying how to rebuild.
#[cfg(not(feature = "cuda"))]
pub fn open_cuda(_ptx: Option<&Path>) -> Result<Resolved> {
    bail!("this host binary was built without CUDA support (rebuild with `cargo build --release -p tweedie-host --features cuda`)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_without_a_usable_gpu_is_one_clear_error() {
        // No machine running the CPU tests has this PTX file, so `cuda` fails whatever the
        // hardware: without the feature, with no driver, or at loading the module.
        let err = open_cuda(Some(Path::new("/nonexistent/k.ptx")))
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
