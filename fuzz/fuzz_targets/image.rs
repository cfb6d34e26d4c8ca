//! libFuzzer entry of fuzz/targets/image.rs.
#![no_main]

#[path = "../targets/image.rs"]
mod target;

libfuzzer_sys::fuzz_target!(|data: &[u8]| target::run(data));
