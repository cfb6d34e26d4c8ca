//! A training checkpoint (`host train --resume`): header, format, integrity hash, the strict
//! tensor and metadata checks and the step/data consistency, for a small fixed layout and a
//! data set of 5 examples (as the seeds); a file that loads must write back to bytes that
//! load to the same state.
//!
//! Shared by the libFuzzer binary (fuzz_targets/) and the corpus replay in CI
//! (host/tests/fault_fuzz_replay.rs).

use tweedie_nn::tensors::SafetensorsFile;
use tweedie_nn::train::checkpoint::{Integrity, TrainState};
use tweedie_nn::train::params::ParamLayout;

/// One input.
pub fn run(data: &[u8]) {
    let Ok(file) = SafetensorsFile::from_bytes(data.to_vec(), "fuzz.ckpt".into()) else {
        return;
    };
    let Ok(layout) = ParamLayout::new([("w", vec![2, 3]), ("b", vec![2])]) else {
        return;
    };
    let Ok((state, _)) = TrainState::from_file(&file, &layout, 5) else {
        return;
    };
    // What loads is finite and saves again; the copy is format 2 and verifies.
    assert!(state.params.iter().all(|v| v.is_finite()));
    assert!(state.ema.weights().iter().all(|v| v.is_finite()));
    if let Ok(bytes) = state.to_bytes(&layout) {
        let again = SafetensorsFile::from_bytes(bytes, "again".into()).unwrap();
        let (back, integrity) = TrainState::from_file(&again, &layout, 5).unwrap();
        assert_eq!(integrity, Integrity::Verified);
        assert!(back == state);
    }
}
