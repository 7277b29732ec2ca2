//! Errors of the storage engine.
//!
//! Each variant says what happened and whether state changed. Errors that mean the files on
//! disk are damaged name the file and the byte offset, so an operator can look at them.

use std::io;
use std::path::PathBuf;

/// What went wrong in the segment log or a snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An IO call failed. Nothing was changed in memory; what reached the disk is unknown
    /// unless the call says otherwise.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Data before the tail of the log does not validate. The log refuses to open rather than
    /// silently drop entries that may have been acknowledged.
    #[error("corrupt log: {path} at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    /// A snapshot file does not validate. The file is left as it is.
    #[error("corrupt snapshot: {path}: {reason}")]
    CorruptSnapshot { path: PathBuf, reason: String },

    /// The metadata file does not validate. The file is left as it is.
    #[error("corrupt metadata: {path}: {reason}")]
    CorruptMeta { path: PathBuf, reason: String },

    /// A caller broke the log's contract (for example appended an index that does not follow
    /// the last one). Nothing was written.
    #[error("invalid request: {0}")]
    Invalid(String),

    /// An entry is larger than a segment can hold. Nothing was written.
    #[error("entry of {size} bytes exceeds the limit of {limit} bytes")]
    EntryTooLarge { size: usize, limit: usize },

    /// Another process holds the log directory.
    #[error("log directory {path} is in use by another process (lock file {lock})")]
    Locked { path: PathBuf, lock: PathBuf },
}

pub type Result<T> = std::result::Result<T, StorageError>;

pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| StorageError::Io {
            op,
            path: path.into(),
            source,
        })
    }
}
