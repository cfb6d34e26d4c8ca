//! From checkpoint contents to a self-describing weights file: pick the weights set, choose
//! (or infer) the model config, check names and shapes against the model's state_dict before
//! reading any values, convert dtypes, attach the formats.md §3 metadata, and write the file
//! atomically after loading it back with the same strict loader `host sample` uses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use half::f16;
use safetensors::Dtype;
use tweedie_core::vp;

use super::checkpoint::{Checkpoint, Layout};
use super::pickle::{StorageDtype, TensorMeta};
use super::zip::printable;
use tweedie_nn::model::adm::AdmArch;
use tweedie_nn::model::config::{ModelConfig, BUILTIN_NAMES};
use tweedie_nn::model::ncsnpp::NcsnppArch;
use tweedie_nn::tensors::{decode_f16, serialize_sorted, SafetensorsFile};
use tweedie_nn::weights::meta::{DataRange, Kind, NetOutput, WeightsSet};
use tweedie_nn::weights::spec::{parameter_count, TensorSpec};
use tweedie_nn::weights::{Precision, StoredDtype, Weights, WeightsMeta, IGNORED_BUFFERS};

/// What to convert and how.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    /// A config file or built-in name; `None` infers a built-in from the tensor shapes.
    pub config: Option<String>,
    /// `ema` or `model`; `None`: EMA for score_sde checkpoints, the only set otherwise.
    pub weights_set: Option<WeightsSet>,
    /// Expected network scale; must agree with the architecture.
    pub kind: Option<Kind>,
    /// Store conv/linear weights as f16 (the loader's [`Precision::F16`] policy).
    pub f16: bool,
    /// Free text for `tweedie.source` (e.g. the checkpoint's file name).
    pub source: String,
}

/// A converted weights file, in memory.
#[derive(Debug)]
pub struct Converted {
    /// The safetensors file.
    pub bytes: Vec<u8>,
    /// The model config used.
    pub config: ModelConfig,
    /// Where the config came from (`--config` value or the inferred built-in).
    pub config_label: String,
    /// The set exported.
    pub weights_set: WeightsSet,
    /// Number of tensors written.
    pub tensors: usize,
    /// Number of parameters of the model.
    pub parameters: usize,
    /// The metadata written.
    pub meta: WeightsMeta,
    /// The model's expected state_dict (for verifying the written file).
    pub spec: Vec<TensorSpec>,
}

/// The expected state_dict of a config, whatever its architecture.
pub fn state_dict_spec(config: &ModelConfig) -> Result<Vec<TensorSpec>> {
    Ok(match config {
        ModelConfig::Adm(c) => AdmArch::new(c)?.state_dict(),
        ModelConfig::Ncsnpp(c) => NcsnppArch::new(c)?.state_dict(),
    })
}

/// The formats.md §3 metadata of an architecture (ADM: DPS/guided-diffusion ε-networks on
/// the VP scale; NCSN++: score_sde VE score networks).
pub fn metadata_for(config: &ModelConfig, set: WeightsSet, source: &str) -> WeightsMeta {
    let (kind, output, noise, range, sigma) = match config {
        ModelConfig::Adm(_) => (
            Kind::Vp,
            NetOutput::Eps,
            "t",
            DataRange::MinusOneOne,
            (vp::SIGMA_MIN, vp::SIGMA_MAX),
        ),
        ModelConfig::Ncsnpp(c) => (
            Kind::Ve,
            NetOutput::Score,
            "sigma",
            DataRange::ZeroOne,
            (c.sigma_min, c.sigma_max),
        ),
    };
    WeightsMeta {
        config: Some(config.to_json().to_string()),
        kind: Some(kind),
        output: Some(output),
        noise_input: Some(noise.to_string()),
        data_range: Some(range),
        sigma_min: Some(sigma.0),
        sigma_max: Some(sigma.1),
        weights_set: Some(set),
        source: Some(source.to_string()),
        ..WeightsMeta::default()
    }
}

/// Converts an opened checkpoint (see [`ConvertOptions`]).
pub fn convert(ckpt: &Checkpoint, opts: &ConvertOptions) -> Result<Converted> {
    let contents = ckpt.contents()?;
    let set = match (opts.weights_set, &contents.layout) {
        (Some(s), _) => s,
        (None, Layout::ScoreSde { has_ema: true, .. }) => WeightsSet::Ema,
        (None, _) => WeightsSet::Model,
    };
    let tensors = if contents.layout == Layout::StateDict && set == WeightsSet::Ema {
        // A plain state_dict is one set; the flag only labels it (guided-diffusion's
        // released `ema_*.pt` files are EMA weights saved as a state_dict).
        contents.model.clone()
    } else {
        contents
            .select(set)
            .with_context(|| ckpt.label().to_string())?
    };
    let (config, config_label) = match &opts.config {
        Some(spec) => (ModelConfig::load(spec)?, spec.clone()),
        None => infer_config(&tensors, opts.kind)
            .with_context(|| format!("{}: cannot infer the model config", ckpt.label()))?,
    };
    let spec = state_dict_spec(&config)?;
    check_tensors(&tensors, &spec)
        .with_context(|| format!("{} against config {config_label}", ckpt.label()))?;
    let meta = metadata_for(&config, set, &source_text(opts, &contents.layout, set));
    if let Some(k) = opts.kind.filter(|k| Some(*k) != meta.kind) {
        bail!(
            "--kind {} contradicts the architecture: {} networks are {}",
            k.as_str(),
            arch_name(&config),
            meta.kind.map_or("?", Kind::as_str)
        );
    }
    let precision = if opts.f16 {
        Precision::F16
    } else {
        Precision::F32
    };
    let bytes = serialize(ckpt, &tensors, &spec, precision, &meta)?;
    Ok(Converted {
        bytes,
        config_label,
        weights_set: set,
        tensors: tensors.len(),
        parameters: parameter_count(&spec),
        meta,
        config,
        spec,
    })
}

fn arch_name(config: &ModelConfig) -> &'static str {
    match config {
        ModelConfig::Adm(_) => "ADM",
        ModelConfig::Ncsnpp(_) => "NCSN++",
    }
}

fn source_text(opts: &ConvertOptions, layout: &Layout, set: WeightsSet) -> String {
    let what = match layout {
        Layout::StateDict => "state_dict".to_string(),
        Layout::ScoreSde { step: Some(s), .. } => format!("score_sde checkpoint at step {s}"),
        Layout::ScoreSde { .. } => "score_sde checkpoint".to_string(),
    };
    format!(
        "host convert from {} ({what}, {} weights)",
        opts.source,
        set.as_str()
    )
}

/// The one built-in whose state_dict matches the tensors (restricted by `kind`).
fn infer_config(
    tensors: &[(String, TensorMeta)],
    kind: Option<Kind>,
) -> Result<(ModelConfig, String)> {
    let mut matches = Vec::new();
    let mut misses = Vec::new();
    for name in BUILTIN_NAMES {
        let config = ModelConfig::load(name)?;
        let arch_kind = match config {
            ModelConfig::Adm(_) => Kind::Vp,
            ModelConfig::Ncsnpp(_) => Kind::Ve,
        };
        if kind.is_some_and(|k| k != arch_kind) {
            continue;
        }
        match check_tensors(tensors, &state_dict_spec(&config)?) {
            Ok(()) => matches.push((config, name.to_string())),
            Err(e) => misses.push(format!("{name}: {}", short(&format!("{e:#}")))),
        }
    }
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => bail!(
            "it matches no built-in config ({}); pass --config C.json",
            misses.join("; ")
        ),
        _ => bail!("it matches several built-in configs; pass --config"),
    }
}

fn short(s: &str) -> String {
    if s.chars().count() > 160 {
        s.chars().take(160).chain("…".chars()).collect()
    } else {
        s.to_string()
    }
}

/// Names, shapes and dtypes against the expected state_dict, every problem named in one
/// line (the same groups as the weights loader); [`IGNORED_BUFFERS`] may be present.
pub fn check_tensors(tensors: &[(String, TensorMeta)], expected: &[TensorSpec]) -> Result<()> {
    let found: BTreeMap<&str, &TensorMeta> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let (mut missing, mut shapes, mut dtypes) = (Vec::new(), Vec::new(), Vec::new());
    for spec in expected {
        match found.get(spec.name.as_str()) {
            None => missing.push(spec.name.clone()),
            Some(t) => {
                if t.shape != spec.shape {
                    shapes.push(format!(
                        "{} (expected {:?}, checkpoint has {:?})",
                        spec.name, spec.shape, t.shape
                    ));
                }
                if !is_float(t.storage.dtype) {
                    dtypes.push(format!("{} ({})", spec.name, t.storage.dtype.name()));
                }
            }
        }
    }
    let wanted: HashSet<&str> = expected.iter().map(|s| s.name.as_str()).collect();
    let unexpected: Vec<String> = found
        .keys()
        .filter(|n| !wanted.contains(*n) && !IGNORED_BUFFERS.contains(*n))
        .map(|n| printable(n))
        .collect();
    let groups = [
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped", shapes),
        ("not floating point", dtypes),
    ];
    let problems: Vec<String> = groups
        .into_iter()
        .filter(|(_, list)| !list.is_empty())
        .map(|(what, list)| {
            let shown: Vec<&str> = list.iter().take(8).map(String::as_str).collect();
            let more = if list.len() > 8 { ", …" } else { "" };
            format!("{} {what}: {}{more}", list.len(), shown.join(", "))
        })
        .collect();
    if !problems.is_empty() {
        bail!(
            "tensors do not match the model config; {}",
            problems.join("; ")
        );
    }
    Ok(())
}

fn is_float(d: StorageDtype) -> bool {
    matches!(
        d,
        StorageDtype::F64 | StorageDtype::F32 | StorageDtype::F16 | StorageDtype::BF16
    )
}

/// Values in the output dtype: f32 copies f32 bits exactly; f16 rounds once from the source.
fn encode(dtype: Dtype, bytes: Vec<u8>, out: StoredDtype) -> Result<(Dtype, Vec<u8>)> {
    Ok(match (out, dtype) {
        (StoredDtype::F32, Dtype::F32) => (Dtype::F32, bytes),
        (StoredDtype::F32, _) => {
            let mut v = vec![0f32; bytes.len() * 8 / dtype.bitsize()];
            tweedie_nn::tensors::decode_f32(dtype, &bytes, &mut v)?;
            (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
        (StoredDtype::F16, Dtype::F16) => (Dtype::F16, bytes),
        (StoredDtype::F16, _) => {
            let mut v = vec![f16::ZERO; bytes.len() * 8 / dtype.bitsize()];
            decode_f16(dtype, &bytes, &mut v)?;
            (Dtype::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect())
        }
    })
}

fn serialize(
    ckpt: &Checkpoint,
    tensors: &[(String, TensorMeta)],
    spec: &[TensorSpec],
    precision: Precision,
    meta: &WeightsMeta,
) -> Result<Vec<u8>> {
    let by_name: HashMap<&str, &TensorMeta> =
        tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    // Spec order, then the ignored buffers the checkpoint has (kept f32, never f16).
    let mut plan: Vec<(&str, StoredDtype)> = spec
        .iter()
        .map(|s| (s.name.as_str(), precision.dtype_for(s.kind)))
        .collect();
    plan.extend(
        IGNORED_BUFFERS
            .iter()
            .filter(|b| by_name.contains_key(*b))
            .map(|b| (*b, StoredDtype::F32)),
    );
    let mut encoded = Vec::with_capacity(plan.len());
    for (name, out) in plan {
        let t = by_name[name];
        let (dtype, bytes) = ckpt.tensor_bytes(t, name)?;
        let (dtype, bytes) = encode(dtype, bytes, out)?;
        encoded.push((name, dtype, t.shape.clone(), bytes));
    }
    // Sorted by name as safetensors::serialize lays the data out; nn's one byte form keeps
    // the header keys sorted too, so a conversion always writes the same bytes.
    encoded.sort_by_key(|e| e.0);
    let views: Vec<_> = encoded
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), *d, s.clone(), &b[..]))
        .collect();
    serialize_sorted(&views, &meta.to_map().into_iter().collect())
        .context("cannot serialise the weights")
}

/// Loads the written weights file `path` back strictly against `spec`, as `host sample`
/// will (before it is renamed into place).
pub fn verify_written(path: &Path, spec: &[TensorSpec]) -> Result<()> {
    let file = SafetensorsFile::open(path)?;
    WeightsMeta::parse(&file.metadata()?)?;
    Weights::load(&file, spec, Precision::F32)?;
    Ok(())
}
