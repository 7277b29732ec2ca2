//! The only module of `cairn-storage` that contains `unsafe`: memory maps and reading rkyv
//! archives in place. Everything here is a thin wrapper with the reason it is sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions, UncheckedAdvice};
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;

/// Maps `len` bytes of `file` read-only and shared, and hands the mapping out as `Bytes`, so
/// slices of it can be given to readers without copying and keep the mapping alive.
///
/// The mapping is never written through: writes go through the file descriptor (buffered
/// `pwrite`), which shares the page cache with this mapping, so readers see them.
pub(crate) fn map_readonly(file: &File, len: usize) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: memmap2 marks mapping unsafe because another writer could change or shrink the
    // file while it is mapped. Cairn owns its data directory (a lock file keeps a second
    // process out), writes to a segment only beyond the end of the records it has handed
    // out, never shrinks a mapped file (segments are preallocated to their full size and
    // deleted whole), and only maps snapshot files after they were renamed into place, after
    // which they are never written again. Bytes beyond the file's end are never mapped: `len`
    // is at most the file's length, checked by every caller.
    let map: Mmap = unsafe { MmapOptions::new().len(len).map(file)? };
    Ok(Bytes::from_owner(map))
}

/// A read-only mapping (see [`map_readonly`]) whose resident pages can be given back.
#[derive(Debug, Clone)]
pub(crate) struct Mapping(Arc<Mmap>);

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// [`map_readonly`], also returning a handle to release the mapping's pages with.
pub(crate) fn map_readonly_releasable(file: &File, len: usize) -> io::Result<(Bytes, Mapping)> {
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
    }
    // SAFETY: as in `map_readonly`.
    let map: Mmap = unsafe { MmapOptions::new().len(len).map(file)? };
    let mapping = Mapping(Arc::new(map));
    Ok((Bytes::from_owner(mapping.clone()), mapping))
}

impl Mapping {
    /// Drops this process's page-table entries for the whole pages inside `range`, so they
    /// stop counting in its resident memory; the pages stay in the page cache. Advisory:
    /// a failure is ignored.
    pub(crate) fn release(&self, range: Range<usize>) {
        let page = page_size();
        let start = range.start.div_ceil(page) * page;
        let end = (range.end.min(self.0.len()) / page) * page;
        if start >= end {
            return;
        }
        // SAFETY: MADV_DONTNEED on a shared, read-only file mapping discards only this
        // process's page-table entries: the next access faults the same bytes back in from
        // the page cache (or the file), so slices of the mapping still handed out read the
        // same contents afterwards. Nothing is ever written through the mapping, so no
        // private or dirty data can be lost, and the file is never shrunk while mapped (see
        // `map_readonly`), so no access can fault beyond its end.
        let _ = unsafe {
            self.0
                .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
        };
    }
}

fn page_size() -> usize {
    rustix::param::page_size()
}

/// Bytes that were validated once as an rkyv archive of `T` and are read in place from then
/// on. The only way to build one is [`ValidatedArchive::new`], which runs bytecheck.
pub(crate) struct ValidatedArchive<T> {
    bytes: Bytes,
    _archived: PhantomData<fn() -> T>,
}

impl<T: rkyv::Portable> ValidatedArchive<T> {
    pub(crate) fn new(bytes: Bytes) -> Result<Self, rancor::Error>
    where
        T: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
    {
        rkyv::access::<T, rancor::Error>(&bytes)?;
        Ok(ValidatedArchive {
            bytes,
            _archived: PhantomData,
        })
    }

    pub(crate) fn get(&self) -> &T {
        // SAFETY: `new` validated exactly these bytes as a `T` archive, and `Bytes` is
        // immutable. They come from a read-only mapping of a snapshot file that is never
        // written after being renamed into place (see `map_readonly`).
        unsafe { rkyv::access_unchecked::<T>(&self.bytes) }
    }

    pub(crate) fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}
