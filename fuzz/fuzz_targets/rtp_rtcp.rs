//! libFuzzer entry for `emonav::fuzz::rtp_rtcp` (src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| emonav::fuzz::rtp_rtcp(data));
