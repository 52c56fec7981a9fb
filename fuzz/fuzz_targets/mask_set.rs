//! The mask_set target: see shears_fuzz_checks::mask_set.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shears_fuzz_checks::mask_set(data));
