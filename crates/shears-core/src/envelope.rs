//! The envelope of every binary format shears defines: an 8-byte magic tag, the format
//! version as a little-endian `u32`, then the bincode 2 (standard configuration)
//! encoding of the payload.
//!
//! [`seal`] writes it; [`open`] checks the tag and the version, decodes the payload, and
//! requires the bytes to be *canonical*: bincode's variable-length integers accept
//! over-long encodings of a value (`251, 75, 0` for `75`), so [`open`] re-encodes what it
//! decoded and rejects anything that does not come back byte for byte. A stored matrix or
//! mask therefore has exactly one encoding, and whatever opens re-encodes to its bytes.
//!
//! ```
//! use shears_core::envelope;
//!
//! let bytes = envelope::seal(b"EXAMPLE1", 3, &(7u32, vec![1.5f32, 2.0]));
//! assert_eq!(&bytes[..8], b"EXAMPLE1");
//! let (n, v): (u32, Vec<f32>) = envelope::open(b"EXAMPLE1", 3, &bytes)?;
//! assert_eq!((n, v), (7, vec![1.5, 2.0]));
//! assert!(envelope::open::<(u32, Vec<f32>)>(b"EXAMPLE1", 4, &bytes).is_err());
//! # Ok::<(), shears_core::FormatError>(())
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::FormatError;

/// Bytes before the payload: the tag and the version.
pub const HEADER_LEN: usize = 12;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Decodes a payload with a bound on what it may allocate. bincode allocates a string
/// or byte buffer of the length it reads before reading its bytes, so without a bound a
/// lying length would ask the allocator for up to 2^64 bytes. No value of a shears
/// format takes more than 8 bytes in memory for each byte it takes in the file (a `u64`
/// or `usize` varint is at least one byte), so the bound is eight times the payload's
/// size (plus room for small payloads), rounded up to a power of two: bincode's limit is
/// a type parameter, so it is picked from a ladder.
fn decode_bounded<P: DeserializeOwned>(
    body: &[u8],
) -> Result<(P, usize), bincode::error::DecodeError> {
    let need = body.len().saturating_mul(8).saturating_add(1 << 12);
    macro_rules! ladder {
        ($($bits:literal),*) => {
            $(
                if need <= 1usize << $bits {
                    let config = config().with_limit::<{ 1usize << $bits }>();
                    return bincode::serde::decode_from_slice(body, config);
                }
            )*
        };
    }
    ladder!(16, 20, 24, 28, 32, 36, 40, 44);
    bincode::serde::decode_from_slice(body, config().with_limit::<{ 1usize << 48 }>())
}

/// What a decoding error says about the bytes, in words: bincode's own messages are its
/// variants' debug forms (`UnexpectedEnd { additional: 1 }`).
fn describe(e: &bincode::error::DecodeError) -> String {
    use bincode::error::DecodeError as E;
    match e {
        E::UnexpectedEnd { .. } => "the payload ends early (the file is cut short)".into(),
        E::LimitExceeded => "a length is larger than the file could hold".into(),
        E::Utf8 { .. } => "a name is not UTF-8".into(),
        E::OutsideUsizeRange(v) => format!("a length of {v} does not fit this machine"),
        E::InvalidBooleanValue(v) => format!("{v} where a boolean was expected"),
        E::Other(reason) => (*reason).to_owned(),
        E::OtherString(reason) => reason.clone(),
        other => other.to_string(),
    }
}

/// Encodes `payload` behind `magic` and `version`.
pub fn seal<P: Serialize + ?Sized>(magic: &[u8; 8], version: u32, payload: &P) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 64);
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    // Serde types of shears encode into memory without a failure mode.
    if let Err(e) = bincode::serde::encode_into_std_write(payload, &mut out, config()) {
        unreachable!("encoding into memory cannot fail: {e}");
    }
    out
}

/// Decodes a payload sealed with `magic` and `version`.
///
/// Serde's sequence visitors cap what they pre-allocate, and strings and buffers are
/// held to eight times the payload's size, so a lying length cannot make the allocator
/// fail.
///
/// # Errors
/// [`FormatError::BadMagic`], [`FormatError::UnsupportedVersion`],
/// [`FormatError::Corrupted`] (truncated or undecodable), [`FormatError::TrailingBytes`],
/// and [`FormatError::NonCanonical`] for bytes that decode but are not the encoding of
/// what they decode to.
pub fn open<P: Serialize + DeserializeOwned>(
    magic: &'static [u8; 8],
    version: u32,
    bytes: &[u8],
) -> Result<P, FormatError> {
    if bytes.get(..magic.len()) != Some(magic.as_slice()) {
        return Err(FormatError::BadMagic { expected: magic });
    }
    let found = bytes
        .get(magic.len()..HEADER_LEN)
        .and_then(|v| v.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| FormatError::Corrupted { reason: "truncated header".into() })?;
    if found != version {
        return Err(FormatError::UnsupportedVersion { found, supported: version });
    }
    let body = &bytes[HEADER_LEN..];
    let (payload, read): (P, usize) =
        decode_bounded(body).map_err(|e| FormatError::Corrupted { reason: describe(&e) })?;
    if read != body.len() {
        return Err(FormatError::TrailingBytes { count: body.len() - read });
    }
    let canonical = bincode::serde::encode_to_vec(&payload, config())
        .map_err(|e| FormatError::Corrupted { reason: e.to_string() })?;
    if canonical != body {
        return Err(FormatError::NonCanonical);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_long_integers_are_refused() {
        let bytes = seal(b"TESTTEST", 1, &75u64);
        assert_eq!(&bytes[HEADER_LEN..], &[75]);
        assert_eq!(open::<u64>(b"TESTTEST", 1, &bytes), Ok(75));
        // 251 announces a u16 varint: the same value, two bytes longer.
        let mut long = bytes[..HEADER_LEN].to_vec();
        long.extend_from_slice(&[251, 75, 0]);
        assert_eq!(open::<u64>(b"TESTTEST", 1, &long), Err(FormatError::NonCanonical));
    }

    #[test]
    fn a_lying_string_length_is_an_error_not_an_allocation() {
        // A string claiming 2^60 bytes (varint tag 253: a u64 follows).
        let mut bytes = b"TESTTEST".to_vec();
        bytes.extend_from_slice(&1u32.to_le_bytes());
        bytes.push(253);
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        bytes.extend_from_slice(b"abc");
        assert!(matches!(
            open::<String>(b"TESTTEST", 1, &bytes),
            Err(FormatError::Corrupted { .. })
        ));
    }

    #[test]
    fn decoding_errors_are_described_in_words() {
        let bytes = seal(b"TESTTEST", 1, &vec![1u64 << 40, 2]);
        let cut = open::<Vec<u64>>(b"TESTTEST", 1, &bytes[..bytes.len() - 1]);
        assert!(
            matches!(&cut, Err(FormatError::Corrupted { reason }) if reason.contains("ends early")),
            "{cut:?}"
        );
        let mut not_utf8 = b"TESTTEST".to_vec();
        not_utf8.extend_from_slice(&1u32.to_le_bytes());
        not_utf8.extend_from_slice(&[2, 0xff, 0xfe]);
        let bad = open::<String>(b"TESTTEST", 1, &not_utf8);
        assert_eq!(bad, Err(FormatError::Corrupted { reason: "a name is not UTF-8".into() }));
    }

    #[test]
    fn header_errors() {
        let bytes = seal(b"TESTTEST", 2, &vec![1u8, 2, 3]);
        assert!(matches!(
            open::<Vec<u8>>(b"OTHERTAG", 2, &bytes),
            Err(FormatError::BadMagic { .. })
        ));
        assert!(matches!(
            open::<Vec<u8>>(b"TESTTEST", 1, &bytes),
            Err(FormatError::UnsupportedVersion { found: 2, supported: 1 })
        ));
        assert!(matches!(
            open::<Vec<u8>>(b"TESTTEST", 2, &bytes[..10]),
            Err(FormatError::Corrupted { .. })
        ));
        let mut long = bytes.clone();
        long.push(9);
        assert_eq!(
            open::<Vec<u8>>(b"TESTTEST", 2, &long),
            Err(FormatError::TrailingBytes { count: 1 })
        );
    }
}
