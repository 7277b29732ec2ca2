//! The log's small persistent metadata: the vote, the committed log id and the last purged
//! log id. Rewritten whole with temp file + fsync + rename + directory fsync, so a crash
//! leaves either the old or the new version.

use std::path::Path;

use crate::error::{IoContext, Result, StorageError};
use crate::fsutil;
use crate::LogId;

const META_MAGIC: &[u8; 8] = b"CAIRNMTA";
const META_VERSION: u32 = 1;
const META_LEN: usize = 96;
pub(crate) const META_FILE: &str = "meta";

/// A Raft vote: the term, the candidate voted for, and whether a quorum granted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    pub term: u64,
    pub node_id: u64,
    pub committed: bool,
}

/// Everything the log persists besides entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Meta {
    pub vote: Option<Vote>,
    pub committed: Option<LogId>,
    pub last_purged: Option<LogId>,
    /// First index of the newest segment file. That file exists, and none newer does
    /// (newer ones are leftovers of an interrupted roll-over or truncation). `None`: no
    /// segment exists. This is what makes the loss of a whole segment file detectable.
    pub last_segment: Option<u64>,
    /// Index of the first entry ever appended to a log that was never purged (a log may
    /// start at any index; Raft's usually starts at 0 or 1). Lets open detect a lost first
    /// segment.
    pub log_start: Option<u64>,
}

impl Meta {
    fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[0..8].copy_from_slice(META_MAGIC);
        b[8..12].copy_from_slice(&META_VERSION.to_le_bytes());
        let mut flags = 0u32;
        if let Some(v) = self.vote {
            flags |= 1;
            b[16..24].copy_from_slice(&v.term.to_le_bytes());
            b[24..32].copy_from_slice(&v.node_id.to_le_bytes());
            b[32] = v.committed as u8;
        }
        if let Some(c) = self.committed {
            flags |= 2;
            b[40..48].copy_from_slice(&c.term.to_le_bytes());
            b[48..56].copy_from_slice(&c.index.to_le_bytes());
        }
        if let Some(p) = self.last_purged {
            flags |= 4;
            b[56..64].copy_from_slice(&p.term.to_le_bytes());
            b[64..72].copy_from_slice(&p.index.to_le_bytes());
        }
        if let Some(l) = self.last_segment {
            flags |= 8;
            b[72..80].copy_from_slice(&l.to_le_bytes());
        }
        if let Some(l) = self.log_start {
            flags |= 16;
            b[80..88].copy_from_slice(&l.to_le_bytes());
        }
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        let crc = crc32fast::hash(&b[..88]);
        b[88..92].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8], path: &Path) -> Result<Meta> {
        let bad = |reason: &str| StorageError::CorruptMeta {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if b.len() != META_LEN {
            return Err(bad(&format!("{} bytes, expected {META_LEN}", b.len())));
        }
        if &b[0..8] != META_MAGIC {
            return Err(bad("bad magic"));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
        if crc32fast::hash(&b[..88]) != u32_at(88) {
            return Err(bad("checksum mismatch"));
        }
        if u32_at(8) != META_VERSION {
            return Err(bad(&format!("format version {}", u32_at(8))));
        }
        let flags = u32_at(12);
        Ok(Meta {
            vote: (flags & 1 != 0).then(|| Vote {
                term: u64_at(16),
                node_id: u64_at(24),
                committed: b[32] != 0,
            }),
            committed: (flags & 2 != 0).then(|| LogId {
                term: u64_at(40),
                index: u64_at(48),
            }),
            last_purged: (flags & 4 != 0).then(|| LogId {
                term: u64_at(56),
                index: u64_at(64),
            }),
            last_segment: (flags & 8 != 0).then(|| u64_at(72)),
            log_start: (flags & 16 != 0).then(|| u64_at(80)),
        })
    }

    /// The stored metadata, or `None` when the file does not exist.
    pub(crate) fn load(dir: &Path) -> Result<Option<Meta>> {
        let path = dir.join(META_FILE);
        match std::fs::read(&path) {
            Ok(b) => Meta::decode(&b, &path).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("read", path),
        }
    }

    pub(crate) fn store(&self, dir: &Path) -> Result<()> {
        fsutil::write_atomic(&dir.join(META_FILE), &self.encode())
    }
}
