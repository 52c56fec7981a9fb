//! Crash safety, failing disks, and determinism.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use safetensors::tensor::Dtype;

use crate::util::{T, model, shears, stderr, write};

/// A checkpoint big enough that writing it takes a while (8 tensors of 1M f32).
fn big(path: &Path) {
    let tensors: Vec<T> = [
        "a.weight", "b.weight", "c.weight", "d.weight", "e.weight", "f.weight", "g.weight",
        "h.weight",
    ]
    .iter()
    .enumerate()
    .map(|(i, name)| T {
        name,
        dtype: Dtype::F32,
        shape: vec![1024, 1024],
        values: (0..1024 * 1024)
            .map(|k| ((k * 7919 + i * 31) % 10007) as f64 / 10007.0 - 0.5)
            .collect(),
    })
    .collect();
    write(path, &tensors);
}

/// Whenever a kill lands (before, during or after the write, or after the rename but
/// before exit), the output is either the previous file or the complete new one; the
/// exit status says nothing about which, so only the content is checked.
#[test]
fn killed_runs_leave_the_previous_file_or_the_complete_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    big(&input);
    let reference = dir.path().join("reference.safetensors");
    let args = |out: &Path| {
        ["prune", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"]
            .map(str::to_owned)
    };
    let o = shears(&args(&reference).each_ref().map(String::as_str));
    assert!(o.status.success(), "{}", stderr(&o));
    let complete = std::fs::read(&reference).unwrap();
    let previous = b"previous complete file".to_vec();
    std::fs::write(&out, &previous).unwrap();
    for attempt in 0..12u64 {
        for signal in ["KILL", "TERM", "INT", "HUP"] {
            let before = temporaries(dir.path());
            let mut child = Command::new(env!("CARGO_BIN_EXE_shears"))
                .args(args(&out))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(5 + attempt * 23 % 150));
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status();
            let _ = child.wait().unwrap();
            let now = std::fs::read(&out).unwrap();
            assert!(
                now == previous || now == complete,
                "{signal}: a killed run left a partial output"
            );
            if signal != "KILL" {
                // A caught signal removes the run's own temporaries before it exits (a
                // killed run's may remain, or be removed by this run if it got that far).
                let after = temporaries(dir.path());
                assert!(after.iter().all(|t| before.contains(t)), "{signal} left {after:?}");
            }
            std::fs::write(&out, &previous).unwrap();
        }
    }
    // The next run removes the temporaries the killed runs left behind, and succeeds.
    let o = shears(&args(&out).each_ref().map(String::as_str));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), complete);
    assert!(temporaries(dir.path()).is_empty(), "stale temporaries: {:?}", temporaries(dir.path()));
}

/// A run names the temporaries killed runs left beside its outputs, with their sizes,
/// and removes only those of its own outputs.
#[test]
fn leftovers_of_killed_runs_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    let values = (0..16).map(f64::from).collect();
    write(&input, &[T { name: "l.weight", dtype: Dtype::F32, shape: vec![4, 4], values }]);
    // A process that has exited: its pid names no running process.
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let other = dir.path().join(shears_io::temporary_name(pid, 0, "other.safetensors"));
    let mine = dir.path().join(shears_io::temporary_name(pid, 1, "out.safetensors"));
    // The same, from another container or machine: its PID means nothing here.
    let tag = if mine.to_string_lossy().contains("-0badc0de.") { "0badc0df" } else { "0badc0de" };
    let foreign = dir.path().join(format!(".shears-tmp-{pid}-2-{tag}.out.safetensors"));
    std::fs::write(&foreign, [0u8; 3]).unwrap();
    std::fs::write(&other, [0u8; 100]).unwrap();
    std::fs::write(&mine, [0u8; 7]).unwrap();
    let out = dir.path().join("out.safetensors");
    let o = shears(&["prune", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!("{} (100 bytes) is the partial output", other.display())),
        "{err}"
    );
    assert!(other.exists(), "another output's temporary is named, not removed");
    assert!(!mine.exists(), "this output's stale temporary is removed");
    assert!(foreign.exists() && !err.contains(tag), "{err}");
    // A model folder's run names those beside its output folder too.
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tiny-bert");
    let pruned = dir.path().join("pruned");
    let args = ["prune", folder.to_str().unwrap(), "-o", pruned.to_str().unwrap(), "-s", "0.5"];
    let o = shears(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let said = format!("{} (100 bytes) is the partial output", other.display());
    assert!(stderr(&o).contains(&said), "{}", stderr(&o));
    assert!(other.exists());
}

/// The temporary files in `dir`.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("shears-tmp"))
        .collect()
}

#[test]
fn a_full_disk_is_an_error_and_leaves_no_partial_output() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("in.safetensors"), dir.path().join("out.safetensors"));
    big(&input);
    // A 1 MiB file-size limit stands in for a full disk: writes fail with EFBIG (SIGXFSZ is
    // ignored, and ignored signals survive exec).
    let script = format!(
        "trap '' XFSZ; ulimit -f 1024; exec '{}' prune '{}' -o '{}' -s 0.5",
        env!("CARGO_BIN_EXE_shears"),
        input.display(),
        out.display()
    );
    let o = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("out.safetensors"), "{}", stderr(&o));
    assert_eq!(stderr(&o).trim_end().lines().count(), 1);
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the input remains");
}

#[test]
fn missing_or_unwritable_output_locations_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    model(&input);
    let nowhere = dir.path().join("no/such/dir/out.safetensors");
    let o =
        shears(&["prune", input.to_str().unwrap(), "-o", nowhere.to_str().unwrap(), "-s", "0.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no/such/dir"), "{}", stderr(&o));
    let o = shears(&[
        "prune",
        input.to_str().unwrap(),
        "-o",
        dir.path().to_str().unwrap(),
        "-s",
        "0.5",
    ]);
    assert_eq!(o.status.code(), Some(2), "a directory is not a file: {}", stderr(&o));
}

#[test]
fn a_read_only_filesystem_is_an_error_and_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    model(&input);
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    // A read-only tmpfs over `ro`, in a private mount namespace (a user namespace maps the
    // caller to root there, so this needs no privileges and leaves no mount behind).
    for out in ["out.safetensors", "masks.safetensors"] {
        let args = if out == "masks.safetensors" {
            format!(
                "-o '{}' --masks-out '{}'",
                dir.path().join("ok.safetensors").display(),
                ro.join(out).display()
            )
        } else {
            format!("-o '{}'", ro.join(out).display())
        };
        let script = format!(
            "mount -t tmpfs -o ro tmpfs '{}' && exec '{}' prune '{}' {args} -s 0.5",
            ro.display(),
            env!("CARGO_BIN_EXE_shears"),
            input.display(),
        );
        let o = Command::new("unshare").args(["-rm", "sh", "-c", &script]).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        assert!(stderr(&o).contains("Read-only file system"), "{}", stderr(&o));
        assert!(stderr(&o).contains(out), "{}", stderr(&o));
        assert_eq!(stderr(&o).trim_end().lines().count(), 1);
    }
    assert_eq!(std::fs::read_dir(&ro).unwrap().count(), 0);
}

#[test]
fn a_directory_without_write_permission_is_an_error_and_leaves_no_output() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    model(&input);
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    let mode = |p: &Path, m| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    mode(dir.path(), 0o755);
    mode(&input, 0o644);
    mode(&locked, 0o555);
    let out = locked.join("out.safetensors");
    // A copy of the binary inside the temporary directory, so that `nobody` can run it
    // wherever the build directory lives.
    let binary = dir.path().join("shears");
    std::fs::copy(env!("CARGO_BIN_EXE_shears"), &binary).unwrap();
    mode(&binary, 0o755);
    let mut cmd = Command::new(&binary);
    cmd.args(["prune", input.to_str().unwrap(), "-o", out.to_str().unwrap(), "-s", "0.5"]);
    if std::fs::metadata(&input).unwrap().uid() == 0 {
        // Permissions do not bind root: run as `nobody`.
        cmd.uid(65534).gid(65534);
    }
    let o = cmd.output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    assert!(stderr(&o).contains("out.safetensors"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0);
}

#[test]
fn outputs_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.safetensors");
    big(&input);
    let mut files = Vec::new();
    for threads in ["1", "2", "4"] {
        for scope in ["layer", "global"] {
            let out = dir.path().join(format!("out-{threads}-{scope}.safetensors"));
            let o = Command::new(env!("CARGO_BIN_EXE_shears"))
                .env("RAYON_NUM_THREADS", threads)
                .args([
                    "prune",
                    input.to_str().unwrap(),
                    "-o",
                    out.to_str().unwrap(),
                    "-s",
                    "0.7",
                    "--scope",
                    scope,
                ])
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            files.push((scope, std::fs::read(&out).unwrap()));
        }
    }
    for scope in ["layer", "global"] {
        let runs: Vec<&Vec<u8>> =
            files.iter().filter(|(s, _)| *s == scope).map(|(_, b)| b).collect();
        assert!(runs.windows(2).all(|w| w[0] == w[1]), "{scope}: thread count changed the output");
    }
}
