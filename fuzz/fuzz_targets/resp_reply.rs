#![no_main]
//! See `keel_harness::fuzz::resp_reply`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel_harness::fuzz::resp_reply(data));
