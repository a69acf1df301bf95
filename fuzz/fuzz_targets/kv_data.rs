#![no_main]
//! See `keel_harness::fuzz::kv_data`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_harness::fuzz::kv_data(data));
