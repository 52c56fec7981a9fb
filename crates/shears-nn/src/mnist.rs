//! The MNIST loader: the original IDX files, gzipped or not, from a directory.
//!
//! Get the four files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally `.gz`) from any
//! MNIST mirror; shears' own runs read them from `../shared/data/mnist`.

use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use nalgebra::DMatrix;

use crate::data::{Dataset, Split, read_file};
use crate::error::{Error, Result};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// The MNIST train and test sets from `dir`, pixels scaled to [0, 1], one 784-pixel
/// image per column.
///
/// # Errors
/// [`Error::Io`] for a missing or unreadable file; [`Error::BadDataFile`] for a wrong
/// magic number, a truncated file or a bad gzip stream; [`Error::CountMismatch`] when
/// images and labels disagree in count — each naming the file.
pub fn load_mnist(dir: impl AsRef<Path>) -> Result<Split> {
    let dir = dir.as_ref();
    Ok(Split {
        train: load_pair(dir, "train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
        test: load_pair(dir, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
    })
}

/// One images/labels pair of IDX files (each found as `name` or `name.gz`).
///
/// # Errors
/// As [`load_mnist`].
pub fn load_pair(dir: &Path, images: &str, labels: &str) -> Result<Dataset> {
    let images_path = find(dir, images)?;
    let (n_images, rows, cols, pixels) = read_images(&images_path)?;
    let labels_path = find(dir, labels)?;
    let labels = read_labels(&labels_path)?;
    if labels.len() != n_images {
        return Err(Error::CountMismatch {
            images_path,
            images: n_images,
            labels_path,
            labels: labels.len(),
        });
    }
    let features =
        DMatrix::from_iterator(rows * cols, n_images, pixels.iter().map(|&p| f32::from(p) / 255.0));
    if let Some((index, &label)) = labels.iter().enumerate().find(|&(_, &l)| l > 9) {
        return Err(Error::BadDataFile {
            path: labels_path,
            reason: format!("label {label} at index {index} is not a digit"),
        });
    }
    Dataset::new(features, labels, 10)
}

fn find(dir: &Path, name: &str) -> Result<PathBuf> {
    let plain = dir.join(name);
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        Ok(gz)
    } else if plain.is_file() {
        Ok(plain)
    } else {
        Err(Error::Io {
            path: gz,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("neither {name} nor {name}.gz exists"),
            ),
        })
    }
}

fn contents(path: &Path) -> Result<Vec<u8>> {
    let raw = read_file(path)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(raw.as_slice()).read_to_end(&mut out).map_err(|e| Error::BadDataFile {
            path: path.to_owned(),
            reason: format!("bad gzip stream: {e}"),
        })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize, path: &Path) -> Result<u32> {
    bytes.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes).ok_or_else(|| {
        Error::BadDataFile { path: path.to_owned(), reason: "truncated header".into() }
    })
}

fn check_magic(found: u32, expected: u32, path: &Path) -> Result<()> {
    if found == expected {
        Ok(())
    } else {
        Err(Error::BadDataFile {
            path: path.to_owned(),
            reason: format!("magic number {found:#010x}, expected {expected:#010x}"),
        })
    }
}

fn body<'a>(bytes: &'a [u8], header: usize, len: Option<usize>, path: &Path) -> Result<&'a [u8]> {
    let body = &bytes[header.min(bytes.len())..];
    match len {
        Some(n) if body.len() == n => Ok(body),
        Some(n) => Err(Error::BadDataFile {
            path: path.to_owned(),
            reason: format!("{} data bytes, the header promises {n}", body.len()),
        }),
        None => {
            Err(Error::BadDataFile { path: path.to_owned(), reason: "dimensions overflow".into() })
        }
    }
}

fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let bytes = contents(path)?;
    check_magic(be_u32(&bytes, 0, path)?, IMAGES_MAGIC, path)?;
    let n = be_u32(&bytes, 4, path)? as usize;
    let rows = be_u32(&bytes, 8, path)? as usize;
    let cols = be_u32(&bytes, 12, path)? as usize;
    let len = n.checked_mul(rows).and_then(|x| x.checked_mul(cols));
    let pixels = body(&bytes, 16, len, path)?.to_vec();
    Ok((n, rows, cols, pixels))
}

fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = contents(path)?;
    check_magic(be_u32(&bytes, 0, path)?, LABELS_MAGIC, path)?;
    let n = be_u32(&bytes, 4, path)? as usize;
    Ok(body(&bytes, 8, Some(n), path)?.to_vec())
}
