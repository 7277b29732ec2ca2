//! Transactions: up to 128 operations applied atomically, across shards.
//!
//! Operations run in order, each seeing the effects of the ones before it (all at the same
//! Raft index). Every failing operation is reported with its position, as Consul does; if
//! any failed, every change is undone and nothing is visible.

use bytes::Bytes;

use super::{
    check_key, check_prefix, check_value, shard_of, KvEntry, KvLimitError, ShardedKv, WatchId,
};

/// One operation of a transaction (Consul's KV verbs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Set {
        key: Bytes,
        value: Bytes,
        flags: u64,
    },
    /// Set only if ModifyIndex equals `index` (0: only if absent).
    Cas {
        key: Bytes,
        value: Bytes,
        flags: u64,
        index: u64,
    },
    /// Read a key; fails the transaction if it does not exist.
    Get {
        key: Bytes,
    },
    /// Read every key under a prefix.
    GetTree {
        prefix: Bytes,
    },
    /// Fail unless the key's ModifyIndex equals `index`.
    CheckIndex {
        key: Bytes,
        index: u64,
    },
    /// Fail if the key exists.
    CheckNotExists {
        key: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// Delete only if ModifyIndex equals `index`.
    DeleteCas {
        key: Bytes,
        index: u64,
    },
    DeleteTree {
        prefix: Bytes,
    },
}

impl TxnOp {
    pub(super) fn validate(&self) -> Result<(), KvLimitError> {
        match self {
            TxnOp::Set { key, value, .. } | TxnOp::Cas { key, value, .. } => {
                check_key(key)?;
                check_value(value)
            }
            TxnOp::Get { key }
            | TxnOp::CheckIndex { key, .. }
            | TxnOp::CheckNotExists { key }
            | TxnOp::Delete { key }
            | TxnOp::DeleteCas { key, .. } => check_key(key),
            TxnOp::GetTree { prefix } | TxnOp::DeleteTree { prefix } => check_prefix(prefix),
        }
    }
}

/// A result of a successful transaction: the entry an operation read or wrote. As in
/// Consul, only reads carry the value; writes return the entry's metadata with an empty
/// value. Deletes return nothing.
pub type TxnResult = KvEntry;

/// Why one operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnError {
    /// Position of the operation in the transaction.
    pub op_index: usize,
    pub what: String,
}

/// What to put back if the transaction aborts.
struct Undo {
    shard: usize,
    key: Bytes,
    entry: Option<KvEntry>,
    tombstone: Option<u64>,
    shard_index: u64,
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn blank(mut e: KvEntry) -> KvEntry {
    e.value = Bytes::new();
    e
}

pub(super) fn apply(
    kv: &mut ShardedKv,
    index: u64,
    ops: &[TxnOp],
    woken: &mut Vec<WatchId>,
) -> Result<Vec<TxnResult>, Vec<TxnError>> {
    let n = kv.shard_count();
    let mut undo: Vec<Undo> = Vec::new();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let save = |kv: &ShardedKv, shard: usize, key: &Bytes, undo: &mut Vec<Undo>| {
        let (entry, tombstone) = kv.shard(shard).raw(key);
        undo.push(Undo {
            shard,
            key: key.clone(),
            entry,
            tombstone,
            shard_index: kv.shard(shard).index(),
        });
    };
    for (i, op) in ops.iter().enumerate() {
        let fail = |what: String| TxnError { op_index: i, what };
        match op {
            TxnOp::Set { key, value, flags } => {
                let s = shard_of(key, n);
                save(kv, s, key, &mut undo);
                let e = kv.shard_mut(s).set(index, key, value, *flags, woken);
                results.push(blank(e));
            }
            TxnOp::Cas {
                key,
                value,
                flags,
                index: expect,
            } => {
                let s = shard_of(key, n);
                if kv.shard(s).cas_matches(key, *expect) {
                    save(kv, s, key, &mut undo);
                    let e = kv.shard_mut(s).set(index, key, value, *flags, woken);
                    results.push(blank(e));
                } else {
                    errors.push(fail(format!(
                        "failed to set key {:?}, index is stale",
                        show(key)
                    )));
                }
            }
            TxnOp::Get { key } => match kv.get(key).0 {
                Some(e) => results.push(e.clone()),
                None => errors.push(fail(format!("key {:?} doesn't exist", show(key)))),
            },
            TxnOp::GetTree { prefix } => results.extend(kv.list(prefix).entries),
            TxnOp::CheckIndex { key, index: expect } => match kv.get(key).0 {
                Some(e) if e.modify_index == *expect => results.push(blank(e.clone())),
                Some(e) => errors.push(fail(format!(
                    "current modify index {} != {expect}",
                    e.modify_index
                ))),
                None => errors.push(fail(format!("key {:?} doesn't exist", show(key)))),
            },
            TxnOp::CheckNotExists { key } => {
                if kv.get(key).0.is_some() {
                    errors.push(fail(format!("key {:?} exists", show(key))));
                }
            }
            TxnOp::Delete { key } => {
                let s = shard_of(key, n);
                save(kv, s, key, &mut undo);
                kv.shard_mut(s).delete(index, key, woken);
            }
            TxnOp::DeleteCas { key, index: expect } => {
                let s = shard_of(key, n);
                save(kv, s, key, &mut undo);
                if !kv.shard_mut(s).delete_cas(index, key, *expect, woken) {
                    errors.push(fail(format!(
                        "failed to delete key {:?}, index is stale",
                        show(key)
                    )));
                }
            }
            TxnOp::DeleteTree { prefix } => {
                for s in 0..n {
                    for key in kv.shard(s).keys_under(prefix) {
                        save(kv, s, &key, &mut undo);
                        kv.shard_mut(s).delete(index, &key, woken);
                    }
                }
            }
        }
    }
    if errors.is_empty() {
        return Ok(results);
    }
    // Undo newest first, so each key ends as it was before the transaction. Watches woken
    // meanwhile stay woken: a spurious wake-up only makes the waiter look again.
    for u in undo.into_iter().rev() {
        kv.shard_mut(u.shard)
            .restore(&u.key, u.entry, u.tombstone, u.shard_index);
    }
    Err(errors)
}
