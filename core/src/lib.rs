//! # tweedie-core
//!
//! Score-based diffusion as in "Random Walks with Tweedie" (Park et al., 2025): one training
//! template (weighted denoising loss) and one sampling template (a sequence of Langevin random
//! walks driven by a denoiser through Tweedie's formula), with DDPM, NCSN and the VE/VP SDE
//! samplers as instances, conditional sampling with the exact likelihood gradient, forward
//! operators and metrics.
//!
//! `#![no_std]` and allocation-free: tables are fixed-size, buffers are the caller's, and every
//! fallible function returns [`Result`] with [`Error`]. Maths goes through `libm`, so results are
//! the same on every target.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod classic;
pub mod denoiser;
pub mod error;
pub mod metrics;
pub mod noise;
pub mod operator;
pub mod plan;
pub mod sampler;
pub mod schedule;
pub mod timemap;
pub mod training;
pub mod tweedie;
pub mod vp;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

pub use denoiser::Denoiser;
pub use error::Error;
pub use operator::{ForwardOperator, OperatorLens};
pub use plan::{Plan, PlanStep, Preset, StepPlan};
pub use schedule::Schedule;
pub use timemap::TimeMap;
