//! Forward operators A of linear inverse problems y = A x + e (spec §10).
//!
//! SKELETON: the trait is fixed by the coordinator; implementations are filled in by the
//! operators work.

use crate::Error;

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
}
