//! Eigen-decomposition of a small symmetric matrix in f64 by the cyclic Jacobi method, and
//! the square root of a positive semi-definite matrix built on it (the Fréchet distance's
//! matrix square root). Plain loops: the matrices here are at most a few hundred wide.

use anyhow::{bail, Result};

/// Sweeps before giving up (Jacobi converges quadratically: ~10 sweeps for m = 128).
const MAX_SWEEPS: usize = 100;

/// Eigenvalues and orthonormal eigenvectors of a symmetric matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Eigen {
    /// The size m.
    pub m: usize,
    /// The m eigenvalues, in no particular order.
    pub values: Vec<f64>,
    /// Row-major m×m; column j is the eigenvector of `values[j]`.
    pub vectors: Vec<f64>,
}

/// The eigen-decomposition of the symmetric row-major m×m matrix `a` (only symmetric input is
/// meaningful; the lower triangle is taken as given). Errors on a wrong length, a non-finite
/// entry or no convergence.
pub fn eigen(a: &[f64], m: usize) -> Result<Eigen> {
    if a.len() != m * m {
        bail!("eigen: {} entries for a {m}x{m} matrix", a.len());
    }
    if a.iter().any(|v| !v.is_finite()) {
        bail!("eigen: non-finite matrix entry");
    }
    let mut a = a.to_vec();
    let mut v = vec![0.0f64; m * m];
    for i in 0..m {
        v[i * m + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum();
    for _ in 0..MAX_SWEEPS {
        let off: f64 = (0..m)
            .flat_map(|p| (p + 1..m).map(move |q| (p, q)))
            .map(|(p, q)| a[p * m + q] * a[p * m + q])
            .sum();
        if off <= scale * 1e-30 || off == 0.0 {
            let values = (0..m).map(|i| a[i * m + i]).collect();
            return Ok(Eigen {
                m,
                values,
                vectors: v,
            });
        }
        for p in 0..m {
            for q in p + 1..m {
                rotate(&mut a, &mut v, m, p, q);
            }
        }
    }
    bail!("eigen: Jacobi iteration did not converge in {MAX_SWEEPS} sweeps")
}

/// One Jacobi rotation A ← Pᵀ A P, V ← V P that zeroes a[p][q] (Numerical Recipes §11.1:
/// P has c on (p,p), (q,q), s on (p,q) and −s on (q,p)).
fn rotate(a: &mut [f64], v: &mut [f64], m: usize, p: usize, q: usize) {
    let apq = a[p * m + q];
    if apq == 0.0 {
        return;
    }
    let theta = (a[q * m + q] - a[p * m + p]) / (2.0 * apq);
    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
    let c = 1.0 / (t * t + 1.0).sqrt();
    let s = t * c;
    for k in 0..m {
        let (kp, kq) = (a[k * m + p], a[k * m + q]);
        a[k * m + p] = c * kp - s * kq;
        a[k * m + q] = s * kp + c * kq;
    }
    for k in 0..m {
        let (pk, qk) = (a[p * m + k], a[q * m + k]);
        a[p * m + k] = c * pk - s * qk;
        a[q * m + k] = s * pk + c * qk;
    }
    a[p * m + q] = 0.0;
    a[q * m + p] = 0.0;
    for k in 0..m {
        let (kp, kq) = (v[k * m + p], v[k * m + q]);
        v[k * m + p] = c * kp - s * kq;
        v[k * m + q] = s * kp + c * kq;
    }
}

/// V diag(f(λ)) Vᵀ for the decomposition `e`.
pub fn apply(e: &Eigen, f: impl Fn(f64) -> f64) -> Vec<f64> {
    let m = e.m;
    let fl: Vec<f64> = e.values.iter().map(|&l| f(l)).collect();
    let mut out = vec![0.0f64; m * m];
    for i in 0..m {
        for j in 0..m {
            out[i * m + j] = (0..m)
                .map(|k| e.vectors[i * m + k] * fl[k] * e.vectors[j * m + k])
                .sum();
        }
    }
    out
}

/// The symmetric square root of a positive semi-definite matrix; eigenvalues below zero
/// (rounding of a singular covariance) count as zero.
pub fn sqrt_psd(a: &[f64], m: usize) -> Result<Vec<f64>> {
    Ok(apply(&eigen(a, m)?, |l| l.max(0.0).sqrt()))
}

/// Row-major product of two m×m matrices.
pub fn matmul(a: &[f64], b: &[f64], m: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; m * m];
    for i in 0..m {
        for k in 0..m {
            let aik = a[i * m + k];
            for j in 0..m {
                out[i * m + j] += aik * b[k * m + j];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A symmetric positive definite m×m matrix: B Bᵀ + m·I with B pseudo-random.
    fn spd(m: usize, seed: u64) -> Vec<f64> {
        let b: Vec<f64> = (0..m * m)
            .map(|i| tweedie_core::noise::gaussian_f64(seed, 0, 0, i as u64))
            .collect();
        let mut bt = vec![0.0; m * m];
        for i in 0..m {
            for j in 0..m {
                bt[j * m + i] = b[i * m + j];
            }
        }
        let mut a = matmul(&b, &bt, m);
        for i in 0..m {
            a[i * m + i] += m as f64;
        }
        a
    }

    #[test]
    fn eigenvalues_of_a_known_matrix() {
        // [[2, 1], [1, 2]]: eigenvalues 1 and 3, eigenvectors (1, ∓1)/√2.
        let e = eigen(&[2.0, 1.0, 1.0, 2.0], 2).unwrap();
        let mut l = e.values.clone();
        l.sort_by(f64::total_cmp);
        assert!(
            (l[0] - 1.0).abs() < 1e-14 && (l[1] - 3.0).abs() < 1e-14,
            "{l:?}"
        );
        // Diagonal input needs no rotation.
        let d = eigen(&[5.0, 0.0, 0.0, -1.0], 2).unwrap();
        assert_eq!(d.values, vec![5.0, -1.0]);
    }

    #[test]
    fn decomposition_reconstructs_and_is_orthonormal() {
        let m = 40;
        let a = spd(m, 3);
        let e = eigen(&a, m).unwrap();
        let back = apply(&e, |l| l);
        let err = a
            .iter()
            .zip(&back)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-10, "reconstruction error {err}");
        let vtv = {
            let mut vt = vec![0.0; m * m];
            for i in 0..m {
                for j in 0..m {
                    vt[j * m + i] = e.vectors[i * m + j];
                }
            }
            matmul(&vt, &e.vectors, m)
        };
        for i in 0..m {
            for j in 0..m {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((vtv[i * m + j] - want).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn square_root_squares_back() {
        let m = 30;
        let a = spd(m, 9);
        let r = sqrt_psd(&a, m).unwrap();
        let rr = matmul(&r, &r, m);
        let err = a
            .iter()
            .zip(&rr)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-9, "{err}");
        // A singular PSD matrix: [[1, 1], [1, 1]] = 2·uuᵀ, sqrt = √2·uuᵀ = [[1,1],[1,1]]/√2.
        let s = sqrt_psd(&[1.0, 1.0, 1.0, 1.0], 2).unwrap();
        for v in s {
            assert!((v - 0.5f64.sqrt()).abs() < 1e-12, "{v}");
        }
        assert!(eigen(&[1.0, f64::NAN, f64::NAN, 1.0], 2).is_err());
        assert!(eigen(&[1.0], 2).is_err());
    }
}
