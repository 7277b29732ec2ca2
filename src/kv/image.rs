//! The KV store to and from a snapshot image (`cairn_storage::state::StateImage`).
//!
//! Restoring reads the archive in place: keys and values of the rebuilt store are `Bytes`
//! slices of the snapshot's mapping, so a restore copies no key or value bytes.

use bytes::Bytes;
use cairn_storage::state::{
    ArchivedStateImage, KvRecord, LockDelayRecord, SessionRecord, TombstoneRecord,
};

use super::{shard_of, Behavior, KvEntry, Session, ShardedKv};

impl ShardedKv {
    /// Sessions and lock-delays for a snapshot image (sessions are replicated: shard 0's
    /// copy is the table).
    pub fn sessions_image(&self) -> (Vec<SessionRecord>, Vec<LockDelayRecord>) {
        let sessions = self
            .shard(0)
            .sessions()
            .map(|s| SessionRecord {
                id: s.id.clone(),
                name: s.name.clone(),
                node: s.node.clone(),
                behavior: match s.behavior {
                    Behavior::Release => 0,
                    Behavior::Delete => 1,
                },
                ttl_ms: s.ttl_ms,
                lock_delay_ms: s.lock_delay_ms,
                create_index: s.create_index,
            })
            .collect();
        let mut delays: Vec<LockDelayRecord> = (0..self.shard_count())
            .flat_map(|i| {
                self.shard(i)
                    .sessions
                    .lock_delay
                    .iter()
                    .map(|(k, u)| LockDelayRecord {
                        key: k.to_vec(),
                        until_ms: *u,
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        delays.sort_by(|a, b| a.key.cmp(&b.key));
        (sessions, delays)
    }

    /// The KV part of a snapshot image: entries and tombstones sorted by key, and the index
    /// of the last write.
    pub fn to_image(&self) -> (Vec<KvRecord>, Vec<TombstoneRecord>, u64) {
        let mut kv: Vec<KvRecord> = Vec::new();
        let mut tombstones: Vec<TombstoneRecord> = Vec::new();
        for i in 0..self.shard_count() {
            let s = self.shard(i);
            kv.extend(s.iter().map(|e| KvRecord {
                key: e.key.to_vec(),
                value: e.value.to_vec(),
                create_index: e.create_index,
                modify_index: e.modify_index,
                lock_index: e.lock_index,
                flags: e.flags,
                session: e.session.clone(),
            }));
            tombstones.extend(s.tombstones().map(|(k, i)| TombstoneRecord {
                key: k.to_vec(),
                delete_index: i,
            }));
        }
        kv.sort_by(|a, b| a.key.cmp(&b.key));
        tombstones.sort_by(|a, b| a.key.cmp(&b.key));
        (kv, tombstones, self.index())
    }

    /// Rebuilds a store of `shards` shards from an archived image. `backing` must be the
    /// bytes the archive lives in (`Snapshot::archive_bytes`): keys and values become
    /// slices of it. Every shard's index becomes the image's KV index (per-shard indexes
    /// are not kept; reporting a higher index only ends a blocking query early, once).
    pub fn from_archived(image: &ArchivedStateImage, backing: &Bytes, shards: usize) -> ShardedKv {
        let mut kv = ShardedKv::new(shards);
        let n = kv.shard_count();
        let slice = |b: &[u8]| {
            if b.is_empty() {
                Bytes::new()
            } else {
                backing.slice_ref(b)
            }
        };
        let mut entries: Vec<Vec<KvEntry>> = vec![Vec::new(); n];
        for r in image.kv.iter() {
            let key = slice(r.key.as_slice());
            entries[shard_of(&key, n)].push(KvEntry {
                value: slice(r.value.as_slice()),
                flags: r.flags.to_native(),
                create_index: r.create_index.to_native(),
                modify_index: r.modify_index.to_native(),
                lock_index: r.lock_index.to_native(),
                session: r.session.as_ref().map(|s| s.as_str().to_string()),
                key,
            });
        }
        let mut tombs: Vec<Vec<(Bytes, u64)>> = vec![Vec::new(); n];
        for t in image.tombstones.iter() {
            let key = slice(t.key.as_slice());
            tombs[shard_of(&key, n)].push((key, t.delete_index.to_native()));
        }
        let index = image.kv_index.to_native();
        for (i, (e, t)) in entries.into_iter().zip(tombs).enumerate() {
            kv.shard_mut(i).restore_from(e, t, index);
        }
        for s in image.sessions.iter() {
            let session = Session {
                id: s.id.as_str().to_string(),
                name: s.name.as_str().to_string(),
                node: s.node.as_str().to_string(),
                behavior: if s.behavior == 1 {
                    Behavior::Delete
                } else {
                    Behavior::Release
                },
                ttl_ms: s.ttl_ms.to_native(),
                lock_delay_ms: s.lock_delay_ms.to_native(),
                create_index: s.create_index.to_native(),
            };
            for i in 0..n {
                let create = session.create_index;
                kv.shard_mut(i).sessions.table.insert(
                    session.id.clone(),
                    Session {
                        create_index: create,
                        ..session.clone()
                    },
                );
            }
        }
        for d in image.lock_delays.iter() {
            let key = slice(d.key.as_slice());
            kv.shard_mut(shard_of(&key, n))
                .sessions
                .lock_delay
                .insert(key, d.until_ms.to_native());
        }
        kv
    }
}
