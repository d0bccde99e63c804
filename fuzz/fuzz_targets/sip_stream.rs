//! libFuzzer entry for `emonav::fuzz::sip_stream` (src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emonav::fuzz::sip_stream(data));
