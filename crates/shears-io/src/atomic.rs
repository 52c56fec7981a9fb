//! Atomic outputs: every file is written to a temporary beside its target and renamed
//! over it only when complete, so a target is either its old self or the whole new file.
//!
//! Temporaries are named `.shears-tmp-PID-N-HOST.NAME` (`NAME` the target's name, cut to
//! 40 bytes so that long names still fit the file system's limit; `HOST` a tag of the
//! host name and PID namespace, on Linux) in the target's directory, and created
//! exclusively (a link planted at that name is never followed). A run that fails removes
//! its own; a program can remove every temporary of its own process at once with
//! [`remove_pending`], from a signal handler's thread say. A run that is killed outright
//! leaves them: the next run that writes the same output from the same host and PID
//! namespace removes those whose process is gone (on Linux), and [`leftovers`] lists
//! the others of that host. A PID means nothing elsewhere (another container, another
//! machine sharing the folder), so those are never judged: `.shears-tmp-*` finds them.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::paths::check_output;

/// The prefix of every temporary file shears writes.
pub const TEMPORARY_PREFIX: &str = ".shears-tmp-";

/// How many taken temporary names one output passes over before it gives up: a folder
/// where that many are taken is being filled on purpose.
const TAKEN_NAMES: usize = 1024;

/// Bytes of the target's name kept in its temporary's name.
const NAME_BYTES: usize = 40;

/// The temporaries this process has created and not yet committed or removed (a set: a
/// folder of a hundred thousand outputs takes each out by name, not by a search).
static PENDING: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Numbers the temporaries of this process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Set by [`remove_pending`]: the process is exiting, and creates no more temporaries.
static CLOSED: AtomicBool = AtomicBool::new(false);

fn pending() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    // A panic while holding the lock leaves a valid list behind.
    PENDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Removes every temporary file this process has not committed yet, and lets no new one
/// be created; returns how many it removed. For a signal handler's thread, before it
/// exits: the targets keep their old contents.
pub fn remove_pending() -> usize {
    let mut list = pending();
    CLOSED.store(true, Ordering::SeqCst);
    remove_listed(&mut list)
}

/// Whether [`remove_pending`] has run: the process is exiting, and outputs it tries to
/// create fail. A program whose work then fails for that reason should let the exit
/// that called [`remove_pending`] happen rather than report the failure.
pub fn exiting() -> bool {
    CLOSED.load(Ordering::SeqCst)
}

fn remove_listed(list: &mut BTreeSet<PathBuf>) -> usize {
    let n = list.len();
    for path in std::mem::take(list) {
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
    /// [`Error::Output`] when `target` is a symbolic link, a directory or a special file
    /// (or the process is exiting, after [`remove_pending`]); [`Error::Io`] when the
    /// temporary cannot be created.
    pub fn create(target: &Path) -> Result<(PendingFile, File)> {
        let (dir, short) = output_folder(target)?;
        for stale in leftovers(&dir).into_iter().filter(|l| l.target_name == short) {
            let _ = std::fs::remove_file(stale.path);
        }
        PendingFile::create_in(target, &dir, &short)
    }

    /// [`PendingFile::create`] without its search for stale temporaries, for a caller
    /// that removed those of all its outputs first with [`remove_stale`]: a search lists
    /// the whole folder, so a search per output made a folder of `n` outputs cost `n²`.
    ///
    /// # Errors
    /// As [`PendingFile::create`].
    pub fn create_swept(target: &Path) -> Result<(PendingFile, File)> {
        let (dir, short) = output_folder(target)?;
        PendingFile::create_in(target, &dir, &short)
    }

    fn create_in(target: &Path, dir: &Path, short: &str) -> Result<(PendingFile, File)> {
        // Created and listed under the lock, so `remove_pending` sees every temporary
        // that exists, and none is created after it ran.
        let mut list = pending();
        if CLOSED.load(Ordering::SeqCst) {
            return Err(Error::Output {
                path: target.to_owned(),
                reason: "the process is exiting",
            });
        }
        let mut taken = 0;
        let (temporary, file) = loop {
            let number = NEXT.fetch_add(1, Ordering::Relaxed);
            let temporary = dir.join(temporary_name(std::process::id(), number, short));
            // A new file only: never one a link at that name points to. A name that is
            // taken (by an earlier process that had this PID, or by anything planted
            // there) is passed over for the next number.
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&temporary) {
                Ok(file) => break (temporary, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    taken += 1;
                    if taken >= TAKEN_NAMES {
                        return Err(Error::Output {
                            path: target.to_owned(),
                            // The count is TAKEN_NAMES (a test holds the two together).
                            reason: "the names of its temporaries beside it are taken (1024 tried): remove the .shears-tmp-* entries there",
                        });
                    }
                }
                Err(e) => return Err(Error::io("write", target, e)),
            }
        };
        list.insert(temporary.clone());
        drop(list);
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

    /// Flushes `file` (this output's) to disk and closes it: an output finished early
    /// waits for [`commit_sealed`] without holding a file descriptor, so a model folder
    /// of any number of files is written within the process's limit.
    ///
    /// # Errors
    /// [`Error::Io`] if syncing fails; the temporary is then removed.
    pub fn seal(self, file: File) -> Result<SealedFile> {
        file.sync_all().map_err(|e| Error::io("sync", &self.temporary, e))?;
        Ok(SealedFile(self))
    }
}

/// An output written and flushed to disk, waiting to be moved over its target by
/// [`commit_sealed`]; removed on drop if it never is.
#[derive(Debug)]
pub struct SealedFile(PendingFile);

impl SealedFile {
    /// The path this file will have once committed.
    pub fn target(&self) -> &Path {
        &self.0.target
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temporary);
        }
        pending().remove(&self.temporary);
    }
}

/// The folder `target` is written in and the part of its name its temporaries carry,
/// once `target` is checked to be a path an output may take.
fn output_folder(target: &Path) -> Result<(PathBuf, String)> {
    check_output(target)?;
    let (dir, short) = folder_and_short_name(target);
    if !dir.is_dir() {
        let reason = if dir.exists() {
            "what would be its folder is not a folder"
        } else {
            "its folder does not exist"
        };
        return Err(Error::Output { path: target.to_owned(), reason });
    }
    Ok((dir, short))
}

/// The folder `target` is written in (`.` for a bare name) and the part of its name its
/// temporaries carry, unchecked.
fn folder_and_short_name(target: &Path) -> (PathBuf, String) {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    (dir, shortened(&name).to_owned())
}

/// Removes the stale temporaries ([`leftovers`] of dead processes) of every output in
/// `targets`, listing each of their folders once, for outputs then created with
/// [`PendingFile::create_swept`].
pub fn remove_stale<'a>(targets: impl IntoIterator<Item = &'a Path>) {
    let mut by_folder: HashMap<PathBuf, HashSet<String>> = HashMap::new();
    for target in targets {
        let (dir, short) = folder_and_short_name(target);
        by_folder.entry(dir).or_default().insert(short);
    }
    for (dir, names) in by_folder {
        for stale in leftovers(&dir).into_iter().filter(|l| names.contains(&l.target_name)) {
            let _ = std::fs::remove_file(stale.path);
        }
    }
}

/// Commits several outputs together: all are synced first, then renamed, so a failure
/// to finish writing any of them leaves every target as it was. A rename failing after
/// earlier ones succeeded undoes those: each target that existed was kept under a hard
/// link of its own until the last rename, and is moved back; each that did not is
/// removed. A target whose old file could not be linked (a file system without hard
/// links, a name taken) or put back keeps its new contents, and the error names it.
///
/// # Errors
/// [`Error::Io`] naming the file whose sync or rename failed; every temporary not yet
/// renamed is removed.
pub fn commit_all(files: Vec<(PendingFile, File)>) -> Result<()> {
    let sealed =
        files.into_iter().map(|(pending, file)| pending.seal(file)).collect::<Result<Vec<_>>>()?;
    commit_sealed(sealed)
}

/// Moves outputs already flushed ([`PendingFile::seal`]) over their targets, as
/// [`commit_all`] does once it has synced them.
///
/// # Errors
/// [`Error::Io`] naming the file whose rename failed; every temporary is removed and
/// the targets renamed before it are put back as [`commit_all`] says.
pub fn commit_sealed(files: Vec<SealedFile>) -> Result<()> {
    let mut files: Vec<PendingFile> = files.into_iter().map(|sealed| sealed.0).collect();
    // The renames hold the list, so that `remove_pending` (a signal handler's) waits for
    // them and finds nothing half committed.
    let mut list = pending();
    // The targets renamed so far, each with its old file's link if it had one.
    let mut renamed: Vec<(&Path, Previous)> = Vec::new();
    let count = files.len();
    for (i, pending) in files.iter_mut().enumerate() {
        // The last rename, if it fails, leaves its target as it was: nothing to keep.
        let previous = if i + 1 < count { keep_previous(&pending.target) } else { Previous::None };
        if let Err(e) = std::fs::rename(&pending.temporary, &pending.target) {
            if let Previous::Kept(link) = previous {
                let _ = std::fs::remove_file(link);
            }
            let mut kept_new = Vec::new();
            for (target, previous) in renamed.into_iter().rev() {
                let undone = match previous {
                    Previous::Kept(link) => std::fs::rename(link, target).is_ok(),
                    Previous::None => std::fs::remove_file(target).is_ok(),
                    Previous::Lost => false,
                };
                if !undone {
                    kept_new.push(target.display().to_string());
                }
            }
            let e = match kept_new.len() {
                0 => e,
                n => std::io::Error::new(
                    e.kind(),
                    format!(
                        "{e}; {} could not be put back and keep{} this run's contents",
                        kept_new.join(", "),
                        if n == 1 { "s" } else { "" }
                    ),
                ),
            };
            return Err(Error::io("rename", &pending.target, e));
        }
        pending.done = true;
        list.remove(&pending.temporary);
        renamed.push((&pending.target, previous));
    }
    for (_, previous) in renamed {
        if let Previous::Kept(link) = previous {
            let _ = std::fs::remove_file(link);
        }
    }
    drop(list);
    Ok(())
}

/// What a target was before a commit renamed over it.
enum Previous {
    /// Nothing: undoing the rename removes the new file.
    None,
    /// A file, now also at this hard link beside it.
    Kept(PathBuf),
    /// Something that could not be linked: the rename cannot be undone.
    Lost,
}

/// Links `target`'s present file (or symbolic link) to a temporary's name beside it, so
/// that a commit can put it back; a killed run leaves that link as it leaves any
/// temporary, for the next run to remove.
fn keep_previous(target: &Path) -> Previous {
    match std::fs::symlink_metadata(target) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Previous::None,
        // Something may be there: never removed on a rollback.
        Err(_) => return Previous::Lost,
    }
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Previous::Lost;
    };
    let number = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = name.to_string_lossy();
    let link = dir.join(temporary_name(std::process::id(), number, shortened(&name)));
    match std::fs::hard_link(target, &link) {
        Ok(()) => Previous::Kept(link),
        Err(_) => Previous::Lost,
    }
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

/// A temporary file left by a process of this machine that no longer runs: a killed
/// run's partial output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The temporary file.
    pub path: PathBuf,
    /// The start of the name of the output it was for (up to 40 bytes).
    pub target_name: String,
}

/// The temporaries in `dir` of this host and PID namespace whose process no longer runs
/// (on Linux; elsewhere none is known to be dead, and none is listed). The next run
/// writing the same output removes those of that output; the others are for whoever
/// finds them (a command line can say so: they can be deleted). Temporaries of another
/// host or namespace, whose PIDs this process cannot look up, are never listed; nor is
/// anything but a regular file (shears makes no other kind, so a folder or link of such
/// a name is someone else's).
pub fn leftovers(dir: &Path) -> Vec<Leftover> {
    let Some(host) = host_tag() else { return Vec::new() };
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(TEMPORARY_PREFIX)) else {
            continue;
        };
        let Some((numbers, target_name)) = rest.split_once('.') else { continue };
        let mut numbers = numbers.split('-');
        let (Some(pid), Some(_), Some(tag)) = (numbers.next(), numbers.next(), numbers.next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if tag == host && pid != std::process::id() && !process_alive(pid) {
            found.push(Leftover { path: entry.path(), target_name: target_name.to_owned() });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// The name process `pid` of this host and PID namespace gives its temporary number
/// `number` for an output named `target` (cut to its first 40 bytes): what a test plants
/// to stand for a killed run's leftover.
pub fn temporary_name(pid: u32, number: u64, target: &str) -> String {
    let short = shortened(target);
    match host_tag() {
        Some(host) => format!("{TEMPORARY_PREFIX}{pid}-{number}-{host}.{short}"),
        None => format!("{TEMPORARY_PREFIX}{pid}-{number}.{short}"),
    }
}

/// The first [`NAME_BYTES`] bytes of `name`, cut at a character.
fn shortened(name: &str) -> &str {
    let mut cut = NAME_BYTES.min(name.len());
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    &name[..cut]
}

/// Whether `pid` names a running process of this PID namespace (`/proc/{pid}`).
fn process_alive(pid: u32) -> bool {
    // `/proc/PID/stat` reads `PID (COMM) STATE ...`; COMM may hold spaces and
    // parentheses, so the state follows the last `)`. A zombie (Z) or dead (X) process
    // has exited: its files are leftovers though its parent has not reaped it yet.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state =
                stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z' | 'X'))
        }
        // Gone, or unreadable for a reason that says nothing of it: alive unless gone.
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Eight hex digits naming this host and PID namespace, the only place where a
/// temporary's PID says whether its process runs: a hash of the host name and the
/// namespace's inode (`/proc/self/ns/pid`). `None` off Linux, or where either cannot be
/// read; then no temporary is judged.
fn host_tag() -> Option<&'static str> {
    static TAG: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        if !cfg!(target_os = "linux") {
            return None;
        }
        let host = std::fs::read("/proc/sys/kernel/hostname").ok()?;
        let namespace = std::fs::read_link("/proc/self/ns/pid").ok()?;
        // FNV-1a: stable across builds and versions, unlike the standard hasher.
        let mut hash: u32 = 0x811c_9dc5;
        let bytes = host.iter().chain(b"\0").chain(namespace.as_os_str().as_encoded_bytes());
        for &b in bytes {
            hash = (hash ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        Some(format!("{hash:08x}"))
    })
    .as_deref()
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

    /// A rename that fails after others succeeded puts every target back as it was: the
    /// file that existed, and no file where none was.
    #[test]
    fn a_failed_commit_puts_back_the_targets_renamed_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (old, fresh, blocked) =
            (dir.path().join("old.bin"), dir.path().join("fresh.bin"), dir.path().join("b"));
        std::fs::write(&old, b"old").unwrap();
        let mut files = Vec::new();
        for target in [&old, &fresh, &blocked] {
            let (pending, mut file) = PendingFile::create(target).unwrap();
            file.write_all(b"new").unwrap();
            files.push((pending, file));
        }
        // A folder with a file in it now stands where the last target goes: its rename
        // fails, after the first two succeeded.
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), b"x").unwrap();
        assert!(matches!(commit_all(files), Err(Error::Io { .. })));
        assert_eq!(std::fs::read(&old).unwrap(), b"old");
        assert!(!fresh.exists());
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["b", "old.bin"], "no temporary or link left");
        // Committed in full, no link is left either.
        std::fs::remove_dir_all(&blocked).unwrap();
        let mut files = Vec::new();
        for target in [&old, &fresh] {
            let (pending, mut file) = PendingFile::create(target).unwrap();
            file.write_all(b"new").unwrap();
            files.push((pending, file));
        }
        commit_all(files).unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"new");
        assert_eq!(std::fs::read(&fresh).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    /// A target whose old file could not be kept (here its link's name is taken) keeps
    /// the new contents when a later rename fails, and the error says so.
    #[test]
    fn a_target_that_cannot_be_put_back_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (old, blocked) = (dir.path().join("old.bin"), dir.path().join("b"));
        std::fs::write(&old, b"old").unwrap();
        let mut files = Vec::new();
        for target in [&old, &blocked] {
            let (pending, mut file) = PendingFile::create(target).unwrap();
            file.write_all(b"new").unwrap();
            files.push((pending, file));
        }
        // Every name the old file's link could take next is taken (other tests draw a
        // few numbers meanwhile, far fewer than these).
        let next = NEXT.load(Ordering::Relaxed);
        for n in next..next + 1000 {
            let name = temporary_name(std::process::id(), n, "old.bin");
            std::fs::write(dir.path().join(name), b"planted").unwrap();
        }
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), b"x").unwrap();
        let err = commit_all(files).unwrap_err();
        let source = std::error::Error::source(&err).map(ToString::to_string);
        let err = format!("{err}: {}", source.unwrap_or_default());
        let named =
            format!("{} could not be put back and keeps this run's contents", old.display());
        assert!(err.contains(&named), "{err}");
        assert_eq!(std::fs::read(&old).unwrap(), b"new");
    }

    #[test]
    fn a_missing_folder_and_a_file_in_its_place_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let reason = |target: &Path| match PendingFile::create(target) {
            Err(Error::Output { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(reason(&dir.path().join("no/out.bin")), "its folder does not exist");
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let under_a_file = dir.path().join("file/out.bin");
        assert_eq!(reason(&under_a_file), "what would be its folder is not a folder");
    }

    #[test]
    fn long_names_get_short_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("é".repeat(120)); // 240 bytes
        write_atomic(&target, b"x").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"x");
    }

    /// A process that has exited but is not reaped yet (a zombie, as a killed run is
    /// until its parent waits for it) is not running: its temporaries are leftovers.
    #[cfg(target_os = "linux")]
    #[test]
    fn an_exited_process_not_yet_reaped_is_not_alive() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let stat = format!("/proc/{}/stat", child.id());
        // Until it has exited (it is not waited for, so it stays as a zombie).
        let zombie =
            |s: &str| s.rsplit_once(')').is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        while !std::fs::read_to_string(&stat).is_ok_and(|s| zombie(&s)) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!process_alive(child.id()));
        child.wait().unwrap();
    }

    #[test]
    fn stale_temporaries_of_dead_processes_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        // No process has pid u32::MAX - 1 on Linux (pid_max is at most 2^22).
        let dead = u32::MAX - 1;
        let host = host_tag().unwrap_or("00000000");
        let temporary = |rest: &str| dir.path().join(format!("{TEMPORARY_PREFIX}{rest}"));
        let stale = temporary(&format!("{dead}-0-{host}.y"));
        let other = temporary(&format!("{dead}-3-{host}.z"));
        let live = temporary(&format!("{}-0-{host}.y", std::process::id()));
        // Another container's or machine's: its PID cannot be looked up here.
        let elsewhere = if host == "00000000" { "00000001" } else { "00000000" };
        let foreign = temporary(&format!("{dead}-0-{elsewhere}.y"));
        // Untagged (no namespace known when it was made), or not a temporary's name.
        let untagged = temporary(&format!("{dead}-0.y"));
        let unrelated = temporary("notapid");
        for p in [&stale, &other, &live, &foreign, &untagged, &unrelated] {
            std::fs::write(p, b"").unwrap();
        }
        // Named as a dead run's, but no file: shears writes files only.
        let folder = temporary(&format!("{dead}-1-{host}.y"));
        std::fs::create_dir(&folder).unwrap();
        let judged = host_tag().is_some();
        let listed: Vec<PathBuf> = leftovers(dir.path()).into_iter().map(|l| l.path).collect();
        assert_eq!(listed, if judged { vec![stale.clone(), other.clone()] } else { vec![] });
        write_atomic(&dir.path().join("y"), b"y").unwrap();
        assert_eq!(stale.exists(), !judged, "a dead run's temporary of the same output goes");
        assert!(other.exists(), "another output's is only listed");
        assert!(live.exists() && foreign.exists() && untagged.exists() && unrelated.exists());
        assert!(folder.is_dir(), "not shears' to remove");
        // This process's temporaries carry the tag the judging reads.
        if let Some(host) = host_tag() {
            let (pending, _file) = PendingFile::create(&dir.path().join("w")).unwrap();
            let name = pending.temporary.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.ends_with(&format!("-{host}.w")), "{name}");
        }
    }

    /// `remove_stale` removes what `create` would for each of its outputs, across
    /// folders, and `create_swept` then writes them; other outputs' temporaries stay.
    #[test]
    fn stale_temporaries_of_many_outputs_go_in_one_sweep() {
        let Some(host) = host_tag() else { return };
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let dead = u32::MAX - 1;
        let stale = |folder: &str, n: u32, name: &str| {
            let path =
                dir.path().join(folder).join(format!("{TEMPORARY_PREFIX}{dead}-{n}-{host}.{name}"));
            std::fs::write(&path, b"").unwrap();
            path
        };
        let gone = [stale("", 0, "a"), stale("", 1, "b"), stale("sub", 2, "a")];
        let kept = stale("", 3, "c");
        let targets = [dir.path().join("a"), dir.path().join("b"), dir.path().join("sub/a")];
        remove_stale(targets.iter().map(PathBuf::as_path));
        assert!(gone.iter().all(|p| !p.exists()) && kept.exists());
        for target in &targets {
            let (pending, file) = PendingFile::create_swept(target).unwrap();
            pending.commit(file).unwrap();
            assert!(target.is_file());
        }
        assert!(pending().iter().all(|p| !p.starts_with(dir.path())));
    }

    #[cfg(unix)]
    #[test]
    fn a_link_at_the_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        // Links at the names this process would take next: each is passed over, none
        // is opened, and the output is still written.
        let next = NEXT.load(Ordering::Relaxed);
        for n in next..next + 64 {
            let planted = dir.path().join(temporary_name(std::process::id(), n, "out"));
            std::os::unix::fs::symlink(&victim, planted).unwrap();
        }
        write_atomic(&dir.path().join("out"), b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        assert_eq!(std::fs::read(dir.path().join("out")).unwrap(), b"new");
    }

    /// A folder where every name the run would try is taken refuses the output with a
    /// reason, after a bounded number of tries. (4096 names are planted: far more than
    /// the temporaries every other test of this binary makes, which share the counter.)
    #[test]
    fn taken_temporary_names_give_up_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let next = NEXT.load(Ordering::Relaxed);
        for n in next..next + 4096 {
            std::fs::write(dir.path().join(temporary_name(std::process::id(), n, "out")), b"")
                .unwrap();
        }
        let error = write_atomic(&dir.path().join("out"), b"new").unwrap_err().to_string();
        let said = format!("temporaries beside it are taken ({TAKEN_NAMES} tried)");
        assert!(error.contains(&said), "{error}");
        assert!(!dir.path().join("out").exists());
    }

    #[test]
    fn pending_temporaries_are_listed_until_committed_or_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _file) = PendingFile::create(&dir.path().join("z")).unwrap();
        let listed = |p: &PendingFile| pending().contains(&p.temporary);
        assert!(listed(&first));
        let mut list = BTreeSet::from([first.temporary.clone()]);
        assert_eq!(remove_listed(&mut list), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let temporary = first.temporary.clone();
        drop(first);
        assert!(!pending().contains(&temporary));
    }
}
