//! One shard core's protocol, pure: what a core owning a [`KvShard`] does with each message
//! it receives, as inputs in and replies out. The agent's thread-per-core runtime feeds it
//! from its channels; tests feed it directly.
//!
//! The core that applies the Raft log (the *sequencer*) sends each shard an ordered stream:
//! writes, transaction prepare/decide, and barriers. A prepared transaction makes the shard
//! defer every read until the decision, so no read sees half a transaction; a barrier is
//! answered where it sits in the stream, so parts of a prefix read gathered with the same
//! barrier form one consistent cut (see ARCHITECTURE.md).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::{
    KvCommand, KvEntry, KvShard, Stored, TxnError, TxnOp, TxnPart, TxnResult, WatchId, WatchTarget,
};

/// Where a reply goes: the requesting core and its request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    pub core: usize,
    pub id: u64,
}

/// A message of the sequencer's stream.
#[derive(Debug, Clone)]
pub enum StreamMsg {
    /// A write for this shard at Raft index `index`: a single-key command, a delete-tree or
    /// a tombstone reap (transactions use prepare/decide).
    Apply {
        index: u64,
        cmd: KvCommand,
        reply: Option<Origin>,
    },
    /// This shard's part of a transaction, applied tentatively.
    TxnPrepare {
        index: u64,
        txn: u64,
        ops: Vec<(usize, TxnOp)>,
        reply: Origin,
    },
    /// Keep or undo the prepared part.
    TxnDecide { txn: u64, commit: bool },
    /// Answer `read` at this point of the stream.
    Barrier { read: ReadReq, reply: Origin },
    /// Replace the whole shard (a snapshot was restored): every parked read is answered
    /// with the new state, then `reply` gets `Applied(Ok(true))`.
    Replace { kv: Box<KvShard>, reply: Origin },
}

/// A read served by the shard that owns the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadReq {
    /// One key. With `min_index` > 0 it is a blocking read: answered once the key's index
    /// exceeds `min_index`, or when the caller's wait runs out.
    Get { key: Bytes, min_index: u64 },
    /// This shard's entries under a prefix.
    ListPart { prefix: Bytes },
    /// This shard's keys under a prefix, rolled up at `separator`.
    KeysPart {
        prefix: Bytes,
        separator: Option<Bytes>,
    },
    /// Answered once something under `prefix` in this shard changed after `min_index`
    /// (a blocking prefix read parks one of these on every shard).
    WatchPrefix { prefix: Bytes, min_index: u64 },
    /// This shard's part of a snapshot image (asked through a barrier, so the parts of
    /// every shard form one cut of the stream).
    Image,
}

/// A reply to an [`Origin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Entry {
        entry: Option<KvEntry>,
        index: u64,
    },
    /// A part of a prefix read: entries, the newest change under the prefix in this shard
    /// (None if none), and the shard's index (the fallback when nothing matched anywhere).
    Part {
        entries: Vec<KvEntry>,
        touched: Option<u64>,
        shard_index: u64,
    },
    Keys {
        keys: Vec<Bytes>,
        touched: Option<u64>,
        shard_index: u64,
    },
    /// Something under a watched prefix changed (or the watch was cancelled).
    Changed,
    /// A write's outcome: whether it happened, or why it was refused.
    Applied(Result<bool, String>),
    Image(Box<super::ShardImage>),
    Prepared {
        results: Vec<(usize, TxnResult)>,
        errors: Vec<TxnError>,
    },
}

/// What the IO layer must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Reply {
        to: Origin,
        reply: Reply,
    },
    /// A blocking read was parked as `watch`: arm its timeout and call
    /// [`ShardCore::timeout`] if it fires.
    Parked {
        watch: WatchId,
        to: Origin,
    },
    /// A parked read left the parked set: a write answered it, its wait ran out, or its
    /// caller withdrew it ([`ShardCore::cancel`]). Its timer can go. Every `Parked` is
    /// followed by exactly one `Unparked` of the same watch.
    Unparked {
        watch: WatchId,
    },
}

#[derive(Debug)]
struct Parked {
    to: Origin,
    read: ReadReq,
    target: WatchTarget,
}

/// One shard core.
#[derive(Debug, Default)]
pub struct ShardCore {
    kv: KvShard,
    /// A prepared transaction part awaiting its decision.
    prepared: Option<(u64, TxnPart)>,
    /// Reads that arrived while a transaction was prepared.
    deferred: VecDeque<(Origin, ReadReq)>,
    parked: HashMap<WatchId, Parked>,
    /// The parked watch of each waiting caller, so a caller that gives up can withdraw
    /// its read ([`ShardCore::cancel`]).
    watch_of: HashMap<Origin, WatchId>,
    next_watch: WatchId,
}

impl ShardCore {
    /// A plain (non-blocking) get answered at once, as `ReadReq::Get` with no index
    /// would be; `None` while a transaction is prepared here or reads wait behind one
    /// (those must see its outcome first).
    /// `f` is given the entry (borrowed) and the result's index.
    pub(crate) fn get_now<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&Stored>, u64) -> R,
    ) -> Option<R> {
        if self.prepared.is_some() || !self.deferred.is_empty() {
            return None;
        }
        let (e, index) = self.kv.get_stored(key);
        Some(f(e, index))
    }

    pub fn new(kv: KvShard) -> ShardCore {
        ShardCore {
            kv,
            ..ShardCore::default()
        }
    }

    pub fn shard(&self) -> &KvShard {
        &self.kv
    }

    /// Reads waiting for a transaction decision.
    pub fn deferred_count(&self) -> usize {
        self.deferred.len()
    }

    pub fn parked_count(&self) -> usize {
        self.parked.len()
    }

    /// A message of the sequencer's stream.
    pub fn stream(&mut self, msg: StreamMsg) -> Vec<Effect> {
        let mut out = Vec::new();
        let mut woken = Vec::new();
        match msg {
            StreamMsg::Apply { index, cmd, reply } => {
                debug_assert!(
                    self.prepared.is_none(),
                    "the sequencer decides before writing"
                );
                let ok = self.kv.apply_local(index, &cmd, &mut woken);
                if let Some(to) = reply {
                    out.push(Effect::Reply {
                        to,
                        reply: Reply::Applied(ok),
                    });
                }
            }
            StreamMsg::TxnPrepare {
                index,
                txn,
                ops,
                reply,
            } => {
                let part = self.kv.txn_prepare(index, &ops, &mut woken);
                out.push(Effect::Reply {
                    to: reply,
                    reply: Reply::Prepared {
                        results: part.results.clone(),
                        errors: part.errors.clone(),
                    },
                });
                self.prepared = Some((txn, part));
            }
            StreamMsg::TxnDecide { txn, commit } => {
                if let Some((t, part)) = self.prepared.take() {
                    debug_assert_eq!(t, txn);
                    if !commit {
                        self.kv.txn_abort(part);
                    }
                }
                while let Some((to, read)) = self.deferred.pop_front() {
                    self.read_now(to, read, &mut out);
                }
            }
            StreamMsg::Barrier { read, reply } => self.read(reply, read, &mut out),
            StreamMsg::Replace { kv, reply } => {
                debug_assert!(self.prepared.is_none());
                self.kv = *kv;
                let watches: Vec<WatchId> = self.parked.keys().copied().collect();
                for w in watches {
                    out.extend(self.timeout(w));
                }
                out.push(Effect::Reply {
                    to: reply,
                    reply: Reply::Applied(Ok(true)),
                });
            }
        }
        // Woken watches answer after the write is final (a prepared transaction's wake-ups
        // wait for its decision with the other deferred reads).
        for id in woken {
            if let Some(p) = self.parked.remove(&id) {
                self.watch_of.remove(&p.to);
                self.read(p.to, p.read, &mut out);
                out.push(Effect::Unparked { watch: id });
            }
        }
        out
    }

    /// A read from any core.
    pub fn read(&mut self, to: Origin, read: ReadReq, out: &mut Vec<Effect>) {
        if self.prepared.is_some() {
            self.deferred.push_back((to, read));
        } else {
            self.read_now(to, read, out);
        }
    }

    fn read_now(&mut self, to: Origin, read: ReadReq, out: &mut Vec<Effect>) {
        let reply = match &read {
            ReadReq::Get { key, min_index } => {
                let (e, index) = self.kv.get(key);
                if *min_index > 0 && index <= *min_index {
                    let target = WatchTarget::Key(key.clone());
                    self.park(to, read.clone(), target, out);
                    return;
                }
                Reply::Entry { entry: e, index }
            }
            ReadReq::ListPart { prefix } => {
                let (entries, touched) = self.kv.list_part(prefix);
                Reply::Part {
                    entries,
                    touched,
                    shard_index: self.kv.index(),
                }
            }
            ReadReq::KeysPart { prefix, separator } => {
                let (keys, touched) = self.kv.keys_part(prefix, separator.as_deref());
                Reply::Keys {
                    keys,
                    touched,
                    shard_index: self.kv.index(),
                }
            }
            ReadReq::Image => Reply::Image(Box::new(self.kv.image_part())),
            ReadReq::WatchPrefix { prefix, min_index } => {
                let touched = self.kv.list_part(prefix).1.unwrap_or(0);
                if touched <= *min_index {
                    let target = WatchTarget::Prefix(prefix.clone());
                    self.park(to, read.clone(), target, out);
                    return;
                }
                Reply::Changed
            }
        };
        out.push(Effect::Reply { to, reply });
    }

    fn park(&mut self, to: Origin, read: ReadReq, target: WatchTarget, out: &mut Vec<Effect>) {
        self.next_watch += 1;
        let id = self.next_watch;
        self.kv.watch(id, target.clone());
        self.parked.insert(id, Parked { to, read, target });
        self.watch_of.insert(to, id);
        out.push(Effect::Parked { watch: id, to });
    }

    /// A parked read's wait ran out: answer with what there is now. Does nothing if the
    /// read was already answered.
    pub fn timeout(&mut self, watch: WatchId) -> Vec<Effect> {
        let mut out = Vec::new();
        if let Some(p) = self.parked.remove(&watch) {
            self.watch_of.remove(&p.to);
            self.kv.unwatch(watch, &p.target);
            let reply = match p.read {
                ReadReq::Get { key, .. } => {
                    let (e, index) = self.kv.get(&key);
                    Reply::Entry { entry: e, index }
                }
                _ => Reply::Changed,
            };
            out.push(Effect::Reply { to: p.to, reply });
            out.push(Effect::Unparked { watch });
        }
        out
    }

    /// The caller of the read `to` stopped waiting for it (its client went away): the
    /// read is dropped unanswered, whether parked (then `Unparked`) or deferred behind a
    /// prepared transaction. Does nothing if it was already answered.
    pub fn cancel(&mut self, to: Origin) -> Vec<Effect> {
        let mut out = Vec::new();
        if let Some(watch) = self.watch_of.remove(&to) {
            if let Some(p) = self.parked.remove(&watch) {
                self.kv.unwatch(watch, &p.target);
            }
            out.push(Effect::Unparked { watch });
        } else {
            self.deferred.retain(|(o, _)| *o != to);
        }
        out
    }
}

impl KvShard {
    /// Applies a write whose keys all live in this shard (or, for delete-tree, reaping and
    /// sessions, this shard's part of it). Returns whether it happened, or why it was
    /// refused (nothing changed then).
    pub fn apply_local(
        &mut self,
        index: u64,
        cmd: &KvCommand,
        woken: &mut Vec<WatchId>,
    ) -> Result<bool, String> {
        Ok(match cmd {
            KvCommand::Set { key, value, flags } => {
                self.set_stored(index, key, value, *flags, woken);
                true
            }
            KvCommand::Cas {
                key,
                value,
                flags,
                index: expect,
            } => self.cas(index, key, value, *flags, *expect, woken),
            KvCommand::Delete { key } => {
                self.delete(index, key, woken);
                true
            }
            KvCommand::DeleteCas { key, index: expect } => {
                self.delete_cas(index, key, *expect, woken)
            }
            KvCommand::DeleteTree { prefix } => {
                self.delete_tree(index, prefix, woken);
                true
            }
            KvCommand::ReapTombstones { up_to } => {
                self.reap_tombstones(*up_to);
                true
            }
            KvCommand::SessionCreate { session } => self.session_create(index, session.clone()),
            KvCommand::SessionDestroy { id, now_ms } => {
                self.session_destroy(index, id, *now_ms, woken)
            }
            KvCommand::Acquire {
                key,
                value,
                flags,
                session,
                now_ms,
            } => {
                let req = super::session::Acquire {
                    key,
                    value,
                    flags: *flags,
                    session,
                    now_ms: *now_ms,
                };
                self.acquire(index, req, woken)?
            }
            KvCommand::Release {
                key,
                value,
                flags,
                session,
            } => self.release(index, key, value, *flags, session, woken),
            KvCommand::Txn { .. } => {
                return Err("transactions go through txn_prepare".to_string());
            }
        })
    }
}

/// How the sequencer carries out one command across `shards` shard cores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Send to one shard; its answer is the outcome.
    One { shard: usize, cmd: KvCommand },
    /// Send to every shard (delete-tree, reaping, sessions); every shard answers the same,
    /// and shard 0's answer is the outcome.
    All { cmd: KvCommand },
    /// Prepare each non-empty part on its shard, then commit if no part has errors, else
    /// abort; combine the parts with [`super::combine_txn`].
    Txn {
        parts: Vec<(usize, Vec<(usize, TxnOp)>)>,
    },
}

/// Plans `cmd` for `shards` shards.
pub fn plan(cmd: &KvCommand, shards: usize) -> Plan {
    use super::shard_of;
    match cmd {
        KvCommand::Set { key, .. }
        | KvCommand::Cas { key, .. }
        | KvCommand::Delete { key }
        | KvCommand::DeleteCas { key, .. }
        | KvCommand::Acquire { key, .. }
        | KvCommand::Release { key, .. } => Plan::One {
            shard: shard_of(key, shards),
            cmd: cmd.clone(),
        },
        KvCommand::DeleteTree { .. }
        | KvCommand::ReapTombstones { .. }
        | KvCommand::SessionCreate { .. }
        | KvCommand::SessionDestroy { .. } => Plan::All { cmd: cmd.clone() },
        KvCommand::Txn { ops } => Plan::Txn {
            parts: super::split_txn(ops, shards)
                .into_iter()
                .enumerate()
                .filter(|(_, p)| !p.is_empty())
                .collect(),
        },
    }
}
