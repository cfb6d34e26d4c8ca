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

#[cfg(test)]
mod tests {
    use super::*;

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
