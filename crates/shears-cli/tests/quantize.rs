//! `shears prune --quantize`: int8 weights and their scales, read back by shears as
//! floating point, keeping what the pruned network does.

use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use shears_core::{Masks, Sparsity};
use shears_nn::{Mlp, PruningPlan, TrainConfig, digits_split, prune_and_finetune, train};
use shears_strategies::{Criterion, Schedule};

use crate::util::{T, least_cosine, read, shears, stderr, stdout, values, write};

fn run(args: &[&str]) {
    let o = shears(args);
    assert!(o.status.success(), "shears {args:?}: {}", stderr(&o));
    // Every quantizing run says who else can read what it wrote.
    if args.contains(&"--quantize") {
        let says = "transformers and PyTorch take the int8 values for the weights";
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
    }
}

fn prune(input: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["prune", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"];
    args.extend_from_slice(extra);
    run(&args);
}

#[test]
fn the_digits_mlp_pruned_to_80_percent_loses_at_most_half_a_point_to_int8() {
    // The network a user quantizes: pruned to 80% by magnitude and fine-tuned.
    let data = digits_split().unwrap();
    let mut mlp = Mlp::<f32>::new(&[64, 128, 64, 10], 1).unwrap();
    train(&mut mlp, &data.train, &TrainConfig::default(), &Masks::new()).unwrap();
    let schedule = Schedule::one_shot(Sparsity::new(0.8).unwrap());
    let finetune = TrainConfig { epochs: 10, ..TrainConfig::default() };
    let plan = PruningPlan::new(Criterion::Magnitude);
    let outcome = prune_and_finetune(&mlp, &data, &plan, &schedule, &finetune).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pruned = dir.path().join("pruned.safetensors");
    shears_nn::checkpoint::save(&outcome.model, &outcome.masks, &pruned).unwrap();
    let f32_mlp = &outcome.model;
    let f32_accuracy = f32_mlp.accuracy(&data.test).unwrap();
    assert!(f32_accuracy > 0.9, "the pruned network is a real one: {f32_accuracy}");
    for scheme in ["int8", "int8:group=32"] {
        let quantized = dir.path().join(format!("{scheme}.safetensors"));
        // Quantize only: sparsity 0 keeps every weight the fine-tuning kept.
        prune(&pruned, &quantized, &["-s", "0", "--quantize", scheme]);
        let stored = read(&quantized);
        let (int8_mlp, masks) = shears_nn::checkpoint::load::<f32>(&quantized).unwrap();
        assert_eq!(masks.len(), 3, "the masks are copied along");
        for (i, (f, q)) in f32_mlp.layers().iter().zip(int8_mlp.layers()).enumerate() {
            let name = format!("layers.{i}.weight");
            assert_eq!(stored[&name].0, Dtype::I8, "{name}");
            let (_, scale_shape, scales) = &stored[&format!("{name}.scale")];
            let (w, wq) = (f.weight(), q.weight());
            let groups = scale_shape.get(1).copied().unwrap_or(1);
            let group = w.ncols().div_ceil(groups);
            for (r, c) in (0..w.nrows()).flat_map(|r| (0..w.ncols()).map(move |c| (r, c))) {
                let v = w[(r, c)];
                let scale = scales[r * groups + c / group];
                let got = wq[(r, c)];
                assert_eq!(got == 0.0, v == 0.0, "{scheme} {name}[{r}, {c}]: pruned stays pruned");
                // Within half a step of the f32 weight (and the f32 rounding of
                // `q * scale`, far below 1e-4 of a step).
                let error = (f64::from(got) - f64::from(v)).abs();
                let bound = scale * (0.5 + 1e-4);
                assert!(error <= bound, "{scheme} {name}[{r}, {c}]: {error} > {bound}");
            }
        }
        let int8_accuracy = int8_mlp.accuracy(&data.test).unwrap();
        assert!(
            f32_accuracy - int8_accuracy <= 0.005,
            "{scheme}: f32 pruned {f32_accuracy}, int8 {int8_accuracy}"
        );
    }
}

#[test]
fn bench_times_int8_layers_in_int8_as_a_model_runs_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    crate::util::model(&input);
    for scheme in ["int8", "int8:group=4"] {
        let quantized = dir.path().join(format!("{scheme}.safetensors"));
        prune(&input, &quantized, &["-s", "0.5", "--quantize", scheme]);
        let report = json(&["bench", quantized.to_str().unwrap(), "--batch", "1,3", "--json"]);
        let rows = report["tensors"].as_array().unwrap();
        assert_eq!(rows.len(), 4, "{scheme}: fc1 and fc2 at two batches");
        for row in rows {
            assert_eq!(row["format"], "int8 dense", "{scheme}: {row}");
            // The picked format is the int8 layer itself.
            assert_eq!(row["sparse_us"], row["int8_dense_us"], "{scheme}: {row}");
            let slower = row["sparse_us"].as_f64().unwrap() > row["dense_us"].as_f64().unwrap();
            assert_eq!(row["slower"], slower, "{scheme}: {row}");
        }
    }
    // The prune table shows a quantized tensor's dtype as read and as written.
    let table = dir.path().join("table.safetensors");
    let o = shears(&[
        "prune",
        input.to_str().unwrap(),
        "-o",
        table.to_str().unwrap(),
        "-s",
        "0.5",
        "--quantize",
        "int8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = String::from_utf8_lossy(&o.stdout);
    let fc1 = said.lines().find(|l| l.starts_with("fc1.weight")).unwrap_or_default();
    assert!(fc1.contains("F32 -> I8"), "{said}");

    // A convolution stored as int8 is timed in int8 too, as its im2col product.
    let conv = dir.path().join("conv.safetensors");
    let values: Vec<f64> = (0..8 * 16 * 9).map(|i| ((i * 37 % 101) as f64 - 50.0) / 50.0).collect();
    write(&conv, &[T { name: "conv.weight", dtype: Dtype::F32, shape: vec![8, 16, 3, 3], values }]);
    let conv_int8 = dir.path().join("conv-int8.safetensors");
    prune(&conv, &conv_int8, &["-s", "0.5", "--quantize", "int8"]);
    let args = ["bench", conv_int8.to_str().unwrap(), "--batch", "1", "--spatial", "4x4", "--json"];
    let report = json(&args);
    let row = &report["tensors"][0];
    assert_eq!((&row["format"], &row["columns"]), (&"int8 dense".into(), &16.into()), "{row}");
    assert_eq!(report["spatial"], serde_json::json!([4, 4]));
    assert_eq!(row["sparse_us"], row["int8_dense_us"], "{row}");

    // The f32 model's layers are timed in the formats their zeros allow, never int8.
    let pruned = dir.path().join("pruned.safetensors");
    prune(&input, &pruned, &["-s", "0.5"]);
    let report = json(&["bench", pruned.to_str().unwrap(), "--batch", "1", "--json"]);
    for row in report["tensors"].as_array().unwrap() {
        assert!(!row["format"].as_str().unwrap().starts_with("int8"), "{row}");
    }
}

#[test]
fn bad_quantize_arguments_and_taken_scale_names_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let tensors = [
        T { name: "fc1.weight", dtype: Dtype::F32, shape: vec![4, 8], values: values(32, 1) },
        T { name: "fc1.weight.scale", dtype: Dtype::F32, shape: vec![4], values: vec![1.0; 4] },
    ];
    write(&input, &tensors);
    let out = dir.path().join("out.safetensors");
    for (args, expected) in [
        (vec!["--quantize", "int4"], "int4"),
        (vec!["--quantize", "int8:group=0"], "int8:group=0"),
        (vec!["--quantize", "int8"], "`fc1.weight.scale`, a tensor the model already has"),
    ] {
        let mut all =
            vec!["prune", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"];
        all.extend(args);
        let o = shears(&all);
        assert_eq!(o.status.code(), Some(2), "{all:?}");
        let message = stderr(&o);
        let first = message.lines().next().unwrap_or_default();
        assert!(first.contains(expected), "{all:?}: {message}");
        assert!(!out.exists(), "{all:?} wrote the output");
    }
    // A weight whose scale times 128 is past f32's range would make a file no reader
    // takes: refused, the largest weight that quantizes written and read back.
    let largest = f64::from(f32::MAX) * 127.0 / 128.0;
    for (weight, refused) in [(3.38e38, true), (f64::from(f32::MAX), true), (3.37e38, false)] {
        assert!(!refused || weight > largest);
        let mut w = values(32, 2);
        w[5] = -weight;
        write(&input, &[T { name: "fc1.weight", dtype: Dtype::F32, shape: vec![4, 8], values: w }]);
        let args = ["prune", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"];
        let o = shears(&[&args[..], &["--quantize", "int8", "-q"]].concat());
        if refused {
            assert_eq!(o.status.code(), Some(2), "{weight}: {}", stderr(&o));
            let says = "tensor `fc1.weight` holds a weight of magnitude";
            assert!(stderr(&o).lines().next().unwrap().contains(says), "{}", stderr(&o));
            assert!(!out.exists(), "{weight}: wrote the output");
        } else {
            assert!(o.status.success(), "{weight}: {}", stderr(&o));
            assert_eq!(read(&out)["fc1.weight"].2[5], -127.0);
            let o = shears(&["inspect", out.to_str().unwrap()]);
            assert!(o.status.success(), "{weight}: {}", stderr(&o));
            std::fs::remove_file(&out).unwrap();
        }
    }
}

/// The real all-MiniLM-L6-v2 folder, where `../shared/data/minilm` (or
/// `SHEARS_MINILM_DIR`) holds it.
#[allow(clippy::print_stderr, reason = "a skipped test says it was skipped")]
fn minilm() -> Option<PathBuf> {
    let path = std::env::var_os("SHEARS_MINILM_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/minilm")
    });
    if path.join("config.json").is_file() {
        Some(path)
    } else {
        eprintln!("skipped: no all-MiniLM-L6-v2 folder at {}", path.display());
        None
    }
}

/// `eval`'s mean cosine of `other` against `dense`: with `other`'s int8 layers as f32, or
/// (`as_run`) as integer products.
fn mean_cosine_of(dense: &Path, other: &Path, texts: &Path, as_run: bool) -> f64 {
    let o = shears(&[
        "eval",
        dense.to_str().unwrap(),
        other.to_str().unwrap(),
        "--texts",
        texts.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let measure = if as_run { &report["int8_products"] } else { &report };
    measure["mean_cosine"].as_f64().unwrap()
}

fn mean_cosine(dense: &Path, other: &Path, texts: &Path) -> f64 {
    mean_cosine_of(dense, other, texts, false)
}

#[test]
fn minilm_at_2_4_keeps_its_embeddings_within_0_01_when_quantized() {
    let Some(model) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let texts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/sentences/validation.txt");
    let (f32_model, int8_model) = (dir.path().join("2-4"), dir.path().join("2-4-int8"));
    prune(&model, &f32_model, &["--pattern", "2:4"]);
    prune(&model, &int8_model, &["--pattern", "2:4", "--quantize", "int8"]);
    let (f32_cosine, int8_cosine) =
        (mean_cosine(&model, &f32_model, &texts), mean_cosine(&model, &int8_model, &texts));
    assert!((f32_cosine - int8_cosine).abs() <= 0.01, "f32 {f32_cosine}, int8 {int8_cosine}");
    // So does the int8 model as it runs, its tokens rounded to int8 as well.
    let as_run = mean_cosine_of(&model, &int8_model, &texts, true);
    assert!((f32_cosine - as_run).abs() <= 0.01, "f32 {f32_cosine}, int8 products {as_run}");
    // And against the f32 pruned model itself, int8 is a rounding away.
    assert!(mean_cosine(&f32_model, &int8_model, &texts) > 0.99);
}

#[test]
fn minilm_int8_embeds_in_the_fastest_of_its_formats_under_fastest() {
    let Some(model) = minilm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let texts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/sentences/validation.txt");
    let int8_model = dir.path().join("70-int8");
    prune(&model, &int8_model, &["-s", "0.7", "--quantize", "int8"]);
    let args = ["embed", int8_model.to_str().unwrap(), "--texts", texts.to_str().unwrap()];
    let plain = json(&[&args[..], &["--json"]].concat());
    let fastest = json(&[&args[..], &["--json", "--fastest"]].concat());
    let layers = fastest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 36, "6 layers of 6 linears");
    // Each int8 layer is timed in its integer products and, dequantized, dense and in
    // CSR (70% by rows is within the margin below CSR's break-even from which it is
    // timed): the proposed side is the faster of int8 and CSR, and the layer runs the
    // faster of that and dense, unless the whole model ran dense (its plan was no faster
    // as a whole), when every layer says so.
    let ran_dense = fastest["whole_model"]["ran"] == "dense";
    for l in layers {
        let (proposed, chosen) = (l["proposed"].as_str().unwrap(), l["chosen"].as_str().unwrap());
        assert!(["int8", "csr"].contains(&proposed), "{l}");
        assert!([proposed, "dense"].contains(&chosen), "{l}");
        let (sparse, dense) =
            (l["proposed_seconds"].as_f64().unwrap(), l["dense_seconds"].as_f64().unwrap());
        let faster = sparse < dense && !ran_dense;
        assert_eq!(chosen == proposed, faster, "{l}");
    }
    // Query, key and value projections that all propose CSR run as one stacked product,
    // and are timed and chosen as one, int8 layers as any others.
    for layer in layers.chunks(6) {
        let projections = &layer[..3];
        if projections.iter().all(|l| l["proposed"] == "csr") {
            for l in projections {
                assert_eq!(l["timed_with"].as_array().map(Vec::len), Some(2), "{l}");
                assert_eq!(l["chosen"], projections[0]["chosen"], "{l}");
                assert_eq!(l["proposed_seconds"], projections[0]["proposed_seconds"], "{l}");
            }
        }
    }
    // Whichever layers run integer products, each embedding stays within rounding of the
    // dense f32 run on the dequantized weights.
    let least = least_cosine(&plain, &fastest);
    assert!(least > 0.99, "least cosine {least}");
}

fn json(args: &[&str]) -> serde_json::Value {
    let o = shears(args);
    assert!(o.status.success(), "shears {args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn a_quantized_model_prunes_again_in_its_own_scheme() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let tensors = [
        T { name: "fc1.weight", dtype: Dtype::F32, shape: vec![8, 16], values: values(128, 1) },
        T { name: "fc1.bias", dtype: Dtype::F32, shape: vec![8], values: values(8, 2) },
        T { name: "fc2.weight", dtype: Dtype::BF16, shape: vec![4, 8], values: values(32, 3) },
        // A [2^34, 0] tensor has no values, and must not be given 2^34 scales.
        T { name: "empty.weight", dtype: Dtype::F32, shape: vec![1 << 34, 0], values: vec![] },
    ];
    write(Path::new(&path("in.safetensors")), &tensors);
    let first = json(&[
        "prune",
        &path("in.safetensors"),
        "-o",
        &path("q.safetensors"),
        "-s",
        "0.5",
        "--all",
        "--quantize",
        "int8:group=4",
        "--json",
        "-q",
    ]);
    assert_eq!(first["quantized"], "int8:group=4");
    let stored = read(Path::new(&path("q.safetensors")));
    assert_eq!(stored["empty.weight"].0, Dtype::F32, "an empty tensor is written as it was");
    assert!(!stored.contains_key("empty.weight.scale"));
    assert_eq!(stored["fc1.weight.scale"].1, [8, 4]);
    // Again, without --quantize and with --all: the int8 tensors are pruned and
    // quantized anew in the file's scheme, and their scales are never chosen.
    let second = json(&[
        "prune",
        &path("q.safetensors"),
        "-o",
        &path("q2.safetensors"),
        "-s",
        "0.75",
        "--all",
        "--json",
        "-q",
    ]);
    let tensor = |name: &str| {
        second["tensors"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap().clone()
    };
    // As --quantize takes it, so that the record runs again.
    assert_eq!(second["quantized"], "int8:group=4");
    assert_eq!(tensor("fc1.weight")["dtype_written"], "I8");
    assert_eq!(tensor("fc1.weight")["sparsity_after"], 0.75);
    assert_eq!(tensor("fc1.weight.scale")["pruned"], false);
    let again = read(Path::new(&path("q2.safetensors")));
    assert_eq!(again["fc1.weight.scale"].1, [8, 4], "one set of scales, in the file's scheme");
    assert_eq!(again["fc1.weight"].2.iter().filter(|&&v| v == 0.0).count(), 96);
    let inspected = json(&["inspect", &path("q2.safetensors"), "--json", "-q"]);
    assert_eq!(inspected["total"]["parameters"], 128 + 8 + 32, "scales are not parameters");
    // The summary says whose scheme it is.
    let q = path("q.safetensors");
    let o = shears(&["prune", &q, "-o", &path("q4.safetensors"), "-s", "0.75", "--all", "-q"]);
    let summary = stdout(&o).lines().last().unwrap_or_default().to_owned();
    assert!(summary.contains(", quantized to int8:group=4, the model's own scheme ("), "{summary}");
    // Another scheme for some of the int8 tensors would mix two in one file.
    let o = shears(&[
        "prune",
        &path("q.safetensors"),
        "-o",
        &path("q3.safetensors"),
        "-s",
        "0.75",
        "--include",
        "fc1",
        "--quantize",
        "int8",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("give --quantize int8:group=4"), "{}", stderr(&o));
    assert!(!dir.path().join("q3.safetensors").exists());
    // Another scheme for all of them is one file's scheme again, but rounds the values a
    // second time: said once.
    let o = shears(&[
        "prune",
        &path("q.safetensors"),
        "-o",
        &path("q3.safetensors"),
        "-s",
        "0.75",
        "--all",
        "--quantize",
        "int8",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let said: Vec<&str> = err.lines().filter(|l| l.contains("rounded a second time")).collect();
    assert_eq!(said.len(), 1, "{err}");
    assert!(said[0].contains("int8 tensors (the first: `"), "{}", said[0]);
    assert!(
        said[0].contains("quantized as int8:group=4 in the input, are quantized again as int8")
    );
    // In its own scheme nothing is said.
    let o = shears(&[
        "prune",
        &path("q.safetensors"),
        "-o",
        &path("q5.safetensors"),
        "-s",
        "0.75",
        "--all",
        "-q",
    ]);
    assert!(o.status.success() && !stderr(&o).contains("second time"), "{}", stderr(&o));
    // Groups of one column: larger than the model, and said so.
    let o = shears(&[
        "prune",
        &path("in.safetensors"),
        "-o",
        &path("q4.safetensors"),
        "-s",
        "0.5",
        "--quantize",
        "int8:group=1",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("more than the model's"), "{}", stderr(&o));
}

#[test]
fn an_empty_int8_tensor_keeps_its_scheme_so_another_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let tensors = [
        // Quantized per row (no metadata needed), but with no values to quantize anew.
        T { name: "w.weight", dtype: Dtype::I8, shape: vec![5, 0], values: vec![] },
        T { name: "w.weight.scale", dtype: Dtype::F32, shape: vec![5], values: vec![1.0; 5] },
        T { name: "x.weight", dtype: Dtype::F32, shape: vec![2, 2], values: values(4, 1) },
    ];
    write(&input, &tensors);
    let out = dir.path().join("out.safetensors");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let refused = shears(&[
        "prune",
        i,
        "-o",
        o,
        "-s",
        "0.5",
        "--include",
        "w|x",
        "--quantize",
        "int8:group=4",
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("`w.weight`"), "{}", stderr(&refused));
    assert!(!out.exists());
    // In its own scheme it is written as it was, and the output reads back.
    let o2 = shears(&["prune", i, "-o", o, "-s", "0.5", "--include", "w|x", "--quantize", "int8"]);
    assert!(o2.status.success(), "{}", stderr(&o2));
    let inspected = shears(&["inspect", o, "-q"]);
    assert!(inspected.status.success(), "{}", stderr(&inspected));
    assert_eq!(read(&out)["w.weight.scale"].1, [5]);
}

/// Scales that do not fit their int8 tensor are refused by prune and bench as by every
/// reader, even on a tensor neither would touch: prune used to copy it through into an
/// output no command could read.
#[test]
fn int8_scales_that_do_not_fit_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let tensors = [
        T { name: "norm.weight", dtype: Dtype::I8, shape: vec![4], values: vec![1.0; 4] },
        T { name: "norm.weight.scale", dtype: Dtype::F32, shape: vec![1], values: vec![1.0] },
        T { name: "x.weight", dtype: Dtype::F32, shape: vec![2, 2], values: values(4, 1) },
    ];
    write(&input, &tensors);
    let out = dir.path().join("out.safetensors");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    for args in [vec!["prune", i, "-o", o, "-s", "0.5"], vec!["bench", i, "--batch", "1"]] {
        let refused = shears(&args);
        let err = stderr(&refused);
        assert_eq!(refused.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("`norm.weight.scale`: has shape [1]") && err.contains("needs [4]"),
            "{err}"
        );
        assert!(!out.exists());
    }
}

/// `inspect` says how much smaller quantizing made a file, or how much larger when
/// groups of one column carry a scale per weight.
#[test]
fn inspect_says_whether_quantizing_shrank_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    crate::util::model(&input);
    for (scheme, says) in
        [("int8", "x smaller than before"), ("int8:group=1", "x larger than before")]
    {
        let out = dir.path().join(format!("{}.safetensors", scheme.replace(':', "-")));
        prune(&input, &out, &["-s", "0.5", "--quantize", scheme]);
        let o = shears(&["inspect", out.to_str().unwrap(), "-q"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let total = stdout(&o);
        let total = total.lines().find(|l| l.starts_with("total:")).unwrap().to_owned();
        assert!(total.contains(says), "{scheme}: {total}");
    }
}
