//! The ordered set of a shard's entries: sorted chunks of up to [`CHUNK`] entry handles,
//! indexed by their first key.
//!
//! Why not a `BTreeSet<Stored>`: its leaves hold 11 handles and split in the middle, so
//! keys written in ascending order (the usual way a store is filled, and what `loadgen
//! --preload` does) leave every leaf at 6 of 11: ≈40 bytes of tree per entry. A chunk that
//! overflows because a key was appended at its end starts a new chunk instead of splitting,
//! so ascending writes fill chunks completely (≈17 bytes per entry); other inserts split
//! in the middle as a B-tree does. Lookups are a `BTreeMap` search over the chunks' first
//! keys, then a search inside one chunk.
//!
//! The search inside a chunk does not touch the entries it passes: each entry's handle
//! points at its own allocation, and comparing keys cost one cache miss per entry compared
//! (`ordered::find` was 15.9 % of a dev server's core under stale reads). A chunk keeps the
//! length of the prefix all its keys share and, per entry, the next 4 key bytes as a
//! big-endian `u32` (zero-padded): keys in order have non-decreasing fingerprints, a
//! strictly smaller or larger fingerprint decides a comparison, and only entries with the
//! searched key's own fingerprint (usually one) are compared in full. About 4 more bytes
//! per entry.

use std::collections::{btree_map, BTreeMap};
use std::ops::Bound;

use super::stored::Stored;

/// Entries per chunk at most.
pub(crate) const CHUNK: usize = 64;

/// Sorted entries with distinct keys. Invariants: every chunk holds 1..=CHUNK entries in
/// key order, is indexed by its first entry's key, and holds only keys below the next
/// chunk's first key.
#[derive(Debug, Clone, Default)]
pub(crate) struct EntrySet {
    chunks: BTreeMap<Box<[u8]>, Chunk>,
    len: usize,
}

/// Up to [`CHUNK`] entries in key order, with their fingerprints. Invariants: every key
/// starts with the first key's `lcp` bytes, and `fps[i]` is `fingerprint(key i, lcp)`.
#[derive(Debug, Clone)]
struct Chunk {
    entries: Vec<Stored>,
    lcp: usize,
    fps: Vec<u32>,
}

/// The 4 key bytes after `lcp`, big-endian, zero-padded.
fn fingerprint(key: &[u8], lcp: usize) -> u32 {
    let tail = key.get(lcp..).unwrap_or(&[]);
    let mut b = [0u8; 4];
    let n = tail.len().min(4);
    b[..n].copy_from_slice(&tail[..n]);
    u32::from_be_bytes(b)
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Chunk {
    fn new() -> Chunk {
        // One spare slot: a full chunk takes the entry that overflows it before it is
        // split, without growing its allocation.
        Chunk {
            entries: Vec::with_capacity(CHUNK + 1),
            lcp: 0,
            fps: Vec::with_capacity(CHUNK + 1),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn first_key(&self) -> &[u8] {
        self.entries[0].key()
    }

    /// Recomputes the shared prefix and every fingerprint.
    fn reindex(&mut self) {
        self.lcp = match (self.entries.first(), self.entries.last()) {
            (Some(f), Some(l)) => common_prefix(f.key(), l.key()),
            _ => 0,
        };
        let lcp = self.lcp;
        self.fps.clear();
        self.fps
            .extend(self.entries.iter().map(|e| fingerprint(e.key(), lcp)));
    }

    /// As `binary_search_by` on the keys. `first` is the chunk's first key (the caller
    /// usually holds it already, from the index).
    fn find(&self, first: &[u8], key: &[u8]) -> Result<usize, usize> {
        if self.entries.is_empty() {
            return Err(0);
        }
        let lcp = self.lcp;
        if key.len() < lcp || key[..lcp] != first[..lcp] {
            // The key lacks the prefix every entry has: it compares with all of them as
            // with the prefix, so it lies before or after the whole chunk.
            return if key < first {
                Err(0)
            } else {
                Err(self.entries.len())
            };
        }
        let f = fingerprint(key, lcp);
        let lo = self.fps.partition_point(|&x| x < f);
        let hi = lo + self.fps[lo..].partition_point(|&x| x == f);
        match self.entries[lo..hi].binary_search_by(|e| e.key().cmp(key)) {
            Ok(i) => Ok(lo + i),
            Err(i) => Err(lo + i),
        }
    }

    /// Inserts `entry` at `i` (its place in key order).
    fn insert(&mut self, i: usize, entry: Stored) {
        let key = entry.key();
        let ends = self.entries.is_empty() || i == 0 || i == self.entries.len();
        let keeps_prefix = !ends || {
            // A new first or last key may share less with the other end.
            let other = if i == 0 {
                self.entries.last()
            } else {
                self.entries.first()
            };
            other.is_some_and(|o| common_prefix(o.key(), key) >= self.lcp)
        };
        if keeps_prefix {
            self.fps.insert(i, fingerprint(key, self.lcp));
            self.entries.insert(i, entry);
        } else {
            self.entries.insert(i, entry);
            self.reindex();
        }
    }

    fn remove(&mut self, i: usize) -> Stored {
        // The remaining keys still share the prefix: the fingerprints stay valid.
        self.fps.remove(i);
        self.entries.remove(i)
    }

    /// Splits off the entries from `at` on into a new chunk.
    fn split_off(&mut self, at: usize) -> Chunk {
        let mut right = Chunk::new();
        right.entries.extend(self.entries.drain(at..));
        right.reindex();
        self.fps.truncate(at);
        right
    }

    /// Appends every entry of `other` (all above this chunk's keys).
    fn append(&mut self, other: Chunk) {
        self.entries.extend(other.entries);
        self.reindex();
    }
}

impl EntrySet {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk that holds `key` if anything does, and its first key.
    fn chunk_of(&self, key: &[u8]) -> Option<(&[u8], &Chunk)> {
        self.chunks
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map(|(k, c)| (&k[..], c))
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Stored> {
        let (first, chunk) = self.chunk_of(key)?;
        chunk.find(first, key).ok().map(|i| &chunk.entries[i])
    }

    /// The entry with `key`, to replace in place (its key must stay the same).
    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut Stored> {
        let (first, chunk) = self
            .chunks
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()?;
        let i = chunk.find(first, key).ok()?;
        Some(&mut chunk.entries[i])
    }

    /// Inserts `entry`, or replaces the entry with its key and returns that.
    pub(crate) fn replace(&mut self, entry: Stored) -> Option<Stored> {
        let key = entry.key();
        let target = self
            .chunks
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back();
        let right = match target {
            Some((first, chunk)) => match chunk.find(first, key) {
                Ok(i) => return Some(std::mem::replace(&mut chunk.entries[i], entry)),
                Err(i) => {
                    chunk.insert(i, entry);
                    self.len += 1;
                    if chunk.len() <= CHUNK {
                        return None;
                    }
                    // Appended past the end of a full chunk: the new entry starts the next
                    // chunk and this one stays full. Otherwise split in the middle.
                    let at = if i == CHUNK { CHUNK } else { chunk.len() / 2 };
                    chunk.split_off(at)
                }
            },
            None => {
                // Below every chunk's first key (or the set is empty): the entry becomes the
                // first of the first chunk, which is re-indexed under its key.
                self.len += 1;
                let Some((_, mut chunk)) = self.chunks.pop_first() else {
                    let mut chunk = Chunk::new();
                    let first = Box::from(key);
                    chunk.insert(0, entry);
                    self.chunks.insert(first, chunk);
                    return None;
                };
                let first = Box::from(key);
                chunk.insert(0, entry);
                if chunk.len() > CHUNK {
                    let right = chunk.split_off(chunk.len() / 2);
                    self.chunks.insert(Box::from(right.first_key()), right);
                }
                self.chunks.insert(first, chunk);
                return None;
            }
        };
        self.chunks.insert(Box::from(right.first_key()), right);
        None
    }

    /// Removes the entry with `key` and returns it.
    pub(crate) fn take(&mut self, key: &[u8]) -> Option<Stored> {
        let (first, chunk) = self
            .chunks
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()?;
        let i = chunk.find(first, key).ok()?;
        let old = chunk.remove(i);
        self.len -= 1;
        let sparse = chunk.len() <= CHUNK / 4;
        let first: Box<[u8]> = if i == 0 {
            // The chunk's first key was `key`: drop the chunk or re-index it.
            debug_assert_eq!(&first[..], key);
            let mut chunk = self.chunks.remove(key).expect("indexed by its first key");
            if chunk.entries.is_empty() {
                return Some(old);
            }
            // The new first key may share more with the last: recompute (cheap next to
            // the index update).
            chunk.reindex();
            let first = Box::from(chunk.first_key());
            self.chunks.insert(Box::clone(&first), chunk);
            first
        } else if sparse {
            first.clone()
        } else {
            return Some(old);
        };
        if sparse {
            self.merge_around(&first);
        }
        Some(old)
    }

    /// Joins the chunk indexed by `first` with the one before or else the one after it if
    /// both fit in one, so deletes do not leave many nearly empty chunks behind.
    fn merge_around(&mut self, first: &[u8]) {
        let len = self.chunks.get(first).map_or(usize::MAX, Chunk::len);
        let fits = |c: &Chunk| len.saturating_add(c.len()) <= CHUNK;
        let before = self
            .chunks
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(first)))
            .next_back()
            .filter(|(_, c)| fits(c))
            .map(|(k, _)| k.clone());
        if let Some(before) = before {
            let this = self.chunks.remove(first).expect("indexed");
            self.chunks
                .get_mut(&before)
                .expect("just seen")
                .append(this);
            return;
        }
        let after = self
            .chunks
            .range::<[u8], _>((Bound::Excluded(first), Bound::Unbounded))
            .next()
            .filter(|(_, c)| fits(c))
            .map(|(k, _)| k.clone());
        if let Some(after) = after {
            let next = self.chunks.remove(&after).expect("just seen");
            self.chunks.get_mut(first).expect("indexed").append(next);
        }
    }

    /// Entries with keys at or above `from`, in key order.
    pub(crate) fn range_from<'a>(&'a self, from: &'a [u8]) -> impl Iterator<Item = &'a Stored> {
        let start = self
            .chunks
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(from)))
            .next_back()
            .map(|(k, _)| &k[..]);
        let chunks = match start {
            Some(k) => self
                .chunks
                .range::<[u8], _>((Bound::Included(k), Bound::Unbounded)),
            None => self
                .chunks
                .range::<[u8], _>((Bound::Unbounded, Bound::Unbounded)),
        };
        chunks
            .flat_map(|(_, c)| c.entries.iter())
            .skip_while(move |e| e.key() < from)
    }

    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter {
            inner: self.chunks.values(),
            current: [].iter(),
            left: self.len,
        }
    }
}

impl FromIterator<Stored> for EntrySet {
    /// Fills chunks completely from entries in ascending key order; anything out of order
    /// is inserted one by one.
    fn from_iter<T: IntoIterator<Item = Stored>>(entries: T) -> EntrySet {
        let mut set = EntrySet::default();
        let mut chunk = Chunk::new();
        let mut late = Vec::new();
        for e in entries {
            let ascending = match chunk.entries.last().or_else(|| {
                set.chunks
                    .last_key_value()
                    .and_then(|(_, c)| c.entries.last())
            }) {
                Some(last) => last.key() < e.key(),
                None => true,
            };
            if !ascending {
                late.push(e);
                continue;
            }
            chunk.entries.push(e);
            set.len += 1;
            if chunk.len() == CHUNK {
                let mut full = std::mem::replace(&mut chunk, Chunk::new());
                full.reindex();
                set.chunks.insert(Box::from(full.first_key()), full);
            }
        }
        if !chunk.entries.is_empty() {
            chunk.reindex();
            set.chunks.insert(Box::from(chunk.first_key()), chunk);
        }
        for e in late {
            set.replace(e);
        }
        set
    }
}

/// [`EntrySet::iter`].
#[derive(Clone)]
pub(crate) struct Iter<'a> {
    inner: btree_map::Values<'a, Box<[u8]>, Chunk>,
    current: std::slice::Iter<'a, Stored>,
    left: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = &'a Stored;

    fn next(&mut self) -> Option<&'a Stored> {
        loop {
            if let Some(e) = self.current.next() {
                self.left -= 1;
                return Some(e);
            }
            self.current = self.inner.next()?.entries.iter();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::super::stored::Fields;
    use super::*;

    fn stored(key: &[u8], version: u64) -> Stored {
        Stored::new(Fields {
            key,
            value: &version.to_le_bytes(),
            flags: 0,
            create_index: version,
            modify_index: version,
            lock_index: 0,
            session: None,
        })
    }

    fn check(set: &EntrySet, model: &BTreeMap<Vec<u8>, u64>) {
        assert_eq!(set.len(), model.len());
        let got: Vec<(Vec<u8>, u64)> = set
            .iter()
            .map(|e| (e.key().to_vec(), e.entry().modify_index))
            .collect();
        let want: Vec<(Vec<u8>, u64)> = model.iter().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(got, want);
        assert_eq!(set.iter().len(), model.len());
        for (first, chunk) in &set.chunks {
            assert!(!chunk.entries.is_empty() && chunk.len() <= CHUNK);
            assert_eq!(&first[..], chunk.first_key());
            assert!(chunk.entries.capacity() <= CHUNK + 1, "chunks never grow");
            assert_eq!(chunk.fps.len(), chunk.len());
            for (e, fp) in chunk.entries.iter().zip(&chunk.fps) {
                assert!(e.key().len() >= chunk.lcp);
                assert_eq!(e.key()[..chunk.lcp], first[..chunk.lcp], "shared prefix");
                assert_eq!(*fp, fingerprint(e.key(), chunk.lcp));
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Put(Vec<u8>),
        Take(Vec<u8>),
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        // Short keys over a tiny alphabet (many prefixes of each other, zero bytes that
        // look like fingerprint padding), and longer ones sharing long prefixes.
        prop_oneof![
            prop::collection::vec(0u8..4, 0..4),
            prop::collection::vec(0u8..3, 0..10),
        ]
    }

    proptest! {
        #[test]
        fn behaves_as_an_ordered_map(ops in prop::collection::vec(
            prop_oneof![3 => key().prop_map(Op::Put), 1 => key().prop_map(Op::Take)], 0..400),
            probes in prop::collection::vec(key(), 0..20),
        ) {
            let mut set = EntrySet::default();
            let mut model = BTreeMap::new();
            for (v, op) in ops.into_iter().enumerate() {
                let v = v as u64;
                match op {
                    Op::Put(k) => {
                        let old = set.replace(stored(&k, v)).map(|e| e.entry().modify_index);
                        prop_assert_eq!(old, model.insert(k, v));
                    }
                    Op::Take(k) => {
                        let old = set.take(&k).map(|e| e.entry().modify_index);
                        prop_assert_eq!(old, model.remove(&k));
                    }
                }
            }
            check(&set, &model);
            for p in probes {
                prop_assert_eq!(set.get(&p).map(|e| e.entry().modify_index), model.get(&p).copied());
                prop_assert_eq!(set.get_mut(&p).map(|e| e.entry().modify_index), model.get(&p).copied());
                let got: Vec<Vec<u8>> = set.range_from(&p).map(|e| e.key().to_vec()).collect();
                let want: Vec<Vec<u8>> = model.range(p.clone()..).map(|(k, _)| k.clone()).collect();
                prop_assert_eq!(got, want);
            }
            // Deleting most keys leaves few, not many nearly empty, chunks.
            let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
            for k in keys.iter().skip(1).step_by(2) {
                set.take(k);
                model.remove(k);
            }
            check(&set, &model);
            let rebuilt: EntrySet = set.iter().cloned().collect();
            check(&rebuilt, &model);
        }
    }

    #[test]
    fn ascending_inserts_fill_chunks() {
        let mut set = EntrySet::default();
        let mut model = BTreeMap::new();
        for i in 0..10_000u64 {
            let k = format!("loadgen/{i:012}").into_bytes();
            set.replace(stored(&k, i));
            model.insert(k, i);
        }
        check(&set, &model);
        assert_eq!(set.chunks.len(), 10_000usize.div_ceil(CHUNK));
        // Descending and random orders still give a valid set.
        let mut down = EntrySet::default();
        let mut model = BTreeMap::new();
        for i in (0..3_000u64).rev() {
            let k = i.to_be_bytes().to_vec();
            down.replace(stored(&k, i));
            model.insert(k, i);
        }
        check(&down, &model);
        let mut model = BTreeMap::new();
        let mut sparse = EntrySet::default();
        for i in 0..6_400u64 {
            sparse.replace(stored(&i.to_be_bytes(), i));
            if i % 32 == 0 {
                model.insert(i.to_be_bytes().to_vec(), i);
            }
        }
        for i in 0..6_400u64 {
            if i % 32 != 0 {
                sparse.take(&i.to_be_bytes());
            }
        }
        check(&sparse, &model);
        assert!(
            sparse.chunks.len() <= 6_400 / 32 / (CHUNK / 4) * 2,
            "{}",
            sparse.chunks.len()
        );
        let unsorted: EntrySet = (0..500u64)
            .map(|i| stored(&((i * 7919) % 500).to_be_bytes(), i))
            .collect();
        assert_eq!(unsorted.len(), 500);
        let keys: Vec<Vec<u8>> = unsorted.iter().map(|e| e.key().to_vec()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }
}
