//! Noise level → VP network time t(σ) (spec §6.3; range and slack: formats §1; why the grid
//! exists: spec §16 item 5).
//!
//! The VP table gives σ at the integer times 0..=999, and `numpy.interp` makes σ(t) piecewise
//! linear and strictly increasing. [`TimeMap::Exact`] inverts that function;
//! [`TimeMap::Grid`] reproduces the official code, which samples σ(t) on a 10⁶-point time grid
//! and snaps each target σ to the nearest grid value. The grid is never stored: σ on the grid
//! is monotone in the grid index, so a binary search evaluates only ~20 grid points.

use crate::schedule::linspace_at;
use crate::{vp, Error};

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

/// Number of points M of the official time grid (spec §6.3 step 1).
pub const GRID_POINTS: usize = 1_000_000;

/// Relative slack around [σ_0, σ_999] inside which a σ is clamped instead of rejected
/// (formats §1).
pub const SIGMA_SLACK: f64 = 1e-6;

impl TimeMap {
    /// Maps a target σ to the (σ, t) a VP network is evaluated at. σ outside
    /// [σ_0, σ_999] by more than 1e-6 relative is [`Error::SigmaOutsideVpTable`]; σ within
    /// the slack is clamped to the nearer end first (so both σ and t are the end's values).
    /// A NaN σ is [`Error::NotFinite`].
    pub fn map(&self, sigma_target: f64) -> Result<VpPoint, Error> {
        let sigma = clamp_to_table(sigma_target)?;
        Ok(match self {
            TimeMap::Exact => exact_point(sigma),
            TimeMap::Grid => {
                let m = nearest_grid_index(sigma);
                VpPoint {
                    sigma: grid_sigma(m),
                    t: grid_time(m),
                }
            }
        })
    }
}

/// Rejects NaN and σ beyond the slack; clamps σ within the slack to [σ_0, σ_999].
fn clamp_to_table(sigma: f64) -> Result<f64, Error> {
    if sigma.is_nan() {
        return Err(Error::NotFinite("sigma"));
    }
    let too_small = sigma < vp::SIGMA_MIN * (1.0 - SIGMA_SLACK);
    let too_large = sigma > vp::SIGMA_MAX * (1.0 + SIGMA_SLACK);
    if too_small || too_large {
        return Err(Error::SigmaOutsideVpTable { sigma });
    }
    Ok(sigma.clamp(vp::SIGMA_MIN, vp::SIGMA_MAX))
}

/// The exact inverse of the piecewise-linear σ(t) for σ ∈ [σ_0, σ_999]. A table value σ_j
/// gives t = j exactly.
fn exact_point(sigma: f64) -> VpPoint {
    // j = the last table index with σ_j ≤ σ (≥ 0 because σ ≥ σ_0).
    let j = vp::SIGMA.partition_point(|&s| s <= sigma).saturating_sub(1);
    let t = if j + 1 >= vp::STEPS {
        (vp::STEPS - 1) as f64
    } else {
        let (lo, hi) = (vp::SIGMA[j], vp::SIGMA[j + 1]);
        j as f64 + (sigma - lo) / (hi - lo)
    };
    VpPoint { sigma, t }
}

/// Grid time u_m = `numpy.linspace(0, 999, M)[m]` (spec §6.3 step 1).
#[inline]
pub fn grid_time(m: usize) -> f64 {
    linspace_at(0.0, (vp::STEPS - 1) as f64, GRID_POINTS, m)
}

/// Grid noise level sgrid\[m\] = `numpy.interp(u_m, 0..999, σ)` (spec §6.3 step 1).
#[inline]
pub fn grid_sigma(m: usize) -> f64 {
    // u_m ∈ [0, 999] for every m < M, so `sigma_at` always answers.
    vp::sigma_at(grid_time(m)).unwrap_or(f64::NAN)
}

/// The grid index whose σ is nearest to `sigma` (spec §6.3 step 3), ties → smaller m, as the
/// official forward scan (strict `<` on the distance) gives. `sigma` must lie in
/// [σ_0, σ_999].
fn nearest_grid_index(sigma: f64) -> usize {
    // Lower bound: the first m with sgrid[m] ≥ σ (sgrid is increasing in m).
    let (mut lo, mut hi) = (0usize, GRID_POINTS - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if grid_sigma(mid) < sigma {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        return 0;
    }
    let below = sigma - grid_sigma(lo - 1);
    let above = grid_sigma(lo) - sigma;
    if below <= above {
        lo - 1
    } else {
        lo
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;

    fn rel(a: f64, b: f64) -> f64 {
        ((a - b) / b).abs()
    }

    /// Spec §9.3: (K, k, target σ, grid σ, t) for the paper's sigmoid schedule.
    const SIGMOID_ROWS: [(usize, usize, f64, f64, f64); 11] = [
        (100, 0, 157.4072808, 157.4072808, 999.0),
        (100, 1, 149.4639541, 149.4646117, 993.8631369),
        (100, 2, 141.5609788, 141.5614153, 988.4445554),
        (100, 50, 1.999658378, 1.999661768, 395.9180819),
        (100, 97, 0.01319997848, 0.01319987156, 0.6623376623),
        (100, 98, 0.01151952108, 0.01152056343, 0.3146853147),
        (100, 99, 0.01000065743, 0.01000050004, 0.0),
        (750, 1, 156.3564849, 156.3562440, 998.3356643),
        (750, 375, 2.08884678, 2.088850765, 404.5934066),
        (750, 748, 0.01019258913, 0.01019352396, 0.03996003996),
        (750, 749, 0.01000065743, 0.01000050004, 0.0),
    ];

    #[test]
    fn grid_reproduces_spec_sigmoid_tables() {
        let s = Schedule::sigmoid_paper();
        for (steps, k, target, grid, t) in SIGMOID_ROWS {
            let got_target = s.sigma(k, steps).unwrap();
            assert!(rel(got_target, target) < 5e-9, "target K {steps} k {k}");
            let p = TimeMap::Grid.map(got_target).unwrap();
            assert!(
                rel(p.sigma, grid) < 5e-9,
                "grid σ K {steps} k {k}: {}",
                p.sigma
            );
            // The table gives t to 10 significant digits.
            assert!((p.t - t).abs() < 1e-6, "t K {steps} k {k}: {}", p.t);
            // And t is a grid time: a multiple of 999/999999.
            let m = libm::round(p.t * 999_999.0 / 999.0);
            assert!((p.t - m * 999.0 / 999_999.0).abs() < 1e-9);
        }
    }

    /// Spec §9.4: linear K = 1000, (k, grid σ, t) with the spec's printed precision.
    #[test]
    fn grid_reproduces_spec_linear_examples() {
        let s = Schedule::Linear {
            sigma_max: vp::SIGMA_MAX,
            sigma_min: vp::SIGMA_MIN,
        };
        let rows: [(usize, f64, f64, f64); 6] = [
            (0, 157.4072808, 999.0, 1e-9),
            (1, 157.2492302, 998.9001, 5e-5),
            (2, 157.0927600, 998.8012, 5e-5),
            (997, 0.3251110, 94.987, 5e-4),
            (998, 0.1675544, 47.389, 5e-4),
            (999, 0.0100005, 0.0, 1e-9),
        ];
        for (k, sigma, t, t_tol) in rows {
            let p = TimeMap::Grid.map(s.sigma(k, 1000).unwrap()).unwrap();
            assert!((p.sigma - sigma).abs() < 5.1e-8, "k {k}: σ {}", p.sigma);
            assert!((p.t - t).abs() < t_tol, "k {k}: t {}", p.t);
        }
    }

    #[test]
    fn pretrained_schedule_maps_to_integer_times() {
        let s = Schedule::VpPretrained;
        for k in 0..1000 {
            let sigma = s.sigma(k, 1000).unwrap();
            let e = TimeMap::Exact.map(sigma).unwrap();
            assert_eq!(
                e,
                VpPoint {
                    sigma: vp::SIGMA[999 - k],
                    t: (999 - k) as f64
                }
            );
            // The grid contains every integer time (m = 1001·j) up to rounding of u_m.
            let g = TimeMap::Grid.map(sigma).unwrap();
            assert!((g.t - (999 - k) as f64).abs() < 1e-9, "k {k}: {}", g.t);
            assert!(rel(g.sigma, sigma) < 1e-12);
        }
    }

    #[test]
    fn exact_inverts_the_interpolation() {
        for i in 0..=9990 {
            let t = i as f64 * 0.1;
            let sigma = vp::sigma_at(t).unwrap();
            let p = TimeMap::Exact.map(sigma).unwrap();
            assert!((p.t - t).abs() < 1e-9, "t {t}: {}", p.t);
            assert_eq!(p.sigma, sigma);
        }
    }

    /// Spec §6.3: the exact inversion is within 0.0005 of the code's grid time. The grid
    /// spacing is 999/999999 ≈ 0.000999; the nearest-σ point is the nearest-t point except
    /// next to an integer time where the slope changes (by < 2% between neighbours), which
    /// can add a few 1e-6.
    #[test]
    fn exact_is_within_half_a_grid_step_of_grid() {
        let s = Schedule::sigmoid_paper();
        let mut worst: f64 = 0.0;
        for steps in [100, 750, 1000] {
            for k in 0..steps {
                let sigma = s.sigma(k, steps).unwrap();
                let e = TimeMap::Exact.map(sigma).unwrap();
                let g = TimeMap::Grid.map(sigma).unwrap();
                worst = worst.max((e.t - g.t).abs());
            }
        }
        // Dense sweep of σ too, including points just past integer times.
        for i in 0..20_000 {
            let sigma =
                vp::SIGMA_MIN * libm::pow(vp::SIGMA_MAX / vp::SIGMA_MIN, i as f64 / 19_999.0);
            let e = TimeMap::Exact.map(sigma).unwrap();
            let g = TimeMap::Grid.map(sigma).unwrap();
            worst = worst.max((e.t - g.t).abs());
        }
        assert!(worst < 0.0005 * 1.02, "worst {worst}");
        assert!(worst > 0.0004, "sweep too coarse to be a test: {worst}");
    }

    /// The binary search picks the nearest grid point: compare with a scan of the neighbours.
    #[test]
    fn grid_choice_is_nearest_among_neighbours() {
        for i in 0..2000 {
            let sigma = vp::SIGMA_MIN * libm::pow(vp::SIGMA_MAX / vp::SIGMA_MIN, i as f64 / 1999.0);
            let m = nearest_grid_index(sigma);
            let d = (grid_sigma(m) - sigma).abs();
            for n in m.saturating_sub(3)..(m + 4).min(GRID_POINTS) {
                let dn = (grid_sigma(n) - sigma).abs();
                assert!(d < dn || (d == dn && m <= n), "σ {sigma}: m {m} vs {n}");
            }
        }
    }

    #[test]
    fn grid_endpoints_and_ties() {
        assert_eq!(grid_time(0), 0.0);
        assert_eq!(grid_time(GRID_POINTS - 1), 999.0);
        assert_eq!(grid_sigma(0), vp::SIGMA_MIN);
        assert_eq!(grid_sigma(GRID_POINTS - 1), vp::SIGMA_MAX);
        // σ exactly halfway between two grid values (many such pairs exist) → smaller index.
        let mut ties = 0;
        for m in (0..GRID_POINTS - 1).step_by(99_991) {
            let (a, b) = (grid_sigma(m), grid_sigma(m + 1));
            let mid = 0.5 * (a + b);
            if mid - a == b - mid {
                ties += 1;
                assert_eq!(nearest_grid_index(mid), m);
            } else {
                assert_eq!(
                    nearest_grid_index(mid),
                    if mid - a < b - mid { m } else { m + 1 }
                );
            }
        }
        assert!(ties > 0, "no exact tie met: the test checks nothing");
    }

    #[test]
    fn slack_clamps_and_beyond_is_an_error() {
        for map in [TimeMap::Exact, TimeMap::Grid] {
            let top = map.map(vp::SIGMA_MAX * (1.0 + 5e-7)).unwrap();
            assert_eq!((top.sigma, top.t), (vp::SIGMA_MAX, 999.0));
            let bottom = map.map(vp::SIGMA_MIN * (1.0 - 5e-7)).unwrap();
            assert_eq!((bottom.sigma, bottom.t), (vp::SIGMA_MIN, 0.0));
            // The schedules' own endpoints rounded to f32 pass (formats §1).
            assert!(map.map(vp::SIGMA_MAX as f32 as f64).is_ok());
            assert!(map.map(vp::SIGMA_MIN as f32 as f64).is_ok());
            for bad in [
                vp::SIGMA_MAX * (1.0 + 2e-6),
                vp::SIGMA_MIN * (1.0 - 2e-6),
                0.0,
                -1.0,
            ] {
                assert_eq!(map.map(bad), Err(Error::SigmaOutsideVpTable { sigma: bad }));
            }
            assert_eq!(
                map.map(f64::INFINITY),
                Err(Error::SigmaOutsideVpTable {
                    sigma: f64::INFINITY
                })
            );
            assert_eq!(map.map(f64::NAN), Err(Error::NotFinite("sigma")));
        }
    }
}
