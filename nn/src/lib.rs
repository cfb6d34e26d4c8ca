//! # tweedie-nn
//!
//! The networks and everything that runs them, as a library: no command line, no terminal
//! output. Layer order (each module uses only those above it):
//!
//! - [`input`]: opening input files (regular files only, reads capped by format).
//! - [`tensors`]: reading safetensors files (inputs, references) with one-line errors.
//! - [`parity`]: the formats.md §7 comparison criterion.
//! - [`weights`]: strict safetensors loading into f32 or f16 storage, `tweedie.*` metadata.
//! - [`data`]: MNIST IDX and PNG-folder datasets, conversion to the model range (formats §1),
//!   and the seeded, resumable epoch order.
//! - [`backend`]: the CPU worker pool, the `DeviceOps` graph backends (reference, CUDA).
//! - [`model`]: network configurations, architectures, expected state_dicts, forward passes
//!   (the ADM and NCSN++ U-Nets, the digit classifier behind `host evaluate fid`).
//! - [`denoiser`]: networks and the Gaussian prior as `tweedie_core::Denoiser`s.
//! - [`train`]: training loops (the ADM U-Net with the training template, the classifier):
//!   optimiser, EMA, checkpoints, logs.
#![warn(missing_docs)]

pub mod backend;
pub mod data;
pub mod denoiser;
pub mod input;
pub mod model;
pub mod parity;
pub mod sha256;
pub mod tensors;
pub mod train;
pub mod weights;

#[doc(hidden)]
pub mod testdata;
