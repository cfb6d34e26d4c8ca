//! The nearest training image of each query (L2 in the model's data range, on the
//! preprocessed — padded — images), with its label and distance.
//!
//! Brute force over the whole set: threads take contiguous ranges of the training set, convert
//! it block by block (the bytes stay the only full copy), and keep the best candidate of every
//! query; ties go to the lower index. The search compares f32 sums of squares (8 lanes, so it
//! vectorises); the winner's distance is then recomputed in f64.

use anyhow::{bail, Result};

use tweedie_nn::backend::pool::part;
use tweedie_nn::data::{Dataset, Preprocess};

/// Training images converted per block.
const BLOCK: usize = 256;

/// A query's nearest training image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    /// Its index in the training set.
    pub index: usize,
    /// Its label, when the set has labels.
    pub label: Option<u8>,
    /// ‖query − image‖₂ in the model's data range.
    pub distance: f64,
}

/// Σ (a − b)² in f32 with 8 independent partial sums.
pub(crate) fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (x - y) * (x - y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            let d = x[l] - y[l];
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Best (squared f32 distance, index) of every query over training images `range`.
fn search_range(
    queries: &[f32],
    dim: usize,
    ds: &Dataset,
    pre: Preprocess,
    range: std::ops::Range<usize>,
) -> Result<Vec<(f32, usize)>> {
    let mut best = vec![(f32::INFINITY, usize::MAX); queries.len() / dim];
    let mut block = vec![0.0f32; BLOCK * dim];
    let mut start = range.start;
    while start < range.end {
        let idx: Vec<usize> = (start..range.end.min(start + BLOCK)).collect();
        let images = &mut block[..idx.len() * dim];
        ds.fill_batch(&idx, pre, images)?;
        for (t, img) in idx.iter().zip(images.chunks_exact(dim)) {
            for (b, q) in best.iter_mut().zip(queries.chunks_exact(dim)) {
                let d = squared_distance(q, img);
                if d < b.0 {
                    *b = (d, *t);
                }
            }
        }
        start += idx.len();
    }
    Ok(best)
}

/// The nearest image of `ds` (converted by `pre`) to each of the queries (`queries.len() /
/// dim` images of `dim` elements in the model's data range), using `threads` threads.
pub fn nearest(
    queries: &[f32],
    ds: &Dataset,
    pre: Preprocess,
    threads: usize,
) -> Result<Vec<Neighbour>> {
    let dim = pre.example_len(ds);
    if queries.is_empty() || !queries.len().is_multiple_of(dim) {
        bail!(
            "{} query values are not a positive number of {dim}-element images",
            queries.len()
        );
    }
    let parts = threads.clamp(1, ds.len());
    let results: Vec<Result<Vec<(f32, usize)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..parts)
            .map(|i| {
                let range = part(ds.len(), parts, 1, i);
                s.spawn(move || search_range(queries, dim, ds, pre, range))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a search thread panicked"))
            })
            .collect()
    });
    let mut best = vec![(f32::INFINITY, usize::MAX); queries.len() / dim];
    for r in results {
        for (b, c) in best.iter_mut().zip(r?) {
            if c.0 < b.0 || (c.0 == b.0 && c.1 < b.1) {
                *b = c;
            }
        }
    }
    let mut img = vec![0.0f32; dim];
    best.iter()
        .zip(queries.chunks_exact(dim))
        .map(|(&(_, index), q)| {
            ds.fill_batch(&[index], pre, &mut img)?;
            let d2: f64 = q
                .iter()
                .zip(&img)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum();
            Ok(Neighbour {
                index,
                label: ds.labels().map(|l| l[index]),
                distance: d2.sqrt(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tweedie_nn::data::DataRange;

    fn dataset() -> Dataset {
        // 700 distinct 3×3 images (more than two blocks) with labels i mod 10.
        // Pixels 0 and 1 spell the index in base 256, so no two images are equal.
        let pixels: Vec<u8> = (0..700 * 9)
            .map(|e| match e % 9 {
                0 => (e / 9 % 256) as u8,
                1 => (e / 9 / 256 * 100) as u8,
                k => ((e / 9) * 7 + k * 31) as u8,
            })
            .collect();
        let labels = (0..700).map(|i| (i % 10) as u8).collect();
        Dataset::new(pixels, Some(labels), 1, 3, 3).unwrap()
    }

    #[test]
    fn training_images_find_themselves() {
        let ds = dataset();
        let pre = Preprocess {
            range: DataRange::MinusOneOne,
            pad: 1,
        };
        let picks = [0usize, 255, 256, 511, 699];
        let dim = pre.example_len(&ds);
        let mut q = vec![0.0f32; picks.len() * dim];
        ds.fill_batch(&picks, pre, &mut q).unwrap();
        for threads in [1, 2, 5] {
            let nn = nearest(&q, &ds, pre, threads).unwrap();
            for (n, &i) in nn.iter().zip(&picks) {
                assert_eq!(n.distance, 0.0, "image {i}");
                assert_eq!(n.label, Some((i % 10) as u8));
                // Duplicates would resolve to the lowest index; these images are distinct.
                assert_eq!(n.index, i);
            }
        }
    }

    #[test]
    fn distance_is_the_l2_norm_in_the_data_range() {
        let ds = Dataset::new(vec![0, 0, 255, 255], Some(vec![3, 4]), 1, 1, 2).unwrap();
        let pre = Preprocess {
            range: DataRange::ZeroOne,
            pad: 0,
        };
        // (0.5, 0.5) is √(0.5) from both; ties go to the lower index.
        let nn = nearest(&[0.5, 0.5, 0.9, 1.0], &ds, pre, 2).unwrap();
        assert_eq!((nn[0].index, nn[0].label), (0, Some(3)));
        assert!((nn[0].distance - 0.5f64.sqrt()).abs() < 1e-7);
        assert_eq!(nn[1].index, 1);
        assert!((nn[1].distance - 0.1).abs() < 1e-7);
        assert!(nearest(&[0.5], &ds, pre, 1).is_err());
    }
}
