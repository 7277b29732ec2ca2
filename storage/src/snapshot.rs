//! Snapshot files: an rkyv archive of the state machine behind a small checksummed header.
//!
//! A snapshot is written to a temp file, fsynced, renamed into place and the directory
//! fsynced, so a crash leaves the old set of snapshots or the new one, never half a file
//! under a final name. It is opened by mmap, its checksum and its archive validated once
//! (bytecheck), and then read in place: nothing is deserialized to answer a read.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "CAIRNSNP"
//!      8     4  format version (3; 2 had no session checks, 1 a placeholder catalog)
//!     12     4  header length (64)
//!     16     8  last included term
//!     24     8  last included index
//!     32     8  body length in bytes
//!     40     4  crc32 of the body
//!     44     4  flags (bit 0: a last included log id is present)
//!     48    12  reserved, zero
//!     60     4  crc32 of bytes 0..60
//!     64     -  body: the rkyv archive (its root object sits at the end)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::{Arena, ArenaHandle};
use rkyv::ser::writer::IoWriter;

use crate::error::{IoContext, Result, StorageError};
use crate::fsutil;
use crate::sys::{self, ValidatedArchive};
use crate::LogId;

const SNAP_MAGIC: &[u8; 8] = b"CAIRNSNP";
const SNAP_VERSION: u32 = 3;
/// Bytes of the header; the archive starts here (a multiple of 16, so the archive is
/// aligned in the page-aligned mapping).
pub const SNAPSHOT_HEADER_LEN: usize = 64;
/// Snapshots kept by default: the newest and the one before it.
pub const DEFAULT_KEEP: usize = 2;

/// The file name of a snapshot that covers the log up to `last`.
pub fn snapshot_file_name(last: Option<LogId>) -> String {
    match last {
        Some(l) => format!("snap-{:020}-{:020}.snap", l.index, l.term),
        None => "snap-empty.snap".to_string(),
    }
}

/// Whether `name` is a snapshot file name (and nothing else: no directories).
pub fn is_snapshot_file_name(name: &str) -> bool {
    parse_snapshot_file_name(name).is_some()
}

fn parse_snapshot_file_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    if rest == "empty" {
        return Some((0, 0));
    }
    let (i, t) = rest.split_once('-')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(i) || !digits(t) {
        return None;
    }
    Some((i.parse().ok()?, t.parse().ok()?))
}

fn encode_header(last: Option<LogId>, body_len: u64, body_crc: u32) -> [u8; SNAPSHOT_HEADER_LEN] {
    let mut h = [0u8; SNAPSHOT_HEADER_LEN];
    h[0..8].copy_from_slice(SNAP_MAGIC);
    h[8..12].copy_from_slice(&SNAP_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(SNAPSHOT_HEADER_LEN as u32).to_le_bytes());
    if let Some(l) = last {
        h[16..24].copy_from_slice(&l.term.to_le_bytes());
        h[24..32].copy_from_slice(&l.index.to_le_bytes());
        h[44..48].copy_from_slice(&1u32.to_le_bytes());
    }
    h[32..40].copy_from_slice(&body_len.to_le_bytes());
    h[40..44].copy_from_slice(&body_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Where a snapshot's archive is serialized to: the temp file, through a buffer, with the
/// body's crc and length counted on the way (the header is written last).
pub struct BodyWriter {
    file: BufWriter<File>,
    crc: crc32fast::Hasher,
    len: u64,
}

impl Write for BodyWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Bytes buffered between the serializer and the file. Below glibc's initial mmap
/// threshold (128 KiB) on purpose: freeing a larger mmapped block raises that threshold
/// process-wide, and every block below it then comes from the heaps and stays resident.
const WRITE_BUFFER: usize = 64 * 1024;

/// Capacity of the serializer's scratch arena: above glibc's largest dynamic mmap threshold
/// (32 MiB), so it is always a mapping of its own (only touched pages become resident).
const SCRATCH_ARENA: usize = 40 << 20;

/// The serializer [`write_snapshot`] runs a state through.
pub type SnapshotSerializer<'a> =
    HighSerializer<IoWriter<BodyWriter>, ArenaHandle<'a>, rancor::Error>;

/// Serializes `state` and writes it as the snapshot covering the log up to `last` in `dir`.
/// Returns the path. Older snapshots beyond the newest `keep` are deleted afterwards.
///
/// The archive is serialized straight into the file (through a 1 MiB buffer), never held
/// whole in memory: a store of 1 M keys made a 290 MB buffer on every snapshot.
pub fn write_snapshot<T>(dir: &Path, last: Option<LogId>, state: &T, keep: usize) -> Result<PathBuf>
where
    T: for<'a> rkyv::Serialize<SnapshotSerializer<'a>>,
{
    publish(dir, last, keep, |f, tmp| {
        // The archive starts after the header; the header is filled in once the body's
        // length and crc are known.
        f.write_all(&[0u8; SNAPSHOT_HEADER_LEN])
            .ctx("write snapshot", tmp)?;
        let body = BodyWriter {
            file: BufWriter::with_capacity(WRITE_BUFFER, f.try_clone().ctx("write snapshot", tmp)?),
            crc: crc32fast::Hasher::new(),
            len: 0,
        };
        // The serializer's scratch (e.g. one resolver per KV record while the record array
        // is written: ≈ 20 MB for 1 M keys) lives in an arena larger than glibc's largest
        // dynamic mmap threshold, so it is always its own mapping, returned whole when
        // dropped, and never raises that threshold (see `WRITE_BUFFER`).
        let mut arena = Arena::with_capacity(SCRATCH_ARENA);
        let body = rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            state,
            IoWriter::new(body),
            arena.acquire(),
        )
        .map_err(|e| StorageError::Invalid(format!("serializing the snapshot: {e}")))?
        .into_inner();
        let BodyWriter { file, crc, len } = body;
        file.into_inner()
            .map_err(|e| e.into_error())
            .ctx("write snapshot", tmp)?;
        f.write_all_at(&encode_header(last, len, crc.finalize()), 0)
            .ctx("write snapshot", tmp)
    })
}

/// Writes a snapshot file the way both writers do: `write` fills a temporary file, which
/// is then synced, renamed into place (the directory synced too), and the snapshots beyond
/// the newest `keep` are deleted.
fn publish(
    dir: &Path,
    last: Option<LogId>,
    keep: usize,
    write: impl FnOnce(&mut File, &Path) -> Result<()>,
) -> Result<PathBuf> {
    fs::create_dir_all(dir).ctx("create directory", dir)?;
    let path = dir.join(snapshot_file_name(last));
    let tmp = fsutil::tmp_path(&path);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx("create snapshot", &tmp)?;
        write(&mut f, &tmp)?;
        fsutil::sync_all_or_die(&f, &tmp);
    }
    fs::rename(&tmp, &path).ctx("rename snapshot", &path)?;
    fsutil::fsync_dir(dir)?;
    prune_snapshots(dir, keep.max(1))?;
    Ok(path)
}

/// The whole snapshot file at `path`, mapped read-only (what a leader sends a follower);
/// nothing is read until the bytes are touched, and the mapping goes when the last slice
/// of it is dropped. Snapshot files are never written after they are renamed into place.
pub fn map_snapshot_file(path: &Path) -> Result<Bytes> {
    let file = File::open(path).ctx("open snapshot", path)?;
    let len = file.metadata().ctx("stat snapshot", path)?.len() as usize;
    sys::map_readonly(&file, len).ctx("mmap", path)
}

/// Writes an already serialized archive as a snapshot (see [`write_snapshot`]).
pub fn write_snapshot_bytes(
    dir: &Path,
    last: Option<LogId>,
    body: &[u8],
    keep: usize,
) -> Result<PathBuf> {
    publish(dir, last, keep, |f, tmp| {
        f.write_all(&encode_header(
            last,
            body.len() as u64,
            crc32fast::hash(body),
        ))
        .ctx("write snapshot", tmp)?;
        f.write_all(body).ctx("write snapshot", tmp)
    })
}

/// Snapshot files in `dir`, newest first.
pub fn list_snapshots(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<((u64, u64), PathBuf)> = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx("read directory", dir),
    };
    for ent in rd {
        let ent = ent.ctx("read directory", dir)?;
        let name = ent.file_name();
        if let Some(key) = name.to_str().and_then(parse_snapshot_file_name) {
            found.push((key, ent.path()));
        }
    }
    found.sort_by_key(|b| std::cmp::Reverse(b.0));
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Deletes all but the newest `keep` snapshots, and leftover temp files of interrupted
/// writes.
pub fn prune_snapshots(dir: &Path, keep: usize) -> Result<usize> {
    let mut removed = 0;
    for old in list_snapshots(dir)?.into_iter().skip(keep) {
        fs::remove_file(&old).ctx("remove old snapshot", &old)?;
        removed += 1;
    }
    for ent in fs::read_dir(dir).ctx("read directory", dir)? {
        let ent = ent.ctx("read directory", dir)?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap-") && name.ends_with(".tmp") {
            fs::remove_file(ent.path()).ctx("remove temp snapshot", ent.path())?;
            removed += 1;
        }
    }
    if removed > 0 {
        fsutil::fsync_dir(dir)?;
    }
    Ok(removed)
}

/// An open, validated snapshot, read in place from its mapping.
pub struct Snapshot<T: rkyv::Archive> {
    path: PathBuf,
    last: Option<LogId>,
    file_len: usize,
    /// The archive, a slice of the file's mapping, validated at open.
    archive: ValidatedArchive<T::Archived>,
}

impl<T: rkyv::Archive> std::fmt::Debug for Snapshot<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("path", &self.path)
            .field("last", &self.last)
            .field("bytes", &self.file_len)
            .finish()
    }
}

impl<T> Snapshot<T>
where
    T: rkyv::Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    /// Opens `path`, checks the header and body checksums, and validates the archive once.
    pub fn open(path: &Path) -> Result<Snapshot<T>> {
        let bad = |reason: String| StorageError::CorruptSnapshot {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).ctx("open snapshot", path)?;
        let len = file.metadata().ctx("stat snapshot", path)?.len() as usize;
        if len < SNAPSHOT_HEADER_LEN {
            return Err(bad(format!(
                "file is {len} bytes, shorter than the {SNAPSHOT_HEADER_LEN}-byte header"
            )));
        }
        let map = sys::map_readonly(&file, len).ctx("mmap", path)?;
        let h = &map[..SNAPSHOT_HEADER_LEN];
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4"));
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8"));
        if &h[0..8] != SNAP_MAGIC {
            return Err(bad("not a Cairn snapshot (bad magic)".into()));
        }
        if crc32fast::hash(&h[..60]) != u32_at(60) {
            return Err(bad("header checksum mismatch".into()));
        }
        if u32_at(8) != SNAP_VERSION {
            return Err(bad(format!(
                "format version {}, this build reads version {SNAP_VERSION}",
                u32_at(8)
            )));
        }
        let body_len = u64_at(32) as usize;
        if len != SNAPSHOT_HEADER_LEN + body_len {
            return Err(bad(format!(
                "file is {len} bytes, the header promises {} (truncated or extended)",
                SNAPSHOT_HEADER_LEN + body_len
            )));
        }
        let body = &map[SNAPSHOT_HEADER_LEN..];
        if crc32fast::hash(body) != u32_at(40) {
            return Err(bad("body checksum mismatch".into()));
        }
        let archive = ValidatedArchive::new(map.slice(SNAPSHOT_HEADER_LEN..))
            .map_err(|e| bad(format!("archive does not validate: {e}")))?;
        let last = (u32_at(44) & 1 != 0).then(|| LogId {
            term: u64_at(16),
            index: u64_at(24),
        });
        Ok(Snapshot {
            path: path.to_path_buf(),
            last,
            file_len: len,
            archive,
        })
    }
}

impl<T: rkyv::Archive> Snapshot<T> {
    /// The archived state, read in place.
    pub fn state(&self) -> &T::Archived {
        self.archive.get()
    }

    /// The last log id the snapshot includes.
    pub fn last_included(&self) -> Option<LogId> {
        self.last
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw archive bytes, e.g. to send the snapshot to a follower.
    pub fn archive_bytes(&self) -> Bytes {
        self.archive.bytes().clone()
    }
}
