//! The posterior of x ~ N(μ, Σ) given y = A x + σ_y·n, n ~ N(0, I): its mean
//!
//! x̂ = μ + Σ Aᵀ (A Σ Aᵀ + σ_y² I)⁻¹ (y − A μ),
//!
//! the MMSE estimate under the Gaussian prior and the best linear estimate for any prior with
//! that mean and covariance, and its per-element variance diag(Σ − Σ Aᵀ (A Σ Aᵀ + σ_y² I)⁻¹ A Σ).
//! A is taken from the operator column by column (A e_j) and kept as sparse rows; rows that
//! are identically zero (the missing pixels of inpainting) are dropped, because their y
//! entries are pure noise independent of x. The m×m system (m = the rows that remain:
//! observed pixels, or the low-resolution pixels of SR) is solved by Cholesky.

use anyhow::{bail, Result};
use tweedie_core::ForwardOperator;

use super::cholesky;
use super::gaussian_fit::GaussianFit;

/// The non-zero rows of a linear operator, each as (column, value) pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseRows {
    /// Length of x.
    pub input_len: usize,
    /// Row r of A as (column, A[r, column]) with non-zero values.
    pub rows: Vec<Vec<(usize, f64)>>,
    /// For each kept row, its index in y.
    pub y_index: Vec<usize>,
}

impl SparseRows {
    /// The rows of a dense row-major `m × n` matrix (zero rows dropped).
    pub fn from_dense(a: &[f64], m: usize, n: usize) -> Result<SparseRows> {
        if a.len() != m * n {
            bail!("dense matrix: {} entries for {m}x{n}", a.len());
        }
        let mut out = SparseRows {
            input_len: n,
            rows: Vec::new(),
            y_index: Vec::new(),
        };
        for (r, row) in a.chunks_exact(n).enumerate() {
            let nz: Vec<(usize, f64)> = row
                .iter()
                .enumerate()
                .filter(|(_, &v)| v != 0.0)
                .map(|(j, &v)| (j, v))
                .collect();
            if !nz.is_empty() {
                out.rows.push(nz);
                out.y_index.push(r);
            }
        }
        Ok(out)
    }

    /// The matrix of `op`, read off its columns A e_j (exactly what the sampler applies).
    pub fn of_operator<A: ForwardOperator + ?Sized>(op: &A) -> Result<SparseRows> {
        let (n, m) = (op.input_len(), op.output_len());
        let mut e = vec![0.0f32; n];
        let mut col = vec![0.0f32; m];
        let mut scratch = vec![0.0f32; op.scratch_len()];
        let mut dense = vec![0.0f64; m * n];
        for j in 0..n {
            e[j] = 1.0;
            op.forward(&e, &mut col, &mut scratch)
                .map_err(|err| anyhow::anyhow!("operator column {j}: {err}"))?;
            e[j] = 0.0;
            for (r, &v) in col.iter().enumerate() {
                dense[r * n + j] = f64::from(v);
            }
        }
        SparseRows::from_dense(&dense, m, n)
    }

    /// (A v)_r for kept row r.
    fn apply_row(&self, r: usize, v: &[f64]) -> f64 {
        self.rows[r].iter().map(|&(j, a)| a * v[j]).sum()
    }
}

/// B = A Σ (m × n, the kept rows) and the Cholesky factor of S = A Σ Aᵀ + σ_y² I (m × m).
fn gain_parts(prior: &GaussianFit, a: &SparseRows, sigma_y: f64) -> Result<(Vec<f64>, Vec<f64>)> {
    let n = prior.dim;
    if a.input_len != n {
        bail!(
            "operator acts on {} elements, the prior on {n}",
            a.input_len
        );
    }
    let m = a.rows.len();
    // Row r of B is Σ_j A[r, j] Σ[j, :] (Σ symmetric).
    let mut b = vec![0.0f64; m * n];
    for (r, brow) in b.chunks_exact_mut(n).enumerate() {
        for &(j, v) in &a.rows[r] {
            for (o, &s) in brow.iter_mut().zip(&prior.cov[j * n..(j + 1) * n]) {
                *o += v * s;
            }
        }
    }
    let mut s = vec![0.0f64; m * m];
    for r in 0..m {
        for q in 0..m {
            s[r * m + q] = a.apply_row(q, &b[r * n..(r + 1) * n]);
        }
        s[r * m + r] += sigma_y * sigma_y;
    }
    Ok((b, cholesky::factor(&s, m)?))
}

/// x̂ = μ + Σ Aᵀ (A Σ Aᵀ + σ_y² I)⁻¹ (y − A μ) for the measurement `y` (all of y; the entries
/// of dropped rows are ignored).
pub fn posterior_mean(
    prior: &GaussianFit,
    a: &SparseRows,
    y: &[f32],
    sigma_y: f64,
) -> Result<Vec<f64>> {
    if let Some(&last) = a.y_index.last() {
        if last >= y.len() {
            bail!("y has {} entries, the operator {}", y.len(), last + 1);
        }
    }
    let (b, l) = gain_parts(prior, a, sigma_y)?;
    let (n, m) = (prior.dim, a.rows.len());
    let residual: Vec<f64> = (0..m)
        .map(|r| f64::from(y[a.y_index[r]]) - a.apply_row(r, &prior.mean))
        .collect();
    let w = cholesky::solve(&l, m, &residual);
    // x̂ = μ + Bᵀ w.
    let mut x = prior.mean.clone();
    for (brow, &wr) in b.chunks_exact(n).zip(&w) {
        for (o, &v) in x.iter_mut().zip(brow) {
            *o += v * wr;
        }
    }
    Ok(x)
}

/// The posterior's per-element variance, diag(Σ − Σ Aᵀ (A Σ Aᵀ + σ_y² I)⁻¹ A Σ): with
/// S = L Lᵀ and Z = L⁻¹ B, element i is Σ_ii − Σ_r Z[r, i]² (independent of y).
pub fn posterior_variance(prior: &GaussianFit, a: &SparseRows, sigma_y: f64) -> Result<Vec<f64>> {
    let (mut z, l) = gain_parts(prior, a, sigma_y)?;
    let (n, m) = (prior.dim, a.rows.len());
    // Forward substitution on all columns at once, row by row.
    for r in 0..m {
        let (done, rest) = z.split_at_mut(r * n);
        let row = &mut rest[..n];
        for (k, zk) in done.chunks_exact(n).enumerate() {
            let f = l[r * m + k];
            for (o, &v) in row.iter_mut().zip(zk) {
                *o -= f * v;
            }
        }
        let d = l[r * m + r];
        row.iter_mut().for_each(|v| *v /= d);
    }
    let mut var: Vec<f64> = (0..n).map(|i| prior.cov[i * n + i]).collect();
    for zr in z.chunks_exact(n) {
        for (o, &v) in var.iter_mut().zip(zr) {
            *o -= v * v;
        }
    }
    // Rounding can leave −1e−17 where the variance is 0.
    Ok(var.into_iter().map(|v| v.max(0.0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tweedie_core::operator::{fill_random_mask, Inpainting, SuperResolution4};

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

    /// Solves M x = r by Gaussian elimination with partial pivoting (dense, for checking).
    fn gauss_solve(mut mat: Vec<f64>, mut r: Vec<f64>, n: usize) -> Vec<f64> {
        for col in 0..n {
            let p = (col..n)
                .max_by(|&i, &j| mat[i * n + col].abs().total_cmp(&mat[j * n + col].abs()))
                .unwrap();
            for k in 0..n {
                mat.swap(col * n + k, p * n + k);
            }
            r.swap(col, p);
            for i in col + 1..n {
                let f = mat[i * n + col] / mat[col * n + col];
                for k in col..n {
                    mat[i * n + k] -= f * mat[col * n + k];
                }
                r[i] -= f * r[col];
            }
        }
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|k| mat[i * n + k] * x[k]).sum();
            x[i] = (r[i] - s) / mat[i * n + i];
        }
        x
    }

    fn inverse(mat: &[f64], n: usize) -> Vec<f64> {
        let mut inv = vec![0.0; n * n];
        for j in 0..n {
            let mut e = vec![0.0; n];
            e[j] = 1.0;
            for (i, v) in gauss_solve(mat.to_vec(), e, n).into_iter().enumerate() {
                inv[i * n + j] = v;
            }
        }
        inv
    }

    #[test]
    fn matches_the_information_form_on_a_dense_problem() {
        // n = 6, m = 4: Σ = L Lᵀ + 0.1 I, a random dense A with one zero row.
        let (n, m, sy) = (6, 4, 0.3);
        let l = numbers(n * n, 1);
        let mut cov = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..n {
                cov[i * n + j] = (0..n).map(|k| l[i * n + k] * l[j * n + k]).sum::<f64>()
                    + if i == j { 0.1 } else { 0.0 };
            }
        }
        let prior = GaussianFit {
            dim: n,
            mean: numbers(n, 2),
            cov,
            count: 1,
        };
        let mut a = numbers(m * n, 3);
        a[2 * n..3 * n].fill(0.0);
        let y: Vec<f32> = numbers(m, 4).iter().map(|&v| v as f32).collect();
        let rows = SparseRows::from_dense(&a, m, n).unwrap();
        assert_eq!(rows.y_index, vec![0, 1, 3]);
        let got = posterior_mean(&prior, &rows, &y, sy).unwrap();
        // (Σ⁻¹ + AᵀA/σ²) x = Σ⁻¹ μ + Aᵀ y / σ².
        let p = inverse(&prior.cov, n);
        let mut lhs = p.clone();
        let mut rhs: Vec<f64> = (0..n)
            .map(|i| (0..n).map(|j| p[i * n + j] * prior.mean[j]).sum())
            .collect();
        for i in 0..n {
            for j in 0..n {
                lhs[i * n + j] +=
                    (0..m).map(|r| a[r * n + i] * a[r * n + j]).sum::<f64>() / (sy * sy);
            }
            rhs[i] += (0..m).map(|r| a[r * n + i] * f64::from(y[r])).sum::<f64>() / (sy * sy);
        }
        let cov_post = inverse(&lhs, n);
        let want = gauss_solve(lhs, rhs, n);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-10, "{got:?} vs {want:?}");
        }
        // The posterior covariance is (Σ⁻¹ + AᵀA/σ²)⁻¹.
        let var = posterior_variance(&prior, &rows, sy).unwrap();
        for (i, v) in var.iter().enumerate() {
            assert!((v - cov_post[i * n + i]).abs() < 1e-10, "variance {i}");
        }
    }

    #[test]
    fn isotropic_prior_with_a_mask_is_a_per_pixel_shrinkage() {
        // Σ = s² I, A = mask: x̂ = μ + s²/(s² + σ_y²) Aᵀ (y − A μ).
        let (c, h, w, s2, sy) = (2, 5, 4, 0.4, 0.1);
        let n = c * h * w;
        let mut mask = vec![0.0f32; h * w];
        fill_random_mask(&mut mask, h, w, 0.6, 7).unwrap();
        let op = Inpainting::new(c, h, w, &mask).unwrap();
        let mut cov = vec![0.0; n * n];
        for i in 0..n {
            cov[i * n + i] = s2;
        }
        let prior = GaussianFit {
            dim: n,
            mean: numbers(n, 5),
            cov,
            count: 1,
        };
        let y: Vec<f32> = numbers(n, 6).iter().map(|&v| v as f32).collect();
        let rows = SparseRows::of_operator(&op).unwrap();
        assert_eq!(rows.rows.len(), c * op.observed());
        let got = posterior_mean(&prior, &rows, &y, sy).unwrap();
        let gain = s2 / (s2 + sy * sy);
        for i in 0..n {
            let mi = f64::from(mask[i % (h * w)]);
            let want = prior.mean[i] + gain * mi * (f64::from(y[i]) - mi * prior.mean[i]);
            assert!((got[i] - want).abs() < 1e-12, "pixel {i}");
        }
        // Variance: s² σ_y²/(s² + σ_y²) where observed, s² where missing.
        let var = posterior_variance(&prior, &rows, sy).unwrap();
        for (i, v) in var.iter().enumerate() {
            let want = if mask[i % (h * w)] == 1.0 {
                s2 * sy * sy / (s2 + sy * sy)
            } else {
                s2
            };
            assert!((v - want).abs() < 1e-12, "variance {i}");
        }
    }

    #[test]
    fn operator_rows_reproduce_the_operator() {
        let op = SuperResolution4::new(1, 8, 8).unwrap();
        let rows = SparseRows::of_operator(&op).unwrap();
        assert_eq!(rows.rows.len(), 4);
        let x: Vec<f32> = numbers(64, 9).iter().map(|&v| v as f32).collect();
        let mut y = vec![0.0f32; 4];
        op.forward(&x, &mut y, &mut vec![0.0; op.scratch_len()])
            .unwrap();
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        for (r, &yr) in y.iter().enumerate() {
            assert!((rows.apply_row(r, &x64) - f64::from(yr)).abs() < 1e-5);
        }
    }
}
