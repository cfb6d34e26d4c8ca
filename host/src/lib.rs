//! # tweedie-host
//!
//! Orchestration only: parse arguments, load weights, plan memory, call kernels, write files.
//!
//! - [`model`]: network configurations, architectures, expected state_dicts, forward passes.
//! - [`weights`]: strict safetensors loading into f32 or f16 storage, `tweedie.*` metadata.
//! - [`tensors`]: reading safetensors files (inputs, references) with one-line errors.
//! - [`parity`]: the formats.md §7 comparison criterion.
//! - [`bundled`]: the models compiled into the binary (the default `--weights`).
//! - [`eval`]: model quality on MNIST (nearest neighbours, restoration table).
//! - [`cli`]: the `host` subcommands.
#![warn(missing_docs)]

pub mod backend;
pub mod bundled;
pub mod cli;
pub mod convert;
pub mod denoiser;
pub mod eval;
pub mod image_io;
pub mod model;
pub mod parity;
pub mod run;
pub mod tensors;
pub mod train;
pub mod weights;

#[cfg(test)]
mod testdata;
