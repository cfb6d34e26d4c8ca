//! `--device cpu|cuda|auto` and `--ptx`: where a sampling run goes.

use std::path::{Path, PathBuf};

use crate::errln;
use anyhow::Result;
use tweedie_nn::backend::cuda::{open_cuda, Resolved};

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

/// Opens the backend for `device`: `cpu` always works; `cuda` opens the GPU or fails with one
/// clear reason; `auto` tries CUDA and falls back to the CPU, printing one line that says why.
pub fn open(device: Device, ptx: Option<&Path>) -> Result<Resolved> {
    match device {
        Device::Cpu => Ok(Resolved::Cpu),
        Device::Cuda => open_cuda(ptx),
        Device::Auto => match open_cuda(ptx) {
            Ok(r) => Ok(r),
            Err(e) => {
                errln!("note: --device auto: no usable GPU ({e:#}); running on the CPU");
                Ok(Resolved::Cpu)
            }
        },
    }
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
}
