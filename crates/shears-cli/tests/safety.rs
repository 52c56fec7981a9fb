//! No file but the outputs is ever written, no special file is replaced, and hostile
//! input never panics, aborts or hangs: each case of the hardening pass, run on the
//! binary.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

use safetensors::tensor::Dtype;

use crate::util::{T, model, read, shears, stderr, stdout, values, write};

/// Exit code 2, one line naming `needle`, and `untouched` files exactly as before.
#[track_caller]
fn refused(args: &[&str], needle: &str, untouched: &[&Path]) {
    let before: Vec<Option<Vec<u8>>> = untouched.iter().map(|p| std::fs::read(p).ok()).collect();
    let o = shears(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(needle), "`{needle}` not in {err}");
    for (p, b) in untouched.iter().zip(before) {
        assert_eq!(std::fs::read(p).ok(), b, "{} changed", p.display());
    }
}

/// A copy of the tiny BERT fixture's folder (config, weights, tokenizer) in `dir`.
fn tiny_bert_in(dir: &Path) -> std::path::PathBuf {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tiny-bert");
    let folder = dir.join("model");
    std::fs::create_dir(&folder).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(tiny.join(name), folder.join(name)).unwrap();
    }
    folder
}

fn no_temporaries(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("shears-tmp"))
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "temporaries left: {left:?}");
}

#[test]
fn no_path_plays_two_roles() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, grads) = (
        dir.path().join("in.safetensors"),
        dir.path().join("out.safetensors"),
        dir.path().join("g.safetensors"),
    );
    model(&input);
    model(&grads);
    let link = dir.path().join("hardlink.safetensors");
    std::fs::hard_link(&input, &link).unwrap();
    let (i, o, g) = (input.to_str().unwrap(), out.to_str().unwrap(), grads.to_str().unwrap());
    let all = [input.as_path(), grads.as_path(), out.as_path()];
    refused(&["prune", i, "-o", o, "-s", "0.5", "--masks-out", i], "--masks-out", &all);
    refused(
        &["prune", i, "-o", o, "-s", "0.5", "--masks-out", link.to_str().unwrap()],
        "--masks-out",
        &all,
    );
    refused(&["prune", i, "-o", o, "-s", "0.5", "--masks-out", o], "--masks-out", &all);
    let gradient = ["--method", "gradient", "--grads", g];
    let mut args = vec!["prune", i, "-o", g, "-s", "0.5"];
    args.extend(gradient);
    refused(&args, "--grads", &all);
    let mut args = vec!["prune", i, "-o", o, "-s", "0.5", "--masks-out", g];
    args.extend(gradient);
    refused(&args, "--grads", &all);
    // One file under two names is named by both, each in its role.
    let named = format!("the model {} and the output {i} are one file", link.display());
    refused(&["prune", link.to_str().unwrap(), "-o", i, "-s", "0.5"], &named, &all);
    let dotted = dir.path().join(".").join("in.safetensors");
    // A path that differs only by `.` is the same name.
    let named = format!("{i} is both the model and the output");
    refused(&["prune", i, "-o", dotted.to_str().unwrap(), "-s", "0.5"], &named, &all);
    assert!(!out.exists());
    no_temporaries(dir.path());
}

#[cfg(unix)]
#[test]
fn special_files_are_never_replaced_or_read() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    model(&input);
    let i = input.to_str().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let link = dir.path().join("link.safetensors");
    let target = dir.path().join("target.safetensors");
    std::fs::write(&target, b"keep").unwrap();
    std::os::unix::fs::symlink(&target, &link).unwrap();
    refused(&["prune", i, "-o", fifo.to_str().unwrap(), "-s", "0.5"], "not a regular file", &[]);
    refused(&["prune", i, "-o", link.to_str().unwrap(), "-s", "0.5"], "symbolic link", &[&target]);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    // A character device like /dev/null, where the system lets this user make one.
    let null = dir.path().join("mynull");
    if Command::new("mknod")
        .args([null.to_str().unwrap(), "c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success())
    {
        refused(
            &["prune", i, "-o", null.to_str().unwrap(), "-s", "0.5"],
            "not a regular file",
            &[],
        );
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(&null).unwrap().file_type().is_char_device());
    } else {
        eprintln!("skipped the device case: this user cannot mknod");
    }
    // A FIFO with no writer as input: refused at once, never opened (open would block).
    let mut child = Command::new(env!("CARGO_BIN_EXE_shears"))
        .args(["inspect", fifo.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("inspect of a FIFO hangs");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    no_temporaries(dir.path());
}

#[test]
fn a_failed_second_output_leaves_the_first_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    model(&input);
    std::fs::write(&out, b"previous").unwrap();
    let masks = dir.path().join("no/such/dir/masks.safetensors");
    let o = shears(&[
        "prune",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-s",
        "0.5",
        "--masks-out",
        masks.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no/such/dir"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), b"previous", "both outputs or neither");
    no_temporaries(dir.path());
}

#[test]
fn huge_names_and_empty_huge_tensors_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let long: &'static str = Box::leak(format!("{}.weight", "n".repeat(70_000)).into_boxed_str());
    write(&input, &[T { name: long, dtype: Dtype::F32, shape: vec![4, 8], values: values(32, 1) }]);
    let out = dir.path().join("out.safetensors");
    for args in [
        vec!["prune", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"],
        vec!["inspect", input.to_str().unwrap()],
        vec!["bench", out.to_str().unwrap(), "--batch", "1"],
    ] {
        let o = shears(&args);
        assert!(o.status.success(), "{:?}: {}", &args[..1], stderr(&o));
    }
    // Zero-sized tensors with huge dimensions: nothing to prune, nothing to allocate.
    let empty = dir.path().join("empty.safetensors");
    let header = format!(
        r#"{{"a.weight":{{"dtype":"F32","shape":[0,{}],"data_offsets":[0,0]}},"b.weight":{{"dtype":"F32","shape":[{},0],"data_offsets":[0,0]}},"c.weight":{{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}}}"#,
        1u64 << 33,
        u64::MAX
    );
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(&[0; 16]);
    std::fs::write(&empty, bytes).unwrap();
    for pattern in ["columns", "rows", "unstructured", "block:2x2"] {
        let o = shears(&[
            "prune",
            empty.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-s",
            "0.5",
            "--pattern",
            pattern,
        ]);
        assert!(matches!(o.status.code(), Some(0 | 2)), "{pattern}: {:?} {}", o.status, stderr(&o));
        if o.status.success() {
            assert_eq!(read(&out)["c.weight"].1, vec![2, 2]);
        }
    }
    // A side of u64::MAX is longer than any count along it: the file is refused when
    // opened, naming the tensor.
    let o = shears(&["inspect", empty.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("`b.weight`") && err.contains("too large to address"), "{err}");
    // One of 2^33 beside a zero is a tensor of nothing, inspected as one.
    let wide = format!(
        r#"{{"a.weight":{{"dtype":"F32","shape":[0,{}],"data_offsets":[0,0]}}}}"#,
        1u64 << 33
    );
    let mut bytes = (wide.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(wide.as_bytes());
    std::fs::write(&empty, bytes).unwrap();
    let o = shears(&["inspect", empty.to_str().unwrap()]);
    assert!(o.status.success() && stdout(&o).contains("0 parameters"), "{}", stderr(&o));
    // A 240-byte output name: its temporary's name still fits the file system.
    let named = dir.path().join(format!("{}.safetensors", "o".repeat(228)));
    let o = shears(&["prune", input.to_str().unwrap(), "-o", named.to_str().unwrap(), "-s", "0.5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    no_temporaries(dir.path());
}

#[test]
fn patterns_that_do_not_fit_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    write(
        &input,
        &[
            T {
                name: "odd.weight",
                dtype: Dtype::F32,
                shape: vec![10, 30],
                values: values(300, 1),
            },
            T { name: "one.weight", dtype: Dtype::F32, shape: vec![1, 32], values: values(32, 2) },
        ],
    );
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    for (pattern, sparsity, include, needle) in [
        ("2:4", "0.5", "odd", "30 columns are not whole groups of 4"),
        ("block:4x4", "0.5", "odd", "not whole 4x4 blocks"),
        ("block:4096x4096", "0.5", "one", "not whole 4096x4096 blocks"),
        ("rows", "0.5", "one", "round to none"),
    ] {
        // The file, then the tensor, then what does not fit.
        let named = format!("shears: error: {i}: tensor `{include}.weight`: ");
        refused(
            &["prune", i, "-o", o, "-s", sparsity, "--pattern", pattern, "--include", include],
            &named,
            &[],
        );
        refused(
            &["prune", i, "-o", o, "-s", sparsity, "--pattern", pattern, "--include", include],
            needle,
            &[],
        );
        assert!(!out.exists());
    }
    // inspect calls 2:4 only what has whole groups of 4.
    let o = shears(&["inspect", i, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let odd =
        report["tensors"].as_array().unwrap().iter().find(|t| t["name"] == "odd.weight").unwrap();
    assert_eq!(odd["is_2_4"], false);
    no_temporaries(dir.path());
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("many.safetensors");
    // Enough tensors that the table is far larger than a pipe's buffer.
    let names: Vec<&'static str> =
        (0..3000).map(|k| &*Box::leak(format!("layers.{k}.weight").into_boxed_str())).collect();
    let tensors: Vec<T> = names
        .iter()
        .map(|&name| T {
            name,
            dtype: Dtype::F32,
            shape: vec![2, 2],
            values: vec![1.0, 0.0, 2.0, 0.0],
        })
        .collect();
    write(&input, &tensors);
    // The table and the JSON document alike.
    for json in [false, true] {
        let mut args = vec!["inspect", input.to_str().unwrap()];
        args.extend(json.then_some("--json"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_shears"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 16];
        child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
        drop(child.stdout.take());
        let status = child.wait().unwrap();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(matches!(status.code(), Some(0 | 141)), "{args:?}: {status:?}: {err}");
        assert!(err.is_empty(), "{args:?}: nothing on stderr: {err}");
    }
}

/// A closed stderr (`shears ... 2>&1 | grep -q warning`, grep gone) never turns a run
/// into a panic: an error still exits 2, and a run that warns still exits 0 with its
/// output written.
#[test]
fn a_closed_stderr_changes_no_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    model(&input);
    let run = |args: &[&str]| {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        Command::new(env!("CARGO_BIN_EXE_shears"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(writer)
            .status()
            .unwrap()
    };
    let missing = dir.path().join("missing.safetensors");
    let o = out.to_str().unwrap();
    assert_eq!(run(&["prune", missing.to_str().unwrap(), "-o", o, "-s", "0.5"]).code(), Some(2));
    assert!(!out.exists());
    // A model folder pruned into a folder that holds another file warns about it.
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tiny-bert");
    let folder = dir.path().join("pruned");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("notes.txt"), b"mine").unwrap();
    let f = folder.to_str().unwrap();
    let status = run(&["prune", tiny.to_str().unwrap(), "-o", f, "-s", "0.5"]);
    assert!(status.success(), "{status:?}");
    assert!(folder.join("model.safetensors").is_file());
    assert_eq!(std::fs::read(folder.join("notes.txt")).unwrap(), b"mine");
}

#[test]
fn a_weights_file_of_a_model_folder_is_never_pruned_into_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let folder = tiny_bert_in(dir.path());
    let weights = folder.join("model.safetensors");
    let config = folder.join("config.json");
    let masks = folder.join("masks.safetensors");
    let w = weights.to_str().unwrap();
    let untouched = [weights.as_path(), config.as_path()];
    // Over a file of the folder, a new file in it, or the masks in it: refused, naming
    // the folder, and nothing written.
    refused(&["prune", w, "-o", config.to_str().unwrap(), "-s", "0.5"], "model folder", &untouched);
    let beside = folder.join("pruned.safetensors");
    refused(
        &["prune", w, "-o", beside.to_str().unwrap(), "-s", "0.5"],
        "prune the folder",
        &untouched,
    );
    let out = dir.path().join("pruned.safetensors");
    let (o, m) = (out.to_str().unwrap(), masks.to_str().unwrap());
    refused(&["prune", w, "-o", o, "-s", "0.5", "--masks-out", m], "model folder", &untouched);
    assert!(!beside.exists() && !masks.exists() && !out.exists());
    no_temporaries(&folder);
    // Outside the folder it prunes as any checkpoint.
    let done = shears(&["prune", w, "-o", o, "-s", "0.5"]);
    assert!(done.status.success(), "{}", stderr(&done));
    assert!(out.is_file());
}

/// A model folder of links (as the Hugging Face cache lays one out) can point at the
/// file an output names: `embed` and `export` refuse to write over the tokenizer or the
/// config they read, and leave them as they were.
#[test]
fn an_output_is_never_a_file_a_folder_of_links_reads() {
    let dir = tempfile::tempdir().unwrap();
    let real = tiny_bert_in(dir.path());
    let links = dir.path().join("links");
    std::fs::create_dir(&links).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(real.join(name), links.join(name)).unwrap();
    }
    let texts = dir.path().join("texts.txt");
    std::fs::write(&texts, "a sentence\nanother one\n").unwrap();
    let (l, x) = (links.to_str().unwrap(), texts.to_str().unwrap());
    for name in ["tokenizer.json", "config.json"] {
        let target = real.join(name);
        let t = target.to_str().unwrap();
        refused(&["embed", l, "--texts", x, "-o", t], "are one file", &[&target]);
        // Export refuses any name but an .onnx one before it looks at where it leads.
        refused(&["export", l, "-o", t], "its name ends in .json", &[&target]);
    }
    no_temporaries(&real);
    // Elsewhere, it embeds.
    let out = dir.path().join("embeddings.safetensors");
    let done = shears(&["embed", l, "--texts", x, "-o", out.to_str().unwrap()]);
    assert!(done.status.success(), "{}", stderr(&done));
}

/// A run whose files would not fit on the output's file system is refused before it
/// writes anything: here a model folder holds a file of 8 TiB (sparse: it takes no
/// space where it is), which the pruned folder would copy in full.
#[test]
fn a_run_that_would_fill_the_disk_is_refused_before_it_writes() {
    let dir = tempfile::tempdir().unwrap();
    let folder = tiny_bert_in(dir.path());
    let huge = std::fs::File::create(folder.join("notes.txt")).unwrap();
    if huge.set_len(8 << 40).is_err() {
        // A file system without sparse files of that size cannot stage this case.
        return;
    }
    let out = dir.path().join("pruned");
    let (m, o) = (folder.to_str().unwrap(), out.to_str().unwrap());
    refused(&["prune", m, "-o", o, "-s", "0.5"], "free", &[]);
    assert!(!out.exists());
    no_temporaries(dir.path());
    // The same folder without the file prunes.
    std::fs::remove_file(folder.join("notes.txt")).unwrap();
    let done = shears(&["prune", m, "-o", o, "-s", "0.5"]);
    assert!(done.status.success(), "{}", stderr(&done));
}

/// An output file must carry its format's extension: a pruned checkpoint, masks and
/// embeddings `.safetensors`. A name of another kind (a config, a script, an ONNX model,
/// none) is most likely a file to keep: refused, and the file is as it was.
#[test]
fn an_output_named_for_another_kind_of_file_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    model(&input);
    let folder = tiny_bert_in(dir.path());
    let keep = |name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("the user's {name}\n")).unwrap();
        path
    };
    let (config, script, onnx, notes) =
        (keep("cfg.json"), keep("run.sh"), keep("model.onnx"), keep("notes"));
    let kept = [config.as_path(), script.as_path(), onnx.as_path(), notes.as_path()];
    let i = input.to_str().unwrap();
    let good = dir.path().join("pruned.safetensors");
    let g = good.to_str().unwrap();
    for (out, name) in
        [(&config, "ends in .json"), (&onnx, "ends in .onnx"), (&notes, "has no extension")]
    {
        let says =
            format!("refusing to write a pruned checkpoint to {}: its name {name}", out.display());
        refused(&["prune", i, "-o", out.to_str().unwrap(), "-s", "0.5"], &says, &kept);
    }
    let says = format!("refusing to write masks to {}: its name ends in .sh", script.display());
    refused(
        &["prune", i, "-o", g, "-s", "0.5", "--masks-out", script.to_str().unwrap()],
        &says,
        &kept,
    );
    let texts = keep("texts.txt");
    let (f, t) = (folder.to_str().unwrap(), texts.to_str().unwrap());
    let says =
        format!("refusing to write embeddings to {}: its name has no extension", notes.display());
    refused(&["embed", f, "--texts", t, "-o", notes.to_str().unwrap()], &says, &kept);
    assert!(!good.exists());
    // The same runs with names of their kind write them.
    let masks = dir.path().join("MASKS.SafeTensors");
    let o = shears(&["prune", i, "-o", g, "-s", "0.5", "--masks-out", masks.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(good.is_file() && masks.is_file());
}
