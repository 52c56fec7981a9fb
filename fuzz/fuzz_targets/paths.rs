//! The paths target: see shears_fuzz_checks::paths.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shears_fuzz_checks::paths(data));
