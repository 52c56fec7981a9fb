//! Model folders, shards and what a Hugging Face or PyTorch user expects of `prune`,
//! `inspect` and `bench`: default choices, masks torch loads, records, reports.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::Dtype;
use serde_json::Value;

use crate::util::{T, read, shears, stderr, stdout, values, write};

/// A BERT-shaped model: embeddings, two layers' linear weights, norms, a pooler, a head.
fn bert() -> Vec<T> {
    let linear = |name: &'static str, seed| T {
        name,
        dtype: Dtype::F32,
        shape: vec![8, 16],
        values: values(128, seed),
    };
    vec![
        T {
            name: "embeddings.word_embeddings.weight",
            dtype: Dtype::F32,
            shape: vec![32, 16],
            values: values(512, 1),
        },
        T {
            name: "embeddings.LayerNorm.weight",
            dtype: Dtype::F32,
            shape: vec![16],
            values: vec![1.0; 16],
        },
        linear("encoder.layer.0.attention.self.query.weight", 2),
        T {
            name: "encoder.layer.0.attention.self.query.bias",
            dtype: Dtype::F32,
            shape: vec![8],
            values: vec![0.5; 8],
        },
        linear("encoder.layer.1.attention.self.query.weight", 3),
        linear("encoder.layer.10.intermediate.dense.weight", 4),
        linear("encoder.layer.2.output.dense.weight", 5),
        T {
            name: "pooler.dense.weight",
            dtype: Dtype::F32,
            shape: vec![16, 16],
            values: values(256, 6),
        },
        T {
            name: "classifier.weight",
            dtype: Dtype::F32,
            shape: vec![2, 16],
            values: values(32, 7),
        },
        T {
            name: "embeddings.position_ids",
            dtype: Dtype::I64,
            shape: vec![1, 4],
            values: vec![0.0, 1.0, 2.0, 3.0],
        },
    ]
}

/// A two-shard Hugging Face folder of `bert()`, with its index, a config and a subfolder.
fn sharded(dir: &Path) {
    let tensors = bert();
    let (first, second) = tensors.split_at(5);
    let names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];
    write(&dir.join(names[0]), first);
    write(&dir.join(names[1]), second);
    let mut weight_map = BTreeMap::new();
    for (shard, part) in [first, second].iter().enumerate() {
        for t in part.iter() {
            weight_map.insert(t.name, names[shard]);
        }
    }
    let index = serde_json::json!({ "metadata": { "total_size": 1 }, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"model_type": "bert"}"#).unwrap();
    std::fs::create_dir(dir.join("1_Pooling")).unwrap();
    std::fs::write(dir.join("1_Pooling/config.json"), b"{}").unwrap();
    std::fs::write(dir.join("pytorch_model.bin"), b"PK\x03\x04 unpruned torch weights").unwrap();
}

/// `sharded()` in a new folder `model` of `dir`, whose path it returns.
fn sharded_in(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("model");
    std::fs::create_dir(&model).unwrap();
    sharded(&model);
    model
}

fn run(args: &[&str]) -> std::process::Output {
    let o = shears(args);
    assert!(o.status.success(), "shears {args:?}: {}", stderr(&o));
    o
}

fn json(o: &std::process::Output) -> Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn tensor<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["tensors"].as_array().unwrap().iter().find(|t| t["name"] == name).unwrap()
}

#[test]
fn a_sharded_folder_gives_a_folder_with_the_same_shards_index_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let (model, out) = (dir.path().join("model"), dir.path().join("pruned"));
    std::fs::create_dir(&model).unwrap();
    sharded(&model);
    let o = run(&[
        "prune",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-s",
        "0.5",
        "--json",
    ]);
    let report = json(&o);
    for name in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        let (before, after) = (read(&model.join(name)), read(&out.join(name)));
        let keys = |m: &std::collections::HashMap<String, _>| {
            m.keys().cloned().collect::<std::collections::BTreeSet<String>>()
        };
        assert_eq!(keys(&before), keys(&after), "{name}");
        for (t, (dtype, shape, values)) in &after {
            assert_eq!((dtype, shape), (&before[t].0, &before[t].1), "{t}");
            let chosen = tensor(&report, t)["pruned"] == true;
            let zeros = values.iter().filter(|&&v| v == 0.0).count();
            if chosen {
                assert_eq!(zeros, values.len() / 2, "{t}");
            } else {
                assert_eq!(values, &before[t].2, "{t} is copied unchanged");
            }
        }
    }
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let original: Value =
        serde_json::from_slice(&std::fs::read(model.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(index["weight_map"], original["weight_map"]);
    let data_bytes: u64 = bert()
        .iter()
        .map(|t| t.shape.iter().product::<usize>() as u64 * (t.dtype.bitsize() / 8) as u64)
        .sum();
    assert_eq!(index["metadata"]["total_size"], data_bytes, "total_size is recomputed");
    assert_eq!(
        std::fs::read(out.join("config.json")).unwrap(),
        std::fs::read(model.join("config.json")).unwrap()
    );
    assert!(out.join("1_Pooling/config.json").is_file());
    assert!(
        !out.join("pytorch_model.bin").exists(),
        "unpruned weights in another format are not copied"
    );
    assert!(stderr(&o).contains("pytorch_model.bin was not copied"), "{}", stderr(&o));
    // Only the linear layers' weights are pruned by default, each with its reason.
    let chosen: Vec<&str> = report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["pruned"] == true)
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(chosen.len(), 4, "{chosen:?}");
    assert!(chosen.iter().all(|n| n.starts_with("encoder.layer.")));
    assert!(
        tensor(&report, "embeddings.word_embeddings.weight")["why"]
            .as_str()
            .unwrap()
            .contains("embedding")
    );
    assert!(tensor(&report, "pooler.dense.weight")["why"].as_str().unwrap().contains("pooler"));
    assert!(tensor(&report, "classifier.weight")["why"].as_str().unwrap().contains("output head"));
    // The same through the index file, and inspect and bench read folders too.
    let again = dir.path().join("again");
    run(&[
        "prune",
        model.join("model.safetensors.index.json").to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
        "-s",
        "0.5",
    ]);
    assert_eq!(
        std::fs::read(again.join("model-00002-of-00002.safetensors")).unwrap(),
        std::fs::read(out.join("model-00002-of-00002.safetensors")).unwrap()
    );
    let inspected = json(&run(&["inspect", out.to_str().unwrap(), "--json"]));
    assert_eq!(inspected["tensors"].as_array().unwrap().len(), bert().len());
    let names: Vec<&str> = inspected["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let layer = |n: &str| names.iter().position(|x| x.starts_with(n)).unwrap();
    assert!(layer("encoder.layer.2.") < layer("encoder.layer.10."), "natural order: {names:?}");
    let benched = json(&run(&["bench", out.to_str().unwrap(), "--batch", "1,4", "--json"]));
    let timed: Vec<&str> = benched["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        timed.iter().all(|n| n.starts_with("encoder.layer.")),
        "embeddings and heads are not timed: {timed:?}"
    );
}

#[test]
fn global_scope_ranks_every_shard_together() {
    let dir = tempfile::tempdir().unwrap();
    let (model, out) = (dir.path().join("model"), dir.path().join("pruned"));
    std::fs::create_dir(&model).unwrap();
    sharded(&model);
    let report = json(&run(&[
        "prune",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-s",
        "0.6",
        "--scope",
        "global",
        "--all",
        "--json",
    ]));
    assert!(report["threshold"].as_f64().is_some());
    // One threshold: every kept weight of every shard scores at least every pruned one.
    let (mut kept_min, mut pruned_max, mut zeros, mut total) = (f64::MAX, 0.0f64, 0, 0);
    for name in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        for (t, (_, shape, after)) in read(&out.join(name)) {
            if tensor(&report, &t)["pruned"] != true {
                continue;
            }
            let before = &read(&model.join(name))[&t].2;
            assert_eq!(shape.len(), 2);
            for (a, b) in after.iter().zip(before) {
                if *a == 0.0 {
                    pruned_max = pruned_max.max(b.abs());
                    zeros += 1;
                } else {
                    kept_min = kept_min.min(b.abs());
                }
                total += 1;
            }
        }
    }
    assert!(kept_min >= pruned_max);
    assert_eq!(zeros, (total as f64 * 0.6).round_ties_even() as usize);
}

#[test]
fn masks_round_trip_as_torch_masks_and_continue_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, masks) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
        dir.path().join("masks.safetensors"),
    );
    write(&input, &bert());
    run(&[
        "prune",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-s",
        "0.5",
        "--masks-out",
        masks.to_str().unwrap(),
    ]);
    let (pruned, saved) = (read(&out), read(&masks));
    assert_eq!(saved.len(), 4);
    for (name, (dtype, shape, bits)) in &saved {
        let weight = name.strip_suffix("_mask").unwrap();
        assert_eq!((*dtype, shape), (Dtype::U8, &pruned[weight].1));
        let kept: Vec<bool> = pruned[weight].2.iter().map(|&v| v != 0.0).collect();
        assert_eq!(bits.iter().map(|&b| b == 1.0).collect::<Vec<_>>(), kept, "{name}");
    }
    // inspect reads a mask file: the masks' sparsity is the weights'.
    let inspected = json(&run(&["inspect", masks.to_str().unwrap(), "--json"]));
    assert_eq!(
        tensor(&inspected, "encoder.layer.0.attention.self.query.weight_mask")["sparsity"],
        0.5
    );
    // ...and its total counts the masks' entries, all four at the weights' 50%.
    let total = &inspected["total"]["masks"];
    let entries: usize = saved.values().map(|(_, shape, _)| shape.iter().product::<usize>()).sum();
    assert_eq!(total["masks"], 4);
    assert_eq!(total["entries"], entries);
    assert_eq!(total["pruned"], entries / 2);
    assert_eq!(total["sparsity"], 0.5);
    // Each mask has the structure of the weight it prunes: zero rows, zero columns, 2:4.
    let weights = json(&run(&["inspect", out.to_str().unwrap(), "--json"]));
    let structure =
        |t: &Value| (t["zero_rows"].clone(), t["zero_cols"].clone(), t["is_2_4"].clone());
    for name in saved.keys() {
        let weight = tensor(&weights, name.strip_suffix("_mask").unwrap());
        assert_eq!(structure(tensor(&inspected, name)), structure(weight), "{name}");
    }
    let masks_2_4 = dir.path().join("masks-2-4.safetensors");
    let out_2_4 = dir.path().join("out-2-4.safetensors");
    let (i, m) = (input.to_str().unwrap(), masks_2_4.to_str().unwrap());
    run(&["prune", i, "-o", out_2_4.to_str().unwrap(), "--pattern", "2:4", "--masks-out", m]);
    let inspected_2_4 = json(&run(&["inspect", m, "--json"]));
    for name in saved.keys() {
        assert_eq!(tensor(&inspected_2_4, name)["is_2_4"], true, "{name}");
    }
    // Starting from those masks, a higher target prunes only among the kept weights...
    let further = dir.path().join("further.safetensors");
    let done = run(&[
        "prune",
        input.to_str().unwrap(),
        "-o",
        further.to_str().unwrap(),
        "-s",
        "0.75",
        "--masks-in",
        masks.to_str().unwrap(),
    ]);
    let from =
        format!("unstructured, layer scope, at 0.75 from the masks of {}: ", masks.display());
    assert!(stdout(&done).contains(&from), "{}", stdout(&done));
    // The table starts from the weights under the masks: 0.5 before, 0.75 after.
    let first = "encoder.layer.0.attention.self.query.weight";
    let row = stdout(&done).lines().find(|l| l.starts_with(first)).unwrap().to_owned();
    assert!(row.trim_end().ends_with("0.7500  0.5000  0.7500"), "{row}");
    let further = read(&further);
    for (name, (_, _, bits)) in &saved {
        let weight = name.strip_suffix("_mask").unwrap();
        let now = &further[weight].2;
        assert!(
            now.iter().zip(bits).all(|(v, b)| *b == 1.0 || *v == 0.0),
            "{weight}: no pruned weight revived"
        );
        assert_eq!(now.iter().filter(|&&v| v == 0.0).count(), 96, "{weight}");
    }
    // ...and without --sparsity the masks are applied as they are, without a warning
    // that each tensor ended sparser than the default target of 0.
    let applied = dir.path().join("applied.safetensors");
    let done = run(&[
        "prune",
        input.to_str().unwrap(),
        "-o",
        applied.to_str().unwrap(),
        "--masks-in",
        masks.to_str().unwrap(),
    ]);
    assert_eq!(read(&applied), read(&out));
    assert!(!stderr(&done).contains("target was"), "{}", stderr(&done));
    let applied = format!("\nthe masks of {}: wrote {}", masks.display(), applied.display());
    assert!(stdout(&done).contains(&applied), "{}", stdout(&done));
    // Masks already past a global --min-density are kept, and the warning says so.
    let floor = dir.path().join("floor.safetensors");
    let (f, m) = (floor.to_str().unwrap(), masks.to_str().unwrap());
    let global = ["--scope", "global", "--min-density", "0.9", "--json"];
    let args =
        [&["prune", input.to_str().unwrap(), "-o", f, "-s", "0.6", "--masks-in", m][..], &global];
    let warnings = json(&run(&args.concat()))["warnings"].to_string();
    let kept = "keeps 0.5000 of its weights under its --masks-in mask, less than --min-density 0.9";
    assert!(warnings.contains(kept) && !warnings.contains("was held at"), "{warnings}");
    // So does layer scope, with a sparsity or applying the masks alone.
    for sparsity in [&["-s", "0.6"][..], &[]] {
        let args = [&["prune", input.to_str().unwrap(), "-o", f, "--masks-in", m][..], sparsity];
        let args = [&args.concat()[..], &["--min-density", "0.9", "--json"]].concat();
        let warnings = json(&run(&args))["warnings"].to_string();
        assert!(warnings.contains(kept), "{sparsity:?}: {warnings}");
    }
}

#[test]
fn gpt2_conv1d_weights_are_pruned_along_their_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    // Conv1D stores (in, out) = (16, 8): "rows" of the layer are the 8 columns here.
    let values: Vec<f64> =
        (0..128).map(|i| if i % 8 < 4 { 0.01 * (1 + i) as f64 } else { 1.0 + i as f64 }).collect();
    write(
        &input,
        &[T {
            name: "transformer.h.0.mlp.c_fc.weight",
            dtype: Dtype::F32,
            shape: vec![16, 8],
            values,
        }],
    );
    let report = json(&run(&[
        "prune",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-s",
        "0.5",
        "--pattern",
        "rows",
        "--json",
    ]));
    assert!(report["tensors"][0]["why"].as_str().unwrap().contains("(in, out)"));
    let w = &read(&out)["transformer.h.0.mlp.c_fc.weight"].2;
    for (i, v) in w.iter().enumerate() {
        assert_eq!(*v == 0.0, i % 8 < 4, "output neuron {} (stored column)", i % 8);
    }
    // --transposed marks others; --pattern 2:4 then groups along the stored rows.
    let plain = dir.path().join("plain.safetensors");
    write(
        &plain,
        &[T { name: "proj.weight", dtype: Dtype::F32, shape: vec![8, 4], values: values_(32) }],
    );
    let nm = dir.path().join("nm.safetensors");
    run(&[
        "prune",
        plain.to_str().unwrap(),
        "-o",
        nm.to_str().unwrap(),
        "-s",
        "0.5",
        "--pattern",
        "2:4",
        "--transposed",
        "proj",
    ]);
    let w = &read(&nm)["proj.weight"].2;
    for col in 0..4 {
        for group in 0..2 {
            let kept = (0..4).filter(|r| w[(group * 4 + r) * 4 + col] != 0.0).count();
            assert_eq!(kept, 2, "column {col}, group {group}");
        }
    }
    // --transposed says how a matrix is stored, not that it is pruned: an embedding, a
    // pooler or a head it matches stays as it is unless --include or --all asks.
    let (bert_in, kept) =
        (dir.path().join("bert.safetensors"), dir.path().join("kept.safetensors"));
    write(&bert_in, &bert());
    let (b, k) = (bert_in.to_str().unwrap(), kept.to_str().unwrap());
    let unlisted =
        ["embeddings.word_embeddings.weight", "pooler.dense.weight", "classifier.weight"];
    let report =
        json(&run(&["prune", b, "-o", k, "-s", "0.5", "--transposed", "weight", "--json"]));
    let (before, after) = (read(&bert_in), read(&kept));
    for name in unlisted {
        assert_eq!(after[name].2, before[name].2, "{name}");
        let entry = report["tensors"].as_array().unwrap().iter().find(|t| t["name"] == name);
        assert_eq!(entry.unwrap()["pruned"], false, "{name}: {report}");
    }
    let query = "encoder.layer.0.attention.self.query.weight";
    assert_eq!(after[query].2.iter().filter(|v| **v == 0.0).count(), 64);
    // Chosen by --all, the pooler is pruned along its stored columns.
    run(&[
        "prune",
        b,
        "-o",
        k,
        "-s",
        "0.5",
        "--pattern",
        "rows",
        "--all",
        "--transposed",
        "pooler",
    ]);
    let pooler = &read(&kept)["pooler.dense.weight"].2;
    let zero_columns = (0..16).filter(|c| (0..16).all(|r| pooler[r * 16 + c] == 0.0)).count();
    assert_eq!(zero_columns, 8, "{pooler:?}");
    // A Conv1D weight pruned 2:4 is 2:4 as `inspect` sees it, in the weights and masks.
    let (gpt24, masks) = (dir.path().join("gpt24.safetensors"), dir.path().join("m.safetensors"));
    let (g, m) = (gpt24.to_str().unwrap(), masks.to_str().unwrap());
    run(&["prune", input.to_str().unwrap(), "-o", g, "--pattern", "2:4", "--masks-out", m]);
    for file in [g, m] {
        let tensors = json(&run(&["inspect", file, "--json"]))["tensors"].clone();
        assert_eq!(tensors[0]["is_2_4"], true, "{file}: {tensors}");
    }
}

fn values_(n: usize) -> Vec<f64> {
    values(n, 9)
}

#[test]
fn library_options_reach_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    write(&input, &bert());
    let inp = input.to_str().unwrap();
    let out = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    // Per-row: every row of every chosen tensor at the target.
    let o = out("rows.safetensors");
    run(&["prune", inp, "-o", &o, "-s", "0.25", "--pattern", "per-row"]);
    let w = &read(Path::new(&o))["encoder.layer.0.attention.self.query.weight"].2;
    assert!(w.chunks(16).all(|row| row.iter().filter(|&&v| v == 0.0).count() == 4));
    // --rounding: 0.3 of 128 is 38.4, truncated to 38, ceiled to 39.
    for (rounding, zeros) in [("half-even", 38), ("truncate", 38), ("ceil", 39)] {
        let o = out(&format!("{rounding}.safetensors"));
        let said = stdout(&run(&["prune", inp, "-o", &o, "-s", "0.3", "--rounding", rounding]));
        // The summary names a rounding other than the default.
        let named = format!("at 0.3 (--rounding {rounding}): wrote");
        assert_eq!(said.contains(&named), rounding != "half-even", "{said}");
        let w = &read(Path::new(&o))["encoder.layer.1.attention.self.query.weight"].2;
        assert_eq!(w.iter().filter(|&&v| v == 0.0).count(), zeros, "{rounding}");
    }
    // --min-density holds a tensor global scope would empty, and says so.
    let tiny: Vec<T> = vec![
        T { name: "a.weight", dtype: Dtype::F32, shape: vec![4, 4], values: vec![0.001; 16] },
        T { name: "b.weight", dtype: Dtype::F32, shape: vec![4, 4], values: values(16, 2) },
    ];
    let small = dir.path().join("small.safetensors");
    write(&small, &tiny);
    let o = out("global.safetensors");
    let held =
        shears(&["prune", small.to_str().unwrap(), "-o", &o, "-s", "0.5", "--scope", "global"]);
    assert!(stderr(&held).contains("`a.weight` was pruned whole"), "{}", stderr(&held));
    let report = json(&run(&[
        "prune",
        small.to_str().unwrap(),
        "-o",
        &o,
        "-s",
        "0.5",
        "--scope",
        "global",
        "--min-density",
        "0.25",
        "--json",
    ]));
    let after = read(Path::new(&o));
    assert_eq!(after["a.weight"].2.iter().filter(|&&v| v != 0.0).count(), 4, "a keeps its quarter");
    let zeros: usize =
        after.values().map(|(_, _, v)| v.iter().filter(|&&x| x == 0.0).count()).sum();
    assert_eq!(zeros, 16, "what a cannot take, b takes");
    assert!(
        report["warnings"]["shown"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("min-density"))
    );
    // --scores prunes by given scores; several --grads sum |w*g| per batch.
    let scores = dir.path().join("scores.safetensors");
    let rising: Vec<f64> = (0..16).map(f64::from).collect();
    write(
        &scores,
        &[
            T { name: "a.weight", dtype: Dtype::F32, shape: vec![4, 4], values: rising.clone() },
            T {
                name: "b.weight",
                dtype: Dtype::F32,
                shape: vec![4, 4],
                values: rising.iter().rev().copied().collect(),
            },
        ],
    );
    let o = out("scored.safetensors");
    run(&[
        "prune",
        small.to_str().unwrap(),
        "-o",
        &o,
        "-s",
        "0.25",
        "--scores",
        scores.to_str().unwrap(),
    ]);
    let after = read(Path::new(&o));
    assert!(after["a.weight"].2[..4].iter().all(|&v| v == 0.0));
    assert!(after["b.weight"].2[12..].iter().all(|&v| v == 0.0));
    let (g1, g2) = (dir.path().join("g1.safetensors"), dir.path().join("g2.safetensors"));
    let one_hot =
        |k: usize| -> Vec<f64> { (0..16).map(|i| if i == k { 1.0 } else { 0.0 }).collect() };
    for (path, k) in [(&g1, 3), (&g2, 7)] {
        write(
            path,
            &[
                T { name: "a.weight", dtype: Dtype::F32, shape: vec![4, 4], values: one_hot(k) },
                T { name: "b.weight", dtype: Dtype::F32, shape: vec![4, 4], values: one_hot(k) },
            ],
        );
    }
    let o = out("grads.safetensors");
    run(&[
        "prune",
        small.to_str().unwrap(),
        "-o",
        &o,
        "-s",
        "0.875",
        "--method",
        "gradient",
        "--grads",
        g1.to_str().unwrap(),
        "--grads",
        g2.to_str().unwrap(),
    ]);
    let kept: Vec<usize> = read(Path::new(&o))["a.weight"]
        .2
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != 0.0)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(kept, vec![3, 7], "the two batches' gradients both count");
    // --reduction l1 against l2 on structured rows; --json records the run.
    let report = json(&run(&[
        "prune",
        inp,
        "-o",
        &out("l1.safetensors"),
        "-s",
        "0.5",
        "--pattern",
        "rows",
        "--reduction",
        "l1",
        "--json",
    ]));
    for key in [
        "method",
        "pattern",
        "scope",
        "sparsity",
        "rounding",
        "reduction",
        "min_density",
        "tensors",
        "warnings",
    ] {
        assert!(!report[key].is_null(), "{key} in the record");
    }
    assert_eq!(
        (report["pattern"].as_str(), report["reduction"].as_str()),
        (Some("rows"), Some("l1"))
    );
    assert_eq!(tensor(&report, "encoder.layer.0.attention.self.query.weight")["target"], 0.5);
}

#[test]
fn conv_weights_prune_whole_input_channels_and_2_4_along_them() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    // layer1.0.conv1: 4 filters, 8 input channels, 3x3; channel k weighs k + 1.
    let values: Vec<f64> = (0..4 * 8 * 9)
        .map(|i| ((i / 9) % 8 + 1) as f64 * if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    write(
        &input,
        &[T { name: "layer1.0.conv1.weight", dtype: Dtype::F32, shape: vec![4, 8, 3, 3], values }],
    );
    run(&[
        "prune",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-s",
        "0.5",
        "--pattern",
        "channels",
    ]);
    let w = &read(&out)["layer1.0.conv1.weight"].2;
    for (i, v) in w.iter().enumerate() {
        assert_eq!(
            *v == 0.0,
            (i / 9) % 8 < 4,
            "element {i}: channels 0-3 go whole, in every filter"
        );
    }
    let nm = dir.path().join("nm.safetensors");
    run(&[
        "prune",
        input.to_str().unwrap(),
        "-o",
        nm.to_str().unwrap(),
        "-s",
        "0.5",
        "--pattern",
        "2:4",
    ]);
    let w = &read(&nm)["layer1.0.conv1.weight"].2;
    for f in 0..4 {
        for q in 0..9 {
            for group in 0..2 {
                let kept = (0..4).filter(|k| w[f * 72 + (group * 4 + k) * 9 + q] != 0.0).count();
                assert_eq!(
                    kept,
                    2,
                    "filter {f}, position {q}, channels {}..{}",
                    group * 4,
                    group * 4 + 4
                );
            }
        }
    }
}

/// A Hugging Face cache snapshot is a folder of symbolic links into `blobs/`: every file
/// is followed and copied as a file; links to folders, inside the snapshot or outside
/// it, are named and not entered, and every real folder is copied under its own name.
#[cfg(unix)]
#[test]
fn a_cache_snapshot_of_links_is_pruned_with_every_file_copied() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let (real, blobs) = (dir.path().join("real"), dir.path().join("blobs"));
    std::fs::create_dir(&real).unwrap();
    sharded(&real);
    std::fs::create_dir(&blobs).unwrap();
    let snapshot = dir.path().join("snapshots/abc123");
    std::fs::create_dir_all(snapshot.join("1_Pooling")).unwrap();
    let mut files = Vec::new();
    for entry in walk(&real) {
        let relative = entry.strip_prefix(&real).unwrap().to_owned();
        let blob = blobs.join(relative.to_string_lossy().replace('/', "_"));
        std::fs::copy(&entry, &blob).unwrap();
        symlink(&blob, snapshot.join(&relative)).unwrap();
        files.push(relative);
    }
    symlink(&snapshot, snapshot.join("1_Pooling/loop")).unwrap();
    symlink(dir.path().join("gone"), snapshot.join("dangling.json")).unwrap();
    // Links to folders outside the snapshot (an ancestor, the root) are not entered: what
    // they hold is not the model's.
    std::fs::write(dir.path().join("beside.txt"), "not the model's").unwrap();
    symlink(dir.path(), snapshot.join("up")).unwrap();
    symlink("/", snapshot.join("1_Pooling/root")).unwrap();
    // A link to a folder of the snapshot (named to be listed before it) leaves the folder
    // copied under its own name, where the pruned model's loaders look.
    symlink(snapshot.join("1_Pooling"), snapshot.join("0_alias")).unwrap();
    let out = dir.path().join("pruned");
    let o = run(&["prune", snapshot.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"]);
    let err = stderr(&o);
    assert!(
        err.contains("dangling.json was not copied: it is a symbolic link that leads to no file"),
        "{err}"
    );
    for relative in files.iter().filter(|f| f.to_string_lossy() != "pytorch_model.bin") {
        let written = out.join(relative);
        let meta = std::fs::symlink_metadata(&written).unwrap();
        assert!(meta.is_file(), "{} is written as a file", relative.display());
        let name = relative.to_string_lossy();
        if !name.ends_with(".safetensors") && !name.ends_with(".index.json") {
            let same =
                std::fs::read(&written).unwrap() == std::fs::read(real.join(relative)).unwrap();
            assert!(same, "{} is copied", relative.display());
        }
    }
    assert!(!out.join("dangling.json").exists());
    for link in ["up", "1_Pooling/root"] {
        let left_out = format!("{link} was not copied: it links to a folder outside the model");
        assert!(err.contains(&left_out), "{err}");
        assert!(!out.join(link).exists(), "{link}");
    }
    let alias = "0_alias was not copied: it links to a folder of the model folder, copied under";
    assert!(err.contains(alias), "{err}");
    assert!(!out.join("0_alias").exists());
}

/// A FIFO, socket or device among a model folder's files is neither opened nor
/// silently dropped: the pruned folder has every regular file, and a warning names
/// the one left out.
#[cfg(unix)]
#[test]
fn special_files_in_a_model_folder_are_named_and_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    let model = sharded_in(dir.path());
    let fifo = model.join("1_Pooling/tokenizer.json");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let out = dir.path().join("pruned");
    // A FIFO with no writer would block the copy for ever if it were opened.
    let o = run(&["prune", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"]);
    let err = stderr(&o);
    assert!(
        err.contains("1_Pooling/tokenizer.json was not copied: it is not a regular file"),
        "{err}"
    );
    assert!(!out.join("1_Pooling/tokenizer.json").exists());
    assert!(out.join("1_Pooling/config.json").is_file());
    assert!(out.join("config.json").is_file());
    // A new output folder holds nothing of anyone's: no warning about what it held.
    assert!(!err.contains("the output folder"), "{err}");
}

/// A subfolder of an existing output folder that cannot be listed makes the count of
/// files already there a lower bound, and the warning says so.
#[cfg(unix)]
#[test]
fn an_unreadable_subfolder_of_the_output_makes_its_count_a_lower_bound() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let model = sharded_in(dir.path());
    let out = dir.path().join("pruned");
    let hidden = out.join("private");
    std::fs::create_dir_all(&hidden).unwrap();
    std::fs::write(hidden.join("notes.txt"), b"mine").unwrap();
    std::fs::write(out.join("README.md"), b"mine").unwrap();
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o000)).unwrap();
    let listable = std::fs::read_dir(&hidden).is_ok();
    let o = run(&["prune", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"]);
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = stderr(&o);
    if listable {
        // Root lists any folder: both files are found and counted exactly.
        assert!(err.contains("already held 2 files this run did not write"), "{err}");
    } else {
        assert!(err.contains("already held at least 1 file this run did not write"), "{err}");
    }
    assert_eq!(std::fs::read(hidden.join("notes.txt")).unwrap(), b"mine");
}

/// A file loaders read by name that is there but is not a regular file (a folder here)
/// is refused by name, before anything is written: taken for no file, another weights
/// file would be read instead of the index, and left out of the output a modules.json
/// would make the pruned model load as another one (without its normalisation).
#[test]
fn files_loaders_read_that_are_not_files_are_refused_by_name() {
    for (name, weights) in [
        ("model.safetensors.index.json", "weights.safetensors"),
        ("model.safetensors", "weights.safetensors"),
        ("modules.json", "model.safetensors"),
        ("1_Pooling/config.json", "model.safetensors"),
        ("tokenizer.json", "model.safetensors"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        std::fs::create_dir(&model).unwrap();
        write(&model.join(weights), &bert());
        std::fs::create_dir_all(model.join(name)).unwrap();
        let out = dir.path().join("out");
        let o =
            shears(&["prune", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(name) && err.contains("is a directory"), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!out.exists());
    }
}

/// An output folder that can be searched but not listed (mode 311) still has the
/// weights a loader opens by name found: the run is refused before anything is written,
/// as it is for a folder that can be listed.
#[cfg(unix)]
#[test]
fn weights_in_an_output_folder_that_cannot_be_listed_are_still_found() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &Path, m| std::fs::set_permissions(p, PermissionsExt::from_mode(m)).unwrap();
    mode(dir.path(), 0o755);
    let model = sharded_in(dir.path());
    for entry in std::fs::read_dir(&model).unwrap() {
        let path = entry.unwrap().path();
        mode(&path, if path.is_dir() { 0o755 } else { 0o644 });
    }
    mode(&model, 0o755);
    let out = dir.path().join("pruned");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("model.safetensors"), b"someone's weights").unwrap();
    mode(&out.join("model.safetensors"), 0o644);
    mode(&out, 0o311);
    // A copy of the binary that `nobody` can run wherever the build directory lives.
    let binary = dir.path().join("shears");
    std::fs::copy(env!("CARGO_BIN_EXE_shears"), &binary).unwrap();
    mode(&binary, 0o755);
    let mut cmd = std::process::Command::new(&binary);
    cmd.args(["prune", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"]);
    if std::fs::metadata(&out).unwrap().uid() == 0 {
        // Permissions do not bind root: run as `nobody`, for whom `out` cannot be listed.
        cmd.uid(65534).gid(65534);
    }
    let o = cmd.output().unwrap();
    mode(&out, 0o755);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("model.safetensors, which would be loaded with the new weights"), "{err}");
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), b"someone's weights");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

/// Outputs inside an output folder that does not exist yet are still told apart from
/// one another, and an output file named like a folder is refused before anything is
/// written.
#[test]
fn outputs_in_a_new_folder_that_collide_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let model = sharded_in(dir.path());
    let out = dir.path().join("new");
    let m = model.to_str().unwrap();
    for (masks, needle) in [
        ("new/config.json", "--masks-out"),
        ("new/./model-00001-of-00002.safetensors", "--masks-out"),
        ("new/1_Pooling/../model.safetensors.index.json", "--masks-out"),
    ] {
        let masks = dir.path().join(masks);
        let o = shears(&[
            "prune",
            m,
            "-o",
            out.to_str().unwrap(),
            "-s",
            "0.5",
            "--masks-out",
            masks.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(2), "{}: {}", masks.display(), stderr(&o));
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
        assert!(!out.exists(), "nothing, not even the folder, is created");
    }
    // A model folder, given as a folder or by its index, gives a folder: an output named
    // like a file is refused, not made a folder of that name.
    let index = model.join("model.safetensors.index.json");
    for input in [m, index.to_str().unwrap()] {
        for name in ["pruned.safetensors", "pruned.index.json"] {
            let named = dir.path().join(name);
            let o = shears(&["prune", input, "-o", named.to_str().unwrap(), "-s", "0.5"]);
            assert!(stderr(&o).contains("so the output is a folder;"), "{}", stderr(&o));
            // Not told to prune a shard alone: it is half the model.
            assert!(!stderr(&o).contains("alone"), "{}", stderr(&o));
            assert!(!named.exists(), "{name}");
        }
    }
    // The masks named as the output folder itself, or a folder of it, relative to the
    // working folder.
    for (masks, is) in [
        ("new", "the output folder"),
        ("./new", "the output folder"),
        ("new/.", "the output folder"),
        ("new/1_Pooling", "a folder of the output model"),
        ("./new/1_Pooling/.", "a folder of the output model"),
        ("new/../new/1_Pooling", "a folder of the output model"),
        (out.to_str().unwrap(), "the output folder"),
        (
            "new/model-00001-of-00002.safetensors/m.safetensors",
            "inside new/model-00001-of-00002.safetensors, a file of the output model",
        ),
        ("new/config.json/m.safetensors", "inside new/config.json, a file of the output model"),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_shears"))
            .current_dir(dir.path())
            .args(["prune", m, "-o", "new", "-s", "0.5", "--masks-out", masks])
            .output()
            .unwrap();
        let said = format!("--masks-out {masks} is {is}: give a file name");
        let said = said.split(": give").next().unwrap();
        assert!(stderr(&o).contains(said), "{masks}: {}", stderr(&o));
        assert_eq!(o.status.code(), Some(2));
        assert!(!out.exists(), "{masks}: nothing is created");
    }
    // An output folder that exists already, named by a link to it, is still the
    // output folder, not a directory in the mask file's way.
    std::fs::create_dir(&out).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("new", dir.path().join("link")).unwrap();
    for masks in ["new", "new/", cfg!(unix).then_some("link").unwrap_or("new/.")] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_shears"))
            .current_dir(dir.path())
            .args(["prune", m, "-o", "new", "-s", "0.5", "--masks-out", masks])
            .output()
            .unwrap();
        let said = format!("--masks-out {masks} is the output folder: give a file name");
        assert!(stderr(&o).contains(&said), "{masks}: {}", stderr(&o));
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "{masks}: nothing is written");
    }
    std::fs::remove_dir(&out).unwrap();
    // A mask file in the output folder is one however the folder is named.
    let masks = out.join("m.safetensors");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_shears"))
        .current_dir(dir.path())
        .args(["prune", m, "-o", "new", "-s", "0.5", "--masks-out", masks.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(masks.is_file() && out.join("model.safetensors.index.json").is_file());
    std::fs::remove_dir_all(&out).unwrap();
    // -o and --masks-out the same file: each is named by its own role.
    let file = dir.path().join("model.safetensors");
    crate::util::model(&file);
    let same = dir.path().join("same.safetensors");
    let o = shears(&[
        "prune",
        file.to_str().unwrap(),
        "-o",
        same.to_str().unwrap(),
        "-s",
        "0.5",
        "--masks-out",
        same.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("the output and the --masks-out"), "{}", stderr(&o));
    // A file output named like a folder fails before the other output is written.
    let (pruned, masks) =
        (dir.path().join("p.safetensors"), format!("{}/m.safetensors/", dir.path().display()));
    let o = shears(&[
        "prune",
        file.to_str().unwrap(),
        "-o",
        pruned.to_str().unwrap(),
        "-s",
        "0.5",
        "--masks-out",
        &masks,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("m.safetensors/"), "{}", stderr(&o));
    assert!(!pruned.exists());
}

/// A run that fails after making its output folder (here on a NaN weight) removes the
/// folders it made, and says which tensor stopped it.
#[test]
fn a_failed_folder_run_leaves_no_folder_behind() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir_all(model.join("1_Pooling")).unwrap();
    std::fs::write(model.join("config.json"), br#"{"model_type": "bert"}"#).unwrap();
    std::fs::write(model.join("1_Pooling/config.json"), b"{}").unwrap();
    let mut tensors = bert();
    let bad = tensors.iter_mut().find(|t| t.name == "encoder.layer.1.attention.self.query.weight");
    bad.unwrap().values[5] = f64::NAN;
    write(&model.join("model.safetensors"), &tensors);
    let out = dir.path().join("new");
    let o = shears(&["prune", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("encoder.layer.1.attention.self.query.weight"), "{}", stderr(&o));
    assert!(!out.exists(), "the output folder is removed");
}

#[test]
fn a_quantized_sharded_folder_lists_each_scale_in_its_weights_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (model, out) = (dir.path().join("model"), dir.path().join("quantized"));
    std::fs::create_dir(&model).unwrap();
    sharded(&model);
    let report = json(&run(&[
        "prune",
        model.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-s",
        "0.5",
        "--quantize",
        "int8:group=4",
        "--json",
    ]));
    assert_eq!(report["quantized"], "int8:group=4");
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let weight_map = index["weight_map"].as_object().unwrap();
    let mut total = 0;
    for name in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
        let (before, after) = (read(&model.join(name)), read(&out.join(name)));
        for (t, (dtype, shape, values)) in &after {
            assert_eq!(weight_map[t], name, "{t} is indexed in its shard");
            total += values.len() * dtype.bitsize() / 8;
            if let Some(weight) = t.strip_suffix(".scale") {
                // [rows, ceil(cols / 4)] scales of a weight in the same shard.
                let (_, weight_shape, _) = &after[weight];
                assert_eq!(shape, &[weight_shape[0], weight_shape[1].div_ceil(4)], "{t}");
                continue;
            }
            let pruned = tensor(&report, t)["pruned"] == true;
            assert_eq!(*dtype == Dtype::I8, pruned, "{t}: only pruned tensors are int8");
            if pruned {
                assert!(after.contains_key(&format!("{t}.scale")), "{t} has scales");
                let zeros = values.iter().filter(|&&v| v == 0.0).count();
                assert_eq!(zeros, values.len() / 2, "{t}: the pruned weights stay zero");
            } else {
                assert_eq!(values, &before[t].2, "{t} is copied unchanged");
            }
        }
    }
    assert_eq!(index["metadata"]["total_size"], total);
    assert_eq!(report["bytes_after"], total);
    // Read back as a model: every tensor decodes, the int8 ones through their scales.
    let inspected = json(&run(&["inspect", out.to_str().unwrap(), "--json", "-q"]));
    let query = tensor(&inspected, "encoder.layer.0.attention.self.query.weight");
    assert_eq!((query["dtype"].as_str(), query["sparsity"].as_f64()), (Some("I8"), Some(0.5)));
    // 512 bytes of f32 against 128 of int8 and 8 x 4 f32 scales.
    assert_eq!(query["compression"].as_f64(), Some(2.0), "{query}");
    assert!(inspected["total"]["compression"].as_f64().unwrap() > 1.0);
    // The int8 layers are timed like any other, and as int8 CSR too.
    let benched = json(&run(&["bench", out.to_str().unwrap(), "--batch", "1", "--json", "-q"]));
    let timed = benched["tensors"].as_array().unwrap();
    assert_eq!(timed.len(), 4, "{benched}");
    assert!(timed.iter().all(|t| t["int8_csr_us"].as_f64().unwrap() > 0.0), "{benched}");
    assert!(timed.iter().all(|t| t["int8_dense_us"].as_f64().unwrap() > 0.0), "{benched}");
}

/// A sharded folder pruned again into its output replaces its own shards and index;
/// an index there that shears did not write (a user's, or one naming other shards) is
/// refused before anything is written.
#[test]
fn an_index_shears_did_not_write_is_not_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let model = sharded_in(dir.path());
    let out = dir.path().join("out");
    let args = ["prune", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5", "-q"];
    run(&args);
    run(&args);
    let index = out.join("model.safetensors.index.json");
    for foreign in [
        r#"{"mine": true}"#.to_owned(),
        std::fs::read_to_string(model.join("model.safetensors.index.json"))
            .unwrap()
            .replace("model-00002", "other-00002"),
    ] {
        std::fs::write(&index, &foreign).unwrap();
        let o = shears(&args);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let said = format!("{} is an index of weights shears did not write", index.display());
        assert!(stderr(&o).starts_with(&format!("shears: error: {said}")), "{}", stderr(&o));
        assert_eq!(std::fs::read_to_string(&index).unwrap(), foreign);
    }
}
