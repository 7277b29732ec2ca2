//! `cairn-storage`: the bytes Cairn keeps on disk.
//!
//! - [`SegmentLog`]: the Raft log. Fixed-size, preallocated segment files of checksummed,
//!   8-byte aligned records; buffered appends with group commit (one fdatasync covers every
//!   append written before it started); zero-copy reads from read-only mmaps; crash recovery
//!   that cuts a torn tail and refuses, naming file and offset, to open a log damaged
//!   anywhere else. Its metadata (vote, committed, last purged) lives beside it.
//! - [`snapshot`]: rkyv snapshot files, validated once and read in place.
//! - [`transfer`]: sending a snapshot file in zero-copy chunks and installing it whole on
//!   the receiving server.
//!
//! This crate does no networking and knows nothing of Raft's rules beyond what a log store
//! must enforce (contiguous indexes, non-decreasing terms). The agent's Raft log store
//! appends and calls [`SegmentLog::sync`] once per append; the split
//! [`SegmentLog::prepare_sync`] / [`SegmentLog::complete_sync`] lets a caller run the
//! fdatasync elsewhere, and [`GroupCommitLog`] shares fdatasyncs between threads.
//!
//! All `unsafe` code (memory maps, reading archives in place) is in the private `sys`
//! module.
#![deny(unsafe_code)]

mod error;
pub mod fsutil;
mod group;
mod log;
mod meta;
mod segment;
pub mod snapshot;
pub mod state;
mod sys;
pub mod transfer;

pub use error::{Result, StorageError};
pub use group::GroupCommitLog;
pub use log::{
    Entry, LogOptions, NewEntry, OpenReport, PendingSync, SegmentLog, DEFAULT_SEGMENT_SIZE,
    MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE,
};
pub use meta::{Meta, Vote};
pub use segment::{record_len, TailRepair, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

/// A log position: the term of the leader that created the entry, and its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LogId {
    pub term: u64,
    pub index: u64,
}
