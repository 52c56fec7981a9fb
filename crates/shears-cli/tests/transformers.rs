//! A Hugging Face encoder pruned from calibration text (`prune --method wanda|sparsegpt
//! --calib`), and what the pruned folder keeps (`eval`, `embed`) and how fast it runs
//! (`bench --texts`), on the tiny BERT of `data/tiny-bert`.

use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::Value;
use shears_models::SentenceTransformer;

use crate::util::{
    T, edit_json, least_cosine, read, shears, shears_interleaved, stderr, stdout, write,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny_bert() -> PathBuf {
    root().join("data/tiny-bert")
}

fn sentences(name: &str) -> String {
    root().join("data/sentences").join(name).to_str().unwrap().to_owned()
}

/// Runs shears and asserts it succeeded.
#[track_caller]
fn ok(args: &[&str]) -> String {
    let o = shears(args);
    assert!(o.status.success(), "shears {args:?}: {}", stderr(&o));
    stdout(&o)
}

/// Prunes the tiny BERT into `out` with `method` from the calibration sentences.
fn prune(method: &str, out: &Path, extra: &[&str]) -> String {
    let (model, out) = (tiny_bert(), out.to_str().unwrap().to_owned());
    let calib = sentences("calibration.txt");
    let mut args = vec!["prune", model.to_str().unwrap(), "-o", &out, "--method", method];
    args.extend(["--calib", &calib, "--calib-samples", "64", "--quiet"]);
    args.extend_from_slice(extra);
    ok(&args)
}

fn is_encoder_linear(name: &str) -> bool {
    name.starts_with("encoder.layer.") && name.ends_with(".weight") && !name.contains("LayerNorm")
}

/// `shears eval --json` of the tiny BERT against `pruned` on the validation sentences.
fn eval(pruned: &Path) -> Value {
    let (dense, texts) = (tiny_bert(), sentences("validation.txt"));
    let args = ["eval", dense.to_str().unwrap(), pruned.to_str().unwrap(), "--texts", &texts];
    serde_json::from_str(&ok(&[&args[..], &["--json", "-q"]].concat())).unwrap()
}

#[test]
fn wanda_and_sparsegpt_prune_a_folder_to_exact_counts_that_shears_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let dense = read(&tiny_bert().join("model.safetensors"));
    let magnitude = dir.path().join("magnitude");
    ok(&["prune", tiny_bert().to_str().unwrap(), "-o", magnitude.to_str().unwrap(), "-s", "0.5"]);
    let baseline = eval(&magnitude)["mean_cosine"].as_f64().unwrap();
    for method in ["wanda", "sparsegpt"] {
        let out = dir.path().join(method);
        let report: Value =
            serde_json::from_str(&prune(method, &out, &["-s", "0.5", "--json"])).unwrap();
        // What is left alone is not said to be prunable with --all: no method of the
        // kind prunes it.
        for t in report["tensors"].as_array().unwrap().iter().filter(|t| t["pruned"] == false) {
            let why = t["why"].as_str().unwrap();
            if t["role"] == "embedding" || t["role"] == "pooler" {
                assert!(why.ends_with("prune the encoder's linear layers only"), "{why}");
            }
            assert!(!why.contains("--all"), "{why}");
        }
        // The weights carry the run's record, which inspect shows: the method and the
        // calibration file by name, not by the path of this machine.
        let o = out.to_str().unwrap();
        let inspected: Value = serde_json::from_str(&ok(&["inspect", o, "--json"])).unwrap();
        let run = &inspected["pruning"][0];
        assert_eq!(inspected["pruning"].as_array().unwrap().len(), 1, "{inspected}");
        assert_eq!((run["method"].as_str(), run["sparsity"].as_f64()), (Some(method), Some(0.5)));
        assert_eq!(run["calibration"]["texts"], "calibration.txt");
        assert_eq!(run["calibration"]["sentences"], 64);
        let said = format!(
            "pruned by shears: {method} unstructured, layer scope, at 0.5 (calibrated on 64 sentences of calibration.txt), shears {}",
            env!("CARGO_PKG_VERSION")
        );
        assert!(ok(&["inspect", o]).contains(&said), "{said}");
        // The folder keeps what runs it: config, tokenizer, sentence-transformers files.
        for file in ["config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json"] {
            assert!(out.join(file).is_file(), "{method}: {file} missing");
        }
        let pruned = read(&out.join("model.safetensors"));
        assert_eq!(pruned.len(), dense.len());
        let mut linears = 0;
        for (name, (dtype, shape, values)) in &dense {
            let (p_dtype, p_shape, p_values) = &pruned[name];
            assert_eq!((p_dtype, p_shape), (dtype, shape), "{method}: {name}");
            if !is_encoder_linear(name) {
                assert_eq!(p_values, values, "{method}: {name} must be untouched");
                continue;
            }
            linears += 1;
            let cols = shape[1];
            if method == "wanda" {
                // Wanda compares within each output row and keeps the kept weights as
                // they were.
                for (row, orig) in p_values.chunks(cols).zip(values.chunks(cols)) {
                    assert_eq!(row.iter().filter(|v| **v == 0.0).count(), cols / 2, "{name}");
                    for (p, o) in row.iter().zip(orig) {
                        assert!(*p == 0.0 || p == o, "{name}: a kept weight changed");
                    }
                }
            } else {
                // SparseGPT prunes the layer to the exact count and updates what it keeps.
                let zeros = p_values.iter().filter(|v| **v == 0.0).count();
                assert_eq!(zeros, values.len() / 2, "{name}");
                let moved = p_values.iter().zip(values).filter(|(p, o)| **p != 0.0 && p != o);
                assert!(moved.count() > 0, "{name}: SparseGPT updates the kept weights");
            }
        }
        assert_eq!(linears, 12, "two layers of six linears each");
        // shears loads the result as a model again. On random weights only SparseGPT,
        // which reconstructs each layer's outputs, is bound to keep more than magnitude
        // (Wanda's gain is a trained model's: tests/minilm.rs of shears-models).
        let model = SentenceTransformer::load(&out, None).unwrap();
        let embeddings = model.embed(&["The cat sat on the mat."]).unwrap();
        assert!((embeddings.norm() - 1.0).abs() < 1e-5);
        let report = eval(&out);
        assert_eq!(report["sentences"], 256);
        let cosine = report["mean_cosine"].as_f64().unwrap();
        let floor = if method == "sparsegpt" { baseline } else { 0.5 };
        assert!(cosine > floor && cosine <= 1.0, "{method}: {cosine} vs magnitude {baseline}");
        let p5 = report["p5_cosine"].as_f64().unwrap();
        assert!(report["min_cosine"].as_f64().unwrap() <= p5 && p5 <= cosine);
    }
}

/// `--min-density` caps each layer's target for the calibrated methods as for the
/// others, and the summary and the record name the floor beside the target asked for.
#[test]
fn calibrated_methods_keep_the_min_density() {
    let dir = tempfile::tempdir().unwrap();
    for method in ["wanda", "sparsegpt"] {
        let out = dir.path().join(method);
        let o = out.to_str().unwrap();
        let summary = prune(method, &out, &["-s", "0.9", "--min-density", "0.25"]);
        let says = format!("{method} unstructured, layer scope, at 0.9 (--min-density 0.25), ");
        assert!(summary.contains(&says), "{summary}");
        let pruned = read(&out.join("model.safetensors"));
        let linears: Vec<_> = pruned.iter().filter(|(n, _)| is_encoder_linear(n)).collect();
        assert_eq!(linears.len(), 12);
        for (name, (_, _, values)) in linears {
            let zeros = values.iter().filter(|v| **v == 0.0).count();
            assert_eq!(zeros, values.len() * 3 / 4, "{method}: `{name}` keeps a quarter");
        }
        let recorded = format!(
            "pruned by shears: {method} unstructured, layer scope, at 0.9 (rounding truncate) (min density 0.25) (calibrated on "
        );
        assert!(ok(&["inspect", o]).contains(&recorded), "{recorded}");
    }
    // A floor the tensors' sizes do not divide: counts round toward it, never past it
    // (0.65 of 1024 weights rounded to nearest would keep 358, under 0.35).
    for method in ["magnitude", "wanda", "sparsegpt"] {
        let out = dir.path().join(format!("{method}-35"));
        let model = tiny_bert();
        let mut args = vec!["prune", model.to_str().unwrap(), "-o", out.to_str().unwrap()];
        args.extend(["-s", "0.9", "--min-density", "0.35", "--method", method, "-q"]);
        let calib = sentences("calibration.txt");
        if method != "magnitude" {
            args.extend(["--calib", &calib]);
        }
        ok(&args);
        for (name, (_, _, values)) in read(&out.join("model.safetensors")) {
            if is_encoder_linear(&name) {
                let kept = values.iter().filter(|v| **v != 0.0).count();
                assert!(kept as f64 >= 0.35 * values.len() as f64, "{method}: `{name}` {kept}");
            }
        }
    }
    // A floor of 1 keeps every weight: SparseGPT then changes none, and its masks say
    // nothing but that (no warning that they miss its updates, none that a sparsity
    // rounded to nothing).
    let (kept, masks) = (dir.path().join("kept"), dir.path().join("kept-masks.safetensors"));
    let m = masks.to_str().unwrap();
    let (model, calib) = (tiny_bert(), sentences("calibration.txt"));
    let o = shears(
        &[
            &["prune", model.to_str().unwrap(), "-o", kept.to_str().unwrap(), "-s", "0.5"][..],
            &["--method", "sparsegpt", "--calib", &calib, "--min-density", "1", "--masks-out", m],
        ]
        .concat(),
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("lowers each tensor's target from 0.5 to 0"), "{err}");
    assert!(!err.contains("--masks-out") && !err.contains("pruned no weight"), "{err}");
    assert_eq!(read(&kept.join("model.safetensors")), read(&model.join("model.safetensors")));
    // The lowered target is printed as the number it stands for, not the float residue
    // of 1 - 0.9999.
    let near = dir.path().join("near");
    let args = ["prune", model.to_str().unwrap(), "-o", near.to_str().unwrap(), "-s", "0.5"];
    let err = stderr(&shears(&[&args[..], &["--min-density", "0.9999", "-q"]].concat()));
    assert!(err.contains("lowers each tensor's target from 0.5 to 0.0001 ("), "{err}");
}

/// Pruning a pruned model towards a lower sparsity prunes nothing more (zeros stay
/// pruned), and one warning says so for every tensor, or names the one.
#[test]
fn tensors_already_sparser_than_the_target_are_one_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (pruned, again) = (dir.path().join("pruned"), dir.path().join("again"));
    prune("wanda", &pruned, &["-s", "0.5"]);
    let (p, a) = (pruned.to_str().unwrap(), again.to_str().unwrap());
    let o = shears(&["prune", p, "-o", a, "-s", "0.3", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stderr(&o),
        "shears: warning: 12 tensors were already sparser than their target before this run (the first, `encoder.layer.0.attention.output.dense.weight`: 0.5000 against 0.3000): zeros stay pruned, so they end above it (the first at 0.5000)\n"
    );
    let weights = |folder: &Path| read(&folder.join("model.safetensors"));
    let (before, after) = (weights(&pruned), weights(&again));
    let linears: Vec<&String> = before.keys().filter(|n| is_encoder_linear(n)).collect();
    assert_eq!(linears.len(), 12);
    for name in linears {
        assert_eq!(before[name], after[name], "{name}");
    }
    let one = dir.path().join("one");
    let only = ["--include", r"layer\.1\.output\.dense", "--quiet"];
    let o = shears(&[&["prune", p, "-o", one.to_str().unwrap(), "-s", "0.3"][..], &only].concat());
    assert_eq!(
        stderr(&o),
        "shears: warning: tensor `encoder.layer.1.output.dense.weight` was already sparser than its target before this run (0.5000 against 0.3000): zeros stay pruned, so it ends at 0.5000\n"
    );
    // A pattern that adds zeros to them: the same one warning.
    let (seventy, nm) = (dir.path().join("seventy"), dir.path().join("nm"));
    let s70 = seventy.to_str().unwrap();
    ok(&["prune", tiny_bert().to_str().unwrap(), "-o", s70, "-s", "0.7", "--quiet"]);
    let o = shears(&["prune", s70, "-o", nm.to_str().unwrap(), "--pattern", "2:4", "--quiet"]);
    let err = stderr(&o);
    assert!(o.status.success() && err.lines().count() == 1, "{err}");
    assert!(err.starts_with("shears: warning: 12 tensors were already sparser"), "{err}");
    // Global scope counts the pruned tensors as one, and says it of them as one.
    let global = dir.path().join("global");
    let o = shears(&["prune", p, "-o", global.to_str().unwrap(), "-s", "0.2", "--scope", "global"]);
    assert_eq!(
        stderr(&o),
        "shears: warning: the pruned tensors were already sparser than the target before this run (0.5000 against 0.2000): zeros stay pruned, so they end at 0.5000\n"
    );
    // --sparsity 0 asks for no pruning: nothing to say, and the summary says so.
    let zero = dir.path().join("zero");
    let o = shears(&["prune", p, "-o", zero.to_str().unwrap(), "-s", "0", "--quiet"]);
    assert_eq!(stderr(&o), "");
    let summary = stdout(&o).lines().last().unwrap_or_default().to_owned();
    assert!(summary.starts_with("nothing pruned (--sparsity 0): wrote "), "{summary}");
    // Quantized: kept weights rounded to zero are one warning, not one per tensor over
    // its target.
    let int8 = dir.path().join("int8");
    let model = tiny_bert();
    let args = ["prune", model.to_str().unwrap(), "-o", int8.to_str().unwrap(), "-s", "0"];
    let o = shears(&[&args[..], &["--quantize", "int8", "--quiet"]].concat());
    let err = stderr(&o);
    assert!(o.status.success() && err.contains("below half their int8 step"), "{err}");
    assert!(!err.contains("reached sparsity"), "{err}");
    // The mask file is mentioned only where there is one.
    assert!(!err.contains("--masks-out"), "{err}");
    let (with_masks, masks) = (dir.path().join("int8-masks"), dir.path().join("m.safetensors"));
    let args = ["prune", model.to_str().unwrap(), "-o", with_masks.to_str().unwrap(), "-s", "0"];
    let masks = ["--masks-out", masks.to_str().unwrap(), "--quantize", "int8", "--quiet"];
    let err = stderr(&shears(&[&args[..], &masks[..]].concat()));
    assert!(err.contains("--masks-out still marks them kept"), "{err}");
}

/// A calibrated run's report counts each tensor's zeros before it, as any prune does:
/// the weights' own zeros, and with `--masks-in` the weights its mask prunes.
#[test]
fn calibrated_runs_count_the_zeros_they_start_from() {
    let dir = tempfile::tempdir().unwrap();
    let (half, masks) = (dir.path().join("half"), dir.path().join("masks.safetensors"));
    let m = masks.to_str().unwrap();
    prune("wanda", &half, &["-s", "0.5", "--masks-out", m]);
    let before = |record: &str| -> Vec<(String, f64)> {
        let record: Value = serde_json::from_str(record).unwrap();
        let rows = record["tensors"].as_array().unwrap().iter();
        let pruned = rows.filter(|t| t["pruned"] == true);
        pruned
            .map(|t| {
                let name = t["name"].as_str().unwrap().to_owned();
                (name, t["sparsity_before"].as_f64().unwrap())
            })
            .collect()
    };
    let fresh = before(&prune("wanda", &dir.path().join("fresh"), &["-s", "0.7", "--json"]));
    assert_eq!(fresh.len(), 12);
    assert!(fresh.iter().all(|(_, s)| *s == 0.0), "{fresh:?}");
    let (model, calib) = (half.to_str().unwrap(), sentences("calibration.txt"));
    for extra in [&[][..], &["--masks-in", m]] {
        let again = dir.path().join("again");
        let o = ok(&[
            &["prune", model, "-o", again.to_str().unwrap(), "--method", "sparsegpt"][..],
            &["-s", "0.7", "--calib", &calib, "--calib-samples", "64", "--json"],
            extra,
        ]
        .concat());
        let counted = before(&o);
        assert_eq!(counted.len(), 12);
        assert!(counted.iter().all(|(_, s)| *s == 0.5), "{extra:?}: {counted:?}");
        // SparseGPT's updates give none of the earlier zeros a value again.
        let (first, second) =
            (read(&half.join("model.safetensors")), read(&again.join("model.safetensors")));
        for (name, (_, _, values)) in &first {
            let revived =
                values.iter().zip(&second[name].2).filter(|(a, b)| **a == 0.0 && **b != 0.0);
            assert_eq!(revived.count(), 0, "{extra:?}: `{name}`");
        }
        std::fs::remove_dir_all(&again).unwrap();
    }
    // The mask alone, on the dense weights: its pruned weights count as zeros.
    let dense = tiny_bert();
    let masked = dir.path().join("masked");
    let o = ok(&[
        &["prune", dense.to_str().unwrap(), "-o", masked.to_str().unwrap()][..],
        &["--method", "wanda", "-s", "0.7", "--calib", &calib, "--masks-in", m, "--json"],
    ]
    .concat());
    let counted = before(&o);
    assert_eq!(counted.len(), 12);
    assert!(counted.iter().all(|(_, s)| *s == 0.5), "{counted:?}");
    // SparseGPT from the masks alone (no target): the masked weights go, the kept ones
    // move to make up for them, and the summary names the method. Its own masks are
    // the same ones, and a warning says that they do not give this model on the
    // original weights.
    let rebuilt = dir.path().join("rebuilt");
    let masks_again = dir.path().join("masks-again.safetensors");
    let o = shears(
        &[
            &["prune", dense.to_str().unwrap(), "-o", rebuilt.to_str().unwrap()][..],
            &["--method", "sparsegpt", "--calib", &calib, "--masks-in", m, "-q"],
            &["--masks-out", masks_again.to_str().unwrap()],
        ]
        .concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let summary = stdout(&o).lines().last().unwrap_or_default().to_owned();
    let says = format!("sparsegpt from the masks of {m}, calibrated on ");
    assert!(summary.starts_with(&says), "{summary}");
    let warned = format!(
        "warning: --masks-out {} marks the weights sparsegpt kept, but it also changed their values",
        masks_again.display()
    );
    assert!(stderr(&o).contains(&warned), "{}", stderr(&o));
    assert_eq!(read(&masks_again), read(&masks), "the --masks-in masks, unchanged");
    let (first, second) =
        (read(&dense.join("model.safetensors")), read(&rebuilt.join("model.safetensors")));
    let (_, _, query) = &first["encoder.layer.0.attention.self.query.weight"];
    let (_, _, moved) = &second["encoder.layer.0.attention.self.query.weight"];
    let zeros = moved.iter().filter(|v| **v == 0.0).count();
    assert_eq!(zeros, moved.len() / 2, "the mask's half");
    assert!(query.iter().zip(moved).any(|(a, b)| *b != 0.0 && a != b), "kept weights moved");
}

/// A sentence's neighbours never include all the others, which any two models share:
/// few sentences compare fewer neighbours, and two none.
#[test]
fn eval_of_few_sentences_leaves_a_neighbour_out() {
    let dir = tempfile::tempdir().unwrap();
    let pruned = dir.path().join("pruned");
    let dense = tiny_bert();
    ok(&["prune", dense.to_str().unwrap(), "-o", pruned.to_str().unwrap(), "-s", "0.5", "-q"]);
    let texts = dir.path().join("texts.txt");
    let lines = ["The cat sat.", "A dog ran home.", "Birds fly south.", "Rain fell.", "Hi."];
    for (n, k, row) in [(5, 3, "top-3 neighbours kept"), (2, 0, "neighbours kept         -")] {
        std::fs::write(&texts, lines[..n].join("\n")).unwrap();
        let args = ["eval", dense.to_str().unwrap(), pruned.to_str().unwrap(), "--texts"]
            .map(String::from);
        let args: Vec<&str> =
            args.iter().map(String::as_str).chain([texts.to_str().unwrap()]).collect();
        let table = ok(&args);
        assert!(table.lines().any(|l| l.starts_with(row)), "{table}");
        assert_eq!(table.contains("(no neighbour measure"), k == 0, "{table}");
        let record: Value = serde_json::from_str(&ok(&[&args[..], &["--json"]].concat())).unwrap();
        assert_eq!(record["k"], k);
        assert_eq!(record["neighbour_overlap"].is_null(), k == 0, "{record}");
    }
}

/// Two models whose tokenizers read a text differently embed different tokens: `eval`
/// refuses to compare them, naming the first line they differ on.
#[test]
fn eval_refuses_models_that_tokenize_differently() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other");
    copy_tiny_bert(&other);
    // The same vocabulary, read without lowercasing: capitals become other tokens.
    edit_json(&other.join("tokenizer.json"), |t| t["normalizer"]["lowercase"] = false.into());
    let texts = dir.path().join("texts.txt");
    std::fs::write(&texts, "the cat sat\n\nThe Cat Sat\nbirds fly\n").unwrap();
    let (dense, texts) = (tiny_bert(), texts.to_str().unwrap().to_owned());
    let o = shears(&["eval", dense.to_str().unwrap(), other.to_str().unwrap(), "--texts", &texts]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let expected = format!(
        "shears: error: {} and {} are different models: their tokenizers read line 3 of {texts} differently\n",
        dense.display(),
        other.display()
    );
    assert_eq!(stderr(&o), expected);
    assert_eq!(stdout(&o), "");
    // Lowercase text reads the same: the models compare.
    std::fs::write(&texts, "the cat sat\nbirds fly\n").unwrap();
    ok(&["eval", dense.to_str().unwrap(), other.to_str().unwrap(), "--texts", &texts]);
    // The same tokenizer, sentences cut at another length: that is what is named.
    let longer = dir.path().join("longer");
    copy_tiny_bert(&longer);
    std::fs::write(longer.join("sentence_bert_config.json"), r#"{"max_seq_length": 64}"#).unwrap();
    let texts = sentences("validation.txt");
    let (d, l) = (dense.to_str().unwrap(), longer.to_str().unwrap());
    let o = shears(&["eval", d, l, "--texts", &texts]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let says = format!("shears: error: {d} and {l} cut sentences at different lengths (16 and 64");
    assert!(stderr(&o).starts_with(&says), "{}", stderr(&o));
    assert!(stderr(&o).trim_end().ends_with("give --max-len"), "{}", stderr(&o));
    ok(&["eval", d, l, "--texts", &texts, "--max-len", "16"]);
}

/// Masks an earlier run wrote into its output folder are named as masks when a rerun
/// would leave them beside weights they no longer describe, and replaced when the rerun
/// writes its masks there.
#[test]
fn a_rerun_names_the_masks_an_earlier_run_left_in_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let masks = out.join("masks.safetensors");
    let (m, o, k) = (tiny_bert(), out.to_str().unwrap(), masks.to_str().unwrap().to_owned());
    let m = m.to_str().unwrap();
    ok(&["prune", m, "-o", o, "-s", "0.5", "-q", "--masks-out", &k]);
    let first = read(&masks);
    let got = shears(&["prune", m, "-o", o, "-s", "0.7", "-q"]);
    assert_eq!(got.status.code(), Some(2), "{}", stderr(&got));
    let said = format!(
        "shears: error: the output folder already holds {k}, masks (as --masks-out writes) that would not match the new weights: give --masks-out {k} to replace them, or move that file\n"
    );
    assert_eq!(stderr(&got), said);
    assert_eq!(read(&masks), first);
    // Read as --masks-in from there, they still would not match: a copy elsewhere is
    // what the rerun reads.
    let got = shears(&["prune", m, "-o", o, "-s", "0.7", "-q", "--masks-in", &k]);
    assert_eq!(got.status.code(), Some(2), "{}", stderr(&got));
    let said = format!("{k}, the --masks-in masks, which would stay beside weights");
    assert!(stderr(&got).contains(&said), "{}", stderr(&got));
    let copy = dir.path().join("masks-copy.safetensors");
    std::fs::copy(&masks, &copy).unwrap();
    let c = copy.to_str().unwrap();
    ok(&["prune", m, "-o", o, "-s", "0.6", "-q", "--masks-in", c, "--masks-out", &k]);
    assert_ne!(read(&masks), first);
    let first = read(&masks);
    ok(&["prune", m, "-o", o, "-s", "0.7", "-q", "--masks-out", &k]);
    assert_ne!(read(&masks), first);
    // A link to nothing is named as one, not as weights a loader would read.
    std::fs::remove_file(&masks).unwrap();
    let gone = dir.path().join("gone.safetensors");
    std::os::unix::fs::symlink(&gone, &masks).unwrap();
    let got = shears(&["prune", m, "-o", o, "-s", "0.7", "-q"]);
    assert_eq!(got.status.code(), Some(2), "{}", stderr(&got));
    let said = format!(
        "shears: error: the output folder already holds {k}, a link to {} that does not exist: remove the link, or give a new or empty folder\n",
        gone.display()
    );
    assert_eq!(stderr(&got), said);
}

/// A calibrated method prunes only the linear layers the encoder runs: a tensor the
/// options chose beyond them is refused with what to give instead, and a layer past
/// `num_hidden_layers` is named as one the model never runs.
#[test]
fn calibrated_methods_say_why_a_chosen_tensor_is_not_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let (model, calib) = (tiny_bert(), sentences("calibration.txt"));
    let out = dir.path().join("out");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    let wanda = ["prune", m, "-o", o, "--method", "wanda", "--calib", &calib, "-s", "0.5"];
    let refused = |extra: &[&str]| {
        let got = shears(&[&wanda[..], extra].concat());
        assert_eq!(got.status.code(), Some(2), "{}", stderr(&got));
        assert!(!out.exists());
        stderr(&got)
    };
    let said = refused(&["--include", "pooler"]);
    assert!(said.contains("`pooler.dense.weight` is not one of them: narrow --include"), "{said}");
    let said = refused(&["--all"]);
    assert!(said.contains("is not one of them (nor are "), "{said}");
    assert!(said.contains(" other chosen tensors): leave out --all"), "{said}");
    let fewer = dir.path().join("fewer");
    copy_tiny_bert(&fewer);
    edit_json(&fewer.join("config.json"), |c| c["num_hidden_layers"] = 1.into());
    let args = ["prune", fewer.to_str().unwrap(), "-o", o, "--method", "wanda", "--calib", &calib];
    let got = shears(&[&args[..], &["-s", "0.5"]].concat());
    assert_eq!(got.status.code(), Some(2), "{}", stderr(&got));
    let said = stderr(&got);
    let past = "is in layer 1, past config.json's num_hidden_layers 1, so the model never runs it (nor are 5 other chosen tensors): --exclude them";
    assert!(said.contains(past), "{said}");
    // The encoder's own linears are stored outputs x inputs: --transposed is refused.
    let got = shears(&[&wanda[..], &["--transposed", "query"]].concat());
    assert_eq!(got.status.code(), Some(2), "{}", stderr(&got));
    assert!(stderr(&got).contains("--transposed does not apply"), "{}", stderr(&got));
    let layer0 = ["--include", "encoder\\.layer\\.0\\."];
    ok(&[&args[..], &["-s", "0.5", "-q"], &layer0[..]].concat());
}

/// Two folders of one hidden size whose configs differ elsewhere (layers, activation) are
/// two models, not a model and its pruned copy: `eval` compares them and says which
/// fields differ; the same folder copied says nothing of the kind.
#[test]
fn eval_names_the_config_fields_two_models_differ_in() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other");
    copy_tiny_bert(&other);
    edit_json(&other.join("config.json"), |c| {
        c["hidden_act"] = "relu".into();
        c["layer_norm_eps"] = 1e-5.into();
    });
    let pooling = r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#;
    std::fs::write(other.join("1_Pooling/config.json"), pooling).unwrap();
    let (dense, texts) = (tiny_bert(), sentences("validation.txt"));
    let (d, o) = (dense.to_str().unwrap(), other.to_str().unwrap());
    let out = shears(&["eval", d, o, "--texts", &texts]);
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stderr(&out);
    let warned: Vec<_> = said.lines().filter(|l| l.contains("pruning changes none")).collect();
    let first = format!("shears: warning: {d} and {o} differ in hidden_act gelu and relu, ");
    assert_eq!(warned.len(), 1, "{}", stderr(&out));
    assert!(warned[0].starts_with(&first), "{}", warned[0]);
    assert!(warned[0].contains("layer_norm_eps 1e-12 and 1e-5, pooling mean and cls: "));
    let same = dir.path().join("same");
    copy_tiny_bert(&same);
    let out = shears(&["eval", d, same.to_str().unwrap(), "--texts", &texts]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("pruning changes none"), "{}", stderr(&out));
}

/// What `embed` and `eval` embed other than a line as written is said once per kind, with
/// a count and the first line: lines cut at the maximum length and lines of special
/// tokens alone. `eval` also says when it measures a model against itself, or on the file
/// the pruned model was calibrated on.
#[test]
fn embed_and_eval_say_what_they_embed_other_than_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts.txt");
    // Lines 1 and 4 have more than 6 tokens with [CLS] and [SEP]; line 3 is a zero-width
    // space, which BERT's normaliser removes.
    std::fs::write(&texts, "the cat sat on the mat today\nthe dog\n\u{200b}\na b c d e f\n")
        .unwrap();
    let (model, t) = (tiny_bert(), texts.to_str().unwrap());
    let m = model.to_str().unwrap();
    let o = shears(&["embed", m, "--texts", t, "--max-len", "6", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = format!(
        "shears: warning: {t}: 2 lines (the first: line 1) have more than 6 tokens and were embedded from their first 6 (--max-len can raise it to 64, the model's position embeddings)\n\
         shears: warning: {t}: 1 line (line 3) holds no token but the tokenizer's special ones and was embedded from them alone\n"
    );
    assert_eq!(stderr(&o), said);
    // At the model's own limit there is no longer length to suggest.
    let long = dir.path().join("long.txt");
    std::fs::write(&long, "the cat sat on the mat ".repeat(20)).unwrap();
    let o = shears(&["embed", m, "--texts", long.to_str().unwrap(), "--max-len", "64", "--json"]);
    let err = stderr(&o);
    assert!(err.contains("has more than 64 tokens and was embedded from its first 64\n"), "{err}");
    let longer = "--max-len 64 is longer than the 16 tokens of";
    assert!(err.contains(longer) && err.contains("max_seq_length"), "{err}");
    // Long enough for every line: the empty one alone is said.
    let o = shears(&["embed", m, "--texts", t, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), said.lines().nth(1).unwrap().to_owned() + "\n");
    // --limit that leaves lines of text unread says so; one that reads them all does
    // not (line 3's zero-width space is text to the reader, though not to BERT).
    let o = shears(&["embed", m, "--texts", t, "--limit", "2", "--json"]);
    let limited = format!(
        "shears: warning: {t}: only its first 2 lines that hold text were read (--limit 2); it has more\n"
    );
    assert_eq!(stderr(&o), limited);
    let written = dir.path().join("limited.safetensors");
    let both = shears_interleaved(&[
        "embed",
        m,
        "--texts",
        t,
        "--limit",
        "2",
        "-o",
        written.to_str().unwrap(),
    ]);
    assert!(both.starts_with("embedded 2 sentences") && both.ends_with(&limited), "{both}");
    let o = shears(&["embed", m, "--texts", t, "--limit", "4", "--json"]);
    assert_eq!(stderr(&o), said.lines().nth(1).unwrap().to_owned() + "\n");
    let o = shears(&["eval", m, m, "--texts", t, "--limit", "2", "-q"]);
    assert!(stderr(&o).contains(&limited), "{}", stderr(&o));
    // A model against itself, on the file it was calibrated on.
    let pruned = dir.path().join("pruned");
    prune("wanda", &pruned, &["-s", "0.5"]);
    let p = pruned.to_str().unwrap();
    let calib = sentences("calibration.txt");
    let o = shears(&["eval", p, p, "--texts", &calib, "--max-len", "16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0],
        format!("shears: warning: {p} is both models: eval compares it with itself")
    );
    assert_eq!(
        lines[1],
        format!(
            "shears: warning: {calib}: 64 of its 256 sentences calibrated {p}: on those a pruned model tends to agree more with the dense one than on others, so held-out sentences measure it fairly"
        ),
    );
    assert_eq!(lines.len(), 3, "and the lines cut at 16 tokens: {err}");
    // --json has them too, as prune's does.
    let json: Value =
        serde_json::from_str(&ok(&["eval", p, p, "--texts", &calib, "--json"])).unwrap();
    let shown = json["warnings"]["shown"].as_array().unwrap();
    assert_eq!(shown.len(), 3, "{json}");
    assert_eq!(shown[0], format!("{p} is both models: eval compares it with itself"));
    let json: Value = serde_json::from_str(&ok(&["embed", m, "--texts", t, "--json"])).unwrap();
    assert_eq!(json["warnings"]["shown"].as_array().unwrap().len(), 1, "{json}");
    // The sentences are known by their hashes, not the file's name or their order: some
    // of them, reversed, under another name, are counted; other sentences under the
    // calibration file's name are not.
    let copy = dir.path().join("copy.txt");
    let text = std::fs::read_to_string(&calib).unwrap();
    // Lines 51-70: the calibration took the first 64.
    let mut some: Vec<&str> = text.lines().skip(50).take(20).collect();
    some.reverse();
    std::fs::write(&copy, some.join("\n")).unwrap();
    let o = shears(&["eval", m, p, "--texts", copy.to_str().unwrap()]);
    let said = format!("{}: 14 of its 20 sentences calibrated {p}", copy.display());
    assert!(stderr(&o).contains(&said), "{}", stderr(&o));
    let other = dir.path().join("other/calibration.txt");
    std::fs::create_dir(other.parent().unwrap()).unwrap();
    std::fs::copy(sentences("validation.txt"), &other).unwrap();
    let o = shears(&["eval", m, p, "--texts", other.to_str().unwrap()]);
    assert!(o.status.success() && !stderr(&o).contains("calibrated on"), "{}", stderr(&o));
}

/// `prune --calib` says how many calibration sentences were cut at `--max-len` and how
/// many hold only special tokens, as `embed` and `eval` do for theirs.
#[test]
fn calibration_sentences_cut_or_without_words_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, "the cat sat on the mat today\nthe dog\n\u{200b}\na b c d e f\n")
        .unwrap();
    let (out, c) = (dir.path().join("out"), calib.to_str().unwrap());
    let model = tiny_bert();
    let args = ["prune", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"];
    let json: Value = serde_json::from_str(&ok(&[
        &args[..],
        &["--method", "wanda", "--calib", c, "--max-len", "6", "--json", "--quiet"],
    ]
    .concat()))
    .unwrap();
    let shown: Vec<&str> =
        json["warnings"]["shown"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let said = |s: &str| shown.iter().any(|w| *w == format!("{c}: {s}"));
    assert!(
        said(
            "2 of the 4 calibration sentences have more than 6 tokens, cut to the first 6 (--max-len can raise it to 64, the model's position embeddings)"
        ),
        "{shown:?}"
    );
    assert!(
        said(
            "1 of the 4 calibration sentences holds no token but the tokenizer's special ones, which are all it calibrates on"
        ),
        "{shown:?}"
    );
}

/// `eval` of a folder with int8 layers measures it as it runs (integer products on tokens
/// rounded to int8) beside its weights as f32; a float folder gets one measure.
#[test]
fn eval_measures_an_int8_folder_as_it_runs_and_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let (int8, float) = (dir.path().join("int8"), dir.path().join("float"));
    prune("wanda", &int8, &["--pattern", "2:4", "--quantize", "int8"]);
    prune("wanda", &float, &["--pattern", "2:4"]);
    let (report, float_report) = (eval(&int8), eval(&float));
    assert!(float_report.get("int8_products").is_none(), "{float_report}");
    assert_eq!((&report["weights"], &float_report["weights"]), (&"f32".into(), &"f32".into()));
    let products = &report["int8_products"];
    assert_eq!(products["sentences"], report["sentences"]);
    let (as_run, as_f32) =
        (products["mean_cosine"].as_f64().unwrap(), report["mean_cosine"].as_f64().unwrap());
    // Rounding the weights costs little; rounding the tokens too, a little more.
    let float_cosine = float_report["mean_cosine"].as_f64().unwrap();
    assert!((as_f32 - float_cosine).abs() < 0.01, "{as_f32} vs f32 2:4 {float_cosine}");
    assert!(as_run != as_f32 && (as_run - as_f32).abs() < 0.02, "{as_run} vs {as_f32}");
    // The summary shows both side by side.
    let (dense, texts) = (tiny_bert(), sentences("validation.txt"));
    let text = ok(&["eval", dense.to_str().unwrap(), int8.to_str().unwrap(), "--texts", &texts]);
    assert!(text.contains("int8 products") && text.contains("weights as f32"), "{text}");
    assert!(text.contains(&format!("{as_run:.4}")), "{text}");
    // And says which model it measured against which.
    let which =
        format!("{} against {}, on the sentences of {texts}:", int8.display(), dense.display());
    assert!(text.starts_with(&which), "{text}");
    // Given in the wrong order, the two are measured and the user told.
    let o = shears(&["eval", float.to_str().unwrap(), dense.to_str().unwrap(), "--texts", &texts]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = format!(
        "shears: warning: {} has 50.0% of its linear layers' weights zero, {} 0.0%: eval takes the dense model first",
        float.display(),
        dense.display()
    );
    assert!(stderr(&o).starts_with(&said), "{}", stderr(&o));
    // In the right order only the tiny model's 16 positions are noted: every sentence
    // here is longer.
    let o = shears(&["eval", dense.to_str().unwrap(), float.to_str().unwrap(), "--texts", &texts]);
    let cut = format!(
        "shears: warning: {texts}: 256 lines (the first: line 1) have more than 16 tokens and were embedded from their first 16 (--max-len can raise it to 64, the model's position embeddings)\n"
    );
    assert_eq!(stderr(&o), cut);
    // Texts that cannot be used are the one thing said, before either model is read.
    let one = float.with_file_name("one.txt");
    std::fs::write(&one, "a single sentence\n").unwrap();
    let o = shears(&[
        "eval",
        float.to_str().unwrap(),
        dense.to_str().unwrap(),
        "--texts",
        one.to_str().unwrap(),
    ]);
    let said =
        format!("shears: error: {}: eval needs at least 2 sentences, it has 1\n", one.display());
    assert_eq!((o.status.code(), stderr(&o)), (Some(2), said));
}

#[test]
fn an_n_m_pattern_alone_sets_the_sparsity_and_every_group_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    for method in ["wanda", "sparsegpt"] {
        let out = dir.path().join(method);
        prune(method, &out, &["--pattern", "2:4"]);
        let pruned = read(&out.join("model.safetensors"));
        for (name, (_, shape, values)) in pruned.iter().filter(|(n, _)| is_encoder_linear(n)) {
            assert_eq!(shape[1] % 4, 0);
            for group in values.chunks(4) {
                let zeros = group.iter().filter(|v| **v == 0.0).count();
                assert_eq!(zeros, 2, "{method}: {name}: a group of 4 keeps exactly 2");
            }
        }
    }
}

#[test]
fn embed_writes_unit_embeddings_to_a_file_or_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let texts = dir.path().join("texts.txt");
    std::fs::write(&texts, "The cat sat on the mat.\n\nA dog ran home.\n").unwrap();
    let out = dir.path().join("embeddings.safetensors");
    let (model, texts) = (tiny_bert(), texts.to_str().unwrap().to_owned());
    let args = ["embed", model.to_str().unwrap(), "--texts", &texts];
    let said = ok(&[&args[..], &["-o", out.to_str().unwrap(), "--quiet"]].concat());
    assert!(said.contains("2 sentences") && said.contains("32 dimensions"), "{said}");
    assert!(said.contains("1 blank line skipped: row i is the text on line lines[i]"), "{said}");
    // Neither written nor printed, embeddings would be computed for nothing.
    let o = shears(&args);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let says = "shears: error: nothing to do: -o FILE writes the embeddings, --json prints them\n";
    assert_eq!(stderr(&o), says);
    // --fastest alone reports its timing; there are no rows to match with lines.
    let said = ok(&[&args[..], &["--fastest"]].concat());
    assert!(said.contains("(1 blank line skipped); -o FILE writes them"), "{said}");
    let written = read(&out);
    let (_, shape, values) = &written["embeddings"];
    assert_eq!(shape, &[2, 32]);
    // The file says what made it: the folder and the texts by name, and the settings.
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&std::fs::read(&out).unwrap()).unwrap();
    let metadata = header.metadata().clone().unwrap();
    let model_name = model.file_name().unwrap().to_str().unwrap();
    for (key, value) in [
        ("model", model_name),
        ("texts", "texts.txt"),
        ("max_len", "16"),
        ("pooling", "mean"),
        ("normalized", "true"),
        ("linear_layers", "12 dense"),
        ("shears", env!("CARGO_PKG_VERSION")),
    ] {
        assert_eq!(metadata.get(key).map(String::as_str), Some(value), "{key}: {metadata:?}");
    }
    let (dtype, shape, lines) = &written["lines"];
    assert_eq!(
        (*dtype, shape.as_slice(), lines.as_slice()),
        (Dtype::I64, &[2][..], &[1.0, 3.0][..])
    );
    let json: Value = serde_json::from_str(&ok(&[&args[..], &["--json"]].concat())).unwrap();
    let rows = json["embeddings"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(json["lines"], serde_json::json!([1, 3]), "each row's line in the file");
    for (row, file_row) in rows.iter().zip(values.chunks(32)) {
        let row: Vec<f64> = row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "normalised, as the folder's modules say");
        for (a, b) in row.iter().zip(file_row) {
            assert!((a - b).abs() < 1e-6, "the file and the JSON hold the same embeddings");
        }
    }
}

#[test]
fn embed_fastest_runs_a_timed_plan_and_keeps_the_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let (pruned, quantized) = (dir.path().join("pruned"), dir.path().join("int8"));
    prune("wanda", &pruned, &["-s", "0.9"]);
    prune("wanda", &quantized, &["-s", "0.9", "--quantize", "int8"]);
    let texts = sentences("validation.txt");
    for model in [&pruned, &quantized] {
        let args = ["embed", model.to_str().unwrap(), "--texts", &texts];
        let plain: Value = serde_json::from_str(&ok(&[&args[..], &["--json"]].concat())).unwrap();
        assert!(plain.get("layers").is_none(), "without --fastest there is no plan");
        let out = dir.path().join("fastest.safetensors");
        let out_args = ["--json", "--fastest", "-o", out.to_str().unwrap()];
        let fastest: Value = serde_json::from_str(&ok(&[&args[..], &out_args].concat())).unwrap();
        // Every encoder linear layer (2 layers of 6), dense or in the format it was timed
        // in, whichever the timing found faster.
        let layers = fastest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 12, "{fastest}");
        for layer in layers {
            assert!(is_encoder_linear(layer["name"].as_str().unwrap()), "{layer}");
            let chosen = &layer["chosen"];
            assert!(chosen == "dense" || *chosen == layer["proposed"], "{layer}");
        }
        // Where a layer left dense, the whole model was timed both ways on the first
        // sentences (up to the layers' timing tokens) and the faster ran; dense runs
        // the plain run's model, so its embeddings are the plain ones exactly.
        assert!(fastest["planning_seconds"].as_f64().unwrap() > 0.0, "{fastest}");
        assert!(plain.get("planning_seconds").is_none(), "nothing planned without --fastest");
        assert!(fastest["embedding_seconds"].as_f64().unwrap() > 0.0, "{fastest}");
        assert!(plain.get("embedding_seconds").is_none(), "{plain}");
        let whole = &fastest["whole_model"];
        if whole.is_null() {
            let all_dense = layers.iter().all(|l| l["chosen"] == "dense");
            assert!(all_dense, "a plan with a layer out of dense is checked: {fastest}");
        } else {
            assert!(whole["sentences"].as_u64().unwrap() >= 1, "{whole}");
            assert!(whole["tokens"].as_u64().unwrap() >= whole["sentences"].as_u64().unwrap());
            for seconds in [&whole["dense_seconds"], &whole["planned_seconds"]] {
                assert!(seconds.as_f64().unwrap() > 0.0, "{whole}");
            }
            // The plan runs only if at least 2% faster than dense.
            let (planned, dense) = (
                whole["planned_seconds"].as_f64().unwrap(),
                whole["dense_seconds"].as_f64().unwrap(),
            );
            let faster = if planned < dense * 0.98 { "planned" } else { "dense" };
            assert_eq!(whole["ran"], faster, "{whole}");
            if faster == "dense" {
                assert_eq!(fastest["embeddings"], plain["embeddings"], "dense is the plain run");
                assert!(layers.iter().all(|l| l["chosen"] == "dense"), "what ran: {fastest}");
            }
        }
        // The file says what the layers ran in, as the plan's choices count them.
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for chosen in layers.iter().map(|l| l["chosen"].as_str().unwrap()) {
            match counts.iter_mut().find(|(format, _)| *format == chosen) {
                Some((_, n)) => *n += 1,
                None => counts.push((chosen, 1)),
            }
        }
        let counts: Vec<String> = counts.iter().map(|(f, n)| format!("{n} {f}")).collect();
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&std::fs::read(&out).unwrap()).unwrap();
        let ran = header.metadata().as_ref().and_then(|m| m.get("linear_layers").cloned());
        assert_eq!(ran, Some(counts.join(", ")), "{fastest}");
        // Whatever the plan, the embeddings are a rounding away from the dense run's
        // (for int8 layers, their inputs' rounding to int8).
        let least = least_cosine(&plain, &fastest);
        assert!(least > 0.999, "{}: least cosine {least}", model.display());
        let said = ok(&[&args[..], &["--fastest"]].concat());
        assert!(said.contains("linear layers ran"), "the summary says how they ran: {said}");
        assert!(said.contains("; loading and planning took "), "and what planning cost: {said}");
    }
}

#[test]
fn the_whole_model_bench_times_dense_and_sparse_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pruned");
    prune("wanda", &out, &["-s", "0.9"]);
    let texts = sentences("validation.txt");
    let args = ["bench", out.to_str().unwrap(), "--texts", &texts, "--seq-len", "16"];
    // A model with no pruned layer has no formats to say anything of.
    let dense = tiny_bert();
    let table = ok(&["bench", dense.to_str().unwrap(), "--texts", &texts, "--seq-len", "16", "-q"]);
    // The default batches, one sentence and 32, each with its verdict below the table.
    let verdicts: Vec<&str> = table.lines().rev().take(2).collect();
    let dense = "no layer is pruned; the model runs dense.";
    assert_eq!(verdicts, [format!("32 sentences: {dense}"), format!("1 sentence: {dense}")]);
    // Below the line naming the files, the table fits a terminal.
    assert!(table.lines().skip(1).all(|l| l.chars().count() <= 100), "{table}");
    let json: Value =
        serde_json::from_str(&ok(&[&args[..], &["--batch", "1,2", "--json", "-q"]].concat()))
            .unwrap();
    assert_eq!((json["seq_len"].as_u64(), json["texts"].as_str()), (Some(16), Some(&*texts)));
    let settings = json["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 2);
    for (setting, sentences) in settings.iter().zip([1, 2]) {
        assert_eq!(setting["sentences"], sentences);
        assert_eq!(setting["tokens"], 16 * sentences);
        let layers = setting["layers"].as_array().unwrap();
        let sparse = layers.iter().filter(|l| l["chosen"] != "dense").count();
        // With no layer sparse the sparse model is the dense one, and is not timed again.
        let runs: &[&str] = if sparse == 0 { &["dense_ms"] } else { &["dense_ms", "sparse_ms"] };
        assert_eq!(setting["sparse_ms"].is_null(), sparse == 0, "{setting}");
        assert_eq!(setting["speedup"].is_null(), sparse == 0, "{setting}");
        for run in runs {
            let t = &setting[*run];
            let (min, median, max) = (
                t["min"].as_f64().unwrap(),
                t["median"].as_f64().unwrap(),
                t["max"].as_f64().unwrap(),
            );
            assert!(0.0 < min && min <= median && median <= max, "{run}: {t}");
        }
        assert_eq!(layers.len(), 12);
        assert_eq!(setting["sparse_layers"], sparse);
        for layer in layers {
            assert!((layer["sparsity"].as_f64().unwrap() - 0.9).abs() < 0.01, "{layer}");
            // Times in the setting's unit, milliseconds.
            assert!(layer["dense_ms"].as_f64().unwrap() > 0.0, "{layer}");
            assert!(layer.get("dense_seconds").is_none(), "{layer}");
        }
        // Query, key and value proposed one stackable format are timed as the one
        // product they run as: each names the other two, whose times it shares.
        for qkv in layers.chunks(6).map(|l| &l[..3]) {
            let names: Vec<&str> = qkv.iter().map(|l| l["name"].as_str().unwrap()).collect();
            assert!(names[0].ends_with("query.weight") && names[2].ends_with("value.weight"));
            let proposed = qkv[0]["proposed"].as_str().unwrap();
            let stacked = qkv.iter().all(|l| l["proposed"] == proposed)
                && (proposed == "csr" || proposed.starts_with("n:m"));
            for (k, layer) in qkv.iter().enumerate() {
                let others: Vec<&str> = (0..3).filter(|&j| j != k).map(|j| names[j]).collect();
                match layer.get("timed_with") {
                    Some(with) => {
                        assert!(stacked, "{layer}");
                        assert_eq!(with.as_array().unwrap().len(), 2);
                        assert_eq!(with[0].as_str(), Some(others[0]));
                        assert_eq!(with[1].as_str(), Some(others[1]));
                        assert_eq!(layer["dense_ms"], qkv[0]["dense_ms"]);
                    }
                    None => assert!(!stacked, "{layer}"),
                }
            }
        }
        // The attention's output projection is timed alone; the feed-forward layers, when
        // both were proposed N:M, as the pair they run as: each names the other.
        for layer in layers.chunks(6) {
            assert!(layer[3].get("timed_with").is_none(), "{}", layer[3]);
            let (up, down) = (&layer[4], &layer[5]);
            let nm = |l: &Value| l["proposed"].as_str().unwrap().starts_with("n:m");
            let paired = nm(up) && nm(down);
            for (one, other) in [(up, down), (down, up)] {
                match one.get("timed_with") {
                    Some(with) => {
                        assert!(paired, "{one}");
                        assert_eq!(with.as_array().unwrap(), &vec![other["name"].clone()]);
                        assert_eq!(one["dense_ms"], other["dense_ms"]);
                    }
                    None => assert!(!paired, "{one}"),
                }
            }
        }
    }
    // A name read from the command line reaches the terminal escaped.
    let odd = dir.path().join("v\u{1b}[31m.txt");
    std::fs::copy(&texts, &odd).unwrap();
    let odd_args = ["bench", out.to_str().unwrap(), "--texts", odd.to_str().unwrap()];
    let table = ok(&[&odd_args[..], &["--seq-len", "16"]].concat());
    assert!(table.contains("dense ms") && table.contains("speedup"), "{table}");
    let escaped = dir.path().join("v\\u{1b}[31m.txt");
    let header = format!(
        "whole model, sentences of 16 tokens cut from the words of {}, ",
        escaped.display()
    );
    assert!(table.contains(&header) && !table.contains('\u{1b}'), "{table}");
}

#[test]
fn calibrated_methods_refuse_what_they_cannot_do_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let model = tiny_bert();
    let model = model.to_str().unwrap();
    let calib = sentences("calibration.txt");
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let missing = dir.path().join("missing.txt");
    let weights = tiny_bert().join("model.safetensors");
    // 300,000 short lines at up to 64 tokens each: past what calibration holds (2^24
    // tokens), refused before they are tokenized.
    let many = dir.path().join("many.txt");
    std::fs::write(&many, "a b\n".repeat(300_000)).unwrap();
    let many = many.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--method",
                "wanda",
                "-s",
                "0.5",
                "--calib",
                many,
                "--calib-samples",
                "300000",
                "--max-len",
                "64",
            ],
            "lower --calib-samples or --max-len",
        ),
        (vec!["--method", "wanda", "-s", "0.5"], "needs --calib"),
        (
            vec!["--method", "sparsegpt", "-s", "0", "--calib", &calib],
            "--method sparsegpt at sparsity 0 prunes nothing, so its --calib text would not be read",
        ),
        (
            vec!["--method", "wanda", "--calib", &calib, "--masks-in", missing.to_str().unwrap()],
            "applies the --masks-in masks only, so its --calib text would not be read: give --sparsity above 0, or leave out --method and --calib",
        ),
        (vec!["--method", "sparsegpt", "-s", "0.5", "--calib", empty.to_str().unwrap()], "no line"),
        (
            vec!["--method", "wanda", "-s", "0.5", "--calib", missing.to_str().unwrap()],
            "missing.txt",
        ),
        (
            vec!["--method", "sparsegpt", "-s", "0.5", "--calib", &calib, "--pattern", "rows"],
            "rows",
        ),
        (
            vec!["--method", "wanda", "-s", "0.5", "--calib", &calib, "--pattern", "per-row"],
            "not per-row: its unstructured pattern already prunes each row to the target",
        ),
        (
            vec!["--method", "sparsegpt", "-s", "0.5", "--calib", &calib, "--pattern", "per-row"],
            "(e.g. 2:4), not per-row\n",
        ),
        (vec!["--method", "wanda", "-s", "0.5", "--calib", &calib, "--all"], "--exclude"),
        (vec!["--method", "wanda", "-s", "0.5", "--calib", &calib, "--scope", "global"], "global"),
        (
            vec!["--method", "wanda", "-s", "0.5", "--calib", &calib, "--max-len", "100"],
            "64 position",
        ),
    ];
    for (extra, needle) in cases {
        let o = shears(&[&["prune", model, "-o", out.to_str().unwrap()][..], &extra].concat());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{extra:?}: `{needle}` not in {err}");
        assert!(!out.exists(), "{extra:?}: nothing is written");
    }
    // A single weights file has no tokenizer to run the model with.
    let out = dir.path().join("out.safetensors");
    let o = shears(&[
        "prune",
        weights.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--method",
        "wanda",
        "-s",
        "0.5",
        "--calib",
        &calib,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("folder"), "{}", stderr(&o));
    assert!(!out.exists());
    // embed, eval and bench --texts name the folder or file they cannot use.
    for args in [
        vec!["embed", weights.to_str().unwrap(), "--texts", &calib],
        vec!["eval", model, missing.to_str().unwrap(), "--texts", &calib],
        vec!["eval", model, model, "--texts", empty.to_str().unwrap()],
        vec!["bench", weights.to_str().unwrap(), "--texts", &calib],
    ] {
        let o = shears(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("model.safetensors") || err.contains(".txt"), "{args:?}: {err}");
    }
    // A folder that is not there is said to be missing, by every command that reads one.
    let m = missing.to_str().unwrap();
    for args in [
        vec!["embed", m, "--texts", &calib],
        vec!["eval", model, m, "--texts", &calib],
        vec!["bench", m, "--texts", &calib],
    ] {
        let err = stderr(&shears(&args));
        assert!(err.starts_with(&format!("shears: error: {m} does not exist")), "{args:?}: {err}");
    }
    // Options of the per-layer bench that the whole model has no use for are refused.
    for (option, said) in [
        (&["--spatial", "7x7"][..], "--spatial shapes the inputs of convolution layers"),
        (&["--all"][..], "--all times every 2-D and 4-D tensor as a layer"),
    ] {
        let o = shears(&[&["bench", model, "--texts", &calib][..], option].concat());
        assert_eq!(o.status.code(), Some(2), "{option:?}");
        assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
        assert!(stderr(&o).contains(said), "{}", stderr(&o));
    }
    // A weights file where the folder belongs is named as such, with or without -o.
    let embeddings = dir.path().join("embeddings.safetensors");
    let (w, e) = (weights.to_str().unwrap(), embeddings.to_str().unwrap());
    for args in [
        vec!["embed", w, "--texts", &calib],
        vec!["embed", w, "--texts", &calib, "-o", e],
        vec!["embed", w, "--texts", &calib, "--fastest"],
    ] {
        let o = shears(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("is not a model folder"), "{args:?}: {err}");
    }
    assert!(!embeddings.exists());
    let o = shears(&["embed", missing.to_str().unwrap(), "--texts", &calib, "--json"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing.txt does not exist"), "{}", stderr(&o));
}

/// The record says what the calibration ran on, a short text file is said to be short,
/// and files already in the output folder are named, not silently kept.
#[test]
fn the_record_names_the_calibration_and_files_it_left() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("stale.txt"), "from an earlier run").unwrap();
    std::fs::write(out.join("config.json"), "{\"mine\": 1}").unwrap();
    let texts = dir.path().join("three.txt");
    std::fs::write(&texts, "The cat sat.\n\nA dog ran home.\nBirds fly south.\n").unwrap();
    // A mask file outside the output folder, written over: not the folder's.
    let masks = dir.path().join("masks.safetensors");
    std::fs::write(&masks, "old masks").unwrap();
    let model = tiny_bert();
    let args = [
        "prune",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--masks-out",
        masks.to_str().unwrap(),
        "--method",
        "wanda",
        "-s",
        "0.5",
        "--calib",
        texts.to_str().unwrap(),
        "--calib-samples",
        "10",
        "--json",
    ];
    // A file the run would copy over that is not the model's is someone else's: refused,
    // before anything is written.
    refused(
        &args,
        &format!(
            "{} differs from the model's {}, which this run copies there",
            out.join("config.json").display(),
            model.join("config.json").display()
        ),
    );
    assert_eq!(std::fs::read(out.join("config.json")).unwrap(), b"{\"mine\": 1}");
    assert_eq!(std::fs::read(&masks).unwrap(), b"old masks");
    assert!(!out.join("model.safetensors").exists());
    // The model's own copy (a folder pruned into before) is written over, and said.
    std::fs::copy(model.join("config.json"), out.join("config.json")).unwrap();
    let o = shears(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let record: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let c = &record["calibration"];
    assert_eq!(c["sentences"], 3);
    assert_eq!(c["asked"], 10);
    assert_eq!(c["max_len"], 16, "the folder's max_seq_length, under the default of 128");
    assert!(c["tokens"].as_u64().unwrap() >= 3 * 3, "{c}");
    let warnings = record["warnings"].to_string();
    let short = "three.txt has 3 lines with text, fewer than --calib-samples 10: all were used";
    assert!(warnings.contains(short), "{warnings}");
    assert!(warnings.contains("stale.txt"), "{warnings}");
    assert!(out.join("stale.txt").is_file(), "left as it was");
    // The model's own copy is written over with the same bytes: nothing to say.
    assert!(!warnings.contains("wrote over"), "{warnings}");
    let config = std::fs::read(out.join("config.json")).unwrap();
    assert_eq!(config, std::fs::read(tiny_bert().join("config.json")).unwrap());
    // Weights shears wrote are replaced, and the run says so; weights it did not write
    // are someone else's, refused before anything is written.
    let o = shears(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let record: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let warnings = record["warnings"].to_string();
    assert!(
        warnings.contains("1 file this run wrote over") && warnings.contains("model.safetensors")
    );
    std::fs::write(out.join("model.safetensors"), "my own weights").unwrap();
    let weights = out.join("model.safetensors");
    refused(
        &args,
        &format!(
            "{} is a weights file shears did not write (it carries no pruning record)",
            weights.display()
        ),
    );
    assert_eq!(std::fs::read(&weights).unwrap(), b"my own weights");
}

/// A model folder's private files and folders stay private in the output: copies take
/// their sources' permission bits, new folders their counterparts' (the owner's kept).
#[cfg(unix)]
#[test]
fn copies_keep_their_sources_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (model, out) = (dir.path().join("model"), dir.path().join("out"));
    copy_tiny_bert(&model);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let set = |p: &Path, m: u32| std::fs::set_permissions(p, PermissionsExt::from_mode(m)).unwrap();
    set(&model.join("tokenizer.json"), 0o600);
    set(&model.join("config.json"), 0o640);
    set(&model.join("vocab.txt"), 0o666);
    set(&model.join("1_Pooling"), 0o500);
    ok(&["prune", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5", "-q"]);
    assert_eq!(mode(&out.join("tokenizer.json")), 0o600);
    assert_eq!(mode(&out.join("config.json")), 0o640);
    assert_eq!(mode(&out.join("vocab.txt")), 0o644, "never writable by others");
    assert_eq!(mode(&out.join("1_Pooling")), 0o700, "the owner's bits kept whole");
    assert_eq!(
        mode(&out.join("1_Pooling/config.json")),
        mode(&model.join("1_Pooling/config.json"))
    );
    set(&model.join("1_Pooling"), 0o755);
}

/// Copies the tiny BERT's folder to `to`.
/// SparseGPT's Hessian grows with the square of a layer's inputs, which `config.json`
/// can set far out of proportion to the weights' bytes: past its bound, a run is one
/// line naming the layer, with nothing written.
#[test]
fn sparsegpt_refuses_a_hessian_past_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let wide = dir.path().join("wide");
    copy_tiny_bert(&wide);
    let inner = 40_000;
    edit_json(&wide.join("config.json"), |c| c["intermediate_size"] = inner.into());
    let widened = |name: &str, shape: Vec<usize>, values: Vec<f64>| {
        if name.ends_with("intermediate.dense.weight") {
            (vec![inner, shape[1]], vec![0.0; inner * shape[1]])
        } else if name.ends_with("intermediate.dense.bias") {
            (vec![inner], vec![0.0; inner])
        } else if name.ends_with(".output.dense.weight") && !name.contains("attention") {
            (vec![shape[0], inner], vec![0.0; shape[0] * inner])
        } else {
            (shape, values)
        }
    };
    let tensors: Vec<T> = read(&tiny_bert().join("model.safetensors"))
        .into_iter()
        .map(|(name, (dtype, shape, values))| {
            let (shape, values) = widened(&name, shape, values);
            T { name: Box::leak(name.into_boxed_str()), dtype, shape, values }
        })
        .collect();
    write(&wide.join("model.safetensors"), &tensors);
    let out = dir.path().join("out");
    let calib = sentences("calibration.txt");
    let o = shears(
        &[
            &["prune", wide.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"][..],
            &["--method", "sparsegpt", "--calib", &calib, "--calib-samples", "4"],
        ]
        .concat(),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    let said = "`encoder.layer.0.output.dense.weight` has 40000 inputs: SparseGPT's Hessian of them would take 11 GiB (shears factors at most 32768 inputs)";
    assert!(err.contains(said), "{err}");
    assert!(!out.exists());
}

fn copy_tiny_bert(to: &Path) {
    std::fs::create_dir_all(to.join("1_Pooling")).unwrap();
    for entry in std::fs::read_dir(tiny_bert()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(tiny_bert().join("1_Pooling/config.json"), to.join("1_Pooling/config.json"))
        .unwrap();
}

/// A module folder of the sentence-transformer that links to another folder of the
/// model is part of the model all the same: its files are copied under the link's name
/// and the pruned folder loads. One that links outside the model folder is refused
/// before anything is written (copying it would copy whatever that folder holds), and a
/// linked folder outside that no module names is left out, and named.
#[cfg(unix)]
#[test]
fn module_folders_behind_links_are_copied_from_inside_only() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tiny_bert(&model);
    std::fs::rename(model.join("1_Pooling"), model.join("pooling")).unwrap();
    std::fs::create_dir(model.join("pooling/inner")).unwrap();
    std::fs::write(model.join("pooling/weights.safetensors"), "not pruned").unwrap();
    symlink("pooling", model.join("1_Pooling")).unwrap();
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    symlink(&other, model.join("extra")).unwrap();
    let out = dir.path().join("out");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    let run = shears(&["prune", m, "-o", o, "-s", "0.5", "-q"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let config = std::fs::read(model.join("pooling/config.json")).unwrap();
    for copied in ["1_Pooling/config.json", "pooling/config.json"] {
        let written = out.join(copied);
        assert!(std::fs::symlink_metadata(&written).unwrap().is_file(), "{copied}");
        assert_eq!(std::fs::read(&written).unwrap(), config, "{copied}");
    }
    let err = stderr(&run);
    assert!(err.contains("extra was not copied: it links to a folder outside the model"), "{err}");
    let weights = "1_Pooling/weights.safetensors was not copied: weights shears did not prune";
    assert!(err.contains(weights), "{err}");
    assert!(
        err.contains("1_Pooling/inner was not copied: it is not a file of the module"),
        "{err}"
    );
    assert!(!out.join("extra").exists() && !out.join("1_Pooling/inner").exists());
    ok(&["embed", o, "--texts", &sentences("validation.txt"), "--limit", "3", "--json"]);
    // Linked outside the model folder: refused, nothing written.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::rename(model.join("pooling"), &elsewhere).unwrap();
    std::fs::remove_file(model.join("1_Pooling")).unwrap();
    symlink(&elsewhere, model.join("1_Pooling")).unwrap();
    let refused_out = dir.path().join("refused");
    let run = shears(&["prune", m, "-o", refused_out.to_str().unwrap(), "-s", "0.5"]);
    assert_eq!(run.status.code(), Some(2), "{}", stderr(&run));
    let expected = format!(
        "shears: error: {m}: the module folder 1_Pooling that modules.json names links outside the model folder, and shears copies nothing from outside it: put the module's files in the model folder\n"
    );
    assert_eq!(stderr(&run), expected);
    assert!(!refused_out.exists());
}

/// A module folder of a hidden name (`.pooling`), which the walk of the model folder
/// passes over as it does `.git`, is copied all the same: the model loads it by the
/// name `modules.json` gives, and without it the pruned folder would not load.
#[test]
fn module_folders_of_hidden_names_are_copied() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tiny_bert(&model);
    std::fs::rename(model.join("1_Pooling"), model.join(".pooling")).unwrap();
    std::fs::create_dir(model.join(".pooling/inner")).unwrap();
    let modules = std::fs::read_to_string(model.join("modules.json")).unwrap();
    assert!(modules.contains("\"1_Pooling\""), "{modules}");
    std::fs::write(model.join("modules.json"), modules.replace("\"1_Pooling\"", "\".pooling\""))
        .unwrap();
    std::fs::create_dir(model.join(".git")).unwrap();
    std::fs::write(model.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    let out = dir.path().join("out");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    let run = shears(&["prune", m, "-o", o, "-s", "0.5", "-q"]);
    assert!(run.status.success(), "{}", stderr(&run));
    let config = std::fs::read(model.join(".pooling/config.json")).unwrap();
    assert_eq!(std::fs::read(out.join(".pooling/config.json")).unwrap(), config);
    let err = stderr(&run);
    assert!(err.contains(".pooling/inner was not copied: it is not a file of the module"), "{err}");
    assert!(!out.join(".git").exists(), "hidden folders no module names stay out");
    ok(&["embed", o, "--texts", &sentences("validation.txt"), "--limit", "3", "--json"]);
    // Named through `.`, as the loaders accept it: the same folder.
    std::fs::write(
        model.join("modules.json"),
        modules.replace("\"1_Pooling\"", "\"./.pooling/.\""),
    )
    .unwrap();
    let dotted = dir.path().join("dotted");
    let run = shears(&["prune", m, "-o", dotted.to_str().unwrap(), "-s", "0.5", "-q"]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(std::fs::read(dotted.join(".pooling/config.json")).unwrap(), config);
}

#[track_caller]
/// A tokenizer the tokenizers library panics on, as it reads it or as it encodes, is one
/// line naming its file, whichever command reads it; no panic message reaches stderr.
#[test]
fn tokenizers_that_panic_the_library_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let texts = sentences("validation.txt");
    let out = dir.path().join("out");
    for (name, part, value) in [
        ("charsmap", "normalizer", r#"{"type": "Precompiled", "precompiled_charsmap": "AAAA"}"#),
        ("chunks", "pre_tokenizer", r#"{"type": "FixedLength", "length": 0}"#),
    ] {
        let model = dir.path().join(name);
        copy_tiny_bert(&model);
        let tokenizer = model.join("tokenizer.json");
        edit_json(&tokenizer, |t| t[part] = serde_json::from_str(value).unwrap());
        let m = model.to_str().unwrap();
        let o = out.to_str().unwrap();
        let named = format!("{}: ", tokenizer.display());
        refused(&["embed", m, "--texts", &texts, "--json"], &named);
        refused(&["bench", m, "--texts", &texts, "--batch", "1"], &named);
        refused(
            &["prune", m, "-o", o, "--method", "wanda", "-s", "0.5", "--calib", &texts],
            &named,
        );
        assert!(!out.exists());
    }
}

/// Every report line is one line of text: names of folders and files (from the command
/// line) reach the terminal with their control characters escaped.
#[test]
fn names_in_reports_are_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let odd = "e\u{1b}]0;title\u{7}\u{1b}[31m\nx";
    let model = dir.path().join(odd);
    copy_tiny_bert(&model);
    let texts = dir.path().join(format!("{odd}.txt"));
    std::fs::copy(sentences("calibration.txt"), &texts).unwrap();
    let (m, t) = (model.to_str().unwrap(), texts.to_str().unwrap());
    let pruned = dir.path().join(format!("{odd}.pruned"));
    let onnx = dir.path().join(format!("{odd}.onnx"));
    for args in [
        vec!["prune", m, "-o", pruned.to_str().unwrap(), "--method", "wanda", "-s", "0.5"],
        vec!["export", m, "-o", onnx.to_str().unwrap(), "--external-data"],
    ] {
        let args = if args[0] == "prune" { [&args[..], &["--calib", t]].concat() } else { args };
        let said = ok(&args);
        assert!(!said.contains(['\u{1b}', '\u{7}']), "{args:?}: {said:?}");
        assert!(said.contains("e\\u{1b}]0;title\\u{7}\\u{1b}[31m\\nx"), "{said:?}");
    }
}

fn refused(args: &[&str], needle: &str) {
    let o = shears(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "{args:?}: `{needle}` not in {err}");
}

/// No input (a file of the model folder, the calibration text) is ever an output, no
/// output lands in the model's folder or leaves the output folder through a link, and
/// no stale weights stay beside new ones.
#[test]
fn outputs_never_touch_inputs_or_leave_their_folder() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tiny_bert(&model);
    let m = model.to_str().unwrap();
    let calib = dir.path().join("calib.txt");
    std::fs::copy(sentences("calibration.txt"), &calib).unwrap();
    let c = calib.to_str().unwrap();
    let config = std::fs::read(model.join("config.json")).unwrap();
    let config_path = model.join("config.json");
    refused(
        &["embed", m, "--texts", c, "-o", config_path.to_str().unwrap()],
        "inside the model folder",
    );
    assert_eq!(std::fs::read(&config_path).unwrap(), config);
    let out = dir.path().join("out");
    let o = out.to_str().unwrap();
    let wanda = ["--method", "wanda", "-s", "0.5", "--calib", c];
    refused(&[&["prune", m, "-o", o][..], &wanda, &["--masks-out", c]].concat(), "--calib");
    assert_eq!(
        std::fs::read_to_string(&calib).unwrap(),
        std::fs::read_to_string(sentences("calibration.txt")).unwrap()
    );
    let inside = model.join("pruned");
    refused(
        &[&["prune", m, "-o", inside.to_str().unwrap()][..], &wanda].concat(),
        "inside the model's folder",
    );
    assert!(!inside.exists());
    // A subfolder of the model that holds a file of its own is no exception, and the
    // model's folder itself is named as such.
    let pooling = model.join("1_Pooling");
    refused(
        &[&["prune", m, "-o", pooling.to_str().unwrap()][..], &wanda].concat(),
        "inside the model's folder",
    );
    refused(&[&["prune", m, "-o", m][..], &wanda].concat(), "is the model's own folder");
    // Nor the folder that holds the model's (`-o ..` from inside it).
    let parent = dir.path().to_str().unwrap();
    refused(&[&["prune", m, "-o", parent][..], &wanda].concat(), "holds the model's folder");
    assert!(!dir.path().join("config.json").exists());
    // So are masks written into the model's folder, where its next reader finds them.
    let masks_inside = model.join("1_Pooling/masks.safetensors");
    let masks = ["--masks-out", masks_inside.to_str().unwrap()];
    refused(&[&["prune", m, "-o", o][..], &wanda, &masks].concat(), "inside the model folder");
    assert!(!masks_inside.exists() && !out.exists());
    // A linked subfolder in the output would write outside it.
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("config.json"), "precious").unwrap();
    std::fs::create_dir_all(&out).unwrap();
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&outside, out.join("1_Pooling")).unwrap();
        refused(&[&["prune", m, "-o", o][..], &wanda].concat(), "symbolic link");
        assert_eq!(std::fs::read_to_string(outside.join("config.json")).unwrap(), "precious");
        std::fs::remove_file(out.join("1_Pooling")).unwrap();
    }
    // Another model's shard index in the output folder would be read with the new weights.
    std::fs::write(out.join("model.safetensors.index.json"), "{}").unwrap();
    refused(&[&["prune", m, "-o", o][..], &wanda].concat(), "model.safetensors.index.json");
    std::fs::remove_file(out.join("model.safetensors.index.json")).unwrap();
    let index_named = out.join("masks.index.json");
    refused(
        &[&["prune", m, "-o", o][..], &wanda, &["--masks-out", index_named.to_str().unwrap()]]
            .concat(),
        "shard index",
    );
    // What is left runs.
    ok(&[&["prune", m, "-o", o][..], &wanda].concat());
}

/// A model whose outputs are not finite is an error naming the sentence, not NaN
/// embeddings and an exit code of 0.
#[test]
fn a_model_that_computes_nan_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tiny_bert(&model);
    let weights = model.join("model.safetensors");
    let mut tensors: Vec<T> = read(&weights)
        .into_iter()
        .map(|(name, (dtype, shape, values))| T {
            name: Box::leak(name.into_boxed_str()),
            dtype,
            shape,
            values,
        })
        .collect();
    let huge = tensors.iter_mut().find(|t| t.name == "encoder.layer.0.intermediate.dense.weight");
    huge.unwrap().values.iter_mut().for_each(|v| *v = 3e38);
    write(&weights, &tensors);
    let m = model.to_str().unwrap();
    let texts = sentences("validation.txt");
    let out = dir.path().join("e.safetensors");
    refused(&["embed", m, "--texts", &texts, "-o", out.to_str().unwrap()], "not finite");
    assert!(!out.exists());
    let dense = tiny_bert();
    let named = format!("validation.txt: line 1: the output of {m} is not finite");
    refused(&["eval", dense.to_str().unwrap(), m, "--texts", &texts], &named);
}

/// A text the tokenizer keeps no token of (one without special tokens, given only
/// characters its normaliser drops) is an error naming its line, not a zero embedding.
#[test]
fn a_text_of_no_tokens_is_an_error_naming_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tiny_bert(&model);
    let tokenizer = model.join("tokenizer.json");
    edit_json(&tokenizer, |t| t["post_processor"] = Value::Null);
    let texts = dir.path().join("texts.txt");
    // Line 4 is a control character, which `trim` keeps and BERT's normaliser removes.
    std::fs::write(&texts, "the cat sat\n\nthe dog ran\n\u{7}\nthe end\n").unwrap();
    let (m, t) = (model.to_str().unwrap(), texts.to_str().unwrap());
    let out = dir.path().join("e.safetensors");
    let o = out.to_str().unwrap();
    let named = format!("{t}: line 4: no tokens: the tokenizer of {m} ");
    refused(&["embed", m, "--texts", t, "-o", o], &named);
    refused(&["embed", m, "--texts", t, "-o", o, "--fastest"], &named);
    assert!(!out.exists());
    // Against itself: against the dense model, whose tokenizer adds [CLS] and [SEP],
    // it reads every line differently, which eval refuses first.
    refused(&["eval", m, m, "--texts", t], &named);
    // Calibration text that gives no token at all names the file.
    let calib = dir.path().join("calib.txt");
    std::fs::write(&calib, "\u{7}\n\u{1}\n").unwrap();
    let c = calib.to_str().unwrap();
    let pruned = dir.path().join("pruned");
    let p = pruned.to_str().unwrap();
    let wanda = ["prune", m, "-o", p, "--method", "wanda", "-s", "0.5", "--calib", c];
    refused(&wanda, &format!("{c}: no line gives a token"));
    assert!(!pruned.exists());
    refused(&["bench", m, "--texts", c], &format!("{c}: no line gives a token other than"));
    // One rule for every command that reads texts: lines that give the tokenizer
    // nothing but its special tokens (here [CLS] and [SEP] around a control character or
    // a zero-width space) are refused, as a whole file; one line with a word is enough.
    let bert = tiny_bert();
    let b = bert.to_str().unwrap();
    std::fs::write(&calib, "\u{7}\n\u{200b}\n").unwrap();
    let wanda = ["prune", b, "-o", p, "--method", "wanda", "-s", "0.5", "--calib", c];
    let words = format!("{c}: no line gives a token other than the tokenizer's special ones");
    for args in [
        &["embed", b, "--texts", c, "-o", o][..],
        &["embed", b, "--texts", c, "-o", o, "--fastest"],
        &["eval", b, b, "--texts", c],
        &wanda,
        &["bench", b, "--texts", c],
    ] {
        refused(args, &words);
    }
    assert!(!out.exists() && !pruned.exists());
    // A single such line too: the words first, then eval's count of sentences.
    std::fs::write(&calib, "\u{200b}\n").unwrap();
    refused(&["eval", b, b, "--texts", c], &words);
    std::fs::write(&calib, "\u{7}\n\u{200b}\nthe end\n").unwrap();
    ok(&["embed", b, "--texts", c, "-o", o]);
    assert_eq!(read(&out)["embeddings"].1, [3, 32]);
    // Without that line the same folder embeds, and times sentences of words alone.
    std::fs::write(&texts, "the cat sat\n\nthe dog ran\n").unwrap();
    ok(&["embed", m, "--texts", t, "-o", o]);
    assert_eq!(read(&out)["embeddings"].1, [2, 32]);
    let bench = ["bench", m, "--texts", t, "--batch", "2", "--seq-len", "5", "--json", "-q"];
    let json: Value = serde_json::from_str(&ok(&bench)).unwrap();
    assert_eq!(json["settings"][0]["tokens"], 10, "{json}");
}

#[test]
fn bench_fits_its_default_sentence_length_to_the_model() {
    let texts = sentences("validation.txt");
    let json: Value = serde_json::from_str(&ok(&[
        "bench",
        tiny_bert().to_str().unwrap(),
        "--texts",
        &texts,
        "--batch",
        "1",
        "--json",
        "-q",
    ]))
    .unwrap();
    // The tiny model's max_seq_length (16, under its 64 positions), as `embed` uses.
    assert_eq!(json["seq_len"], 16, "the folder's max_seq_length, under the default of 128");
    // A given --seq-len replaces the folder's max_seq_length, even one too short to use,
    // as --max-len does for embed.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_tiny_bert(&model);
    std::fs::write(model.join("sentence_bert_config.json"), r#"{"max_seq_length": 2}"#).unwrap();
    let m = model.to_str().unwrap();
    refused(&["bench", m, "--texts", &texts], "max_seq_length");
    let args = ["bench", m, "--texts", &texts, "--seq-len", "8", "--batch", "1", "--json", "-q"];
    let json: Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(json["seq_len"], 8);
    // A length the model cannot take is named by the flag that gave it.
    let long = ["bench", m, "--texts", &texts, "--seq-len", "65"];
    refused(&long, "--seq-len: a maximum length of 65 tokens is longer than the model's 64");
    // A setting's work is bounded: sentences x tokens.
    let many = ["bench", m, "--texts", &texts, "--seq-len", "8", "--batch", "1,20000"];
    refused(&many, "--batch 20000 of sentences of 8 tokens is 160000 tokens at once");
    // max_seq_length null (sentence-transformers writes it when the tokenizer has no
    // limit) is no limit: the position embeddings', under the default of 128.
    std::fs::write(model.join("sentence_bert_config.json"), r#"{"max_seq_length": null}"#).unwrap();
    let args = ["bench", m, "--texts", &texts, "--batch", "1", "--json", "-q"];
    let json: Value = serde_json::from_str(&ok(&args)).unwrap();
    assert_eq!(json["seq_len"], 64);
    // A tokenizer adding three special tokens leaves no room for text in 3 tokens.
    let tokenizer = model.join("tokenizer.json");
    edit_json(&tokenizer, |t| {
        let cls = t["post_processor"]["single"][0].clone();
        t["post_processor"]["single"].as_array_mut().unwrap().insert(0, cls);
    });
    let no_room = "a maximum length of 3 tokens leaves no room for text after the tokenizer's 3";
    refused(&["bench", m, "--texts", &texts, "--seq-len", "3"], &format!("--seq-len: {no_room}"));
    refused(
        &["embed", m, "--texts", &texts, "--max-len", "3", "--json"],
        &format!("--max-len: {no_room}"),
    );
}

/// A prune ended by SIGTERM, wherever the signal lands, leaves no temporaries and no
/// folder it created empty: the output folder is gone, or holds what was committed
/// before the signal (the whole model if the run had finished).
#[cfg(unix)]
#[test]
fn a_terminated_prune_leaves_no_temporaries_or_empty_folders() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let (model, calib) = (tiny_bert(), sentences("calibration.txt"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_shears"))
        .args(["prune", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"])
        .args(["--method", "sparsegpt", "-s", "0.5", "--calib", &calib])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Until the run has created its output folder (its signal handler is in place by
    // then) or has ended.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut ended = None;
    while !out.exists() && ended.is_none() {
        ended = child.try_wait().unwrap();
        assert!(std::time::Instant::now() < deadline, "prune neither wrote nor ended");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    if ended.is_none() {
        let pid = child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }
    let status = ended.unwrap_or_else(|| child.wait().unwrap());
    assert!(status.success() || status.code() == Some(128 + 15), "{status:?}");
    let mut folders = vec![dir.path().to_owned()];
    while let Some(folder) = folders.pop() {
        let entries: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap()).collect();
        assert!(folder == dir.path() || !entries.is_empty(), "{} left empty", folder.display());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".shears-tmp-"), "temporary {name} left");
            if entry.file_type().unwrap().is_dir() {
                folders.push(entry.path());
            }
        }
    }
    if status.success() {
        assert!(out.join("model.safetensors").is_file() && out.join("1_Pooling").is_dir());
    }
}

/// A config.json running fewer layers than the weights hold: embed and export run the
/// first layers and say which they leave out; a calibrated prune refuses to leave the
/// others' weights as they are without being told (--exclude them).
#[test]
fn layers_past_num_hidden_layers_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    copy_tiny_bert(&model);
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    let fewer = config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1");
    assert_ne!(fewer, config);
    std::fs::write(model.join("config.json"), fewer).unwrap();
    let m = model.to_str().unwrap();
    let texts = sentences("validation.txt");
    let says = "config.json's num_hidden_layers is 1, so the weights' encoder layer 1 is not run";
    let o = shears(&["embed", m, "--texts", &texts, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(says), "{}", stderr(&o));
    let onnx = dir.path().join("m.onnx");
    let o = shears(&["export", m, "-o", onnx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains(says), "{}", stderr(&o));
    assert!(stderr(&o).contains(says), "{}", stderr(&o));
    let out = dir.path().join("pruned");
    let calib = sentences("calibration.txt");
    let args = ["prune", m, "-o", out.to_str().unwrap(), "--method", "wanda", "--calib", &calib];
    let o = shears(&[&args[..], &["-s", "0.5", "--quiet"]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("encoder.layer.1.") && stderr(&o).contains("--exclude"));
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
    assert!(!out.exists());
    let o = shears(
        &[&args[..], &["-s", "0.5", "--quiet", "--exclude", r"encoder\.layer\.1\."]].concat(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// An output folder another process holds locked (another run writing into it) is
/// refused before anything is written there; once free, the run goes ahead.
#[test]
fn an_output_folder_another_run_writes_into_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let lock = std::fs::File::open(&out).unwrap();
    lock.lock().unwrap();
    let (model, o) = (tiny_bert(), out.to_str().unwrap().to_owned());
    let args = ["prune", model.to_str().unwrap(), "-o", &o, "-s", "0.5", "-q"];
    let refused = shears(&args);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    let says = format!("shears: error: another run is writing into {o}: wait for it to end");
    assert!(stderr(&refused).starts_with(&says), "{}", stderr(&refused));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing written");
    drop(lock);
    ok(&args);
    assert!(out.join("model.safetensors").is_file());
    // A link to a folder that does not exist is said to be one.
    #[cfg(unix)]
    {
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let d = dangling.to_str().unwrap();
        let o = shears(&["prune", model.to_str().unwrap(), "-o", d, "-s", "0.5", "-q"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("which does not exist"), "{}", stderr(&o));
        assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
        assert!(!dir.path().join("nowhere").exists());
        // Links that loop lead to no folder, though the next link exists.
        let (a, b) = (dir.path().join("loop-a"), dir.path().join("loop-b"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let o = shears(&["prune", model.to_str().unwrap(), "-o", a.to_str().unwrap(), "-s", "0.5"]);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let said = "which leads to no folder (through links that loop or end at nothing)\n";
        assert!(stderr(&o).ends_with(said), "{}", stderr(&o));
    }
}

/// The summary table gives each tensor left alone a short reason and says once, under
/// the table, what every such row would repeat; `--json` keeps the whole reason on each.
#[test]
fn the_table_says_why_once_for_the_tensors_it_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_bert();
    let m = model.to_str().unwrap();
    let magnitude = dir.path().join("magnitude");
    let table = ok(&["prune", m, "-o", magnitude.to_str().unwrap(), "-s", "0.5", "-q"]);
    let word = table.lines().find(|l| l.starts_with("embeddings.word_embeddings.weight"));
    assert!(word.is_some_and(|l| l.contains(" embedding, not by default ")), "{table}");
    let pooler = table.lines().find(|l| l.starts_with("pooler.dense.weight"));
    assert!(pooler.is_some_and(|l| l.contains(" pooler, not by default ")), "{table}");
    let note =
        "not by default: --all prunes them with the rest; --include prunes only what it matches";
    assert_eq!(table.lines().filter(|l| *l == note).count(), 1, "{table}");
    assert!(!table.contains("prunes it"), "{table}");

    let wanda = prune("wanda", &dir.path().join("wanda"), &["-s", "0.5"]);
    let word = wanda.lines().find(|l| l.starts_with("embeddings.word_embeddings.weight"));
    assert!(word.is_some_and(|l| l.contains(" embedding, not by this method ")), "{wanda}");
    let note = "wanda and sparsegpt prune the encoder's linear layers only";
    assert_eq!(wanda.lines().filter(|l| *l == note).count(), 1, "{wanda}");
    assert!(!wanda.contains("not by default"), "{wanda}");

    let json = dir.path().join("json");
    let report = ok(&["prune", m, "-o", json.to_str().unwrap(), "-s", "0.5", "--json"]);
    let report: Value = serde_json::from_str(&report).unwrap();
    let tensors = report["tensors"].as_array().unwrap();
    let word = tensors.iter().find(|t| t["name"] == "embeddings.word_embeddings.weight").unwrap();
    let why = "embedding: not pruned by default (--all or --include prunes it)";
    assert_eq!(word["why"], why);
}
