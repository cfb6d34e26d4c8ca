//! A safetensors weights file: header, `tweedie.*` metadata, the config it carries (or a
//! small ADM config), and the strict loader in both precisions.
//!
//! Shared by the libFuzzer binary (fuzz_targets/) and the corpus replay in CI
//! (host/tests/fault_fuzz_replay.rs).

use tweedie_host::convert::export::state_dict_spec;
use tweedie_nn::model::config::ModelConfig;
use tweedie_nn::tensors::SafetensorsFile;
use tweedie_nn::weights::{Precision, Weights, WeightsMeta};

/// A tiny ADM (one level, 32 channels: GroupNorm(32) needs 32) for files without
/// `tweedie.config`.
const SMALL_ADM: &str = r#"{"arch": "adm", "image_size": 8, "num_channels": 32,
  "num_res_blocks": 1, "channel_mult": "1", "attention_resolutions": "", "num_heads": 1,
  "learn_sigma": false, "in_channels": 1}"#;

/// One input.
pub fn run(data: &[u8]) {
    let Ok(file) = SafetensorsFile::from_bytes(data.to_vec(), "fuzz.safetensors".into()) else {
        return;
    };
    let Ok(map) = file.metadata() else {
        return;
    };
    let Ok(meta) = WeightsMeta::parse(&map) else {
        return;
    };
    let config = match &meta.config {
        Some(text) => ModelConfig::from_json_str(text),
        None => ModelConfig::from_json_str(SMALL_ADM),
    };
    let Ok(config) = config else {
        return;
    };
    let Ok(spec) = state_dict_spec(&config) else {
        return;
    };
    for precision in [Precision::F32, Precision::F16] {
        let _ = Weights::load(&file, &spec, precision);
    }
    if let Ok(names) = file
        .view()
        .map(|v| v.names().into_iter().map(String::from).collect::<Vec<_>>())
    {
        for name in names {
            let _ = file.tensor_f32(&name);
        }
    }
}
