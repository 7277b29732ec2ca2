//! The KV store to and from a snapshot image (`cairn_storage::state::StateImage`).
//!
//! Restoring reads the archive in place: keys and values of the rebuilt store are `Bytes`
//! slices of the snapshot's mapping, so a restore copies no key or value bytes.

use bytes::Bytes;
use cairn_storage::state::{
    ArchivedStateImage, KvRecord, LockDelayRecord, SessionRecord, TombstoneRecord,
};

use super::{shard_of, Behavior, KvEntry, KvShard, Session, ShardedKv};

/// One shard's part of a snapshot image (gathered from every core by the runtime).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardImage {
    pub kv: Vec<KvRecord>,
    pub tombstones: Vec<TombstoneRecord>,
    pub index: u64,
    /// The (replicated) session table; only shard 0's copy is used.
    pub sessions: Vec<SessionRecord>,
    pub lock_delays: Vec<LockDelayRecord>,
}

impl KvShard {
    /// This shard's part of a snapshot image.
    pub fn image_part(&self) -> ShardImage {
        ShardImage {
            kv: self
                .iter()
                .map(|e| KvRecord {
                    key: e.key.to_vec(),
                    value: e.value.to_vec(),
                    create_index: e.create_index,
                    modify_index: e.modify_index,
                    lock_index: e.lock_index,
                    flags: e.flags,
                    session: e.session.clone(),
                })
                .collect(),
            tombstones: self
                .tombstones()
                .map(|(k, i)| TombstoneRecord {
                    key: k.to_vec(),
                    delete_index: i,
                })
                .collect(),
            index: self.index(),
            sessions: self
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
                    node_checks: s.node_checks.clone(),
                    service_checks: s.service_checks.clone(),
                })
                .collect(),
            lock_delays: self
                .sessions
                .lock_delay
                .iter()
                .map(|(k, u)| LockDelayRecord {
                    key: k.to_vec(),
                    until_ms: *u,
                })
                .collect(),
        }
    }
}

/// Merges every shard's part (in shard order) into one image part: records sorted by
/// key, the highest index, shard 0's session table.
pub fn merge_images(parts: Vec<ShardImage>) -> ShardImage {
    let mut out = ShardImage::default();
    for (i, p) in parts.into_iter().enumerate() {
        out.kv.extend(p.kv);
        out.tombstones.extend(p.tombstones);
        out.lock_delays.extend(p.lock_delays);
        out.index = out.index.max(p.index);
        if i == 0 {
            out.sessions = p.sessions;
        }
    }
    out.kv.sort_by(|a, b| a.key.cmp(&b.key));
    out.tombstones.sort_by(|a, b| a.key.cmp(&b.key));
    out.lock_delays.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

impl ShardedKv {
    /// Sessions and lock-delays for a snapshot image (sessions are replicated: shard 0's
    /// copy is the table).
    pub fn sessions_image(&self) -> (Vec<SessionRecord>, Vec<LockDelayRecord>) {
        let m = self.image();
        (m.sessions, m.lock_delays)
    }

    /// The KV part of a snapshot image: entries and tombstones sorted by key, and the index
    /// of the last write.
    pub fn to_image(&self) -> (Vec<KvRecord>, Vec<TombstoneRecord>, u64) {
        let m = self.image();
        (m.kv, m.tombstones, m.index)
    }

    /// The whole store's image part, as the runtime gathers it from its cores.
    pub fn image(&self) -> ShardImage {
        merge_images(
            (0..self.shard_count())
                .map(|i| self.shard(i).image_part())
                .collect(),
        )
    }

    /// The shards, in order (each core of the runtime takes one).
    pub fn into_shards(self) -> Vec<KvShard> {
        self.shards
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
                node_checks: s
                    .node_checks
                    .iter()
                    .map(|c| c.as_str().to_string())
                    .collect(),
                service_checks: s
                    .service_checks
                    .iter()
                    .map(|c| c.as_str().to_string())
                    .collect(),
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
