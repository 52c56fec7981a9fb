//! Reading checkpoints (memory-mapped, validated) and writing them back tensor by tensor.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo};

/// An input checkpoint, memory-mapped: tensors are decoded one at a time on demand.
pub(crate) struct Checkpoint {
    path: PathBuf,
    mmap: Mmap,
    /// Tensor names in the order their data appears in the file.
    names: Vec<String>,
    infos: HashMap<String, TensorInfo>,
    metadata: Option<HashMap<String, String>>,
    data_start: usize,
}

impl Checkpoint {
    /// Maps and validates `path` (header, dtypes, shapes, offsets).
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        // SAFETY-free: memmap2's map is unsafe only if the file changes underneath;
        // shears never writes to its inputs (an OUT equal to IN is refused).
        let mmap = map(&file).with_context(|| format!("cannot map {}", path.display()))?;
        SafeTensors::deserialize(&mmap).map_err(|e| {
            anyhow::anyhow!("{}: not a valid safetensors file: {e}", path.display())
        })?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut entries: Vec<(String, TensorInfo)> =
            metadata.tensors().into_iter().map(|(n, i)| (n, i.clone())).collect();
        entries.sort_by_key(|(_, info)| info.data_offsets);
        Ok(Checkpoint {
            path: path.to_owned(),
            names: entries.iter().map(|(n, _)| n.clone()).collect(),
            infos: entries.into_iter().collect(),
            metadata: metadata.metadata().clone(),
            mmap,
            data_start: 8 + header_len,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    pub(crate) fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.infos.get(name)
    }

    pub(crate) fn metadata(&self) -> &Option<HashMap<String, String>> {
        &self.metadata
    }

    /// The raw little-endian bytes of tensor `name`.
    pub(crate) fn bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self
            .info(name)
            .with_context(|| format!("{}: no tensor `{name}`", self.path.display()))?;
        let (s, e) = info.data_offsets;
        self.mmap.get(self.data_start + s..self.data_start + e).with_context(|| {
            format!("{}: tensor `{name}` lies outside the file", self.path.display())
        })
    }
}

#[allow(
    unsafe_code,
    reason = "memory-mapping a file is unsafe by API; see the comment at the call"
)]
fn map(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is read-only and shears never modifies its input files; a file
    // changed by another process while mapped could show torn data, which the format
    // checks catch as malformed input rather than undefined behaviour in safe code that
    // only reads bytes.
    unsafe { Mmap::map(file) }
}

/// Whether shears can prune tensors of this dtype.
pub(crate) fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// Decodes floating tensor data to `f64` (exact for every supported dtype).
pub(crate) fn decode(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f64>> {
    Ok(match dtype {
        Dtype::F16 => {
            bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f64()).collect()
        }
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f64())
            .collect(),
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect(),
        other => bail!("dtype {other:?} is not a floating type"),
    })
}

/// Encodes `f64` values back into `dtype` (values came from that dtype, or are zero, so
/// nothing is rounded).
pub(crate) fn encode(dtype: Dtype, values: &[f64]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(values.len() * dtype.bitsize() / 8);
    for &v in values {
        match dtype {
            Dtype::F16 => out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes()),
            Dtype::BF16 => out.extend_from_slice(&half::bf16::from_f64(v).to_le_bytes()),
            Dtype::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            Dtype::F64 => out.extend_from_slice(&v.to_le_bytes()),
            other => bail!("dtype {other:?} is not a floating type"),
        }
    }
    Ok(out)
}

/// Writes a safetensors file tensor by tensor: the header first (all sizes are known in
/// advance, since dtypes and shapes do not change), then each tensor's bytes as
/// `produce` returns them, so only one tensor's buffer is alive at a time.
///
/// The file is written to a temporary file beside `out` and renamed over it only when
/// complete; on any error the temporary file is removed and `out` is untouched.
pub(crate) fn write_streaming(
    out: &Path,
    tensors: &[(String, TensorInfo)],
    metadata: Option<HashMap<String, String>>,
    mut produce: impl FnMut(&str) -> Result<Vec<u8>>,
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
        let mut w = BufWriter::new(file);
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for (name, info) in tensors {
            let bytes = produce(name)?;
            let expected = info.data_offsets.1 - info.data_offsets.0;
            if bytes.len() != expected {
                bail!(
                    "internal error: tensor `{name}` encoded to {} bytes, {expected} expected",
                    bytes.len()
                );
            }
            w.write_all(&bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        }
        let file = w
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
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
