//! guided-diffusion's ADM U-Net (`UNetModel`), as used by DPS for FFHQ-256 (adm_unet.md).
//!
//! `config` reads the JSON, `arch` derives the layer list, `state_dict` the expected tensors,
//! `cost` the multiply-add count, `forward` runs the network on the CPU (`forward/params`
//! resolves the weights, `forward/plan` sizes the arena, `forward/runner` walks the layers;
//! `crate::denoiser::network` wraps it for the sampler), `device` runs it as a graph of
//! `DeviceOps` (the GPU forward), and `crate::train::adm_trainer` holds its training
//! forward and backward.

pub mod arch;
pub mod config;
pub mod cost;
pub mod device;
pub mod forward;
pub mod state_dict;

pub use arch::{
    AdmArch, Attention, Block, Conv3x3, Layer, OutHead, QkvOrder, ResBlock, Resample, Updown,
};
pub use config::{AdmConfig, ADM_FFHQ256};
pub use forward::{forward, AdmModel, Input};
