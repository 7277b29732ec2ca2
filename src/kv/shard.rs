//! One partition of the KV store.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use bytes::Bytes;

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
#[derive(Debug, Clone, Default)]
pub struct KvShard {
    entries: BTreeMap<Bytes, KvEntry>,
    /// Deleted key → Raft index of the delete. Reaped by `ReapTombstones`.
    tombstones: BTreeMap<Bytes, u64>,
    /// Raft index of the last write that reached this shard.
    index: u64,
    key_watches: HashMap<Bytes, Vec<WatchId>>,
    prefix_watches: HashMap<Bytes, Vec<WatchId>>,
    /// Sessions and the locks they hold here.
    pub(crate) sessions: super::session::Sessions,
}

fn prefix_range(prefix: &[u8]) -> (Bound<Bytes>, Bound<Bytes>) {
    (
        Bound::Included(Bytes::copy_from_slice(prefix)),
        Bound::Unbounded,
    )
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
    pub fn get(&self, key: &[u8]) -> (Option<&KvEntry>, u64) {
        let e = self.entries.get(key);
        let idx = match e {
            Some(e) => e.modify_index,
            None => self.tombstones.get(key).copied().unwrap_or(self.index),
        };
        (e, idx.max(1))
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
            .range(prefix_range(prefix))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect();
        let live = entries.iter().map(|e| e.modify_index).max();
        (entries, live.max(self.dead_max(prefix)))
    }

    /// The newest delete under `prefix` still remembered by a tombstone.
    fn dead_max(&self, prefix: &[u8]) -> Option<u64> {
        self.tombstones
            .range(prefix_range(prefix))
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
        for (k, e) in self
            .entries
            .range(prefix_range(prefix))
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            live_max = live_max.max(Some(e.modify_index));
            let rolled = match separator.filter(|s| !s.is_empty()) {
                Some(sep) => match find(&k[prefix.len()..], sep) {
                    Some(at) => k.slice(..prefix.len() + at + sep.len()),
                    None => k.clone(),
                },
                None => k.clone(),
            };
            if out.last() != Some(&rolled) {
                out.push(rolled);
            }
        }
        (out, live_max.max(self.dead_max(prefix)))
    }

    pub(crate) fn entry_mut(&mut self, key: &[u8]) -> Option<&mut KvEntry> {
        self.entries.get_mut(key)
    }

    pub(crate) fn touch(&mut self, index: u64, key: &Bytes, woken: &mut Vec<WatchId>) {
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
        let entry = match self.entries.get(key) {
            Some(old) => KvEntry {
                value: value.clone(),
                flags,
                modify_index: index,
                ..old.clone()
            },
            None => KvEntry {
                key: key.clone(),
                value: value.clone(),
                flags,
                create_index: index,
                modify_index: index,
                lock_index: 0,
                session: None,
            },
        };
        self.tombstones.remove(key);
        self.entries.insert(key.clone(), entry.clone());
        self.touch(index, key, woken);
        entry
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
            (Some(e), i) => e.modify_index == i,
            (None, _) => false,
        }
    }

    /// Delete `key`; returns the removed entry. Deleting a missing key changes nothing.
    pub fn delete(&mut self, index: u64, key: &Bytes, woken: &mut Vec<WatchId>) -> Option<KvEntry> {
        let old = self.entries.remove(key)?;
        self.forget_holder(&old);
        self.tombstones.insert(key.clone(), index);
        self.touch(index, key, woken);
        Some(old)
    }

    /// Delete `key` only if its ModifyIndex is `expect`; 0 never deletes (Consul).
    pub fn delete_cas(
        &mut self,
        index: u64,
        key: &Bytes,
        expect: u64,
        woken: &mut Vec<WatchId>,
    ) -> bool {
        match self.entries.get(key) {
            Some(e) if expect != 0 && e.modify_index == expect => {
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
        let doomed: Vec<Bytes> = self
            .entries
            .range(prefix_range(prefix))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
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
        entry: Option<KvEntry>,
        tombstone: Option<u64>,
        index: u64,
    ) {
        match entry {
            Some(e) => {
                if let Some(holder) = &e.session {
                    self.sessions
                        .held
                        .entry(holder.clone())
                        .or_default()
                        .insert(key.clone());
                }
                self.entries.insert(key.clone(), e);
            }
            None => {
                self.entries.remove(key);
            }
        }
        match tombstone {
            Some(t) => {
                self.tombstones.insert(key.clone(), t);
            }
            None => {
                self.tombstones.remove(key);
            }
        }
        self.index = index;
    }

    /// The raw state of `key` for a transaction's undo log.
    pub(crate) fn raw(&self, key: &[u8]) -> (Option<KvEntry>, Option<u64>) {
        (
            self.entries.get(key).cloned(),
            self.tombstones.get(key).copied(),
        )
    }

    pub(crate) fn keys_under(&self, prefix: &[u8]) -> Vec<Bytes> {
        self.entries
            .range(prefix_range(prefix))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
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
    pub fn iter(&self) -> impl Iterator<Item = &KvEntry> {
        self.entries.values()
    }

    /// Rebuilds the shard from a snapshot's entries and tombstones.
    pub fn restore_from(
        &mut self,
        entries: impl IntoIterator<Item = KvEntry>,
        tombstones: impl IntoIterator<Item = (Bytes, u64)>,
        index: u64,
    ) {
        self.entries = entries.into_iter().map(|e| (e.key.clone(), e)).collect();
        self.sessions.held.clear();
        for e in self.entries.values() {
            if let Some(holder) = &e.session {
                self.sessions
                    .held
                    .entry(holder.clone())
                    .or_default()
                    .insert(e.key.clone());
            }
        }
        self.tombstones = tombstones.into_iter().collect();
        self.index = index;
    }

    /// Tombstones, in key order (for snapshots).
    pub fn tombstones(&self) -> impl Iterator<Item = (&Bytes, u64)> {
        self.tombstones.iter().map(|(k, i)| (k, *i))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
