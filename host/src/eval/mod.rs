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
//! - [`fid`]: Fréchet distance, Inception-score analogue and precision/recall in the feature
//!   space of the digit classifier, with [`eigen`] for the matrix square root;
//!   [`judge`]: the classifier and its MNIST reference statistics (one bundled file);
//!   [`digit_inputs`]: the sample folders, PNGs and safetensors it reads;
//!   [`fid_calibration`]: the noise floor and degradations of the calibration table.

pub mod cholesky;
pub mod digit_inputs;
pub mod eigen;
pub mod fid;
pub mod fid_calibration;
pub mod gaussian_fit;
pub mod gaussian_mmse;
pub mod judge;
pub mod nearest;
pub mod posterior;
pub mod restoration;
pub mod stats;
