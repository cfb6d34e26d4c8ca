//! # tweedie-nn
//!
//! The networks and everything that runs them, as a library: no command line, no terminal
//! output. Layer order (each module uses only those above it):
//!
//! - [`tensors`]: reading safetensors files (inputs, references) with one-line errors.
//! - [`parity`]: the formats.md §7 comparison criterion.
//! - [`weights`]: strict safetensors loading into f32 or f16 storage, `tweedie.*` metadata.
//! - [`backend`]: the CPU worker pool, the `DeviceOps` graph backends (reference, CUDA).
//! - [`model`]: network configurations, architectures, expected state_dicts, forward passes.
//! - [`denoiser`]: networks and the Gaussian prior as `tweedie_core::Denoiser`s.
//! - [`train`]: the training template on ADM U-Nets: data, optimiser, checkpoints, logs.
#![warn(missing_docs)]

pub mod backend;
pub mod denoiser;
pub mod model;
pub mod parity;
pub mod tensors;
pub mod train;
pub mod weights;

#[doc(hidden)]
pub mod testdata;
