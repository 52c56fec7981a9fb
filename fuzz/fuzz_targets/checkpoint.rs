//! The safetensors reading path of the `shears` binary: header, dtypes, offsets, and
//! decoding every floating tensor.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shears_fuzz_checks::checkpoint(data));
