//! Create-only, durable writes of whole blobs into a local folder, without a staging name.
//!
//! `object_store`'s `LocalFileSystem` writes a blob to a staging file (`NAME#N`), fsyncs it,
//! hard-links it to its name, fsyncs the folder and unlinks the staging name: three changes to
//! the folder per blob, and a process killed in between leaves the staging file behind for
//! good (named after the blob, so after UIDs in the Old layout). Here the bytes go to an
//! unnamed file (`O_TMPFILE`), which the kernel removes if the process dies, and the one link
//! to each final name is the only change to the folder; the link fails if the name exists, so
//! the write stays create-only, and no reader ever sees a partial blob under a final name.
//! Hand-written because no kept crate writes files this way; `rustix` makes the calls.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use rustix::fs::{AtFlags, CWD, Mode, OFlags};

/// What became of a write.
#[derive(Debug)]
pub(crate) enum Created {
    /// Every name was created and is durable.
    All,
    /// This name exists already; the names created before it were removed again.
    Exists(usize),
    /// This filesystem cannot make unnamed files (or link them): nothing was written, and the
    /// caller writes through `object_store`.
    Unsupported,
}

/// Makes new entries of one folder durable with one fsync for every writer waiting at once:
/// concurrent stores all link into a container's folder (the New layout is flat), and each
/// fsyncing it in turn made most of those flushes redundant.
#[derive(Debug)]
pub(crate) struct FolderSync {
    folder: PathBuf,
    /// Links made so far (counted after each link).
    linked: AtomicU64,
    /// Links the last completed fsync covers; held while an fsync runs.
    synced: Mutex<u64>,
}

impl FolderSync {
    pub(crate) fn new(folder: PathBuf) -> Self {
        Self {
            folder,
            linked: AtomicU64::new(0),
            synced: Mutex::new(0),
        }
    }

    /// Returns once an fsync of the folder that began after this call has completed: by this
    /// caller, or by one that held the lock meanwhile and counted this caller's link.
    fn sync(&self) -> io::Result<()> {
        let mine = self.linked.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if *synced >= mine {
            return Ok(());
        }
        let covered = self.linked.load(Ordering::SeqCst);
        sync_folder(&self.folder)?;
        *synced = covered;
        Ok(())
    }
}

/// Writes `body` once and links it under every path of `paths` (see [`link`]); `Unsupported`
/// when this filesystem cannot make unnamed files.
pub(crate) fn create(paths: &[PathBuf], body: &[Bytes], root: &FolderSync) -> io::Result<Created> {
    let Some(first) = paths.first() else {
        return Ok(Created::All);
    };
    match write_unnamed(parent(first)?, body)? {
        Some(file) => link(&file, paths, root),
        None => Ok(Created::Unsupported),
    }
}

/// Writes `body` to a new unnamed file in `folder` (created if missing); the bytes vanish with
/// the file unless it is linked, and are durable once [`link`] returns. `None` when this
/// filesystem cannot make unnamed files.
pub(crate) fn write_unnamed(folder: &Path, body: &[Bytes]) -> io::Result<Option<File>> {
    let file = match in_folder(folder, || unnamed_file(folder)) {
        Ok(file) => file,
        Err(error) if unsupported(&error) => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut writer = &file;
    for chunk in body {
        writer.write_all(chunk)?;
    }
    Ok(Some(file))
}

/// Links the unnamed `file` under every path of `paths` (Dual mode writes two), on the same
/// filesystem, then makes file and links durable: the file is fsynced (its bytes, and its inode
/// with its new link count), then each folder that gained an entry (`root`'s through its
/// [`FolderSync`]). Parent folders that are missing are created, each made durable in its
/// parent. On failure, the names this call linked are removed again.
pub(crate) fn link(file: &File, paths: &[PathBuf], root: &FolderSync) -> io::Result<Created> {
    let mut linked: Vec<&Path> = Vec::with_capacity(paths.len());
    for (index, path) in paths.iter().enumerate() {
        let outcome = parent(path).and_then(|folder| in_folder(folder, || link_one(file, path)));
        match outcome {
            Ok(()) => linked.push(path),
            Err(error) => {
                unlink_all(&linked);
                return match error.kind() {
                    io::ErrorKind::AlreadyExists => Ok(Created::Exists(index)),
                    _ if linked.is_empty() && unsupported(&error) => Ok(Created::Unsupported),
                    _ => Err(error),
                };
            }
        }
    }
    if let Err(error) = file.sync_all() {
        unlink_all(&linked);
        return Err(error);
    }
    let mut synced: Vec<&Path> = Vec::with_capacity(paths.len());
    for path in &linked {
        let folder = parent(path)?;
        if !synced.contains(&folder) {
            let flushed = if folder == root.folder {
                root.sync()
            } else {
                sync_folder(folder)
            };
            if let Err(error) = flushed {
                unlink_all(&linked);
                return Err(error);
            }
            synced.push(folder);
        }
    }
    Ok(Created::All)
}

fn parent(path: &Path) -> io::Result<&Path> {
    path.parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "a blob path without a folder"))
}

/// An unnamed file in `folder`, gone with its last descriptor unless linked.
fn unnamed_file(folder: &Path) -> io::Result<File> {
    let fd = rustix::fs::openat(
        CWD,
        folder,
        OFlags::WRONLY | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )?;
    Ok(File::from(fd))
}

/// Runs `create` (which makes an entry in `folder`); when it finds something missing, creates
/// whatever of `folder` is (see [`create_folders`]) and runs it again. The folder is there on
/// almost every call, so it is not looked up first.
fn in_folder<T>(folder: &Path, create: impl Fn() -> io::Result<T>) -> io::Result<T> {
    match create() {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            create_folders(folder)?;
            create()
        }
        outcome => outcome,
    }
}

/// Whether `linkat(AT_EMPTY_PATH)` was refused here: Linux before 6.10 allows it only with
/// a capability the server may not have, and answers `ENOENT` without it.
static EMPTY_PATH_REFUSED: AtomicBool = AtomicBool::new(false);

/// Links the unnamed `file` as `path`; fails with `AlreadyExists` if the name is taken.
/// By its descriptor (`AT_EMPTY_PATH`) where the kernel allows that, else through
/// `/proc/self/fd`, which costs a lookup in `/proc` on every link.
fn link_one(file: &File, path: &Path) -> io::Result<()> {
    if !EMPTY_PATH_REFUSED.load(Ordering::Relaxed) {
        match rustix::fs::linkat(file, c"", CWD, path, AtFlags::EMPTY_PATH) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let descriptor = format!("/proc/self/fd/{}", file.as_raw_fd());
    rustix::fs::linkat(CWD, descriptor.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW)?;
    EMPTY_PATH_REFUSED.store(true, Ordering::Relaxed);
    Ok(())
}

/// Whether `error` says the filesystem (or the absence of `/proc`) rules unnamed files out.
fn unsupported(error: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(error),
        Some(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL)
    ) || error.kind() == io::ErrorKind::NotFound && !Path::new("/proc/self/fd").exists()
}

/// Creates `folder` and its missing parents, fsyncing the parent of each folder that was
/// missing (whoever created it: a concurrent writer may not have synced it yet).
fn create_folders(folder: &Path) -> io::Result<()> {
    if folder.is_dir() {
        return Ok(());
    }
    let mut missing = Vec::new();
    let mut current = Some(folder);
    while let Some(path) = current.filter(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
        missing.push(path);
        current = path.parent();
    }
    for path in missing.into_iter().rev() {
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
        sync_folder(parent(path)?)?;
    }
    Ok(())
}

fn sync_folder(folder: &Path) -> io::Result<()> {
    File::open(folder)?.sync_all()
}

/// Best effort: a name that cannot be removed now is the caller's to report.
fn unlink_all(paths: &[&Path]) {
    for path in paths {
        if let Err(error) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), %error, "could not remove a blob this write created");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Vec<Bytes> {
        vec![Bytes::from_static(b"abc"), Bytes::from_static(b"def")]
    }

    #[test]
    fn creates_every_name_with_the_whole_body_and_no_other_file() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [dir.path().join("a/b/x.bin"), dir.path().join("y.bin")];
        let root = FolderSync::new(dir.path().to_path_buf());
        let created = create(&paths, &body(), &root).unwrap();
        assert!(matches!(created, Created::All), "{created:?}");
        for path in &paths {
            assert_eq!(std::fs::read(path).unwrap(), b"abcdef");
        }
        let mut names: Vec<_> = walk(dir.path());
        names.sort();
        assert_eq!(names, ["a/b/x.bin", "y.bin"]);
    }

    #[test]
    fn a_name_in_a_missing_folder_gets_its_folder_when_it_is_linked() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [dir.path().join("y.bin"), dir.path().join("c/d/z.bin")];
        let root = FolderSync::new(dir.path().to_path_buf());
        let created = create(&paths, &body(), &root).unwrap();
        assert!(matches!(created, Created::All), "{created:?}");
        assert_eq!(std::fs::read(&paths[1]).unwrap(), b"abcdef");
        let mut names: Vec<_> = walk(dir.path());
        names.sort();
        assert_eq!(names, ["c/d/z.bin", "y.bin"]);
    }

    #[test]
    fn links_through_proc_where_the_kernel_refuses_a_link_by_descriptor() {
        // Both ways give the same result, so tests running meanwhile are unaffected.
        EMPTY_PATH_REFUSED.store(true, Ordering::Relaxed);
        let dir = tempfile::tempdir().unwrap();
        let paths = [dir.path().join("p.bin")];
        let root = FolderSync::new(dir.path().to_path_buf());
        let created = create(&paths, &body(), &root);
        EMPTY_PATH_REFUSED.store(false, Ordering::Relaxed);
        assert!(matches!(created.unwrap(), Created::All));
        assert_eq!(std::fs::read(&paths[0]).unwrap(), b"abcdef");
    }

    #[test]
    fn an_existing_name_is_left_as_it_was_and_earlier_names_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let taken = dir.path().join("taken.bin");
        std::fs::write(&taken, b"old").unwrap();
        let paths = [dir.path().join("new.bin"), taken.clone()];
        let root = FolderSync::new(dir.path().to_path_buf());
        let created = create(&paths, &body(), &root).unwrap();
        assert!(matches!(created, Created::Exists(1)), "{created:?}");
        assert_eq!(std::fs::read(&taken).unwrap(), b"old");
        assert!(!paths[0].exists());
        assert_eq!(walk(dir.path()), ["taken.bin"]);
    }

    #[test]
    fn a_folder_sync_counts_links_it_covered() {
        let dir = tempfile::tempdir().unwrap();
        let root = FolderSync::new(dir.path().to_path_buf());
        root.sync().unwrap();
        root.sync().unwrap();
        assert_eq!(*root.synced.lock().unwrap(), 2);
        let missing = FolderSync::new(dir.path().join("missing"));
        assert!(missing.sync().is_err());
        assert_eq!(*missing.synced.lock().unwrap(), 0);
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut folders = vec![root.to_path_buf()];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                } else {
                    let relative = path.strip_prefix(root).unwrap();
                    found.push(relative.to_string_lossy().into_owned());
                }
            }
        }
        found
    }
}
