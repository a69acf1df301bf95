#![no_main]
//! See `keel_harness::fuzz::record`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_harness::fuzz::record(data));
