//! The whole checkpoint path: zip directory, data.pkl, interpretation, tensor gathering and
//! the export checks (config inference against the built-ins).
//!
//! Shared by the libFuzzer binary (fuzz_targets/) and the corpus replay in CI
//! (host/tests/fault_fuzz_replay.rs).

use tweedie_host::convert::{convert, Checkpoint, ConvertOptions};
use tweedie_nn::weights::meta::WeightsSet;

/// One input.
pub fn run(data: &[u8]) {
    let Ok(ckpt) = Checkpoint::from_bytes(data.to_vec(), "fuzz.pt".into()) else {
        return;
    };
    if let Ok(contents) = ckpt.contents() {
        for set in [WeightsSet::Model, WeightsSet::Ema] {
            for (name, t) in contents.select(set).unwrap_or_default() {
                let _ = ckpt.tensor_bytes(&t, &name);
            }
        }
    }
    let _ = convert(&ckpt, &ConvertOptions::default());
}
