//! The KV store to and from a snapshot image (`cairn_storage::state::StateImage`).
//!
//! Taking an image shares the entries (one reference-counted handle each, no copy of a
//! key or value): the snapshot thread serializes them straight into the file
//! (`cairn_storage::state::StateImageOf`). Restoring copies every key and value out of the
//! archive into the shards' own entries, so the snapshot's mapping is let go as soon as
//! the restore is done (slices of it kept the whole file resident).

use bytes::Bytes;
use cairn_storage::state::{
    ArchivedStateImage, KvRecord, KvRecordRef, LockDelayRecord, SessionRecord, TombstoneRecord,
};

use super::stored::{Fields, Stored};
use super::{shard_of, Behavior, KvShard, Session, ShardedKv};

/// Entries handed to a snapshot per chunk: 64 KiB of handles. Chunks stay below glibc's
/// initial mmap threshold (128 KiB): a freed mmapped block of a few MiB raises that
/// threshold for the whole process, after which every such block comes from (and stays
/// in) the heaps; one vector per shard made a 1 M key store keep ≈50 MB more resident.
const RUN_CHUNK: usize = 4096;

/// A sorted run of entries (one shard's), in chunks of [`RUN_CHUNK`].
#[derive(Debug, Clone, Default)]
pub struct Run {
    chunks: Vec<Vec<Stored>>,
    len: usize,
}

impl Run {
    fn collect<'a>(entries: impl Iterator<Item = &'a Stored>) -> Run {
        let mut run = Run::default();
        for e in entries {
            if run.len % RUN_CHUNK == 0 {
                run.chunks.push(Vec::with_capacity(RUN_CHUNK));
            }
            run.chunks.last_mut().expect("pushed").push(e.clone());
            run.len += 1;
        }
        run
    }

    fn get(&self, i: usize) -> Option<&Stored> {
        self.chunks.get(i / RUN_CHUNK)?.get(i % RUN_CHUNK)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The records of sorted runs with disjoint keys, merged in key order as they are read.
#[derive(Clone)]
pub struct Records<'a> {
    runs: &'a [Run],
    next: Vec<usize>,
    left: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = KvRecordRef<'a>;

    fn next(&mut self) -> Option<KvRecordRef<'a>> {
        let (r, e) = self
            .runs
            .iter()
            .zip(&self.next)
            .enumerate()
            .filter_map(|(r, (run, &i))| run.get(i).map(|e| (r, e)))
            .min_by(|a, b| a.1.key().cmp(b.1.key()))?;
        self.next[r] += 1;
        self.left -= 1;
        Some(e.record())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Records<'_> {}

/// One shard's part of a snapshot image (gathered from every core by the runtime).
#[derive(Debug, Clone, Default)]
pub struct ShardImage {
    /// The entries as sorted runs with disjoint keys (one per shard), shared with the
    /// shards that hold them; [`ShardImage::records`] reads them merged.
    pub kv: Vec<Run>,
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
            kv: vec![Run::collect(self.stored_entries())],
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

/// Equal when every record (all fields, not only keys) and the rest are equal.
impl PartialEq for ShardImage {
    fn eq(&self, other: &Self) -> bool {
        self.records().eq(other.records())
            && self.tombstones == other.tombstones
            && self.index == other.index
            && self.sessions == other.sessions
            && self.lock_delays == other.lock_delays
    }
}

impl Eq for ShardImage {}

impl ShardImage {
    /// The KV records, borrowed from the entries, in key order.
    pub fn records(&self) -> Records<'_> {
        Records {
            runs: &self.kv,
            next: vec![0; self.kv.len()],
            left: self.kv.iter().map(Run::len).sum(),
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
        let kv = m
            .records()
            .map(|r| KvRecord {
                key: r.key.to_vec(),
                value: r.value.to_vec(),
                create_index: r.create_index,
                modify_index: r.modify_index,
                lock_index: r.lock_index,
                flags: r.flags,
                session: r.session,
            })
            .collect();
        (kv, m.tombstones, m.index)
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

    /// Rebuilds a store of `shards` shards from an archived image, copying every key and
    /// value (nothing refers to the archive's bytes afterwards). Every shard's index
    /// becomes the image's KV index (per-shard indexes are not kept; reporting a higher
    /// index only ends a blocking query early, once).
    pub fn from_archived(image: &ArchivedStateImage, shards: usize) -> ShardedKv {
        let mut kv = ShardedKv::new(shards);
        let n = kv.shard_count();
        let mut entries: Vec<Vec<Stored>> = vec![Vec::new(); n];
        for r in image.kv.iter() {
            let key = r.key.as_slice();
            entries[shard_of(key, n)].push(Stored::new(Fields {
                key,
                value: r.value.as_slice(),
                flags: r.flags.to_native(),
                create_index: r.create_index.to_native(),
                modify_index: r.modify_index.to_native(),
                lock_index: r.lock_index.to_native(),
                session: r.session.as_ref().map(|s| s.as_str()),
            }));
        }
        let mut tombs: Vec<Vec<(Box<[u8]>, u64)>> = vec![Vec::new(); n];
        for t in image.tombstones.iter() {
            let key = t.key.as_slice();
            tombs[shard_of(key, n)].push((Box::from(key), t.delete_index.to_native()));
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
            let key = Bytes::copy_from_slice(d.key.as_slice());
            kv.shard_mut(shard_of(&key, n))
                .sessions
                .lock_delay
                .insert(key, d.until_ms.to_native());
        }
        kv
    }
}
