//! The mask file format (`SHEARSMK`): whatever decodes is a valid mask that re-encodes to
//! the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shears_fuzz_checks::mask(data));
