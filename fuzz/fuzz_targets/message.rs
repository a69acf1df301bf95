#![no_main]
//! See `keel_harness::fuzz::message`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_harness::fuzz::message(data));
