//! One segment file of the log: its header, its records, and the recovery scan.
//!
//! A segment is a file of fixed size, preallocated with `fallocate`, named by the index of
//! its first entry. It starts with a 64-byte header and holds 8-byte aligned records. Every
//! checksum is salted with the segment's random `uid`, so bytes left over from another
//! segment (a recycled file, a stale copy) never validate here. See ARCHITECTURE.md for the
//! byte diagrams and the crash-case analysis.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{IoContext, Result, StorageError};
use crate::fsutil;
use crate::sys;

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"CAIRNLOG";
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// Bytes of the segment header; records start here.
pub const SEGMENT_HEADER_LEN: usize = 64;
/// Bytes of records read past before their pages are given back (see
/// [`Segment::release_before`]).
pub(crate) const RELEASE_STEP: usize = 1 << 20;

/// Bytes of a record header; the payload follows it.
pub const RECORD_HEADER_LEN: usize = 32;
/// Sector size assumed by the torn-write analysis: a device writes a sector whole or not at
/// all, but sectors of one unsynced write may reach the disk in any order.
const SECTOR: usize = 512;

/// Rounds `n` up to a multiple of 8.
pub(crate) const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Bytes a record with `payload_len` bytes of payload takes in a segment.
pub const fn record_len(payload_len: usize) -> usize {
    align8(RECORD_HEADER_LEN + payload_len)
}

/// The file name of the segment whose first entry is `first_index`.
pub(crate) fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}.seg")
}

/// Parses a segment file name back into its first index.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

fn payload_crc(uid: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&uid.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn header_crc(uid: u64, header_without_crc: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&uid.to_le_bytes());
    h.update(header_without_crc);
    h.finalize()
}

/// Appends one encoded record to `buf`.
pub(crate) fn encode_record(buf: &mut Vec<u8>, uid: u64, term: u64, index: u64, payload: &[u8]) {
    let start = buf.len();
    let len = u32::try_from(payload.len()).expect("payload length checked by the caller");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&payload_crc(uid, payload).to_le_bytes());
    buf.extend_from_slice(&term.to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes()); // reserved for flags
    let hcrc = header_crc(uid, &buf[start..start + 28]);
    buf.extend_from_slice(&hcrc.to_le_bytes());
    buf.extend_from_slice(payload);
    buf.resize(start + record_len(payload.len()), 0);
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// A decoded record header, trusted because its checksum validated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordHeader {
    pub len: u32,
    pub payload_crc: u32,
    pub term: u64,
    pub index: u64,
}

/// What sits at one offset of a segment.
#[derive(Debug)]
enum Slot {
    /// 32 zero bytes (or fewer than 32 bytes left): where the written records end.
    Empty,
    /// A record whose header and payload both validate.
    Record(RecordHeader),
    /// Something that is not a valid record; `torn` says whether the damage looks like an
    /// interrupted write (a sector of it never reached the disk) rather than altered bytes.
    Damaged { torn: bool, reason: String },
}

/// Whether any of the sectors that `range` touches is all zero within `range`: the mark of a
/// write that was cut short before every sector of it reached the disk.
fn has_unwritten_sector(map: &[u8], start: usize, end: usize) -> bool {
    let mut s = start;
    while s < end {
        let sector_end = ((s / SECTOR) + 1) * SECTOR;
        let e = sector_end.min(end);
        if map[s..e].iter().all(|&b| b == 0) {
            return true;
        }
        s = e;
    }
    false
}

fn read_slot(map: &[u8], uid: u64, off: usize) -> Slot {
    if off + RECORD_HEADER_LEN > map.len() {
        return Slot::Empty;
    }
    let h = &map[off..off + RECORD_HEADER_LEN];
    if h.iter().all(|&b| b == 0) {
        return Slot::Empty;
    }
    if header_crc(uid, &h[..28]) != u32_at(h, 28) {
        return Slot::Damaged {
            torn: has_unwritten_sector(map, off, off + RECORD_HEADER_LEN),
            reason: "record header checksum mismatch".into(),
        };
    }
    let hdr = RecordHeader {
        len: u32_at(h, 0),
        payload_crc: u32_at(h, 4),
        term: u64_at(h, 8),
        index: u64_at(h, 16),
    };
    let end = off + record_len(hdr.len as usize);
    if end > map.len() {
        // A validated header never describes a record crossing the segment end: the writer
        // does not produce one.
        return Slot::Damaged {
            torn: false,
            reason: format!("record of {} bytes crosses the segment end", hdr.len),
        };
    }
    let payload = &map[off + RECORD_HEADER_LEN..off + RECORD_HEADER_LEN + hdr.len as usize];
    if payload_crc(uid, payload) != hdr.payload_crc {
        return Slot::Damaged {
            torn: has_unwritten_sector(map, off + RECORD_HEADER_LEN, end),
            reason: format!("payload checksum mismatch (index {})", hdr.index),
        };
    }
    Slot::Record(hdr)
}

/// The parsed 64-byte segment header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SegmentHeader {
    pub uid: u64,
    pub first_index: u64,
    pub size: u64,
}

impl SegmentHeader {
    fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.uid.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_index.to_le_bytes());
        b[32..40].copy_from_slice(&self.size.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8], path: &Path) -> Result<SegmentHeader> {
        let corrupt = |reason: String| StorageError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason,
        };
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(corrupt(format!(
                "file is {} bytes, shorter than a segment header",
                b.len()
            )));
        }
        if &b[0..8] != SEGMENT_MAGIC {
            return Err(corrupt("not a Cairn log segment (bad magic)".into()));
        }
        if crc32fast::hash(&b[..60]) != u32_at(b, 60) {
            return Err(corrupt("segment header checksum mismatch".into()));
        }
        let version = u32_at(b, 8);
        if version != SEGMENT_VERSION {
            return Err(corrupt(format!(
                "segment format version {version}, this build reads version {SEGMENT_VERSION}"
            )));
        }
        Ok(SegmentHeader {
            uid: u64_at(b, 16),
            first_index: u64_at(b, 24),
            size: u64_at(b, 32),
        })
    }
}

/// One open segment: the file for writes, a read-only mapping for reads, and the offsets of
/// its records.
#[derive(Debug)]
pub(crate) struct Segment {
    pub path: PathBuf,
    /// Shared with the syncs in flight ([`crate::log::PendingSync`]): a sync on another
    /// thread holds the file open without a `dup` (two system calls per sync).
    pub file: Arc<File>,
    /// The whole file, mapped read-only; entries handed out are slices of it.
    pub map: Bytes,
    /// The same mapping, to give its pages back once they are no longer needed.
    mapping: sys::Mapping,
    /// Pages before this offset were given back (see [`Segment::release_before`]).
    released_to: usize,
    pub header: SegmentHeader,
    /// `offsets[i]` is where the record of index `first_index + i` starts.
    pub offsets: Vec<u32>,
    /// Term of the last record, to check that terms never decrease.
    pub last_term: u64,
    /// Where the next record goes: the end of the valid records.
    pub write_pos: usize,
    /// Written since the last fdatasync.
    pub dirty: bool,
}

/// What the recovery scan found at the end of a segment.
#[derive(Debug, Clone, Default)]
pub struct TailRepair {
    /// Offset where the valid records end.
    pub cut_at: u64,
    /// Bytes of a torn write after `cut_at` that were zeroed.
    pub zeroed_bytes: u64,
    pub reason: String,
}

impl Segment {
    /// Creates a new segment: temp file, `fallocate` to full size, header, fsync, rename,
    /// directory fsync. A crash at any step leaves either no segment or an empty valid one.
    pub fn create(dir: &Path, first_index: u64, size: u64) -> Result<Segment> {
        let path = dir.join(segment_file_name(first_index));
        let tmp = fsutil::tmp_path(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx("create segment", &tmp)?;
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, size)
            .map_err(std::io::Error::from)
            .ctx("fallocate", &tmp)?;
        let header = SegmentHeader {
            uid: rand::random::<u64>(),
            first_index,
            size,
        };
        file.write_all_at(&header.encode(), 0)
            .ctx("write segment header", &tmp)?;
        fsutil::sync_all_or_die(&file, &tmp);
        std::fs::rename(&tmp, &path).ctx("rename segment", &path)?;
        fsutil::fsync_dir(dir)?;
        let (map, mapping) =
            sys::map_readonly_releasable(&file, size as usize).ctx("mmap", &path)?;
        Ok(Segment {
            path,
            file: Arc::new(file),
            map,
            mapping,
            released_to: 0,
            header,
            offsets: Vec::new(),
            last_term: 0,
            write_pos: SEGMENT_HEADER_LEN,
            dirty: false,
        })
    }

    /// Opens a segment and scans its records.
    ///
    /// `expected_first` is the index the previous segment ends at plus one (None for the
    /// first segment). `is_last` decides what damage at the end means: in the last segment a
    /// torn write (a write the crash interrupted, recognisable by sectors that never reached
    /// the disk, with no valid record after it) is cut and zeroed; everywhere else, and for
    /// any damage that does not look torn, opening fails naming file and offset.
    pub fn open(
        path: &Path,
        expected_first: Option<u64>,
        min_term: u64,
        is_last: bool,
        repair: bool,
    ) -> Result<(Segment, Option<TailRepair>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(repair)
            .open(path)
            .ctx("open segment", path)?;
        let file_len = file.metadata().ctx("stat segment", path)?.len();
        let mut head = [0u8; SEGMENT_HEADER_LEN];
        let n = file
            .read_at(&mut head, 0)
            .ctx("read segment header", path)?;
        let header = SegmentHeader::decode(&head[..n], path)?;
        let name_index = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(parse_segment_file_name);
        if name_index != Some(header.first_index) {
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                offset: 0,
                reason: format!(
                    "header says first index {}, file name disagrees",
                    header.first_index
                ),
            });
        }
        if let Some(exp) = expected_first {
            if header.first_index != exp {
                return Err(StorageError::Corrupt {
                    path: path.to_path_buf(),
                    offset: 0,
                    reason: format!(
                        "segment starts at index {}, but the previous segment ends at {}: \
                         entries are missing",
                        header.first_index,
                        exp - 1
                    ),
                });
            }
        }
        if file_len != header.size {
            // Segments are preallocated to their full size and never shrunk: a different
            // length means the file was cut or extended by something other than Cairn.
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                offset: file_len.min(header.size),
                reason: format!(
                    "segment file is {file_len} bytes, its header says {}: the file was \
                     truncated or extended outside Cairn",
                    header.size
                ),
            });
        }
        let (map, mapping) =
            sys::map_readonly_releasable(&file, file_len as usize).ctx("mmap", path)?;
        let mut seg = Segment {
            path: path.to_path_buf(),
            file: Arc::new(file),
            map,
            mapping,
            released_to: 0,
            header,
            offsets: Vec::new(),
            last_term: min_term,
            write_pos: SEGMENT_HEADER_LEN,
            dirty: false,
        };
        let found = seg.scan(is_last, repair)?;
        // The scan read every record through the mapping; those pages need not stay
        // resident in this process (reads fault them back in from the page cache).
        seg.mapping.release(0..seg.write_pos);
        Ok((seg, found))
    }

    /// Gives back this process's resident pages of the records before `index`. Slices
    /// handed out earlier stay valid: a later read faults the page back in from the page
    /// cache. `all` releases from the start of the segment (after a purge: pages a slower
    /// reader faulted back in go too); otherwise only what lies beyond the last release,
    /// and only once at least [`RELEASE_STEP`] bytes gathered, so readers moving forward
    /// cost one `madvise` per step, not one per read.
    pub fn release_before(&mut self, index: u64, all: bool) {
        let end = if index >= self.end_index() {
            self.write_pos
        } else if index <= self.header.first_index {
            return;
        } else {
            self.offsets[(index - self.header.first_index) as usize] as usize
        };
        if all {
            self.mapping.release(0..end);
            self.released_to = self.released_to.max(end);
        } else if end >= self.released_to + RELEASE_STEP {
            self.mapping.release(self.released_to..end);
            self.released_to = end;
        }
    }

    fn corrupt(&self, offset: usize, reason: String) -> StorageError {
        StorageError::Corrupt {
            path: self.path.clone(),
            offset: offset as u64,
            reason,
        }
    }

    /// Validates every record; `repair` says whether a torn tail may be zeroed (a read-only
    /// check only reports it).
    fn scan(&mut self, is_last: bool, repair: bool) -> Result<Option<TailRepair>> {
        let map = self.map.clone();
        let map = &map[..];
        let uid = self.header.uid;
        let mut off = SEGMENT_HEADER_LEN;
        let mut next_index = self.header.first_index;
        let stop = loop {
            match read_slot(map, uid, off) {
                Slot::Record(h) => {
                    if h.index != next_index {
                        break Slot::Damaged {
                            torn: false,
                            reason: format!("record has index {}, expected {next_index}", h.index),
                        };
                    }
                    if h.term < self.last_term {
                        break Slot::Damaged {
                            torn: false,
                            reason: format!(
                                "record {} has term {} after term {}",
                                h.index, h.term, self.last_term
                            ),
                        };
                    }
                    self.offsets.push(off as u32);
                    self.last_term = h.term;
                    next_index += 1;
                    off += record_len(h.len as usize);
                }
                other => break other,
            }
        };
        self.write_pos = off;
        // Everything after the last valid record should be zero: the file was preallocated
        // with zeros and truncation zeroes what it removes.
        let junk_end = match map[off..].iter().rposition(|&b| b != 0) {
            None => return Ok(None),
            Some(p) => off + p + 1,
        };
        if let Some(valid_at) = find_valid_record(map, uid, off + 8, junk_end, next_index) {
            return Err(self.corrupt(
                off,
                format!(
                    "{}; a valid record follows at byte {valid_at}, so this is damage inside \
                     the log, not a torn tail: refusing to drop entries that may have been \
                     acknowledged",
                    describe(&stop)
                ),
            ));
        }
        let torn = match &stop {
            Slot::Damaged { torn, .. } => *torn,
            // Zeros where a record should start, then non-zero bytes: the first sectors of a
            // write were lost and later ones landed.
            Slot::Empty => true,
            Slot::Record(_) => unreachable!("the scan stops only at a non-record"),
        };
        if !is_last || !torn {
            let what = if is_last {
                "the damage does not look like an interrupted write"
            } else {
                "only the last segment may end in a torn write"
            };
            return Err(self.corrupt(off, format!("{}; {what}", describe(&stop))));
        }
        // A torn tail: cut it by zeroing, so later scans see a clean end.
        let zeroed = junk_end - off;
        if repair {
            zero_range(&self.file, &self.path, off, junk_end)?;
            fsutil::sync_data_or_die(&self.file, &self.path);
        }
        Ok(Some(TailRepair {
            cut_at: off as u64,
            zeroed_bytes: zeroed as u64,
            reason: describe(&stop),
        }))
    }

    pub fn first_index(&self) -> u64 {
        self.header.first_index
    }

    /// Index one past the last record (equals `first_index` when empty).
    pub fn end_index(&self) -> u64 {
        self.header.first_index + self.offsets.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// Bytes still free for records.
    pub fn free(&self) -> usize {
        self.header.size as usize - self.write_pos
    }

    /// The record at `index`, which must lie in this segment.
    pub fn read(&self, index: u64) -> (u64, Bytes) {
        let i = (index - self.header.first_index) as usize;
        let off = self.offsets[i] as usize;
        let len = u32_at(&self.map, off) as usize;
        let term = u64_at(&self.map, off + 8);
        let payload = self
            .map
            .slice(off + RECORD_HEADER_LEN..off + RECORD_HEADER_LEN + len);
        (term, payload)
    }

    pub fn term_at(&self, index: u64) -> u64 {
        let i = (index - self.header.first_index) as usize;
        u64_at(&self.map, self.offsets[i] as usize + 8)
    }

    /// Writes already-encoded records at the end. `records` holds `count` records; their
    /// offsets relative to the start of `records` are in `rel_offsets`.
    pub fn write_records(
        &mut self,
        records: &[u8],
        rel_offsets: &[u32],
        last_term: u64,
    ) -> Result<()> {
        debug_assert!(records.len() <= self.free());
        self.file
            .write_all_at(records, self.write_pos as u64)
            .ctx("write", &self.path)?;
        let base = self.write_pos as u32;
        self.offsets.extend(rel_offsets.iter().map(|r| base + r));
        self.write_pos += records.len();
        self.last_term = last_term;
        self.dirty = true;
        Ok(())
    }

    /// Removes the records from `index` on (which must lie in this segment) by zeroing them,
    /// then syncs, so they can never come back at recovery.
    pub fn truncate_from(&mut self, index: u64) -> Result<()> {
        let i = (index - self.header.first_index) as usize;
        if i >= self.offsets.len() {
            return Ok(());
        }
        let from = self.offsets[i] as usize;
        zero_range(&self.file, &self.path, from, self.write_pos)?;
        fsutil::sync_data_or_die(&self.file, &self.path);
        self.offsets.truncate(i);
        self.write_pos = from;
        self.last_term = if i == 0 { 0 } else { self.term_at(index - 1) };
        self.dirty = false;
        Ok(())
    }
}

fn describe(slot: &Slot) -> String {
    match slot {
        Slot::Empty => "zero bytes where a record should start".into(),
        Slot::Damaged { reason, .. } => reason.clone(),
        Slot::Record(h) => format!("record {}", h.index),
    }
}

/// Looks for a record that validates at an 8-aligned offset in `[from, to)` with an index at
/// least `min_index`; stale records of lower index cannot exist in a segment (truncation
/// zeroes them) but are not evidence of lost entries either.
fn find_valid_record(
    map: &[u8],
    uid: u64,
    from: usize,
    to: usize,
    min_index: u64,
) -> Option<usize> {
    let mut off = align8(from);
    while off < to {
        if let Slot::Record(h) = read_slot(map, uid, off) {
            if h.index >= min_index {
                return Some(off);
            }
        }
        off += 8;
    }
    None
}

static ZEROS: [u8; 64 * 1024] = [0u8; 64 * 1024];

fn zero_range(file: &File, path: &Path, from: usize, to: usize) -> Result<()> {
    let mut off = from;
    while off < to {
        let n = (to - off).min(ZEROS.len());
        file.write_all_at(&ZEROS[..n], off as u64)
            .ctx("zero", path)?;
        off += n;
    }
    Ok(())
}
