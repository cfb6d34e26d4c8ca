//! score_sde's NCSN++ (`NCSNpp`, VE SDE, continuous), as used for FFHQ-256 (ncsnpp.md).
//!
//! `config` reads the JSON, `arch` derives `all_modules` and the forward program,
//! `state_dict` the expected tensors, `cost` the multiply-add count, `forward` runs the
//! network (`crate::denoiser::ncsnpp` wraps it as a Tweedie denoiser for the sampler).

pub mod arch;
pub mod config;
pub mod cost;
pub mod forward;
pub mod state_dict;

pub use arch::{Module, NcsnppArch, Op, ResBlock, Updown};
pub use config::{NcsnppConfig, NCSNPP_FFHQ256};
pub use forward::{forward, Input, NcsnppModel, Output};
