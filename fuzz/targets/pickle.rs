//! The pickle interpreter alone (no zip, so no CRC stands between the fuzzer and the
//! opcodes), then the checkpoint interpretation of whatever it returns.
//!
//! Shared by the libFuzzer binary (fuzz_targets/) and the corpus replay in CI
//! (host/tests/fault_fuzz_replay.rs).

use tweedie_host::convert::checkpoint::interpret;
use tweedie_host::convert::pickle::{unpickle, Limits};
use tweedie_nn::weights::meta::WeightsSet;

/// One input.
pub fn run(data: &[u8]) {
    let limits = Limits {
        storage_bytes: 1 << 16,
    };
    let Ok(pickle) = unpickle(data, limits) else {
        return;
    };
    if let Ok(contents) = interpret(&pickle) {
        for set in [WeightsSet::Model, WeightsSet::Ema] {
            let _ = contents.select(set);
        }
    }
}
