//! Where a command's outputs go: a file for a file, a folder of the same shards, an
//! updated index and every other file for a model folder; all committed together.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use shears_io::{INDEX_NAME, Index, Layout, Model, PendingFile, SealedFile};

use crate::record::PRUNING_KEY;

/// Entries (files and folders) the walk of an existing output folder visits at most.
const MAX_VISITED: usize = 100_000;

/// The weights files a Hugging Face loader opens in a model folder by name.
const LOADED_WEIGHTS: [&str; 2] = ["model.safetensors", INDEX_NAME];

/// Weight files of formats shears does not rewrite: copying them beside pruned
/// safetensors would leave unpruned weights that some loaders prefer.
const OTHER_WEIGHTS: [&str; 8] =
    [".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".onnx", ".gguf"];

/// The most bytes of `modules.json` read (a real one is a few hundred).
const MAX_MODULES_BYTES: u64 = 1 << 20;

/// The module folders a sentence-transformers folder's `modules.json` names (`path`s
/// of plain relative components); none if it has no such file, or one that cannot be
/// read or is past [`MAX_MODULES_BYTES`].
fn module_folders(folder: &Path) -> Vec<PathBuf> {
    use std::io::Read;
    // A regular file only, opened without waiting on a FIFO.
    let Ok(file) = shears_io::paths::open_regular_file(&folder.join("modules.json")) else {
        return Vec::new();
    };
    let mut text = String::new();
    let read = file.take(MAX_MODULES_BYTES + 1).read_to_string(&mut text);
    if read.is_err() || text.len() as u64 > MAX_MODULES_BYTES {
        return Vec::new();
    }
    let Ok(serde_json::Value::Array(modules)) = serde_json::from_str(&text) else {
        return Vec::new();
    };
    // `./.pooling` and `.pooling/.` name the folder `.pooling`, as the loaders read it.
    modules
        .iter()
        .filter_map(|m| m.get("path")?.as_str())
        .map(|p| Path::new(p).components().filter(|c| *c != std::path::Component::CurDir).collect())
        .filter(|p: &PathBuf| {
            p.components().next().is_some()
                && p.components().all(|c| matches!(c, std::path::Component::Normal(_)))
        })
        .collect()
}

/// Refuses an output file whose name does not end in `.extension` (in any case), the
/// extension of what is written there (`what`): a name of another kind (a config's, a
/// script's, another format's, none) is most likely a file to keep, which the output
/// would replace.
pub(crate) fn check_extension(path: &Path, extension: &str, what: &str) -> Result<()> {
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case(extension)) {
        return Ok(());
    }
    let name = match path.extension() {
        Some(e) => format!("ends in .{}", e.to_string_lossy()),
        None => "has no extension".to_owned(),
    };
    bail!(
        "refusing to write {what} to {}: its name {name}; give one ending in .{extension}",
        path.display()
    )
}

/// Refuses a pruned checkpoint's or a mask file's name that is not a safetensors file's
/// ([`check_extension`]); a pruned folder's shards are named after the model's.
pub(crate) fn check_extensions(model: &Model, out: &Path, masks: Option<&Path>) -> Result<()> {
    if model.folder().is_none() {
        check_extension(out, "safetensors", "a pruned checkpoint")?;
    }
    match masks {
        Some(masks) => check_extension(masks, "safetensors", "masks"),
        None => Ok(()),
    }
}

/// The paths a pruned model is written to.
#[derive(Debug)]
pub(crate) struct Outputs {
    /// The output folder, for a model folder.
    folder: Option<PathBuf>,
    /// The model folder, whose folders' permissions the output's new folders take.
    model_folder: Option<PathBuf>,
    /// One per shard of the model, in order.
    pub(crate) shards: Vec<PathBuf>,
    /// The rewritten index of a sharded model.
    pub(crate) index: Option<PathBuf>,
    /// Other files of the folder: `(source, destination)`.
    pub(crate) copies: Vec<(PathBuf, PathBuf)>,
    /// Files of the folder not copied, and why.
    pub(crate) skipped: Vec<(PathBuf, &'static str)>,
    pub(crate) masks: Option<PathBuf>,
}

impl Outputs {
    /// The outputs of pruning `model` into `out` (a file if the model is a file, else a
    /// folder, which need not exist yet).
    pub(crate) fn plan(model: &Model, out: &Path, masks: Option<&Path>) -> Result<Outputs> {
        let mut outputs = Outputs {
            folder: model.folder().map(|_| out.to_owned()),
            model_folder: model.folder().map(Path::to_owned),
            shards: Vec::new(),
            index: None,
            copies: Vec::new(),
            skipped: Vec::new(),
            masks: masks.map(Path::to_path_buf),
        };
        let Some(folder) = model.folder() else {
            outputs.shards.push(out.to_owned());
            return Ok(outputs);
        };
        // A sharded model given by its index is a folder too: `-o pruned.index.json`
        // would be a folder of that name.
        let file_like = out.extension().is_some_and(|e| e == "safetensors" || e == "json");
        if !out.exists() && file_like {
            // A single weights file can be pruned alone; a shard is part of the model.
            let alone = match model.shards() {
                [only] => format!(", or prune {} alone", only.path().display()),
                _ => String::new(),
            };
            bail!(
                "{} is a model folder, so the output is a folder; {} names a file (give a folder name{alone})",
                model.path().display(),
                out.display(),
            );
        }
        if out.is_file() {
            bail!(
                "{} is a model folder, so the output is a folder; {} is a file",
                model.path().display(),
                out.display()
            );
        }
        if let (Ok(a), Ok(b)) = (folder.canonicalize(), out.canonicalize())
            && a == b
        {
            bail!("the output folder {} is the model's own folder: give another", out.display());
        }
        // A mask file named through another path to the output folder (`$PWD/out/m`,
        // `out/../out/m`) is named as the folder's outputs are, so that the checks on
        // the paths it would be written to see it where it will be.
        if let Some((given, rest)) =
            masks.and_then(|m| Some((m, shears_io::paths::path_within(m, out)?)))
        {
            if rest.as_os_str().is_empty() {
                bail!(
                    "--masks-out {} is the output folder: give a file name, in it or elsewhere",
                    given.display()
                );
            }
            outputs.masks = Some(out.join(rest));
        }
        for shard in model.shards() {
            let relative = shard.path().strip_prefix(folder).unwrap_or(shard.path());
            outputs.shards.push(out.join(relative));
        }
        if model.layout() == Layout::Sharded {
            outputs.index = Some(out.join(INDEX_NAME));
        }
        let root = folder.canonicalize().ok();
        let modules = module_folders(folder);
        for relative in model.other_files()? {
            let source = folder.join(&relative);
            let not_a_file = match std::fs::metadata(&source) {
                Ok(meta) if meta.is_file() => None,
                // A module of the sentence-transformer linked to another folder of the
                // model: the model loads it under the link's name, so the pruned folder
                // gets its files there (one level deep). One linked from outside would
                // copy whatever that folder holds (`/etc`, say): refused.
                Ok(meta) if meta.is_dir() && modules.contains(&relative) => {
                    let why = "it is not a file of the module folder, which is a link and whose files alone are copied";
                    outputs.copy_module(folder, root.as_deref(), &relative, out, why)?;
                    continue;
                }
                Ok(meta) if meta.is_dir() => match (source.canonicalize(), &root) {
                    (Ok(to), Some(root)) if to.starts_with(root) => {
                        Some("it links to a folder of the model folder, copied under its own name")
                    }
                    _ => Some("it links to a folder outside the model folder"),
                },
                Ok(_) => Some("it is not a regular file (a FIFO, socket or device)"),
                Err(_) if std::fs::symlink_metadata(&source).is_ok_and(|m| m.is_symlink()) => {
                    Some("it is a symbolic link that leads to no file")
                }
                Err(_) => Some("it cannot be examined"),
            };
            match not_a_file {
                Some(why) => outputs.skipped.push((source, why)),
                None => outputs.place(source, out.join(&relative)),
            }
        }
        // A module folder of a hidden name (`.pooling`): the walk above passes over
        // hidden entries, as it does `.git`, but the model loads this one by the name
        // `modules.json` gives it, so its files are copied as a linked module's are.
        for module in &modules {
            let hidden =
                module.components().any(|c| c.as_os_str().to_string_lossy().starts_with('.'));
            if hidden && folder.join(module).is_dir() {
                let why = "it is not a file of the module folder, which is hidden and whose files alone are copied";
                outputs.copy_module(folder, root.as_deref(), module, out, why)?;
            }
        }
        Ok(outputs)
    }

    /// A file of the model folder: copied to `destination`, unless it holds weights.
    fn place(&mut self, source: PathBuf, destination: PathBuf) {
        let name = source.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".safetensors") || OTHER_WEIGHTS.iter().any(|e| name.ends_with(e)) {
            self.skipped.push((source, "weights shears did not prune"));
        } else {
            self.copies.push((source, destination));
        }
    }

    /// The files of the module folder `module` of the model folder `folder` (whose
    /// canonical path is `root`) placed under the same name in `out`, as
    /// [`Outputs::copy_module_files`] places them; refused if the module folder leads
    /// outside the model folder, whose contents shears never copies.
    fn copy_module(
        &mut self,
        folder: &Path,
        root: Option<&Path>,
        module: &Path,
        out: &Path,
        why_not: &'static str,
    ) -> Result<()> {
        let source = folder.join(module);
        match (source.canonicalize(), root) {
            (Ok(to), Some(root)) if to.starts_with(root) => {
                self.copy_module_files(&source, &out.join(module), why_not)
            }
            _ => bail!(
                "{}: the module folder {} that modules.json names links outside the model folder, and shears copies nothing from outside it: put the module's files in the model folder",
                folder.display(),
                module.display()
            ),
        }
    }

    /// The files of the module folder `source` (a link to another folder, or a folder of
    /// a hidden name, which the walk of the model folder does not enter) placed in
    /// `destination`; what else it holds is named as not copied (`why_not`), hidden
    /// files (as in the model folder) aside.
    fn copy_module_files(
        &mut self,
        source: &Path,
        destination: &Path,
        why_not: &'static str,
    ) -> Result<()> {
        let listing = || format!("listing {}", source.display());
        let mut names = Vec::new();
        for (i, entry) in std::fs::read_dir(source).with_context(listing)?.enumerate() {
            if i == MAX_VISITED {
                bail!(
                    "{} holds more than {MAX_VISITED} entries: a module folder holds a few files",
                    source.display()
                );
            }
            let name = entry.with_context(listing)?.file_name();
            if !name.to_string_lossy().starts_with('.') {
                names.push(name);
            }
        }
        names.sort();
        for name in names {
            let path = source.join(&name);
            if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                self.place(path, destination.join(&name));
            } else {
                self.skipped.push((path, why_not));
            }
        }
        Ok(())
    }

    /// The output folder of a model folder.
    pub(crate) fn folder(&self) -> Option<&Path> {
        self.folder.as_deref()
    }

    /// Every path written: the shards, the index, the copies, the mask file last.
    pub(crate) fn written(&self) -> impl Iterator<Item = &Path> {
        self.shards
            .iter()
            .chain(&self.index)
            .chain(self.copies.iter().map(|(_, d)| d))
            .chain(&self.masks)
            .map(PathBuf::as_path)
    }

    /// Temporaries that killed runs left in the folders written to (and beside the
    /// output folder of a model folder, where a file output's run leaves them), with
    /// their sizes: a run removes those of its own outputs, and names the others rather
    /// than let them fill a disk unnoticed.
    pub(crate) fn leftovers(&self) -> Vec<(PathBuf, u64)> {
        let mut dirs: Vec<PathBuf> = self
            .written()
            .chain(self.folder.as_deref())
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs.iter()
            .flat_map(|d| shears_io::leftovers(d))
            .map(|l| {
                let size = std::fs::symlink_metadata(&l.path).map_or(0, |m| m.len());
                (l.path, size)
            })
            .collect()
    }

    /// Every path read besides the shards (the files copied).
    pub(crate) fn copied(&self) -> impl Iterator<Item = &Path> {
        self.copies.iter().map(|(s, _)| s.as_path())
    }

    /// Creates the output folder of a model folder (its parent must exist), locks it
    /// (until the returned guard goes), and creates the subfolders its files go in; a
    /// file's output needs no folder. The folders created are removed again, if still
    /// empty, unless the guard is kept.
    pub(crate) fn create_folders(&self) -> Result<NewFolders> {
        let mut created = NewFolders { folders: Vec::new(), lock: None };
        let Some(root) = &self.folder else { return Ok(created) };
        if !root.is_dir() {
            created.create(root)?;
        }
        // Locked before anything is made inside: two runs into one folder would both
        // pass the checks of what it holds and leave their files mixed. A run that finds
        // it locked leaves the folder it made: the other run is using it.
        created.lock = match self.lock() {
            Ok(lock) => lock,
            Err(e) => {
                created.keep();
                return Err(e);
            }
        };
        let mut wanted: Vec<PathBuf> = Vec::new();
        wanted.extend(
            self.written()
                .filter(|p| p.starts_with(root))
                .filter_map(|p| p.parent())
                .map(Path::to_owned),
        );
        for dir in wanted {
            // Each missing ancestor is created (and recorded) on its own.
            let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
            for folder in missing.into_iter().rev() {
                created.create(folder)?;
            }
        }
        // A folder the model keeps private stays so in the output: each new folder takes
        // its counterpart's permissions, the owner's own kept whole so that it can be
        // written.
        if let Some(model) = &self.model_folder {
            for folder in &created.folders {
                let Ok(inside) = folder.strip_prefix(root) else { continue };
                if let Ok(source) = std::fs::metadata(model.join(inside))
                    && source.is_dir()
                {
                    mirror_permissions(folder, source.permissions(), 0o700)?;
                }
            }
        }
        Ok(created)
    }

    /// An exclusive lock on the output folder, if there is one, held until the value is
    /// dropped (or the process ends, however it ends). `Ok(None)` where the file system
    /// takes no locks.
    ///
    /// # Errors
    /// When another process holds the lock, or the folder at the path is no longer the
    /// one locked, naming the folder.
    fn lock(&self) -> Result<Option<FolderLock>> {
        let Some(root) = &self.folder else { return Ok(None) };
        let folder = std::fs::File::open(root)
            .with_context(|| format!("cannot open the folder {}", root.display()))?;
        match folder.try_lock() {
            Ok(()) => {
                // The folder locked must still be the one at the path: another run may
                // have removed it (and another made a new one) since it was opened.
                if !same_folder(&folder, root) {
                    bail!(
                        "the folder {} was removed or replaced while this run worked (another run into it?): run again",
                        root.display()
                    );
                }
                Ok(Some(FolderLock { _folder: folder }))
            }
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another run is writing into {}: wait for it to end, or give another output folder",
                root.display()
            ),
            // Locks are advisory: without them, what the checks saw stands.
            Err(std::fs::TryLockError::Error(_)) => Ok(None),
        }
    }

    /// Files already in the output folder that this run will not replace (a folder
    /// pruned into before, or another model's), in one walk of the folder that stops
    /// after [`MAX_VISITED`] entries: at most `limit` of them named, all counted, and
    /// the first weights file or shard index among those at the top, which a loader
    /// would read with the new weights. Temporaries of other runs are not counted; they
    /// are reported apart.
    pub(crate) fn strangers(&self, limit: usize) -> Strangers {
        let mut found = Strangers::default();
        let Some(root) = &self.folder else { return found };
        let written: std::collections::HashSet<&Path> = self.written().collect();
        // Files this run writes over (checked before it writes anything), but for the
        // copies, which a run only writes over with the same bytes (`differing_copy`).
        // A mask file named elsewhere is not the output folder's.
        let inside = |p: &&&Path| p.starts_with(root);
        let copies: std::collections::HashSet<&Path> =
            self.copies.iter().map(|(_, d)| d.as_path()).collect();
        found.replaced = written
            .iter()
            .filter(inside)
            .filter(|p| !copies.contains(**p))
            .filter(|p| p.is_file())
            .map(|p| p.to_path_buf())
            .collect();
        found.replaced.sort();
        let mut stack = vec![root.clone()];
        // Folders count too, so that a tree of empty folders (or `-o /`) ends as soon.
        let mut visited = 0;
        while let Some(dir) = stack.pop() {
            // A folder that cannot be listed, or an entry that cannot be read, may hold
            // more: the count becomes a lower bound.
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                // A folder not made yet holds nothing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(_) => {
                    found.partial = true;
                    if dir == *root {
                        // A folder that can be searched but not listed still opens by
                        // name: the weights a loader opens by name are looked up (other
                        // weights files cannot be found; the warning says the folder
                        // was not listed). A folder by that name is walked, not named,
                        // when the folder can be listed: so here too.
                        found.weights =
                            LOADED_WEIGHTS.iter().map(|name| root.join(name)).find(|p| {
                                let named = p.symlink_metadata().is_ok_and(|m| !m.is_dir());
                                named && !written.contains(p.as_path())
                            });
                    }
                    continue;
                }
            };
            for entry in entries {
                let Ok(entry) = entry else {
                    found.partial = true;
                    continue;
                };
                visited += 1;
                if visited > MAX_VISITED {
                    found.named.sort();
                    found.partial = true;
                    return found;
                }
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(shears_io::TEMPORARY_PREFIX) {
                    continue;
                }
                match entry.file_type() {
                    Ok(kind) if kind.is_dir() => stack.push(path),
                    Ok(_) if !written.contains(path.as_path()) => {
                        let weights = name.ends_with(".safetensors")
                            || name.ends_with(".safetensors.index.json");
                        if weights && dir == *root && found.weights.is_none() {
                            found.weights = Some(path.clone());
                        }
                        found.count += 1;
                        if found.named.len() < limit {
                            found.named.push(path);
                        }
                    }
                    _ => {}
                }
            }
        }
        found.named.sort();
        found
    }

    /// The first file of the output folder that a copy would write over and that differs
    /// from the file copied there (a file of the user's, or another model's): a run
    /// into a folder pruned into before finds its own copies, which it may replace, but
    /// must not destroy anything else. Compared size first, then byte by byte.
    pub(crate) fn differing_copy(&self) -> Result<Option<(&Path, &Path)>> {
        for (source, destination) in &self.copies {
            let Ok(existing) = std::fs::symlink_metadata(destination) else { continue };
            if !existing.is_file() {
                continue;
            }
            let same = std::fs::metadata(source).is_ok_and(|m| m.len() == existing.len())
                && same_bytes(source, destination)?;
            if !same {
                return Ok(Some((destination, source)));
            }
        }
        Ok(None)
    }

    /// The first weights file or index of the output folder that this run would write
    /// over and that no shears run wrote (a user's file, or another model's weights),
    /// with why: a folder pruned into before holds shears' own, which carry its record,
    /// and those it may replace. A file given as the output itself is the user's choice.
    pub(crate) fn foreign_weights(&self) -> Option<(&Path, &'static str)> {
        self.folder.as_ref()?;
        let is_file = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
        let ours = |p: &Path| {
            shears_io::Checkpoint::open(p)
                .is_ok_and(|c| c.metadata().is_some_and(|m| m.contains_key(PRUNING_KEY)))
        };
        for shard in self.shards.iter().filter(|p| is_file(p)) {
            if !ours(shard) {
                return Some((
                    shard,
                    "a weights file shears did not write (it carries no pruning record)",
                ));
            }
        }
        let index = self.index.as_deref().filter(|p| is_file(p))?;
        let names: std::collections::HashSet<_> =
            self.shards.iter().filter_map(|p| p.file_name()).collect();
        let indexes_ours = Model::open(index).is_ok_and(|m| {
            m.shards()
                .iter()
                .all(|s| s.path().file_name().is_some_and(|n| names.contains(n)) && ours(s.path()))
        });
        (!indexes_ours).then_some((index, "an index of weights shears did not write"))
    }

    /// Refuses a run whose files would not fit, before anything is written: `weights`
    /// bytes of weights files and index beside the output, the copies' sizes in the
    /// output folder, and `masks` bytes for the masks file, against the space free on
    /// each file system they go to. Every file is staged beside its destination before
    /// the one it replaces is removed, so a file replaced still counts.
    pub(crate) fn check_space(&self, weights: u64, masks: u64) -> Result<()> {
        let copies: u64 = self
            .copies
            .iter()
            .filter_map(|(source, _)| source.metadata().ok())
            .map(|m| m.len())
            .sum();
        let output = self.folder.clone().unwrap_or_else(|| self.shards[0].clone());
        let mut needs = vec![(output.as_path(), weights.saturating_add(copies))];
        if let Some(path) = &self.masks {
            needs.push((path.as_path(), masks));
        }
        check_fits(&needs)
    }

    /// Stages the copies of the folder's other files.
    pub(crate) fn stage_copies(&self) -> Result<Vec<SealedFile>> {
        let mut staged = Vec::with_capacity(self.copies.len());
        // Stale temporaries of all the copies removed in one listing of each folder.
        shears_io::remove_stale(self.copies.iter().map(|(_, d)| d.as_path()));
        for (source, destination) in &self.copies {
            let (pending, mut file) = PendingFile::create_swept(destination)?;
            let mut input = shears_io::paths::open_regular_file(source)?;
            std::io::copy(&mut input, &mut file).with_context(|| {
                format!("cannot copy {} to {}", source.display(), destination.display())
            })?;
            // A copy is as private as its source (a token in a config file stays the
            // owner's); set on the open file, which stays writable.
            let permissions = input
                .metadata()
                .with_context(|| format!("cannot read {}", source.display()))?
                .permissions();
            file.set_permissions(access_bits(permissions, 0)).with_context(|| {
                format!("cannot set the permissions of {}", destination.display())
            })?;
            staged.push(pending.seal(file)?);
        }
        Ok(staged)
    }

    /// Stages `index`, the rewritten index of a sharded model (its tensors' shards and
    /// the sizes they were written with).
    pub(crate) fn stage_index(&self, index: Option<Index>) -> Result<Option<SealedFile>> {
        let Some(path) = &self.index else { return Ok(None) };
        let index = index.context("a sharded model has an index")?;
        let mut text = serde_json::to_vec_pretty(&index)?;
        text.push(b'\n');
        let (pending, mut file) = PendingFile::create(path)?;
        std::io::Write::write_all(&mut file, &text)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Some(pending.seal(file)?))
    }
}

/// The folders a run created for its outputs: removed on drop, deepest first and only if
/// empty, unless the run finished and [`NewFolders::keep`] said so, so that a failed run
/// leaves no empty output folder behind. A run ended by a signal removes them too
/// ([`remove_new_folders`]).
///
/// It also holds the lock on the output folder, taken by [`Outputs::create_folders`] and
/// released when the guard goes (after the empty folders are removed).
#[derive(Debug)]
pub(crate) struct NewFolders {
    folders: Vec<PathBuf>,
    lock: Option<FolderLock>,
}

/// The folders of every [`NewFolders`] not yet kept or dropped, in order of creation, for
/// [`remove_new_folders`].
static UNKEPT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// `source`'s permission bits as far as they restrict (Unix): its read and execute bits,
/// and its owner's write bit, never the group's or others' write, set-id or sticky bits,
/// so that a copy is as private as its source but never more open than a new file;
/// with the `owner` bits set besides. Elsewhere `source` as it is.
fn access_bits(source: std::fs::Permissions, owner: u32) -> std::fs::Permissions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::Permissions::from_mode((source.mode() & 0o755) | owner)
    }
    #[cfg(not(unix))]
    {
        let _ = owner;
        source
    }
}

/// Gives `folder` [`access_bits`] of `source` with `owner`'s bits set.
fn mirror_permissions(folder: &Path, source: std::fs::Permissions, owner: u32) -> Result<()> {
    std::fs::set_permissions(folder, access_bits(source, owner))
        .with_context(|| format!("cannot set the permissions of {}", folder.display()))
}

/// Whether the files `a` and `b` hold the same bytes, read a block at a time.
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| shears_io::paths::open_regular_file(p).map(std::io::BufReader::new);
    let (mut a_file, mut b_file) = (open(a)?, open(b)?);
    let (mut x, mut y) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = read_full(&mut a_file, &mut x)
            .with_context(|| format!("cannot read {}", a.display()))?;
        let m = read_full(&mut b_file, &mut y)
            .with_context(|| format!("cannot read {}", b.display()))?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads into `buf` until it is full or the reader ends; the bytes read.
fn read_full(reader: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn unkept() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock leaves a valid list behind.
    UNKEPT.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl NewFolders {
    /// Creates `folder` and records it, under the lock [`remove_new_folders`] takes, so
    /// that a folder exists only once recorded, and none is created after that ran.
    fn create(&mut self, folder: &Path) -> Result<()> {
        let mut unkept = unkept();
        if shears_io::exiting() {
            bail!("cannot create the folder {}: the process is exiting", folder.display());
        }
        match std::fs::create_dir(folder) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Ok(target) = std::fs::read_link(folder) {
                    // A link that leads nowhere: at once, or through further links,
                    // which may loop.
                    let beside = folder.parent().unwrap_or_else(|| Path::new("."));
                    let through = std::fs::symlink_metadata(beside.join(&target)).is_ok();
                    let leads = if through {
                        "which leads to no folder (through links that loop or end at nothing)"
                    } else {
                        "which does not exist"
                    };
                    bail!(
                        "cannot create the folder {}: it is a link to {}, {leads}",
                        folder.display(),
                        target.display()
                    );
                }
                bail!(
                    "cannot create the folder {}: another process created it while this run worked (another run into it?): run again, or give another output folder",
                    folder.display()
                )
            }
            created => {
                created.with_context(|| format!("cannot create the folder {}", folder.display()))?
            }
        }
        unkept.push(folder.to_owned());
        self.folders.push(folder.to_owned());
        Ok(())
    }

    /// The outputs are in place: the folders stay.
    pub(crate) fn keep(mut self) {
        unkept().retain(|f| !self.folders.contains(f));
        self.folders.clear();
    }
}

impl Drop for NewFolders {
    fn drop(&mut self) {
        let mut unkept = unkept();
        for folder in self.folders.iter().rev() {
            let _ = std::fs::remove_dir(folder);
        }
        unkept.retain(|f| !self.folders.contains(f));
    }
}

/// Removes the folders created for outputs that were not kept, deepest first and only
/// those left empty: for a signal handler's thread, after
/// [`shears_io::remove_pending`] removed the temporaries in them.
pub(crate) fn remove_new_folders() {
    let mut unkept = unkept();
    for folder in unkept.drain(..).rev() {
        let _ = std::fs::remove_dir(folder);
    }
}

/// Whether the open `folder` is the folder at `path` now.
#[cfg(unix)]
fn same_folder(folder: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (folder.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Whether the open `folder` is the folder at `path` now (where inodes cannot be
/// compared, whether a folder is there).
#[cfg(not(unix))]
fn same_folder(_folder: &std::fs::File, path: &Path) -> bool {
    path.is_dir()
}

/// The lock [`Outputs::lock`] takes on the output folder, released when dropped.
#[derive(Debug)]
pub(crate) struct FolderLock {
    _folder: std::fs::File,
}

/// What [`Outputs::strangers`] found in the output folder.
#[derive(Debug, Default)]
pub(crate) struct Strangers {
    /// The first few, sorted.
    pub(crate) named: Vec<PathBuf>,
    /// All of them the walk reached.
    pub(crate) count: usize,
    /// Whether there may be more: the walk stopped at [`MAX_VISITED`] entries, or a
    /// folder or entry in it could not be read.
    pub(crate) partial: bool,
    /// A weights file or shard index at the folder's top.
    pub(crate) weights: Option<PathBuf>,
    /// The files already there that this run writes over, sorted.
    pub(crate) replaced: Vec<PathBuf>,
}

/// Refuses a run whose files would not fit, before anything is written: each
/// `(path, bytes)` is a file (or folder) the run writes and about how many bytes it puts
/// there, summed per file system and compared with the space free on it. Paths whose
/// file system cannot be asked (off Linux) pass.
pub(crate) fn check_fits(needs: &[(&Path, u64)]) -> Result<()> {
    check_fits_on(needs, shears_io::paths::file_system_space)
}

/// [`check_fits`] with `space` saying which file system a path is on and its free bytes.
fn check_fits_on(
    needs: &[(&Path, u64)],
    space: impl Fn(&Path) -> Option<(u64, u64)>,
) -> Result<()> {
    // (file system, free bytes, bytes needed, a path written there)
    let mut systems: Vec<(u64, u64, u64, &Path)> = Vec::new();
    for &(path, bytes) in needs {
        let Some((system, free)) = space(path) else {
            continue;
        };
        match systems.iter_mut().find(|s| s.0 == system) {
            Some(s) => s.2 = s.2.saturating_add(bytes),
            None => systems.push((system, free, bytes, path)),
        }
    }
    for (_, free, needed, path) in systems {
        if needed > free {
            bail!(
                "{}: this run writes about {} there, and its file system has {} free",
                path.display(),
                crate::report::byte_size(needed),
                crate::report::byte_size(free)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes add up per file system: two files that fit apart but not together on one
    /// are refused, naming the first; the same two on two systems pass; a path whose
    /// system cannot be asked is not counted.
    #[test]
    fn space_is_summed_per_file_system() {
        let (a, b, c) =
            (Path::new("/a/model.onnx"), Path::new("/a/model.onnx.data"), Path::new("/c"));
        let one = |path: &Path| (path != c).then_some((1, 100));
        let err = check_fits_on(&[(a, 60), (b, 60), (c, 1 << 40)], one).unwrap_err().to_string();
        assert!(err.starts_with("/a/model.onnx: this run writes about 120 bytes"), "{err}");
        assert!(err.ends_with("has 100 bytes free"), "{err}");
        let two = |path: &Path| Some((u64::from(path == b), 100));
        check_fits_on(&[(a, 60), (b, 60)], two).unwrap();
        check_fits_on(&[(a, 50), (b, 50)], one).unwrap();
        let err = check_fits_on(&[(a, 101)], two).unwrap_err().to_string();
        assert!(err.contains("about 101 bytes"), "{err}");
    }

    /// Against the plain oracle, equality of the whole contents: files longer than a
    /// block, equal, or differing in one byte of the second block or in length alone.
    #[test]
    fn same_bytes_compares_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut changed = data.clone();
        changed[100_000] ^= 1;
        let cases: [(&[u8], &[u8]); 5] =
            [(&data, &data), (&data, &changed), (&data, &data[..199_999]), (b"", b""), (b"", b"x")];
        for (x, y) in cases {
            std::fs::write(&a, x).unwrap();
            std::fs::write(&b, y).unwrap();
            assert_eq!(same_bytes(&a, &b).unwrap(), x == y, "{} and {} bytes", x.len(), y.len());
        }
    }
}
