//! The shape of the state-machine image stored in snapshots.
//!
//! KV entries, tombstones, sessions and lock-delays are archived records (a KV key is
//! found in place by binary search); the catalog is one encoded blob owned by the agent's
//! catalog module, since it is always rebuilt into memory on restore (its reads go
//! through in-memory indexes, and it is small next to the KV store). The file format
//! around them is described in [`crate::snapshot`].

use rkyv::munge::munge;
use rkyv::rancor::Fallible;
use rkyv::ser::{Allocator, Writer};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Deserialize, Place, Serialize};

/// One key of the KV store. Keys are bytes: the binary RPC carries any bytes, the HTTP
/// API carries UTF-8 paths.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct KvRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub flags: u64,
    pub session: Option<String>,
}

/// A deleted key remembered so that reads covering it keep the delete's index until the
/// tombstone is reaped.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct TombstoneRecord {
    pub key: Vec<u8>,
    pub delete_index: u64,
}

/// A session (see the agent's `kv::Session`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRecord {
    pub id: String,
    pub name: String,
    pub node: String,
    /// 0 release, 1 delete.
    pub behavior: u8,
    pub ttl_ms: u64,
    pub lock_delay_ms: u64,
    pub create_index: u64,
    /// Check ids whose failure invalidates the session.
    pub node_checks: Vec<String>,
    pub service_checks: Vec<String>,
}

/// A key that may not be acquired before `until_ms` (leader clock).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct LockDelayRecord {
    pub key: Vec<u8>,
    pub until_ms: u64,
}

/// The whole state machine as a snapshot holds it. `kv` is sorted by key, so a key is found
/// by binary search in the archive without deserializing anything.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct StateImage {
    pub kv: Vec<KvRecord>,
    pub tombstones: Vec<TombstoneRecord>,
    /// Index of the last KV write.
    pub kv_index: u64,
    pub sessions: Vec<SessionRecord>,
    pub lock_delays: Vec<LockDelayRecord>,
    /// The catalog (nodes, services, checks and their indexes), encoded by the agent's
    /// catalog module; empty when nothing was ever registered.
    pub catalog: Vec<u8>,
    /// The Raft membership at the snapshot's last included entry, encoded by the server.
    pub membership: Vec<u8>,
}

impl ArchivedStateImage {
    /// Looks up a key in place.
    pub fn get(&self, key: &[u8]) -> Option<&ArchivedKvRecord> {
        let kv = self.kv.as_slice();
        kv.binary_search_by(|r| r.key.as_slice().cmp(key))
            .ok()
            .map(|i| &kv[i])
    }
}

/// A KV record borrowed from wherever its owner keeps it, archived exactly as a
/// [`KvRecord`]: a snapshot of a large store is written without first copying every key
/// and value into a `KvRecord`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRecordRef<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub flags: u64,
    /// Owned: few keys are held by a session.
    pub session: Option<String>,
}

/// What serializing a [`KvRecordRef`] leaves for its resolution.
pub struct KvRecordRefResolver {
    key: VecResolver,
    value: VecResolver,
    session: <Option<String> as Archive>::Resolver,
}

impl Archive for KvRecordRef<'_> {
    type Archived = ArchivedKvRecord;
    type Resolver = KvRecordRefResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        munge!(let ArchivedKvRecord { key, value, create_index, modify_index, lock_index, flags, session } = out);
        ArchivedVec::<u8>::resolve_from_len(self.key.len(), resolver.key, key);
        ArchivedVec::<u8>::resolve_from_len(self.value.len(), resolver.value, value);
        self.create_index.resolve((), create_index);
        self.modify_index.resolve((), modify_index);
        self.lock_index.resolve((), lock_index);
        self.flags.resolve((), flags);
        self.session.resolve(resolver.session, session);
    }
}

impl<S> Serialize<S> for KvRecordRef<'_>
where
    S: Fallible + Allocator + Writer + ?Sized,
    Option<String>: Serialize<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok(KvRecordRefResolver {
            key: ArchivedVec::<u8>::serialize_from_slice(self.key, serializer)?,
            value: ArchivedVec::<u8>::serialize_from_slice(self.value, serializer)?,
            session: self.session.serialize(serializer)?,
        })
    }
}

impl<'a> From<&'a KvRecord> for KvRecordRef<'a> {
    fn from(r: &'a KvRecord) -> KvRecordRef<'a> {
        KvRecordRef {
            key: &r.key,
            value: &r.value,
            create_index: r.create_index,
            modify_index: r.modify_index,
            lock_index: r.lock_index,
            flags: r.flags,
            session: r.session.clone(),
        }
    }
}

/// A [`StateImage`] whose KV records come from an iterator (sorted by key, as
/// `StateImage::kv`), archived exactly as a `StateImage`. The iterator is walked twice
/// (records' bytes, then the record array), so it must be cheap to clone.
#[derive(Debug, Clone)]
pub struct StateImageOf<I> {
    pub kv: I,
    pub tombstones: Vec<TombstoneRecord>,
    pub kv_index: u64,
    pub sessions: Vec<SessionRecord>,
    pub lock_delays: Vec<LockDelayRecord>,
    pub catalog: Vec<u8>,
    pub membership: Vec<u8>,
}

/// What serializing a [`StateImageOf`] leaves for its resolution.
pub struct StateImageOfResolver {
    kv: VecResolver,
    tombstones: VecResolver,
    sessions: VecResolver,
    lock_delays: VecResolver,
    catalog: VecResolver,
    membership: VecResolver,
}

impl<'a, I> Archive for StateImageOf<I>
where
    I: ExactSizeIterator<Item = KvRecordRef<'a>> + Clone,
{
    type Archived = ArchivedStateImage;
    type Resolver = StateImageOfResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        munge!(let ArchivedStateImage { kv, tombstones, kv_index, sessions, lock_delays, catalog, membership } = out);
        ArchivedVec::<ArchivedKvRecord>::resolve_from_len(self.kv.len(), resolver.kv, kv);
        self.tombstones.resolve(resolver.tombstones, tombstones);
        self.kv_index.resolve((), kv_index);
        self.sessions.resolve(resolver.sessions, sessions);
        self.lock_delays.resolve(resolver.lock_delays, lock_delays);
        self.catalog.resolve(resolver.catalog, catalog);
        self.membership.resolve(resolver.membership, membership);
    }
}

impl<'a, I, S> Serialize<S> for StateImageOf<I>
where
    I: ExactSizeIterator<Item = KvRecordRef<'a>> + Clone,
    S: Fallible + Allocator + Writer + ?Sized,
    Option<String>: Serialize<S>,
    Vec<TombstoneRecord>: Serialize<S, Resolver = VecResolver>,
    Vec<SessionRecord>: Serialize<S, Resolver = VecResolver>,
    Vec<LockDelayRecord>: Serialize<S, Resolver = VecResolver>,
    Vec<u8>: Serialize<S, Resolver = VecResolver>,
{
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        Ok(StateImageOfResolver {
            kv: ArchivedVec::<ArchivedKvRecord>::serialize_from_iter::<KvRecordRef<'a>, _, _>(
                self.kv.clone(),
                serializer,
            )?,
            tombstones: self.tombstones.serialize(serializer)?,
            sessions: self.sessions.serialize(serializer)?,
            lock_delays: self.lock_delays.serialize(serializer)?,
            catalog: self.catalog.serialize(serializer)?,
            membership: self.membership.serialize(serializer)?,
        })
    }
}
