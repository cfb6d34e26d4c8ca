//! Solving a symmetric positive definite system A w = b by Cholesky, A = L Lᵀ, in f64.
//! The systems here are small (m ≤ a few hundred), so plain loops.

use anyhow::{bail, Result};

/// The lower Cholesky factor L (row-major m×m, upper part zero) of the SPD matrix `a`.
pub fn factor(a: &[f64], m: usize) -> Result<Vec<f64>> {
    if a.len() != m * m {
        bail!("cholesky: {} entries for a {m}x{m} matrix", a.len());
    }
    let mut l = vec![0.0f64; m * m];
    for i in 0..m {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|k| l[i * m + k] * l[j * m + k]).sum();
            let v = a[i * m + j] - dot;
            if i == j {
                if !(v > 0.0 && v.is_finite()) {
                    bail!("cholesky: matrix not positive definite (pivot {i} is {v})");
                }
                l[i * m + i] = v.sqrt();
            } else {
                l[i * m + j] = v / l[j * m + j];
            }
        }
    }
    Ok(l)
}

/// Solves L Lᵀ w = b for the factor `l` of [`factor`].
pub fn solve(l: &[f64], m: usize, b: &[f64]) -> Vec<f64> {
    let mut z = vec![0.0f64; m];
    for i in 0..m {
        let dot: f64 = (0..i).map(|k| l[i * m + k] * z[k]).sum();
        z[i] = (b[i] - dot) / l[i * m + i];
    }
    let mut w = vec![0.0f64; m];
    for i in (0..m).rev() {
        let dot: f64 = (i + 1..m).map(|k| l[k * m + i] * w[k]).sum();
        w[i] = (z[i] - dot) / l[i * m + i];
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_a_known_system() {
        // A = [[4, 2], [2, 3]], b = A·[1, -2] = [0, -4].
        let a = [4.0, 2.0, 2.0, 3.0];
        let l = factor(&a, 2).unwrap();
        assert_eq!(l[0], 2.0);
        assert_eq!(l[1], 0.0);
        let w = solve(&l, 2, &[0.0, -4.0]);
        assert!(
            (w[0] - 1.0).abs() < 1e-14 && (w[1] + 2.0).abs() < 1e-14,
            "{w:?}"
        );
    }

    #[test]
    fn refuses_indefinite_matrices() {
        assert!(factor(&[1.0, 2.0, 2.0, 1.0], 2).is_err());
        assert!(factor(&[1.0], 2).is_err());
    }
}
