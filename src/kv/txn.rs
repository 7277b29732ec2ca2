//! Transactions: up to 128 operations applied atomically, across shards.
//!
//! Operations run in order, each seeing the effects of the ones before it (all at the same
//! Raft index). Every failing operation is reported with its position, as Consul does; if
//! any failed, every change is undone and nothing is visible.

use bytes::Bytes;

use super::{
    check_key, check_prefix, check_value, shard_of, KvEntry, KvLimitError, KvShard, ShardedKv,
    WatchId,
};

/// One operation of a transaction (Consul's KV verbs). The same type travels in RPC
/// requests, so a server hands a request's operations to the state machine as they are.
pub use cairn_net::rpc::message::TxnOp;

/// Checks one operation against the limits.
pub(super) fn validate_op(op: &TxnOp) -> Result<(), KvLimitError> {
    match op {
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

/// What to put back in a shard if the transaction aborts.
#[derive(Debug, Clone)]
struct Undo {
    key: Bytes,
    entry: Option<super::stored::Stored>,
    tombstone: Option<u64>,
    shard_index: u64,
}

/// One shard's evaluation of its part of a transaction: results and errors tagged with op
/// positions, and what to undo if the transaction aborts. While a part is prepared and not
/// yet committed or aborted, the shard must serve no reads (the agent defers them).
#[derive(Debug, Clone, Default)]
pub struct TxnPart {
    pub results: Vec<(usize, TxnResult)>,
    pub errors: Vec<TxnError>,
    undo: Vec<Undo>,
}

fn show(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn blank(mut e: KvEntry) -> KvEntry {
    e.value = Bytes::new();
    e
}

/// Splits a transaction into per-shard parts: each op goes to the shard owning its key;
/// get-tree and delete-tree go to every shard. Positions are kept, so evaluating each part
/// in order is the same as evaluating the whole transaction in order: ops on different
/// shards never touch the same key.
pub fn split(ops: &[TxnOp], shards: usize) -> Vec<Vec<(usize, TxnOp)>> {
    let mut parts = vec![Vec::new(); shards];
    for (i, op) in ops.iter().enumerate() {
        match op {
            TxnOp::GetTree { .. } | TxnOp::DeleteTree { .. } => {
                for p in parts.iter_mut() {
                    p.push((i, op.clone()));
                }
            }
            TxnOp::Set { key, .. }
            | TxnOp::Cas { key, .. }
            | TxnOp::Get { key }
            | TxnOp::CheckIndex { key, .. }
            | TxnOp::CheckNotExists { key }
            | TxnOp::Delete { key }
            | TxnOp::DeleteCas { key, .. } => parts[shard_of(key, shards)].push((i, op.clone())),
        }
    }
    parts
}

/// What one shard's part of a transaction produced: results and errors tagged with op
/// positions (what a shard core sends back to the sequencer).
pub type PartOutcome = (Vec<(usize, TxnResult)>, Vec<TxnError>);

/// Combines the parts' outcomes: results in op order (a get-tree's entries in key order),
/// or every error in op order if any op failed.
pub fn combine(parts: Vec<PartOutcome>) -> Result<Vec<TxnResult>, Vec<TxnError>> {
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (r, e) in parts {
        results.extend(r);
        errors.extend(e);
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.op_index);
        return Err(errors);
    }
    results.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.key.cmp(&b.1.key)));
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

impl KvShard {
    /// Applies this shard's part of a transaction at `index`, tentatively: follow with
    /// [`KvShard::txn_abort`] if any part of the transaction failed.
    pub fn txn_prepare(
        &mut self,
        index: u64,
        ops: &[(usize, TxnOp)],
        woken: &mut Vec<WatchId>,
    ) -> TxnPart {
        let mut part = TxnPart::default();
        for (i, op) in ops {
            let i = *i;
            let fail = |what: String| TxnError { op_index: i, what };
            match op {
                TxnOp::Set { key, value, flags } => {
                    self.save(key, &mut part.undo);
                    let e = self.set(index, key, value, *flags, woken);
                    part.results.push((i, blank(e)));
                }
                TxnOp::Cas {
                    key,
                    value,
                    flags,
                    index: expect,
                } => {
                    if self.cas_matches(key, *expect) {
                        self.save(key, &mut part.undo);
                        let e = self.set(index, key, value, *flags, woken);
                        part.results.push((i, blank(e)));
                    } else {
                        part.errors.push(fail(format!(
                            "failed to set key {:?}, index is stale",
                            show(key)
                        )));
                    }
                }
                TxnOp::Get { key } => match self.get(key).0 {
                    Some(e) => part.results.push((i, e)),
                    None => part
                        .errors
                        .push(fail(format!("key {:?} doesn't exist", show(key)))),
                },
                TxnOp::GetTree { prefix } => {
                    let (entries, _) = self.list_part(prefix);
                    part.results.extend(entries.into_iter().map(|e| (i, e)));
                }
                TxnOp::CheckIndex { key, index: expect } => match self.get(key).0 {
                    Some(e) if e.modify_index == *expect => part.results.push((i, blank(e))),
                    Some(e) => part.errors.push(fail(format!(
                        "current modify index {} != {expect}",
                        e.modify_index
                    ))),
                    None => part
                        .errors
                        .push(fail(format!("key {:?} doesn't exist", show(key)))),
                },
                TxnOp::CheckNotExists { key } => {
                    if self.stored(key).is_some() {
                        part.errors
                            .push(fail(format!("key {:?} exists", show(key))));
                    }
                }
                TxnOp::Delete { key } => {
                    self.save(key, &mut part.undo);
                    self.delete(index, key, woken);
                }
                TxnOp::DeleteCas { key, index: expect } => {
                    self.save(key, &mut part.undo);
                    if !self.delete_cas(index, key, *expect, woken) {
                        part.errors.push(fail(format!(
                            "failed to delete key {:?}, index is stale",
                            show(key)
                        )));
                    }
                }
                TxnOp::DeleteTree { prefix } => {
                    for key in self.keys_under(prefix) {
                        self.save(&key, &mut part.undo);
                        self.delete(index, &key, woken);
                    }
                }
            }
        }
        part
    }

    /// Undoes a prepared part, newest change first, so each key ends as it was. Watches
    /// woken by the tentative writes stay woken: a spurious wake-up only makes the waiter
    /// look again.
    pub fn txn_abort(&mut self, part: TxnPart) {
        for u in part.undo.into_iter().rev() {
            self.restore(&u.key, u.entry, u.tombstone, u.shard_index);
        }
    }

    fn save(&self, key: &Bytes, undo: &mut Vec<Undo>) {
        let (entry, tombstone) = self.raw(key);
        undo.push(Undo {
            key: key.clone(),
            entry,
            tombstone,
            shard_index: self.index(),
        });
    }
}

/// The whole transaction on a [`ShardedKv`]: split, prepare every part, abort all if any
/// failed. The agent does the same with one part per core.
pub(super) fn apply(
    kv: &mut ShardedKv,
    index: u64,
    ops: &[TxnOp],
    woken: &mut Vec<WatchId>,
) -> Result<Vec<TxnResult>, Vec<TxnError>> {
    let split = split(ops, kv.shard_count());
    let parts: Vec<TxnPart> = split
        .iter()
        .enumerate()
        .map(|(s, part)| kv.shard_mut(s).txn_prepare(index, part, woken))
        .collect();
    if parts.iter().all(|p| p.errors.is_empty()) {
        return combine(parts.into_iter().map(|p| (p.results, p.errors)).collect());
    }
    let errors = parts
        .into_iter()
        .enumerate()
        .map(|(s, p)| {
            let errors = p.errors.clone();
            kv.shard_mut(s).txn_abort(p);
            (Vec::new(), errors)
        })
        .collect();
    combine(errors)
}
