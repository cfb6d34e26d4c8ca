//! The one error type of the core crate. Every fallible API returns `Result<T, Error>`; nothing
//! in core panics on bad input.

use core::fmt;

/// What went wrong. Variants carry `&'static str` names so the caller's message can say which
/// parameter or buffer was at fault without any allocation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Error {
    /// A step count of zero (or too small for the requested schedule).
    ZeroSteps,
    /// A step index k outside 0..K.
    StepOutOfRange {
        /// The step index asked for.
        k: usize,
        /// K.
        steps: usize,
    },
    /// A parameter that must be finite and > 0 (a noise level, σ_y, a step constant…) is not.
    NotPositive(&'static str),
    /// A parameter that must be finite is NaN or infinite.
    NotFinite(&'static str),
    /// A parameter outside its documented range (e.g. a temperature < 0, p outside [0, 1]).
    OutOfRange(&'static str),
    /// A noise level outside the VP table's range [σ_0, σ_999] (beyond the 1e-6 relative slack).
    SigmaOutsideVpTable {
        /// The offending noise level.
        sigma: f64,
    },
    /// A buffer whose length does not match what the operation needs.
    LengthMismatch {
        /// Which buffer.
        what: &'static str,
        /// The length needed.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// Inconsistent shapes (e.g. an image size not divisible by the SR factor).
    Shape(&'static str),
    /// A non-finite value appeared in the sampling state at step k.
    NonFiniteState {
        /// The step index k.
        step: usize,
    },
    /// The caller's denoiser failed; the message is the denoiser's own.
    Denoiser(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::ZeroSteps => write!(f, "the number of steps K must be at least 1"),
            Error::StepOutOfRange { k, steps } => {
                write!(f, "step index {k} is outside 0..{steps}")
            }
            Error::NotPositive(what) => write!(f, "{what} must be finite and greater than 0"),
            Error::NotFinite(what) => write!(f, "{what} must be finite (got NaN or infinity)"),
            Error::OutOfRange(what) => write!(f, "{what} is outside its allowed range"),
            Error::SigmaOutsideVpTable { sigma } => write!(
                f,
                "noise level sigma = {sigma} is outside the VP network's range [0.0100005, 157.40728]"
            ),
            Error::LengthMismatch { what, expected, got } => {
                write!(f, "{what} has length {got}, expected {expected}")
            }
            Error::Shape(what) => write!(f, "inconsistent shape: {what}"),
            Error::NonFiniteState { step } => {
                write!(f, "the sampling state became NaN or infinite at step {step}")
            }
            Error::Denoiser(msg) => write!(f, "denoiser failed: {msg}"),
        }
    }
}

/// Returns `Err(NotPositive)` unless `v` is finite and > 0.
#[inline]
pub fn check_positive(v: f64, what: &'static str) -> Result<f64, Error> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(Error::NotPositive(what))
    }
}

/// Returns `Err(NotFinite)` unless `v` is finite.
#[inline]
pub fn check_finite(v: f64, what: &'static str) -> Result<f64, Error> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::NotFinite(what))
    }
}

/// Returns `Err(LengthMismatch)` unless `got == expected`.
#[inline]
pub fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), Error> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            what,
            expected,
            got,
        })
    }
}
