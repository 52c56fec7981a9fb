//! Mask persistence: serde, and a bincode 2 file format with a magic tag and a version.
//!
//! The file is shears' [envelope](crate::envelope) with the tag `b"SHEARSMK"` around
//! `(nrows, ncols, words)`. Loading validates the envelope (tag, version, canonical
//! bytes, nothing trailing), then that the words hold exactly `nrows * ncols` bits with
//! clean padding. Serde deserialisation runs the same shape checks.

use std::io::{Read, Write};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::envelope;
use crate::error::{Error, FormatError, Result};
use crate::mask::Mask;

/// The magic tag that starts a stored mask.
pub const MASK_MAGIC: &[u8; 8] = b"SHEARSMK";
/// The mask format version this build writes and reads.
pub const MASK_FORMAT_VERSION: u32 = 1;

#[derive(Serialize)]
struct MaskRef<'a> {
    nrows: u64,
    ncols: u64,
    words: &'a [u64],
}

#[derive(Serialize, Deserialize)]
struct MaskOwned {
    nrows: u64,
    ncols: u64,
    words: Vec<u64>,
}

impl TryFrom<MaskOwned> for Mask {
    type Error = Error;
    fn try_from(m: MaskOwned) -> Result<Mask> {
        let dim = |d: u64| {
            usize::try_from(d).map_err(|_| Error::DimensionOverflow {
                dims: vec![m.nrows as usize, m.ncols as usize],
            })
        };
        Mask::from_words(dim(m.nrows)?, dim(m.ncols)?, m.words)
    }
}

impl Serialize for Mask {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        MaskRef { nrows: self.nrows() as u64, ncols: self.ncols() as u64, words: self.as_words() }
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Mask {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Mask, D::Error> {
        // The envelope reports what a custom error says as a corrupted payload of a mask
        // file: a format error's own words, without a second "invalid mask file".
        Mask::try_from(MaskOwned::deserialize(deserializer)?).map_err(|e| match e {
            Error::Format(e) => serde::de::Error::custom(e),
            other => serde::de::Error::custom(other),
        })
    }
}

impl Mask {
    /// Encodes the mask in shears' mask format (magic tag, version, bincode payload).
    ///
    /// ```
    /// use shears_core::Mask;
    /// let mask = Mask::from_fn(3, 5, |r, c| (r + c) % 2 == 0)?;
    /// let bytes = mask.to_bytes();
    /// assert_eq!(&bytes[..8], b"SHEARSMK");
    /// assert_eq!(Mask::from_bytes(&bytes)?, mask);
    /// assert!(Mask::from_bytes(&bytes[..bytes.len() - 1]).is_err());
    /// # Ok::<(), shears_core::Error>(())
    /// ```
    pub fn to_bytes(&self) -> Vec<u8> {
        let payload = MaskRef {
            nrows: self.nrows() as u64,
            ncols: self.ncols() as u64,
            words: self.as_words(),
        };
        envelope::seal(MASK_MAGIC, MASK_FORMAT_VERSION, &payload)
    }

    /// Decodes and validates a mask written by [`Mask::to_bytes`].
    ///
    /// # Errors
    /// The envelope's errors ([`FormatError::BadMagic`], [`FormatError::UnsupportedVersion`],
    /// [`FormatError::Corrupted`], [`FormatError::TrailingBytes`],
    /// [`FormatError::NonCanonical`]), then [`FormatError::WordCount`] and
    /// [`FormatError::DirtyPadding`], all wrapped in [`Error::Format`];
    /// [`Error::DimensionOverflow`] for a shape whose size overflows.
    pub fn from_bytes(bytes: &[u8]) -> Result<Mask> {
        let owned: MaskOwned = envelope::open(MASK_MAGIC, MASK_FORMAT_VERSION, bytes)?;
        Mask::try_from(owned)
    }

    /// Writes [`Mask::to_bytes`] to `writer`.
    ///
    /// # Errors
    /// [`FormatError::Io`] if the writer fails.
    pub fn write_to(&self, mut writer: impl Write) -> Result<()> {
        writer
            .write_all(&self.to_bytes())
            .map_err(|e| FormatError::Io { reason: e.to_string() }.into())
    }

    /// Reads a whole stored mask from `reader`.
    ///
    /// # Errors
    /// [`FormatError::Io`] if reading fails, then as [`Mask::from_bytes`].
    pub fn read_from(mut reader: impl Read) -> Result<Mask> {
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(|e| FormatError::Io { reason: e.to_string() })?;
        Mask::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Mask {
        Mask::from_fn(7, 11, |r, c| (r * 3 + c) % 4 != 0).unwrap()
    }

    #[track_caller]
    fn check_format_error(bytes: &[u8], matches: impl Fn(&FormatError) -> bool) {
        match Mask::from_bytes(bytes) {
            Err(Error::Format(e)) => assert!(matches(&e), "{e:?}"),
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn round_trip() {
        for m in [sample(), Mask::all_kept(0, 0).unwrap(), Mask::all_pruned(64, 1).unwrap()] {
            assert_eq!(Mask::from_bytes(&m.to_bytes()).unwrap(), m);
            let mut buf = Vec::new();
            m.write_to(&mut buf).unwrap();
            assert_eq!(Mask::read_from(buf.as_slice()).unwrap(), m);
        }
    }

    #[test]
    fn rejects_bad_magic_and_version() {
        let mut bytes = sample().to_bytes();
        check_format_error(&bytes[..4], |e| matches!(e, FormatError::BadMagic { .. }));
        check_format_error(b"NOTAMASK\x01\0\0\0", |e| matches!(e, FormatError::BadMagic { .. }));
        check_format_error(&bytes[..10], |e| matches!(e, FormatError::Corrupted { .. }));
        bytes[8] = 9;
        check_format_error(&bytes, |e| {
            matches!(e, FormatError::UnsupportedVersion { found: 9, supported: 1 })
        });
    }

    #[test]
    fn rejects_truncation_and_trailing_bytes() {
        let bytes = sample().to_bytes();
        for cut in 12..bytes.len() {
            check_format_error(&bytes[..cut], |e| matches!(e, FormatError::Corrupted { .. }));
        }
        let mut long = bytes.clone();
        long.push(0);
        check_format_error(&long, |e| matches!(e, FormatError::TrailingBytes { count: 1 }));
    }

    #[test]
    fn rejects_lying_shape() {
        // A payload whose shape disagrees with its words.
        let mut bytes = MASK_MAGIC.to_vec();
        bytes.extend_from_slice(&MASK_FORMAT_VERSION.to_le_bytes());
        let words: &[u64] = &[0];
        let payload = MaskRef { nrows: 100, ncols: 100, words };
        bincode::serde::encode_into_std_write(&payload, &mut bytes, bincode::config::standard())
            .unwrap();
        check_format_error(&bytes, |e| {
            matches!(e, FormatError::WordCount { expected: 157, found: 1, .. })
        });
    }

    #[test]
    fn huge_claimed_length_does_not_allocate() {
        let mut bytes = MASK_MAGIC.to_vec();
        bytes.extend_from_slice(&MASK_FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&[2, 2]); // nrows, ncols as varints
        bytes.push(253); // u64 length marker in bincode's varint
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        check_format_error(&bytes, |e| matches!(e, FormatError::Corrupted { .. }));
    }

    #[test]
    fn read_error_is_io() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk on fire"))
            }
        }
        assert!(matches!(Mask::read_from(Failing), Err(Error::Format(FormatError::Io { .. }))));
    }
}
