//! The shape of the state-machine image stored in snapshots.
//!
//! The KV and catalog records here are the fields the servers issue needs (CreateIndex,
//! ModifyIndex, LockIndex, Flags, Value, Session); the catalog record is a placeholder that
//! the catalog issue will grow. The file format around them is final (see [`crate::snapshot`]).

use rkyv::{Archive, Deserialize, Serialize};

/// One key of the KV store.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct KvRecord {
    pub key: String,
    pub value: Vec<u8>,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub flags: u64,
    pub session: Option<String>,
}

/// One node of the catalog (placeholder until the catalog issue).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeRecord {
    pub name: String,
    pub address: String,
    pub datacenter: String,
}

/// The whole state machine as a snapshot holds it. `kv` is sorted by key, so a key is found
/// by binary search in the archive without deserializing anything.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct StateImage {
    pub kv: Vec<KvRecord>,
    pub nodes: Vec<NodeRecord>,
    /// The Raft membership at the snapshot's last included entry, encoded by the server.
    pub membership: Vec<u8>,
}

impl ArchivedStateImage {
    /// Looks up a key in place.
    pub fn get(&self, key: &str) -> Option<&ArchivedKvRecord> {
        let kv = self.kv.as_slice();
        kv.binary_search_by(|r| r.key.as_str().cmp(key))
            .ok()
            .map(|i| &kv[i])
    }
}
