//! # tweedie-host
//!
//! Orchestration only: parse arguments, load weights, plan memory, call kernels, write files.
#![warn(missing_docs)]
