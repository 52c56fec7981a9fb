//! Mask-set files read back, and files that only claim to be one refused before they
//! are read through.

use shears_core::{FormatError, Mask};
use shears_io::{Error, MASK_SET_MAGIC, MAX_MASK_SET_BYTES, encode_mask_set, read_mask_set};

fn masks() -> Vec<(String, Mask)> {
    vec![
        ("fc1.weight".to_owned(), Mask::from_fn(3, 4, |r, c| (r + c) % 2 == 0).unwrap()),
        ("fc2.weight".to_owned(), Mask::all_kept(2, 3).unwrap()),
    ]
}

/// An error with its sources, as the CLI prints it: each cause once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out += &format!(": {s}");
        source = s.source();
    }
    out
}

#[test]
fn a_written_set_reads_back_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("masks.bin");
    std::fs::write(&path, encode_mask_set(&masks())).unwrap();
    assert_eq!(read_mask_set(&path).unwrap(), masks());
}

#[test]
fn a_file_of_another_kind_is_refused_by_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    // Past the header the file is sparse and never read: only its tag is.
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(1 << 30).unwrap();
    let err = read_mask_set(&path).unwrap_err();
    assert!(matches!(err, Error::Masks { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");

    let mut versioned = encode_mask_set(&masks());
    versioned[8] = 9;
    std::fs::write(&path, &versioned).unwrap();
    let err = read_mask_set(&path).unwrap_err();
    let wrong_version = shears_core::Error::Format(FormatError::UnsupportedVersion {
        found: 9,
        supported: shears_io::MASK_SET_VERSION,
    });
    assert!(matches!(&err, Error::Masks { source, .. } if *source == wrong_version), "{err}");
}

#[test]
fn sizes_past_the_bound_and_truncated_sets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.bin");
    let mut file = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut file, &encode_mask_set(&masks())).unwrap();
    file.set_len(MAX_MASK_SET_BYTES + 1).unwrap();
    let err = chain(&read_mask_set(&path).unwrap_err());
    assert!(err.contains("huge.bin: invalid mask file: corrupted payload: "), "{err}");
    assert!(err.contains("more than a mask set"), "{err}");

    let bytes = encode_mask_set(&masks());
    for cut in [0, 5, 12, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = read_mask_set(&path).unwrap_err();
        assert!(matches!(err, Error::Masks { .. }), "cut at {cut}");
        // One line, each cause once.
        let message = chain(&err);
        assert_eq!(message.matches("invalid mask file").count(), 1, "{message}");
    }
    // A mask whose bits do not fill its shape (3 x 4 in two words), refused by the mask's
    // own validation inside the envelope: its words, also once.
    let wrong_words = vec![("a".to_owned(), (3u64, 4u64, vec![0u64, 0]))];
    let sealed =
        shears_core::envelope::seal(MASK_SET_MAGIC, shears_io::MASK_SET_VERSION, &wrong_words);
    std::fs::write(&path, sealed).unwrap();
    let message = chain(&read_mask_set(&path).unwrap_err());
    assert!(message.ends_with("mask `a`: shape 3x4 needs 1 words of bits, found 2"), "{message}");
    assert_eq!(message.matches("invalid mask file").count(), 1, "{message}");
}
