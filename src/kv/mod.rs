//! The KV state machine, with Consul's semantics.
//!
//! Every entry carries CreateIndex, ModifyIndex (the Raft index of its last write),
//! LockIndex, Flags, a value and an optional session. The store is split into shards by a
//! hash of the key: in the agent each core owns one shard and serves reads from it; an
//! applied Raft entry reaches the shards that own its keys. This module is pure — no IO,
//! no clock, no channels — so the same code runs in the agent, in tests and in snapshots.
//!
//! - [`KvShard`]: one partition: entries, tombstones, its index, and the blocking-query
//!   watch registry.
//! - [`ShardedKv`]: all partitions with the routing function; applies [`KvCommand`]s the
//!   way the Raft apply loop does, including transactions that span shards.
//!
//! Index semantics (Consul's): the index of a read result is the last Raft index that
//! changed what the read covers. For a key that is its ModifyIndex, or the index of the
//! delete that left its tombstone; for a prefix, the largest of those under the prefix.
//! When nothing under the read ever changed, the shard's own index (its last write) is
//! used, and like Consul an index is never reported below 1.

mod codec;
pub mod core;
mod image;
pub use image::{merge_images, Records, Run, ShardImage};
mod ordered;
mod session;
mod shard;
mod stored;
pub(crate) use stored::Stored;
mod txn;

pub use codec::DecodeError;
pub use session::{Behavior, Session};
pub use shard::{KvEntry, KvShard, ListResult, WatchId, WatchTarget};
pub use txn::{
    combine as combine_txn, split as split_txn, PartOutcome, TxnError, TxnOp, TxnPart, TxnResult,
};

use bytes::Bytes;

/// Largest value accepted, as in Consul.
pub const MAX_VALUE_SIZE: usize = 512 * 1024;
/// Largest key accepted. Consul has no explicit key limit beyond its request size; keys
/// travel in every list result and watch, so Cairn caps them.
pub const MAX_KEY_SIZE: usize = 8 * 1024;
/// Most operations in one transaction, as in Consul.
pub const MAX_TXN_OPS: usize = 128;

/// A write to the KV store, as it travels through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvCommand {
    /// Create or replace.
    Set {
        key: Bytes,
        value: Bytes,
        flags: u64,
    },
    /// Check-and-set: write only if the key's ModifyIndex equals `index`; 0 means only if
    /// the key does not exist.
    Cas {
        key: Bytes,
        value: Bytes,
        flags: u64,
        index: u64,
    },
    /// Delete one key (deleting a missing key succeeds).
    Delete { key: Bytes },
    /// Delete one key only if its ModifyIndex equals `index` (0 never deletes, as Consul).
    DeleteCas { key: Bytes, index: u64 },
    /// Delete every key that starts with `prefix`.
    DeleteTree { prefix: Bytes },
    /// Apply all operations atomically, or none.
    Txn { ops: Vec<TxnOp> },
    /// Forget tombstones whose delete index is at most `up_to` (Consul's tombstone reaping,
    /// issued by the leader after the tombstone TTL).
    ReapTombstones { up_to: u64 },
    /// Create a session (the leader picks the id).
    SessionCreate { session: Session },
    /// Invalidate a session: release or delete its keys, start their lock-delay. `now_ms`
    /// is the leader's clock when it proposed the command.
    SessionDestroy { id: String, now_ms: u64 },
    /// Write `key` and lock it for `session` (Consul's `?acquire=`).
    Acquire {
        key: Bytes,
        value: Bytes,
        flags: u64,
        session: String,
        now_ms: u64,
    },
    /// Write `key` and unlock it, if `session` holds it (Consul's `?release=`).
    Release {
        key: Bytes,
        value: Bytes,
        flags: u64,
        session: String,
    },
}

/// What applying a [`KvCommand`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOutcome {
    /// For set, cas, delete, delete-cas, delete-tree: whether the write happened.
    Applied(bool),
    /// For a transaction: every op's result, or the errors that aborted it.
    Txn(Result<Vec<TxnResult>, Vec<TxnError>>),
    /// Refused without changing anything (e.g. acquire with an unknown session).
    Rejected(String),
}

/// The outcome of a single- or all-shard write as a shard reports it.
pub fn outcome_of(r: Result<bool, String>) -> KvOutcome {
    match r {
        Ok(ok) => KvOutcome::Applied(ok),
        Err(why) => KvOutcome::Rejected(why),
    }
}

/// A request that breaks a limit; checked before a command enters the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvLimitError {
    #[error("key is {size} bytes, the limit is {MAX_KEY_SIZE}")]
    KeyTooLarge { size: usize },
    #[error("value is {size} bytes, the limit is {MAX_VALUE_SIZE}")]
    ValueTooLarge { size: usize },
    #[error("transaction has {ops} operations, the limit is {MAX_TXN_OPS}")]
    TxnTooLarge { ops: usize },
    #[error("key must not be empty")]
    EmptyKey,
    #[error("session id or name of {size} bytes exceeds {MAX_SESSION_FIELD} bytes")]
    SessionField { size: usize },
}

/// Longest session id, name or node name accepted.
pub const MAX_SESSION_FIELD: usize = 256;

fn check_session_field(s: &str) -> Result<(), KvLimitError> {
    if s.len() > MAX_SESSION_FIELD {
        return Err(KvLimitError::SessionField { size: s.len() });
    }
    Ok(())
}

fn check_key(key: &[u8]) -> Result<(), KvLimitError> {
    if key.is_empty() {
        return Err(KvLimitError::EmptyKey);
    }
    if key.len() > MAX_KEY_SIZE {
        return Err(KvLimitError::KeyTooLarge { size: key.len() });
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), KvLimitError> {
    if value.len() > MAX_VALUE_SIZE {
        return Err(KvLimitError::ValueTooLarge { size: value.len() });
    }
    Ok(())
}

fn check_prefix(prefix: &[u8]) -> Result<(), KvLimitError> {
    if prefix.len() > MAX_KEY_SIZE {
        return Err(KvLimitError::KeyTooLarge { size: prefix.len() });
    }
    Ok(())
}

impl KvCommand {
    /// Checks the command against the limits. Called before proposing, so nothing over a
    /// limit ever reaches the log.
    pub fn validate(&self) -> Result<(), KvLimitError> {
        match self {
            KvCommand::Set { key, value, .. } | KvCommand::Cas { key, value, .. } => {
                check_key(key)?;
                check_value(value)
            }
            KvCommand::Delete { key } | KvCommand::DeleteCas { key, .. } => check_key(key),
            KvCommand::DeleteTree { prefix } => check_prefix(prefix),
            KvCommand::Txn { ops } => {
                if ops.len() > MAX_TXN_OPS {
                    return Err(KvLimitError::TxnTooLarge { ops: ops.len() });
                }
                ops.iter().try_for_each(txn::validate_op)
            }
            KvCommand::ReapTombstones { .. } => Ok(()),
            KvCommand::SessionCreate { session } => {
                check_session_field(&session.id)?;
                check_session_field(&session.name)?;
                check_session_field(&session.node)
            }
            KvCommand::SessionDestroy { id, .. } => check_session_field(id),
            KvCommand::Acquire {
                key,
                value,
                session,
                ..
            }
            | KvCommand::Release {
                key,
                value,
                session,
                ..
            } => {
                check_key(key)?;
                check_value(value)?;
                check_session_field(session)
            }
        }
    }
}

/// The shard that owns `key` among `shards` (FNV-1a: stable across runs and builds, so a
/// key's owner never depends on a random hasher seed).
pub fn shard_of(key: &[u8], shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards as u64) as usize
}

/// Every shard of the store, with the routing function. The Raft apply loop's view.
#[derive(Debug, Clone)]
pub struct ShardedKv {
    shards: Vec<KvShard>,
}

impl ShardedKv {
    /// A store split into `n` shards (at least one).
    pub fn new(n: usize) -> ShardedKv {
        ShardedKv {
            shards: (0..n.max(1)).map(|_| KvShard::default()).collect(),
        }
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn shard(&self, i: usize) -> &KvShard {
        &self.shards[i]
    }

    pub fn shard_mut(&mut self, i: usize) -> &mut KvShard {
        &mut self.shards[i]
    }

    fn owner(&self, key: &[u8]) -> usize {
        shard_of(key, self.shards.len())
    }

    /// The entry at `key` and the index of the result. For a key that never existed the
    /// owning shard's index is reported (in the agent a core answers from its own shard).
    pub fn get(&self, key: &[u8]) -> (Option<KvEntry>, u64) {
        self.shards[self.owner(key)].get(key)
    }

    /// Index of the last write to any shard: what a read reports when nothing it covers
    /// ever changed (Consul reports its KV table's index).
    pub fn index(&self) -> u64 {
        self.shards.iter().map(KvShard::index).max().unwrap_or(0)
    }

    /// Entries under `prefix`, gathered from every shard and merged in key order.
    pub fn list(&self, prefix: &[u8]) -> ListResult {
        let parts = self.shards.iter().map(|s| s.list_part(prefix)).collect();
        ListResult::merge(parts, self.index())
    }

    /// Keys under `prefix`, rolled up at the first `separator` after the prefix (Consul's
    /// `?keys&separator=`), merged from every shard.
    pub fn keys(&self, prefix: &[u8], separator: Option<&[u8]>) -> (Vec<Bytes>, u64) {
        let mut all = Vec::new();
        let mut touched = None;
        for s in &self.shards {
            let (k, i) = s.keys_part(prefix, separator);
            all.extend(k);
            touched = touched.max(i);
        }
        // Keys rolled up at a separator can come from several shards.
        all.sort();
        all.dedup();
        (all, touched.unwrap_or(self.index()).max(1))
    }

    /// Applies a command at Raft index `index`. Returns the outcome and, per shard, the
    /// watches to wake.
    pub fn apply(&mut self, index: u64, cmd: &KvCommand) -> (KvOutcome, Vec<WatchId>) {
        let mut woken = Vec::new();
        let outcome = match core::plan(cmd, self.shards.len()) {
            core::Plan::Txn { .. } => {
                let KvCommand::Txn { ops } = cmd else {
                    unreachable!("only transactions plan as Txn")
                };
                KvOutcome::Txn(txn::apply(self, index, ops, &mut woken))
            }
            core::Plan::All { cmd } => {
                // Every shard answers the same (session tables are replicated); report
                // shard 0's answer, as the agent does.
                let mut first = None;
                for s in &mut self.shards {
                    let r = s.apply_local(index, &cmd, &mut woken);
                    first.get_or_insert(r);
                }
                outcome_of(first.expect("at least one shard"))
            }
            core::Plan::One { shard, cmd } => {
                outcome_of(self.shards[shard].apply_local(index, &cmd, &mut woken))
            }
        };
        (outcome, woken)
    }
}
