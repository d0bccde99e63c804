//! libFuzzer entry for `emonav::fuzz::sip_datagram` (src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emonav::fuzz::sip_datagram(data));
