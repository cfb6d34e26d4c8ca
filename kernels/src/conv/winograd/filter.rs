//! The filter transform U = G·g·Gᵀ of the 3 × 3 weights and its adjoint (the weight
//! gradient's dW = Gᵀ·dU·G), for F(2 × 2, 3 × 3) (n = 4) and F(4 × 4, 3 × 3) (n = 6).

use core::array::from_fn;

/// G·(a, b, c) for one column or row of a 3 × 3 filter: with F(2 × 2),
/// G = [1 0 0; ½ ½ ½; ½ −½ ½; 0 0 1]; with F(4 × 4),
/// G = [¼ 0 0; −⅙ −⅙ −⅙; −⅙ ⅙ −⅙; 1/24 1/12 ⅙; 1/24 −1/12 ⅙; 0 0 1].
pub(super) fn g_col<const N: usize>(a: f32, b: f32, c: f32) -> [f32; N] {
    let mut y = [0.0; N];
    if N == 4 {
        (y[0], y[1], y[2], y[3]) = (a, 0.5 * (a + b + c), 0.5 * (a - b + c), c);
    } else {
        // Products with the reciprocals, not divisions (done for every weight at every step).
        let (sixth, a24) = (1.0 / 6.0, 1.0 / 24.0);
        let (e, o) = (a + 4.0 * c, 2.0 * b);
        y[0] = 0.25 * a;
        y[1] = -(a + b + c) * sixth;
        y[2] = -(a - b + c) * sixth;
        y[3] = (e + o) * a24;
        y[4] = (e - o) * a24;
        y[5] = c;
    }
    y
}

/// Gᵀ·d for one column or row d of an n × n transformed gradient: the adjoint of [`g_col`].
fn g_col_adjoint<const N: usize>(d: [f32; N]) -> [f32; 3] {
    if N == 4 {
        let (a, b, c, e) = (d[0], d[1], d[2], d[3]);
        [a + 0.5 * (b + c), 0.5 * (b - c), 0.5 * (b + c) + e]
    } else {
        let (s, t) = (d[1] + d[2], d[3] + d[4]);
        let (u, v) = (d[1] - d[2], d[3] - d[4]);
        let (sixth, a12, a24) = (1.0 / 6.0, 1.0 / 12.0, 1.0 / 24.0);
        [
            0.25 * d[0] - s * sixth + t * a24,
            v * a12 - u * sixth,
            (t - s) * sixth + d[5],
        ]
    }
}

/// G·g·Gᵀ for a 3 × 3 filter g (row-major).
pub(super) fn filter_transform<const N: usize>(g: &[f32]) -> [[f32; N]; N] {
    // Columns of G·g (n values each), then each row of G·g times Gᵀ.
    let c: [[f32; N]; 3] = from_fn(|j| g_col::<N>(g[j], g[3 + j], g[6 + j]));
    from_fn(|i| g_col::<N>(c[0][i], c[1][i], c[2][i]))
}

/// Gᵀ·D·G for an n × n D: the adjoint of [`filter_transform`].
pub(super) fn filter_transform_adjoint<const N: usize>(d: &[[f32; N]; N]) -> [f32; 9] {
    let c: [[f32; 3]; N] = from_fn(|i| g_col_adjoint::<N>(d[i]));
    let mut g = [0f32; 9];
    for j in 0..3 {
        let col = g_col_adjoint::<N>(from_fn(|i| c[i][j]));
        for (i, v) in col.iter().enumerate() {
            g[3 * i + j] = *v;
        }
    }
    g
}
