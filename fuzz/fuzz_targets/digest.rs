//! libFuzzer entry for `emonav::fuzz::digest` (src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emonav::fuzz::digest(data));
