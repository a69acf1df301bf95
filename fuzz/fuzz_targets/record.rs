#![no_main]
//! See `keel::fuzzing::record`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel::fuzzing::record(data));
