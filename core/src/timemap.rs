//! Noise level → VP network time t(σ) (spec §6.3).
//!
//! SKELETON: signatures fixed by the coordinator; bodies are filled in by the schedules work.

use crate::Error;

/// How a VP network's time input is derived from a target noise level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeMap {
    /// Exact inversion of the piecewise-linear σ(t); σ is kept as given.
    Exact,
    /// The official code's 10⁶-point grid snapping: σ becomes the nearest grid value.
    Grid,
}

/// A point of the VP noise curve: the σ the step uses and the network time t ∈ [0, 999].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VpPoint {
    /// Noise level actually used (the grid value for [`TimeMap::Grid`]).
    pub sigma: f64,
    /// Fractional 0-based VP time.
    pub t: f64,
}

impl TimeMap {
    /// Maps a target σ to the (σ, t) a VP network is evaluated at. σ outside
    /// [σ_0, σ_999] by more than 1e-6 relative is [`Error::SigmaOutsideVpTable`].
    pub fn map(&self, sigma_target: f64) -> Result<VpPoint, Error> {
        Err(Error::SigmaOutsideVpTable {
            sigma: sigma_target,
        })
    }
}
