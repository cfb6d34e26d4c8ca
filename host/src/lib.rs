//! # tweedie-host
//!
//! The command line and what runs behind it: parse arguments, resolve models, plan runs, write
//! files, evaluate. The networks, weights, backends, denoisers and training live in
//! `tweedie-nn`; the maths in `tweedie-core`; the layer kernels in `tweedie-kernels`.
//!
//! - [`image_io`]: PNG/JPEG ↔ tensors (formats.md §1), sha256 of inputs.
//! - [`bundled`]: the models compiled into the binary (the default `--weights`).
//! - [`convert`]: PyTorch checkpoints → safetensors, without executing pickled code.
//! - [`run`]: plans, measurements, the CPU and device sampling runners, output folders.
//! - [`eval`]: model quality on MNIST (nearest neighbours, restoration table).
//! - [`cli`]: the `host` subcommands.
#![warn(missing_docs)]

pub mod bundled;
pub mod cli;
pub mod convert;
pub mod eval;
pub mod image_io;
pub mod run;
