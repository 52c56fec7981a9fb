//! The block-sparse file format (`SHEARBSR`): whatever decodes re-validates from its
//! parts, round-trips, and multiplies like its dense form.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shears_fuzz_checks::block_sparse(data));
