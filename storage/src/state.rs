//! The shape of the state-machine image stored in snapshots.
//!
//! KV entries, tombstones, sessions and lock-delays are archived records (a KV key is
//! found in place by binary search); the catalog is one encoded blob owned by the agent's
//! catalog module, since it is always rebuilt into memory on restore (its reads go
//! through in-memory indexes, and it is small next to the KV store). The file format
//! around them is described in [`crate::snapshot`].

use rkyv::{Archive, Deserialize, Serialize};

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
