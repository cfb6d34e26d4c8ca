//! `tweedie.*` metadata of a weights file (formats.md §3). All values are strings in the file;
//! here they are parsed and checked, each error naming its key.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

/// Which scale the network works on (`tweedie.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ε-network on the VP scale.
    Vp,
    /// Network on the VE scale.
    Ve,
}

/// What the network outputs (`tweedie.output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetOutput {
    /// ε: D = x − σ·ε.
    Eps,
    /// Score: D = x + σ²·s.
    Score,
    /// The denoised estimate D itself.
    Denoised,
}

/// The model's data range (`tweedie.data_range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRange {
    /// `-1,1` (VP models).
    MinusOneOne,
    /// `0,1` (VE models).
    ZeroOne,
}

/// Which parameter set was exported (`tweedie.weights_set`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsSet {
    /// Exponential moving average.
    Ema,
    /// The raw model parameters of the checkpoint.
    Model,
    /// Untrained or otherwise unprocessed.
    Raw,
}

macro_rules! string_enum {
    ($ty:ident { $($variant:ident = $s:literal),+ }) => {
        impl FromStr for $ty {
            type Err = anyhow::Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok($ty::$variant),)+
                    _ => bail!("`{s}` is not one of {}", [$($s),+].join(", ")),
                }
            }
        }
        impl $ty {
            /// The string form used in metadata and on the command line.
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $s,)+ }
            }
        }
        impl std::fmt::Display for $ty {
            /// The user-facing string form (never the Rust variant name).
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(Kind { Vp = "vp", Ve = "ve" });
string_enum!(NetOutput { Eps = "eps", Score = "score", Denoised = "denoised" });
string_enum!(DataRange { MinusOneOne = "-1,1", ZeroOne = "0,1" });
string_enum!(WeightsSet { Ema = "ema", Model = "model", Raw = "raw" });

/// Parsed `tweedie.*` metadata; every field is optional (the golden files carry none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightsMeta {
    /// `tweedie.config`: the flat config JSON (parsed by the caller, which knows the arch).
    pub config: Option<String>,
    /// `tweedie.kind`.
    pub kind: Option<Kind>,
    /// `tweedie.output`.
    pub output: Option<NetOutput>,
    /// `tweedie.noise_input`: `t`, `sigma`, `log_sigma` or another documented name.
    pub noise_input: Option<String>,
    /// `tweedie.data_range`.
    pub data_range: Option<DataRange>,
    /// `tweedie.sigma_min`.
    pub sigma_min: Option<f64>,
    /// `tweedie.sigma_max`.
    pub sigma_max: Option<f64>,
    /// `tweedie.weights_set`.
    pub weights_set: Option<WeightsSet>,
    /// `tweedie.source`: free text.
    pub source: Option<String>,
    /// `tweedie.train`: JSON of the training run.
    pub train: Option<String>,
    /// `tweedie.*` keys this version does not know (kept, reported by the caller if it wishes).
    pub unknown: Vec<String>,
}

const PREFIX: &str = "tweedie.";

impl WeightsMeta {
    /// Parses the `tweedie.*` entries of a safetensors `__metadata__` map; other keys are ignored.
    pub fn parse(map: &HashMap<String, String>) -> Result<WeightsMeta> {
        let mut meta = WeightsMeta::default();
        let mut keys: Vec<&String> = map.keys().filter(|k| k.starts_with(PREFIX)).collect();
        keys.sort();
        for key in keys {
            let value = map[key].clone();
            let parsed = meta.set(&key[PREFIX.len()..], value);
            parsed.with_context(|| format!("metadata {key}"))?;
        }
        if let (Some(lo), Some(hi)) = (meta.sigma_min, meta.sigma_max) {
            if lo >= hi {
                bail!("metadata tweedie.sigma_min {lo} is not below tweedie.sigma_max {hi}");
            }
        }
        Ok(meta)
    }

    fn set(&mut self, key: &str, value: String) -> Result<()> {
        match key {
            "config" => {
                serde_json::from_str::<serde_json::Value>(&value).context("not valid JSON")?;
                self.config = Some(value);
            }
            "kind" => self.kind = Some(value.parse()?),
            "output" => self.output = Some(value.parse()?),
            "noise_input" => self.noise_input = Some(value),
            "data_range" => self.data_range = Some(value.parse()?),
            "sigma_min" => self.sigma_min = Some(positive_f64(&value)?),
            "sigma_max" => self.sigma_max = Some(positive_f64(&value)?),
            "weights_set" => self.weights_set = Some(value.parse()?),
            "source" => self.source = Some(value),
            "train" => {
                serde_json::from_str::<serde_json::Value>(&value).context("not valid JSON")?;
                self.train = Some(value);
            }
            other => self.unknown.push(format!("{PREFIX}{other}")),
        }
        Ok(())
    }

    /// The `__metadata__` map for these values (inverse of [`WeightsMeta::parse`]).
    pub fn to_map(&self) -> HashMap<String, String> {
        let entries = [
            ("config", self.config.clone()),
            ("kind", self.kind.map(|k| k.as_str().to_string())),
            ("output", self.output.map(|k| k.as_str().to_string())),
            ("noise_input", self.noise_input.clone()),
            (
                "data_range",
                self.data_range.map(|k| k.as_str().to_string()),
            ),
            ("sigma_min", self.sigma_min.map(|s| s.to_string())),
            ("sigma_max", self.sigma_max.map(|s| s.to_string())),
            (
                "weights_set",
                self.weights_set.map(|k| k.as_str().to_string()),
            ),
            ("source", self.source.clone()),
            ("train", self.train.clone()),
        ];
        entries
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (format!("{PREFIX}{k}"), v)))
            .collect()
    }
}

fn positive_f64(s: &str) -> Result<f64> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => bail!("`{s}` is not a positive number"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn full_metadata_round_trips() {
        let m = map(&[
            ("tweedie.config", "{\"arch\": \"adm\"}"),
            ("tweedie.kind", "vp"),
            ("tweedie.output", "eps"),
            ("tweedie.noise_input", "t"),
            ("tweedie.data_range", "-1,1"),
            ("tweedie.sigma_min", "0.0100005"),
            ("tweedie.sigma_max", "157.40728"),
            ("tweedie.weights_set", "ema"),
            ("tweedie.source", "converted from ffhq_10m.pt"),
            ("format", "pt"),
        ]);
        let meta = WeightsMeta::parse(&m).unwrap();
        assert_eq!(meta.kind, Some(Kind::Vp));
        assert_eq!(meta.output, Some(NetOutput::Eps));
        assert_eq!(meta.data_range, Some(DataRange::MinusOneOne));
        assert_eq!(meta.sigma_max, Some(157.40728));
        assert_eq!(WeightsMeta::parse(&meta.to_map()).unwrap(), meta);
    }

    #[test]
    fn bad_values_name_their_key() {
        let e =
            |k: &str, v: &str| format!("{:#}", WeightsMeta::parse(&map(&[(k, v)])).unwrap_err());
        assert!(
            e("tweedie.kind", "vq").contains("metadata tweedie.kind: `vq` is not one of vp, ve")
        );
        assert!(e("tweedie.data_range", "0,255").contains("tweedie.data_range"));
        assert!(e("tweedie.sigma_min", "-1").contains("tweedie.sigma_min"));
        assert!(e("tweedie.config", "{").contains("tweedie.config: not valid JSON"));
        let both = map(&[("tweedie.sigma_min", "2"), ("tweedie.sigma_max", "1")]);
        assert!(format!("{:#}", WeightsMeta::parse(&both).unwrap_err()).contains("not below"));
        let unknown = WeightsMeta::parse(&map(&[("tweedie.colour", "blue")])).unwrap();
        assert_eq!(unknown.unknown, vec!["tweedie.colour".to_string()]);
    }
}
