//! The data order: one seeded permutation per epoch, read as a continuous stream.
//!
//! Epoch e's permutation is a Fisher–Yates shuffle whose draw for position i is
//! `noise::bits(seed, PERMUTATION_CHAIN, train_counter(e, STREAM_DATA), i)` (core's
//! counter-based noise, training stream [`STREAM_DATA`]), mapped to `0..=i` by the high half
//! of a 64×64-bit product (bias below `n / 2⁶⁴`, negligible). It is a pure function of
//! (seed, epoch, n), so the state to resume is just (seed, epoch, position).
//!
//! Batches are taken back to back: a batch that runs past the end of an epoch continues with
//! the first examples of the next epoch's permutation (no example is dropped or repeated
//! within an epoch; nothing depends on the batch size except the batch boundaries).

use anyhow::{bail, Result};
use tweedie_core::noise;
use tweedie_core::training::{train_counter, STREAM_DATA};

/// The noise chain of the epoch permutations (per-example chains count up from 0, so this
/// stays clear of them).
pub const PERMUTATION_CHAIN: u64 = u64::MAX;

/// The permutation of `0..n` for one epoch.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Result<Vec<usize>> {
    let counter = train_counter(epoch, STREAM_DATA)
        .map_err(|e| anyhow::anyhow!("data order, epoch {epoch}: {e:?}"))?;
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let bits = noise::bits(seed, PERMUTATION_CHAIN, counter, i as u64);
        let j = ((bits as u128 * (i as u128 + 1)) >> 64) as usize;
        perm.swap(i, j);
    }
    Ok(perm)
}

/// Where the data stream stands: the next example is `permutation(epoch)[position]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOrder {
    seed: u64,
    epoch: u64,
    position: usize,
    perm: Vec<usize>,
}

impl DataOrder {
    /// The start of the stream (epoch 0, position 0) over `n` examples.
    pub fn new(n: usize, seed: u64) -> Result<DataOrder> {
        DataOrder::resume(n, seed, 0, 0)
    }

    /// Continues a stream saved as (seed, epoch, position).
    pub fn resume(n: usize, seed: u64, epoch: u64, position: usize) -> Result<DataOrder> {
        if n == 0 {
            bail!("data order over an empty dataset");
        }
        if position >= n {
            bail!("data position {position} out of range for {n} examples");
        }
        Ok(DataOrder {
            seed,
            epoch,
            position,
            perm: epoch_permutation(n, seed, epoch)?,
        })
    }

    /// The seed of the permutations.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The current epoch (0-based).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The position of the next example within the epoch.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Number of examples per epoch.
    pub fn len(&self) -> usize {
        self.perm.len()
    }

    /// Always false (an order covers at least one example).
    pub fn is_empty(&self) -> bool {
        self.perm.is_empty()
    }

    /// Fills `out` with the next `out.len()` example indices, crossing epochs as needed.
    pub fn next_batch(&mut self, out: &mut [usize]) -> Result<()> {
        for slot in out.iter_mut() {
            *slot = self.perm[self.position];
            self.position += 1;
            if self.position == self.perm.len() {
                self.epoch += 1;
                self.position = 0;
                self.perm = epoch_permutation(self.perm.len(), self.seed, self.epoch)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_permutations_and_differ() {
        let a = epoch_permutation(1000, 7, 0).unwrap();
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, epoch_permutation(1000, 7, 1).unwrap());
        assert_ne!(a, epoch_permutation(1000, 8, 0).unwrap());
        assert_eq!(a, epoch_permutation(1000, 7, 0).unwrap());
        assert_eq!(epoch_permutation(1, 7, 0).unwrap(), vec![0]);
    }

    #[test]
    fn shuffle_is_roughly_uniform() {
        // Over 3000 seeds, each of the 6 orders of 3 elements appears ~500 times
        // (binomial sd ≈ 20; allow 5 sd).
        let mut counts = std::collections::HashMap::new();
        for seed in 0..3000 {
            *counts
                .entry(epoch_permutation(3, seed, 0).unwrap())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 6);
        for (p, c) in counts {
            assert!((c - 500i32).abs() < 100, "{p:?}: {c}");
        }
    }

    #[test]
    fn epochs_cover_every_example_once_and_resume_exactly() {
        let (n, seed) = (10, 3);
        let mut straight = DataOrder::new(n, seed).unwrap();
        let mut taken = vec![0usize; 25];
        for chunk in taken.chunks_mut(4) {
            straight.next_batch(chunk).unwrap();
        }
        let mut e0 = taken[..10].to_vec();
        e0.sort_unstable();
        assert_eq!(e0, (0..10).collect::<Vec<_>>());
        assert_eq!(&taken[10..20], &epoch_permutation(n, seed, 1).unwrap()[..]);
        assert_eq!((straight.epoch(), straight.position()), (2, 5));
        // Stop after 12, resume from (epoch, position), take 13 more.
        let mut first = DataOrder::new(n, seed).unwrap();
        let mut part = vec![0usize; 12];
        first.next_batch(&mut part).unwrap();
        let mut resumed =
            DataOrder::resume(n, first.seed(), first.epoch(), first.position()).unwrap();
        let mut rest = vec![0usize; 13];
        resumed.next_batch(&mut rest).unwrap();
        part.extend(rest);
        assert_eq!(part, taken);
        assert_eq!(resumed, straight);
    }

    #[test]
    fn bad_states_are_refused() {
        assert!(DataOrder::new(0, 1).is_err());
        assert!(DataOrder::resume(5, 1, 0, 5).is_err());
        assert!(DataOrder::resume(5, 1, u64::MAX, 0).is_err());
    }
}
