//! The calibration of `host evaluate fid` (models/README.md): real training digits against the
//! test reference at several n (the noise floor: seeded disjoint subsets, mean ± sd), and known
//! degradations of real digits at n = 1000, which a useful judge must score far above the floor.
//!
//! Degradations act on the 8-bit 32×32 digits (MNIST padded by 2), in [0, 1] pixel units,
//! and are re-quantised as the PNG writer does (round(255·x) after clamping):
//! - [`gaussian_blur`]: a Gaussian of σ = 1 px (kernel radius 3, normalised, separable, zero
//!   outside the image: the background);
//! - [`add_noise`]: i.i.d. N(0, σ²) per pixel, σ in [0, 1] units (σ 0.2 = 51 grey levels);
//! - a single class: real digits of one label only;
//! - class-mean templates: each digit replaced by the mean image of its class (over the whole
//!   training set).

use anyhow::{bail, Result};
use serde::Serialize;
use tweedie_core::noise;

use super::judge::{Judge, Scores, Split};
use tweedie_nn::data::order::epoch_permutation;
use tweedie_nn::model::classifier::{PIXELS, SIZE};

/// A σ-px Gaussian blur of one 32×32 digit, rounded back to bytes.
pub fn gaussian_blur(img: &[u8], sigma: f64) -> Vec<u8> {
    let radius = (3.0 * sigma).ceil() as isize;
    let taps: Vec<f64> = (-radius..=radius)
        .map(|d| (-((d * d) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = taps.iter().sum();
    let taps: Vec<f64> = taps.iter().map(|t| t / total).collect();
    let s = SIZE as isize;
    let pass = |src: &[f64], horizontal: bool| -> Vec<f64> {
        let mut out = vec![0.0f64; PIXELS];
        for y in 0..s {
            for x in 0..s {
                let mut acc = 0.0;
                for (t, d) in taps.iter().zip(-radius..=radius) {
                    let (yy, xx) = if horizontal { (y, x + d) } else { (y + d, x) };
                    if (0..s).contains(&yy) && (0..s).contains(&xx) {
                        acc += t * src[(yy * s + xx) as usize];
                    }
                }
                out[(y * s + x) as usize] = acc;
            }
        }
        out
    };
    let unit: Vec<f64> = img.iter().map(|&v| f64::from(v)).collect();
    let blurred = pass(&pass(&unit, true), false);
    blurred
        .iter()
        .map(|&v| v.round().clamp(0.0, 255.0) as u8)
        .collect()
}

/// One digit plus N(0, σ²) noise per pixel in [0, 1] units; the draw of pixel p of digit
/// `index` is `noise::gaussian_f64(seed, index, 0, p)`.
pub fn add_noise(img: &[u8], sigma: f64, seed: u64, index: u64) -> Vec<u8> {
    img.iter()
        .enumerate()
        .map(|(p, &v)| {
            let x = f64::from(v) / 255.0 + sigma * noise::gaussian_f64(seed, index, 0, p as u64);
            (255.0 * x.clamp(0.0, 1.0)).round() as u8
        })
        .collect()
}

/// The mean image of each class 0 … 9, rounded to bytes (a class without images stays 0).
pub fn class_means(images: &[u8], labels: &[u8]) -> Vec<Vec<u8>> {
    let mut sums = vec![vec![0.0f64; PIXELS]; 10];
    let mut counts = [0usize; 10];
    for (img, &l) in images.chunks_exact(PIXELS).zip(labels) {
        let c = usize::from(l).min(9);
        counts[c] += 1;
        for (s, &v) in sums[c].iter_mut().zip(img) {
            *s += f64::from(v);
        }
    }
    sums.iter()
        .zip(counts)
        .map(|(s, n)| {
            s.iter()
                .map(|&v| (v / n.max(1) as f64).round() as u8)
                .collect()
        })
        .collect()
}

/// Mean and sample standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanSd {
    /// Mean.
    pub mean: f64,
    /// Standard deviation (n − 1; 0 for one value).
    pub sd: f64,
}

fn mean_sd(v: &[f64]) -> MeanSd {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let ss: f64 = v.iter().map(|x| (x - mean).powi(2)).sum();
    MeanSd {
        mean,
        sd: if v.len() > 1 {
            (ss / (n - 1.0)).sqrt()
        } else {
            0.0
        },
    }
}

/// One row of the calibration table: a kind of digit set scored several times.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// What the digits are.
    pub name: String,
    /// Digits per set.
    pub n: usize,
    /// Fréchet distance over the sets.
    pub fid: MeanSd,
    /// Inception-score analogue over the sets.
    pub inception_score: MeanSd,
    /// Precision over the sets.
    pub precision: MeanSd,
    /// Recall over the sets.
    pub recall: MeanSd,
    /// Every set's scores.
    pub sets: Vec<Scores>,
    /// Seconds per set (classifier, statistics, Fréchet distance, precision/recall).
    pub seconds_per_set: f64,
}

fn row(name: &str, sets: Vec<Scores>, seconds: f64) -> Row {
    let of = |f: fn(&Scores) -> f64| mean_sd(&sets.iter().map(f).collect::<Vec<_>>());
    Row {
        name: name.to_string(),
        n: sets.first().map_or(0, |s| s.n),
        fid: of(|s| s.fid),
        inception_score: of(|s| s.inception_score),
        precision: of(|s| s.precision_recall.precision),
        recall: of(|s| s.precision_recall.recall),
        seconds_per_set: seconds / sets.len().max(1) as f64,
        sets,
    }
}

/// The training digits the calibration draws from.
pub struct TrainingDigits<'a> {
    /// `n × PIXELS` bytes (32×32 padded).
    pub images: &'a [u8],
    /// Their labels.
    pub labels: &'a [u8],
}

/// What to calibrate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// Sizes of the noise-floor rows.
    pub floor_sizes: Vec<usize>,
    /// Size of the degradation rows.
    pub degraded_size: usize,
    /// Disjoint subsets per row.
    pub repeats: usize,
    /// Seed of the subsets and the noise.
    pub seed: u64,
}

/// Scores every row of the plan against the test reference; `say` gets a line per row.
pub fn calibrate(
    judge: &Judge,
    digits: &TrainingDigits,
    plan: &Plan,
    threads: usize,
    mut say: impl FnMut(&Row),
) -> Result<Vec<Row>> {
    let n_train = digits.labels.len();
    if digits.images.len() != n_train * PIXELS {
        bail!("calibration: images and labels disagree");
    }
    let order = epoch_permutation(n_train, plan.seed, 0)?;
    let max = plan.floor_sizes.iter().copied().max().unwrap_or(0);
    if max.max(plan.degraded_size) * plan.repeats > n_train {
        bail!(
            "calibration: {} disjoint sets of {} need more than the {n_train} training digits",
            plan.repeats,
            max
        );
    }
    let gather = |idx: &[usize], f: &dyn Fn(usize, &[u8]) -> Vec<u8>| -> Vec<u8> {
        idx.iter()
            .flat_map(|&i| f(i, &digits.images[i * PIXELS..(i + 1) * PIXELS]))
            .collect()
    };
    let subset = |n: usize, j: usize| &order[j * n..(j + 1) * n];
    let mut rows = Vec::new();
    let mut run = |name: &str, sets: &mut dyn Iterator<Item = Vec<u8>>| -> Result<()> {
        let t = std::time::Instant::now();
        let scored = sets
            .map(|imgs| judge.score(&imgs, Split::Test, threads))
            .collect::<Result<Vec<_>>>()?;
        let r = row(name, scored, t.elapsed().as_secs_f64());
        say(&r);
        rows.push(r);
        Ok(())
    };
    let same = |_: usize, img: &[u8]| img.to_vec();
    for &n in &plan.floor_sizes {
        run(
            "real training digits",
            &mut (0..plan.repeats).map(|j| gather(subset(n, j), &same)),
        )?;
    }
    let n = plan.degraded_size;
    let blur = |_: usize, img: &[u8]| gaussian_blur(img, 1.0);
    run(
        "Gaussian blur, sigma 1 px",
        &mut (0..plan.repeats).map(|j| gather(subset(n, j), &blur)),
    )?;
    for sigma in [0.2, 0.1] {
        let noisy = |i: usize, img: &[u8]| add_noise(img, sigma, plan.seed, i as u64);
        run(
            &format!("added noise, sigma {sigma} of [0, 1]"),
            &mut (0..plan.repeats).map(|j| gather(subset(n, j), &noisy)),
        )?;
    }
    let means = class_means(digits.images, digits.labels);
    let template = |i: usize, _: &[u8]| means[usize::from(digits.labels[i]).min(9)].clone();
    run(
        "class-mean templates",
        &mut (0..plan.repeats).map(|j| gather(subset(n, j), &template)),
    )?;
    // A single class: the first n digits of class c in the seeded order, c = 0 … 9.
    let single = (0..10u8).map(|c| {
        let idx: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| digits.labels[i] == c)
            .take(n)
            .collect();
        gather(&idx, &same)
    });
    run("a single class (each of 0 … 9)", &mut single.into_iter())?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_keeps_mass_and_spreads_a_point() {
        let mut img = vec![0u8; PIXELS];
        img[16 * 32 + 16] = 255;
        let b = gaussian_blur(&img, 1.0);
        // Centre tap of the 1-D kernel ≈ 0.399 (radius 3 renormalised), so 255·0.4² ≈ 41.
        assert_eq!(b[16 * 32 + 16], 41);
        assert_eq!(b[16 * 32 + 17], b[17 * 32 + 16]);
        let total: u32 = b.iter().map(|&v| u32::from(v)).sum();
        assert!((total as i64 - 255).abs() < 10, "{total}");
        // A flat image stays flat away from the border.
        let flat = gaussian_blur(&vec![100u8; PIXELS], 1.0);
        assert_eq!(flat[16 * 32 + 16], 100);
    }

    #[test]
    fn noise_has_its_sigma_and_is_seeded() {
        let img = vec![128u8; PIXELS];
        let a = add_noise(&img, 0.2, 1, 5);
        assert_eq!(a, add_noise(&img, 0.2, 1, 5));
        assert_ne!(a, add_noise(&img, 0.2, 1, 6));
        let sd = (a
            .iter()
            .map(|&v| (f64::from(v) / 255.0 - 128.0 / 255.0).powi(2))
            .sum::<f64>()
            / PIXELS as f64)
            .sqrt();
        assert!((sd - 0.2).abs() < 0.02, "{sd}");
    }

    #[test]
    fn class_means_average_each_class() {
        let images: Vec<u8> = [vec![10u8; PIXELS], vec![20; PIXELS], vec![31; PIXELS]].concat();
        let m = class_means(&images, &[3, 3, 4]);
        assert_eq!(m[3], vec![15u8; PIXELS]);
        assert_eq!(m[4], vec![31u8; PIXELS]);
        assert_eq!(m[0], vec![0u8; PIXELS]);
        let s = mean_sd(&[1.0, 2.0, 3.0]);
        assert_eq!((s.mean, s.sd), (2.0, 1.0));
    }
}
