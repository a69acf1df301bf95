#![no_main]
//! See `keel::fuzzing::hard_state`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel::fuzzing::hard_state(data));
