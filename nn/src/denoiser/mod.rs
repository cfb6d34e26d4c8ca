//! Denoisers for the sampler: a network (ADM or NCSN++) with its weights and parameterization,
//! or a closed-form Gaussian prior (isotropic, or full covariance by its eigendecomposition).
//!
//! A [`Model`] is resolved once (the command line does that from `--weights` and the metadata);
//! [`Model::make`] hands each worker thread its own `tweedie_core::Denoiser` (the network's
//! weights are shared, read-only).

pub mod full_gaussian;
pub mod gaussian;
pub mod gaussian_mixture;
pub mod ncsnpp;
pub mod network;
pub mod training_set;

use anyhow::{Context, Result};
use tweedie_core::tweedie::Parameterization;
use tweedie_core::Denoiser;

use crate::model::adm::AdmArch;
use crate::model::layers::{ConvPolicy, LayerForm};
use crate::model::ncsnpp::{NcsnppArch, NcsnppModel};
use crate::weights::meta::{DataRange, Kind};
use crate::weights::Weights;
use full_gaussian::{FullGaussian, FullGaussianDenoiser};
use gaussian::GaussianPrior;
use gaussian_mixture::{GaussianMixture, GaussianMixtureDenoiser};
use ncsnpp::NcsnppDenoiser;
use network::{AdmDenoiser, NoiseInputKind};
use training_set::{TrainingSet, TrainingSetDenoiser};

/// Where D comes from.
pub enum Source {
    /// The closed-form Gaussian prior.
    Gaussian(GaussianPrior),
    /// The closed-form denoiser of N(μ, V Λ Vᵀ) (a Gaussian fitted to data).
    FullGaussian(Box<FullGaussian>),
    /// The closed-form denoiser of a mixture of such Gaussians (one fitted per class).
    GaussianMixture(Box<GaussianMixture>),
    /// The exact denoiser of a training set's empirical law (uniform over its images).
    TrainingSet(Box<TrainingSet>),
    /// guided-diffusion's ADM U-Net.
    Adm {
        /// Architecture.
        arch: Box<AdmArch>,
        /// Weights.
        weights: Box<Weights>,
        /// Output → D.
        param: Parameterization,
        /// Noise input.
        noise_input: NoiseInputKind,
    },
    /// score_sde's NCSN++ (VE, score output, σ input, data in [0, 1]).
    Ncsnpp {
        /// Architecture.
        arch: Box<NcsnppArch>,
        /// Weights.
        weights: Box<Weights>,
    },
}

/// A resolved model: its scale, data range, trained noise range, image shape and source.
pub struct Model {
    /// VP or VE.
    pub kind: Kind,
    /// The data range images are mapped to.
    pub data_range: DataRange,
    /// (σ_min, σ_max) the network was trained on, if known (VP: the VP table).
    pub sigma_range: Option<(f64, f64)>,
    /// Channels.
    pub channels: usize,
    /// Image side.
    pub size: usize,
    /// The source of D.
    pub source: Source,
    /// What `--weights` said.
    pub label: String,
    /// A JSON description for run.json.
    pub description: serde_json::Value,
    /// How a network's CPU forward computes its 3×3 convolutions (`--conv`).
    pub conv: ConvPolicy,
}

/// formats.md §1: VP models work on [-1, 1], VE models on [0, 1].
pub fn default_range(kind: Kind) -> DataRange {
    match kind {
        Kind::Vp => DataRange::MinusOneOne,
        Kind::Ve => DataRange::ZeroOne,
    }
}

impl Model {
    /// Elements per chain (C·H·W).
    pub fn chain_len(&self) -> usize {
        self.channels * self.size * self.size
    }

    /// How to use `threads`: (parallel workers, threads inside each denoiser). The Gaussian
    /// prior parallelises over batches; a network parallelises inside its forward pass (one
    /// copy of the activations).
    pub fn split_threads(&self, threads: usize, batches: usize) -> (usize, usize) {
        match self.source {
            Source::Gaussian(_)
            | Source::FullGaussian(_)
            | Source::GaussianMixture(_)
            | Source::TrainingSet(_) => (threads.min(batches).max(1), 1),
            Source::Adm { .. } | Source::Ncsnpp { .. } => (1, threads.max(1)),
        }
    }

    /// A denoiser for one worker thread.
    pub fn make(&self, threads: usize) -> Box<dyn ModelDenoiser + '_> {
        match &self.source {
            Source::Gaussian(g) => Box::new(*g),
            Source::FullGaussian(g) => Box::new(FullGaussianDenoiser::new(g)),
            Source::GaussianMixture(g) => Box::new(GaussianMixtureDenoiser::new(g)),
            Source::TrainingSet(s) => Box::new(TrainingSetDenoiser::new(s)),
            Source::Adm {
                arch,
                weights,
                param,
                noise_input,
            } => Box::new(AdmDenoiser::new(
                arch,
                weights,
                *param,
                *noise_input,
                (threads, self.conv),
            )),
            // Checked at load: the model resolves (only threads = 0 could fail, excluded).
            Source::Ncsnpp { arch, weights } => {
                match NcsnppModel::with_policy(arch, weights, threads.max(1), self.conv) {
                    Ok(model) => Box::new(NcsnppDenoiser::new(model)),
                    Err(e) => Box::new(Unavailable(format!("{e:#}"))),
                }
            }
        }
    }

    /// The form of each 3×3 'same' convolution of a network's CPU forward under
    /// [`Model::conv`] (None for the closed-form denoisers).
    pub fn conv_forms(&self) -> Result<Option<Vec<LayerForm>>> {
        Ok(match &self.source {
            Source::Gaussian(_)
            | Source::FullGaussian(_)
            | Source::GaussianMixture(_)
            | Source::TrainingSet(_) => None,
            Source::Adm { arch, weights, .. } => Some(crate::model::adm::forward::conv_forms(
                arch, weights, self.size, self.size, self.conv,
            )?),
            Source::Ncsnpp { arch, weights } => Some(crate::model::ncsnpp::forward::conv_forms(
                arch, weights, self.conv,
            )?),
        })
    }

    /// The σ range or an error naming the flags (VE schedules need it).
    pub fn require_sigma_range(&self) -> Result<(f64, f64)> {
        self.sigma_range.with_context(|| {
            format!(
                "{} has no tweedie.sigma_min/tweedie.sigma_max metadata; pass --sigma-min and --sigma-max",
                self.label
            )
        })
    }
}

/// A worker's denoiser as [`Model::make`] hands it out: core's `Error::Denoiser` carries only
/// static text, so a denoiser that fails for a reason of its own (a network's forward) keeps
/// the full error, and the caller takes it after the failed step.
pub trait ModelDenoiser: Denoiser + Send {
    /// The full error behind the last failed call, if any (taken: asked again, None).
    fn take_failure(&mut self) -> Option<anyhow::Error> {
        None
    }
}

impl ModelDenoiser for GaussianPrior {}
impl ModelDenoiser for FullGaussianDenoiser<'_> {}
impl ModelDenoiser for GaussianMixtureDenoiser<'_> {}
impl ModelDenoiser for TrainingSetDenoiser<'_> {}

/// Stands in for a network that could not be built (why: its message).
struct Unavailable(String);

impl ModelDenoiser for Unavailable {
    fn take_failure(&mut self) -> Option<anyhow::Error> {
        Some(anyhow::anyhow!("{}", self.0))
    }
}

impl Denoiser for Unavailable {
    fn denoise(
        &mut self,
        _: &[f32],
        _: usize,
        _: &tweedie_core::PlanStep,
        _: &mut [f32],
    ) -> Result<(), tweedie_core::Error> {
        Err(tweedie_core::Error::Denoiser(
            "the network could not be built",
        ))
    }
}

/// Adapts a boxed denoiser to core's generic drivers (`&mut impl Denoiser` needs a sized type).
pub struct Boxed<'a>(pub Box<dyn ModelDenoiser + 'a>);

impl Denoiser for Boxed<'_> {
    fn denoise(
        &mut self,
        x: &[f32],
        batch: usize,
        step: &tweedie_core::PlanStep,
        out: &mut [f32],
    ) -> Result<(), tweedie_core::Error> {
        self.0.denoise(x, batch, step, out)
    }
}
