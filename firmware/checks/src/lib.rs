//! # tweedie-firmware-checks
//!
//! The checks that prove `tweedie-core` on microcontrollers: fixed-seed runs whose bits are
//! hashed (FNV-1a) and reported as text lines. The board binaries of `firmware/boards` print
//! the lines over semihosting under QEMU; `tests/tests/firmware_checks.rs` runs the same
//! checks natively and pins the lines in `firmware/golden.txt`, so any difference between a
//! microcontroller and x86_64 is a failed comparison.
//!
//! `#![no_std]`, no allocation and no `core::fmt` (so a board binary can be measured with
//! and without formatting code): lines are assembled by [`report::Line`]. Uses only the
//! public API of `tweedie-core`.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod conditional;
pub mod fault;
pub mod gaussian;
pub mod hash;
pub mod report;
pub mod storage_f16;
pub mod template;
pub mod unconditional;

use tweedie_core::Error;

pub use report::{Clock, Line, NoClock, Report};

/// The seed of every check (the README example's).
pub const SEED: u64 = 42;

/// A check that returned an error: which one, and core's error.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Failure {
    /// The check's name (the first word of its hash lines).
    pub check: &'static str,
    /// What core returned.
    pub error: Error,
}

/// Runs the four checks in order, reporting their hash lines (and, when `clock` counts,
/// the cost lines of the README example). Stops at the first error.
pub fn run_all(report: &mut impl Report, clock: &mut impl Clock) -> Result<(), Failure> {
    let fail = |check| move |error| Failure { check, error };
    unconditional::run(report, clock).map_err(fail(unconditional::NAME))?;
    conditional::run(report).map_err(fail(conditional::NAME))?;
    storage_f16::run(report).map_err(fail(storage_f16::NAME))?;
    template::run(report).map_err(fail(template::NAME))
}
