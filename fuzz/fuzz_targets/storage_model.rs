#![no_main]
//! See `keel_harness::fuzz::storage_model`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_harness::fuzz::storage_model(data));
