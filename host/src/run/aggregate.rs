//! Aggregates over chains, accumulated one chain at a time in global chain order. The single
//! run and `host merge` both feed chains 0, 1, … N−1 through these, so an aggregate has the
//! same bits however the chains were split into batches, threads or shards.

use anyhow::{anyhow, Result};
use tweedie_core::metrics::RunningMoments;

/// Per-pixel mean and m2 (sum of squared deviations) over chains, pushed in order.
pub struct ChainMoments {
    mean: Vec<f64>,
    m2: Vec<f64>,
    count: u64,
}

impl ChainMoments {
    /// No chains yet, for chains of `len` values.
    pub fn new(len: usize) -> ChainMoments {
        ChainMoments {
            mean: vec![0.0; len],
            m2: vec![0.0; len],
            count: 0,
        }
    }

    /// Adds the next chain (Welford's update, core's `RunningMoments`).
    pub fn push(&mut self, chain: &[f32]) -> Result<()> {
        let mut m = RunningMoments::from_parts(&mut self.mean, &mut self.m2, self.count)
            .map_err(|e| anyhow!("moments: {e}"))?;
        m.push(chain).map_err(|e| anyhow!("moments: {e}"))?;
        self.count += 1;
        Ok(())
    }

    /// The number of chains pushed.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// (mean, m2).
    pub fn into_parts(self) -> (Vec<f64>, Vec<f64>) {
        (self.mean, self.m2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_match_the_closed_form() {
        let chains = [[1.0f32, -2.0], [3.0, 0.0], [5.0, 4.0]];
        let mut m = ChainMoments::new(2);
        for c in &chains {
            m.push(c).unwrap();
        }
        assert_eq!(m.count(), 3);
        let (mean, m2) = m.into_parts();
        assert_eq!(mean[0], 3.0);
        assert!((mean[1] - 2.0 / 3.0).abs() < 1e-12);
        // m2 = Σ (x − mean)²: 8 for the first pixel; 56/3 for the second.
        assert!((m2[0] - 8.0).abs() < 1e-12);
        assert!((m2[1] - 56.0 / 3.0).abs() < 1e-12);
        assert!(ChainMoments::new(2).push(&[1.0]).is_err());
    }
}
