//! libFuzzer entry for `emonav::fuzz::endpoint` (src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emonav::fuzz::endpoint(data));
