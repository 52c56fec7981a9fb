//! Bad input: a one-line error naming the problem, exit code 2, nothing written.

use std::path::Path;

use safetensors::tensor::Dtype;

use crate::util::{T, model, prune_ok, read, shears, stderr, write};

#[track_caller]
fn fails(args: &[&str], out: &Path, needle: &str) {
    let o = shears(args);
    assert_eq!(o.status.code(), Some(2), "args {args:?}: {}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "one line expected: {err}");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
    assert!(!out.exists(), "{} must not be written", out.display());
    if let Some(dir) = out.parent() {
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("shears-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left behind");
    }
}

/// An argument clap refuses: its report (what is wrong, the valid values, hints and the
/// usage) on one line of stderr, exit code 2, nothing written.
#[track_caller]
fn fails_usage(args: &[&str], out: &Path, needles: &[&str]) {
    let o = shears(args);
    assert_eq!(o.status.code(), Some(2), "args {args:?}: {}", stderr(&o));
    let err = stderr(&o);
    assert!(err.starts_with("shears: error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("For more information"), "{err}");
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    assert!(!out.exists(), "{} must not be written", out.display());
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let o = out.to_str().unwrap();
    fails(
        &["prune", "/nonexistent/in.safetensors", "-o", o, "-s", "0.5"],
        &out,
        "/nonexistent/in.safetensors",
    );
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    fails(&["prune", garbage.to_str().unwrap(), "-o", o, "-s", "0.5"], &out, "garbage.safetensors");
    let good = dir.path().join("good.safetensors");
    model(&good);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    fails(
        &["prune", truncated.to_str().unwrap(), "-o", o, "-s", "0.5"],
        &out,
        "truncated.safetensors",
    );
    // A header that lies about offsets: shift one end offset.
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let lying = text.replacen("\"data_offsets\":[0,", "\"data_offsets\":[4,", 1);
    assert_ne!(lying, text);
    let liar = dir.path().join("liar.safetensors");
    std::fs::write(&liar, lying.as_bytes()).unwrap();
    fails(&["prune", liar.to_str().unwrap(), "-o", o, "-s", "0.5"], &out, "liar.safetensors");
    let said = format!("{}: not a safetensors file: it looks like text", garbage.display());
    fails(&["inspect", garbage.to_str().unwrap()], &out, &said);
    fails(&["bench", garbage.to_str().unwrap()], &out, &said);
    // A mask file inside a file: its folder is not a folder.
    let good_path = good.to_str().unwrap();
    let under = format!("{good_path}/masks.safetensors");
    let said = format!("{under}: the folder {good_path} is not a folder");
    fails(&["prune", good_path, "-o", o, "-s", "0.5", "--masks-out", &under], &out, &said);
    // A Hugging Face Hub id is not downloaded: every command that takes a model says how
    // to get its folder.
    let id = "sentence-transformers/all-MiniLM-L6-v2";
    let hint = format!("{id} does not exist here: shears reads model folders on disk");
    let download = format!("`huggingface-cli download {id} --local-dir all-MiniLM-L6-v2`");
    for args in [
        &["prune", id, "-o", o, "-s", "0.5"][..],
        &["inspect", id],
        &["bench", id],
        &["bench", id, "--texts", "t.txt"],
        &["embed", id, "--texts", "t.txt", "-o", o],
        &["eval", id, id, "--texts", "t.txt"],
        &["export", id, "-o", o],
    ] {
        fails(args, &out, &hint);
        fails(args, &out, &download);
    }
}

#[test]
fn bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    model(&input);
    let out = dir.path().join("out.safetensors");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let prune = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["prune", i, "-o", o].map(String::from).to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    fails_usage(&strs(&prune(&["-s", "1.5"])), &out, &["1.5", "[0, 1]"]);
    fails_usage(&strs(&prune(&["-s", "-0.1"])), &out, &["-0.1", "[0, 1]"]);
    fails_usage(&strs(&prune(&["-s", "nan"])), &out, &["sparsity"]);
    fails_usage(&strs(&prune(&["-s", "0.5", "--pattern", "diagonal"])), &out, &["diagonal", "2:4"]);
    fails_usage(&strs(&prune(&["-s", "0.5", "--pattern", "5:4"])), &out, &["5:4"]);
    fails_usage(&strs(&prune(&["-s", "0.5", "--pattern", "0:4"])), &out, &["0:4", "0 < N"]);
    fails_usage(
        &strs(&prune(&["-s", "1", "--pattern", "0:1000000000000"])),
        &out,
        &["0:1000000000000"],
    );
    fails_usage(&strs(&prune(&["-s", "0.5", "--pattern", "block:0x4"])), &out, &["block"]);
    fails_usage(
        &strs(&prune(&["-s", "0.5", "--method", "l1"])),
        &out,
        &["l1", "magnitude, gradient, random, wanda, sparsegpt"],
    );
    fails_usage(&strs(&prune(&["-s", "0.5", "--scope", "all"])), &out, &["layer or global"]);
    fails_usage(&["prune", i, "--pattern", "2:4"], &out, &["--output", "usage: shears prune"]);
    fails_usage(&strs(&prune(&["-s", "0.5", "--sparsty", "0.5"])), &out, &["--sparsity"]);
    // A refused value is quoted as given, its control characters and direction marks
    // escaped, not dropped, and a newline in it does not end the report.
    fails_usage(
        &strs(&prune(&["-s", "0.5", "--method", "a\u{1b}[31mred\nUsage: x"])),
        &out,
        &["'a\\u{1b}[31mred\\nUsage: x' for '--method", "one of magnitude"],
    );
    fails_usage(&strs(&prune(&["-s", "0.5", "--method", "\u{202e}l1"])), &out, &["'\\u{202e}l1'"]);
    fails_usage(&["pr\u{1b}une"], &out, &["'pr\\u{1b}une'"]);
    // A newline in a file's name is shown escaped, not as a space (another name).
    fails(&["prune", "x\ny", "-o", o, "-s", "0.5"], &out, "x\\ny");
    for batch in ["0", "4000000000", "18446744073709551615", "100000", "-1"] {
        fails_usage(&["bench", i, "--batch", batch], &out, &["1 to 65536"]);
    }
    // A flag that would change nothing is refused, not ignored.
    fails(&["bench", i, "--seq-len", "10"], &out, "--seq-len is read with --texts only");
    // A negative number is a value refused by its option, not an unknown option.
    fails_usage(&strs(&prune(&["-s", "0.5", "--seed", "-1"])), &out, &["'-1' for '--seed"]);
    fails_usage(&strs(&prune(&["-s", "0.5", "--min-density", "-0.5"])), &out, &["[0, 1]"]);
    fails(&strs(&prune(&["-s", "0.7", "--pattern", "2:4"])), &out, "2:4");
    // N:M fixes what a tensor keeps: a floor above it cannot be met.
    let floor = prune(&["--pattern", "2:4", "--min-density", "0.5004"]);
    fails(
        &strs(&floor),
        &out,
        "--pattern 2:4 keeps 0.5000 of each tensor, less than --min-density",
    );
    // A floor it meets changes nothing, and is not said to.
    let met =
        shears(&strs(&prune(&["-s", "0.5004", "--pattern", "2:4", "--min-density", "0.4999"])));
    assert!(met.status.success() && !stderr(&met).contains("lowers"), "{}", stderr(&met));
    std::fs::remove_file(&out).unwrap();
    fails(&strs(&prune(&[])), &out, "--sparsity is required");
    // A pattern that matches nothing, does not parse, or is empty (an unset shell
    // variable) is named with its option.
    for (option, pattern, said) in [
        ("--include", "nothing-matches", "nothing-matches"),
        ("--exclude", "nothing-matches", "nothing-matches"),
        // The regex crate's report of a syntax error (pattern, caret, reason) is one clause.
        ("--include", "([", "--include `([` is not a valid regex: unclosed character class"),
        ("--include", "", "--include is empty, which matches every tensor name: give a pattern"),
        ("--transposed", "(", "--transposed `(` is not a valid regex: unclosed group"),
    ] {
        fails(&["prune", i, "-o", o, "-s", "0.5", option, pattern], &out, said);
    }
    fails(
        &strs(&prune(&["-s", "0.5", "--pattern", "3:7"])),
        &out,
        "pattern 3:7 prunes 4 of every 7 weights (a fraction 0.5714), but sparsity 0.5",
    );
    fails(&["prune", i, "-o", o, "-s", "0.5", "--include", "step"], &out, "step");
    // A choice that leaves nothing to prune says which choice it was.
    let only_bias = "--include matches no tensor of ";
    fails(&["prune", i, "-o", o, "-s", "0.5", "--include", "bias"], &out, only_bias);
    let everything = "--exclude leaves no tensor of ";
    fails(&["prune", i, "-o", o, "-s", "0.5", "--exclude", "weight"], &out, everything);
    let no_matrix = dir.path().join("vectors.safetensors");
    let bias = T { name: "b", dtype: Dtype::F32, shape: vec![4], values: vec![1.0; 4] };
    write(&no_matrix, &[bias]);
    let args = ["prune", no_matrix.to_str().unwrap(), "-o", o, "-s", "0.5", "--all"];
    fails(&args, &out, "vectors.safetensors has no tensor that can be pruned: only 2-D and 4-D");
    fails(
        &["prune", i, "-o", o, "-s", "0.5", "--scope", "global", "--pattern", "rows"],
        &out,
        "unstructured",
    );
    fails(&["prune", i, "-o", o, "-s", "0.5", "--method", "gradient"], &out, "--grads");
    // A gradient file given twice, by one name or through a link, would be summed twice.
    let link = dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(&input, &link).unwrap();
    for twice in [i, link.to_str().unwrap()] {
        let args = ["prune", i, "-o", o, "-s", "0.5", "--method", "gradient", "--grads", i];
        fails(
            &[&args[..], &["--grads", twice]].concat(),
            &out,
            "are one file, and both are the --grads",
        );
    }
    fails(
        &["prune", i, "-o", o, "-s", "0.5", "--seed", "3"],
        &out,
        "--seed is read by --method random only",
    );
    // Options that change nothing in the pattern asked for are refused, not ignored.
    for (options, needle) in [
        (
            &["-s", "0.5", "--reduction", "l1"][..],
            "--reduction scores rows, columns, filters, channels and blocks; --pattern unstructured scores single weights",
        ),
        (&["--pattern", "2:4", "--reduction", "sum"], "--pattern 2:4 scores single weights"),
        (
            &["--pattern", "2:4", "--rounding", "ceil"],
            "--pattern 2:4 prunes 2 of every 4 weights, no count to round: --rounding does not apply",
        ),
        (
            &["-s", "0", "--rounding", "truncate"],
            "--sparsity 0 prunes no count of weights, so --rounding truncate rounds nothing: --rounding does not apply",
        ),
    ] {
        fails(&[&["prune", i, "-o", o][..], options].concat(), &out, needle);
    }
    fails(&["prune", i, "-o", i, "-s", "0.5"], &out, "is both the model and the output");
    fails(&strs(&prune(&["-s", "0.5", "--grads", i])), &out, "--method gradient");
    fails(&strs(&prune(&["-s", "0.5", "--method", "wanda"])), &out, "calibration");
    // The input is untouched by the refused in-place run.
    let after = read(&input);
    assert_eq!(after.len(), 4);
}

#[test]
fn gradient_errors_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let (input, grads, out) = (
        dir.path().join("in.safetensors"),
        dir.path().join("g.safetensors"),
        dir.path().join("out.safetensors"),
    );
    write(
        &input,
        &[
            T { name: "a", dtype: Dtype::F32, shape: vec![2, 2], values: vec![1.0; 4] },
            T { name: "b", dtype: Dtype::F32, shape: vec![2, 2], values: vec![1.0; 4] },
        ],
    );
    write(&grads, &[T { name: "a", dtype: Dtype::F32, shape: vec![2, 2], values: vec![1.0; 4] }]);
    let args = [
        "prune",
        "--all",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-s",
        "0.5",
        "--method",
        "gradient",
        "--grads",
        grads.to_str().unwrap(),
    ];
    fails(&args, &out, "`b`");
    write(
        &grads,
        &[
            T { name: "a", dtype: Dtype::F32, shape: vec![2, 2], values: vec![1.0; 4] },
            T { name: "b", dtype: Dtype::F32, shape: vec![4, 1], values: vec![1.0; 4] },
        ],
    );
    fails(&args, &out, "`b`");
    write(
        &grads,
        &[
            T {
                name: "a",
                dtype: Dtype::F32,
                shape: vec![2, 2],
                values: vec![f64::NAN, 1.0, 1.0, 1.0],
            },
            T { name: "b", dtype: Dtype::F32, shape: vec![2, 2], values: vec![1.0; 4] },
        ],
    );
    fails(&args, &out, "g.safetensors: tensor `a` holds NaN at [0, 0]");
    // Finite factors whose product is beyond f32: named, not taken for a stored NaN.
    let big = |at: usize| {
        let mut v = vec![1.0; 4];
        v[at] = 3e30;
        v
    };
    write(
        &input,
        &[
            T { name: "a", dtype: Dtype::F32, shape: vec![2, 2], values: vec![1.0; 4] },
            T { name: "b", dtype: Dtype::F32, shape: vec![2, 2], values: big(2) },
        ],
    );
    write(
        &grads,
        &[
            T { name: "a", dtype: Dtype::F32, shape: vec![2, 2], values: vec![1.0; 4] },
            T { name: "b", dtype: Dtype::F32, shape: vec![2, 2], values: big(2) },
        ],
    );
    fails(&args, &out, "tensor `b`: |w * g| at [1, 0] overflows f32");
}

/// `bench` bounds every product before it reads or allocates anything: a tensor of a
/// huge and a zero dimension holds no bytes but would need a huge bias and outputs, and
/// a batch too large for one tensor fails before any other is timed. An int8 tensor
/// without its scales is named as such.
#[test]
fn bench_refuses_oversized_products_and_unscaled_int8_first() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.json");
    let huge = dir.path().join("huge.safetensors");
    let shape = vec![1_000_000_000_000_000, 0];
    write(&huge, &[T { name: "enc.dense.weight", dtype: Dtype::F32, shape, values: vec![] }]);
    let h = huge.to_str().unwrap();
    fails(&["bench", h, "--batch", "1"], &out, "`enc.dense.weight` (1000000000000000x0)");

    // The first tensor fits at both batches; the second only at the first.
    let mixed = dir.path().join("mixed.safetensors");
    let small = T { name: "a.weight", dtype: Dtype::F32, shape: vec![4, 4], values: vec![1.0; 16] };
    let tall = T { name: "b.weight", dtype: Dtype::F32, shape: vec![300_000, 0], values: vec![] };
    write(&mixed, &[small, tall]);
    let m = mixed.to_str().unwrap();
    fails(&["bench", m, "--batch", "2,60000"], &out, "`b.weight` (300000x0) at 60000 columns");

    let unscaled = dir.path().join("unscaled.safetensors");
    let values = vec![1.0; 32];
    write(&unscaled, &[T { name: "fc.weight", dtype: Dtype::I8, shape: vec![4, 8], values }]);
    let u = unscaled.to_str().unwrap();
    fails(&["bench", u, "--all"], &out, "`fc.weight` is int8 without its scales `fc.weight.scale`");
    // Beside int8 weights that have their scales, it is not left out of the table.
    let partly = dir.path().join("partly.safetensors");
    let int8 = |name| T { name, dtype: Dtype::I8, shape: vec![4, 4], values: vec![1.0; 16] };
    let scale =
        T { name: "a.weight.scale", dtype: Dtype::F32, shape: vec![4], values: vec![0.01; 4] };
    write(&partly, &[int8("a.weight"), scale, int8("b.weight")]);
    let p = partly.to_str().unwrap();
    fails(&["bench", p], &out, "`b.weight` is int8 without its scales `b.weight.scale`");
    // An int8 tensor bench would not time anyway (an embedding, a buffer) is no reason
    // to refuse the rest.
    let buffer =
        T { name: "emb.rel_table", dtype: Dtype::I8, shape: vec![4, 4], values: vec![1.0; 16] };
    let scale =
        T { name: "a.weight.scale", dtype: Dtype::F32, shape: vec![4], values: vec![0.01; 4] };
    write(&partly, &[int8("a.weight"), scale, buffer]);
    assert!(shears(&["bench", p, "--batch", "1", "-q"]).status.success());

    // More weights than one run times (each takes milliseconds at least): refused
    // before the first is timed.
    let many = dir.path().join("many.safetensors");
    let n = 10_001;
    let entries: Vec<String> = (0..n)
        .map(|i| {
            let at = 4 * i;
            format!(
                r#""l{i}.weight":{{"dtype":"F32","shape":[1,1],"data_offsets":[{at},{}]}}"#,
                at + 4
            )
        })
        .collect();
    let header = format!("{{{}}}", entries.join(","));
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend(std::iter::repeat_n(1f32.to_le_bytes(), n).flatten());
    std::fs::write(&many, file).unwrap();
    let m = many.to_str().unwrap();
    fails(&["bench", m, "--all"], &out, "has 10001 weights to time, more than the 10000");
}

/// A non-finite weight: `bench` and `prune` name the file, the tensor, the value and
/// its position.
#[test]
fn non_finite_weights_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("nan.safetensors");
    let mut values = vec![1.0; 24];
    values[2 * 6 + 1] = f64::INFINITY;
    write(&input, &[T { name: "k.weight", dtype: Dtype::F16, shape: vec![4, 6], values }]);
    let i = input.to_str().unwrap();
    let out = dir.path().join("never.json");
    fails(&["bench", i, "--all", "--batch", "1"], &out, "`k.weight` holds inf at [2, 1]");
    let out = dir.path().join("out.safetensors");
    for extra in [&[][..], &["--pattern", "rows"]] {
        let mut args = vec!["prune", i, "-o", out.to_str().unwrap(), "-s", "0.5"];
        args.extend(extra);
        fails(&args, &out, "nan.safetensors: tensor `k.weight` holds inf at [2, 1]");
    }
}

/// f64 weights whose squares overflow still get their rows' L2 norms (the rows with
/// the smaller norms are pruned); a group whose score itself is beyond f64 is an error
/// that names the tensor and the group.
#[test]
fn huge_weights_keep_their_group_norms() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("huge.safetensors");
    // Row r holds (r + 1) * 1e300: rows 0 and 1 have the smaller norms.
    let values: Vec<f64> = (0..16).map(|i| ((i / 4 + 1) as f64) * 1e300).collect();
    write(&input, &[T { name: "k.weight", dtype: Dtype::F64, shape: vec![4, 4], values }]);
    let out = dir.path().join("out.safetensors");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    prune_ok(&input, &out, &["--all", "-s", "0.5", "--pattern", "rows", "--reduction", "l2"]);
    let pruned = &read(&out)["k.weight"].2;
    let zero_rows: Vec<usize> =
        (0..4).filter(|r| pruned[r * 4..r * 4 + 4].iter().all(|&v| v == 0.0)).collect();
    assert_eq!(zero_rows, [0, 1]);
    std::fs::remove_file(&out).unwrap();
    write(
        &input,
        &[T { name: "k.weight", dtype: Dtype::F64, shape: vec![4, 4], values: vec![f64::MAX; 16] }],
    );
    for reduction in ["l1", "l2"] {
        let args = ["prune", i, "-o", o, "--all", "-s", "0.5", "--pattern", "rows"];
        fails(
            &[&args[..], &["--reduction", reduction]].concat(),
            &out,
            &format!("tensor `k.weight`: the {reduction} score of group 0 overflows f64"),
        );
    }
}

/// A starting mask that is not all zeros and ones is refused, naming the masks file,
/// the mask and the element.
#[test]
fn masks_of_other_values_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    model(&input);
    let masks = dir.path().join("starting-masks.safetensors");
    let mut fc1 = vec![1.0; 128];
    fc1[5] = 2.0;
    write(
        &masks,
        &[
            T { name: "fc1.weight_mask", dtype: Dtype::U8, shape: vec![8, 16], values: fc1 },
            T {
                name: "fc2.weight_mask",
                dtype: Dtype::U8,
                shape: vec![4, 8],
                values: vec![1.0; 32],
            },
        ],
    );
    let out = dir.path().join("out.safetensors");
    let (i, o, m) = (input.to_str().unwrap(), out.to_str().unwrap(), masks.to_str().unwrap());
    let args = ["prune", i, "-o", o, "-s", "0.5", "--masks-in", m];
    fails(&args, &out, "starting-masks.safetensors");
    fails(&args, &out, "`fc1.weight_mask`");
    fails(&args, &out, "element 5 is 2, not 0 or 1");
}

/// Masks for a tensor the model does not have (another model's masks, or renamed ones),
/// or for one the run does not prune, are refused, naming the file and the tensor, even
/// when every pruned tensor has its mask too.
#[test]
fn masks_for_tensors_the_model_lacks_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    model(&input);
    let masks = dir.path().join("other-masks.safetensors");
    let ones = |name, shape: Vec<usize>| T {
        name,
        dtype: Dtype::U8,
        values: vec![1.0; shape.iter().product()],
        shape,
    };
    write(
        &masks,
        &[
            ones("fc1.weight_mask", vec![8, 16]),
            ones("fc2.weight_mask", vec![4, 8]),
            ones("encoder.fc3.weight_mask", vec![4, 4]),
        ],
    );
    let out = dir.path().join("out.safetensors");
    let (i, o, m) = (input.to_str().unwrap(), out.to_str().unwrap(), masks.to_str().unwrap());
    let args = ["prune", i, "-o", o, "-s", "0.5", "--masks-in", m];
    fails(&args, &out, "other-masks.safetensors");
    fails(&args, &out, "`encoder.fc3.weight`, which the model does not have");
    // The model itself given as its masks: no mask in it at all.
    let args = ["prune", i, "-o", o, "-s", "0.5", "--masks-in", i];
    fails(&args, &out, "no NAME_mask tensor: not a mask file");

    // The same in a shears mask set.
    let set = dir.path().join("other-masks.shears");
    let all = |r, c| shears_core::Mask::from_fn(r, c, |_, _| true).unwrap();
    let masks = vec![
        ("fc1.weight".to_string(), all(8, 16)),
        ("fc2.weight".to_string(), all(4, 8)),
        ("fc3.weight".to_string(), all(4, 4)),
    ];
    std::fs::write(&set, shears_io::encode_mask_set(&masks)).unwrap();
    let args = ["prune", i, "-o", o, "-s", "0.5", "--masks-in", set.to_str().unwrap()];
    fails(&args, &out, "`fc3.weight`, which the model does not have");

    // A mask for a tensor of the model that this run leaves alone would not be applied.
    let masks = dir.path().join("both.safetensors");
    write(&masks, &[ones("fc1.weight_mask", vec![8, 16]), ones("fc2.weight_mask", vec![4, 8])]);
    let m = masks.to_str().unwrap();
    let args = ["prune", i, "-o", o, "-s", "0.5", "--masks-in", m, "--exclude", "fc2"];
    fails(&args, &out, "`fc2.weight`, which this run does not prune");
    // A tensor the run prunes without a mask in the file: the way out is named.
    let only = dir.path().join("only-fc1.safetensors");
    write(&only, &[ones("fc1.weight_mask", vec![8, 16])]);
    let args = ["prune", i, "-o", o, "-s", "0.5", "--masks-in", only.to_str().unwrap()];
    fails(
        &args,
        &out,
        "no mask `fc2.weight_mask` for tensor `fc2.weight`, which this run prunes: --exclude it, or give masks for it",
    );
    // A mask file has nothing `bench` can time, and --all would not change that.
    let said = format!("{} has no 2-D or 4-D floating tensor to time", only.display());
    fails(&["bench", only.to_str().unwrap()], &out, &said);
}

/// A tensor left under --min-density by its own zeros is not said to be under a mask,
/// and a target missed from --masks-in masks that were not already past it is warned of.
#[test]
fn warnings_name_the_cause_and_a_target_missed_from_masks() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    // 8x8, four zeros: it keeps 0.9375 of its weights before any pruning.
    let values: Vec<f64> = (0..64).map(|i| if i % 16 == 0 { 0.0 } else { i as f64 }).collect();
    write(&input, &[T { name: "a.weight", dtype: Dtype::F32, shape: vec![8, 8], values }]);
    let out = dir.path().join("out.safetensors");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let done = shears(&["prune", i, "-o", o, "-s", "0.5", "--min-density", "1"]);
    assert!(done.status.success(), "{}", stderr(&done));
    let said = stderr(&done);
    assert!(said.contains("keeps 0.9375 of its weights (its zeros), less than --min-density 1"));
    assert!(!said.contains("--masks-in"), "{said}");
    // A mask that keeps every other column (0.5; with the zeros it keeps, 0.5625): blocks of
    // 2x2 at 0.75 from it end past the target, which the mask alone was not.
    let masks = dir.path().join("masks.safetensors");
    let bits = (0..64).map(|i| f64::from(u8::from(i % 2 == 0))).collect();
    write(
        &masks,
        &[T { name: "a.weight_mask", dtype: Dtype::U8, shape: vec![8, 8], values: bits }],
    );
    let m = masks.to_str().unwrap();
    let done =
        shears(&["prune", i, "-o", o, "-s", "0.75", "--pattern", "block:2x2", "--masks-in", m]);
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(stderr(&done).contains("its target was 0.7500"), "{}", stderr(&done));
    // From the same mask a target below it ends where the mask is, as said; applying
    // the masks alone (the default -s 0) asks for nothing they pass.
    let done = shears(&["prune", i, "-o", o, "-s", "0.25", "--masks-in", m]);
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(!stderr(&done).contains("target was"), "{}", stderr(&done));
    let past = "tensor `a.weight`'s mask (--masks-in) already prunes 0.5625 of it, past its target 0.2500: masks only grow, so it ends there";
    assert!(stderr(&done).contains(past), "{}", stderr(&done));
    let done = shears(&["prune", i, "-o", o, "--masks-in", m]);
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(!stderr(&done).contains("warning"), "{}", stderr(&done));
    // A mask past the target that 2:4 prunes further (three kept in a group of four) is
    // warned of: the tensor ends past both.
    let bits = (0..64).map(|i| f64::from(u8::from(i % 8 < 3))).collect();
    write(
        &masks,
        &[T { name: "a.weight_mask", dtype: Dtype::U8, shape: vec![8, 8], values: bits }],
    );
    let done = shears(&["prune", i, "-o", o, "--pattern", "2:4", "--masks-in", m]);
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(stderr(&done).contains("reached sparsity 0.7500, its target was 0.5000"));
    // With a floor, counts round toward zero, so whole rows cannot take a tensor under
    // it (ceil would take 2 of 3 rows): a missed target, not zeros the tensor had. A
    // --rounding that would round past the floor is refused.
    let rows = dir.path().join("rows.safetensors");
    let values = (1..=24).map(f64::from).collect();
    write(&rows, &[T { name: "r.weight", dtype: Dtype::F32, shape: vec![3, 8], values }]);
    let r = rows.to_str().unwrap();
    let floor = ["-s", "0.9", "--min-density", "0.5", "--pattern", "rows"];
    let done = shears(&[&["prune", r, "-o", o][..], &floor].concat());
    assert!(done.status.success(), "{}", stderr(&done));
    let said = stderr(&done);
    assert!(said.contains("reached sparsity 0.3333, its target was 0.5000"), "{said}");
    assert!(!said.contains("its zeros"), "{said}");
    let refused = "--min-density 0.5 rounds each tensor's count toward zero, so that none keeps less: --rounding ceil does not apply";
    let never = dir.path().join("never.safetensors");
    let n = never.to_str().unwrap();
    fails(&[&["prune", r, "-o", n][..], &floor, &["--rounding", "ceil"]].concat(), &never, refused);
    // A target the floor does not lower still rounds toward it: 0.67 of 10 weights
    // rounded to nearest would keep 3 of 10, under 0.33.
    let ten = dir.path().join("ten.safetensors");
    let values = (1..=10).map(f64::from).collect();
    write(&ten, &[T { name: "t.weight", dtype: Dtype::F32, shape: vec![2, 5], values }]);
    let t = ten.to_str().unwrap();
    let done = shears(&["prune", t, "-o", o, "-s", "0.67", "--min-density", "0.33", "-q"]);
    assert!(done.status.success(), "{}", stderr(&done));
    let kept = read(Path::new(o))["t.weight"].2.iter().filter(|v| **v != 0.0).count();
    assert_eq!(kept, 4, "6 of 10 pruned (6.7 toward zero), not 7");
}

/// A model tensor whose name ends in `_mask` (a buffer, in a state dict given as the
/// masks) is not taken for a pruning mask.
#[test]
fn the_models_own_mask_named_tensors_are_not_masks() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let fc1 =
        T { name: "fc1.weight", dtype: Dtype::F32, shape: vec![8, 16], values: vec![1.0; 128] };
    let causal =
        T { name: "attn.causal_mask", dtype: Dtype::U8, shape: vec![4, 4], values: vec![1.0; 16] };
    write(&input, &[fc1, causal]);
    let masks = dir.path().join("state.safetensors");
    let ones =
        T { name: "fc1.weight_mask", dtype: Dtype::U8, shape: vec![8, 16], values: vec![1.0; 128] };
    let causal =
        T { name: "attn.causal_mask", dtype: Dtype::U8, shape: vec![4, 4], values: vec![1.0; 16] };
    write(&masks, &[ones, causal]);
    let out = dir.path().join("out.safetensors");
    let (i, o, m) = (input.to_str().unwrap(), out.to_str().unwrap(), masks.to_str().unwrap());
    let done = shears(&["prune", i, "-o", o, "-s", "0.5", "--masks-in", m, "--include", "fc1"]);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    // The table's first sparsity is the masked weights', and its column says so.
    let table = String::from_utf8_lossy(&done.stdout);
    let header = table.lines().find(|l| l.starts_with("tensor")).unwrap();
    assert!(header.contains("masked") && !header.contains("before"), "{table}");
}

#[test]
fn mask_sets_that_claim_much_are_refused_or_counted_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let set = dir.path().join("masks.shears");
    let path = set.to_str().unwrap();
    let none = dir.path().join("never-written");
    // Masks of no weights with a side of 2^40: a few bytes on disk, counted without a
    // step or a word of memory per row or column.
    let huge = 1usize << 40;
    let masks = vec![
        ("wide".to_string(), shears_core::Mask::all_kept(0, huge).unwrap()),
        ("tall".to_string(), shears_core::Mask::all_kept(huge, 0).unwrap()),
    ];
    let bytes = shears_io::encode_mask_set(&masks);
    std::fs::write(&set, &bytes).unwrap();
    let o = shears(&["inspect", path, "--json", "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let counts: Vec<_> = ["tall", "wide"]
        .iter()
        .map(|name| {
            let t = report["tensors"].as_array().unwrap().iter().find(|t| t["name"] == *name);
            let t = t.unwrap();
            (t["zero_rows"].as_u64().unwrap(), t["zero_cols"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(counts, vec![(1 << 40, 0), (0, 1 << 40)]);

    // Cut short: one line, each cause once, in words.
    std::fs::write(&set, &bytes[..bytes.len() - 1]).unwrap();
    fails(&["inspect", path], &none, "invalid mask file: corrupted payload: the payload ends");
    let o = shears(&["inspect", path]);
    assert_eq!(stderr(&o).matches("invalid mask file").count(), 1, "{}", stderr(&o));

    // A valid header, then a gigabyte of zeros (a sparse file): the zeros decode to an
    // empty set after one byte, and the rest is refused as trailing, not read.
    let file = std::fs::File::create(&set).unwrap();
    std::io::Write::write_all(&mut &file, &bytes[..12]).unwrap();
    file.set_len(1 << 30).unwrap();
    let trailing = format!("{} trailing bytes", (1u64 << 30) - 13);
    fails(&["inspect", path], &none, &trailing);
}

#[test]
fn existing_output_is_replaced_only_on_success() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    model(&input);
    let out = dir.path().join("out.safetensors");
    std::fs::write(&out, b"previous").unwrap();
    let o = shears(&["prune", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "1.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(&out).unwrap(), b"previous");
    let o = shears(&["prune", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"]);
    assert!(o.status.success());
    assert_ne!(std::fs::read(&out).unwrap(), b"previous");
}

/// Help and version that stdout cannot take are an error, not a silent success, with
/// status 1, as nothing was wrong with the input; a pipe closed by its reader ends them
/// quietly, as it ends every command.
#[test]
#[cfg(target_os = "linux")]
fn help_that_cannot_be_written_is_an_error() {
    for args in [&["--help"][..], &["-V"], &["prune", "--help"]] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_shears"))
            .args(args)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        let text = if args == ["-V"] { "version" } else { "help" };
        let expected = format!("shears: error: cannot write the {text} to stdout");
        assert!(err.starts_with(&expected), "{err}");
    }
    // A report stdout cannot take comes after the outputs: they stay, and the status is
    // not the bad input's 2.
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    model(&input);
    for json in [false, true] {
        let mut args = vec!["prune", input.to_str().unwrap(), "-o", out.to_str().unwrap()];
        args.extend(["-s", "0.5"]);
        if json {
            args.push("--json");
        }
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_shears"))
            .args(&args)
            .stdout(std::fs::File::create("/dev/full").unwrap())
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.starts_with("shears: error: cannot write the report to stdout"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(out.is_file());
        std::fs::remove_file(&out).unwrap();
    }
    // A pipe whose reader is gone before the help is written (`| head -3` once it has
    // its lines): stopped without a word, with the status SIGPIPE would give.
    for args in [&["--help"][..], &["prune", "--help"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_shears"))
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!((o.status.code(), stderr(&o)), (Some(141), String::new()), "{args:?}");
    }
}

#[test]
fn a_model_of_tensors_left_alone_by_default_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("conv.safetensors"), dir.path().join("out.safetensors"));
    // A lone convolution on 3 channels reads pixels: the first convolution, kept.
    let conv = T {
        name: "conv.weight",
        dtype: Dtype::F32,
        shape: vec![4, 3, 3, 3],
        values: vec![1.0; 108],
    };
    let head = T { name: "fc.weight", dtype: Dtype::F32, shape: vec![2, 4], values: vec![1.0; 8] };
    write(&input, &[conv, head]);
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    fails(&["prune", i, "-o", o, "-s", "0.5"], &out, "`conv.weight` (");
    fails(&["prune", i, "-o", o, "-s", "0.5"], &out, "`fc.weight` (");
    fails(&["prune", i, "-o", o, "-s", "0.5"], &out, "--include REGEX or --all");
    prune_ok(&input, &out, &["-s", "0.5", "--all"]);
    assert_eq!(read(&out)["conv.weight"].2.iter().filter(|v| **v == 0.0).count(), 54);
}

/// An error that quotes kilobytes (here a path of 10000 characters) is still one line,
/// of at most about 2000 characters, showing how the path starts.
#[test]
fn errors_quoting_kilobytes_are_clipped() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let long = format!("/nonexistent{}/in.safetensors", format!("/{}", "a".repeat(199)).repeat(50));
    let o = shears(&["prune", &long, "-o", out.to_str().unwrap(), "-s", "0.5"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("shears: error: ") && err.contains("/nonexistent/aaa"), "{err}");
    assert!(err.contains("characters left out"), "{err}");
    assert!(err.chars().count() < 2100, "{} characters", err.chars().count());
    assert!(!out.exists());
}
