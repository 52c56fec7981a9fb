//! The digits data and the MNIST loader's error paths, on files the tests write.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use shears_nn::{Error, digits, digits_split, load_mnist};

#[test]
fn digits_split_is_fixed() {
    let all = digits().unwrap();
    let split = digits_split().unwrap();
    assert_eq!((split.train.len(), split.test.len()), (1438, 359));
    assert_eq!(split.test.labels()[0], all.labels()[4]);
    assert!(all.features().iter().all(|&v| (0.0..=1.0).contains(&v)));
    for class in 0..10u8 {
        assert!(split.test.labels().contains(&class));
    }
}

#[test]
fn selected_samples_come_in_order_and_an_index_past_the_end_is_named() {
    let all = digits().unwrap();
    let picked = all.select(&[7, 2, 7]).unwrap();
    assert_eq!(picked.labels(), [all.labels()[7], all.labels()[2], all.labels()[7]]);
    assert_eq!(picked.features().column(1), all.features().column(2));
    let err = all.select(&[0, all.len()]).unwrap_err();
    assert!(matches!(err, Error::SampleIndex { index, len } if index == len && len == all.len()));
}

fn idx_images(n: u32, rows: u32, cols: u32, magic: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [magic, n, rows, cols] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend((0..n * rows * cols).map(|i| (i % 256) as u8));
    v
}

fn idx_labels(n: u32, magic: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&magic.to_be_bytes());
    v.extend_from_slice(&n.to_be_bytes());
    v.extend((0..n).map(|i| (i % 10) as u8));
    v
}

fn write(dir: &Path, name: &str, bytes: &[u8], gz: bool) {
    if gz {
        let mut enc = GzEncoder::new(Vec::new(), Compression::fast());
        enc.write_all(bytes).unwrap();
        std::fs::write(dir.join(format!("{name}.gz")), enc.finish().unwrap()).unwrap();
    } else {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn mnist_dir(train_images: &[u8], train_labels: &[u8], gz: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "train-images-idx3-ubyte", train_images, gz);
    write(dir.path(), "train-labels-idx1-ubyte", train_labels, gz);
    write(dir.path(), "t10k-images-idx3-ubyte", &idx_images(3, 2, 2, 0x803), gz);
    write(dir.path(), "t10k-labels-idx1-ubyte", &idx_labels(3, 0x801), gz);
    dir
}

#[track_caller]
fn expect_bad_file(dir: &tempfile::TempDir, file: &str) {
    match load_mnist(dir.path()) {
        Err(Error::BadDataFile { path, reason }) => {
            assert!(path.to_string_lossy().contains(file), "{} ({reason})", path.display());
        }
        other => panic!("expected a bad data file error for {file}, got {other:?}"),
    }
}

#[test]
fn mnist_loads_plain_and_gzipped() {
    for gz in [false, true] {
        let dir = mnist_dir(&idx_images(5, 2, 2, 0x803), &idx_labels(5, 0x801), gz);
        let split = load_mnist(dir.path()).unwrap();
        assert_eq!((split.train.len(), split.train.n_features(), split.test.len()), (5, 4, 3));
        assert_eq!(split.train.features()[(1, 0)], 1.0 / 255.0);
    }
}

#[test]
fn mnist_errors_name_the_file() {
    let dir = mnist_dir(&idx_images(5, 2, 2, 0x999), &idx_labels(5, 0x801), true);
    expect_bad_file(&dir, "train-images");
    let dir = mnist_dir(&idx_images(5, 2, 2, 0x803), &idx_labels(5, 0x803), false);
    expect_bad_file(&dir, "train-labels");
    let mut truncated = idx_images(5, 2, 2, 0x803);
    truncated.truncate(30);
    let dir = mnist_dir(&truncated, &idx_labels(5, 0x801), true);
    expect_bad_file(&dir, "train-images");
    let dir = mnist_dir(&idx_images(5, 2, 2, 0x803)[..10], &idx_labels(5, 0x801), false);
    expect_bad_file(&dir, "train-images");
    let dir = mnist_dir(&idx_images(5, 2, 2, 0x803), &idx_labels(4, 0x801), false);
    match load_mnist(dir.path()) {
        Err(Error::CountMismatch { images: 5, labels: 4, labels_path, .. }) => {
            assert!(labels_path.to_string_lossy().contains("train-labels"));
        }
        other => panic!("expected a count mismatch, got {other:?}"),
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train-images-idx3-ubyte.gz"), b"\x1f\x8bnot gzip at all")
        .unwrap();
    expect_bad_file(&dir, "train-images");
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(load_mnist(empty.path()), Err(Error::Io { .. })));
}

/// A gzip bomb: a valid header for 5 images of 2x2 followed by 64 MiB of zeros, which
/// compresses to about 64 KiB. The loader reads what the header declares plus one byte,
/// then stops, naming the file.
#[test]
fn mnist_decompression_is_bounded_by_the_header() {
    let mut images = idx_images(5, 2, 2, 0x803);
    images.resize(images.len() + (64 << 20), 0);
    let dir = mnist_dir(&images, &idx_labels(5, 0x801), true);
    let compressed = std::fs::metadata(dir.path().join("train-images-idx3-ubyte.gz")).unwrap();
    assert!(compressed.len() < 1 << 20);
    match load_mnist(dir.path()) {
        Err(Error::BadDataFile { reason, .. }) => assert!(reason.contains("more data"), "{reason}"),
        other => panic!("expected a bad data file, got {other:?}"),
    }
    // A header declaring more than the loader takes is refused before any body is read.
    let huge: Vec<u8> =
        [0x803u32, u32::MAX, 1 << 16, 1 << 16].iter().flat_map(|x| x.to_be_bytes()).collect();
    let dir = mnist_dir(&huge, &idx_labels(5, 0x801), true);
    expect_bad_file(&dir, "train-images");
}

/// Reads the real MNIST when `SHEARS_MNIST_DIR` names a directory with the IDX files
/// (CI sets it to `../shared/data/mnist`); otherwise says on stderr that it was skipped.
#[test]
fn real_mnist_when_available() {
    let Some(dir) = std::env::var_os("SHEARS_MNIST_DIR") else {
        eprintln!("skipped real_mnist_when_available: SHEARS_MNIST_DIR is not set");
        return;
    };
    let split = load_mnist(dir).unwrap();
    assert_eq!(
        (split.train.len(), split.test.len(), split.train.n_features()),
        (60_000, 10_000, 784)
    );
}
