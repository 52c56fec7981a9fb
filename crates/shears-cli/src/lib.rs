//! The library half of the `shears` binary: checkpoint reading and argument parsing.
//!
//! These are the parts of the command-line tool that take outside input, kept in a
//! library so that the fuzz targets in `fuzz/` and other tools run exactly the code
//! the binary runs. For pruning in your own program, use `shears-strategies` instead.

pub mod checkpoint;
pub mod parse;
