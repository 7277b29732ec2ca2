//! The segment log: the Raft log store's engine.
//!
//! Entries are appended with buffered writes and made durable by [`SegmentLog::sync`] (or the
//! split [`SegmentLog::prepare_sync`] / [`PendingSync::run`] / [`SegmentLog::complete_sync`]
//! for callers that sync on another thread or through io_uring). One fdatasync covers every
//! append written before it started: that is the group commit. Reads come straight from
//! read-only mmaps of the segment files.

use std::fs::{self, File};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{IoContext, Result, StorageError};
use crate::fsutil::{self, DirLock};
use crate::meta::{Meta, Vote, META_FILE};
use crate::segment::{
    encode_record, parse_segment_file_name, record_len, Segment, TailRepair, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use crate::LogId;

/// Default size of a segment file: 64 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Smallest segment size accepted: room for a header and some records.
pub const MIN_SEGMENT_SIZE: u64 = 64 * 1024;
/// Largest segment size accepted: record offsets are kept as u32.
pub const MAX_SEGMENT_SIZE: u64 = u32::MAX as u64;

/// Options of a [`SegmentLog`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Size of each segment file, preallocated when the segment is created. Entries larger
    /// than a segment minus its headers are refused.
    pub segment_size: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: DEFAULT_SEGMENT_SIZE,
        }
    }
}

/// An entry to append.
#[derive(Debug, Clone, Copy)]
pub struct NewEntry<'a> {
    pub term: u64,
    pub index: u64,
    pub payload: &'a [u8],
}

/// An entry read from the log. `payload` borrows the segment's mapping: no copy was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub term: u64,
    pub index: u64,
    pub payload: Bytes,
}

impl Entry {
    pub fn log_id(&self) -> LogId {
        LogId {
            term: self.term,
            index: self.index,
        }
    }
}

/// What opening the log found and did.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// A torn write at the end of the last segment that was cut, with its file.
    pub torn_tail: Option<(PathBuf, TailRepair)>,
    /// Segment files removed because a purge had covered them before a crash.
    pub removed_purged_segments: usize,
    /// Leftover temp files of interrupted segment creations or metadata writes.
    pub removed_temp_files: usize,
    /// Segments newer than the newest one the metadata names: leftovers of an interrupted
    /// roll-over or truncation.
    pub removed_leftover_segments: usize,
}

/// A sync prepared by [`SegmentLog::prepare_sync`]: run it anywhere (it holds the segment's
/// file open, shared with the log), then hand it back to [`SegmentLog::complete_sync`].
#[derive(Debug)]
pub struct PendingSync {
    file: Option<(Arc<File>, PathBuf)>,
    end: u64,
    generation: u64,
}

impl PendingSync {
    /// The fdatasync. A failure ends the process (see [`fsutil::fatal_sync_failure`]).
    pub fn run(&self) {
        if let Some((f, p)) = &self.file {
            fsutil::sync_data_or_die(f, p);
        }
    }

    /// One past the last index this sync makes durable.
    pub fn end(&self) -> u64 {
        self.end
    }
}

/// An append-only, segmented, checksummed log of Raft entries with persistent metadata.
#[derive(Debug)]
pub struct SegmentLog {
    dir: PathBuf,
    opts: LogOptions,
    _lock: DirLock,
    /// Open segments in index order. Only the last one is ever written; every earlier one
    /// was fdatasync'ed before the next was started.
    segments: Vec<Segment>,
    meta: Meta,
    /// Index of the next entry to append.
    next_index: u64,
    /// Term of the last entry (or of the last purged entry when the log is empty).
    last_term: Option<u64>,
    /// Every entry below this index is durable.
    durable_end: u64,
    /// Bumped by truncation, so a sync prepared before it cannot mark rewritten entries
    /// durable.
    generation: u64,
    /// Opened by [`SegmentLog::open_read_only`]: every change is refused.
    read_only: bool,
    scratch: Vec<u8>,
    rel_offsets: Vec<u32>,
    report: OpenReport,
}

impl SegmentLog {
    /// Opens (or creates) the log in `dir`, recovering from any crash. See
    /// [`Segment::open`] for what is repaired and what is refused.
    pub fn open(dir: impl AsRef<Path>, opts: LogOptions) -> Result<SegmentLog> {
        Self::open_mode(dir.as_ref(), opts, true)
    }

    /// Opens the log without changing anything on disk: a torn tail is reported but not cut,
    /// leftovers of interrupted operations are counted but not removed, and no append,
    /// truncation or purge is allowed. For `cairn debug log-check`.
    pub fn open_read_only(dir: impl AsRef<Path>) -> Result<SegmentLog> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(StorageError::Io {
                op: "open log directory",
                path: dir.to_path_buf(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        Self::open_mode(dir, LogOptions::default(), false)
    }

    fn open_mode(dir: &Path, opts: LogOptions, repair: bool) -> Result<SegmentLog> {
        let dir = dir.to_path_buf();
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&opts.segment_size)
            || opts.segment_size % 4096 != 0
        {
            return Err(StorageError::Invalid(format!(
                "segment size {} must be a multiple of 4096 between {MIN_SEGMENT_SIZE} and \
                 {MAX_SEGMENT_SIZE}",
                opts.segment_size
            )));
        }
        fs::create_dir_all(&dir).ctx("create directory", &dir)?;
        let lock = DirLock::acquire(&dir)?;
        let mut report = OpenReport::default();

        let mut firsts = Vec::new();
        for ent in fs::read_dir(&dir).ctx("read directory", &dir)? {
            let ent = ent.ctx("read directory", &dir)?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                if repair {
                    fs::remove_file(ent.path()).ctx("remove temp file", ent.path())?;
                }
                report.removed_temp_files += 1;
            } else if let Some(first) = parse_segment_file_name(name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let stored = Meta::load(&dir)?;
        let mut meta = stored.unwrap_or_default();

        // Segments newer than the newest one the metadata names are leftovers of an
        // interrupted roll-over (still empty) or truncation (already cut from the log).
        let newest = meta.last_segment;
        let leftovers: Vec<u64> = firsts
            .iter()
            .copied()
            .filter(|f| newest.is_none_or(|l| *f > l))
            .collect();
        firsts.retain(|f| newest.is_some_and(|l| *f <= l));
        for f in leftovers {
            let path = dir.join(crate::segment::segment_file_name(f));
            if stored.is_none() {
                // No metadata at all: only an interrupted first roll-over leaves a segment
                // behind, and it is empty. Records mean the metadata file was lost.
                let (seg, _) = Segment::open(&path, None, 0, true, false)?;
                if !seg.is_empty() {
                    return Err(StorageError::CorruptMeta {
                        path: dir.join(META_FILE),
                        reason: format!(
                            "the file is missing but segment {} holds entries: the vote and \
                             the list of segments are lost, refusing to guess them",
                            path.display()
                        ),
                    });
                }
            }
            if repair {
                fs::remove_file(&path).ctx("remove leftover segment", &path)?;
            }
            report.removed_leftover_segments += 1;
        }
        if let Some(l) = newest {
            if firsts.last() != Some(&l) {
                return Err(StorageError::Corrupt {
                    path: dir.join(crate::segment::segment_file_name(l)),
                    offset: 0,
                    reason: "segment file is missing: the metadata names it as the newest \
                             segment, so entries that may have been acknowledged are gone"
                        .to_string(),
                });
            }
        }
        let purged_end = meta.last_purged.map(|p| p.index + 1);

        // A purge persists `last_purged` before deleting files; finish one a crash cut short.
        if let Some(pe) = purged_end {
            while firsts.len() >= 2 && firsts[1] <= pe {
                let path = dir.join(crate::segment::segment_file_name(firsts.remove(0)));
                if repair {
                    fs::remove_file(&path).ctx("remove purged segment", &path)?;
                }
                report.removed_purged_segments += 1;
            }
        }

        let mut segments: Vec<Segment> = Vec::with_capacity(firsts.len());
        for (i, first) in firsts.iter().enumerate() {
            let path = dir.join(crate::segment::segment_file_name(*first));
            let expected = segments.last().map(|s| s.end_index());
            let min_term = segments.last().map(|s| s.last_term).unwrap_or(0);
            let is_last = i + 1 == firsts.len();
            let (seg, torn) = Segment::open(&path, expected, min_term, is_last, repair)?;
            if let Some(r) = torn {
                report.torn_tail = Some((path.clone(), r));
            }
            segments.push(seg);
        }
        if repair
            && (report.removed_purged_segments > 0
                || report.removed_temp_files > 0
                || report.removed_leftover_segments > 0)
        {
            fsutil::fsync_dir(&dir)?;
        }

        if let Some(first) = segments.first() {
            let start = purged_end.or(meta.log_start).unwrap_or(0);
            if first.first_index() > start {
                let why = match purged_end {
                    Some(pe) => format!("the log was purged up to index {}", pe - 1),
                    None => format!("the log starts at index {start}"),
                };
                return Err(StorageError::Corrupt {
                    path: first.path.clone(),
                    offset: 0,
                    reason: format!(
                        "{why}, but the first segment starts at {}: entries before it are \
                         missing",
                        first.first_index()
                    ),
                });
            }
        }
        // Segments wholly covered by the purge (including a last one) go now.
        if let Some(pe) = purged_end {
            let before = segments.len();
            let mut removal = Ok(());
            segments.retain(|s| {
                if s.end_index() > pe {
                    return true;
                }
                if repair && removal.is_ok() {
                    removal = fs::remove_file(&s.path).ctx("remove purged segment", &s.path);
                }
                false
            });
            removal?;
            if repair && segments.len() != before {
                report.removed_purged_segments += before - segments.len();
                if segments.is_empty() {
                    meta.last_segment = None;
                    meta.store(&dir)?;
                }
                fsutil::fsync_dir(&dir)?;
            }
        }

        let next_index = match (segments.last(), purged_end) {
            (Some(s), _) => s.end_index(),
            (None, Some(pe)) => pe,
            (None, None) => meta.log_start.unwrap_or(0),
        };
        let last_term = if segments.iter().any(|s| !s.is_empty()) {
            // An empty last segment carries the previous segment's last term.
            segments.last().map(|s| s.last_term)
        } else {
            meta.last_purged.map(|p| p.term)
        };
        Ok(SegmentLog {
            dir,
            opts,
            _lock: lock,
            segments,
            meta,
            next_index,
            last_term,
            durable_end: next_index,
            generation: 0,
            read_only: !repair,
            scratch: Vec::new(),
            rel_offsets: Vec::new(),
            report,
        })
    }

    /// What the last [`SegmentLog::open`] found.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The largest payload an entry may have.
    pub fn max_payload(&self) -> usize {
        let room = self.opts.segment_size as usize - SEGMENT_HEADER_LEN - RECORD_HEADER_LEN;
        (room & !7).min(u32::MAX as usize)
    }

    /// The index of the next entry to append.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// The first index that can be read (entries below were purged).
    pub fn first_index(&self) -> u64 {
        let purged_end = self.meta.last_purged.map(|p| p.index + 1).unwrap_or(0);
        match self.segments.first() {
            Some(s) => s.first_index().max(purged_end),
            None => purged_end.max(self.next_index),
        }
    }

    /// The id of the last entry, or the last purged id when every entry was purged.
    pub fn last_log_id(&self) -> Option<LogId> {
        if self.next_index > self.first_index() {
            return Some(LogId {
                term: self.last_term.expect("a non-empty log has a last term"),
                index: self.next_index - 1,
            });
        }
        self.meta.last_purged
    }

    pub fn last_purged(&self) -> Option<LogId> {
        self.meta.last_purged
    }

    /// Every entry below this index is durable.
    pub fn durable_end(&self) -> u64 {
        self.durable_end
    }

    /// The segments as (path, first index, end index, bytes used), for tools.
    pub fn segment_summary(&self) -> Vec<(PathBuf, u64, u64, u64)> {
        self.segments
            .iter()
            .map(|s| {
                (
                    s.path.clone(),
                    s.first_index(),
                    s.end_index(),
                    s.write_pos as u64,
                )
            })
            .collect()
    }

    /// Appends entries with buffered writes. They are not durable until a sync that started
    /// after this call returns. Nothing is written if any entry breaks the contract: indexes
    /// must continue the log without a gap and terms must not decrease.
    pub fn append(&mut self, entries: &[NewEntry<'_>]) -> Result<()> {
        self.check_writable()?;
        let Some(first) = entries.first() else {
            return Ok(());
        };
        // The log continues without a gap. A log that holds no entry and was never purged
        // may start anywhere; where it started is recorded (`log_start`) with the first
        // segment, so a lost first segment is detectable at open.
        let fresh = self.meta.last_purged.is_none() && self.segments.iter().all(|s| s.is_empty());
        if fresh && first.index != self.next_index {
            if !self.segments.is_empty() {
                // Forget the empty segments in the metadata first, so a crash between the
                // two steps leaves leftovers (removed at open), never a missing segment.
                let mut meta = self.meta;
                meta.last_segment = None;
                meta.log_start = None;
                meta.store(&self.dir)?;
                self.meta = meta;
            }
            for seg in self.segments.drain(..) {
                fs::remove_file(&seg.path).ctx("remove empty segment", &seg.path)?;
            }
            self.next_index = first.index;
            self.durable_end = first.index;
        }
        if first.index != self.next_index {
            return Err(StorageError::Invalid(format!(
                "append at index {} but the next index is {}",
                first.index, self.next_index
            )));
        }
        let mut term = self.last_term.unwrap_or(0);
        let max = self.max_payload();
        for (i, e) in entries.iter().enumerate() {
            if e.index != first.index + i as u64 {
                return Err(StorageError::Invalid(format!(
                    "entries are not contiguous: index {} after {}",
                    e.index,
                    first.index + i as u64 - 1
                )));
            }
            if e.term < term {
                return Err(StorageError::Invalid(format!(
                    "entry {} has term {} after term {term}",
                    e.index, e.term
                )));
            }
            if e.payload.len() > max {
                return Err(StorageError::EntryTooLarge {
                    size: e.payload.len(),
                    limit: max,
                });
            }
            term = e.term;
        }

        let mut rest = entries;
        while !rest.is_empty() {
            let needs_segment = match self.segments.last() {
                None => true,
                Some(s) => {
                    s.free() < record_len(rest[0].payload.len())
                        || (s.is_empty() && s.first_index() != rest[0].index)
                }
            };
            if needs_segment {
                self.roll_over(rest[0].index)?;
            }
            let seg_free = self.active().free();
            let uid = self.active().header.uid;
            self.scratch.clear();
            self.rel_offsets.clear();
            let mut n = 0;
            for e in rest {
                let len = record_len(e.payload.len());
                if self.scratch.len() + len > seg_free {
                    break;
                }
                self.rel_offsets.push(self.scratch.len() as u32);
                encode_record(&mut self.scratch, uid, e.term, e.index, e.payload);
                n += 1;
            }
            debug_assert!(n > 0, "a fresh segment holds at least one entry");
            let last_term = rest[n - 1].term;
            let seg = self.segments.last_mut().expect("rolled over above");
            seg.write_records(&self.scratch, &self.rel_offsets, last_term)?;
            self.next_index = rest[n - 1].index + 1;
            self.last_term = Some(last_term);
            rest = &rest[n..];
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(StorageError::Invalid(
                "the log was opened read-only".to_string(),
            ));
        }
        Ok(())
    }

    fn active(&self) -> &Segment {
        self.segments.last().expect("caller checked")
    }

    /// Starts a new segment at `first_index`, sealing the active one: it is fdatasync'ed
    /// first, so only the last segment ever holds unsynced bytes.
    fn roll_over(&mut self, first_index: u64) -> Result<()> {
        if let Some(seg) = self.segments.last_mut() {
            if seg.is_empty() {
                // An empty last segment always starts at the next index (appends are
                // contiguous); it is where the entry goes.
                debug_assert_eq!(seg.first_index(), first_index);
                return Ok(());
            }
            if seg.dirty {
                fsutil::sync_data_or_die(&seg.file, &seg.path);
                seg.dirty = false;
            }
        }
        // Only the sealed segment held unsynced entries: everything appended is durable now.
        self.durable_end = self.next_index;
        let seg = Segment::create(&self.dir, first_index, self.opts.segment_size)?;
        // Name the new segment in the metadata before writing to it, so that losing it
        // later is detected; a crash before this leaves an empty leftover, removed at open.
        let mut meta = self.meta;
        meta.last_segment = Some(first_index);
        if meta.last_purged.is_none() && self.segments.is_empty() {
            meta.log_start = Some(first_index);
        }
        meta.store(&self.dir)?;
        self.meta = meta;
        self.segments.push(seg);
        Ok(())
    }

    /// Prepares a group commit: the returned sync, once run, covers every entry appended so
    /// far. Returns `None` when there is nothing to sync.
    pub fn prepare_sync(&mut self) -> Result<Option<PendingSync>> {
        let end = self.next_index;
        let generation = self.generation;
        let Some(seg) = self.segments.last_mut() else {
            self.durable_end = end;
            return Ok(None);
        };
        if !seg.dirty {
            self.durable_end = self.durable_end.max(end);
            return Ok(None);
        }
        seg.dirty = false;
        let f = Arc::clone(&seg.file);
        Ok(Some(PendingSync {
            file: Some((f, seg.path.clone())),
            end,
            generation,
        }))
    }

    /// Records that a prepared sync returned: its entries are durable.
    pub fn complete_sync(&mut self, done: PendingSync) {
        if done.generation == self.generation {
            self.durable_end = self.durable_end.max(done.end.min(self.next_index));
        }
    }

    /// Makes every appended entry durable with one fdatasync; returns the durable end.
    pub fn sync(&mut self) -> Result<u64> {
        if let Some(p) = self.prepare_sync()? {
            p.run();
            self.complete_sync(p);
        }
        Ok(self.durable_end)
    }

    fn segment_of(&self, index: u64) -> Option<&Segment> {
        if index < self.first_index() || index >= self.next_index {
            return None;
        }
        let i = self
            .segments
            .partition_point(|s| s.first_index() <= index)
            .checked_sub(1)?;
        let s = &self.segments[i];
        (index < s.end_index()).then_some(s)
    }

    /// The entry at `index`, if it is in the log.
    pub fn get(&self, index: u64) -> Option<Entry> {
        let s = self.segment_of(index)?;
        let (term, payload) = s.read(index);
        Some(Entry {
            term,
            index,
            payload,
        })
    }

    /// The term of the entry at `index`, if it is in the log.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        Some(self.segment_of(index)?.term_at(index))
    }

    /// The entries in `range` that are in the log, in order. Stops at the first missing one.
    pub fn range(&self, range: Range<u64>) -> Vec<Entry> {
        let start = range.start.max(self.first_index());
        let end = range.end.min(self.next_index);
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        for i in start..end {
            match self.get(i) {
                Some(e) => out.push(e),
                None => break,
            }
        }
        out
    }

    /// Removes every entry after `index` (a Raft conflict). Newer segments are deleted
    /// newest first, then the rest of the segment holding `index` is zeroed and synced, so a
    /// crash at any step leaves a prefix of the old log.
    pub fn truncate_after(&mut self, index: u64) -> Result<()> {
        self.check_writable()?;
        if index.saturating_add(1) >= self.next_index {
            return Ok(());
        }
        if let Some(p) = self.meta.last_purged {
            if index < p.index {
                return Err(StorageError::Invalid(format!(
                    "cannot truncate after {index}: entries up to {} were purged",
                    p.index
                )));
            }
        }
        self.sync()?;
        self.generation += 1;
        let keep = self
            .segments
            .iter()
            .rposition(|s| s.first_index() <= index)
            .map(|i| i + 1)
            .unwrap_or(0);
        if keep < self.segments.len() {
            // First make the metadata name the new newest segment: from then on, newer
            // segments are leftovers that open removes, so a crash mid-way leaves a prefix.
            let mut meta = self.meta;
            meta.last_segment = keep.checked_sub(1).map(|i| self.segments[i].first_index());
            meta.store(&self.dir)?;
            self.meta = meta;
        }
        let mut removed = false;
        while let Some(seg) = self.segments.last() {
            if seg.first_index() <= index {
                break;
            }
            let seg = self.segments.pop().expect("checked");
            fs::remove_file(&seg.path).ctx("remove segment", &seg.path)?;
            removed = true;
        }
        if removed {
            fsutil::fsync_dir(&self.dir)?;
        }
        if let Some(seg) = self.segments.last_mut() {
            seg.truncate_from(index + 1)?;
        }
        self.next_index = index + 1;
        self.durable_end = self.durable_end.min(self.next_index);
        self.last_term = match self.term_at(index) {
            Some(t) => Some(t),
            None => self.meta.last_purged.map(|p| p.term),
        };
        Ok(())
    }

    /// Removes every entry that was not purged (a Raft conflict at the very first entry).
    pub fn truncate_all(&mut self) -> Result<()> {
        self.check_writable()?;
        match self.meta.last_purged {
            Some(p) => self.truncate_after(p.index),
            None => {
                if self.segments.is_empty() {
                    return Ok(());
                }
                self.sync()?;
                self.generation += 1;
                let mut meta = self.meta;
                meta.last_segment = None;
                meta.log_start = None;
                meta.store(&self.dir)?;
                self.meta = meta;
                while let Some(seg) = self.segments.pop() {
                    fs::remove_file(&seg.path).ctx("remove segment", &seg.path)?;
                }
                fsutil::fsync_dir(&self.dir)?;
                self.next_index = 0;
                self.durable_end = 0;
                self.last_term = None;
                Ok(())
            }
        }
    }

    /// Purges entries up to and including `upto` (after a snapshot covers them). The purge
    /// point is persisted first; then every segment whose entries are all purged is deleted.
    /// `upto` may lie beyond the last entry (a snapshot installed from the leader): the log
    /// then continues at `upto.index + 1`.
    pub fn purge_to(&mut self, upto: LogId) -> Result<()> {
        self.check_writable()?;
        if let Some(p) = self.meta.last_purged {
            if upto.index <= p.index {
                return Ok(());
            }
        }
        let pe = upto.index + 1;
        let mut meta = self.meta;
        meta.last_purged = Some(upto);
        if self.segments.last().is_none_or(|s| s.end_index() <= pe) {
            meta.last_segment = None;
        }
        meta.store(&self.dir)?;
        self.meta = meta;
        let mut removed = false;
        while let Some(seg) = self.segments.first() {
            let wholly = seg.end_index() <= pe;
            let shadowed = self.segments.get(1).is_some_and(|n| n.first_index() <= pe);
            if !(wholly || shadowed) {
                break;
            }
            let seg = self.segments.remove(0);
            fs::remove_file(&seg.path).ctx("remove purged segment", &seg.path)?;
            removed = true;
        }
        if removed {
            fsutil::fsync_dir(&self.dir)?;
        }
        // What is left of the first segment before `pe` is purged too: its resident pages
        // go (a purge follows a snapshot, so this bounds the log's resident pages to the
        // entries kept behind the snapshot and those applied since).
        if let Some(seg) = self.segments.first_mut() {
            seg.release_before(pe, true);
        }
        if self.next_index < pe {
            self.next_index = pe;
            self.last_term = Some(upto.term);
        }
        self.durable_end = self.durable_end.max(pe.min(self.next_index));
        if self.segments.is_empty() {
            self.durable_end = self.next_index;
        }
        Ok(())
    }

    /// Gives back this process's resident pages of the entries before `index`: they stay
    /// in the page cache, and a later read of them faults them back in. For a reader that
    /// moves forward through the log (the state machine applying it): what it passed need
    /// not stay resident until the next purge. Changes nothing that can be read.
    pub fn release_before(&mut self, index: u64) {
        for seg in &mut self.segments {
            if seg.first_index() >= index {
                break;
            }
            seg.release_before(index, false);
        }
    }

    /// The persisted metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Persists the vote (durable when this returns).
    pub fn save_vote(&mut self, vote: Vote) -> Result<()> {
        self.check_writable()?;
        let mut meta = self.meta;
        meta.vote = Some(vote);
        meta.store(&self.dir)?;
        self.meta = meta;
        Ok(())
    }

    /// Persists the committed log id (durable when this returns).
    pub fn save_committed(&mut self, committed: Option<LogId>) -> Result<()> {
        self.check_writable()?;
        let mut meta = self.meta;
        meta.committed = committed;
        meta.store(&self.dir)?;
        self.meta = meta;
        Ok(())
    }

    /// Records the committed log id in memory only; it reaches the disk with the next
    /// metadata write (a vote, a roll-over, a truncation or a purge). For Raft the
    /// committed id is a hint that may lag after a restart: persisting it on every commit
    /// would cost three fsyncs per write.
    pub fn note_committed(&mut self, committed: Option<LogId>) {
        self.meta.committed = committed;
    }

    /// Path of the metadata file.
    pub fn meta_path(&self) -> PathBuf {
        self.dir.join(META_FILE)
    }
}
