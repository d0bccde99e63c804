//! libFuzzer entry for `emonav::fuzz::sdp` (src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emonav::fuzz::sdp(data));
