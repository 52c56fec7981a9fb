//! Which paths a command may read and write: regular files only, and never one file in
//! two roles.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// Fails unless `path` is a regular file (symbolic links followed). Checked before a
/// file is opened, so a FIFO with no writer cannot block the caller and a device is
/// never read.
///
/// # Errors
/// [`Error::Io`] if `path` cannot be examined (it does not exist, say);
/// [`Error::Input`] naming what it is otherwise.
pub fn require_regular_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("open", path, e))?;
    if meta.is_file() {
        Ok(())
    } else if meta.is_dir() {
        Err(Error::Input { path: path.to_owned(), reason: "is a directory".into() })
    } else {
        Err(Error::Input {
            path: path.to_owned(),
            reason: "is not a regular file (a FIFO, socket or device)".into(),
        })
    }
}

/// Opens `path` for reading if it is a regular file (symbolic links followed), and only
/// then: a FIFO with no writer cannot block the caller and a device is never read. On
/// Linux a file of `/proc`, sysfs, debugfs or tracefs is refused too.
///
/// The path is examined before it is opened, and on Linux the file is opened without
/// blocking and examined again once open, so a FIFO swapped in between the two steps is
/// refused rather than waited on.
///
/// # Errors
/// As [`require_regular_file`]; [`Error::Io`] as well if it cannot be opened.
pub fn open_regular_file(path: &Path) -> Result<std::fs::File> {
    require_regular_file(path)?;
    let file = open_without_blocking(path).map_err(|e| Error::io("open", path, e))?;
    still_regular(path, &file)?;
    #[cfg(target_os = "linux")]
    if let Some(filesystem) = kernel_filesystem(&file) {
        return Err(Error::Input {
            path: path.to_owned(),
            reason: format!("is a file of {filesystem}, which can block or never end"),
        });
    }
    Ok(file)
}

/// Whether a path names something: a file, a folder, a FIFO, a link (even one that leads
/// nowhere), or something behind a folder that cannot be searched. Where an optional
/// input is looked for, a thing of the wrong kind is then opened and refused by name
/// rather than taken for no file at all.
pub fn is_present(path: &Path) -> bool {
    // A path that cannot be examined (a folder on the way that cannot be searched) may
    // name a file: it counts as there, and its open says why it cannot be read.
    match path.symlink_metadata() {
        Ok(_) => true,
        Err(e) => {
            !matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory)
        }
    }
}

/// The kernel's pseudo-filesystem `file` lives on, if it does: their files say they are
/// regular, yet a read can wait for kernel events (`/proc/kmsg`) or never end.
#[cfg(target_os = "linux")]
#[allow(
    clippy::useless_conversion,
    reason = "the filesystem type is an i64 on 64-bit Linux, narrower on some other targets"
)]
fn kernel_filesystem(file: &std::fs::File) -> Option<&'static str> {
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    const DEBUGFS_MAGIC: i64 = 0x6462_6720;
    const TRACEFS_MAGIC: i64 = 0x7472_6163;
    let kind = i64::from(rustix::fs::fstatfs(file).ok()?.f_type);
    match kind {
        k if k == i64::from(rustix::fs::PROC_SUPER_MAGIC) => Some("/proc"),
        SYSFS_MAGIC => Some("sysfs"),
        DEBUGFS_MAGIC => Some("debugfs"),
        TRACEFS_MAGIC => Some("tracefs"),
        _ => None,
    }
}

/// Fails unless the open `file` is a regular file: `path`, checked before it was opened,
/// may have been replaced since.
fn still_regular(path: &Path, file: &std::fs::File) -> Result<()> {
    let meta = file.metadata().map_err(|e| Error::io("open", path, e))?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(Error::Input {
            path: path.to_owned(),
            reason: "is not a regular file (it was replaced while it was opened)".into(),
        })
    }
}

/// Opens `path` read-only; on Linux with `O_NONBLOCK` (so opening a FIFO returns at
/// once), cleared again before the file is handed on.
#[cfg(target_os = "linux")]
fn open_without_blocking(path: &Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags, fcntl_getfl, fcntl_setfl};
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = std::fs::File::from(rustix::fs::open(path, flags, Mode::empty())?);
    let flags = fcntl_getfl(&file)?;
    fcntl_setfl(&file, flags - OFlags::NONBLOCK)?;
    Ok(file)
}

#[cfg(not(target_os = "linux"))]
fn open_without_blocking(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// Fails unless `path` may be written as an output: it does not exist yet, or it is a
/// regular file. A symbolic link, a directory, a FIFO or a device at `path` is refused,
/// since replacing it with a regular file (or writing through it) is never what a
/// command line meant; so is a file name longer than 255 bytes, which no common file
/// system takes, and a path ending in `/`.
///
/// # Errors
/// [`Error::Output`] naming what is there.
pub fn check_output(path: &Path) -> Result<()> {
    // Caught here, not when the finished output is renamed to it (after other outputs
    // of the same run may have been).
    // `out/` names a folder: writing the file then fails at the rename, after the work.
    if path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(Error::Output {
            path: path.to_owned(),
            reason: "it names a folder (a trailing /); an output file needs a file name",
        });
    }
    if path.file_name().is_some_and(|n| n.len() > MAX_NAME_BYTES) {
        return Err(Error::Output {
            path: path.to_owned(),
            reason: "its file name is longer than the 255 bytes file systems take",
        });
    }
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    let reason = if meta.file_type().is_symlink() && std::fs::metadata(path).is_err() {
        "it is a symbolic link that leads to no file (its target is missing, or the links loop)"
    } else if meta.file_type().is_symlink() {
        "it is a symbolic link (give the path it points to)"
    } else if meta.is_dir() {
        "it is a directory"
    } else if !meta.is_file() {
        "it exists and is not a regular file (a FIFO, socket or device)"
    } else {
        return Ok(());
    };
    Err(Error::Output { path: path.to_owned(), reason })
}

/// The longest file name (one path component) common file systems take, in bytes.
const MAX_NAME_BYTES: usize = 255;

/// What identifies a file: its device and inode where the platform has them (so hard
/// links and different spellings of one path are the same file), else its canonical
/// path. A path that does not exist yet is identified by its canonical directory and
/// name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FileId {
    Inode(u64, u64),
    Path(PathBuf),
}

fn file_id(path: &Path) -> Option<FileId> {
    if let Ok(meta) = std::fs::metadata(path) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            return Some(FileId::Inode(meta.dev(), meta.ino()));
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            return path.canonicalize().ok().map(FileId::Path);
        }
    }
    Some(FileId::Path(absolute_path(path)?))
}

/// Whether `path` is `folder` or lies inside it, once both are resolved (links followed;
/// the parts of `path` that do not exist yet resolved lexically). False if either
/// cannot be resolved.
pub fn is_within(path: &Path, folder: &Path) -> bool {
    match (absolute_path(path), folder.canonicalize()) {
        (Some(path), Ok(folder)) => path.starts_with(folder),
        _ => false,
    }
}

/// Where `path` lies inside `folder`, both resolved as [`is_within`] resolves `path`
/// (neither need exist): the empty path when they are one, `None` when `path` is
/// outside `folder` or either cannot be resolved. `o/../o/m` and `/cwd/o/m` lie in `o`
/// at `m`.
pub fn path_within(path: &Path, folder: &Path) -> Option<PathBuf> {
    let (path, folder) = (absolute_path(path)?, absolute_path(folder)?);
    path.strip_prefix(&folder).ok().map(Path::to_path_buf)
}

/// The bytes `reader` holds, or `None` if it holds more than `max`. At most `max + 1`
/// bytes are read, whatever size a file reports (files of `/proc` report 0 and can be
/// endless).
///
/// # Errors
/// The read's.
pub fn read_at_most(reader: impl std::io::Read, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    reader.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= max).then_some(bytes))
}

/// Whether `path` resolves (links followed, `..` applied) to a filesystem root: `/`, or
/// a drive's root on Windows.
pub fn is_filesystem_root(path: &Path) -> bool {
    absolute_path(path).is_some_and(|p| p.parent().is_none())
}

/// The file system `path` is on, or would be on once created (its nearest existing
/// ancestor's): an identifier to tell whether two paths share their free space, and
/// the bytes an unprivileged writer may still put there. `None` where the system does
/// not say.
pub fn file_system_space(path: &Path) -> Option<(u64, u64)> {
    let absolute = absolute_path(path)?;
    space_of(absolute.ancestors().find(|a| a.exists())?)
}

#[cfg(target_os = "linux")]
fn space_of(existing: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let device = existing.metadata().ok()?.dev();
    let stat = rustix::fs::statvfs(existing).ok()?;
    Some((device, stat.f_bavail.saturating_mul(stat.f_frsize)))
}

#[cfg(not(target_os = "linux"))]
fn space_of(_existing: &Path) -> Option<(u64, u64)> {
    None
}

/// Where a path is or would be: its nearest existing ancestor made canonical, the rest
/// of it (folders not created yet, which cannot be links) resolved lexically.
fn absolute_path(path: &Path) -> Option<PathBuf> {
    let absolute =
        if path.is_absolute() { path.to_owned() } else { std::env::current_dir().ok()?.join(path) };
    let (mut resolved, rest) = absolute
        .ancestors()
        .find_map(|a| Some((a.canonicalize().ok()?, absolute.strip_prefix(a).ok()?)))?;
    for part in rest.components() {
        match part {
            Component::Normal(name) => resolved.push(name),
            Component::ParentDir => {
                resolved.pop();
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(resolved)
}

/// Fails if any two of the given paths are one file, unless both are only read. Each
/// path comes with the role it plays (`"input"`, `"--grads"`, `"-o"`, ...), which the
/// error names; `true` marks the paths that are written.
///
/// Call it before anything is read or written: an output that is also an input (under
/// another name, or through a hard link) would be destroyed by the write.
///
/// # Errors
/// [`Error::SameFile`] naming both roles.
pub fn check_distinct(paths: &[(&'static str, &Path, bool)]) -> Result<()> {
    check_distinct_where(paths, |writes_a, writes_b| writes_a || writes_b)
}

/// Fails if any two of `paths` are one file, read or written: for inputs that must each
/// count once (gradient files summed, say). Roles and error as [`check_distinct`].
///
/// # Errors
/// [`Error::SameFile`] naming both roles.
pub fn check_all_distinct(paths: &[(&'static str, &Path)]) -> Result<()> {
    let paths: Vec<_> = paths.iter().map(|&(role, path)| (role, path, false)).collect();
    check_distinct_where(&paths, |_, _| true)
}

/// [`check_distinct`] with `clash` deciding, from whether each of two paths is written,
/// whether their being one file is an error.
fn check_distinct_where(
    paths: &[(&'static str, &Path, bool)],
    clash: impl Fn(bool, bool) -> bool,
) -> Result<()> {
    // The paths grouped by file, so that a folder of a hundred thousand outputs is
    // checked in one pass, not in pairs; the pair reported is the first in the order
    // given, as a search of every pair would find it.
    let mut by_file: std::collections::HashMap<FileId, Vec<usize>> =
        std::collections::HashMap::new();
    for (i, (_, path, _)) in paths.iter().enumerate() {
        if let Some(id) = file_id(path) {
            by_file.entry(id).or_default().push(i);
        }
    }
    let mut first: Option<(usize, usize)> = None;
    for same in by_file.values().filter(|same| same.len() > 1) {
        for (k, &i) in same.iter().enumerate() {
            for &j in &same[k + 1..] {
                if clash(paths[i].2, paths[j].2) && first.is_none_or(|f| (i, j) < f) {
                    first = Some((i, j));
                }
            }
        }
    }
    match first {
        Some((i, j)) => Err(Error::SameFile {
            path: paths[i].1.to_path_buf(),
            other: paths[j].1.to_path_buf(),
            first: paths[i].0,
            second: paths[j].0,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_past_their_bound_whatever_size_a_file_reports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        let open = || std::fs::File::open(&path).unwrap();
        assert_eq!(read_at_most(open(), 5).unwrap().as_deref(), Some(&b"12345"[..]));
        assert_eq!(read_at_most(open(), 4).unwrap(), None);
        #[cfg(unix)]
        {
            // Reports a size of 0, and never ends.
            let zero = std::fs::File::open("/dev/zero").unwrap();
            assert_eq!(read_at_most(zero, 1 << 20).unwrap(), None);
        }
    }

    #[test]
    fn only_regular_files_are_opened_and_they_read_in_blocking_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let file = open_regular_file(&path).unwrap();
        #[cfg(target_os = "linux")]
        {
            let flags = rustix::fs::fcntl_getfl(&file).unwrap();
            assert!(!flags.contains(rustix::fs::OFlags::NONBLOCK));
        }
        assert_eq!(read_at_most(file, 3).unwrap().as_deref(), Some(&b"abc"[..]));
        assert!(matches!(open_regular_file(dir.path()), Err(Error::Input { .. })));
        assert!(matches!(open_regular_file(&dir.path().join("absent")), Err(Error::Io { .. })));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_fifo_swapped_in_before_the_open_is_refused_without_waiting_for_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        assert!(matches!(open_regular_file(&fifo), Err(Error::Input { .. })));
        // What happens after the check, had the FIFO been put there just after it: the
        // open returns at once although nothing writes to it, and the file is refused.
        let opened = open_without_blocking(&fifo).unwrap();
        let refused = still_regular(&fifo, &opened).unwrap_err();
        assert!(refused.to_string().contains("replaced while it was opened"), "{refused}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn files_of_the_kernels_pseudo_filesystems_are_refused() {
        // Regular files by their metadata, opened without blocking; `/proc/kmsg`, which a
        // read would wait on, is one of them (readable by root only).
        let path = Path::new("/proc/self/status");
        assert!(std::fs::metadata(path).unwrap().is_file());
        let refused = open_regular_file(path).unwrap_err();
        assert!(refused.to_string().contains("is a file of /proc"), "{refused}");
    }

    #[test]
    fn present_paths_include_links_that_lead_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        assert!(is_present(dir.path()));
        assert!(!is_present(&dir.path().join("absent")));
        #[cfg(unix)]
        {
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(dir.path().join("absent"), &link).unwrap();
            assert!(is_present(&link));
        }
    }

    #[test]
    fn filesystem_roots_are_told_by_where_they_resolve() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_filesystem_root(dir.path()));
        assert!(!is_filesystem_root(&dir.path().join("not yet")));
        #[cfg(unix)]
        {
            assert!(is_filesystem_root(Path::new("/")));
            let up = dir.path().ancestors().map(|_| "..").collect::<Vec<_>>().join("/");
            assert!(is_filesystem_root(&dir.path().join(up)));
            let link = dir.path().join("root");
            std::os::unix::fs::symlink("/", &link).unwrap();
            assert!(is_filesystem_root(&link));
        }
    }

    #[test]
    fn a_file_name_past_255_bytes_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_output(&dir.path().join("b".repeat(255))).is_ok());
        let e = check_output(&dir.path().join("b".repeat(256))).unwrap_err().to_string();
        assert!(e.contains("longer than the 255 bytes"), "{e}");
    }

    /// The grouped check reports what a search of every pair in order would: the
    /// first pair of one file that clashes, for lists of names of a few files (aliases,
    /// hard links, files not made yet) in many orders, read or written.
    #[test]
    fn the_pair_reported_is_the_first_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, b"x").unwrap();
        std::fs::hard_link(&a, dir.path().join("hard")).unwrap();
        let names = ["a", "hard", "./a", "new", "sub/../new", "other", "b/c"];
        let names: Vec<PathBuf> = names.iter().map(|n| dir.path().join(n)).collect();
        let roles = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"];
        let mut state = 0x2545_f491_u64;
        for _ in 0..500 {
            let mut next = || {
                state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (state >> 33) as usize
            };
            let len = next() % 8;
            let list: Vec<(&'static str, &Path, bool)> = (0..len)
                .map(|k| (roles[k], names[next() % names.len()].as_path(), next() % 2 == 0))
                .collect();
            let ids: Vec<_> = list.iter().map(|(_, p, _)| file_id(p)).collect();
            let oracle = (0..len)
                .flat_map(|i| (i + 1..len).map(move |j| (i, j)))
                .find(|&(i, j)| ids[i].is_some() && ids[i] == ids[j] && (list[i].2 || list[j].2));
            match (check_distinct(&list), oracle) {
                (Ok(()), None) => {}
                (Err(Error::SameFile { first, second, .. }), Some((i, j))) => {
                    assert_eq!((first, second), (roles[i], roles[j]), "{list:?}");
                }
                (got, want) => panic!("{list:?}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn one_file_in_two_roles_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.safetensors");
        std::fs::write(&a, b"x").unwrap();
        let link = dir.path().join("hard");
        std::fs::hard_link(&a, &link).unwrap();
        let other = dir.path().join("new.safetensors");
        let dotted = dir.path().join(".").join("a.safetensors");
        for alias in [&a, &link, &dotted] {
            let err = check_distinct(&[("input", &a, false), ("-o", alias, true)]).unwrap_err();
            assert!(matches!(err, Error::SameFile { first: "input", second: "-o", .. }), "{err}");
            // Each name is given, in its role, when they differ.
            let named = if alias == &a {
                format!("{} is both the input and the -o", a.display())
            } else {
                format!("the input {} and the -o {} are one file", a.display(), alias.display())
            };
            assert!(err.to_string().starts_with(&named), "{err}");
        }
        check_distinct(&[("input", &a, false), ("-o", &other, true)]).unwrap();
        // Two reads of one file are fine; two writes to a new one are not.
        check_distinct(&[("input", &a, false), ("--grads", &link, false)]).unwrap();
        assert!(check_distinct(&[("-o", &other, true), ("--masks-out", &other, true)]).is_err());
        // Two outputs of one role are named by both their names.
        let err = check_distinct(&[("output", &a, true), ("output", &link, true)]).unwrap_err();
        let both =
            format!("{} and {} are one file, and both are the output", a.display(), link.display());
        assert!(err.to_string().starts_with(&both), "{err}");
        // Paths inside folders not created yet are compared as they will be.
        let new = dir.path().join("new/config.json");
        for alias in ["new/./config.json", "new/sub/../config.json", "new//config.json"] {
            let alias = dir.path().join(alias);
            let err = check_distinct(&[("copy", &new, true), ("--masks-out", &alias, true)]);
            assert!(err.is_err(), "{}", alias.display());
        }
        let apart = dir.path().join("new/sub/config.json");
        check_distinct(&[("copy", &new, true), ("--masks-out", &apart, true)]).unwrap();
        assert!(is_within(&apart, dir.path()) && is_within(dir.path(), dir.path()));
        assert!(is_within(&dir.path().join("a/../b"), dir.path()));
        assert!(!is_within(&dir.path().join("../elsewhere"), dir.path()));
        // Neither path need exist: an output folder is planned before it is made.
        let out = dir.path().join("out");
        for (alias, rest) in [("out/../out/m.st", "m.st"), ("out/./sub/m", "sub/m"), ("out", "")] {
            assert_eq!(path_within(&dir.path().join(alias), &out), Some(rest.into()), "{alias}");
        }
        assert_eq!(path_within(&dir.path().join("outside/m.st"), &out), None);
    }

    #[test]
    fn outputs_must_be_absent_or_regular() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        check_output(&file).unwrap();
        check_output(&dir.path().join("absent")).unwrap();
        // A name ending in / is a folder's, whether one is there or not.
        let slashed = format!("{}/", dir.path().join("absent.onnx").display());
        let e = check_output(Path::new(&slashed)).unwrap_err().to_string();
        assert!(e.ends_with("it names a folder (a trailing /); an output file needs a file name"));
        assert!(matches!(check_output(dir.path()), Err(Error::Output { .. })));
        #[cfg(unix)]
        {
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&file, &link).unwrap();
            let e = check_output(&link).unwrap_err().to_string();
            assert!(e.ends_with("it is a symbolic link (give the path it points to)"), "{e}");
            // A link to nothing, and links that loop, have no path to give.
            let (dangling, a, b) =
                (dir.path().join("dangling"), dir.path().join("a"), dir.path().join("b"));
            std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
            std::os::unix::fs::symlink(&b, &a).unwrap();
            std::os::unix::fs::symlink(&a, &b).unwrap();
            for link in [dangling, a] {
                let e = check_output(&link).unwrap_err().to_string();
                let said = "it is a symbolic link that leads to no file (its target is missing, or the links loop)";
                assert!(e.ends_with(said), "{e}");
            }
        }
        assert!(matches!(require_regular_file(dir.path()), Err(Error::Input { .. })));
        assert!(matches!(require_regular_file(&dir.path().join("absent")), Err(Error::Io { .. })));
        require_regular_file(&file).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_path_not_created_yet_is_on_its_nearest_folders_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let (device, free) = file_system_space(dir.path()).unwrap();
        let (later, _) = file_system_space(&dir.path().join("a/b/c.safetensors")).unwrap();
        assert_eq!(device, later);
        assert!(free > 0, "the file system of a fresh temporary folder has room");
    }
}
