//! The narrow-valued formats (`SHEARNCS`, `SHEARNSE`, `SHEARNBS`, `SHEARNNM`) and dense int8
//! (`SHEARI8D`): whatever decodes re-validates from its parts, round-trips, and multiplies.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shears_fuzz_checks::narrow(data));
