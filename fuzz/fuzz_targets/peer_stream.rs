#![no_main]
//! See `keel_harness::fuzz::peer_stream`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_harness::fuzz::peer_stream(data));
