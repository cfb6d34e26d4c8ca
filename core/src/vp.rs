//! The VP (DDPM) noise table: β linear 1e-4..0.02 over 1000 steps, ᾱ, and the VE-equivalent
//! noise level σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) (spec §6.3, formats §1). Time is 0-based: t ∈ 0..=999.

include!(concat!(env!("OUT_DIR"), "/vp_table.rs"));

/// Number of entries of the VP table.
pub const STEPS: usize = 1000;
/// σ at t = 0 (the smallest VP noise level).
pub const SIGMA_MIN: f64 = SIGMA[0];
/// σ at t = 999 (the largest VP noise level).
pub const SIGMA_MAX: f64 = SIGMA[STEPS - 1];

/// ᾱ for a VE noise level: ᾱ = 1/(1 + σ²) (eq. 12).
#[inline]
pub fn alpha_bar_of_sigma(sigma: f64) -> f64 {
    1.0 / (1.0 + sigma * sigma)
}

/// σ(t) for a continuous time t ∈ [0, 999]: piecewise-linear interpolation of the table,
/// computed like `numpy.interp` (slope · (t − t_j) + σ_j). Returns `None` outside [0, 999].
pub fn sigma_at(t: f64) -> Option<f64> {
    if !(0.0..=(STEPS - 1) as f64).contains(&t) {
        return None;
    }
    let j = libm::floor(t) as usize;
    if j >= STEPS - 1 {
        return Some(SIGMA[STEPS - 1]);
    }
    let slope = (SIGMA[j + 1] - SIGMA[j]) / 1.0;
    Some(slope * (t - j as f64) + SIGMA[j])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_match_spec() {
        assert_eq!(SIGMA_MIN, 0.010000500037502575);
        assert!((SIGMA_MAX - 157.40728081040757).abs() < 1e-10);
        assert!((SIGMA[499] - 3.424136619).abs() < 1e-8);
    }

    #[test]
    fn interpolation_hits_table_points() {
        for t in [0usize, 1, 500, 998, 999] {
            assert_eq!(sigma_at(t as f64), Some(SIGMA[t]));
        }
        assert_eq!(sigma_at(-0.1), None);
        assert_eq!(sigma_at(999.5), None);
    }
}
