//! The parity criterion of formats.md §7: per sample, pass when
//! max |ours − ref| ≤ tol · max(1, max |ref|) (element-wise relative error is meaningless
//! near zero, so the bound scales with the sample's largest reference value).

use anyhow::{bail, Result};

/// Default tolerance for ADM in f32 (formats.md §7).
pub const TOL_ADM: f64 = 1e-4;
/// Default tolerance for NCSN++ in f32.
pub const TOL_NCSNPP: f64 = 2e-4;
/// Default tolerance with f16 weight storage.
pub const TOL_F16: f64 = 2e-3;

/// The comparison of one sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleParity {
    /// max |ours − ref| (infinite when either side is not finite).
    pub max_abs: f64,
    /// max |ref|.
    pub max_ref: f64,
    /// max_abs / max(1, max_ref): the number compared with the tolerance.
    pub rel: f64,
    /// rel ≤ tol.
    pub pass: bool,
}

/// Compares `ours` with `reference`, both `batch` equal-sized samples back to back.
pub fn compare(
    ours: &[f32],
    reference: &[f32],
    batch: usize,
    tol: f64,
) -> Result<Vec<SampleParity>> {
    if ours.len() != reference.len() {
        bail!(
            "parity: {} values against {} reference values",
            ours.len(),
            reference.len()
        );
    }
    if batch == 0 || !ours.len().is_multiple_of(batch) {
        bail!(
            "parity: {} values do not split into {batch} samples",
            ours.len()
        );
    }
    if !(tol >= 0.0 && tol.is_finite()) {
        bail!("parity: tolerance must be a non-negative number, got {tol}");
    }
    let per = ours.len() / batch;
    let samples = ours.chunks(per.max(1)).zip(reference.chunks(per.max(1)));
    Ok(samples.map(|(a, r)| sample(a, r, tol)).collect())
}

fn sample(ours: &[f32], reference: &[f32], tol: f64) -> SampleParity {
    let (mut max_abs, mut max_ref) = (0.0f64, 0.0f64);
    for (&a, &r) in ours.iter().zip(reference) {
        let d = (a as f64 - r as f64).abs();
        // NaN or ∞ on either side can never pass.
        max_abs = if d.is_finite() {
            max_abs.max(d)
        } else {
            f64::INFINITY
        };
        max_ref = max_ref.max((r as f64).abs());
    }
    let rel = max_abs / max_ref.max(1.0);
    SampleParity {
        max_abs,
        max_ref,
        rel,
        pass: rel <= tol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_scales_with_the_largest_reference_value() {
        // |ref| ≤ 1: the bound is absolute. 2^-14 ≈ 6.1e-5 passes 1e-4, 2^-13 ≈ 1.2e-4 fails
        // (powers of two keep the differences exact in f32).
        let r = [0.5f32, -0.25, 0.0, 1.0];
        let ok = compare(&[0.5 + 2f32.powi(-14), -0.25, 0.0, 1.0], &r, 1, 1e-4).unwrap()[0];
        assert!(ok.pass && ok.max_abs == 2f64.powi(-14) && ok.max_ref == 1.0);
        assert!(!compare(&[0.5 + 2f32.powi(-13), -0.25, 0.0, 1.0], &r, 1, 1e-4).unwrap()[0].pass);
        // max |ref| = 100: an error of 9e-3 is within 1e-4 · 100.
        let r = [100.0f32, 0.0];
        let s = compare(&[100.0, 0.009], &r, 1, 1e-4).unwrap()[0];
        assert!(s.pass && (s.rel - 9e-5).abs() < 1e-9);
        assert!(!compare(&[100.0, 0.011], &r, 1, 1e-4).unwrap()[0].pass);
    }

    #[test]
    fn samples_are_judged_separately() {
        let reference = [1.0f32, 1.0, 50.0, 50.0];
        let res = compare(&[1.0, 1.004, 50.0, 50.004], &reference, 2, 1e-4).unwrap();
        assert_eq!(
            res.iter().map(|s| s.pass).collect::<Vec<_>>(),
            vec![false, true]
        );
    }

    #[test]
    fn non_finite_values_fail_and_bad_arguments_error() {
        assert!(!compare(&[f32::NAN], &[0.0], 1, 1e-4).unwrap()[0].pass);
        assert!(!compare(&[0.0], &[f32::INFINITY], 1, 1e-4).unwrap()[0].pass);
        assert!(compare(&[0.0; 3], &[0.0; 4], 1, 1e-4).is_err());
        assert!(compare(&[0.0; 3], &[0.0; 3], 2, 1e-4).is_err());
        assert!(compare(&[0.0; 2], &[0.0; 2], 1, f64::NAN).is_err());
    }
}
