//! The MNIST loader: the original IDX files, gzipped or not, from a directory.
//!
//! Get the four files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
//! `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally `.gz`) from any
//! MNIST mirror; shears' own runs read them from `../shared/data/mnist`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use nalgebra::DMatrix;

use crate::data::{Dataset, Split};
use crate::error::{Error, Result};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

/// The MNIST train and test sets from `dir`, pixels scaled to [0, 1], one 784-pixel
/// image per column.
///
/// # Errors
/// [`Error::Io`] for a missing or unreadable file; [`Error::BadDataFile`] for a wrong
/// magic number, a truncated file, a bad gzip stream, or a body that is not the size the
/// header declares (at most 1 GiB); [`Error::CountMismatch`] when
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

/// The most bytes an IDX file may declare in its header (MNIST's largest is 47 MB).
const MAX_BODY: usize = 1 << 30;

/// An IDX file's dimensions and body, gzipped or not. The body is read only up to the
/// size its header declares (plus one byte, to find out whether more follows), so a
/// small compressed file that inflates without end cannot exhaust memory.
fn read_idx(path: &Path, magic: u32, rank: usize) -> Result<(Vec<usize>, Vec<u8>)> {
    let bad = |reason: String| Error::BadDataFile { path: path.to_owned(), reason };
    let file = shears_io::paths::open_regular_file(path)?;
    let mut buffered = BufReader::new(file);
    let head = buffered.fill_buf().map_err(|source| Error::Io { path: path.to_owned(), source })?;
    let mut reader: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(GzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    };
    let read_error = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => bad("truncated header".into()),
        _ => bad(format!("cannot decode: {e}")),
    };
    let mut header = vec![0u8; 4 + 4 * rank];
    reader.read_exact(&mut header).map_err(read_error)?;
    let word = |k: usize| {
        u32::from_be_bytes([header[4 * k], header[4 * k + 1], header[4 * k + 2], header[4 * k + 3]])
    };
    check_magic(word(0), magic, path)?;
    let dims: Vec<usize> = (1..=rank).map(|k| word(k) as usize).collect();
    let len = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= MAX_BODY);
    let Some(len) = len else {
        return Err(bad(format!("the header declares {dims:?}, more than {MAX_BODY} bytes")));
    };
    let mut body = Vec::with_capacity(len);
    (&mut reader).take(len as u64 + 1).read_to_end(&mut body).map_err(read_error)?;
    match body.len().cmp(&len) {
        std::cmp::Ordering::Equal => Ok((dims, body)),
        std::cmp::Ordering::Less => {
            Err(bad(format!("{} data bytes, the header promises {len}", body.len())))
        }
        std::cmp::Ordering::Greater => {
            Err(bad(format!("more data than the {len} bytes the header promises")))
        }
    }
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

fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    let (dims, pixels) = read_idx(path, IMAGES_MAGIC, 3)?;
    Ok((dims[0], dims[1], dims[2], pixels))
}

fn read_labels(path: &Path) -> Result<Vec<u8>> {
    Ok(read_idx(path, LABELS_MAGIC, 1)?.1)
}
