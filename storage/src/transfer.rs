//! Moving a snapshot file to another server: the sender hands out zero-copy chunks of its
//! mapped file; the receiver writes them in order to a temp file and installs it (fsync,
//! rename, directory fsync) only when every byte arrived. The installed file is then
//! opened like any snapshot, so its checksums and archive are validated before use.
//!
//! Transport, retries and flow control belong to the caller (the Raft network); this
//! module only guarantees that a snapshot is installed whole or not at all.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::error::{IoContext, Result, StorageError};
use crate::fsutil;
use crate::snapshot::is_snapshot_file_name;
use crate::sys;

/// Largest snapshot a receiver accepts by default: 64 GiB.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: u64 = 64 << 30;

/// One piece of a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Byte offset of `data` in the file.
    pub offset: u64,
    pub data: Bytes,
}

/// The chunks of a snapshot file, read from its mapping without copying.
#[derive(Debug)]
pub struct ChunkReader {
    name: String,
    map: Bytes,
    chunk_size: usize,
    next: usize,
}

impl ChunkReader {
    /// Opens `path` for sending in chunks of `chunk_size` bytes (at least 1).
    pub fn open(path: &Path, chunk_size: usize) -> Result<ChunkReader> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| is_snapshot_file_name(n))
            .ok_or_else(|| {
                StorageError::Invalid(format!("{} is not a snapshot file", path.display()))
            })?
            .to_string();
        let file = File::open(path).ctx("open snapshot", path)?;
        let len = file.metadata().ctx("stat snapshot", path)?.len() as usize;
        let map = sys::map_readonly(&file, len).ctx("mmap", path)?;
        Ok(ChunkReader {
            name,
            map,
            chunk_size: chunk_size.max(1),
            next: 0,
        })
    }

    /// The file name the receiver must use.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn total_len(&self) -> u64 {
        self.map.len() as u64
    }
}

impl Iterator for ChunkReader {
    type Item = Chunk;
    fn next(&mut self) -> Option<Chunk> {
        if self.next >= self.map.len() {
            return None;
        }
        let end = (self.next + self.chunk_size).min(self.map.len());
        let c = Chunk {
            offset: self.next as u64,
            data: self.map.slice(self.next..end),
        };
        self.next = end;
        Some(c)
    }
}

/// Receives one snapshot file.
#[derive(Debug)]
pub struct SnapshotReceiver {
    dir: PathBuf,
    name: String,
    tmp: PathBuf,
    file: File,
    total_len: u64,
    received: u64,
}

impl SnapshotReceiver {
    /// Starts receiving `name` (a snapshot file name, nothing else: no paths) of
    /// `total_len` bytes into `dir`. Refuses sizes over `max_bytes`.
    pub fn begin(
        dir: &Path,
        name: &str,
        total_len: u64,
        max_bytes: u64,
    ) -> Result<SnapshotReceiver> {
        if !is_snapshot_file_name(name) {
            return Err(StorageError::Invalid(format!(
                "{name:?} is not a snapshot file name"
            )));
        }
        if total_len > max_bytes {
            return Err(StorageError::Invalid(format!(
                "snapshot of {total_len} bytes exceeds the limit of {max_bytes} bytes"
            )));
        }
        std::fs::create_dir_all(dir).ctx("create directory", dir)?;
        let tmp = dir.join(format!("{name}.recv.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx("create", &tmp)?;
        Ok(SnapshotReceiver {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            tmp,
            file,
            total_len,
            received: 0,
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Writes the next chunk. Chunks must arrive in order, without gaps or overlap, and
    /// stay within the announced length; anything else is refused and nothing is written.
    pub fn accept(&mut self, chunk: &Chunk) -> Result<()> {
        if chunk.offset != self.received {
            return Err(StorageError::Invalid(format!(
                "snapshot chunk at offset {}, expected offset {}",
                chunk.offset, self.received
            )));
        }
        let end = self.received + chunk.data.len() as u64;
        if end > self.total_len {
            return Err(StorageError::Invalid(format!(
                "snapshot chunk ends at {end}, past the announced {} bytes",
                self.total_len
            )));
        }
        self.file.write_all(&chunk.data).ctx("write", &self.tmp)?;
        self.received = end;
        Ok(())
    }

    /// Installs the snapshot once every byte arrived: fsync, rename into place, directory
    /// fsync. Returns its path; open it with [`crate::snapshot::Snapshot::open`] to
    /// validate it (and delete it if that fails).
    pub fn finish(self) -> Result<PathBuf> {
        if self.received != self.total_len {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(StorageError::Invalid(format!(
                "snapshot transfer incomplete: {} of {} bytes",
                self.received, self.total_len
            )));
        }
        fsutil::sync_all_or_die(&self.file, &self.tmp);
        let path = self.dir.join(&self.name);
        std::fs::rename(&self.tmp, &path).ctx("rename snapshot", &path)?;
        fsutil::fsync_dir(&self.dir)?;
        Ok(path)
    }

    /// Gives up: removes the partial file.
    pub fn abort(self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}
