//! The whole checkpoint path: zip directory, data.pkl, interpretation, tensor gathering and
//! the export checks (config inference against the built-ins).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tweedie_host::convert::{convert, Checkpoint, ConvertOptions};
use tweedie_nn::weights::meta::WeightsSet;

fuzz_target!(|data: &[u8]| {
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
});
