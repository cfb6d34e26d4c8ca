//! `NcsnppConfig`: score_sde's `config.model` fields for `NCSNpp` plus `image_size`,
//! `num_channels` and `centered` from `config.data` (formats.md §2).
//!
//! Two JSON forms are read: the flat one (`{"arch": "ncsnpp", "nf": 128, …}`) and the nested
//! one of score_sde and the golden folders (a top-level `config` object with `model` and
//! `data` sections; other top-level keys are ignored). List fields accept JSON lists or
//! comma-separated strings. Fields missing from either form take the FFHQ-256 value
//! (`configs/ve/ffhq_256_ncsnpp_continuous.py`), except the ones that define the network's
//! size (`image_size`, `nf`, `ch_mult`, `num_res_blocks`, `attn_resolutions`), which are
//! required. Only the code paths of that config are implemented (ncsnpp.md §1): every switch
//! that would select another path is refused by name.

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::model::config_fields::{check_keys, opt_bool, opt_f64, opt_usize, req_usize};

/// The name of the built-in score_sde FFHQ-256 configuration (ncsnpp.md §1).
pub const NCSNPP_FFHQ256: &str = "ncsnpp-ffhq256";

/// `config.model` fields: numbers and switches that we read.
const MODEL_KEYS: &[&str] = &[
    "nf",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "dropout",
    "fir",
    "fir_kernel",
    "skip_rescale",
    "resblock_type",
    "progressive",
    "progressive_input",
    "progressive_combine",
    "embedding_type",
    "fourier_scale",
    "init_scale",
    "conv_size",
    "scale_by_sigma",
    "sigma_min",
    "sigma_max",
    "num_scales",
    "conditional",
    "nonlinearity",
    "normalization",
    "attention_type",
    "resamp_with_conv",
    "name",
    "ema_rate",
    "beta_min",
    "beta_max",
];

/// `config.data` fields the network depends on.
const DATA_KEYS: &[&str] = &["image_size", "num_channels", "centered"];

/// Resolved `NCSNpp` arguments (FFHQ code paths: BigGAN ResBlocks with FIR resampling,
/// output_skip / input_skip pyramids combined by sums, Gaussian Fourier embedding of ln σ).
#[derive(Debug, Clone, PartialEq)]
pub struct NcsnppConfig {
    /// `data.image_size`: the one input size the network runs at (ncsnpp.md §2).
    pub image_size: usize,
    /// `data.num_channels`: image channels in and out.
    pub num_channels: usize,
    /// `data.centered`: the input is already in [−1, 1]; when false the network maps x to
    /// 2x − 1 itself.
    pub centered: bool,
    /// Base width; the Fourier embedding has `nf` frequencies, temb is 4·nf wide.
    pub nf: usize,
    /// Width multiplier per level (level width = nf·mult).
    pub ch_mult: Vec<usize>,
    /// ResBlocks per level on the way down (one more on the way up).
    pub num_res_blocks: usize,
    /// Feature-map widths that get attention after their ResBlocks.
    pub attn_resolutions: Vec<usize>,
    /// Training dropout; identity at inference.
    pub dropout: f64,
    /// Residual and attention outputs are divided by √2.
    pub skip_rescale: bool,
    /// Std of the Fourier frequencies at initialisation (the stored W already includes it).
    pub fourier_scale: f64,
    /// Initialisation scale of some layers (irrelevant with a checkpoint).
    pub init_scale: f64,
    /// The output is divided by σ.
    pub scale_by_sigma: bool,
    /// VE SDE σ_min.
    pub sigma_min: f64,
    /// VE SDE σ_max.
    pub sigma_max: f64,
    /// N, the length of the (unused) `sigmas` buffer and score_sde's sampler steps.
    pub num_scales: usize,
}

/// Switches with exactly one supported value: (field, value in the FFHQ config).
const FIXED: &[(&str, FixedValue)] = &[
    ("resblock_type", FixedValue::Str("biggan")),
    ("fir", FixedValue::Bool(true)),
    ("progressive", FixedValue::Str("output_skip")),
    ("progressive_input", FixedValue::Str("input_skip")),
    ("progressive_combine", FixedValue::Str("sum")),
    ("embedding_type", FixedValue::Str("fourier")),
    ("conditional", FixedValue::Bool(true)),
    ("nonlinearity", FixedValue::Str("swish")),
    ("normalization", FixedValue::Str("GroupNorm")),
    ("conv_size", FixedValue::Int(3)),
    ("name", FixedValue::Str("ncsnpp")),
];

#[derive(Debug, Clone, Copy)]
enum FixedValue {
    Str(&'static str),
    Bool(bool),
    Int(i64),
}

impl FixedValue {
    fn matches(self, v: &Value) -> bool {
        match self {
            FixedValue::Str(s) => v.as_str().is_some_and(|t| t.eq_ignore_ascii_case(s)),
            FixedValue::Bool(b) => v.as_bool() == Some(b),
            FixedValue::Int(i) => v.as_f64() == Some(i as f64),
        }
    }

    fn json(self) -> Value {
        match self {
            FixedValue::Str(s) => s.into(),
            FixedValue::Bool(b) => b.into(),
            FixedValue::Int(i) => i.into(),
        }
    }
}

impl NcsnppConfig {
    /// score_sde `configs/ve/ffhq_256_ncsnpp_continuous.py` (ncsnpp.md §1).
    pub fn ffhq256() -> NcsnppConfig {
        NcsnppConfig {
            image_size: 256,
            num_channels: 3,
            centered: false,
            nf: 128,
            ch_mult: vec![1, 1, 2, 2, 2, 2, 2],
            num_res_blocks: 2,
            attn_resolutions: vec![16],
            dropout: 0.0,
            skip_rescale: true,
            fourier_scale: 16.0,
            init_scale: 0.0,
            scale_by_sigma: true,
            sigma_min: 0.01,
            sigma_max: 348.0,
            num_scales: 2000,
        }
    }

    /// Reads the flat form (`arch: "ncsnpp"`) or the nested form (top-level `config`).
    pub fn from_json(value: &Value) -> Result<NcsnppConfig> {
        let top = value
            .as_object()
            .context("the config must be a JSON object")?;
        match top.get("config") {
            Some(nested) => {
                let nested = nested
                    .as_object()
                    .context("config: must be a JSON object")?;
                let section = |name: &str| -> Result<&Map<String, Value>> {
                    nested
                        .get(name)
                        .with_context(|| format!("config.{name}: required section is missing"))?
                        .as_object()
                        .with_context(|| format!("config.{name}: must be a JSON object"))
                };
                let (model, data) = (section("model")?, section("data")?);
                check_keys(model, &[MODEL_KEYS], "NCSN++", "config.model.")?;
                Self::from_fields(model, "config.model.", data, "config.data.")
            }
            None => {
                for key in top.keys() {
                    let k = key.as_str();
                    if k != "arch" && !MODEL_KEYS.contains(&k) && !DATA_KEYS.contains(&k) {
                        bail!("{key}: unknown NCSN++ config field");
                    }
                }
                Self::from_fields(top, "", top, "")
            }
        }
    }

    fn from_fields(
        model: &Map<String, Value>,
        mctx: &str,
        data: &Map<String, Value>,
        dctx: &str,
    ) -> Result<NcsnppConfig> {
        for (key, value) in FIXED {
            if let Some(v) = model.get(*key) {
                if !value.matches(v) {
                    bail!(
                        "{mctx}{key}: only {} is supported (the FFHQ NCSN++ code path), got {v}",
                        value.json()
                    );
                }
            }
        }
        let d = NcsnppConfig::ffhq256();
        let image_size = req_usize(data, "image_size", dctx)?;
        let nf = req_usize(model, "nf", mctx)?;
        let num_res_blocks = req_usize(model, "num_res_blocks", mctx)?;
        let ch_mult = req_list(model, "ch_mult", mctx)?;
        let attn_resolutions = req_list(model, "attn_resolutions", mctx)?;
        if let Some(k) = model.get("fir_kernel") {
            let k = list(k, "fir_kernel", mctx)?;
            if k != [1, 3, 3, 1] {
                bail!("{mctx}fir_kernel: only [1, 3, 3, 1] is supported, got {k:?}");
            }
        }
        let config = NcsnppConfig {
            image_size,
            num_channels: opt_usize(data, "num_channels", dctx)?.unwrap_or(d.num_channels),
            centered: opt_bool(data, "centered", dctx)?.unwrap_or(d.centered),
            nf,
            ch_mult,
            num_res_blocks,
            attn_resolutions,
            dropout: opt_f64(model, "dropout", mctx)?.unwrap_or(d.dropout),
            skip_rescale: opt_bool(model, "skip_rescale", mctx)?.unwrap_or(d.skip_rescale),
            fourier_scale: opt_f64(model, "fourier_scale", mctx)?.unwrap_or(d.fourier_scale),
            init_scale: opt_f64(model, "init_scale", mctx)?.unwrap_or(d.init_scale),
            scale_by_sigma: opt_bool(model, "scale_by_sigma", mctx)?.unwrap_or(d.scale_by_sigma),
            sigma_min: opt_f64(model, "sigma_min", mctx)?.unwrap_or(d.sigma_min),
            sigma_max: opt_f64(model, "sigma_max", mctx)?.unwrap_or(d.sigma_max),
            num_scales: opt_usize(model, "num_scales", mctx)?.unwrap_or(d.num_scales),
        };
        // Read for type errors only: no effect on the forward pass.
        opt_bool(model, "resamp_with_conv", mctx)?;
        for key in ["ema_rate", "beta_min", "beta_max"] {
            opt_f64(model, key, mctx)?;
        }
        config.validate(mctx, dctx)?;
        Ok(config)
    }

    fn validate(&self, mctx: &str, dctx: &str) -> Result<()> {
        for (value, key, ctx) in [
            (self.image_size, "image_size", dctx),
            (self.num_channels, "num_channels", dctx),
            (self.nf, "nf", mctx),
            (self.num_res_blocks, "num_res_blocks", mctx),
        ] {
            if value == 0 {
                bail!("{ctx}{key}: must be positive, got 0");
            }
        }
        if self.ch_mult.is_empty() || self.ch_mult.contains(&0) {
            bail!(
                "{mctx}ch_mult: every multiplier must be a positive integer, got {:?}",
                self.ch_mult
            );
        }
        let levels = self.ch_mult.len() as u32;
        if !self.image_size.is_multiple_of(1 << (levels - 1)) {
            bail!(
                "{dctx}image_size: {} is not divisible by 2^{} (ch_mult has {levels} levels)",
                self.image_size,
                levels - 1
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("{mctx}dropout: must be in [0, 1), got {}", self.dropout);
        }
        if !(self.sigma_min > 0.0 && self.sigma_max > self.sigma_min && self.sigma_max.is_finite())
        {
            bail!(
                "{mctx}sigma_min/sigma_max: need 0 < sigma_min < sigma_max, got {} and {}",
                self.sigma_min,
                self.sigma_max
            );
        }
        Ok(())
    }

    /// Feature-map width of each level: image_size / 2^level.
    pub fn resolutions(&self) -> Vec<usize> {
        (0..self.ch_mult.len())
            .map(|l| self.image_size >> l)
            .collect()
    }

    /// The flat JSON form of formats.md §2 (what `tweedie.config` stores); reads back equal.
    pub fn to_json(&self) -> Value {
        let join = |v: &[usize]| {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut obj = serde_json::json!({
            "arch": "ncsnpp",
            "image_size": self.image_size,
            "num_channels": self.num_channels,
            "centered": self.centered,
            "nf": self.nf,
            "ch_mult": join(&self.ch_mult),
            "num_res_blocks": self.num_res_blocks,
            "attn_resolutions": join(&self.attn_resolutions),
            "dropout": self.dropout,
            "fir_kernel": "1,3,3,1",
            "skip_rescale": self.skip_rescale,
            "fourier_scale": self.fourier_scale,
            "init_scale": self.init_scale,
            "scale_by_sigma": self.scale_by_sigma,
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "num_scales": self.num_scales,
        });
        if let Value::Object(map) = &mut obj {
            for (key, value) in FIXED {
                map.insert((*key).into(), value.json());
            }
        }
        obj
    }
}

/// A list of non-negative integers: a JSON list, a comma-separated string or one integer.
fn list(value: &Value, key: &str, ctx: &str) -> Result<Vec<usize>> {
    let one = |v: &Value| -> Result<usize> {
        match v.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 1e15 => Ok(f as usize),
            _ => bail!("{ctx}{key}: {v} is not a non-negative integer"),
        }
    };
    match value {
        Value::Array(items) => items.iter().map(one).collect(),
        Value::String(s) if s.trim().is_empty() => Ok(Vec::new()),
        Value::String(s) => s
            .split(',')
            .map(|part| {
                part.trim()
                    .parse::<usize>()
                    .with_context(|| format!("{ctx}{key}: `{part}` is not an integer in \"{s}\""))
            })
            .collect(),
        v @ Value::Number(_) => Ok(vec![one(v)?]),
        v => bail!("{ctx}{key}: expected a list like [1, 2, 2] or \"1,2,2\", got {v}"),
    }
}

fn req_list(obj: &Map<String, Value>, key: &str, ctx: &str) -> Result<Vec<usize>> {
    let v = obj
        .get(key)
        .with_context(|| format!("{ctx}{key}: required field is missing"))?;
    list(v, key, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata::golden;
    use serde_json::json;

    fn err(value: Value) -> String {
        match NcsnppConfig::from_json(&value) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn golden_nested_form_reads_the_small_config() {
        let text = std::fs::read_to_string(golden("ncsnpp_small").join("config.json")).unwrap();
        let c = NcsnppConfig::from_json(&serde_json::from_str(&text).unwrap()).unwrap();
        assert_eq!((c.image_size, c.nf, c.num_res_blocks), (32, 16, 2));
        assert_eq!(c.ch_mult, vec![1, 2, 2]);
        assert_eq!(c.attn_resolutions, vec![16]);
        assert_eq!(c.resolutions(), vec![32, 16, 8]);
        assert!(!c.centered && c.skip_rescale && c.scale_by_sigma);
        assert_eq!(
            (c.sigma_min, c.sigma_max, c.num_scales),
            (0.01, 348.0, 2000)
        );
    }

    #[test]
    fn flat_form_with_strings_and_round_trip() {
        let c = NcsnppConfig::from_json(&json!({"arch": "ncsnpp", "image_size": 32, "nf": 16,
            "ch_mult": "1, 2,2", "num_res_blocks": 2, "attn_resolutions": 16}))
        .unwrap();
        assert_eq!(c.ch_mult, vec![1, 2, 2]);
        assert_eq!(c.attn_resolutions, vec![16]);
        assert_eq!(c.num_channels, 3);
        assert_eq!(NcsnppConfig::from_json(&c.to_json()).unwrap(), c);
        let f = NcsnppConfig::ffhq256();
        assert_eq!(NcsnppConfig::from_json(&f.to_json()).unwrap(), f);
    }

    #[test]
    fn unsupported_paths_and_bad_values_name_their_field() {
        let base = json!({"arch": "ncsnpp", "image_size": 32, "nf": 16, "ch_mult": [1, 2],
            "num_res_blocks": 1, "attn_resolutions": [16]});
        let with = |key: &str, v: Value| {
            let mut o = base.clone();
            o[key] = v;
            err(o)
        };
        assert!(with("resblock_type", json!("ddpm")).contains("resblock_type: only \"biggan\""));
        assert!(with("progressive", json!("residual")).contains("progressive: only"));
        assert!(with("embedding_type", json!("positional")).contains("embedding_type"));
        assert!(with("fir", json!(false)).contains("fir: only true"));
        assert!(with("fir_kernel", json!([1, 1])).contains("fir_kernel"));
        assert!(with("ch_mult", json!("1,x")).contains("ch_mult"));
        assert!(with("ch_mult", json!([1, 0])).contains("ch_mult"));
        assert!(with("image_size", json!(31)).contains("image_size: 31 is not divisible"));
        assert!(with("nff", json!(3)).contains("nff: unknown"));
        assert!(with("skip_rescale", json!(1)).contains("skip_rescale"));
        assert!(with("sigma_min", json!(0)).contains("sigma_min"));
        let e = err(json!({"config": {"model": {"nf": 16}}}));
        assert!(e.contains("config.data: required section"), "{e}");
        let e = err(json!({"config": {"model": {"nf": 16}, "data": {"image_size": 32}}}));
        assert!(e.contains("config.model.num_res_blocks: required"), "{e}");
    }
}
