//! The two passes of an exact empirical-law denoiser (tweedie-nn's `training-set`:
//! D(x, σ) = Σᵢ wᵢ yᵢ, wᵢ ∝ exp(−‖x − yᵢ‖² / 2σ²)) over a block of images yᵢ: the squared
//! distances of x to each, and the f64 accumulation of the weighted images. They are the whole
//! cost of that denoiser (N = 60,000 training digits per evaluation), so each has an AVX2 twin
//! that runs several images at once (independent add chains hide the adds' latency, and x or
//! the accumulator is loaded once per group, not once per image). Every lane does the portable
//! body's operations in its order, so every ISA gives the same bits.

use crate::{check_len, KernelError};

/// Lanes of the f32 partial sums of a squared distance.
const LANES: usize = 8;

/// Images per group of the AVX2 twins.
#[cfg(target_arch = "x86_64")]
const GROUP: usize = 4;

/// `out[i] = ‖x − yᵢ‖²` for the images yᵢ of `images` (back to back, `x.len()` each): per image
/// eight f32 lane sums of (xₑ − yₑ)² (lane l over the elements e ≡ l mod 8; the differences,
/// not ‖x‖² + ‖y‖² − 2x·y, so near an image it does not cancel), added in f64 in lane order,
/// then the tail's squares in f64.
pub fn squared_distances(x: &[f32], images: &[f32], out: &mut [f64]) -> Result<(), KernelError> {
    check_len(
        "squared_distances: images",
        out.len() * x.len(),
        images.len(),
    )?;
    if x.is_empty() {
        out.fill(0.0);
        return Ok(());
    }
    dispatch!(distances_body, distances_avx2, (x, images, out));
    Ok(())
}

#[inline(always)]
fn distances_body((x, images, out): (&[f32], &[f32], &mut [f64])) {
    for (y, o) in images.chunks_exact(x.len()).zip(out) {
        let mut lanes = [0.0f32; LANES];
        for (a, b) in x.chunks_exact(LANES).zip(y.chunks_exact(LANES)) {
            for l in 0..LANES {
                let d = a[l] - b[l];
                lanes[l] += d * d;
            }
        }
        *o = finish_distance(&lanes, x, y);
    }
}

/// The f64 end of a squared distance: the lane sums in lane order, then the tail (the elements
/// after the last whole group of LANES) squared in f64.
#[inline(always)]
fn finish_distance(lanes: &[f32; LANES], x: &[f32], y: &[f32]) -> f64 {
    let start = x.len() / LANES * LANES;
    let tail: f64 = x[start..]
        .iter()
        .zip(&y[start..])
        .map(|(&a, &b)| f64::from(a - b) * f64::from(a - b))
        .sum();
    lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + tail
}

/// [`distances_body`] with GROUP images at once, one 8-lane AVX vector each.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn distances_avx2((x, images, out): (&[f32], &[f32], &mut [f64])) {
    use core::arch::x86_64::*;
    let dim = x.len();
    let whole = dim / LANES;
    let mut groups = images.chunks_exact(GROUP * dim);
    let mut outs = out.chunks_exact_mut(GROUP);
    for (ys, os) in (&mut groups).zip(&mut outs) {
        let mut acc = [_mm256_setzero_ps(); GROUP];
        for k in 0..whole {
            // SAFETY: k·LANES + LANES ≤ dim for x and each image of the group (whole groups).
            unsafe {
                let xv = _mm256_loadu_ps(x.as_ptr().add(k * LANES));
                for (g, a) in acc.iter_mut().enumerate() {
                    let yv = _mm256_loadu_ps(ys.as_ptr().add(g * dim + k * LANES));
                    let d = _mm256_sub_ps(xv, yv);
                    *a = _mm256_add_ps(*a, _mm256_mul_ps(d, d));
                }
            }
        }
        for (g, (a, o)) in acc.iter().zip(os).enumerate() {
            let mut lanes = [0.0f32; LANES];
            // SAFETY: `lanes` holds LANES floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), *a) };
            *o = finish_distance(&lanes, x, &ys[g * dim..(g + 1) * dim]);
        }
    }
    distances_body((x, groups.remainder(), outs.into_remainder()));
}

/// `acc += wᵢ · yᵢ` for the images yᵢ of `images` (back to back, `acc.len()` each) in order,
/// elementwise in f64 (y widened exactly from f32), skipping the images whose weight is 0.
pub fn add_weighted_rows(
    acc: &mut [f64],
    weights: &[f64],
    images: &[f32],
) -> Result<(), KernelError> {
    check_len(
        "add_weighted_rows: images",
        weights.len() * acc.len(),
        images.len(),
    )?;
    if acc.is_empty() {
        return Ok(());
    }
    dispatch!(weighted_body, weighted_avx2, (acc, weights, images));
    Ok(())
}

#[inline(always)]
fn weighted_body((acc, weights, images): (&mut [f64], &[f64], &[f32])) {
    for (&w, y) in weights.iter().zip(images.chunks_exact(acc.len())) {
        if w == 0.0 {
            continue;
        }
        for (a, &v) in acc.iter_mut().zip(y) {
            *a += w * f64::from(v);
        }
    }
}

/// [`weighted_body`] with the nonzero-weight images taken GROUP at a time: each slice of the
/// accumulator is loaded once, receives the group's images in order, and is stored once; four
/// slices of 4 elements are in flight at once (each element's adds stay in image order, but
/// the four chains of adds hide each other's latency).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn weighted_avx2((acc, weights, images): (&mut [f64], &[f64], &[f32])) {
    let mut group = [0usize; GROUP];
    let mut filled = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w == 0.0 {
            continue;
        }
        group[filled] = i;
        filled += 1;
        if filled == GROUP {
            // SAFETY: AVX2 by this function's contract.
            unsafe { weighted_group_avx2(acc, weights, images, &group) };
            filled = 0;
        }
    }
    // SAFETY: as above.
    unsafe { weighted_group_avx2(acc, weights, images, &group[..filled]) };
}

/// `acc += w_i · y_i` for the images i of `members` (at most GROUP), in that order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn weighted_group_avx2(acc: &mut [f64], weights: &[f64], images: &[f32], members: &[usize]) {
    use core::arch::x86_64::*;
    let dim = acc.len();
    let g = members.len();
    let mut ws = [_mm256_setzero_pd(); GROUP];
    let mut rows: [&[f32]; GROUP] = [&[]; GROUP];
    for (k, &i) in members.iter().enumerate() {
        ws[k] = _mm256_set1_pd(weights[i]);
        rows[k] = &images[i * dim..(i + 1) * dim];
    }
    const STEP: usize = 16;
    let unrolled = dim / STEP * STEP;
    let mut e = 0;
    while e < unrolled {
        // SAFETY: e + STEP ≤ dim for the accumulator and every member's row.
        unsafe {
            let p = acc.as_mut_ptr().add(e);
            let mut a = [
                _mm256_loadu_pd(p),
                _mm256_loadu_pd(p.add(4)),
                _mm256_loadu_pd(p.add(8)),
                _mm256_loadu_pd(p.add(12)),
            ];
            for k in 0..g {
                let y = rows[k].as_ptr().add(e);
                for (v, a) in a.iter_mut().enumerate() {
                    let yv = _mm256_cvtps_pd(_mm_loadu_ps(y.add(4 * v)));
                    *a = _mm256_add_pd(*a, _mm256_mul_pd(ws[k], yv));
                }
            }
            for (v, a) in a.iter().enumerate() {
                _mm256_storeu_pd(p.add(4 * v), *a);
            }
        }
        e += STEP;
    }
    for e in unrolled..dim {
        for &i in members {
            acc[e] += weights[i] * f64::from(images[i * dim + e]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// Against the sum in f64 (f32 lanes: relative error of order 1e-6), with and without a
    /// tail, and for a number of images that is not a whole number of groups.
    #[test]
    fn squared_distances_are_sums_of_squares() {
        for dim in [1, 7, 8, 9, 784, 787] {
            let x = rows(dim, 1);
            let images = rows(7 * dim, 2);
            let mut out = vec![0.0; 7];
            squared_distances(&x, &images, &mut out).unwrap();
            for (y, &d) in images.chunks_exact(dim).zip(&out) {
                let exact: f64 = x
                    .iter()
                    .zip(y)
                    .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                    .sum();
                assert!((d - exact).abs() <= 1e-5 * exact, "{dim}: {d} vs {exact}");
            }
            let mut zero = [1.0];
            squared_distances(&x, &x, &mut zero).unwrap();
            assert_eq!(zero, [0.0]);
        }
        assert!(squared_distances(&[0.0; 3], &[0.0; 4], &mut [0.0]).is_err());
    }

    #[test]
    fn add_weighted_rows_is_exact_in_f64_and_skips_zero_weights() {
        let dim = 787;
        let images = rows(3 * dim, 3);
        let start: Vec<f64> = rows(dim, 4).iter().map(|&v| f64::from(v)).collect();
        let mut acc = start.clone();
        add_weighted_rows(&mut acc, &[0.375, 0.0, -2.0], &images).unwrap();
        for (e, (&a, &s)) in acc.iter().zip(&start).enumerate() {
            let want = s + 0.375 * f64::from(images[e]) + -2.0 * f64::from(images[2 * dim + e]);
            assert_eq!(a, want);
        }
        // A NaN image under weight 0 is never read into the sum.
        let mut nan = images.clone();
        nan[dim..2 * dim].fill(f32::NAN);
        let mut again = start.clone();
        add_weighted_rows(&mut again, &[0.375, 0.0, -2.0], &nan).unwrap();
        assert_eq!(again, acc);
        assert!(add_weighted_rows(&mut acc, &[1.0], &images).is_err());
    }

    /// The AVX2 twins give the portable bodies' bits, for image counts around the group size
    /// and weights with zeros between them.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_twins_give_the_portable_bits() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        for (dim, n) in [(787, 9), (784, 4), (5, 3), (16, 1)] {
            let x = rows(dim, 5);
            let images = rows(n * dim, 6);
            let (mut plain, mut twin) = (vec![0.0; n], vec![0.0; n]);
            distances_body((&x, &images, &mut plain));
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe { distances_avx2((&x, &images, &mut twin)) };
            assert_eq!(plain, twin, "distances, dim {dim}, {n} images");
            let weights: Vec<f64> = (0..n)
                .map(|i| if i % 3 == 1 { 0.0 } else { 0.1 + i as f64 })
                .collect();
            let mut plain = vec![0.5f64; dim];
            let mut twin = plain.clone();
            weighted_body((&mut plain, &weights, &images));
            // SAFETY: as above.
            unsafe { weighted_avx2((&mut twin, &weights, &images)) };
            assert_eq!(plain, twin, "weighted rows, dim {dim}, {n} images");
        }
    }
}
