//! Forward operators A of linear inverse problems y = A x + e (spec §10).
//!
//! Every operator acts on ONE chain: an image of C×H×W values, row-major NCHW without the batch
//! axis. Operators borrow their data (a mask) and own no buffers; `forward` and `adjoint` check
//! every length and return [`Error`] instead of panicking. `adjoint` is the exact transpose of
//! `forward` (what autograd gives the official code, spec §10.3), so ⟨A x, r⟩ = ⟨x, Aᵀ r⟩ up to
//! float rounding.
//!
//! - [`Identity`]: denoising, A = I.
//! - [`Inpainting`]: A x = mask ⊙ x with a caller-owned H×W mask shared by all channels
//!   (random masks from [`fill_random_mask`], spec §10.4).
//! - [`BoxInpainting`]: a missing rectangle, no mask buffer needed.
//! - [`SuperResolution4`]: the DPS/Shocher bicubic ×1/4 `Resizer` (spec §10.5).
//!
//! [`estimate_norm_sq`] checks an operator's [`ForwardOperator::norm_sq`] by power iteration.

mod inpaint;
mod resize;

pub use inpaint::{fill_random_mask, n_missing, BoxInpainting, Inpainting};
pub use resize::{reflect, sr4_taps, SuperResolution4, SR4_TAP_OFFSET};

use crate::error::check_len;
use crate::{noise, Error};

/// A linear forward operator acting on one chain (one image, C×H×W, row-major NCHW).
/// Operators own no buffers: callers pass `scratch` of at least [`ForwardOperator::scratch_len`].
pub trait ForwardOperator {
    /// Length of x (C·H·W).
    fn input_len(&self) -> usize;
    /// Length of y = A x.
    fn output_len(&self) -> usize;
    /// Scratch length that `forward` and `adjoint` need (0 if none).
    fn scratch_len(&self) -> usize;
    /// out = A x.
    fn forward(&self, x: &[f32], out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error>;
    /// out = Aᵀ r, the exact adjoint of `forward`.
    fn adjoint(&self, r: &[f32], out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error>;
    /// ‖A‖₂², the squared spectral norm (1 for inpainting, 1/16 for 4× SR).
    fn norm_sq(&self) -> f64;
    /// The three lengths at once (what each operator's `lens_for` gives for its shape).
    fn lens(&self) -> OperatorLens {
        OperatorLens {
            input: self.input_len(),
            output: self.output_len(),
            scratch: self.scratch_len(),
        }
    }
}

/// The buffer lengths of an operator on one chain: x, y = A x and the scratch of `forward` and
/// `adjoint`. Each operator's `lens_for(c, h, w)` is a `const fn`, so firmware can size static
/// buffers at compile time (e.g. with [`crate::sampler::conditional_scratch_len_for`]); for a
/// shape the operator's `new` accepts it equals [`ForwardOperator::lens`]. Products saturate
/// instead of overflowing: no real buffer has `usize::MAX` elements, so the length checks fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperatorLens {
    /// Length of x (C·H·W).
    pub input: usize,
    /// Length of y = A x.
    pub output: usize,
    /// Scratch of `forward` and `adjoint`.
    pub scratch: usize,
}

/// C·H·W without overflow (saturating; see [`OperatorLens`]).
const fn image_len(c: usize, h: usize, w: usize) -> usize {
    c.saturating_mul(h).saturating_mul(w)
}

/// The lengths of an operator that maps C×H×W images to themselves without scratch
/// (identity, inpainting).
const fn same_shape_lens(c: usize, h: usize, w: usize) -> OperatorLens {
    let n = image_len(c, h, w);
    OperatorLens {
        input: n,
        output: n,
        scratch: 0,
    }
}

/// An image shape C×H×W with every side ≥ 1 and C·H·W representable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    /// Channels C.
    pub c: usize,
    /// Height H (rows).
    pub h: usize,
    /// Width W (columns).
    pub w: usize,
}

impl ImageShape {
    /// Checks that every side is ≥ 1 and that C·H·W does not overflow.
    pub fn new(c: usize, h: usize, w: usize) -> Result<Self, Error> {
        if c == 0 || h == 0 || w == 0 {
            return Err(Error::Shape("image sides C, H, W must all be at least 1"));
        }
        c.checked_mul(h)
            .and_then(|ch| ch.checked_mul(w))
            .ok_or(Error::Shape("C·H·W overflows usize"))?;
        Ok(Self { c, h, w })
    }

    /// H·W, the number of pixel locations.
    pub fn plane(&self) -> usize {
        self.h * self.w
    }

    /// C·H·W.
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Always false: [`ImageShape::new`] refuses empty images.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Checks the three buffers of a `forward` (or, with the lengths swapped, an `adjoint`) call.
fn check_call(
    input: (&'static str, usize, usize),
    output: (&'static str, usize, usize),
    scratch_needed: usize,
    scratch_got: usize,
) -> Result<(), Error> {
    check_len(input.0, input.1, input.2)?;
    check_len(output.0, output.1, output.2)?;
    if scratch_got < scratch_needed {
        return Err(Error::LengthMismatch {
            what: "scratch (at least)",
            expected: scratch_needed,
            got: scratch_got,
        });
    }
    Ok(())
}

/// Checks the buffers of `op.forward(x, out, scratch)`.
fn check_forward<A: ForwardOperator + ?Sized>(
    op: &A,
    x: &[f32],
    out: &[f32],
    scratch: &[f32],
) -> Result<(), Error> {
    check_call(
        ("x", op.input_len(), x.len()),
        ("out (A x)", op.output_len(), out.len()),
        op.scratch_len(),
        scratch.len(),
    )
}

/// Checks the buffers of `op.adjoint(r, out, scratch)`.
fn check_adjoint<A: ForwardOperator + ?Sized>(
    op: &A,
    r: &[f32],
    out: &[f32],
    scratch: &[f32],
) -> Result<(), Error> {
    check_call(
        ("r", op.output_len(), r.len()),
        ("out (Aᵀ r)", op.input_len(), out.len()),
        op.scratch_len(),
        scratch.len(),
    )
}

/// Denoising: A = I on C×H×W images.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    shape: ImageShape,
}

impl Identity {
    /// The buffer lengths for C×H×W images (compile-time sizing).
    pub const fn lens_for(c: usize, h: usize, w: usize) -> OperatorLens {
        same_shape_lens(c, h, w)
    }

    /// The identity on C×H×W images.
    pub fn new(c: usize, h: usize, w: usize) -> Result<Self, Error> {
        Ok(Self {
            shape: ImageShape::new(c, h, w)?,
        })
    }
}

impl ForwardOperator for Identity {
    fn input_len(&self) -> usize {
        self.shape.len()
    }
    fn output_len(&self) -> usize {
        self.shape.len()
    }
    fn scratch_len(&self) -> usize {
        0
    }
    fn forward(&self, x: &[f32], out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error> {
        check_forward(self, x, out, scratch)?;
        out.copy_from_slice(x);
        Ok(())
    }
    fn adjoint(&self, r: &[f32], out: &mut [f32], scratch: &mut [f32]) -> Result<(), Error> {
        check_adjoint(self, r, out, scratch)?;
        out.copy_from_slice(r);
        Ok(())
    }
    fn norm_sq(&self) -> f64 {
        1.0
    }
}

/// Σ v², accumulated in f64.
fn sum_sq(v: &[f32]) -> f64 {
    v.iter().map(|&a| f64::from(a) * f64::from(a)).sum()
}

/// Estimates ‖A‖₂² = λ_max(AᵀA) by `iters` power iterations on AᵀA.
///
/// Buffers: `x` (input_len), `ax` (output_len), `scratch` (at least scratch_len). The start
/// vector is Gaussian, `noise::gaussian(seed, 0, 0, i)` (a diagnostic stream: chain 0,
/// counter 0 of the caller's seed). Each iteration normalises x, forms A x, takes the Rayleigh
/// quotient ‖A x‖² (the estimate) and sets x ← Aᵀ A x. Returns the last estimate (0 when A x
/// vanishes). The estimate never exceeds the true value (up to rounding) and converges at the
/// rate (λ₂/λ₁)^(2·iters) — slowly for low-pass operators on large images (4× SR at 16×16 has
/// λ₂ ≈ 0.991 λ₁), so use it as a check on small shapes, not to set step sizes.
pub fn estimate_norm_sq<A: ForwardOperator + ?Sized>(
    op: &A,
    x: &mut [f32],
    ax: &mut [f32],
    scratch: &mut [f32],
    iters: usize,
    seed: u64,
) -> Result<f64, Error> {
    check_forward(op, x, ax, scratch)?;
    if iters == 0 {
        return Err(Error::ZeroSteps);
    }
    noise::fill_gaussian(x, seed, 0, 0, 0);
    let mut estimate = 0.0;
    for _ in 0..iters {
        let norm = libm::sqrt(sum_sq(x));
        if norm == 0.0 || !norm.is_finite() {
            // x fell into the null space of A (or was zero): A x = 0 for this x.
            return Ok(estimate);
        }
        let inv = (1.0 / norm) as f32;
        x.iter_mut().for_each(|v| *v *= inv);
        op.forward(x, ax, scratch)?;
        estimate = sum_sq(ax);
        op.adjoint(ax, x, scratch)?;
    }
    Ok(estimate)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn const_lens_equal_the_operators_lengths() {
        let mask = [1.0f32; 20];
        let (c, h, w) = (3, 4, 5);
        let id = Identity::new(c, h, w).unwrap();
        assert_eq!(Identity::lens_for(c, h, w), id.lens());
        let inp = Inpainting::new(c, h, w, &mask).unwrap();
        assert_eq!(Inpainting::lens_for(c, h, w), inp.lens());
        let bx = BoxInpainting::new(c, h, w, (1, 1, 2, 2)).unwrap();
        assert_eq!(BoxInpainting::lens_for(c, h, w), bx.lens());
        let sr = SuperResolution4::new(2, 8, 12).unwrap();
        let lens = SuperResolution4::lens_for(2, 8, 12);
        assert_eq!(lens, sr.lens());
        assert_eq!((lens.input, lens.output, lens.scratch), (192, 12, 24));
        // Saturates instead of overflowing (a length no buffer can have).
        assert_eq!(Identity::lens_for(usize::MAX, 2, 2).input, usize::MAX);
    }

    /// ⟨a, b⟩ in f64.
    pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&p, &q)| f64::from(p) * f64::from(q))
            .sum()
    }

    /// Checks ⟨A x, r⟩ = ⟨x, Aᵀ r⟩ to `tol` relative on Gaussian x and r.
    pub(crate) fn assert_adjoint<A: ForwardOperator>(op: &A, seed: u64, tol: f64) {
        let mut x = vec![0.0f32; op.input_len()];
        let mut r = vec![0.0f32; op.output_len()];
        noise::fill_gaussian(&mut x, seed, 1, 0, 0);
        noise::fill_gaussian(&mut r, seed, 2, 0, 0);
        let mut ax = vec![0.0f32; op.output_len()];
        let mut atr = vec![0.0f32; op.input_len()];
        let mut scratch = vec![0.0f32; op.scratch_len()];
        op.forward(&x, &mut ax, &mut scratch).unwrap();
        op.adjoint(&r, &mut atr, &mut scratch).unwrap();
        let (lhs, rhs) = (dot(&ax, &r), dot(&x, &atr));
        // Relative to the scale of the products, since the inner product itself can be near 0.
        let scale = libm::sqrt(dot(&ax, &ax) * dot(&r, &r)).max(1e-30);
        assert!(
            (lhs - rhs).abs() <= tol * scale,
            "<Ax,r> = {lhs}, <x,A^T r> = {rhs}"
        );
    }

    /// Power-iteration estimate of ‖A‖² with fresh buffers.
    pub(crate) fn power_norm_sq<A: ForwardOperator>(op: &A, iters: usize) -> f64 {
        let mut x = vec![0.0f32; op.input_len()];
        let mut ax = vec![0.0f32; op.output_len()];
        let mut scratch = vec![0.0f32; op.scratch_len()];
        estimate_norm_sq(op, &mut x, &mut ax, &mut scratch, iters, 11).unwrap()
    }

    #[test]
    fn identity_is_its_own_adjoint_with_unit_norm() {
        let op = Identity::new(3, 5, 7).unwrap();
        assert_eq!(op.input_len(), 105);
        assert_adjoint(&op, 1, 1e-12);
        assert!((power_norm_sq(&op, 3) - 1.0).abs() < 1e-6);
        let x = [1.0f32, -2.0, 3.5];
        let mut out = [0.0f32; 3];
        Identity::new(1, 1, 3)
            .unwrap()
            .forward(&x, &mut out, &mut [])
            .unwrap();
        assert_eq!(out, x);
    }

    #[test]
    fn bad_shapes_and_lengths_are_typed_errors() {
        assert!(matches!(Identity::new(0, 4, 4), Err(Error::Shape(_))));
        assert!(matches!(
            Identity::new(usize::MAX, 2, 2),
            Err(Error::Shape(_))
        ));
        let op = Identity::new(1, 2, 2).unwrap();
        let mut out = [0.0f32; 4];
        assert_eq!(
            op.forward(&[0.0; 3], &mut out, &mut []),
            Err(Error::LengthMismatch {
                what: "x",
                expected: 4,
                got: 3
            })
        );
        let mut short = [0.0f32; 5];
        assert!(matches!(
            op.adjoint(&[0.0; 4], &mut short, &mut []),
            Err(Error::LengthMismatch {
                expected: 4,
                got: 5,
                ..
            })
        ));
        let (mut x, mut ax) = ([0.0f32; 4], [0.0f32; 4]);
        assert_eq!(
            estimate_norm_sq(&op, &mut x, &mut ax, &mut [], 0, 1),
            Err(Error::ZeroSteps)
        );
    }
}
