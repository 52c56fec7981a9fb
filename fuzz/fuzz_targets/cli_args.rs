//! The `--pattern` and `--sparsity` parsers of the `shears` binary: any string gives a
//! value or an error, and every value satisfies its type's invariants.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shears_fuzz_checks::cli_args(data));
