//! Mask files: a model's masks by tensor name.
//!
//! The mask-set format is shears' [envelope](shears_core::envelope) with the tag
//! `b"SHEARSMS"` around the list of `(name, mask)` pairs, in the order they were
//! written; each mask is in shears' own layout (bit-packed, nalgebra's column-major
//! order, for the tensor's matrix view).

use std::path::Path;

use shears_core::{FormatError, Mask, envelope};

use crate::error::{Error, Result};

/// The magic tag of a mask-set file.
pub const MASK_SET_MAGIC: &[u8; 8] = b"SHEARSMS";
/// The mask-set format version this build writes and reads.
pub const MASK_SET_VERSION: u32 = 1;

/// The mask-set bytes of `masks`.
pub fn encode_mask_set(masks: &[(String, Mask)]) -> Vec<u8> {
    envelope::seal(MASK_SET_MAGIC, MASK_SET_VERSION, masks)
}

/// The masks of a mask-set file's bytes, in the order they were written; every mask is
/// validated as [`Mask::from_bytes`] validates one.
///
/// # Errors
/// [`shears_core::Error::Format`] for a bad envelope or a name that appears twice;
/// the masks' own shape errors.
///
/// ```
/// use shears_core::Mask;
/// use shears_io::{decode_mask_set, encode_mask_set};
///
/// let masks = vec![("fc.weight".to_string(), Mask::from_fn(2, 3, |r, c| r == c)?)];
/// assert_eq!(decode_mask_set(&encode_mask_set(&masks))?, masks);
/// # Ok::<(), shears_core::Error>(())
/// ```
pub fn decode_mask_set(bytes: &[u8]) -> shears_core::Result<Vec<(String, Mask)>> {
    let masks: Vec<(String, Mask)> = envelope::open(MASK_SET_MAGIC, MASK_SET_VERSION, bytes)?;
    let mut names: Vec<&str> = masks.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
        return Err(
            FormatError::Corrupted { reason: format!("mask `{}` appears twice", pair[0]) }.into()
        );
    }
    Ok(masks)
}

/// Reads a mask-set file.
///
/// # Errors
/// [`Error::Io`] if it cannot be read, [`Error::Masks`] if it is not a valid mask set.
pub fn read_mask_set(path: &Path) -> Result<Vec<(String, Mask)>> {
    crate::paths::require_regular_file(path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    decode_mask_set(&bytes).map_err(|source| Error::Masks { path: path.to_owned(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_and_foreign_bytes_are_refused() {
        let m = Mask::all_kept(1, 2).unwrap();
        let twice = vec![("a".to_string(), m.clone()), ("a".to_string(), m.clone())];
        assert!(decode_mask_set(&encode_mask_set(&twice)).is_err());
        assert!(decode_mask_set(&m.to_bytes()).is_err());
        let once = vec![("a".to_string(), m)];
        let bytes = encode_mask_set(&once);
        assert_eq!(&bytes[..8], MASK_SET_MAGIC);
        assert!(decode_mask_set(&bytes[..bytes.len() - 1]).is_err());
    }
}
