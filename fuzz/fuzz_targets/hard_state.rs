#![no_main]
//! See `keel_harness::fuzz::hard_state`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_harness::fuzz::hard_state(data));
