//! Quality evaluation of a model on MNIST (`host evaluate`, models/README.md):
//!
//! - [`nearest`]: the nearest training image (L2 in the model's data range) of each sample, for
//!   the 1-NN labelling and the memorisation check.
//! - [`gaussian_fit`]: the mean and covariance of a dataset in the model's data range, and
//!   the exact denoiser of that Gaussian (by [`eigen`], a symmetric eigendecomposition).
//! - [`gaussian_mmse`]: the posterior mean and variance under that Gaussian prior for a linear
//!   measurement (the best linear restoration baseline), with [`cholesky`] for the m×m solve.
//! - [`posterior`]: the sampler against the exact Gaussian posterior (sampler or model?).
//! - [`restoration`]: one test digit through every method of the restoration table.
//! - [`stats`]: mean ± standard error and order statistics.

pub mod cholesky;
pub mod eigen;
pub mod gaussian_fit;
pub mod gaussian_mmse;
pub mod nearest;
pub mod posterior;
pub mod restoration;
pub mod stats;
