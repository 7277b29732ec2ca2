//! One partition of the KV store.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use bytes::Bytes;

use super::ordered::EntrySet;
use super::stored::{Fields, Stored};

/// One key's entry, as Consul shapes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub key: Bytes,
    pub value: Bytes,
    pub flags: u64,
    /// Raft index of the write that created the key.
    pub create_index: u64,
    /// Raft index of the last write to the key.
    pub modify_index: u64,
    /// How many times a session acquired the key (sessions come with the catalog issue).
    pub lock_index: u64,
    pub session: Option<String>,
}

/// A prefix read: the entries in key order and the index of the result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListResult {
    pub entries: Vec<KvEntry>,
    pub index: u64,
}

impl ListResult {
    /// Merges per-shard results (each sorted, disjoint keys) into one sorted result.
    /// `fallback` is the index to report when nothing under the prefix ever changed.
    pub fn merge(parts: Vec<(Vec<KvEntry>, Option<u64>)>, fallback: u64) -> ListResult {
        let touched = parts.iter().filter_map(|p| p.1).max();
        let mut entries: Vec<KvEntry> = parts.into_iter().flat_map(|p| p.0).collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        ListResult {
            entries,
            index: touched.unwrap_or(fallback).max(1),
        }
    }
}

/// Identifies a parked blocking query; the IO layer maps it to whatever wakes the waiter.
pub type WatchId = u64;

/// What a blocking query waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchTarget {
    Key(Bytes),
    Prefix(Bytes),
}

/// One partition: live entries, tombstones of deleted keys (so a delete moves the index of
/// reads that covered the key), the index of its last write, and parked watches.
///
/// Entries are one allocation each (`Stored`: indexes, flags, key, session and value),
/// kept in key order in sorted chunks (`ordered.rs`); keys and values are always copied
/// in, never slices of a log segment's or a snapshot's mapping (see `stored.rs`).
#[derive(Debug, Clone, Default)]
pub struct KvShard {
    entries: EntrySet,
    /// Deleted key → Raft index of the delete. Reaped by `ReapTombstones`.
    tombstones: BTreeMap<Box<[u8]>, u64>,
    /// Raft index of the last write that reached this shard.
    index: u64,
    key_watches: HashMap<Bytes, Vec<WatchId>>,
    prefix_watches: HashMap<Bytes, Vec<WatchId>>,
    /// Sessions and the locks they hold here.
    pub(crate) sessions: super::session::Sessions,
}

fn prefix_range(prefix: &[u8]) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (Bound::Included(prefix), Bound::Unbounded)
}

impl KvShard {
    /// Index of the last write to this shard.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Number of live keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of tombstones not yet reaped.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// The entry at `key`, and the index of the result.
    pub fn get(&self, key: &[u8]) -> (Option<KvEntry>, u64) {
        let e = self.entries.get(key);
        let idx = match e {
            Some(e) => e.modify_index(),
            None => self.tombstones.get(key).copied().unwrap_or(self.index),
        };
        (e.map(Stored::entry), idx.max(1))
    }

    /// [`KvShard::get`], borrowing the stored entry.
    pub(crate) fn get_stored(&self, key: &[u8]) -> (Option<&Stored>, u64) {
        let e = self.entries.get(key);
        let idx = match e {
            Some(e) => e.modify_index(),
            None => self.tombstones.get(key).copied().unwrap_or(self.index),
        };
        (e, idx.max(1))
    }

    /// The stored entry at `key`.
    pub(crate) fn stored(&self, key: &[u8]) -> Option<&Stored> {
        self.entries.get(key)
    }

    /// The ModifyIndex of `key`, if it exists.
    pub fn modify_index(&self, key: &[u8]) -> Option<u64> {
        self.entries.get(key).map(Stored::modify_index)
    }

    /// Entries whose key starts with `prefix`, in key order, and the index of the result.
    pub fn list(&self, prefix: &[u8]) -> ListResult {
        ListResult::merge(vec![self.list_part(prefix)], self.index)
    }

    /// Entries under `prefix` and the newest change under it (None if nothing under it
    /// ever changed, or its tombstones were reaped): one shard's part of a prefix read.
    pub fn list_part(&self, prefix: &[u8]) -> (Vec<KvEntry>, Option<u64>) {
        let entries: Vec<KvEntry> = self
            .entries
            .range_from(prefix)
            .take_while(|e| e.key().starts_with(prefix))
            .map(Stored::entry)
            .collect();
        let live = entries.iter().map(|e| e.modify_index).max();
        (entries, live.max(self.dead_max(prefix)))
    }

    /// The newest delete under `prefix` still remembered by a tombstone.
    fn dead_max(&self, prefix: &[u8]) -> Option<u64> {
        self.tombstones
            .range::<[u8], _>(prefix_range(prefix))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, i)| *i)
            .max()
    }

    /// Keys under `prefix`; with a separator, keys are rolled up to the first separator
    /// after the prefix (`a/b/c` under `a/` with `/` gives `a/b/`), as Consul's
    /// `?keys&separator=` does. Returns the keys and the newest change under the prefix.
    pub fn keys_part(&self, prefix: &[u8], separator: Option<&[u8]>) -> (Vec<Bytes>, Option<u64>) {
        let mut out: Vec<Bytes> = Vec::new();
        let mut live_max = None;
        for e in self
            .entries
            .range_from(prefix)
            .take_while(|e| e.key().starts_with(prefix))
        {
            live_max = live_max.max(Some(e.modify_index()));
            let k = e.key();
            let rolled = match separator.filter(|s| !s.is_empty()) {
                Some(sep) => match find(&k[prefix.len()..], sep) {
                    Some(at) => &k[..prefix.len() + at + sep.len()],
                    None => k,
                },
                None => k,
            };
            if out.last().map(|l| &l[..]) != Some(rolled) {
                out.push(Bytes::copy_from_slice(rolled));
            }
        }
        (out, live_max.max(self.dead_max(prefix)))
    }

    /// Rewrites `key`'s lock fields: its session becomes `session`, its LockIndex grows by
    /// one if `bump_lock`, its ModifyIndex becomes `modify` if given. False if absent.
    pub(crate) fn update_lock(
        &mut self,
        key: &[u8],
        session: Option<&str>,
        bump_lock: bool,
        modify: Option<u64>,
    ) -> bool {
        let Some(old) = self.entries.get(key) else {
            return false;
        };
        let new = old.with(|f| {
            f.session = session;
            if bump_lock {
                f.lock_index += 1;
            }
            if let Some(m) = modify {
                f.modify_index = m;
            }
        });
        self.entries.replace(new);
        true
    }

    pub(crate) fn touch(&mut self, index: u64, key: &[u8], woken: &mut Vec<WatchId>) {
        debug_assert!(index >= self.index, "Raft applies in index order");
        self.index = index;
        if let Some(ws) = self.key_watches.remove(key) {
            woken.extend(ws);
        }
        // Every prefix of the key, including the empty one: at most MAX_KEY_SIZE lookups.
        if !self.prefix_watches.is_empty() {
            for end in 0..=key.len() {
                if let Some(ws) = self.prefix_watches.remove(&key[..end]) {
                    woken.extend(ws);
                }
            }
        }
    }

    /// Create or replace `key`.
    pub fn set(
        &mut self,
        index: u64,
        key: &Bytes,
        value: &Bytes,
        flags: u64,
        woken: &mut Vec<WatchId>,
    ) -> KvEntry {
        let stored = self.set_stored(index, key, value, flags, woken);
        stored.entry()
    }

    /// [`KvShard::set`] without building the returned `KvEntry`.
    pub(crate) fn set_stored(
        &mut self,
        index: u64,
        key: &[u8],
        value: &[u8],
        flags: u64,
        woken: &mut Vec<WatchId>,
    ) -> Stored {
        // One search for an existing key: it is replaced where it lies.
        let stored = match self.entries.get_mut(key) {
            Some(slot) => {
                let new = slot.with(|f| {
                    f.value = value;
                    f.flags = flags;
                    f.modify_index = index;
                });
                *slot = new.clone();
                new
            }
            None => {
                let new = Stored::new(Fields {
                    key,
                    value,
                    flags,
                    create_index: index,
                    modify_index: index,
                    lock_index: 0,
                    session: None,
                });
                self.entries.replace(new.clone());
                new
            }
        };
        self.tombstones.remove(key);
        self.touch(index, key, woken);
        stored
    }

    /// Check-and-set; see [`crate::kv::KvCommand::Cas`].
    pub fn cas(
        &mut self,
        index: u64,
        key: &Bytes,
        value: &Bytes,
        flags: u64,
        expect: u64,
        woken: &mut Vec<WatchId>,
    ) -> bool {
        if !self.cas_matches(key, expect) {
            return false;
        }
        self.set(index, key, value, flags, woken);
        true
    }

    /// Whether `key`'s ModifyIndex is `expect` (0: the key is absent).
    pub fn cas_matches(&self, key: &[u8], expect: u64) -> bool {
        match (self.entries.get(key), expect) {
            (None, 0) => true,
            (Some(e), i) => e.modify_index() == i,
            (None, _) => false,
        }
    }

    /// Delete `key`; returns the removed entry. Deleting a missing key changes nothing.
    pub fn delete(&mut self, index: u64, key: &[u8], woken: &mut Vec<WatchId>) -> Option<KvEntry> {
        let old = self.entries.take(key)?;
        self.forget_holder(&old);
        self.tombstones.insert(Box::from(key), index);
        self.touch(index, key, woken);
        Some(old.entry())
    }

    /// Delete `key` only if its ModifyIndex is `expect`; 0 never deletes (Consul).
    pub fn delete_cas(
        &mut self,
        index: u64,
        key: &Bytes,
        expect: u64,
        woken: &mut Vec<WatchId>,
    ) -> bool {
        match self.entries.get(&key[..]) {
            Some(e) if expect != 0 && e.modify_index() == expect => {
                self.delete(index, key, woken);
                true
            }
            _ => false,
        }
    }

    /// Delete every key under `prefix`; returns the removed entries.
    pub fn delete_tree(
        &mut self,
        index: u64,
        prefix: &[u8],
        woken: &mut Vec<WatchId>,
    ) -> Vec<KvEntry> {
        let doomed = self.keys_under(prefix);
        doomed
            .iter()
            .filter_map(|k| self.delete(index, k, woken))
            .collect()
    }

    /// Puts back an entry exactly as it was (transaction rollback), or removes `key` if it
    /// did not exist. Restores tombstones and the shard index too.
    pub(crate) fn restore(
        &mut self,
        key: &Bytes,
        entry: Option<Stored>,
        tombstone: Option<u64>,
        index: u64,
    ) {
        match entry {
            Some(e) => {
                if let Some(holder) = e.session() {
                    self.sessions
                        .held
                        .entry(holder)
                        .or_default()
                        .insert(Bytes::copy_from_slice(key));
                }
                self.entries.replace(e);
            }
            None => {
                self.entries.take(&key[..]);
            }
        }
        match tombstone {
            Some(t) => {
                self.tombstones.insert(Box::from(&key[..]), t);
            }
            None => {
                self.tombstones.remove(&key[..]);
            }
        }
        self.index = index;
    }

    /// The raw state of `key` for a transaction's undo log.
    pub(crate) fn raw(&self, key: &[u8]) -> (Option<Stored>, Option<u64>) {
        (
            self.entries.get(key).cloned(),
            self.tombstones.get(key).copied(),
        )
    }

    pub(crate) fn keys_under(&self, prefix: &[u8]) -> Vec<Bytes> {
        self.entries
            .range_from(prefix)
            .take_while(|e| e.key().starts_with(prefix))
            .map(|e| Bytes::copy_from_slice(e.key()))
            .collect()
    }

    /// Forget tombstones from deletes at or before `up_to`.
    pub fn reap_tombstones(&mut self, up_to: u64) {
        self.tombstones.retain(|_, i| *i > up_to);
    }

    /// Parks a blocking query. The caller first checks whether the result's index already
    /// exceeds the query's; if not it parks, and is woken by the next write that touches
    /// the target (or gives up when its wait runs out, calling [`KvShard::unwatch`]).
    pub fn watch(&mut self, id: WatchId, target: WatchTarget) {
        match target {
            WatchTarget::Key(k) => self.key_watches.entry(k).or_default().push(id),
            WatchTarget::Prefix(p) => self.prefix_watches.entry(p).or_default().push(id),
        }
    }

    /// Removes a parked query that timed out. Returns whether it was still parked.
    pub fn unwatch(&mut self, id: WatchId, target: &WatchTarget) -> bool {
        let map = match target {
            WatchTarget::Key(_) => &mut self.key_watches,
            WatchTarget::Prefix(_) => &mut self.prefix_watches,
        };
        let k = match target {
            WatchTarget::Key(k) | WatchTarget::Prefix(k) => k,
        };
        let Some(v) = map.get_mut(k) else {
            return false;
        };
        let before = v.len();
        v.retain(|w| *w != id);
        let found = v.len() != before;
        if v.is_empty() {
            map.remove(k);
        }
        found
    }

    /// Parked queries.
    pub fn watch_count(&self) -> usize {
        self.key_watches.values().map(Vec::len).sum::<usize>()
            + self.prefix_watches.values().map(Vec::len).sum::<usize>()
    }

    /// Every live entry, in key order (for snapshots).
    pub fn iter(&self) -> impl Iterator<Item = KvEntry> + '_ {
        self.entries.iter().map(Stored::entry)
    }

    /// Every live entry as stored, in key order (shared, not copied, by snapshot images).
    pub(crate) fn stored_entries(&self) -> impl ExactSizeIterator<Item = &Stored> + Clone {
        self.entries.iter()
    }

    /// Rebuilds the shard from a snapshot's entries and tombstones.
    pub(crate) fn restore_from(
        &mut self,
        entries: impl IntoIterator<Item = Stored>,
        tombstones: impl IntoIterator<Item = (Box<[u8]>, u64)>,
        index: u64,
    ) {
        self.entries = entries.into_iter().collect();
        self.sessions.held.clear();
        for e in self.entries.iter() {
            if let Some(holder) = e.session() {
                self.sessions
                    .held
                    .entry(holder)
                    .or_default()
                    .insert(Bytes::copy_from_slice(e.key()));
            }
        }
        self.tombstones = tombstones.into_iter().collect();
        self.index = index;
    }

    /// Tombstones, in key order (for snapshots).
    pub fn tombstones(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.tombstones.iter().map(|(k, i)| (&k[..], *i))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
