//! Every command on well-formed input.

use safetensors::tensor::Dtype;

use crate::util::{
    T, metadata, model, prune_ok, read, shears, shears_interleaved, stderr, stdout, values, write,
};

fn zeros(v: &[f64]) -> usize {
    v.iter().filter(|&&x| x == 0.0).count()
}

/// The zeros torch.nn.utils.prune.l1_unstructured leaves: the round(s*n) smallest |w|.
fn torch_l1_zeros(v: &[f64], s: f64) -> Vec<usize> {
    let k = (s * v.len() as f64).round_ties_even() as usize;
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs()).then(a.cmp(&b)));
    let mut z = idx[..k].to_vec();
    z.sort_unstable();
    z
}

#[test]
fn prune_magnitude_matches_torch_and_keeps_everything_else() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    model(&input);
    let o = prune_ok(&input, &output, &["--sparsity", "0.5"]);
    let (before, after) = (read(&input), read(&output));
    assert_eq!(before.len(), after.len());
    for name in ["fc1.bias", "step"] {
        assert_eq!(before[name], after[name], "{name} must be untouched");
    }
    for name in ["fc1.weight", "fc2.weight"] {
        let (dtype, shape, v) = &after[name];
        assert_eq!((*dtype, shape), (Dtype::F32, &before[name].1));
        let got: Vec<usize> = (0..v.len()).filter(|&i| v[i] == 0.0).collect();
        assert_eq!(got, torch_l1_zeros(&before[name].2, 0.5), "{name}");
        for (a, b) in v.iter().zip(&before[name].2) {
            assert!(*a == 0.0 || a == b);
        }
    }
    // The input's metadata is kept, and the run recorded beside it.
    let mut written = metadata(&output).unwrap();
    let record: serde_json::Value =
        serde_json::from_str(&written.remove("shears.pruning").unwrap()).unwrap();
    assert_eq!(Some(written), metadata(&input));
    let run = &record[0];
    assert_eq!(
        (run["method"].as_str(), run["pattern"].as_str()),
        (Some("magnitude"), Some("unstructured"))
    );
    assert_eq!((run["sparsity"].as_f64(), record.as_array().map(Vec::len)), (Some(0.5), Some(1)));
    assert!(stdout(&o).contains("fc1.weight") && stdout(&o).contains("all tensors"));
    // The pruned tensors' own count and sparsity get a line of their own.
    let params: usize = ["fc1.weight", "fc2.weight"].iter().map(|n| after[*n].2.len()).sum();
    let line = format!("pruned tensors: {params} params, sparsity 0.5000");
    assert!(stdout(&o).contains(&line), "{}", stdout(&o));
}

#[test]
fn the_table_counts_the_tensors_no_option_prunes_and_json_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    model(&input);
    let o = prune_ok(&input, &dir.path().join("out.safetensors"), &["--sparsity", "0.5"]);
    let table = stdout(&o);
    let rows: Vec<&str> = table.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(rows.contains(&"fc1.weight") && rows.contains(&"fc2.weight"), "{table}");
    assert!(!rows.contains(&"fc1.bias") && !rows.contains(&"step"), "{table}");
    let note = "not in the table, as no option prunes them: \
                1 tensor not 2-D or 4-D (fc1.bias), 1 not floating point (step) \
                (--json lists every tensor)";
    assert!(table.contains(note), "{table}");
    let json = dir.path().join("json.safetensors");
    let o = prune_ok(&input, &json, &["--sparsity", "0.5", "--json"]);
    let record: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let names: Vec<&str> =
        record["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    for name in ["fc1.bias", "fc1.weight", "fc2.weight", "step"] {
        assert!(names.contains(&name), "{name} in {names:?}");
    }
    // An int8 model's scales are counted as what they are; the footer names the whole
    // model, whose count takes in the tensors left out of the table.
    let int8 = dir.path().join("int8.safetensors");
    prune_ok(&input, &int8, &["--sparsity", "0.5", "--quantize", "int8"]);
    let o = prune_ok(&int8, &dir.path().join("again.safetensors"), &["--sparsity", "0.6"]);
    let table = stdout(&o);
    let note = "not in the table, as no option prunes them: \
                2 tensors of int8 scales, 1 not 2-D or 4-D (fc1.bias), 1 not floating point \
                (step)";
    assert!(table.contains(note), "{table}");
    let footer = table.lines().find(|l| l.starts_with("all tensors")).unwrap_or_default();
    // The two int8 weights (read as floats) and the bias; scales are their weights'.
    let params = 8 * 16 + 4 * 8 + 8;
    assert!(footer.contains(&format!("{params} params")), "{table}");
}

#[test]
fn every_float_dtype_round_trips() {
    for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64] {
        let dir = tempfile::tempdir().unwrap();
        let (input, output) =
            (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
        write(
            &input,
            &[
                T { name: "w", dtype, shape: vec![4, 8], values: values(32, 3) },
                T { name: "b", dtype, shape: vec![4], values: vec![1.5, -2.0, 0.25, 3.0] },
            ],
        );
        prune_ok(&input, &output, &["--sparsity", "0.25", "--all"]);
        let (before, after) = (read(&input), read(&output));
        assert_eq!(after["w"].0, dtype);
        assert_eq!(after["b"], before["b"]);
        assert_eq!(zeros(&after["w"].2), 8);
        for (a, b) in after["w"].2.iter().zip(&before["w"].2) {
            assert!(*a == 0.0 || a == b, "{dtype:?}: {a} vs {b}");
        }
    }
}

#[test]
fn global_scope_ranks_tensors_together() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    model(&input);
    let run = |scope: &str| {
        let out = dir.path().join(format!("{scope}.safetensors"));
        let o = prune_ok(&input, &out, &["--sparsity", "0.2", "--scope", scope, "--json"]);
        let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        (read(&out), json)
    };
    let (layer, _) = run("layer");
    let (global, json) = run("global");
    assert_eq!(zeros(&layer["fc2.weight"].2), 6);
    // fc2 is 100x smaller: global scope takes all of it first (32 of the 32 to prune).
    assert_eq!(zeros(&global["fc2.weight"].2), 32);
    assert_eq!(zeros(&global["fc1.weight"].2), 0);
    // The JSON document's shape.
    let tensors = json["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 4);
    for key in ["name", "shape", "dtype", "pruned", "sparsity_before", "sparsity_after"] {
        assert!(tensors[0].get(key).is_some(), "missing {key}");
    }
    assert!(json["total"]["sparsity_after"].as_f64().unwrap() > 0.0);
    assert_eq!(
        json["output"].as_str().unwrap(),
        dir.path().join("global.safetensors").to_str().unwrap()
    );
}

#[test]
fn patterns_and_selection() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    model(&input);
    let out = dir.path().join("rows.safetensors");
    prune_ok(&input, &out, &["-s", "0.5", "--pattern", "rows", "--include", "fc1"]);
    let after = read(&out);
    let w = &after["fc1.weight"].2;
    let dead_rows = (0..8).filter(|r| w[r * 16..(r + 1) * 16].iter().all(|&v| v == 0.0)).count();
    assert_eq!(dead_rows, 4);
    assert_eq!(after["fc2.weight"], read(&input)["fc2.weight"]);

    let out = dir.path().join("nm.safetensors");
    let masks = dir.path().join("masks.safetensors");
    prune_ok(
        &input,
        &out,
        &[
            "-s",
            "0.5",
            "--pattern",
            "2:4",
            "--exclude",
            "fc2",
            "--masks-out",
            masks.to_str().unwrap(),
        ],
    );
    let saved = read(&masks);
    assert_eq!(saved.keys().collect::<Vec<_>>(), ["fc1.weight_mask"]);
    assert_eq!(saved["fc1.weight_mask"].0, Dtype::U8);
    let o = shears(&["inspect", out.to_str().unwrap(), "--json"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let fc1 =
        json["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "fc1.weight").unwrap();
    assert_eq!(fc1["is_2_4"], true);
    assert_eq!(fc1["sparsity"].as_f64(), Some(0.5));

    let out = dir.path().join("block.safetensors");
    prune_ok(&input, &out, &["-s", "0.5", "--pattern", "block:2x4", "--include", "fc1"]);
    assert_eq!(zeros(&read(&out)["fc1.weight"].2), 64);

    let out = dir.path().join("random.safetensors");
    prune_ok(&input, &out, &["-s", "0.5", "--method", "random", "--seed", "3"]);
    assert_eq!(zeros(&read(&out)["fc1.weight"].2), 64);
}

#[test]
fn gradient_method_reads_grads() {
    let dir = tempfile::tempdir().unwrap();
    let (input, grads, out) = (
        dir.path().join("in.safetensors"),
        dir.path().join("g.safetensors"),
        dir.path().join("out.safetensors"),
    );
    write(&input, &[T { name: "w", dtype: Dtype::F32, shape: vec![2, 2], values: vec![0.5; 4] }]);
    write(
        &grads,
        &[T {
            name: "w",
            dtype: Dtype::F32,
            shape: vec![2, 2],
            values: vec![0.01, 1.0, 0.02, 0.9],
        }],
    );
    prune_ok(
        &input,
        &out,
        &["-s", "0.5", "--method", "gradient", "--grads", grads.to_str().unwrap(), "--all"],
    );
    assert_eq!(read(&out)["w"].2, vec![0.0, 0.5, 0.0, 0.5]);
}

#[test]
fn conv_weights_prune_by_filter() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    // 4 filters of 2x3x3; filter 2 is tiny.
    let v: Vec<f64> = (0..72).map(|i| if i / 18 == 2 { 0.001 } else { 1.0 + i as f64 }).collect();
    write(
        &input,
        &[T { name: "conv.weight", dtype: Dtype::F32, shape: vec![4, 2, 3, 3], values: v }],
    );
    // A convolution with two input channels reads raw input: only --all prunes it.
    prune_ok(&input, &out, &["-s", "0.25", "--pattern", "rows", "--all"]);
    let w = &read(&out)["conv.weight"].2;
    assert!(w[36..54].iter().all(|&x| x == 0.0));
    assert_eq!(zeros(w), 18);
}

#[test]
fn inspect_and_bench() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    model(&input);
    prune_ok(&input, &out, &["-s", "0.9"]);
    let o = shears(&["inspect", out.to_str().unwrap()]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(
        text.contains("fc1.weight") && text.contains("I64") && text.contains("total"),
        "{text}"
    );
    let o = shears(&["bench", out.to_str().unwrap(), "--batch", "1,4", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = json["tensors"].as_array().unwrap();
    assert_eq!(rows.len(), 4); // 2 pruned tensors x 2 batch sizes
    for key in ["name", "shape", "sparsity", "batch", "format", "dense_us", "sparse_us", "speedup"]
    {
        assert!(rows[0].get(key).is_some(), "missing {key}");
    }
    assert_eq!(json["total"].as_array().unwrap().len(), 2);

    // Each batch size is timed once, smallest first, whatever the order given.
    let o = shears(&["bench", out.to_str().unwrap(), "--batch", "4,1,4", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let batches = |key: &str| -> Vec<u64> {
        json[key].as_array().unwrap().iter().map(|r| r["batch"].as_u64().unwrap()).collect()
    };
    assert_eq!(batches("tensors"), [1, 4, 1, 4]);
    assert_eq!(batches("total"), [1, 4]);
    assert!(json.get("spatial").is_none(), "no convolution, no spatial size: {json}");

    // The table names convolutions' spatial size only where there are convolutions.
    let o = shears(&["bench", out.to_str().unwrap(), "--batch", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("model, batch 1:") && !text.contains("convolutions"), "{text}");
    // f32 layers: the int8 columns are said to be what quantizing would give.
    assert!(text.contains("int8 columns: the same layers quantized"), "{text}");
}

/// `inspect` lists a tensor holding NaN or infinities like any other, and says after the
/// table which ones hold them and how many; --json has the count per tensor.
#[test]
fn inspect_names_tensors_holding_nan_or_infinity() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.safetensors");
    let (nan, inf) = (f64::NAN, f64::INFINITY);
    write(
        &input,
        &[
            T {
                name: "a.weight",
                dtype: Dtype::F32,
                shape: vec![2, 2],
                values: vec![1.0, nan, inf, 0.0],
            },
            T { name: "b.weight", dtype: Dtype::BF16, shape: vec![2], values: vec![1.0, -inf] },
            T { name: "c.weight", dtype: Dtype::F32, shape: vec![2], values: vec![1.0, 2.0] },
        ],
    );
    let i = input.to_str().unwrap();
    let both = shears_interleaved(&["inspect", i]);
    let said = "shears: warning: tensor `a.weight` holds 2 NaN or infinite values\n\
                shears: warning: tensor `b.weight` holds 1 NaN or infinite value\n";
    assert!(both.contains("total: 3 tensors") && both.ends_with(said), "{both}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&shears(&["inspect", i, "--json"]))).unwrap();
    let counts: Vec<_> =
        json["tensors"].as_array().unwrap().iter().map(|t| t["non_finite"].as_u64()).collect();
    assert_eq!(counts, [Some(2), Some(1), None]);
}

#[test]
fn demo_trains_prunes_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("demo.svg");
    let o = shears(&["demo", "--json", "--plot", plot.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let json: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(json["dense_accuracy"].as_f64().unwrap() > 0.95);
    let methods: std::collections::BTreeSet<&str> =
        json["results"].as_array().unwrap().iter().map(|r| r["method"].as_str().unwrap()).collect();
    for m in ["magnitude", "gradient", "random", "lottery ticket", "structured rows", "2:4"] {
        assert!(methods.contains(m), "missing {m}");
    }
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
}

/// The demo's outputs carry their formats' extensions: any other name may be a file to
/// keep, and is refused before training, with nothing written.
#[test]
fn demo_refuses_outputs_of_another_kind() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "keep me").unwrap();
    let (svg, model) = (dir.path().join("p.svg"), dir.path().join("m.safetensors"));
    let (notes_arg, svg_arg, model_arg) =
        (notes.to_str().unwrap(), svg.to_str().unwrap(), model.to_str().unwrap());
    for (args, says) in [
        (["--plot", notes_arg, "--model", model_arg], "the plot to "),
        (["--plot", svg_arg, "--model", notes_arg], "the trained model to "),
    ] {
        let o = shears(&[&["demo", "-q"][..], &args].concat());
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.starts_with("shears: error: refusing to write ") && err.contains(says),
            "{err}"
        );
        assert!(err.contains("notes.txt") && err.lines().count() == 1, "{err}");
        assert_eq!(std::fs::read_to_string(&notes).unwrap(), "keep me");
        assert!(!svg.exists() && !model.exists());
    }
}

/// The zeros of pruning `scores` (concatenated in file order) by a full sort: the `round(s*n)`
/// lowest scores, ties to the lower position, so to the lower row-major index.
fn sorted_zeros(scores: &[f64], s: f64) -> Vec<bool> {
    let mut pruned = vec![false; scores.len()];
    for i in torch_l1_zeros(scores, s) {
        pruned[i] = true;
    }
    pruned
}

/// Unstructured magnitude and gradient pruning work on tensors in file order, without the
/// column-major matrix view; this checks the result, and the `--masks-out` masks (which
/// are in the matrix view), against a full sort, on tensors full of ties, of every float
/// dtype, 2-D and 4-D, in layer and global scope.
#[test]
fn unstructured_pruning_matches_a_full_sort_on_ties() {
    let dir = tempfile::tempdir().unwrap();
    let (input, grads) = (dir.path().join("in.safetensors"), dir.path().join("g.safetensors"));
    let tied = |n: usize, seed: usize| -> Vec<f64> {
        (0..n).map(|i| [0.5, -1.0, 2.0, -0.5, 1.0][(i * 7 + seed) % 5]).collect()
    };
    let specs = [
        ("fc", Dtype::F32, vec![7, 13]),
        ("conv", Dtype::BF16, vec![3, 2, 3, 3]),
        ("bias", Dtype::F32, vec![5]),
        ("head", Dtype::F16, vec![5, 4]),
    ];
    let tensors: Vec<T> = specs
        .iter()
        .enumerate()
        .map(|(i, (name, dtype, shape))| T {
            name,
            dtype: *dtype,
            shape: shape.clone(),
            values: tied(shape.iter().product(), i),
        })
        .collect();
    write(&input, &tensors);
    let gradients: Vec<T> = tensors
        .iter()
        .map(|t| T {
            values: tied(t.values.len(), 3).iter().map(|g| g * 0.25).collect(),
            ..t.clone()
        })
        .collect();
    write(&grads, &gradients);
    let weights = ["fc", "conv", "head"];
    for (method, extra) in
        [("magnitude", vec![]), ("gradient", vec!["--grads", grads.to_str().unwrap()])]
    {
        for scope in ["layer", "global"] {
            let out = dir.path().join(format!("{method}-{scope}.safetensors"));
            let masks = dir.path().join(format!("{method}-{scope}-masks.safetensors"));
            let mut args = vec!["-s", "0.3", "--include", "fc|conv|head", "--method", method];
            args.extend(["--scope", scope, "--masks-out", masks.to_str().unwrap()]);
            args.extend(&extra);
            prune_ok(&input, &out, &args);
            let after = read(&out);
            let score = |t: &T, g: &T| -> Vec<f64> {
                let by_grad = method == "gradient";
                t.values
                    .iter()
                    .zip(&g.values)
                    .map(|(w, g)| if by_grad { (w * g).abs() } else { w.abs() })
                    .collect()
            };
            let chosen: Vec<(&T, Vec<f64>)> = tensors
                .iter()
                .zip(&gradients)
                .filter(|(t, _)| weights.contains(&t.name))
                .map(|(t, g)| (t, score(t, g)))
                .collect();
            let expected: Vec<Vec<bool>> = if scope == "layer" {
                chosen.iter().map(|(_, s)| sorted_zeros(s, 0.3)).collect()
            } else {
                let all: Vec<f64> = chosen.iter().flat_map(|(_, s)| s.clone()).collect();
                let mut pruned = sorted_zeros(&all, 0.3).into_iter();
                chosen.iter().map(|(_, s)| pruned.by_ref().take(s.len()).collect()).collect()
            };
            let saved = read(&masks);
            for ((t, _), pruned) in chosen.iter().zip(&expected) {
                let got: Vec<bool> = after[t.name].2.iter().map(|&v| v == 0.0).collect();
                assert_eq!(&got, pruned, "{method} {scope} {}", t.name);
                // The torch mask: u8, the weight's shape, 1 where kept, row-major.
                let (dtype, shape, mask) = &saved[&format!("{}_mask", t.name)];
                assert_eq!((*dtype, shape), (Dtype::U8, &t.shape));
                let kept: Vec<bool> = pruned.iter().map(|p| !p).collect();
                let got: Vec<bool> = mask.iter().map(|&v| v == 1.0).collect();
                assert_eq!(got, kept, "{method} {scope} {} mask", t.name);
            }
            assert_eq!(after["bias"], read(&input)["bias"]);
        }
    }
}

/// Direct-I/O and page-cache writes make the same file, including a tensor larger than
/// the writer's chunks (several chunks filled at once) and a tail that is not whole pages.
#[test]
fn buffered_and_direct_writes_make_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let big = 629_147 * 5; // 12.6 MB of f32: three 4 MiB chunks and a bit
    write(
        &input,
        &[
            T { name: "a", dtype: Dtype::BF16, shape: vec![3, 7], values: values(21, 1) },
            T { name: "big", dtype: Dtype::F32, shape: vec![big / 5, 5], values: values(big, 2) },
            T { name: "c", dtype: Dtype::F16, shape: vec![9], values: values(9, 3) },
        ],
    );
    let run = |buffered: bool| {
        let out = dir.path().join(format!("out-{buffered}.safetensors"));
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_shears"));
        cmd.args([
            "prune",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-s",
            "0.5",
            "--all",
        ]);
        if buffered {
            cmd.env("SHEARS_BUFFERED_WRITES", "1");
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(out).unwrap()
    };
    let direct = run(false);
    assert_eq!(direct, run(true));
    let after = read(&dir.path().join("out-false.safetensors"));
    assert_eq!(zeros(&after["big"].2), (big as f64 * 0.5).round_ties_even() as usize);
    assert_eq!(after["c"], read(&input)["c"], "1-D tensors are copied");
}

/// A file pruned step by step records every step, oldest first; inspect lists the latest
/// ten and counts the earlier ones, which --json lists.
#[test]
fn each_prune_appends_its_run_to_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut input = dir.path().join("step-0.safetensors");
    model(&input);
    for step in 1..=12 {
        let out = dir.path().join(format!("step-{step}.safetensors"));
        let sparsity = format!("0.{step:02}");
        prune_ok(&input, &out, &["-s", &sparsity]);
        input = out;
    }
    let i = input.to_str().unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&stdout(&shears(&["inspect", i, "--json"]))).unwrap();
    let runs = report["pruning"].as_array().unwrap();
    let sparsities: Vec<f64> = runs.iter().map(|r| r["sparsity"].as_f64().unwrap()).collect();
    assert_eq!(sparsities, (1..=12).map(|s| f64::from(s) / 100.0).collect::<Vec<_>>());
    let said = stdout(&shears(&["inspect", i]));
    let lines: Vec<&str> = said.lines().filter(|l| l.starts_with("pruned by shears: ")).collect();
    assert_eq!(lines.len(), 11, "{said}");
    assert_eq!(lines[0], "pruned by shears: 2 earlier runs (--json lists them), then");
    assert!(
        lines[1].starts_with("pruned by shears: magnitude unstructured, layer scope, at 0.03, ")
    );
    assert!(
        lines[10].starts_with("pruned by shears: magnitude unstructured, layer scope, at 0.12, ")
    );
}

/// A target too small to print in decimals is printed with an exponent, and one too
/// small to prune a weight says so.
#[test]
fn a_tiny_sparsity_is_summarised_in_one_short_line() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    model(&input);
    let o = prune_ok(&input, &out, &["-s", "1e-320", "-q"]);
    let summary = stdout(&o);
    assert!(summary.contains("layer scope, at 1e-320: wrote"), "{summary}");
    assert!(summary.lines().all(|l| l.len() < 300), "{summary}");
    let warned = "shears: warning: --sparsity 1e-320 pruned no weight: in each chosen tensor it rounds to none, or its zeros had reached it\n";
    assert_eq!(stderr(&o), warned);
    // The warning follows the summary, in a table or JSON.
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    for json in [&[][..], &["--json"]] {
        let both =
            shears_interleaved(&[&["prune", i, "-o", o, "-s", "1e-320", "-q"], json].concat());
        assert!(both.ends_with(warned) && both.len() > warned.len(), "{both}");
    }
    let o = prune_ok(&input, &out, &["-s", "0.5", "-q"]);
    assert!(!stderr(&o).contains("pruned no weight"), "{}", stderr(&o));
    // A tiny --min-density is written the same way.
    let o = prune_ok(&input, &out, &["-s", "0.5", "--min-density", "1e-320", "-q"]);
    assert!(stdout(&o).contains("at 0.5 (--min-density 1e-320): wrote"), "{}", stdout(&o));
    // The zeros int8 rounding makes are not pruned by the target, and in global scope
    // the one count over all tensors is what rounds to none.
    let o = prune_ok(&input, &out, &["-s", "1e-9", "--quantize", "int8", "-q"]);
    assert!(stderr(&o).contains("--sparsity 1e-9 pruned no weight: in each chosen"));
    let o = prune_ok(&input, &out, &["-s", "1e-9", "--scope", "global", "-q"]);
    let said = "--sparsity 1e-9 pruned no weight: as one count over the chosen tensors it rounds";
    assert!(stderr(&o).contains(said), "{}", stderr(&o));
}
