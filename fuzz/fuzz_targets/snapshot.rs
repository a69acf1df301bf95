#![no_main]
//! See `keel::fuzzing::snapshot`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel::fuzzing::snapshot(data));
