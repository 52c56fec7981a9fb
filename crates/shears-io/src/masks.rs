//! Mask files: a model's masks by tensor name, in two formats.
//!
//! - **Torch masks**: a safetensors file holding, for each pruned weight `NAME`, a `u8`
//!   tensor `NAME_mask` of the weight's own shape, 1 where the weight is kept: the
//!   buffer `torch.nn.utils.prune` registers, which `prune.custom_from_mask` takes
//!   directly. [`torch_mask_name`], [`mask_bytes`] and [`mask_from_bytes`] convert.
//! - **Mask sets** (`SHEARSMS`): shears' [envelope](shears_core::envelope) around the
//!   list of `(name, mask)` pairs, in the order they were written; each mask is in
//!   shears' own layout (bit-packed, nalgebra's column-major order, for the tensor's
//!   matrix view).

use std::path::Path;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shears_core::{FormatError, Mask, envelope};

use crate::error::{Error, Result};

/// The name of weight `weight`'s mask tensor in a torch mask file.
///
/// ```
/// assert_eq!(shears_io::torch_mask_name("fc1.weight"), "fc1.weight_mask");
/// ```
pub fn torch_mask_name(weight: &str) -> String {
    format!("{weight}_mask")
}

/// The weight name a torch mask tensor's name stands for, if it is one.
pub fn weight_of_torch_mask(mask: &str) -> Option<&str> {
    mask.strip_suffix("_mask")
}

/// `mask` (of a weight's matrix view: a conv weight `[out, in, kh, kw]` as
/// `out x in·kh·kw`) as the bytes of its torch mask tensor: 0 or 1 per element, in the
/// weight's own (row-major) element order.
pub fn mask_bytes(mask: &Mask) -> Vec<u8> {
    let (rows, cols) = mask.shape();
    let mut bytes = Vec::with_capacity(mask.len());
    for r in 0..rows {
        bytes.extend((0..cols).map(|c| u8::from(mask.get(r, c) == Some(true))));
    }
    bytes
}

/// The mask of a weight of shape `dims` from its torch mask tensor's bytes (`u8` or
/// `bool`, one per element, row-major); the mask is of the weight's matrix view.
///
/// # Errors
/// [`Error::Shape`] for a byte count that is not the weight's element count, a shape
/// with no matrix view, or a byte that is neither 0 nor 1.
pub fn mask_from_bytes(name: &str, dims: &[usize], bytes: &[u8]) -> Result<Mask> {
    let shape_error = |reason: String| Error::Shape {
        tensor: torch_mask_name(name),
        shape: dims.to_vec(),
        reason,
    };
    let view = shears_core::WeightShape::from_dims(dims).map_err(|e| shape_error(e.to_string()))?;
    let (rows, cols) = view.matrix_shape();
    if bytes.len() != rows * cols {
        return Err(shape_error(format!("{} bytes for {} elements", bytes.len(), rows * cols)));
    }
    if let Some(at) = bytes.iter().position(|&b| b > 1) {
        return Err(shape_error(format!("element {at} is {}, not 0 or 1", bytes[at])));
    }
    Mask::from_fn(rows, cols, |r, c| bytes[r * cols + c] == 1)
        .map_err(|e| shape_error(e.to_string()))
}

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
    let entries: Vec<Entry> = envelope::open(MASK_SET_MAGIC, MASK_SET_VERSION, bytes)?;
    let masks: Vec<(String, Mask)> = entries.into_iter().map(|e| (e.name, e.mask)).collect();
    let mut names: Vec<&str> = masks.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
        return Err(
            FormatError::Corrupted { reason: format!("mask `{}` appears twice", pair[0]) }.into()
        );
    }
    Ok(masks)
}

/// One `(name, mask)` pair of a mask set, decoded so that a mask its words do not make
/// (a shape they do not fill, bits set past its end) is refused with its name.
struct Entry {
    name: String,
    mask: Mask,
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        (&self.name, &self.mask).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        /// A mask as `Mask` serialises itself: its shape and its bit-packed words.
        #[derive(Deserialize)]
        struct Words {
            nrows: u64,
            ncols: u64,
            words: Vec<u64>,
        }
        let (name, Words { nrows, ncols, words }) = <(String, Words)>::deserialize(deserializer)?;
        let named = |reason: String| D::Error::custom(format!("mask `{name}`: {reason}"));
        let dim = |d: u64| usize::try_from(d).map_err(|_| named(format!("{d} does not fit")));
        let mask = match Mask::from_words(dim(nrows)?, dim(ncols)?, words) {
            Ok(mask) => mask,
            // The format error's own words: the file's error says "invalid mask file".
            Err(shears_core::Error::Format(e)) => return Err(named(e.to_string())),
            Err(e) => return Err(named(e.to_string())),
        };
        Ok(Entry { name, mask })
    }
}

/// The largest mask-set file read: the masks of 2^37 (137 billion) weights, one bit
/// each, so that a file that only claims to be a mask set cannot make a read run on
/// through tens of gigabytes.
pub const MAX_MASK_SET_BYTES: u64 = 1 << 34;

/// Reads a mask-set file.
///
/// The file is read in growing pieces, each decoded as far as it goes, so a file that
/// is not a mask set is refused as soon as its bytes say so: a checkpoint given where
/// masks were meant after its tag, a valid header followed by gigabytes of zeros
/// after the payload those zeros decode to. At most the size the file had when it was
/// opened is read, and files larger than [`MAX_MASK_SET_BYTES`] are refused unread.
///
/// # Errors
/// [`Error::Io`] if it cannot be read, [`Error::Masks`] if it is not a valid mask set or
/// is larger than [`MAX_MASK_SET_BYTES`].
pub fn read_mask_set(path: &Path) -> Result<Vec<(String, Mask)>> {
    use std::io::Read;
    let invalid = |e: FormatError| Error::Masks { path: path.to_owned(), source: e.into() };
    let file = crate::paths::open_regular_file(path)?;
    let len = file.metadata().map_err(|e| Error::io("read", path, e))?.len();
    if len > MAX_MASK_SET_BYTES {
        let reason = format!("{len} bytes, more than a mask set of {MAX_MASK_SET_BYTES}");
        return Err(invalid(FormatError::Corrupted { reason }));
    }
    let mut reader = file.take(len);
    let mut bytes = Vec::new();
    // The header alone first, then pieces of 64 KiB and doubling: decoding each longer
    // prefix again costs at most as much as the final decoding.
    let mut want = envelope::HEADER_LEN as u64;
    loop {
        let asked = want.saturating_sub(bytes.len() as u64);
        let got = (&mut reader)
            .take(asked)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io("read", path, e))?;
        let unread = len.saturating_sub(bytes.len() as u64);
        let complete = (got as u64) < asked || unread == 0;
        let trailing = |count: u64| {
            invalid(FormatError::TrailingBytes {
                count: usize::try_from(count).unwrap_or(usize::MAX),
            })
        };
        match decode_mask_set(&bytes) {
            Ok(set) if complete => return Ok(set),
            // The payload ends where this piece does; the rest of the file is extra.
            Ok(_) => return Err(trailing(unread)),
            Err(shears_core::Error::Format(FormatError::TrailingBytes { count })) => {
                return Err(trailing(count as u64 + unread));
            }
            // Cut short by the piece, not necessarily by the file: read on.
            Err(shears_core::Error::Format(FormatError::Corrupted { .. })) if !complete => {
                want = want.saturating_mul(2).max(1 << 16);
            }
            Err(shears_core::Error::Format(e)) => return Err(invalid(e)),
            Err(source) => return Err(Error::Masks { path: path.to_owned(), source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_bytes_round_trip_in_row_major_order() {
        let mask = Mask::from_fn(2, 3, |r, c| (r + c) % 2 == 0).unwrap();
        let bytes = mask_bytes(&mask);
        assert_eq!(bytes, vec![1, 0, 1, 0, 1, 0]);
        assert_eq!(mask_from_bytes("w", &[2, 3], &bytes).unwrap(), mask);
        let conv = mask_from_bytes("c", &[2, 1, 1, 3], &bytes).unwrap();
        assert_eq!(conv, mask);
        assert!(mask_from_bytes("w", &[2, 2], &bytes).is_err());
        assert!(mask_from_bytes("w", &[2, 3], &[1, 0, 2, 0, 1, 0]).is_err());
        assert!(mask_from_bytes("w", &[6], &bytes).is_err());
        assert_eq!(weight_of_torch_mask("fc.weight_mask"), Some("fc.weight"));
    }

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
