//! The pattern_fit target: see shears_fuzz_checks::pattern_fit.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shears_fuzz_checks::pattern_fit(data));
