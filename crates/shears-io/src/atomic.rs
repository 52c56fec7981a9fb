//! Atomic outputs: every file is written to a temporary beside its target and renamed
//! over it only when complete, so a target is either its old self or the whole new file.
//!
//! Temporaries are named `.shears-tmp-PID-N.NAME` (`NAME` the target's name, cut to 40
//! bytes so that long names still fit the file system's limit) in the target's
//! directory. A run that fails removes its own; a run that is killed leaves them, and the
//! next run that writes into that directory removes those whose process is gone (on
//! Linux; elsewhere they are left, and `.shears-tmp-*` finds them). A program can also
//! remove every temporary of its own process at once with [`remove_pending`], from a
//! signal handler's thread say.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::paths::check_output;

/// The prefix of every temporary file shears writes.
pub const TEMPORARY_PREFIX: &str = ".shears-tmp-";

/// Bytes of the target's name kept in its temporary's name.
const NAME_BYTES: usize = 40;

/// The temporaries this process has created and not yet committed or removed.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Numbers the temporaries of this process.
static NEXT: AtomicU64 = AtomicU64::new(0);

fn pending() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock leaves a valid list behind.
    PENDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes every temporary file this process has not committed yet; returns how many.
/// For a signal handler's thread: the targets keep their old contents.
pub fn remove_pending() -> usize {
    remove_listed(&mut pending())
}

fn remove_listed(list: &mut Vec<PathBuf>) -> usize {
    let n = list.len();
    for path in list.drain(..) {
        let _ = std::fs::remove_file(path);
    }
    n
}

/// An output being written: a temporary file beside `target`, removed on drop unless
/// [`PendingFile::commit`] moved it over the target.
#[derive(Debug)]
pub struct PendingFile {
    target: PathBuf,
    temporary: PathBuf,
    done: bool,
}

impl PendingFile {
    /// Creates the temporary for `target` and returns it with its open file. Stale
    /// temporaries of dead processes in the same directory are removed first.
    ///
    /// # Errors
    /// [`Error::Output`] when `target` is a symbolic link, a directory or a special file;
    /// [`Error::Io`] when the temporary cannot be created.
    pub fn create(target: &Path) -> Result<(PendingFile, File)> {
        check_output(target)?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        remove_stale(&dir);
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut cut = NAME_BYTES.min(name.len());
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        let temporary =
            dir.join(format!("{TEMPORARY_PREFIX}{}-{number}.{}", std::process::id(), &name[..cut]));
        pending().push(temporary.clone());
        let file = match File::create(&temporary) {
            Ok(file) => file,
            Err(e) => {
                pending().retain(|p| p != &temporary);
                return Err(Error::io("create", temporary, e));
            }
        };
        Ok((PendingFile { target: target.to_owned(), temporary, done: false }, file))
    }

    /// The path this file will have once committed.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes `file` (this output's, as [`PendingFile::create`] returned it) to disk and
    /// moves it over the target.
    ///
    /// # Errors
    /// [`Error::Io`] if syncing or renaming fails; the temporary is then removed.
    pub fn commit(self, file: File) -> Result<()> {
        commit_all(vec![(self, file)])
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temporary);
        }
        pending().retain(|p| p != &self.temporary);
    }
}

/// Commits several outputs together: all are synced first, then renamed, so a failure
/// to finish any of them leaves every target as it was.
///
/// # Errors
/// [`Error::Io`] naming the file whose sync or rename failed; every temporary not yet
/// renamed is removed.
pub fn commit_all(files: Vec<(PendingFile, File)>) -> Result<()> {
    for (pending, file) in &files {
        file.sync_all().map_err(|e| Error::io("sync", &pending.temporary, e))?;
    }
    for (mut pending, file) in files {
        drop(file);
        std::fs::rename(&pending.temporary, &pending.target)
            .map_err(|e| Error::io("rename", &pending.target, e))?;
        pending.done = true;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically.
///
/// # Errors
/// As [`PendingFile::create`] and [`PendingFile::commit`], and [`Error::Io`] if the
/// write fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let (pending, mut file) = PendingFile::create(path)?;
    file.write_all(bytes).map_err(|e| Error::io("write", &pending.temporary, e))?;
    pending.commit(file)
}

/// Removes temporaries in `dir` left by processes that no longer run. Files of live
/// runs, and anything not named as a temporary, are left alone.
fn remove_stale(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMPORARY_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_replaces_and_drop_removes() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        let (pending, mut file) = PendingFile::create(&target).unwrap();
        file.write_all(b"new").unwrap();
        drop((pending, file));
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "temporary removed");
        write_atomic(&target, b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn long_names_get_short_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("é".repeat(120)); // 240 bytes
        write_atomic(&target, b"x").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"x");
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // No process has pid u32::MAX - 1 on Linux (pid_max is at most 2^22).
        let stale = dir.path().join(format!("{TEMPORARY_PREFIX}{}-0.x", u32::MAX - 1));
        let live = dir.path().join(format!("{TEMPORARY_PREFIX}{}-0.x", std::process::id()));
        let unrelated = dir.path().join(".shears-tmp-notapid");
        for p in [&stale, &live, &unrelated] {
            std::fs::write(p, b"").unwrap();
        }
        write_atomic(&dir.path().join("y"), b"y").unwrap();
        assert_eq!(stale.exists(), !cfg!(target_os = "linux"));
        assert!(live.exists() && unrelated.exists());
    }

    #[test]
    fn pending_temporaries_are_listed_until_committed_or_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _file) = PendingFile::create(&dir.path().join("z")).unwrap();
        let listed = |p: &PendingFile| pending().contains(&p.temporary);
        assert!(listed(&first));
        let mut list = vec![first.temporary.clone()];
        assert_eq!(remove_listed(&mut list), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let temporary = first.temporary.clone();
        drop(first);
        assert!(!pending().contains(&temporary));
    }
}
