//! Small file-system helpers: directory fsync, atomic replace, the data-directory lock, and
//! the fatal path for a failed fsync.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result, StorageError};

/// Makes a directory's entries (creations, renames, deletions) durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).ctx("open directory", dir)?;
    if let Err(e) = d.sync_all() {
        fatal_sync_failure(dir, &e);
    }
    Ok(())
}

/// Flushes a file's data with `fdatasync`. A failure ends the process: after a failed fsync
/// the kernel may already have dropped the dirty pages, so retrying could report data as
/// durable that is gone (the "fsyncgate" lesson from PostgreSQL).
pub fn sync_data_or_die(file: &File, path: &Path) {
    if let Err(e) = file.sync_data() {
        fatal_sync_failure(path, &e);
    }
}

/// Same as [`sync_data_or_die`] with `fsync` (data and metadata).
pub fn sync_all_or_die(file: &File, path: &Path) {
    if let Err(e) = file.sync_all() {
        fatal_sync_failure(path, &e);
    }
}

/// Ends the process after a failed fsync, naming the file. Never returns, never retries.
pub fn fatal_sync_failure(path: &Path, err: &std::io::Error) -> ! {
    eprintln!(
        "cairn: fatal: fsync of {} failed: {err}. Data written since the last successful \
         fsync may be lost; exiting without retrying. Check the disk, then restart: the log \
         recovers to its last durable state.",
        path.display()
    );
    // EX_IOERR from sysexits.h.
    std::process::exit(74)
}

/// Replaces `path` with `contents` atomically: temp file, fsync, rename, directory fsync.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx("create", &tmp)?;
        f.write_all(contents).ctx("write", &tmp)?;
        sync_all_or_die(&f, &tmp);
    }
    fs::rename(&tmp, path).ctx("rename", path)?;
    fsync_dir(parent(path))?;
    Ok(())
}

pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

pub(crate) fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An exclusive `flock` on `DIR/LOCK`, held while the value lives. A second process that
/// opens the same directory gets [`StorageError::Locked`] instead of sharing the files.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        let lock = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock)
            .ctx("open lock file", &lock)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(DirLock { _file: file }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(StorageError::Locked {
                path: dir.to_path_buf(),
                lock,
            }),
            Err(e) => Err(StorageError::Io {
                op: "lock",
                path: lock,
                source: e.into(),
            }),
        }
    }
}
