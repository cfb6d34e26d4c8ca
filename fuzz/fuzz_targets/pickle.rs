//! libFuzzer entry of fuzz/targets/pickle.rs.
#![no_main]

#[path = "../targets/pickle.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
