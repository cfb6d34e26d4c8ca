//! # tweedie-kernels
//!
//! The layers of the ADM U-Net (and later NCSN++) and the sampling-update kernels, written as
//! plain functions over slices in the style of llm.c: `layer_forward(out, inp, weight, dims…)`.
//! Each kernel is a per-element or per-tile body plus a CPU driver that processes a caller-given
//! range, so the host can split work across threads (also within one image) and the same bodies
//! compile to PTX. `no_std`, no allocation: scratch buffers are the caller's.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]
