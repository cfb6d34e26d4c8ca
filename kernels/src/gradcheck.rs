//! Test helpers for the backward kernels: random data, central finite differences of an f64
//! forward, and a gradient comparison scaled by the largest reference component.

/// Deterministic pseudo-random values in [−1, 1) (murmur3's finaliser of (seed, i), so
/// different seeds give unrelated sequences).
pub fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let mut v = (i as u32) ^ seed.wrapping_mul(0x9E37_79B9).rotate_left(16);
            v = v.wrapping_add(seed.wrapping_mul(0x85EB_CA6B));
            v ^= v >> 16;
            v = v.wrapping_mul(0x85EB_CA6B);
            v ^= v >> 13;
            v = v.wrapping_mul(0xC2B2_AE35);
            v ^= v >> 16;
            (v >> 8) as f32 / 8388608.0 - 1.0
        })
        .collect()
}

/// Widens to f64.
pub fn wide(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Central differences ∂f/∂x_i = (f(x + h e_i) − f(x − h e_i)) / 2h of an f64 function; the
/// truncation error is O(h²·f''') and the rounding error O(1e-16/h), both far below f32's.
pub fn fd_grad(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            xp[i] = x[i] + h;
            let up = f(&xp);
            xp[i] = x[i] - h;
            let down = f(&xp);
            xp[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// Σ r·y: the random linear functional whose gradient with respect to y is r.
pub fn dot64(r: &[f32], y: &[f64]) -> f64 {
    assert_eq!(r.len(), y.len());
    r.iter().zip(y).map(|(&a, b)| a as f64 * b).sum()
}

/// max |got − want| ≤ rtol·max |want| (+ a tiny floor for all-zero gradients).
pub fn assert_grad(got: &[f32], want: &[f64], rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&g, w)| m.max((g as f64 - w).abs()));
    assert!(
        err <= rtol * scale + 1e-12,
        "{what}: max error {err:e} vs largest gradient {scale:e}"
    );
}
