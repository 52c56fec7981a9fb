//! The CSR file format (`SHEARCSR`) for every value and index width: whatever decodes
//! re-validates from its parts, round-trips, and multiplies like its dense form.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shears_fuzz_checks::csr(data));
