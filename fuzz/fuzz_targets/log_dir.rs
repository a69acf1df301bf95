#![no_main]
//! See `keel::fuzzing::log_dir`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel::fuzzing::log_dir(data));
