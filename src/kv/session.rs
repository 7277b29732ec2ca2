//! Sessions and locks, with Consul's semantics.
//!
//! A session is created by a client on a node; a key acquired with it is locked: other
//! sessions cannot acquire it until it is released, or until the session is invalidated
//! (destroyed, its TTL ran out, or its node or checks failed — the leader decides and
//! proposes `SessionDestroy`). On invalidation each held key is released or deleted, per
//! the session's behavior, and may not be acquired again for the session's lock-delay.
//!
//! The session table is small and every shard keeps a full copy (session writes go to
//! every shard), so a shard checks an acquire against its own copy. Time enters only as
//! the leader's clock stamped into the command (`now_ms`), so every replica applies the
//! same log to the same state.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::stored::Stored;
use super::{KvShard, WatchId};

/// What happens to a session's locks when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// The keys stay, unlocked (Consul's default).
    Release,
    /// The keys are deleted.
    Delete,
}

/// One session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    pub behavior: Behavior,
    /// 0: no TTL. Enforced by the leader, which proposes the destroy.
    pub ttl_ms: u64,
    /// After invalidation, the keys it held cannot be acquired for this long (Consul's
    /// default 15 s), so a new holder cannot act before the old one noticed.
    pub lock_delay_ms: u64,
    pub create_index: u64,
    /// Node-level checks of `node` whose failure (critical, or deregistered) invalidates
    /// the session (Consul's `NodeChecks`; `serfHealth` unless given).
    pub node_checks: Vec<String>,
    /// Service checks of `node` that do the same (Consul's `ServiceChecks`).
    pub service_checks: Vec<String>,
}

/// The arguments of [`KvShard::acquire`].
#[derive(Debug, Clone, Copy)]
pub struct Acquire<'a> {
    pub key: &'a Bytes,
    pub value: &'a Bytes,
    pub flags: u64,
    pub session: &'a str,
    /// The leader's clock when it proposed the acquire.
    pub now_ms: u64,
}

/// Per-shard session state: the replicated table, the keys of this shard each session
/// holds, and the lock-delays in force.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sessions {
    pub(crate) table: BTreeMap<String, Session>,
    pub(crate) held: BTreeMap<String, BTreeSet<Bytes>>,
    /// Key → time (leader ms) before which it may not be acquired.
    pub(crate) lock_delay: BTreeMap<Bytes, u64>,
}

impl KvShard {
    /// A session by id.
    pub fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.table.get(id)
    }

    /// Every session, by id.
    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.table.values()
    }

    /// Creates a session (every shard). False if the id exists.
    pub fn session_create(&mut self, index: u64, mut s: Session) -> bool {
        if self.sessions.table.contains_key(&s.id) {
            return false;
        }
        s.create_index = index;
        self.sessions.table.insert(s.id.clone(), s);
        true
    }

    /// Invalidates a session (every shard): its keys in this shard are released or
    /// deleted, and get a lock-delay. False if there was no such session.
    pub fn session_destroy(
        &mut self,
        index: u64,
        id: &str,
        now_ms: u64,
        woken: &mut Vec<WatchId>,
    ) -> bool {
        let Some(s) = self.sessions.table.remove(id) else {
            return false;
        };
        let keys = self.sessions.held.remove(id).unwrap_or_default();
        for key in keys {
            if s.lock_delay_ms > 0 {
                self.sessions
                    .lock_delay
                    .insert(key.clone(), now_ms.saturating_add(s.lock_delay_ms));
            }
            match s.behavior {
                Behavior::Delete => {
                    self.delete(index, &key, woken);
                }
                Behavior::Release => {
                    if self.update_lock(&key, None, false, Some(index)) {
                        self.touch(index, &key, woken);
                    }
                }
            }
        }
        true
    }

    /// Acquires `req.key` for `req.session`, writing `req.value`. `Err` if the session does
    /// not exist; `Ok(false)` if another session holds the key or its lock-delay is in
    /// force.
    pub fn acquire(
        &mut self,
        index: u64,
        req: Acquire<'_>,
        woken: &mut Vec<WatchId>,
    ) -> Result<bool, String> {
        let Acquire {
            key,
            value,
            flags,
            session,
            now_ms,
        } = req;
        if !self.sessions.table.contains_key(session) {
            return Err(format!("invalid session {session:?}"));
        }
        if let Some(until) = self.sessions.lock_delay.get(key) {
            if now_ms < *until {
                return Ok(false);
            }
        }
        let held_by = self.stored(key).and_then(Stored::session);
        match held_by.as_deref() {
            Some(other) if other != session => return Ok(false),
            _ => {}
        }
        let fresh_lock = held_by.is_none();
        self.set_stored(index, key, value, flags, woken);
        self.update_lock(key, Some(session), fresh_lock, None);
        self.sessions.lock_delay.remove(&key[..]);
        self.sessions
            .held
            .entry(session.to_string())
            .or_default()
            .insert(Bytes::copy_from_slice(key));
        Ok(true)
    }

    /// Releases `key` held by `session`, writing `value`. False if `session` does not hold
    /// it.
    pub fn release(
        &mut self,
        index: u64,
        key: &Bytes,
        value: &Bytes,
        flags: u64,
        session: &str,
        woken: &mut Vec<WatchId>,
    ) -> bool {
        let held = self.stored(key).is_some_and(|e| e.held_by(session));
        if !held {
            return false;
        }
        self.set_stored(index, key, value, flags, woken);
        self.update_lock(key, None, false, None);
        if let Some(keys) = self.sessions.held.get_mut(session) {
            keys.remove(&key[..]);
        }
        true
    }

    /// Forgets that a deleted key was held (called by every delete).
    pub(crate) fn forget_holder(&mut self, old: &Stored) {
        if let Some(s) = old.session() {
            if let Some(keys) = self.sessions.held.get_mut(&s) {
                keys.remove(old.key());
            }
        }
    }
}
