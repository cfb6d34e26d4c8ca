//! libFuzzer entry of fuzz/targets/train_checkpoint.rs.
#![no_main]

#[path = "../targets/train_checkpoint.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
