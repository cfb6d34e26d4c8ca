//! Noise schedules σ_k, k = 0..K−1, largest first (spec §9).
//!
//! SKELETON: signatures fixed by the coordinator; bodies are filled in by the schedules work.

use crate::Error;

/// A noise schedule: how σ_k falls from σ_max (k = 0) to σ_min (k = K−1).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Schedule {
    /// The pretrained VP (DDPM) schedule: σ interpolated from the VP table at
    /// t = 999·(K−1−k)/(K−1) (spec §6.3, §9.1). No grid snapping.
    VpPretrained,
    /// Chen 2023 sigmoid schedule rescaled to [σ_min, σ_max] (spec §9.3, eq. 25).
    Sigmoid {
        /// Sigmoid start (paper 0).
        start: f64,
        /// Sigmoid end (paper 3).
        end: f64,
        /// Sigmoid temperature τ (paper 0.3).
        tau: f64,
        /// Lower clip of g(u) (paper 1e-9).
        clip_min: f64,
        /// Smallest noise level.
        sigma_min: f64,
        /// Largest noise level.
        sigma_max: f64,
    },
    /// σ linear in k from σ_max to σ_min (spec §9.4).
    Linear {
        /// Largest noise level.
        sigma_max: f64,
        /// Smallest noise level.
        sigma_min: f64,
    },
    /// σ geometric in k from σ_max to σ_min (VE, spec §9.2).
    Geometric {
        /// Largest noise level.
        sigma_max: f64,
        /// Smallest noise level.
        sigma_min: f64,
    },
    /// Karras et al. ρ-schedule: (σ_max^{1/ρ} + k/(K−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.
    Karras {
        /// Largest noise level.
        sigma_max: f64,
        /// Smallest noise level.
        sigma_min: f64,
        /// ρ (Karras: 7).
        rho: f64,
    },
}

impl Schedule {
    /// Target σ_k of step k of K (k = 0 is the largest).
    pub fn sigma(&self, k: usize, steps: usize) -> Result<f64, Error> {
        let _ = (k, steps);
        Err(Error::ZeroSteps)
    }
}
