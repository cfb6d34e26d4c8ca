//! Noise schedules σ_k, k = 0..K−1, largest first (spec §9; the pretrained VP schedule's time
//! grid is spec §6.3; the VE levels are spec §7).
//!
//! Everything is computed in f64 with `libm`, one σ at a time, so a schedule of any length
//! needs no memory beyond the caller's. Where the official code builds an array with
//! `numpy.linspace`, [`linspace_at`] reproduces that array's element bit for bit.
//!
//! K = 1 is allowed and gives σ_0 = σ_max for every variant (u = 0 on the normalized time
//! axis, the same convention as `numpy.linspace(0, 1, 1) == [0]`).

use crate::error::{check_finite, check_positive};
use crate::{vp, Error};

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
    /// The paper's sigmoid schedule (spec §9.3, released configs): start 0, end 3, τ 0.3,
    /// clip 1e-9, rescaled to the VP range [σ_0, σ_999].
    pub const fn sigmoid_paper() -> Self {
        Schedule::Sigmoid {
            start: 0.0,
            end: 3.0,
            tau: 0.3,
            clip_min: 1e-9,
            sigma_min: vp::SIGMA_MIN,
            sigma_max: vp::SIGMA_MAX,
        }
    }

    /// The pretrained VE (score_sde FFHQ-256) schedule: geometric 348 → 0.01 (spec §9.2).
    pub const fn ve_pretrained() -> Self {
        Schedule::Geometric {
            sigma_max: 348.0,
            sigma_min: 0.01,
        }
    }

    /// Checks the parameters and the step count K: K = 0 is [`Error::ZeroSteps`]; noise levels
    /// must be finite and > 0 with σ_min ≤ σ_max; the sigmoid needs finite start < end, τ > 0,
    /// clip_min ∈ [0, 1] and a sigmoid that does not saturate (S(end/τ) > S(start/τ) in f64);
    /// Karras needs ρ > 0.
    pub fn validate(&self, steps: usize) -> Result<(), Error> {
        if steps == 0 {
            return Err(Error::ZeroSteps);
        }
        match *self {
            Schedule::VpPretrained => Ok(()),
            Schedule::Sigmoid {
                start,
                end,
                tau,
                clip_min,
                sigma_min,
                sigma_max,
            } => {
                check_range(sigma_min, sigma_max)?;
                check_finite(start, "sigmoid start")?;
                check_finite(end, "sigmoid end")?;
                check_positive(tau, "sigmoid tau")?;
                // All three are finite here, so plain comparisons cannot meet a NaN.
                if start >= end {
                    return Err(Error::OutOfRange("sigmoid start must be below end"));
                }
                if !(0.0..=1.0).contains(&clip_min) {
                    return Err(Error::OutOfRange("sigmoid clip_min must lie in [0, 1]"));
                }
                let (v_start, v_end) = sigmoid_ends(start, end, tau);
                if v_end - v_start <= 0.0 {
                    return Err(Error::OutOfRange(
                        "sigmoid saturates: S(end/tau) == S(start/tau)",
                    ));
                }
                Ok(())
            }
            Schedule::Linear {
                sigma_max,
                sigma_min,
            }
            | Schedule::Geometric {
                sigma_max,
                sigma_min,
            } => check_range(sigma_min, sigma_max),
            Schedule::Karras {
                sigma_max,
                sigma_min,
                rho,
            } => {
                check_range(sigma_min, sigma_max)?;
                check_positive(rho, "karras rho").map(|_| ())
            }
        }
    }

    /// Target σ_k of step k of K (k = 0 is the largest).
    pub fn sigma(&self, k: usize, steps: usize) -> Result<f64, Error> {
        self.validate(steps)?;
        if k >= steps {
            return Err(Error::StepOutOfRange { k, steps });
        }
        Ok(self.sigma_unchecked(k, steps))
    }

    /// Writes σ_0..σ_{K−1} into `out`, K = `out.len()`. Validates once, then fills; no
    /// allocation, so K is limited only by the caller's buffer.
    pub fn fill(&self, out: &mut [f64]) -> Result<(), Error> {
        let steps = out.len();
        self.validate(steps)?;
        for (k, s) in out.iter_mut().enumerate() {
            *s = self.sigma_unchecked(k, steps);
        }
        Ok(())
    }

    /// σ_k for validated parameters and k < K.
    fn sigma_unchecked(&self, k: usize, steps: usize) -> f64 {
        match *self {
            Schedule::VpPretrained => {
                // t ∈ [0, 999] by construction, so `sigma_at` cannot fail; NaN would be caught
                // by the time map and the sampler.
                vp::sigma_at(pretrained_time_unchecked(k, steps)).unwrap_or(f64::NAN)
            }
            Schedule::Sigmoid {
                start,
                end,
                tau,
                clip_min,
                sigma_min,
                sigma_max,
            } => {
                let u = linspace_at(0.0, 1.0, steps, k);
                let g = sigmoid_gamma(u, start, end, tau);
                // np.clip(g, clip_min, 1) * (σ_max − σ_min) + σ_min, in the code's order.
                let g = g.max(clip_min).min(1.0);
                g * (sigma_max - sigma_min) + sigma_min
            }
            Schedule::Linear {
                sigma_max,
                sigma_min,
            } => {
                if steps == 1 {
                    return sigma_max;
                }
                // The code builds the increasing array linspace(σ_min, σ_max, K) and reverses
                // it; this equals linspace(σ_max, σ_min, K)[k] up to the last bit.
                linspace_at(sigma_min, sigma_max, steps, steps - 1 - k)
            }
            Schedule::Geometric {
                sigma_max,
                sigma_min,
            } => geometric_sigma(k, steps, sigma_max, sigma_min),
            Schedule::Karras {
                sigma_max,
                sigma_min,
                rho,
            } => {
                // k-diffusion get_sigmas_karras: ramp = linspace(0, 1, K).
                let ramp = linspace_at(0.0, 1.0, steps, k);
                let max_inv_rho = libm::pow(sigma_max, 1.0 / rho);
                let min_inv_rho = libm::pow(sigma_min, 1.0 / rho);
                libm::pow(max_inv_rho + ramp * (min_inv_rho - max_inv_rho), rho)
            }
        }
    }
}

/// Errors unless 0 < σ_min ≤ σ_max < ∞.
fn check_range(sigma_min: f64, sigma_max: f64) -> Result<(), Error> {
    check_positive(sigma_min, "sigma_min")?;
    check_positive(sigma_max, "sigma_max")?;
    if sigma_min > sigma_max {
        return Err(Error::OutOfRange("sigma_min must not exceed sigma_max"));
    }
    Ok(())
}

/// `numpy.linspace(start, stop, num)[i]` bit for bit: `i·step + start` with
/// `step = (stop − start)/(num − 1)`, the last element set to `stop`, and `[start]` for
/// num = 1. The caller keeps `i < num`.
#[inline]
pub fn linspace_at(start: f64, stop: f64, num: usize, i: usize) -> f64 {
    if num <= 1 {
        return start;
    }
    if i == num - 1 {
        return stop;
    }
    let step = (stop - start) / (num - 1) as f64;
    i as f64 * step + start
}

/// Time of step k of the pretrained VP schedule (spec §6.3 "denoiser"):
/// `linspace(0, 999, K)[K−1−k]`, so K = 1000 gives t = 999 − k exactly and the last step is
/// t = 0. K = 1 gives t = 999. This is the code's own time (no grid snapping); a VP plan for
/// [`Schedule::VpPretrained`] can use it directly.
pub fn pretrained_time(k: usize, steps: usize) -> Result<f64, Error> {
    if steps == 0 {
        return Err(Error::ZeroSteps);
    }
    if k >= steps {
        return Err(Error::StepOutOfRange { k, steps });
    }
    Ok(pretrained_time_unchecked(k, steps))
}

fn pretrained_time_unchecked(k: usize, steps: usize) -> f64 {
    if steps == 1 {
        return (vp::STEPS - 1) as f64;
    }
    linspace_at(0.0, (vp::STEPS - 1) as f64, steps, steps - 1 - k)
}

/// Geometric level k of K from σ_max to σ_min (spec §9.2):
/// σ_k = exp(ln σ_max + k·(ln σ_min − ln σ_max)/(K−1)) = σ_max (σ_min/σ_max)^{k/(K−1)},
/// with the end points returned exactly (k = 0 → σ_max, k = K−1 → σ_min; K = 1 → σ_max).
///
/// The official VE code uses float32 `exp(torch.linspace(ln σ_min, ln σ_max, N))`; its levels
/// differ from these f64 values by float32 rounding (≈ 1e-7 relative), not by any formula.
/// Arguments are not checked (see [`Schedule::validate`]); a `k ≥ K` extrapolates.
pub fn geometric_sigma(k: usize, steps: usize, sigma_max: f64, sigma_min: f64) -> f64 {
    if k == 0 {
        return sigma_max;
    }
    if k + 1 == steps {
        return sigma_min;
    }
    let ln_max = libm::log(sigma_max);
    let step = (libm::log(sigma_min) - ln_max) / (steps - 1) as f64;
    libm::exp(k as f64 * step + ln_max)
}

/// The logistic function S(z) = 1/(1 + e^{−z}) (numpy form of the official code).
#[inline]
fn logistic(z: f64) -> f64 {
    1.0 / (1.0 + libm::exp(-z))
}

/// (S(start/τ), S(end/τ)).
fn sigmoid_ends(start: f64, end: f64, tau: f64) -> (f64, f64) {
    (logistic(start / tau), logistic(end / tau))
}

/// Chen 2023 Alg. 1 g(u) before clipping: (S(end/τ) − S((u(end − start) + start)/τ)) /
/// (S(end/τ) − S(start/τ)); 1 at u = 0, 0 at u = 1 (spec §9.3).
fn sigmoid_gamma(u: f64, start: f64, end: f64, tau: f64) -> f64 {
    let (v_start, v_end) = sigmoid_ends(start, end, tau);
    let v = logistic((u * (end - start) + start) / tau);
    (v_end - v) / (v_end - v_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    #[test]
    fn linspace_matches_numpy_rules() {
        // numpy.linspace(0, 1, 5) = [0, .25, .5, .75, 1]; num = 1 → [start].
        let v: Vec<f64> = (0..5).map(|i| linspace_at(0.0, 1.0, 5, i)).collect();
        assert_eq!(v, [0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(linspace_at(3.0, 7.0, 1, 0), 3.0);
        // The last element is `stop` exactly even when i·step + start would round.
        assert_eq!(linspace_at(0.1, 0.7, 7, 6), 0.7);
    }

    #[test]
    fn pretrained_k1000_is_the_table_reversed() {
        for k in 0..1000 {
            assert_eq!(pretrained_time(k, 1000), Ok((999 - k) as f64));
            assert_eq!(
                Schedule::VpPretrained.sigma(k, 1000),
                Ok(vp::SIGMA[999 - k])
            );
        }
    }

    #[test]
    fn pretrained_other_k_interpolates() {
        // K = 3: t = 999, 499.5, 0 → σ = σ_999, (σ_499 + σ_500)/2 (linear interp), σ_0.
        let s = Schedule::VpPretrained;
        assert_eq!(s.sigma(0, 3), Ok(vp::SIGMA_MAX));
        let mid = s.sigma(1, 3).unwrap();
        assert!(rel(mid, 0.5 * (vp::SIGMA[499] + vp::SIGMA[500])) < 1e-15);
        assert_eq!(s.sigma(2, 3), Ok(vp::SIGMA_MIN));
        assert_eq!(s.sigma(0, 1), Ok(vp::SIGMA_MAX));
        assert_eq!(pretrained_time(0, 1), Ok(999.0));
    }

    /// Targets of spec §9.3's tables (K = 100 and K = 750).
    #[test]
    fn sigmoid_paper_targets() {
        let s = Schedule::sigmoid_paper();
        let rows: [(usize, usize, f64); 11] = [
            (100, 0, 157.4072808),
            (100, 1, 149.4639541),
            (100, 2, 141.5609788),
            (100, 50, 1.999658378),
            (100, 97, 0.01319997848),
            (100, 98, 0.01151952108),
            (100, 99, 0.01000065743),
            (750, 1, 156.3564849),
            (750, 375, 2.08884678),
            (750, 748, 0.01019258913),
            (750, 749, 0.01000065743),
        ];
        for (steps, k, target) in rows {
            let got = s.sigma(k, steps).unwrap();
            // The table has 10 significant digits (9 for 2.08884678).
            assert!(
                rel(got, target) < 5e-9,
                "K {steps} k {k}: {got} vs {target}"
            );
        }
        // Spec: last level is σ_min + (σ_max − σ_min)·1e-9 = σ_min + 1.574e-7.
        let last = s.sigma(99, 100).unwrap();
        assert!(rel(last - vp::SIGMA_MIN, 1.574e-7) < 1e-3);
    }

    #[test]
    fn linear_is_linspace() {
        let s = Schedule::Linear {
            sigma_max: vp::SIGMA_MAX,
            sigma_min: vp::SIGMA_MIN,
        };
        assert_eq!(s.sigma(0, 1000), Ok(vp::SIGMA_MAX));
        assert_eq!(s.sigma(999, 1000), Ok(vp::SIGMA_MIN));
        let step = (vp::SIGMA_MAX - vp::SIGMA_MIN) / 999.0;
        for k in [1, 2, 500, 997, 998] {
            // Reference has cancellation near σ_min: compare absolutely (ulp(157) ≈ 3e-14).
            let want = vp::SIGMA_MAX - k as f64 * step;
            assert!((s.sigma(k, 1000).unwrap() - want).abs() < 1e-12);
        }
        assert_eq!(s.sigma(0, 1), Ok(vp::SIGMA_MAX));
    }

    #[test]
    fn geometric_matches_power_form() {
        let s = Schedule::ve_pretrained();
        assert_eq!(s.sigma(0, 1000), Ok(348.0));
        assert_eq!(s.sigma(999, 1000), Ok(0.01));
        for k in [1, 10, 499, 500, 998] {
            let want = 348.0 * (0.01f64 / 348.0).powf(k as f64 / 999.0);
            assert!(rel(s.sigma(k, 1000).unwrap(), want) < 1e-13);
        }
        // Geometric: every ratio σ_{k+1}/σ_k is the same.
        let r = (0.01f64 / 348.0).powf(1.0 / 999.0);
        for k in 0..999 {
            let a = s.sigma(k, 1000).unwrap();
            let b = s.sigma(k + 1, 1000).unwrap();
            assert!(rel(b / a, r) < 1e-12);
        }
        assert_eq!(geometric_sigma(0, 1, 5.0, 1.0), 5.0);
    }

    #[test]
    fn karras_matches_k_diffusion_form() {
        let s = Schedule::Karras {
            sigma_max: 80.0,
            sigma_min: 0.002,
            rho: 7.0,
        };
        assert!(rel(s.sigma(0, 10).unwrap(), 80.0) < 1e-14);
        assert!(rel(s.sigma(9, 10).unwrap(), 0.002) < 1e-14);
        // Midpoint of K = 3: ((80^{1/7} + 0.002^{1/7})/2)^7.
        let mid = ((80f64.powf(1.0 / 7.0) + 0.002f64.powf(1.0 / 7.0)) / 2.0).powi(7);
        assert!(rel(s.sigma(1, 3).unwrap(), mid) < 1e-14);
        // ρ = 1 is the linear schedule.
        let lin = Schedule::Karras {
            sigma_max: 10.0,
            sigma_min: 1.0,
            rho: 1.0,
        };
        assert!(rel(lin.sigma(3, 10).unwrap(), 7.0) < 1e-14);
    }

    #[test]
    fn every_schedule_decreases_from_max_to_min() {
        let schedules = [
            Schedule::VpPretrained,
            Schedule::sigmoid_paper(),
            Schedule::Linear {
                sigma_max: 50.0,
                sigma_min: 0.02,
            },
            Schedule::ve_pretrained(),
            Schedule::Karras {
                sigma_max: 80.0,
                sigma_min: 0.002,
                rho: 7.0,
            },
        ];
        let mut buf = [0.0; 333];
        for s in schedules {
            s.fill(&mut buf).unwrap();
            for w in buf.windows(2) {
                assert!(w[1] < w[0] && w[1] > 0.0, "{s:?}: {w:?}");
            }
            for (k, &v) in buf.iter().enumerate() {
                assert_eq!(s.sigma(k, buf.len()), Ok(v));
            }
        }
    }

    #[test]
    fn one_step_is_sigma_max() {
        let karras = Schedule::Karras {
            sigma_max: 80.0,
            sigma_min: 0.002,
            rho: 7.0,
        };
        let linear = Schedule::Linear {
            sigma_max: 9.0,
            sigma_min: 1.0,
        };
        for (s, max) in [
            (Schedule::VpPretrained, vp::SIGMA_MAX),
            (Schedule::sigmoid_paper(), vp::SIGMA_MAX),
            (linear, 9.0),
            (Schedule::ve_pretrained(), 348.0),
            (karras, 80.0),
        ] {
            assert!(rel(s.sigma(0, 1).unwrap(), max) < 1e-14, "{s:?}");
            assert_eq!(s.sigma(1, 1), Err(Error::StepOutOfRange { k: 1, steps: 1 }));
        }
    }

    #[test]
    fn fill_handles_long_schedules() {
        let mut buf = vec![0.0; 150_000];
        Schedule::sigmoid_paper().fill(&mut buf).unwrap();
        assert!(rel(buf[0], vp::SIGMA_MAX) < 1e-15);
        assert!(buf[149_999] > vp::SIGMA_MIN && buf[149_999] < vp::SIGMA_MIN * (1.0 + 1e-4));
        Schedule::ve_pretrained().fill(&mut buf).unwrap();
        assert_eq!((buf[0], buf[149_999]), (348.0, 0.01));
        Schedule::VpPretrained.fill(&mut buf).unwrap();
        assert_eq!((buf[0], buf[149_999]), (vp::SIGMA_MAX, vp::SIGMA_MIN));
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let s = Schedule::ve_pretrained();
        assert_eq!(s.sigma(0, 0), Err(Error::ZeroSteps));
        assert_eq!(s.fill(&mut []), Err(Error::ZeroSteps));
        assert_eq!(
            s.sigma(10, 10),
            Err(Error::StepOutOfRange { k: 10, steps: 10 })
        );
        assert_eq!(
            pretrained_time(3, 3),
            Err(Error::StepOutOfRange { k: 3, steps: 3 })
        );
        let geo = |sigma_max, sigma_min| Schedule::Geometric {
            sigma_max,
            sigma_min,
        };
        assert_eq!(
            geo(1.0, 0.0).validate(5),
            Err(Error::NotPositive("sigma_min"))
        );
        assert_eq!(
            geo(f64::NAN, 0.1).validate(5),
            Err(Error::NotPositive("sigma_max"))
        );
        assert!(matches!(
            geo(0.1, 1.0).validate(5),
            Err(Error::OutOfRange(_))
        ));
        let sig = |start, end, tau, clip_min| Schedule::Sigmoid {
            start,
            end,
            tau,
            clip_min,
            sigma_min: 0.01,
            sigma_max: 100.0,
        };
        assert_eq!(
            sig(0.0, 3.0, 0.0, 1e-9).validate(5),
            Err(Error::NotPositive("sigmoid tau"))
        );
        assert!(matches!(
            sig(3.0, 0.0, 0.3, 1e-9).validate(5),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            sig(0.0, 3.0, 0.3, 2.0).validate(5),
            Err(Error::OutOfRange(_))
        ));
        assert!(matches!(
            sig(40.0, 50.0, 1.0, 0.0).validate(5),
            Err(Error::OutOfRange(_))
        ));
        assert_eq!(
            sig(f64::NAN, 3.0, 0.3, 1e-9).validate(5),
            Err(Error::NotFinite("sigmoid start"))
        );
        let karras = Schedule::Karras {
            sigma_max: 80.0,
            sigma_min: 0.002,
            rho: -1.0,
        };
        assert_eq!(karras.sigma(0, 5), Err(Error::NotPositive("karras rho")));
    }
}
