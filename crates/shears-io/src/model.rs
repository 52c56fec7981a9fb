//! [`Model`]: a checkpoint as users hand it over: one safetensors file, a Hugging Face
//! model folder, or the `model.safetensors.index.json` of a sharded model.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use safetensors::Dtype;
use safetensors::tensor::TensorInfo;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, FileKind, Result};
use crate::paths::require_regular_file;
use crate::quantized::scale_name;

/// The name of a sharded model's index in its folder.
pub const INDEX_NAME: &str = "model.safetensors.index.json";
/// The name of a single-file model's weights in its folder.
pub const SINGLE_NAME: &str = "model.safetensors";

/// The largest index file accepted (the index of a model with a million tensors is a few
/// tens of MB).
const MAX_INDEX_BYTES: u64 = 100_000_000;

/// How deep [`Model::other_files`] goes into a model folder's subfolders: a Hugging Face
/// folder keeps its files at most two or three levels down (`1_Pooling/config.json`).
pub const MAX_FOLDER_DEPTH: usize = 16;

/// How many entries [`Model::other_files`] looks at before it calls the folder no model
/// folder: a model's configs, tokenizers and modules are tens of files.
pub const MAX_FOLDER_ENTRIES: usize = 100_000;

/// How a [`Model`] is laid out on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A safetensors file given by itself.
    File,
    /// A folder with one `model.safetensors` (or one other `*.safetensors`).
    Folder,
    /// A folder whose weights are shards listed by an index.
    Sharded,
}

/// A sharded model's index: which shard holds each tensor, and its metadata.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Index {
    /// The index's metadata (`total_size` and anything else it carries).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Tensor name to shard file name.
    pub weight_map: BTreeMap<String, String>,
}

/// One tensor of a model: its shard and its entry.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// The shard (an index into [`Model::shards`]).
    pub shard: usize,
    /// The tensor's name.
    pub name: &'a str,
    /// Its dtype, shape and offsets in the shard.
    pub info: &'a TensorInfo,
}

/// A model's weights: one checkpoint, or the shards of an index, opened and validated.
///
/// Every shard's header is read and validated when the model opens; tensor names are
/// unique across shards; a sharded model's index lists exactly the shards' tensors.
/// Nothing else is read until asked.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use shears_io::{Dtype, Layout, Model, layout, write_safetensors};
///
/// let dir = tempfile::tempdir()?;
/// let tensors = layout([("w".to_string(), Dtype::F32, vec![2, 2])])?;
/// write_safetensors(&dir.path().join("model.safetensors"), &tensors, None, |_, out| {
///     out.write_all(&[0; 16]).map_err(|e| shears_io::Error::io("write", "w", e))
/// })?;
/// let model = Model::open(dir.path())?;
/// assert_eq!(model.layout(), Layout::Folder);
/// assert_eq!(model.tensors().map(|t| t.name).collect::<Vec<_>>(), ["w"]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Model {
    path: PathBuf,
    folder: Option<PathBuf>,
    layout: Layout,
    shards: Vec<Checkpoint>,
    index: Option<Index>,
}

impl Model {
    /// Opens a safetensors file, a model folder (its `model.safetensors.index.json`, else
    /// its `model.safetensors`, else its one `*.safetensors` file), or an index file. A
    /// folder with both an index and a `model.safetensors` the index does not list is
    /// refused: `transformers` would load that file, not the shards.
    ///
    /// # Errors
    /// [`Error::Io`] for a path that cannot be read; [`Error::Input`] for a folder with no
    /// weights shears can read (naming what it holds instead, e.g. `pytorch_model.bin`);
    /// [`Error::Index`] for an index that is not valid or does not match its shards;
    /// [`Error::Input`] for a folder with both an index and another `model.safetensors`;
    /// the checkpoint errors of every shard.
    pub fn open(path: &Path) -> Result<Model> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io("open", path, e))?;
        if meta.is_dir() {
            let index = path.join(INDEX_NAME);
            // Present but not a regular file (a FIFO, a folder, a link that leads
            // nowhere): opened and refused by name, not taken for no index.
            let single = path.join(SINGLE_NAME);
            let present = crate::paths::is_present(&single);
            if crate::paths::is_present(&index) {
                let model = Model::open_index(path, &index)?;
                // `transformers` loads `model.safetensors` when a folder has one, whatever
                // its index says: both, and not one model, would run two different ones.
                let listed = model.shards.iter().any(|s| s.path() == single);
                if present && !listed {
                    return Err(Error::Input {
                        path: path.to_owned(),
                        reason: format!(
                            "holds both {SINGLE_NAME} and {INDEX_NAME}, whose shards are other files: transformers would load the one, shears the other; remove the stale one, or give the file to use"
                        ),
                    });
                }
                return Ok(model);
            }
            let file = if present { single } else { only_weights_file(path)? };
            let shard = Checkpoint::open(&file)?;
            return Ok(Model {
                path: path.to_owned(),
                folder: Some(path.to_owned()),
                layout: Layout::Folder,
                shards: vec![shard],
                index: None,
            });
        }
        require_regular_file(path)?;
        if path.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".index.json")) {
            let folder = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            };
            return Model::open_index(&folder, path);
        }
        Ok(Model {
            path: path.to_owned(),
            folder: None,
            layout: Layout::File,
            shards: vec![Checkpoint::open(path)?],
            index: None,
        })
    }

    fn open_index(folder: &Path, index_path: &Path) -> Result<Model> {
        let bad = |reason: String| Error::Index { path: index_path.to_owned(), reason };
        let file = crate::paths::open_regular_file(index_path)?;
        let len = file.metadata().map_err(|e| Error::io("read", index_path, e))?.len();
        if len > MAX_INDEX_BYTES {
            return Err(bad(format!("{len} bytes, more than an index of {MAX_INDEX_BYTES}")));
        }
        // Bounded whatever size the file reports (a file of /proc reports 0).
        let bounded = std::io::Read::take(file, MAX_INDEX_BYTES);
        let mut index: Index = serde_json::from_reader(std::io::BufReader::new(bounded))
            .map_err(|e| bad(format!("not an index of shards: {e}")))?;
        // `./model-00001-of-00002.safetensors` and `model-00001-of-00002.safetensors` are
        // one file: each shard is known by one spelling, without the `.` components.
        for file in index.weight_map.values_mut() {
            let components = Path::new(file.as_str()).components();
            if components.clone().any(|c| c == Component::CurDir)
                && components.clone().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
            {
                let parts: Vec<String> = components
                    .filter(|c| *c != Component::CurDir)
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                // `.` alone names the folder: left as written, it is refused as one.
                if !parts.is_empty() {
                    *file = parts.join("/");
                }
            }
        }
        // An index of nothing would load as a model of no tensors, whatever the shards
        // beside it hold.
        if index.weight_map.is_empty() {
            return Err(bad("its weight_map lists no tensor".to_owned()));
        }
        // Shards in the order of their names (model-00001-of-00002 before -00002).
        // Each shard's name once (the weight map repeats it for every tensor).
        let files: Vec<String> = index
            .weight_map
            .values()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut shards = Vec::with_capacity(files.len());
        for name in &files {
            let relative = Path::new(name);
            // `./model-00001-of-00002.safetensors` is inside the folder too.
            let plain = relative
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
            if !plain || name.is_empty() {
                return Err(bad(format!("shard `{name}` is not a path inside the model's folder")));
            }
            let shard = folder.join(relative);
            if shard.is_dir() {
                return Err(bad(format!("shard `{name}` is a folder, not a file of weights")));
            }
            let checkpoint = Checkpoint::open(&shard).map_err(|e| match e {
                // The user gave the folder: what is wrong is the index's entry, and the
                // message names it and a tensor it lists there.
                Error::NotSafetensors { kind, .. } => {
                    let tensor = index.weight_map.iter().find(|(_, f)| *f == name);
                    let tensor = tensor.map_or_else(String::new, |(t, _)| t.clone());
                    let what = match kind {
                        FileKind::Json => "JSON text".to_owned(),
                        kind => kind.to_string(),
                    };
                    bad(format!(
                        "shard `{name}`, listed for tensor `{tensor}`, is not a safetensors \
                         file: it is {what}"
                    ))
                }
                e => e,
            })?;
            shards.push(checkpoint);
        }
        let model = Model {
            path: index_path.to_owned(),
            folder: Some(folder.to_owned()),
            layout: Layout::Sharded,
            shards,
            index: Some(index),
        };
        model.check_index(&files)?;
        Ok(model)
    }

    /// Every tensor of the index is in its shard, every shard's tensor is in the index,
    /// and no name is in two shards.
    fn check_index(&self, files: &[String]) -> Result<()> {
        let Some(index) = &self.index else { return Ok(()) };
        let bad = |reason: String| Error::Index { path: self.path.clone(), reason };
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (s, shard) in self.shards.iter().enumerate() {
            for name in shard.names() {
                if let Some(first) = seen.insert(name, s) {
                    return Err(bad(format!(
                        "tensor `{name}` is in both {} and {}",
                        files[first], files[s]
                    )));
                }
                match index.weight_map.get(name) {
                    Some(file) if *file == files[s] => {}
                    Some(file) => {
                        return Err(bad(format!(
                            "tensor `{name}` is in {}, the index says {file}",
                            files[s]
                        )));
                    }
                    None => {
                        return Err(bad(format!(
                            "tensor `{name}` of {} is not in the index",
                            files[s]
                        )));
                    }
                }
            }
        }
        if let Some(missing) = index.weight_map.keys().find(|n| !seen.contains_key(n.as_str())) {
            return Err(bad(format!(
                "tensor `{missing}` is in the index but not in {}",
                index.weight_map[missing]
            )));
        }
        // A shard decodes an int8 tensor with the scales beside it: scales in another
        // shard would leave the tensor unreadable as floating point, so it would be
        // passed over as an integer tensor without a word.
        for (s, shard) in self.shards.iter().enumerate() {
            for (name, _) in shard.tensors().iter().filter(|(_, i)| i.dtype == Dtype::I8) {
                let scales = scale_name(name);
                if let Some(&t) = seen.get(scales.as_str())
                    && t != s
                {
                    return Err(bad(format!(
                        "int8 tensor `{name}` is in {} and its scales `{scales}` in {}: \
                         shears reads a quantized tensor and its scales from one shard",
                        files[s], files[t]
                    )));
                }
            }
        }
        Ok(())
    }

    /// The path the model was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's folder, unless it is a file given by itself.
    pub fn folder(&self) -> Option<&Path> {
        self.folder.as_deref()
    }

    /// How the model is laid out.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The shards (one, unless the model is sharded), in file-name order.
    pub fn shards(&self) -> &[Checkpoint] {
        &self.shards
    }

    /// The index of a sharded model.
    pub fn index(&self) -> Option<&Index> {
        self.index.as_ref()
    }

    /// Every tensor, shard by shard, each in the order of its data.
    pub fn tensors(&self) -> impl Iterator<Item = TensorRef<'_>> {
        self.shards.iter().enumerate().flat_map(|(shard, ckpt)| {
            ckpt.tensors().iter().map(move |(name, info)| TensorRef { shard, name, info })
        })
    }

    /// The tensor called `name`.
    pub fn find(&self, name: &str) -> Option<TensorRef<'_>> {
        self.shards.iter().enumerate().find_map(|(shard, ckpt)| {
            let (name, info) = ckpt.entry(name)?;
            Some(TensorRef { shard, name, info })
        })
    }

    /// The files of the model's folder that are not its weights or index (configs,
    /// tokenizers, ...), as paths relative to the folder, subfolders included; none for
    /// a file given by itself. Entries that are neither files nor folders (FIFOs,
    /// sockets, devices, links that lead nowhere) are listed too, and links to folders
    /// (not entered), so that a caller copying the folder can say what it left out; open
    /// each with [`crate::paths::open_regular_file`].
    ///
    /// # Errors
    /// [`Error::Io`] if the folder cannot be listed; [`Error::Input`] if it holds a
    /// folder more than [`MAX_FOLDER_DEPTH`] levels down or more than
    /// [`MAX_FOLDER_ENTRIES`] entries, bounds that keep the walk short whatever the
    /// folder holds.
    pub fn other_files(&self) -> Result<Vec<PathBuf>> {
        let Some(folder) = &self.folder else { return Ok(Vec::new()) };
        let weights: Vec<PathBuf> = self
            .shards
            .iter()
            .filter_map(|s| s.path().strip_prefix(folder).ok().map(Path::to_path_buf))
            .chain(self.index.as_ref().map(|_| PathBuf::from(INDEX_NAME)))
            .collect();
        let mut found = Vec::new();
        let mut stack = vec![PathBuf::new()];
        // Symbolic links to files are followed (a Hugging Face cache snapshot is a folder
        // of links into its blobs). A link to a folder is listed as an entry, not
        // entered: one outside the model's folder (an ancestor, `/`) holds what is not
        // the model's, and one inside it leads to a folder listed under its own name
        // (entering the link could list that folder under the link's name instead). A
        // folder reached twice all the same (a bind mount) is listed once.
        let mut listed = HashSet::new();
        let mut visited = 0usize;
        while let Some(relative) = stack.pop() {
            let depth = relative.components().count();
            if depth > MAX_FOLDER_DEPTH {
                // Named by its first levels only: the whole path may be kilobytes long.
                let shown: PathBuf = relative.components().take(MAX_FOLDER_DEPTH).collect();
                return Err(Error::Input {
                    path: folder.clone(),
                    reason: format!(
                        "holds folders more than {MAX_FOLDER_DEPTH} levels deep ({}/...), which no model folder does",
                        shown.display()
                    ),
                });
            }
            let dir = folder.join(&relative);
            if let Ok(canonical) = dir.canonicalize()
                && !listed.insert(canonical)
            {
                continue;
            }
            let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("list", &dir, e))?;
            for entry in entries {
                visited += 1;
                if visited > MAX_FOLDER_ENTRIES {
                    return Err(Error::Input {
                        path: folder.clone(),
                        reason: format!(
                            "holds more than {MAX_FOLDER_ENTRIES} files and folders, which no model folder does"
                        ),
                    });
                }
                let entry = entry.map_err(|e| Error::io("list", &dir, e))?;
                let name = entry.file_name();
                if name.to_string_lossy().starts_with('.') {
                    continue;
                }
                let path = relative.join(&name);
                let mut kind = entry.file_type().map_err(|e| Error::io("list", &dir, e))?;
                let mut linked_folder = false;
                if kind.is_symlink() {
                    // A link that leads nowhere (dangling, or a loop) is listed as it is,
                    // for the caller to say it was left out.
                    if let Ok(meta) = std::fs::metadata(entry.path()) {
                        kind = meta.file_type();
                    }
                    linked_folder = kind.is_dir();
                }
                if linked_folder {
                    found.push(path);
                } else if kind.is_dir() {
                    stack.push(path);
                } else if !weights.contains(&path) {
                    found.push(path);
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// The index of the model as it would be with the same tensors, each `bytes(name)`
    /// long: the same weight map and metadata, `total_size` recomputed.
    pub fn index_with_sizes(&self, bytes: impl Fn(&str) -> u64) -> Option<Index> {
        let mut index = self.index.clone()?;
        let total: u64 = index.weight_map.keys().map(|n| bytes(n)).sum();
        index.metadata.insert("total_size".to_owned(), total.into());
        Some(index)
    }
}

/// The one `*.safetensors` file of a folder that has no `model.safetensors`.
fn only_weights_file(folder: &Path) -> Result<PathBuf> {
    let entries = std::fs::read_dir(folder).map_err(|e| Error::io("list", folder, e))?;
    let mut weights = Vec::new();
    let mut torch = None;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") && entry.path().is_file() {
            weights.push(entry.path());
        } else if name.ends_with(".bin") || name.ends_with(".pt") || name.ends_with(".pth") {
            torch = Some(name);
        }
    }
    match (weights.len(), torch) {
        (1, _) => Ok(weights.remove(0)),
        (0, Some(name)) => Err(Error::Input {
            path: folder.to_owned(),
            reason: format!(
                "holds no safetensors weights, only {name} (PyTorch's format): convert it to safetensors first"
            ),
        }),
        (0, None) => Err(Error::Input {
            path: folder.to_owned(),
            reason: "holds no model.safetensors and no model.safetensors.index.json".into(),
        }),
        (_, _) => Err(Error::Input {
            path: folder.to_owned(),
            reason: "holds several .safetensors files and no index: give the file to use".into(),
        }),
    }
}
