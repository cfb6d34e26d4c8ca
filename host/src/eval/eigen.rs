//! The eigendecomposition A = V Λ Vᵀ of a symmetric matrix, in f64: Householder reduction to
//! tridiagonal form, then the implicit QL iteration (the EISPACK tred2/tql2 pair, as in JAMA).
//! O(n³); eigenvectors are kept one per row so the QL rotations run over contiguous memory.
//! Also the functions of a symmetric matrix built on it: V f(Λ) Vᵀ, the PSD square root (the
//! Fréchet distance's), and the plain matrix product they need.

use anyhow::{bail, Result};

/// Eigenvalues ascending and their orthonormal eigenvectors (row i belongs to value i).
#[derive(Debug, Clone, PartialEq)]
pub struct Eigen {
    /// λ₀ ≤ λ₁ ≤ … .
    pub values: Vec<f64>,
    /// n rows of n: row i is the unit eigenvector of `values[i]`.
    pub vectors: Vec<f64>,
}

/// Decomposes the symmetric row-major n×n matrix `a` (only symmetry up to rounding is assumed).
pub fn symmetric(a: &[f64], n: usize) -> Result<Eigen> {
    if n == 0 || a.len() != n * n {
        bail!("eigen: {} entries for a {n}x{n} matrix", a.len());
    }
    if a.iter().any(|v| !v.is_finite()) {
        bail!("eigen: the matrix has non-finite entries");
    }
    let mut v = a.to_vec();
    let (mut d, mut e) = (vec![0.0f64; n], vec![0.0f64; n]);
    tridiagonalize(&mut v, n, &mut d, &mut e);
    // Columns of v are the accumulated transformations; the QL pass wants them as rows.
    let mut w = vec![0.0f64; n * n];
    for i in 0..n {
        for k in 0..n {
            w[i * n + k] = v[k * n + i];
        }
    }
    ql_implicit(&mut w, n, &mut d, &mut e)?;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| d[i].total_cmp(&d[j]));
    let mut vectors = Vec::with_capacity(n * n);
    for &i in &order {
        vectors.extend_from_slice(&w[i * n..(i + 1) * n]);
    }
    Ok(Eigen {
        values: order.iter().map(|&i| d[i]).collect(),
        vectors,
    })
}

/// Householder reduction (tred2): on return `v` holds the orthogonal Q (A = Q T Qᵀ, columns),
/// `d` the diagonal of T and `e[1..]` its sub-diagonal.
fn tridiagonalize(v: &mut [f64], n: usize, d: &mut [f64], e: &mut [f64]) {
    d.copy_from_slice(&v[(n - 1) * n..]);
    for i in (1..n).rev() {
        let scale: f64 = d[..i].iter().map(|x| x.abs()).sum();
        let mut h = 0.0;
        if scale == 0.0 {
            e[i] = d[i - 1];
            for j in 0..i {
                d[j] = v[(i - 1) * n + j];
                v[i * n + j] = 0.0;
                v[j * n + i] = 0.0;
            }
        } else {
            for dk in d[..i].iter_mut() {
                *dk /= scale;
                h += *dk * *dk;
            }
            let f = d[i - 1];
            let mut g = h.sqrt();
            if f > 0.0 {
                g = -g;
            }
            e[i] = scale * g;
            h -= f * g;
            d[i - 1] = f - g;
            e[..i].fill(0.0);
            for j in 0..i {
                let f = d[j];
                v[j * n + i] = f;
                let mut g = e[j] + v[j * n + j] * f;
                for k in j + 1..i {
                    g += v[k * n + j] * d[k];
                    e[k] += v[k * n + j] * f;
                }
                e[j] = g;
            }
            let mut f = 0.0;
            for j in 0..i {
                e[j] /= h;
                f += e[j] * d[j];
            }
            let hh = f / (h + h);
            for j in 0..i {
                e[j] -= hh * d[j];
            }
            for j in 0..i {
                let (f, g) = (d[j], e[j]);
                for k in j..i {
                    v[k * n + j] -= f * e[k] + g * d[k];
                }
                d[j] = v[(i - 1) * n + j];
                v[i * n + j] = 0.0;
            }
        }
        d[i] = h;
    }
    // Accumulate the transformations.
    for i in 0..n - 1 {
        v[(n - 1) * n + i] = v[i * n + i];
        v[i * n + i] = 1.0;
        let h = d[i + 1];
        if h != 0.0 {
            for k in 0..=i {
                d[k] = v[k * n + i + 1] / h;
            }
            for j in 0..=i {
                let g: f64 = (0..=i).map(|k| v[k * n + i + 1] * v[k * n + j]).sum();
                for k in 0..=i {
                    v[k * n + j] -= g * d[k];
                }
            }
        }
        for k in 0..=i {
            v[k * n + i + 1] = 0.0;
        }
    }
    for j in 0..n {
        d[j] = v[(n - 1) * n + j];
        v[(n - 1) * n + j] = 0.0;
    }
    v[(n - 1) * n + n - 1] = 1.0;
    e[0] = 0.0;
}

/// Implicit QL with shifts (tql2) on the tridiagonal (d, e); `w` holds Q's columns as rows
/// and receives the eigenvectors likewise. Eigenvalues land in `d` (unsorted).
fn ql_implicit(w: &mut [f64], n: usize, d: &mut [f64], e: &mut [f64]) -> Result<()> {
    for i in 1..n {
        e[i - 1] = e[i];
    }
    e[n - 1] = 0.0;
    let (mut f, mut tst1) = (0.0f64, 0.0f64);
    let eps = f64::EPSILON;
    for l in 0..n {
        tst1 = tst1.max(d[l].abs() + e[l].abs());
        let mut m = l;
        while m < n - 1 && e[m].abs() > eps * tst1 {
            m += 1;
        }
        if m > l {
            let mut iterations = 0;
            loop {
                iterations += 1;
                if iterations > 100 {
                    bail!("eigen: the QL iteration did not converge");
                }
                let g = d[l];
                let mut p = (d[l + 1] - g) / (2.0 * e[l]);
                let mut r = p.hypot(1.0);
                if p < 0.0 {
                    r = -r;
                }
                d[l] = e[l] / (p + r);
                d[l + 1] = e[l] * (p + r);
                let dl1 = d[l + 1];
                let h = g - d[l];
                for di in d[l + 2..].iter_mut() {
                    *di -= h;
                }
                f += h;
                p = d[m];
                let (mut c, mut c2, mut c3) = (1.0f64, 1.0f64, 1.0f64);
                let el1 = e[l + 1];
                let (mut s, mut s2) = (0.0f64, 0.0f64);
                for i in (l..m).rev() {
                    c3 = c2;
                    c2 = c;
                    s2 = s;
                    let g = c * e[i];
                    let h = c * p;
                    let r = p.hypot(e[i]);
                    e[i + 1] = s * r;
                    s = e[i] / r;
                    c = p / r;
                    p = c * d[i] - s * g;
                    d[i + 1] = h + s * (c * g + s * d[i]);
                    let (lo, hi) = w.split_at_mut((i + 1) * n);
                    let (wi, wi1) = (&mut lo[i * n..], &mut hi[..n]);
                    for (a, b) in wi.iter_mut().zip(wi1.iter_mut()) {
                        let h = *b;
                        *b = s * *a + c * h;
                        *a = c * *a - s * h;
                    }
                }
                p = -s * s2 * c3 * el1 * e[l] / dl1;
                e[l] = s * p;
                d[l] = c * p;
                if e[l].abs() <= eps * tst1 {
                    break;
                }
            }
        }
        d[l] += f;
        e[l] = 0.0;
    }
    Ok(())
}

/// V diag(f(λ)) Vᵀ for the decomposition `e` of an n×n matrix.
pub fn apply(e: &Eigen, f: impl Fn(f64) -> f64) -> Vec<f64> {
    let n = e.values.len();
    let fl: Vec<f64> = e.values.iter().map(|&l| f(l)).collect();
    let mut out = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n)
                .map(|k| e.vectors[k * n + i] * fl[k] * e.vectors[k * n + j])
                .sum();
        }
    }
    out
}

/// The symmetric square root of a positive semi-definite matrix. Eigenvalues within rounding of
/// zero (below n·ε·max|λ|: a singular covariance's zeros come out as ±1e-16-sized values) count
/// as zero, so they add nothing rather than their square root (≈ 1e-8).
pub fn sqrt_psd(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let e = symmetric(a, n)?;
    let floor = e.values.iter().fold(0.0f64, |m, l| m.max(l.abs())) * n as f64 * f64::EPSILON;
    Ok(apply(&e, |l| if l > floor { l.sqrt() } else { 0.0 }))
}

/// Row-major product of two n×n matrices.
pub fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                out[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniform numbers in [-1, 1) from a fixed LCG.
    fn numbers(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn two_by_two_closed_form() {
        // [[2, 1], [1, 2]]: λ = 1 (v ∝ (1, −1)), 3 (v ∝ (1, 1)).
        let e = symmetric(&[2.0, 1.0, 1.0, 2.0], 2).unwrap();
        assert!((e.values[0] - 1.0).abs() < 1e-14 && (e.values[1] - 3.0).abs() < 1e-14);
        let h = 0.5f64.sqrt();
        assert!((e.vectors[0].abs() - h).abs() < 1e-14);
        assert!((e.vectors[0] + e.vectors[1]).abs() < 1e-14);
        assert!((e.vectors[2] - e.vectors[3]).abs() < 1e-14);
    }

    /// A random covariance with a zero block (as MNIST's constant border): V Λ Vᵀ = A,
    /// Vᵀ V = I, λ ≥ 0 with the zero block's λ = 0 to rounding.
    #[test]
    fn reconstructs_a_rank_deficient_covariance() {
        let (n, r) = (40, 25);
        let l = numbers(n * r, 3);
        let mut a = vec![0.0; n * n];
        for i in 5..n {
            for j in 5..n {
                a[i * n + j] = (0..r).map(|k| l[i * r + k] * l[j * r + k]).sum();
            }
        }
        let e = symmetric(&a, n).unwrap();
        let scale = e.values[n - 1];
        for (i, pair) in e.values.windows(2).enumerate() {
            assert!(pair[0] <= pair[1], "order at {i}");
        }
        // 15 zero eigenvalues (5 zero rows + rank 25 of 35).
        assert!(e.values[..15].iter().all(|v| v.abs() < 1e-12 * scale));
        assert!(e.values[15] > 1e-6 * scale);
        for i in 0..n {
            for j in 0..n {
                let rec: f64 = (0..n)
                    .map(|k| e.values[k] * e.vectors[k * n + i] * e.vectors[k * n + j])
                    .sum();
                assert!((rec - a[i * n + j]).abs() < 1e-11 * scale, "A[{i},{j}]");
                let dot: f64 = (0..n)
                    .map(|k| e.vectors[i * n + k] * e.vectors[j * n + k])
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((dot - want).abs() < 1e-12, "V row {i}·{j}");
            }
        }
        assert!(symmetric(&[1.0, f64::NAN, 0.0, 1.0], 2).is_err());
        assert!(symmetric(&[1.0; 3], 2).is_err());
    }

    #[test]
    fn square_root_squares_back() {
        // B Bᵀ + n·I with B pseudo-random: symmetric positive definite.
        let n = 30;
        let b: Vec<f64> = (0..n * n)
            .map(|i| tweedie_core::noise::gaussian_f64(9, 0, 0, i as u64))
            .collect();
        let mut bt = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                bt[j * n + i] = b[i * n + j];
            }
        }
        let mut a = matmul(&b, &bt, n);
        for i in 0..n {
            a[i * n + i] += n as f64;
        }
        let r = sqrt_psd(&a, n).unwrap();
        let rr = matmul(&r, &r, n);
        let err = a
            .iter()
            .zip(&rr)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-9, "{err}");
        assert!(apply(&symmetric(&a, n).unwrap(), |l| l)
            .iter()
            .zip(&a)
            .all(|(x, y)| (x - y).abs() < 1e-10));
        // A singular PSD matrix: [[1, 1], [1, 1]] = 2·uuᵀ, sqrt = √2·uuᵀ = [[1,1],[1,1]]/√2.
        let s = sqrt_psd(&[1.0, 1.0, 1.0, 1.0], 2).unwrap();
        for v in s {
            assert!((v - 0.5f64.sqrt()).abs() < 1e-12, "{v}");
        }
    }
}
