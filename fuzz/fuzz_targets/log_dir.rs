#![no_main]
//! See `keel_harness::fuzz::log_dir`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_harness::fuzz::log_dir(data));
