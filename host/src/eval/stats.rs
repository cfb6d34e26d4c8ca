//! Summary statistics of per-item scores.

use serde::Serialize;

/// Mean and standard error of the mean of `n` values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanSe {
    /// The sample mean.
    pub mean: f64,
    /// s / √n with the unbiased sample standard deviation s (0 for n < 2).
    pub se: f64,
    /// The number of values.
    pub n: usize,
}

/// Mean ± standard error of `values` (`NaN` mean for an empty slice).
pub fn mean_se(values: &[f64]) -> MeanSe {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let se = if n < 2 {
        0.0
    } else {
        let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
        (ss / (n - 1) as f64).sqrt() / (n as f64).sqrt()
    };
    MeanSe { mean, se, n }
}

/// Minimum, median, mean and maximum of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Smallest value.
    pub min: f64,
    /// Median (the mean of the two middle values for an even count).
    pub median: f64,
    /// Mean.
    pub mean: f64,
    /// Largest value.
    pub max: f64,
}

/// The [`Spread`] of a non-empty sample (`None` when empty).
pub fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    };
    Some(Spread {
        min: v[0],
        median,
        mean: v.iter().sum::<f64>() / n as f64,
        max: v[n - 1],
    })
}

/// Pearson's χ² goodness-of-fit test of counts against given proportions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChiSquare {
    /// Σ (observed − expected)² / expected.
    pub chi2: f64,
    /// Degrees of freedom: categories − 1.
    pub dof: usize,
    /// P(χ²_dof ≥ chi2), the probability of a worse fit if the proportions hold.
    pub p: f64,
}

/// χ² test of `counts` against proportions `weights` (relative: e.g. the training set's own
/// counts). `None` when there are fewer than 2 categories, no counts, the lengths differ, or a
/// weight is not positive and finite.
pub fn chi_square(counts: &[usize], weights: &[f64]) -> Option<ChiSquare> {
    let total: usize = counts.iter().sum();
    let wsum: f64 = weights.iter().sum();
    let valid = weights.iter().all(|w| w.is_finite() && *w > 0.0);
    if counts.len() < 2 || total == 0 || counts.len() != weights.len() || !valid {
        return None;
    }
    let chi2 = counts
        .iter()
        .zip(weights)
        .map(|(&k, w)| {
            let expected = total as f64 * w / wsum;
            (k as f64 - expected).powi(2) / expected
        })
        .sum::<f64>();
    let dof = counts.len() - 1;
    Some(ChiSquare {
        chi2,
        dof,
        p: gamma_q(dof as f64 / 2.0, chi2 / 2.0),
    })
}

/// The regularised upper incomplete gamma function Q(a, x) = Γ(a, x)/Γ(a), a > 0, x ≥ 0: the
/// series of P below a + 1, Lentz's continued fraction above (Numerical Recipes §6.2).
fn gamma_q(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (a * x.ln() - x - libm::lgamma(a)).exp();
    if x < a + 1.0 {
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        (1.0 - sum * front).max(0.0)
    } else {
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            d = if d.abs() < TINY { TINY } else { d };
            c = b + an / c;
            c = if c.abs() < TINY { TINY } else { c };
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        front * h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chi_square_survival_matches_closed_forms() {
        // dof 2: Q(1, x/2) = exp(−x/2); dof 4: (1 + x/2) exp(−x/2); both branches.
        for x in [0.1, 1.0, 3.0, 7.5, 20.0, 60.0] {
            assert!(
                (gamma_q(1.0, x / 2.0) - (-x / 2.0f64).exp()).abs() < 1e-14,
                "{x}"
            );
            let want = (1.0 + x / 2.0) * (-x / 2.0f64).exp();
            assert!((gamma_q(2.0, x / 2.0) - want).abs() < 1e-14, "{x}");
        }
        // dof 9 (ten digits): the 5% and 0.1% critical values 16.919 and 27.877.
        assert!((gamma_q(4.5, 16.919 / 2.0) - 0.05).abs() < 1e-4);
        assert!((gamma_q(4.5, 27.877 / 2.0) - 0.001).abs() < 1e-5);
    }

    #[test]
    fn chi_square_of_digit_counts() {
        let equal = [1.0; 10];
        let even = chi_square(&[10; 10], &equal).unwrap();
        assert_eq!((even.chi2, even.dof), (0.0, 9));
        assert!((even.p - 1.0).abs() < 1e-12);
        // The bundled VP model's 64 preset samples (models/README.md): χ² 27.6.
        let preset = chi_square(&[4, 13, 1, 3, 5, 2, 9, 12, 4, 11], &equal).unwrap();
        assert!((preset.chi2 - 27.5625).abs() < 1e-12);
        assert!(preset.p > 0.001 && preset.p < 0.0012, "{}", preset.p);
        // Proportions 1:3 and counts 10, 30 fit exactly; weights are relative.
        let fit = chi_square(&[10, 30], &[2.0, 6.0]).unwrap();
        assert_eq!((fit.chi2, fit.dof, fit.p), (0.0, 1, 1.0));
        // 20, 20 against 1:3: expected 10 and 30, χ² = 100/10 + 100/30.
        let off = chi_square(&[20, 20], &[1.0, 3.0]).unwrap();
        assert!((off.chi2 - (10.0 + 100.0 / 30.0)).abs() < 1e-12);
        assert!(chi_square(&[0; 10], &equal).is_none());
        assert!(chi_square(&[5], &[1.0]).is_none());
        assert!(chi_square(&[5, 5], &[1.0]).is_none());
        assert!(chi_square(&[5, 5], &[1.0, 0.0]).is_none());
    }

    #[test]
    fn mean_and_standard_error() {
        // 1..=4: mean 2.5, s² = 5/3, se = sqrt(5/3)/2.
        let m = mean_se(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(m.mean, 2.5);
        assert!((m.se - (5.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-15);
        assert_eq!(mean_se(&[7.0]).se, 0.0);
    }

    #[test]
    fn order_statistics() {
        let s = spread(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.min, s.median, s.mean, s.max), (1.0, 2.5, 4.0, 10.0));
        assert_eq!(spread(&[5.0, 1.0, 3.0]).unwrap().median, 3.0);
        assert!(spread(&[]).is_none());
    }
}
