//! Writing checkpoints tensor by tensor, atomically.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use safetensors::tensor::{Metadata, TensorInfo};

use crate::write_behind::WriteBehind;

/// Writes a safetensors file tensor by tensor: the header first (all sizes are known in
/// advance, since dtypes and shapes do not change), then each tensor's bytes as
/// `produce` writes them, so at most one tensor is in memory at a time (plus the bounded
/// bytes the writer thread has not written yet, see [`WriteBehind`]).
///
/// The file is written to a temporary file beside `out` and renamed over it only when
/// complete; on any error the temporary file is removed and `out` is untouched.
pub(crate) fn write_streaming(
    out: &Path,
    tensors: &[(String, TensorInfo)],
    metadata: Option<HashMap<String, String>>,
    mut produce: impl FnMut(&str, &mut dyn Write) -> Result<()>,
) -> Result<()> {
    let header = Metadata::new(metadata, tensors.to_vec())
        .map_err(|e| anyhow::anyhow!("cannot build the header: {e}"))?;
    let mut header = serde_json::to_vec(&header)?;
    header.resize(header.len().next_multiple_of(8), b' ');
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let file_name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    remove_stale_temporaries(&dir, &file_name);
    let tmp = dir.join(format!(".{file_name}{TMP_MARK}{}", std::process::id()));
    let result = (|| -> Result<()> {
        let file =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut w = WriteBehind::new(file)
            .with_context(|| format!("cannot start writing {}", tmp.display()))?;
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (name, info) in tensors {
            let mut counted = Counted { inner: &mut w, bytes: 0 };
            produce(name, &mut counted)
                .with_context(|| format!("cannot write tensor `{name}` to {}", tmp.display()))?;
            let expected = info.data_offsets.1 - info.data_offsets.0;
            if counted.bytes != expected {
                bail!(
                    "internal error: tensor `{name}` encoded to {} bytes, {expected} expected",
                    counted.bytes
                );
            }
        }
        let file = w.finish().with_context(|| format!("cannot write {}", tmp.display()))?;
        file.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot move the result to {}", out.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A writer that counts the bytes passed through it.
struct Counted<'a, W: Write> {
    inner: &'a mut W,
    bytes: usize,
}

impl<W: Write> Write for Counted<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Temporary files are named `.{target}.shears-tmp-{pid}`.
const TMP_MARK: &str = ".shears-tmp-";

/// Removes temporary files of `target` left in `dir` by runs that were killed: their
/// process id no longer names a running process. Files of live runs are left alone.
fn remove_stale_temporaries(dir: &Path, target: &str) {
    let prefix = format!(".{target}{TMP_MARK}");
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Whether `pid` names a running process (Linux: `/proc/{pid}`; elsewhere assume it does,
/// so nothing another run may still write is removed).
fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") { Path::new(&format!("/proc/{pid}")).exists() } else { true }
}

/// Writes `bytes` to `path` atomically (temporary file, then rename).
pub(crate) fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    shears_nn::checkpoint::write_atomic(path, bytes).map_err(|e| anyhow::anyhow!("{e}"))
}
