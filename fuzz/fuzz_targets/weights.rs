//! libFuzzer entry of fuzz/targets/weights.rs.
#![no_main]

#[path = "../targets/weights.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
