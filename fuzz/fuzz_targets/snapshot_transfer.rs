#![no_main]
//! See `keel_harness::fuzz::snapshot_transfer`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_harness::fuzz::snapshot_transfer(data));
