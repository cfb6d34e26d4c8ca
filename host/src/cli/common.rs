//! Pieces shared by subcommands: choosing the model config, thread count, precision, and
//! reading MNIST onto a model's shape.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::errln;
use tweedie_nn::data::{DataRange, Dataset, MnistSplit, Preprocess};
use tweedie_nn::model::config::{ModelConfig, BUILTIN_NAMES};
use tweedie_nn::weights::{Precision, WeightsMeta};

/// The config from `--config` (file or built-in name), else from the weights' `tweedie.config`.
/// A flag that differs from the metadata wins with a one-line warning (formats.md §3).
pub fn resolve_config(
    flag: Option<&str>,
    meta: &WeightsMeta,
    weights_label: &str,
) -> Result<ModelConfig> {
    let from_meta = match &meta.config {
        Some(text) => Some(
            ModelConfig::from_json_str(text)
                .with_context(|| format!("{weights_label}: metadata tweedie.config"))?,
        ),
        None => None,
    };
    match (flag, from_meta) {
        (Some(spec), from_meta) => {
            let config = ModelConfig::load(spec)?;
            if from_meta.is_some_and(|m| m != config) {
                errln!("warning: --config {spec} differs from tweedie.config in {weights_label}; using --config");
            }
            Ok(config)
        }
        (None, Some(config)) => Ok(config),
        (None, None) => anyhow::bail!(
            "{weights_label} has no tweedie.config metadata; pass --config C.json or a built-in name ({})",
            BUILTIN_NAMES.join(", ")
        ),
    }
}

/// `--threads`, defaulting to the available parallelism.
pub fn threads(flag: Option<usize>) -> usize {
    flag.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `--f16` → weight storage precision.
pub fn precision(f16: bool) -> Precision {
    if f16 {
        Precision::F16
    } else {
        Precision::F32
    }
}

/// A count with thousands separators (93,563,910).
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The MNIST split in `dir` (IDX files); errors start with `flag`, the option that named it.
pub fn load_mnist(dir: &Path, split: MnistSplit, flag: &str) -> Result<Dataset> {
    Dataset::mnist(dir, split, false)
        .with_context(|| format!("{flag}: MNIST files (scripts/fetch-mnist.sh)"))
}

/// The preprocessing that maps `ds` onto a C×size×size model in `range`: centred padding.
pub fn preprocess(
    ds: &Dataset,
    channels: usize,
    size: usize,
    range: DataRange,
) -> Result<Preprocess> {
    let (h, w) = (ds.height, ds.width);
    if channels != ds.channels || h != w || size < h || !(size - h).is_multiple_of(2) {
        bail!(
            "the data are {}x{h}x{w} images; a {channels}x{size}x{size} model needs the same \
             channels and a size that pads them evenly",
            ds.channels
        );
    }
    Ok(Preprocess {
        range,
        pad: (size - h) / 2,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping() {
        assert_eq!(grouped(93_563_910), "93,563,910");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
    }

    #[test]
    fn config_from_flag_metadata_or_error() {
        let meta = WeightsMeta {
            config: Some(
                tweedie_nn::model::adm::AdmConfig::ffhq256()
                    .to_json()
                    .to_string(),
            ),
            ..WeightsMeta::default()
        };
        assert!(resolve_config(None, &meta, "w").is_ok());
        assert!(resolve_config(Some("adm-ffhq256"), &meta, "w").is_ok());
        let e = format!(
            "{:#}",
            resolve_config(None, &WeightsMeta::default(), "w").unwrap_err()
        );
        assert!(
            e.contains("w has no tweedie.config metadata; pass --config"),
            "{e}"
        );
        let bad = WeightsMeta {
            config: Some("{\"arch\": \"x\"}".into()),
            ..WeightsMeta::default()
        };
        let e = format!("{:#}", resolve_config(None, &bad, "w").unwrap_err());
        assert!(
            e.contains("w: metadata tweedie.config: arch: unknown"),
            "{e}"
        );
    }
}
