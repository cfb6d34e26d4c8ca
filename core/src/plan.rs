//! A sampling plan: for every step k the noise level σ_k, the network's noise input, the step
//! size γ_k and the temperature T_k (the free choices of the sampling template, eq. 10/11).
//!
//! Plans are computed in f64 (formats §1) and turned into f32 update coefficients once per step.

/// One step of a sampling plan: everything the update and the network need at step k.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlanStep {
    /// The step index k (0-based).
    pub k: usize,
    /// σ_k: the noise level of the random walk at this step (VE scale).
    pub sigma: f64,
    /// The noise level given to the network. Equals `sigma` except for the official VE code's
    /// continuous label (spec §7, ≤ 0.0105% apart).
    pub sigma_net: f64,
    /// VP network time t(σ_net) ∈ [0, 999] (0-based, fractional allowed); NaN for plans not
    /// made for a VP network.
    pub t: f64,
    /// γ_k, the step size.
    pub gamma: f64,
    /// T_k, the temperature. 0 on a noise-free step (e.g. the official code's last step).
    pub temperature: f64,
}
