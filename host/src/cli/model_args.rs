//! The model flags: `--weights W.safetensors` (a network, with its `tweedie.*` metadata and the
//! override flags of formats.md §3), `--weights bundled:NAME`, `--weights gaussian:MEAN,STD`
//! (the closed-form isotropic Gaussian prior, for tests and demos) or `--weights
//! gaussian-fit:DATA` (the full-covariance Gaussian fitted to MNIST's training split: an exact
//! denoiser whose inverse-problem posteriors are known) or `--weights gaussian-mixture-fit:DATA`
//! (one such Gaussian per digit class, mixed by class proportions: an exact multi-modal
//! denoiser), resolved once into a [`Model`].

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use tweedie_core::tweedie::{NetKind, Parameterization};
use tweedie_core::vp;

use tweedie_nn::denoiser::gaussian::{parse_gaussian, GaussianPrior};
use tweedie_nn::denoiser::network::NoiseInputKind;
use tweedie_nn::denoiser::training_set::TrainingSet;
use tweedie_nn::denoiser::{default_range, Model, Source};
use tweedie_nn::model::adm::AdmArch;
use tweedie_nn::model::config::ModelConfig;
use tweedie_nn::model::layers::ConvPolicy;
use tweedie_nn::model::ncsnpp::{NcsnppArch, NcsnppModel};
use tweedie_nn::tensors::SafetensorsFile;
use tweedie_nn::weights::meta::{DataRange, Kind, NetOutput, WeightsSet};
use tweedie_nn::weights::{Weights, WeightsMeta};

use super::common::{load_mnist, precision, preprocess, resolve_config, threads};
use crate::bundled;
use crate::errln;
use crate::eval::gaussian_fit::{fit, fit_per_class, mixture, GaussianFit};
use crate::run::manifest::DATA_FIT_PREFIXES;
use crate::run::memory;
use tweedie_nn::data::{Dataset, MnistSplit, Preprocess};

/// The model flags shared by `sample`, `restore`, `denoise` (and `schedule`, without weights).
#[derive(Debug, Clone, Args, Serialize)]
pub struct ModelArgs {
    /// Weights: a safetensors file, `bundled:NAME` for a model compiled into the binary
    /// (default: bundled:mnist-vp), `gaussian:MEAN,STD` for the closed-form Gaussian prior
    /// (shape from --size/--channels, scale from --kind), `gaussian-fit:DIR` for the
    /// Gaussian fitted to the MNIST training split in DIR (padded to --size, default 32; scale
    /// from --kind, default vp), `gaussian-mixture-fit:DIR` for the mixture of one such
    /// Gaussian per digit class (weights: the class proportions), or `training-set:DIR` for
    /// the exact denoiser of the training split's empirical law (a perfect fit of the set:
    /// its samples are training digits).
    #[arg(
        long,
        value_name = "W.safetensors|bundled:NAME|gaussian:MEAN,STD|gaussian-fit:DIR|gaussian-mixture-fit:DIR|training-set:DIR"
    )]
    pub weights: Option<String>,
    /// Model config: a JSON file or a built-in name (adm-ffhq256, ncsnpp-ffhq256). Overrides
    /// the weights' `tweedie.config`.
    #[arg(long, value_name = "C.json|NAME")]
    pub config: Option<String>,
    /// Network scale: vp or ve (overrides `tweedie.kind`; gaussian default ve).
    #[arg(long, value_name = "vp|ve")]
    pub kind: Option<String>,
    /// Network output: eps, score or denoised (overrides `tweedie.output`).
    #[arg(long, value_name = "eps|score|denoised")]
    pub net_output: Option<String>,
    /// Network noise input: t, sigma, log_sigma or log_sigma_x250 (overrides
    /// `tweedie.noise_input`).
    #[arg(long, value_name = "t|sigma|log_sigma|log_sigma_x250")]
    pub noise_input: Option<String>,
    /// Data range `-1,1` or `0,1` (overrides `tweedie.data_range`; default by kind: VP -1,1,
    /// VE 0,1). Write `--data-range=-1,1`.
    #[arg(long, value_name = "-1,1|0,1", allow_hyphen_values = true)]
    pub data_range: Option<String>,
    /// Smallest trained noise level (overrides `tweedie.sigma_min`). Schedules run over the
    /// trained range; for VP, a range inside the table also narrows the presets' sigmoid.
    #[arg(allow_hyphen_values = true, long, value_name = "S")]
    pub sigma_min: Option<f64>,
    /// Largest trained noise level (overrides `tweedie.sigma_max`); see --sigma-min.
    #[arg(allow_hyphen_values = true, long, value_name = "S")]
    pub sigma_max: Option<f64>,
    /// Weights set recorded in the metadata: ema, model or raw (informational).
    #[arg(long, value_name = "ema|model|raw")]
    pub weights_set: Option<String>,
    /// Image side for `gaussian:` (default 8) and `gaussian-fit:` weights (default 32).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub size: Option<u64>,
    /// Image channels (1 or 3) for `gaussian:` weights (default 3).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3))]
    pub channels: Option<u64>,
    /// Store conv and linear weights as f16.
    #[arg(long)]
    pub f16: bool,
    /// How a network's CPU forward computes its 3×3 convolutions: auto (Winograd F(4×4) or
    /// F(2×2) where the layer's shape makes it pay, else direct; run.json lists each layer's
    /// form), winograd (every layer it can compute) or direct (the bits before Winograd).
    /// The GPU always runs direct: --conv winograd keeps a run on the CPU.
    #[arg(long, value_enum, default_value = "auto")]
    pub conv: ConvArg,
}

/// `--conv`: how the CPU forward computes the 3×3 'same' convolutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvArg {
    /// Winograd where the layer's shape makes it pay, else direct.
    Auto,
    /// Winograd wherever it can compute the layer.
    Winograd,
    /// The direct convolution everywhere.
    Direct,
}

impl From<ConvArg> for ConvPolicy {
    fn from(c: ConvArg) -> ConvPolicy {
        match c {
            ConvArg::Auto => ConvPolicy::Auto,
            ConvArg::Winograd => ConvPolicy::Winograd,
            ConvArg::Direct => ConvPolicy::Direct,
        }
    }
}

/// run.json's record of the convolutions: the policy and every 3×3 layer's form.
pub fn conv_json(model: &Model) -> Result<serde_json::Value> {
    let forms = model.conv_forms()?.map(|forms| {
        forms
            .iter()
            .map(|f| {
                json!({"layer": f.name, "map": [f.map.0, f.map.1],
                       "channels": [f.channels.0, f.channels.1], "form": f.form.name()})
            })
            .collect::<Vec<_>>()
    });
    Ok(json!({"policy": format!("{:?}", model.conv).to_lowercase(), "forms": forms}))
}

fn parse_flag<T>(flag: &str, value: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T> {
    parse(value).with_context(|| format!("--{flag} {value}: not an accepted value"))
}

/// Room for a decimal rounding of the VP table's ends in metadata (relative).
const VP_END_ROUNDING: f64 = 1e-6;

/// Whether a VP σ range lies strictly inside the table (beyond the rounding of its ends):
/// then the presets' schedules run over it instead of the whole table.
pub fn narrows_vp_table(range: (f64, f64)) -> bool {
    range.0 > vp::SIGMA_MIN * (1.0 + VP_END_ROUNDING)
        || range.1 < vp::SIGMA_MAX * (1.0 - VP_END_ROUNDING)
}

/// Errors unless a VP model's σ range lies on the DDPM table (formats §3: a VP network is
/// defined only there); `source` names where the range came from.
fn check_vp_range(kind: Kind, range: (f64, f64), source: &str) -> Result<()> {
    let (lo, hi) = (
        vp::SIGMA_MIN * (1.0 - VP_END_ROUNDING),
        vp::SIGMA_MAX * (1.0 + VP_END_ROUNDING),
    );
    if kind == Kind::Vp && (range.0 < lo || range.1 > hi) {
        bail!(
            "{source}: σ range [{}, {}] leaves the VP table [{}, {}]; a VP network is only \
             defined on it (pass --sigma-min/--sigma-max inside it)",
            range.0,
            range.1,
            vp::SIGMA_MIN,
            vp::SIGMA_MAX
        );
    }
    Ok(())
}

/// The inputs of a Gaussian fit to MNIST ([`ModelArgs::fit_data`]).
struct FitData {
    kind: Kind,
    data_range: DataRange,
    train: Dataset,
    size: usize,
    pre: Preprocess,
}

/// The flag if given (warning when it differs from the metadata), else the metadata value.
fn pick<T: PartialEq + Copy + std::fmt::Display>(
    flag_name: &str,
    flag: Option<T>,
    meta: Option<T>,
    key: &str,
    label: &str,
) -> Option<T> {
    if let (Some(f), Some(m)) = (flag, meta) {
        if f != m {
            errln!(
                "warning: --{flag_name} {f} differs from {key} {m} in {label}; using --{flag_name}"
            );
        }
    }
    flag.or(meta)
}

impl ModelArgs {
    /// The kind flag, parsed.
    pub fn kind_flag(&self) -> Result<Option<Kind>> {
        self.kind
            .as_deref()
            .map(|k| k.parse::<Kind>().with_context(|| format!("--kind {k}")))
            .transpose()
    }

    fn data_range_flag(&self) -> Result<Option<DataRange>> {
        self.data_range
            .as_deref()
            .map(|k| {
                k.parse::<DataRange>()
                    .with_context(|| format!("--data-range {k}"))
            })
            .transpose()
    }

    /// The flags that need no model to check: σ bounds and --weights-set.
    fn check_flags(&self) -> Result<()> {
        for (name, v) in [("sigma-min", self.sigma_min), ("sigma-max", self.sigma_max)] {
            if let Some(v) = v.filter(|v| !(v.is_finite() && *v > 0.0)) {
                bail!("--{name} {v}: must be a finite number > 0");
            }
        }
        if let Some(set) = &self.weights_set {
            parse_flag("weights-set", set, |s| s.parse::<WeightsSet>().ok())?;
        }
        if let (Some(lo), Some(hi)) = (self.sigma_min, self.sigma_max) {
            if lo >= hi {
                bail!("--sigma-min {lo} is not below --sigma-max {hi}");
            }
        }
        Ok(())
    }

    /// The weights file `--weights` names, if it names a file (an input no output may replace).
    pub fn weights_file(&self) -> Option<&Path> {
        let spec = self.weights.as_deref()?;
        let special = spec.starts_with(bundled::PREFIX)
            || spec.starts_with("gaussian:")
            || DATA_FIT_PREFIXES.iter().any(|p| spec.starts_with(p));
        (!special).then(|| Path::new(spec))
    }

    /// Loads the model `--weights` names; without `--weights`, the bundled default model.
    pub fn load(&self) -> Result<Model> {
        let default = format!("{}{}", bundled::PREFIX, bundled::DEFAULT);
        let spec = self.weights.as_deref().unwrap_or(&default);
        self.check_flags()?;
        if let Some(rest) = spec.strip_prefix("gaussian:") {
            return self.gaussian(spec, rest);
        }
        if let Some(dir) = spec.strip_prefix("gaussian-fit:") {
            return self.gaussian_fit(spec, Path::new(dir));
        }
        if let Some(dir) = spec.strip_prefix("gaussian-mixture-fit:") {
            return self.gaussian_mixture_fit(spec, Path::new(dir));
        }
        if let Some(dir) = spec.strip_prefix("training-set:") {
            return self.training_set(spec, Path::new(dir));
        }
        let file = match spec.strip_prefix(bundled::PREFIX) {
            Some(name) => {
                let model = bundled::find(name).with_context(|| {
                    format!(
                        "--weights {spec}: no such bundled model (have: {})",
                        bundled::names()
                    )
                })?;
                SafetensorsFile::from_bytes(model.bytes.to_vec(), spec.to_string())?
            }
            None => SafetensorsFile::open(Path::new(spec))?,
        };
        let mut model = self.network(spec, file)?;
        model.conv = self.conv.into();
        Ok(model)
    }

    /// The model of `host schedule`: `--weights` (default: the bundled VP model, as for
    /// every command) or, with `--kind` and no `--weights`, a weightless model of that kind
    /// whose σ range comes from the flags.
    pub fn schedule_only(&self) -> Result<Model> {
        if self.weights.is_some() || self.kind.is_none() {
            return self.load();
        }
        self.check_flags()?;
        self.gaussian("gaussian:0,1", "0,1")
    }

    /// Where the σ range comes from, for errors: the flags, else the weights `label`.
    fn range_source(&self, label: &str) -> String {
        match (self.sigma_min, self.sigma_max) {
            (None, None) => format!("{label} (tweedie.sigma_min/tweedie.sigma_max)"),
            _ => "--sigma-min/--sigma-max".to_string(),
        }
    }

    /// The σ range of a closed-form prior: the flags, else the kind's usual range.
    fn prior_sigma_range(&self, kind: Kind) -> (f64, f64) {
        match kind {
            Kind::Vp => (
                self.sigma_min.unwrap_or(vp::SIGMA_MIN),
                self.sigma_max.unwrap_or(vp::SIGMA_MAX),
            ),
            Kind::Ve => (
                self.sigma_min.unwrap_or(tweedie_core::plan::VE_SIGMA_MIN),
                self.sigma_max.unwrap_or(tweedie_core::plan::VE_SIGMA_MAX),
            ),
        }
    }

    fn gaussian(&self, spec: &str, rest: &str) -> Result<Model> {
        let oracle = parse_gaussian(rest)?;
        let kind = self.kind_flag()?.unwrap_or(Kind::Ve);
        let data_range = self.data_range_flag()?.unwrap_or(default_range(kind));
        let sigma_range = self.prior_sigma_range(kind);
        check_vp_range(kind, sigma_range, &self.range_source(spec))?;
        let channels = self.channels.unwrap_or(3) as usize;
        let size = self.size.unwrap_or(8);
        if channels == 2 {
            bail!("--channels 2: images have 1 or 3 channels");
        }
        memory::check(
            &format!("one {channels}x{size}x{size} image"),
            memory::product(&[channels as u64, size, size, 4]),
        )?;
        let size = usize::try_from(size).context("--size")?;
        Ok(Model {
            kind,
            data_range,
            sigma_range: Some(sigma_range),
            channels,
            size,
            source: Source::Gaussian(GaussianPrior { oracle, kind }),
            label: spec.to_string(),
            description: json!({
                "weights": spec, "kind": kind.as_str(), "data_range": data_range.as_str(),
                "gaussian_mean": oracle.mean, "gaussian_std": oracle.std,
                "channels": channels, "size": size,
            }),
            conv: ConvPolicy::Auto,
        })
    }

    /// What a fit to the MNIST training split in `dir` starts from: the kind (VP unless
    /// --kind), the range (the kind's unless --data-range), the split and its padding to
    /// --size (32 unless given). The channels come from the data.
    fn fit_data(&self, spec: &str, dir: &Path) -> Result<FitData> {
        if self.channels.is_some() {
            bail!("--weights {spec}: the channels come from the data; drop --channels");
        }
        let kind = self.kind_flag()?.unwrap_or(Kind::Vp);
        let data_range = self.data_range_flag()?.unwrap_or(default_range(kind));
        let train = load_mnist(dir, MnistSplit::Train, &format!("--weights {spec}"))?;
        let size = self.size.unwrap_or(32) as usize;
        let pre = preprocess(&train, train.channels, size, data_range)?;
        Ok(FitData {
            kind,
            data_range,
            train,
            size,
            pre,
        })
    }

    /// `gaussian-fit:DIR`: fits N(μ, Σ) to the MNIST training split in the model's range.
    fn gaussian_fit(&self, spec: &str, dir: &Path) -> Result<Model> {
        let FitData {
            kind,
            data_range,
            train,
            size,
            pre,
        } = self.fit_data(spec, dir)?;
        // Σ and its eigenvectors, in f64.
        let dim = (train.channels * size * size) as u64;
        memory::check(
            &format!("the {dim}x{dim} covariance"),
            memory::product(&[dim, dim, 8, 3]),
        )?;
        let prior = fit(&train, pre, threads(None))?;
        self.fitted_model(spec, &prior, kind, data_range, train.channels, size)
    }

    /// `gaussian-mixture-fit:DIR`: one N(μₖ, Σₖ) per class of the MNIST training split, mixed
    /// by the class proportions.
    fn gaussian_mixture_fit(&self, spec: &str, dir: &Path) -> Result<Model> {
        let FitData {
            kind,
            data_range,
            train,
            size,
            pre,
        } = self.fit_data(spec, dir)?;
        // One class's Σ and eigenvectors in f64 at a time; every component's kept
        // eigenvectors (at most dim × dim f32 each) for the ten classes.
        let dim = (train.channels * size * size) as u64;
        memory::check(
            &format!("ten {dim}x{dim} class covariances"),
            memory::product(&[dim, dim, 8 * 3 + 4 * 10]),
        )?;
        let fits = fit_per_class(&train, pre, threads(None))?;
        let mix = mixture(&fits, kind)?;
        let classes: Vec<_> = fits
            .iter()
            .map(|(label, f)| json!({"label": label, "images": f.count}))
            .collect();
        let description = json!({
            "weights": spec, "kind": kind.as_str(), "data_range": data_range.as_str(),
            "classes": classes, "channels": train.channels, "size": size,
        });
        Ok(self.data_model(
            spec,
            (kind, data_range),
            (train.channels, size),
            Source::GaussianMixture(Box::new(mix)),
            description,
        ))
    }

    /// A closed-form model of the MNIST data (a fit or the set itself): the σ range of its
    /// kind, the automatic conv policy (it has no convolutions).
    fn data_model(
        &self,
        spec: &str,
        (kind, data_range): (Kind, DataRange),
        (channels, size): (usize, usize),
        source: Source,
        description: serde_json::Value,
    ) -> Model {
        Model {
            kind,
            data_range,
            sigma_range: Some(self.prior_sigma_range(kind)),
            channels,
            size,
            source,
            label: spec.to_string(),
            description,
            conv: ConvPolicy::Auto,
        }
    }

    /// `training-set:DIR`: the empirical law of the MNIST training split (every image, padded
    /// to --size and mapped to the kind's range).
    fn training_set(&self, spec: &str, dir: &Path) -> Result<Model> {
        let FitData {
            kind,
            data_range,
            train,
            size,
            pre,
        } = self.fit_data(spec, dir)?;
        let dim = pre.example_len(&train);
        memory::check(
            &format!("{} training images of {dim} floats", train.len()),
            memory::product(&[train.len() as u64, dim as u64, 4]),
        )?;
        let mut images = vec![0.0f32; train.len() * dim];
        let all: Vec<usize> = (0..train.len()).collect();
        train.fill_batch(&all, pre, &mut images)?;
        let set = TrainingSet::new(kind, dim, images)?;
        let description = json!({
            "weights": spec, "kind": kind.as_str(), "data_range": data_range.as_str(),
            "images": train.len(), "channels": train.channels, "size": size,
        });
        Ok(self.data_model(
            spec,
            (kind, data_range),
            (train.channels, size),
            Source::TrainingSet(Box::new(set)),
            description,
        ))
    }

    /// The exact denoiser of an already fitted Gaussian as a model (`host evaluate posterior`
    /// reuses its fit); `spec` labels it.
    pub fn fitted_model(
        &self,
        spec: &str,
        prior: &GaussianFit,
        kind: Kind,
        data_range: DataRange,
        channels: usize,
        size: usize,
    ) -> Result<Model> {
        if prior.dim != channels * size * size {
            bail!(
                "{spec}: the fit has {} elements, not {channels}x{size}x{size}",
                prior.dim
            );
        }
        let sigma_range = self.prior_sigma_range(kind);
        check_vp_range(kind, sigma_range, &self.range_source(spec))?;
        let full = prior.denoiser(kind)?;
        let description = json!({
            "weights": spec, "kind": kind.as_str(), "data_range": data_range.as_str(),
            "gaussian_fit_images": prior.count, "rank": full.rank(),
            "channels": channels, "size": size,
        });
        Ok(Model {
            kind,
            data_range,
            sigma_range: Some(sigma_range),
            channels,
            size,
            source: Source::FullGaussian(Box::new(full)),
            label: spec.to_string(),
            description,
            conv: ConvPolicy::Auto,
        })
    }

    /// Refuses a network whose weights alone would not fit the memory limit.
    fn check_weights_memory(&self, label: &str, parameters: usize) -> Result<()> {
        memory::check(
            &format!("the network of {label} ({parameters} parameters)"),
            memory::weights_bytes(parameters as u64, precision(self.f16)),
        )
    }

    fn network(&self, spec: &str, file: SafetensorsFile) -> Result<Model> {
        let label = file.label().to_string();
        let meta =
            WeightsMeta::parse(&file.metadata()?).map_err(|e| anyhow::anyhow!("{label}: {e:#}"))?;
        for key in &meta.unknown {
            errln!("warning: {label}: unknown metadata key {key} ignored");
        }
        let config = resolve_config(self.config.as_deref(), &meta, &label)?;
        let kind = pick("kind", self.kind_flag()?, meta.kind, "tweedie.kind", &label)
            .with_context(|| format!("{label} has no tweedie.kind metadata; pass --kind vp|ve"))?;
        let out_flag = self
            .net_output
            .as_deref()
            .map(|v| parse_flag("net-output", v, |s| s.parse::<NetOutput>().ok()))
            .transpose()?;
        let output = pick(
            "net-output",
            out_flag,
            meta.output,
            "tweedie.output",
            &label,
        )
        .with_context(|| {
            format!("{label} has no tweedie.output metadata; pass --net-output eps|score|denoised")
        })?;
        let noise_name = match (&self.noise_input, &meta.noise_input) {
            (Some(f), Some(m)) if f != m => {
                errln!("warning: --noise-input {f} differs from tweedie.noise_input {m} in {label}; using --noise-input");
                f.clone()
            }
            (Some(f), _) => f.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => bail!(
                "{label} has no tweedie.noise_input metadata; pass --noise-input t|sigma|log_sigma"
            ),
        };
        let noise_input = NoiseInputKind::parse(&noise_name).with_context(|| {
            format!(
                "noise input `{noise_name}` is not supported (t, sigma, log_sigma, log_sigma_x250)"
            )
        })?;
        let data_range = pick(
            "data-range",
            self.data_range_flag()?,
            meta.data_range,
            "tweedie.data_range",
            &label,
        )
        .unwrap_or(default_range(kind));
        let sigma_min = pick(
            "sigma-min",
            self.sigma_min,
            meta.sigma_min,
            "tweedie.sigma_min",
            &label,
        );
        let sigma_max = pick(
            "sigma-max",
            self.sigma_max,
            meta.sigma_max,
            "tweedie.sigma_max",
            &label,
        );
        let sigma_range = match (kind, sigma_min, sigma_max) {
            (_, Some(lo), Some(hi)) if lo < hi => Some((lo, hi)),
            (_, Some(lo), Some(hi)) => bail!("sigma_min {lo} is not below sigma_max {hi}"),
            (Kind::Vp, lo, hi) => {
                let (lo, hi) = (lo.unwrap_or(vp::SIGMA_MIN), hi.unwrap_or(vp::SIGMA_MAX));
                if lo >= hi {
                    bail!("sigma_min {lo} is not below sigma_max {hi}");
                }
                Some((lo, hi))
            }
            (Kind::Ve, _, _) => None,
        };
        if let Some(range) = sigma_range {
            check_vp_range(kind, range, &self.range_source(&label))?;
        }
        if let ModelConfig::Ncsnpp(c) = &config {
            // The NCSN++ forward itself forms the score of a VE network conditioned on σ.
            if (kind, output, noise_name.as_str(), data_range)
                != (Kind::Ve, NetOutput::Score, "sigma", DataRange::ZeroOne)
            {
                bail!("{label}: NCSN++ runs as kind ve, output score, noise input sigma, data range 0,1");
            }
            let arch = NcsnppArch::new(c)?;
            self.check_weights_memory(&label, arch.parameter_count())?;
            let weights = Weights::load(&file, &arch.state_dict(), precision(self.f16))?;
            // Resolves every tensor once, up front.
            NcsnppModel::with_policy(&arch, &weights, 1, ConvPolicy::Direct)?;
            let description = json!({
                "weights": spec, "arch": "ncsnpp", "config": config.to_json(), "kind": "ve",
                "output": "score", "noise_input": "sigma", "data_range": "0,1",
                "sigma_range": sigma_range, "parameters": weights.parameter_count(),
                "f16": self.f16, "source": meta.source,
            });
            return Ok(Model {
                kind,
                data_range,
                sigma_range,
                channels: arch.channels(),
                size: c.image_size,
                source: Source::Ncsnpp {
                    arch: Box::new(arch),
                    weights: Box::new(weights),
                },
                label,
                description,
                conv: ConvPolicy::Auto,
            });
        }
        let config = config.adm()?.clone();
        let arch = AdmArch::new(&config)?;
        self.check_weights_memory(&label, arch.parameter_count())?;
        let weights = Weights::load(&file, &arch.state_dict(), precision(self.f16))?;
        let net_kind = match kind {
            Kind::Vp => NetKind::Vp,
            Kind::Ve => NetKind::Ve,
        };
        let core_output = tweedie_core::tweedie::NetOutput::from_name(output.as_str())
            .context("network output")?;
        let param = Parameterization::new(net_kind, core_output);
        let description = json!({
            "weights": spec, "arch": "adm", "config": config.to_json(), "kind": kind.as_str(),
            "output": output.as_str(), "noise_input": noise_name, "data_range": data_range.as_str(),
            "sigma_range": sigma_range, "parameters": weights.parameter_count(),
            "f16": self.f16, "weights_set": self.weights_set.clone()
                .or(meta.weights_set.map(|w| w.as_str().to_string())),
            "source": meta.source,
        });
        Ok(Model {
            kind,
            data_range,
            sigma_range,
            channels: config.in_channels,
            size: config.image_size,
            source: Source::Adm {
                arch: Box::new(arch),
                weights: Box::new(weights),
                param,
                noise_input,
            },
            label,
            description,
            conv: ConvPolicy::Auto,
        })
    }
}
