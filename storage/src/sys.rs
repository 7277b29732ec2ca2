//! The only module of `cairn-storage` that contains `unsafe`: memory maps and reading rkyv
//! archives in place. Everything here is a thin wrapper with the reason it is sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::marker::PhantomData;

use bytes::Bytes;
use memmap2::{Mmap, MmapOptions};
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
