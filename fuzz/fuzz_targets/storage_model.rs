#![no_main]
//! See `keel::fuzzing::storage_model`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel::fuzzing::storage_model(data));
