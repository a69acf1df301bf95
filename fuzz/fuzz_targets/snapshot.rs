#![no_main]
//! See `keel_harness::fuzz::snapshot`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_harness::fuzz::snapshot(data));
