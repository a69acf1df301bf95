#![no_main]
//! See `keel::fuzzing::message`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| keel::fuzzing::message(data));
