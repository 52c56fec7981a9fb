//! The sliced-ELLPACK file format (`SHEARSEL`) for every value and index width: whatever
//! decodes re-validates from its parts, round-trips, converts to the same CSR matrix, and
//! multiplies like its dense form.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shears_fuzz_checks::sliced_ell(data));
