//! score_sde's `GaussianFourierProjection` (layerspp.py): the noise-level embedding of NCSN++
//! (ncsnpp.md §3 step 1). Its input is ln σ, taken by the caller (`torch.log(sigmas)` in
//! `NCSNpp.forward`).

use crate::{check_len, KernelError};

/// π as the f32 that `* np.pi` multiplies an f32 tensor by.
const PI: f32 = core::f32::consts::PI;

/// out = [sin(φ_0) … sin(φ_{n−1}), cos(φ_0) … cos(φ_{n−1})] (sines first) with
/// φ_j = ((x·W[j])·2)·π evaluated in f32 in exactly that order, as PyTorch evaluates
/// `x[:, None] * W[None, :] * 2 * np.pi`. `W` holds the fixed random frequencies (they already
/// include `fourier_scale`); `out.len() == 2·W.len()`.
///
/// The phases reach ~2000 rad, where one f32 rounding of φ moves sin/cos by ~1e-4: only the
/// same operation order reproduces the original to ~1e-7 (ncsnpp.md §3).
pub fn gaussian_fourier_projection(x: f32, w: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    check_len("fourier projection output", 2 * w.len(), out.len())?;
    let (sin_part, cos_part) = out.split_at_mut(w.len());
    for ((s, c), &wj) in sin_part.iter_mut().zip(cos_part.iter_mut()).zip(w) {
        let phase = ((x * wj) * 2.0) * PI;
        *s = libm::sinf(phase);
        *c = libm::cosf(phase);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_phases() {
        // x = 0: every phase is 0.
        let mut out = [f32::NAN; 4];
        gaussian_fourier_projection(0.0, &[3.0, -7.5], &mut out).unwrap();
        assert_eq!(out, [0.0, 0.0, 1.0, 1.0]);
        // x·W = ¼ and −½: φ = π/2 and −π (up to the rounding of π to f32).
        gaussian_fourier_projection(0.5, &[0.5, -1.0], &mut out).unwrap();
        let want = [1.0, 0.0, 0.0, -1.0];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn matches_f64_sin_cos_of_the_f32_phase() {
        // Large phases as in NCSN++ (ln 348 · 34 · 2π ≈ 1250): the f32 phase is the same op
        // chain; sin/cos of it must then be accurate to f32 round-off.
        let w: Vec<f32> = (0..16).map(|j| (j as f32 - 7.3) * 4.7).collect();
        for x in [-4.6f32, -0.3, 1.2, 5.85] {
            let mut out = vec![0f32; 32];
            gaussian_fourier_projection(x, &w, &mut out).unwrap();
            for (j, &wj) in w.iter().enumerate() {
                let phase = (((x * wj) * 2.0) * PI) as f64;
                assert!(
                    (out[j] as f64 - phase.sin()).abs() < 2e-7,
                    "sin x={x} j={j}"
                );
                assert!(
                    (out[16 + j] as f64 - phase.cos()).abs() < 2e-7,
                    "cos x={x} j={j}"
                );
            }
        }
    }

    #[test]
    fn wrong_output_length_is_an_error() {
        assert!(gaussian_fourier_projection(1.0, &[1.0; 3], &mut [0.0; 5]).is_err());
    }
}
