//! The record of how a model was pruned, kept in the safetensors metadata of every
//! weights file `prune` writes (`shears.pruning`), so that a model folder handed on says
//! what was done to it without its report. Each run appends itself to the record its
//! input carried: a model pruned in steps lists every step. `transformers`, PyTorch and
//! the other readers of safetensors ignore metadata they do not know.

use std::collections::HashMap;

use serde::Serialize;
use serde_json::Value;

/// The metadata key of the record: a JSON array of runs, oldest first.
pub(crate) const PRUNING_KEY: &str = "shears.pruning";

/// One run of `prune`, as the record keeps it: what it did, not where (paths are the
/// machine's, so only the calibration file's name is kept).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Run {
    /// The shears version that ran.
    pub(crate) shears: &'static str,
    pub(crate) method: String,
    pub(crate) pattern: String,
    pub(crate) scope: String,
    pub(crate) sparsity: f64,
    pub(crate) rounding: String,
    /// For the patterns that score slices or blocks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reduction: Option<String>,
    /// In global scope, the least density each tensor keeps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) min_density: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) seed: Option<u64>,
    /// Whether the run started from `--masks-in` masks.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) masks_in: bool,
    /// What `--method wanda|sparsegpt` calibrated on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) calibration: Option<Calibration>,
    /// `int8` or `int8:group=G` with `--quantize`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) quantized: Option<String>,
}

/// The calibration text of a run: its file by name, and its sentences by hash.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Calibration {
    pub(crate) texts: String,
    pub(crate) sentences: usize,
    pub(crate) tokens: usize,
    pub(crate) max_len: usize,
    /// [`sentence_hashes`] of the sentences, so that `eval` knows them under any name
    /// and in any order.
    pub(crate) sentence_hashes: String,
}

/// The most calibration sentences the record hashes: 64 KiB of hex digits.
pub(crate) const MAX_HASHED_SENTENCES: usize = 4096;

/// FNV-1a, 64 bits, of `text`'s bytes. It tells sentences apart, not an adversary's
/// from a copy's.
pub(crate) fn fnv1a64(text: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    text.bytes().fold(OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME))
}

/// The first [`MAX_HASHED_SENTENCES`] of `sentences`, each as its [`fnv1a64`] in 16 hex
/// digits, one after the other.
pub(crate) fn sentence_hashes<S: AsRef<str>>(sentences: &[S]) -> String {
    let hashed = sentences.iter().take(MAX_HASHED_SENTENCES);
    hashed.map(|s| format!("{:016x}", fnv1a64(s.as_ref()))).collect()
}

/// The hashes [`sentence_hashes`] wrote, as far as `text` holds whole ones of them.
pub(crate) fn parse_sentence_hashes(text: &str) -> impl Iterator<Item = u64> + '_ {
    let digits = text.as_bytes().chunks_exact(16);
    digits.map_while(|d| std::str::from_utf8(d).ok().and_then(|d| u64::from_str_radix(d, 16).ok()))
}

/// The longest record read as JSON: a run takes a few hundred bytes (up to 64 KiB with
/// its calibration sentences' hashes), and parsing takes ten times a record's size in
/// memory, which a crafted header of 100 MB would turn into a gigabyte.
const MAX_RECORD_BYTES: usize = 4 << 20;

/// The entries of a record's text, oldest first: its runs if it is a JSON array of at
/// most [`MAX_RECORD_BYTES`], else one entry, the text itself (a record another tool
/// wrote, or one too long to read).
fn entries(text: &str) -> Vec<Value> {
    if text.len() <= MAX_RECORD_BYTES
        && let Ok(Value::Array(runs)) = serde_json::from_str::<Value>(text)
    {
        return runs;
    }
    vec![Value::String(text.to_owned())]
}

/// `metadata` with `run` appended to its record. A record that is not a JSON array (a
/// file another tool wrote) is kept as the record's first entry, as the text it was.
pub(crate) fn with_run(
    metadata: Option<&HashMap<String, String>>,
    run: &Run,
) -> HashMap<String, String> {
    let mut metadata = metadata.cloned().unwrap_or_default();
    let mut runs = metadata.get(PRUNING_KEY).map_or_else(Vec::new, |text| entries(text));
    runs.push(serde_json::to_value(run).unwrap_or(Value::Null));
    let record = serde_json::to_string(&runs).unwrap_or_default();
    metadata.insert(PRUNING_KEY.to_owned(), record);
    metadata
}

/// The runs a file's metadata records, oldest first, as [`with_run`] keeps them: empty
/// if it records none, one entry of text if the record is not a JSON array shears can
/// read, so that such a record shows the same before and after another run.
pub(crate) fn runs(metadata: Option<&HashMap<String, String>>) -> Vec<Value> {
    metadata.and_then(|m| m.get(PRUNING_KEY)).map_or_else(Vec::new, |text| entries(text))
}

/// A run of the record in a few words: `wanda 2:4, layer scope, at 0.5 (calibrated on
/// 128 sentences of calibration.txt), int8`.
pub(crate) fn describe(run: &Value) -> String {
    if run["method"].as_str().is_none() {
        // Another tool's entry, or a record kept as the text it was.
        let mut said = match run {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        if said.chars().count() > 80 {
            said = said.chars().take(80).chain("...".chars()).collect();
        }
        return format!("an entry shears did not write: {said}");
    }
    // Fields another tool may have written: long texts cut, fractions outside [0, 1]
    // shown as unknown.
    let cut = |text: &str| match text.char_indices().nth(40) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_owned(),
    };
    let text = |key: &str| run[key].as_str().map_or_else(|| "?".to_owned(), cut);
    let fraction = |value: &Value| value.as_f64().filter(|f| (0.0..=1.0).contains(f));
    let mut words = format!(
        "{} {}, {} scope, at {}",
        text("method"),
        text("pattern"),
        text("scope"),
        fraction(&run["sparsity"]).map_or_else(|| "?".to_owned(), |s| s.to_string())
    );
    // Counts rounded other than half-even, the default, are named: `ceil` prunes past
    // the target on small tensors.
    if let Some(rounding) = run["rounding"].as_str().filter(|r| *r != "half-even") {
        words.push_str(&format!(" (rounding {})", cut(rounding)));
    }
    // 0 is no floor (records of global runs wrote it when none was given).
    if let Some(density) = fraction(&run["min_density"]).filter(|d| *d > 0.0) {
        words.push_str(&format!(" (min density {density})"));
    }
    if run["masks_in"] == true {
        words.push_str(" from given masks");
    }
    let c = &run["calibration"];
    if let (Some(sentences), Some(texts)) = (c["sentences"].as_u64(), c["texts"].as_str()) {
        words.push_str(&format!(" (calibrated on {sentences} sentences of {})", cut(texts)));
    }
    if let Some(q) = run["quantized"].as_str() {
        words.push_str(&format!(", {}", cut(q)));
    }
    if let Some(version) = run["shears"].as_str() {
        words.push_str(&format!(", shears {}", cut(version)));
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: &str) -> Run {
        Run {
            shears: "0.1.0",
            method: method.into(),
            pattern: "2:4".into(),
            scope: "layer".into(),
            sparsity: 0.5,
            rounding: "half-even".into(),
            reduction: None,
            min_density: None,
            seed: None,
            masks_in: false,
            calibration: Some(Calibration {
                texts: "calibration.txt".into(),
                sentences: 128,
                tokens: 2048,
                max_len: 128,
                sentence_hashes: sentence_hashes(&["the cat", "sat"]),
            }),
            quantized: Some("int8".into()),
        }
    }

    /// FNV-1a 64's published value for "a" and its offset basis for nothing; hashes
    /// read back as written, as far as they are whole, and at most
    /// MAX_HASHED_SENTENCES of them.
    #[test]
    fn sentence_hashes_are_fnv1a_and_read_back() {
        assert_eq!(fnv1a64(""), 0xcbf2_9ce4_8422_2325, "the offset basis");
        assert_eq!(fnv1a64("a"), 0xaf63_dc4c_8601_ec8c);
        let text = sentence_hashes(&["a", "", "the cat"]);
        assert_eq!(&text[..32], "af63dc4c8601ec8ccbf29ce484222325");
        let back: Vec<u64> = parse_sentence_hashes(&text).collect();
        assert_eq!(back, [fnv1a64("a"), fnv1a64(""), fnv1a64("the cat")]);
        assert_eq!(parse_sentence_hashes(&text[..40]).count(), 2, "a hash cut short is none");
        assert_eq!(parse_sentence_hashes("zz").count(), 0);
        let many = vec!["x"; MAX_HASHED_SENTENCES + 5];
        assert_eq!(sentence_hashes(&many).len(), 16 * MAX_HASHED_SENTENCES);
    }

    #[test]
    fn runs_append_to_the_record_the_input_carried() {
        let first = with_run(None, &run("wanda"));
        let second = with_run(Some(&first), &run("sparsegpt"));
        let runs = runs(Some(&second));
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0]["method"].as_str(), runs[1]["method"].as_str()),
            (Some("wanda"), Some("sparsegpt"))
        );
        assert_eq!(runs[0]["calibration"]["tokens"], 2048);
        // Fields a run did not use are left out.
        assert!(runs[0].get("seed").is_none() && runs[0].get("masks_in").is_none());
        assert_eq!(
            describe(&runs[1]),
            "sparsegpt 2:4, layer scope, at 0.5 (calibrated on 128 sentences of calibration.txt), int8, shears 0.1.0"
        );
        // Other metadata stays; a record that is not an array is kept as text.
        let foreign = HashMap::from([
            (PRUNING_KEY.to_owned(), "pruned by hand".to_owned()),
            ("format".into(), "pt".into()),
        ]);
        let mut global = run("magnitude");
        (global.scope, global.min_density, global.masks_in) = ("global".into(), Some(0.02), true);
        (global.calibration, global.quantized) = (None, None);
        assert_eq!(
            describe(&serde_json::to_value(&global).unwrap()),
            "magnitude 2:4, global scope, at 0.5 (min density 0.02) from given masks, shears 0.1.0"
        );
        global.rounding = "ceil".into();
        assert_eq!(
            describe(&serde_json::to_value(&global).unwrap()),
            "magnitude 2:4, global scope, at 0.5 (rounding ceil) (min density 0.02) from given masks, shears 0.1.0"
        );
        let merged = with_run(Some(&foreign), &run("magnitude"));
        assert_eq!(merged["format"], "pt");
        let record: Value = serde_json::from_str(&merged[PRUNING_KEY]).unwrap();
        assert_eq!(record[0], "pruned by hand");
        assert_eq!(record[1]["method"], "magnitude");
        // Before another run it reads as that run will keep it.
        assert_eq!(super::runs(Some(&foreign)), [Value::from("pruned by hand")]);
        assert_eq!(describe(&record[0]), "an entry shears did not write: pruned by hand");
        let long = Value::from(vec![7; 100]);
        assert!(describe(&long).ends_with("7,7,7,7..."), "{}", describe(&long));
    }

    /// A record past MAX_RECORD_BYTES is one entry of text, not parsed; fields another
    /// tool wrote are cut or shown as unknown.
    #[test]
    fn long_records_and_odd_fields_stay_short() {
        let huge = format!("[{}]", vec!["[]"; MAX_RECORD_BYTES / 3 + 1].join(","));
        let metadata = HashMap::from([(PRUNING_KEY.to_owned(), huge.clone())]);
        assert_eq!(runs(Some(&metadata)), [Value::String(huge)]);
        let appended = with_run(Some(&metadata), &run("wanda"));
        let record: Value = serde_json::from_str(&appended[PRUNING_KEY]).unwrap();
        assert_eq!(record.as_array().map(Vec::len), Some(2));
        let odd = serde_json::json!({
            "method": "m".repeat(5000),
            "pattern": "2:4",
            "scope": "layer",
            "sparsity": -1e308,
            "min_density": 7.0,
        });
        let said = describe(&odd);
        assert_eq!(said, format!("{}... 2:4, layer scope, at ?", "m".repeat(40)));
    }
}
