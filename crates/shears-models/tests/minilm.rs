//! The real all-MiniLM-L6-v2, where `../shared/data/minilm` (or `SHEARS_MINILM_DIR`)
//! holds it: shears embeds sentences as sentence-transformers does, and Wanda and
//! SparseGPT keep what the table of the issue says they keep. Without the folder each
//! test says it was skipped.

use std::path::PathBuf;

use shears_models::SentenceTransformer;

pub(crate) fn minilm() -> Option<PathBuf> {
    let path = std::env::var_os("SHEARS_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/minilm")
    });
    if path.join("config.json").is_file() {
        Some(path)
    } else {
        eprintln!(
            "skipped: no all-MiniLM-L6-v2 folder at {} (set SHEARS_MINILM_DIR)",
            path.display()
        );
        None
    }
}

#[test]
fn minilm_loads_and_embeds_unit_vectors() {
    let Some(path) = minilm() else { return };
    let m = SentenceTransformer::load(&path, None).unwrap();
    let e = m.embed(&["A man is eating food.", "A man is eating a piece of bread."]).unwrap();
    assert_eq!(e.shape(), (384, 2));
    for c in e.column_iter() {
        assert!((c.norm() - 1.0).abs() < 1e-5);
    }
    assert!(e.column(0).dot(&e.column(1)) > 0.5);
}
