//! Reading and validating a safetensors header against the file it heads.

use std::collections::HashMap;

use safetensors::tensor::TensorInfo;
use shears_core::MAX_SIDE;

use crate::error::{FileKind, HeaderProblem};
use crate::source::Source;

/// The largest header accepted, as in the safetensors crate (100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// A validated header: what [`crate::Checkpoint`] knows before reading any tensor.
///
/// Each name is held once (a checkpoint may have a million tensors): the entries in
/// file order, and their positions sorted by name for lookups.
#[derive(Debug)]
pub(crate) struct Header {
    /// The tensors in the order their data appears in the file.
    pub(crate) entries: Vec<(String, TensorInfo)>,
    /// Positions in `entries`, sorted by name.
    by_name: Vec<u32>,
    pub(crate) metadata: Option<HashMap<String, String>>,
    /// Where the data starts: 8 + the header's length.
    pub(crate) data_start: u64,
}

impl Header {
    /// The entry of tensor `name`: its name as stored, and its dtype, shape and offsets.
    pub(crate) fn find(&self, name: &str) -> Option<&(String, TensorInfo)> {
        let at = self.by_name.binary_search_by(|&i| self.entries[i as usize].0.as_str().cmp(name));
        at.ok().map(|k| &self.entries[self.by_name[k] as usize])
    }
}

/// Why a header could not be read.
pub(crate) enum Invalid {
    /// Reading the source failed.
    Io(std::io::Error),
    /// The bytes are not a valid header.
    Problem(HeaderProblem),
    /// The bytes are recognisably something else.
    Kind(FileKind),
}

impl From<HeaderProblem> for Invalid {
    fn from(p: HeaderProblem) -> Self {
        Invalid::Problem(p)
    }
}

/// Reads and validates the header of `source`: its length against the file's, its JSON,
/// every entry, offsets contiguous from zero, byte counts equal to shape × dtype size
/// (without overflow), and the data ending exactly at the end of the file. A file that
/// fails before its JSON parses and looks like another known format is reported as that.
pub(crate) fn read<S: Source + ?Sized>(source: &S) -> Result<Header, Invalid> {
    let len = source.len().map_err(Invalid::Io)?;
    if len < 8 {
        let mut head = [0u8; 8];
        let head = &mut head[..len as usize];
        source.read_exact_at(head, 0).map_err(Invalid::Io)?;
        return Err(FileKind::sniff(head)
            .map_or(Invalid::Problem(HeaderProblem::TooShort { len }), Invalid::Kind));
    }
    let mut head = [0u8; 64];
    let head = &mut head[..len.min(64) as usize];
    source.read_exact_at(head, 0).map_err(Invalid::Io)?;
    let sniffed = || FileKind::sniff(head);
    let header_len = u64::from_le_bytes([
        head[0], head[1], head[2], head[3], head[4], head[5], head[6], head[7],
    ]);
    if header_len > MAX_HEADER_BYTES {
        return Err(sniffed().map_or(
            Invalid::Problem(HeaderProblem::TooLong { len: header_len, limit: MAX_HEADER_BYTES }),
            Invalid::Kind,
        ));
    }
    if header_len > len - 8 {
        return Err(sniffed().map_or(
            Invalid::Problem(HeaderProblem::PastEnd { len: header_len, file_len: len }),
            Invalid::Kind,
        ));
    }
    // Both bounds above make this fit in memory and in usize.
    let mut bytes = vec![0u8; header_len as usize];
    source.read_exact_at(&mut bytes, 8).map_err(Invalid::Io)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| HeaderProblem::NotUtf8 { reason: e.to_string() })?;
    let (metadata, mut entries) = match parse(text) {
        Ok(parsed) => parsed,
        Err(HeaderProblem::NotJson { reason }) => {
            return Err(sniffed()
                .map_or(Invalid::Problem(HeaderProblem::NotJson { reason }), Invalid::Kind));
        }
        Err(other) => return Err(other.into()),
    };
    drop(bytes);
    entries.sort_by(|(a, x), (b, y)| x.data_offsets.cmp(&y.data_offsets).then(a.cmp(b)));
    // A name given twice is named as such, before the offsets (which two entries of one
    // name often share) are checked. The header is at most MAX_HEADER_BYTES, so the
    // positions fit in u32.
    let mut by_name: Vec<u32> = (0..entries.len() as u32).collect();
    by_name.sort_unstable_by(|&a, &b| entries[a as usize].0.cmp(&entries[b as usize].0));
    if let Some(pair) =
        by_name.windows(2).find(|p| entries[p[0] as usize].0 == entries[p[1] as usize].0)
    {
        return Err(HeaderProblem::Duplicate { tensor: entries[pair[0] as usize].0.clone() }.into());
    }
    let held = len - 8 - header_len;
    let mut end = 0usize;
    for (name, info) in &entries {
        let (start, stop) = info.data_offsets;
        if start != end || stop < start {
            // A tensor moved past the file's data leaves a gap of its own size: it is
            // named, not the tensor after the gap. (A truncated file has no gap.)
            let gap = start.checked_sub(end);
            let past = entries.iter().rev().find(|(_, i)| {
                let (a, b) = i.data_offsets;
                b as u64 > held && b.checked_sub(a) == gap
            });
            if let Some((name, info)) = past {
                let (start, end) = info.data_offsets;
                return Err(
                    HeaderProblem::PastData { tensor: name.clone(), start, end, held }.into()
                );
            }
            return Err(HeaderProblem::Offsets {
                tensor: name.clone(),
                start,
                end: stop,
                expected: end,
            }
            .into());
        }
        let needed = data_bytes(info).ok_or_else(|| HeaderProblem::NoByteSize {
            tensor: name.clone(),
            shape: info.shape.clone(),
            dtype: info.dtype,
        })?;
        if stop - start != needed {
            return Err(HeaderProblem::Size {
                tensor: name.clone(),
                shape: info.shape.clone(),
                dtype: info.dtype,
                needed,
                spanned: stop - start,
            }
            .into());
        }
        end = stop;
    }
    let data_start = 8 + header_len;
    if (end as u64).checked_add(data_start) != Some(len) {
        return Err(HeaderProblem::DataLength { described: end, held: len - data_start }.into());
    }
    Ok(Header { entries, by_name, metadata, data_start })
}

/// A parsed header: the `__metadata__` string map and the named tensor entries.
type Parsed = (Option<HashMap<String, String>>, Vec<(String, TensorInfo)>);

/// The `__metadata__` map and the tensor table of a header, every entry checked by name.
///
/// The table is read entry by entry (never as one JSON tree, which costs many times the
/// header's size): each value is parsed on its own, then checked as metadata or as a
/// tensor entry, so an error names the entry it is about.
fn parse(text: &str) -> Result<Parsed, HeaderProblem> {
    let mut problem = None;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let visitor = TableVisitor { problem: &mut problem };
    let parsed = serde::Deserializer::deserialize_map(&mut deserializer, visitor)
        .and_then(|parsed| deserializer.end().map(|()| parsed));
    match (parsed, problem) {
        (_, Some(problem)) => Err(problem),
        (Ok(parsed), None) => Ok(parsed),
        (Err(e), None) => Err(HeaderProblem::NotJson { reason: e.to_string() }),
    }
}

/// Visits the header's top-level object; a bad entry is recorded in `problem` (with its
/// name) and stops the visit.
struct TableVisitor<'p> {
    problem: &'p mut Option<HeaderProblem>,
}

impl<'de> serde::de::Visitor<'de> for TableVisitor<'_> {
    type Value = Parsed;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
        use serde::de::Error as _;
        let mut metadata = None;
        let mut entries = Vec::new();
        while let Some(name) = map.next_key::<String>()? {
            if name == "__metadata__" {
                match map.next_value() {
                    Ok(m) => metadata = Some(m),
                    Err(e) => {
                        *self.problem = Some(HeaderProblem::Metadata { reason: e.to_string() });
                        return Err(e);
                    }
                }
                continue;
            }
            match map.next_value::<Entry>() {
                Ok(Entry { dtype, shape: Shape(shape), data_offsets }) => {
                    entries.push((name, TensorInfo { dtype, shape, data_offsets }));
                }
                Err(e) => {
                    let reason = e.to_string();
                    *self.problem = Some(HeaderProblem::Entry { tensor: name, reason });
                    return Err(A::Error::custom("invalid entry"));
                }
            }
        }
        Ok((metadata, entries))
    }
}

/// The most dimensions a tensor may have: checkpoints hold at most a handful, and a
/// header of a million ones must not become a vector of a million.
pub(crate) const MAX_RANK: usize = 16;

/// A tensor's header entry, as the safetensors format writes it.
#[derive(serde::Deserialize)]
struct Entry {
    dtype: safetensors::Dtype,
    shape: Shape,
    data_offsets: (usize, usize),
}

/// A shape of at most [`MAX_RANK`] dimensions, refused as soon as it has more.
struct Shape(Vec<usize>);

impl<'de> serde::Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Dims;
        impl<'de> serde::de::Visitor<'de> for Dims {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "a list of at most {MAX_RANK} dimensions")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Shape, A::Error> {
                let mut dims = Vec::new();
                while let Some(d) = seq.next_element()? {
                    if dims.len() == MAX_RANK {
                        return Err(serde::de::Error::custom(format!(
                            "more than {MAX_RANK} dimensions"
                        )));
                    }
                    dims.push(d);
                }
                Ok(Shape(dims))
            }
        }
        d.deserialize_seq(Dims)
    }
}

/// The bytes a tensor's data takes, or `None` on overflow or a partial byte.
///
/// A tensor with a zero dimension has no elements however large the others are, but
/// readers multiply some of them (a quantized tensor's columns are every dimension after
/// the first) and size by one (a mask's count per row or column): the product of the
/// nonzero dimensions must fit, and each must be at most [`MAX_SIDE`].
pub(crate) fn data_bytes(info: &TensorInfo) -> Option<usize> {
    info.shape
        .iter()
        .filter(|&&d| d > 0)
        .try_fold(1usize, |acc, &d| if d > MAX_SIDE { None } else { acc.checked_mul(d) })?;
    let elements = info.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    let bits = elements.checked_mul(info.dtype.bitsize())?;
    (bits % 8 == 0).then_some(bits / 8)
}
