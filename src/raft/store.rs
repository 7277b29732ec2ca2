//! openraft's storage over Cairn's: the Raft log is a [`SegmentLog`], the state machine is
//! the KV store and the catalog, snapshots are `StateImage` files.
//!
//! Both live on the core that runs the Raft group (openraft is single-threaded here), so
//! they share state through `Rc<RefCell<_>>`; no borrow is held across an await.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use cairn_storage::snapshot::{
    list_snapshots, map_snapshot_file, write_snapshot, Snapshot as SnapshotFile,
};
use cairn_storage::state::{StateImage, StateImageOf};
use cairn_storage::transfer::{Chunk, SnapshotReceiver, DEFAULT_MAX_SNAPSHOT_BYTES};
use cairn_storage::{
    LogId as StoreLogId, LogOptions, NewEntry, PendingSync, SegmentLog, Vote as StoreVote,
};
use futures_util::StreamExt;
use openraft::impls::leader_id_std::LeaderId;
use openraft::impls::EntryPayload;
use openraft::storage::{EntryResponder, IOFlushed, LogState, RaftLogStorage, RaftStateMachine};
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{OptionalSend, RaftLogReader, RaftSnapshotBuilder, StoredMembership};

use super::types::{
    decode_payload, encode_payload, Command, Entry, Outcome, RaftLogId, TypeConfig, Vote,
};
use crate::catalog::Catalog;
use crate::kv::ShardedKv;
use crate::runtime::shards::Shards;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn to_raft(id: StoreLogId) -> RaftLogId {
    RaftLogId::new_term_index(id.term, id.index)
}

fn to_store(id: &RaftLogId) -> StoreLogId {
    StoreLogId {
        term: id.leader_id.term,
        index: id.index,
    }
}

/// The Raft log.
#[derive(Clone)]
pub struct LogStore {
    log: Rc<RefCell<SegmentLog>>,
    /// `None`: appends fdatasync inline on the core.
    syncer: Option<Rc<Syncer>>,
    /// Set while this server follows: its appends then fdatasync inline (see
    /// [`LogStore::follower_flushes_inline`]).
    following: Rc<std::cell::Cell<bool>>,
}

/// Where an append's fdatasync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// On the Raft core, inside `append`: the least latency when nothing else needs the
    /// core meanwhile (a one-server cluster).
    Inline,
    /// On a sync thread, so the core replicates and serves while the disk works (a
    /// cluster: the leader's flush overlaps its followers').
    Background,
}

impl LogStore {
    pub fn open(dir: &Path, opts: LogOptions, flush: Flush) -> io::Result<LogStore> {
        let log = SegmentLog::open(dir, opts).map_err(io_err)?;
        let syncer = match flush {
            Flush::Inline => None,
            Flush::Background => Some(Rc::new(Syncer::new()?)),
        };
        Ok(LogStore {
            log: Rc::new(RefCell::new(log)),
            syncer,
            following: Rc::new(std::cell::Cell::new(false)),
        })
    }

    /// The flag the server sets while it follows: with nothing else to do on its core
    /// but take the leader's entries, a follower flushes inline and saves the two
    /// thread hand-offs of the sync thread; a leader keeps flushing beside replication.
    pub fn follower_flushes_inline(&self) -> Rc<std::cell::Cell<bool>> {
        self.following.clone()
    }
}

/// Makes appends durable on a thread of its own, so the core that runs Raft keeps
/// replicating, answering and accepting the next entries while the disk works (a
/// blocking fdatasync on the core stalled everything on it for the whole flush).
///
/// Appends are flushed and reported in the order they were made: the thread takes every
/// sync queued since its last one, runs them (after the first, an fdatasync of the same
/// file finds little to do, so a burst costs about one flush: group commit), and hands
/// them back in order; one task on the core completes them and tells openraft, oldest
/// first.
struct Syncer {
    /// To the sync thread: a pending fdatasync, or `None` for an append that needed none
    /// (it still completes in order, after the ones before it).
    tx: std::sync::mpsc::Sender<Option<PendingSync>>,
    /// Back from the sync thread, in order; taken by the completion task when it starts.
    done: RefCell<Option<futures_channel::mpsc::UnboundedReceiver<Vec<Option<PendingSync>>>>>,
    /// openraft's callbacks, in append order.
    waiting: RefCell<VecDeque<IOFlushed<TypeConfig>>>,
}

impl Syncer {
    fn new() -> io::Result<Syncer> {
        let (tx, rx) = std::sync::mpsc::channel::<Option<PendingSync>>();
        let (done_tx, done_rx) = futures_channel::mpsc::unbounded();
        std::thread::Builder::new()
            .name("cairn-log-sync".into())
            .spawn(move || {
                // Ends when the log store is dropped (the sender goes away).
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    for p in batch.iter().flatten() {
                        p.run(); // a failed fdatasync ends the process
                    }
                    if done_tx.unbounded_send(batch).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Syncer {
            tx,
            done: RefCell::new(Some(done_rx)),
            waiting: RefCell::new(VecDeque::new()),
        })
    }
}

impl LogStore {
    /// Queues the durability of everything appended so far; `callback` is told once it
    /// is on disk.
    fn flush_later(&self, callback: IOFlushed<TypeConfig>) -> io::Result<()> {
        // Inline only when no background sync is pending: callbacks complete in order.
        let syncer = match &self.syncer {
            Some(s) if !(self.following.get() && s.waiting.borrow().is_empty()) => s,
            _ => {
                let synced = self.log.borrow_mut().sync().map(|_| ()).map_err(io_err);
                callback.io_completed(match &synced {
                    Ok(()) => Ok(()),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                });
                return synced;
            }
        };
        if let Some(done) = syncer.done.borrow_mut().take() {
            let (log, syncer) = (self.log.clone(), syncer.clone());
            glommio::spawn_local(complete_syncs(done, log, syncer)).detach();
        }
        let pending = self.log.borrow_mut().prepare_sync().map_err(io_err)?;
        syncer.waiting.borrow_mut().push_back(callback);
        syncer
            .tx
            .send(pending)
            .map_err(|_| io::Error::other("the log sync thread is gone"))
    }
}

async fn complete_syncs(
    mut done: futures_channel::mpsc::UnboundedReceiver<Vec<Option<PendingSync>>>,
    log: Rc<RefCell<SegmentLog>>,
    syncer: Rc<Syncer>,
) {
    while let Some(batch) = done.next().await {
        for p in batch {
            if let Some(p) = p {
                log.borrow_mut().complete_sync(p);
            }
            let callback = syncer.waiting.borrow_mut().pop_front();
            if let Some(cb) = callback {
                cb.io_completed(Ok(()));
            }
        }
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let (start, end) = bounds(&range);
        let mut log = self.log.borrow_mut();
        let entries = log
            .range(start..end)
            .into_iter()
            .map(|e| {
                Ok(Entry {
                    log_id: RaftLogId::new_term_index(e.term, e.index),
                    payload: decode_payload(&e.payload)?,
                })
            })
            .collect();
        // Readers move forward (applying, replicating): the pages of what lies before this
        // read need not stay resident (a lagging reader faults them back in from the page
        // cache). Without this a lone server kept every page read since the last purge.
        log.release_before(start);
        entries
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.log.borrow().meta().vote.map(|v| Vote {
            leader_id: LeaderId {
                term: v.term,
                voted_for: v.node_id,
            },
            committed: v.committed,
        }))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let log = self.log.borrow();
        Ok(LogState {
            last_purged_log_id: log.last_purged().map(to_raft),
            last_log_id: log.last_log_id().map(to_raft),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.log
            .borrow_mut()
            .save_vote(StoreVote {
                term: vote.leader_id.term,
                node_id: vote.leader_id.voted_for,
                committed: vote.committed,
            })
            .map_err(io_err)
    }

    /// The committed id may lag after a restart (openraft re-learns it from the leader),
    /// so it is kept in memory and persisted with the next metadata write instead of
    /// costing three fsyncs on every commit.
    async fn save_committed(&mut self, committed: Option<RaftLogId>) -> io::Result<()> {
        self.log
            .borrow_mut()
            .note_committed(committed.as_ref().map(to_store));
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<RaftLogId>> {
        Ok(self.log.borrow().meta().committed.map(to_raft))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let payloads: Vec<Bytes> = entries.iter().map(|e| encode_payload(&e.payload)).collect();
        let batch: Vec<NewEntry<'_>> = entries
            .iter()
            .zip(&payloads)
            .map(|(e, p)| NewEntry {
                term: e.log_id.leader_id.term,
                index: e.log_id.index,
                payload: p,
            })
            .collect();
        let result = self.log.borrow_mut().append(&batch);
        match result {
            // Reported durable only after the fdatasync that covers the entries.
            Ok(()) => self.flush_later(callback),
            Err(e) => {
                let e = io_err(e);
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<RaftLogId>) -> io::Result<()> {
        let mut log = self.log.borrow_mut();
        match last_log_id {
            Some(id) => log.truncate_after(id.index),
            None => log.truncate_all(),
        }
        .map_err(io_err)
    }

    async fn purge(&mut self, log_id: RaftLogId) -> io::Result<()> {
        self.log
            .borrow_mut()
            .purge_to(to_store(&log_id))
            .map_err(io_err)
    }
}

/// The state machine: the KV store, the last applied log id and membership, and the
/// snapshot directory.
#[derive(Clone)]
pub struct StateMachine {
    inner: Rc<RefCell<SmInner>>,
}

struct SmInner {
    /// The KV store, one shard per core; this handle is core 0's (the sequencer).
    shards: Shards,
    catalog: Catalog,
    /// Bumped whenever a snapshot replaced the catalog: answers built from the catalog
    /// stay valid while this and the catalog's indexes hold still
    /// ([`StateMachine::catalog_restores`]).
    catalog_restores: u64,
    last_applied: Option<RaftLogId>,
    membership: StoredMembershipOf<TypeConfig>,
    dir: PathBuf,
    /// The index of the last applied entry, for blocking reads to wait on.
    applied: tokio::sync::watch::Sender<u64>,
    /// The catalog's index ([`Catalog::index`]), sent whenever it moved (after an applied
    /// batch or a restore): blocking catalog reads wait on this, so KV writes, however
    /// many, never wake them.
    catalog_applied: tokio::sync::watch::Sender<u64>,
    /// Per watched service name, its instances' index: blocking reads of a service wait
    /// on their service's signal, so a change wakes only that service's watchers.
    /// Entries nobody listens to any more are dropped after the next catalog change.
    service_applied: HashMap<String, tokio::sync::watch::Sender<u64>>,
    /// What was applied since the state the newest snapshot holds (see
    /// [`StateMachine::snapshot_due`]).
    pace: SnapshotPace,
}

/// When to take the next snapshot: after at least `threshold` entries (Consul's
/// `raft_snapshot_threshold`), and only once the log written since the last snapshot is
/// as large as that snapshot. A snapshot rewrites the whole state, so taking one every
/// `threshold` entries costs more per write the larger the state: 100,000 keys of 256 bytes
/// were rewritten (≈ 30 MB, on all three servers) about once a second under 18k writes/s,
/// 14 % of this 2-core machine's CPU and the p99 of every write around it. Pacing by size
/// bounds the work to about one byte of snapshot per byte logged, and the log on disk to
/// about the state's size plus the trailing entries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPace {
    /// Entries applied since the newest snapshot's state.
    pub entries: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// The newest snapshot's size (0 before the first).
    pub snapshot_bytes: u64,
}

impl SnapshotPace {
    pub fn due(&self, threshold: u64) -> bool {
        self.entries >= threshold && self.bytes >= self.snapshot_bytes
    }

    /// A snapshot of the state applied so far was started (its size is not known yet).
    fn restart(&mut self) {
        self.entries = 0;
        self.bytes = 0;
    }
}

/// The snapshot data handed to openraft: the whole snapshot file.
pub type SnapshotData = Bytes;

impl StateMachine {
    /// A receiver that changes whenever entries were applied (blocking reads wait on it).
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.borrow().applied.subscribe()
    }

    /// A receiver that changes whenever catalog commands were applied or a snapshot
    /// replaced the catalog (blocking catalog reads wait on it).
    pub fn catalog_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.borrow().catalog_applied.subscribe()
    }

    /// A receiver that changes whenever the index of `service`'s instances changed
    /// (blocking reads of one service wait on it).
    pub fn service_applied(&self, service: &str) -> tokio::sync::watch::Receiver<u64> {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        if let Some(tx) = inner.service_applied.get(service) {
            return tx.subscribe();
        }
        let (tx, rx) = tokio::sync::watch::channel(inner.catalog.service_index_of(service));
        inner.service_applied.insert(service.to_string(), tx);
        rx
    }

    /// After the catalog changed: signal the catalog's waiters and those of every
    /// watched service whose index moved.
    fn catalog_changed(inner: &mut SmInner) {
        let index = inner.catalog.index();
        if *inner.catalog_applied.borrow() == index {
            return;
        }
        inner.catalog_applied.send_replace(index);
        let catalog = &inner.catalog;
        inner.service_applied.retain(|name, tx| {
            if tx.receiver_count() == 0 {
                return false;
            }
            let index = catalog.service_index_of(name);
            if *tx.borrow() != index {
                tx.send_replace(index);
            }
            true
        });
    }

    /// The KV store's shards (reads of any key from this core).
    pub fn shards(&self) -> Shards {
        self.inner.borrow().shards.clone()
    }

    /// Runs `f` with the KV store's shards, without cloning the handle (for a hot path;
    /// `f` must not reach back into the state machine).
    pub fn with_shards<R>(&self, f: impl FnOnce(&Shards) -> R) -> R {
        f(&self.inner.borrow().shards)
    }

    /// The index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        *self.inner.borrow().applied.borrow()
    }

    /// Runs `f` on the catalog as applied so far (a local, possibly stale, read).
    pub fn with_catalog<R>(&self, f: impl FnOnce(&Catalog) -> R) -> R {
        f(&self.inner.borrow().catalog)
    }

    /// How many times a snapshot replaced the catalog: with a catalog index, what an
    /// answer built from the catalog was built from (an index names one state within one
    /// history of the catalog).
    pub fn catalog_restores(&self) -> u64 {
        self.inner.borrow().catalog_restores
    }

    /// A state machine whose snapshots live in `dir`, its KV store in `shards` (emptied
    /// first); restores the newest valid snapshot.
    pub async fn open(dir: &Path, shards: Shards) -> io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let n = shards.cores();
        shards.replace(ShardedKv::new(n).into_shards()).await;
        let sm = StateMachine {
            inner: Rc::new(RefCell::new(SmInner {
                shards,
                catalog: Catalog::default(),
                catalog_restores: 0,
                last_applied: None,
                membership: StoredMembership::default(),
                dir: dir.to_path_buf(),
                applied: tokio::sync::watch::channel(0).0,
                catalog_applied: tokio::sync::watch::channel(0).0,
                service_applied: HashMap::new(),
                pace: SnapshotPace::default(),
            })),
        };
        if let Some(newest) = list_snapshots(dir).map_err(io_err)?.into_iter().next() {
            sm.restore(&newest).await?;
        }
        Ok(sm)
    }

    async fn restore(&self, path: &Path) -> io::Result<SnapshotMetaOf<TypeConfig>> {
        // The store copies what it needs out of the archive; the file's mapping goes when
        // `snap` is dropped at the end of this function.
        let snap = SnapshotFile::<StateImage>::open(path).map_err(io_err)?;
        let shards = self.shards();
        let kv = ShardedKv::from_archived(snap.state(), shards.cores());
        let catalog = Catalog::decode_image(snap.state().catalog.as_slice())
            .map_err(|e| io_err(format!("snapshot {}: catalog: {e}", path.display())))?;
        let meta = decode_meta(snap.state().membership.as_slice(), snap.last_included())?;
        shards.replace(kv.into_shards()).await;
        let mut inner = self.inner.borrow_mut();
        inner.catalog = catalog;
        inner.catalog_restores += 1;
        Self::catalog_changed(&mut inner);
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.pace = SnapshotPace {
            snapshot_bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
            ..SnapshotPace::default()
        };
        Ok(meta)
    }

    /// Whether enough was applied since the newest snapshot to take the next one
    /// ([`SnapshotPace`]).
    pub fn snapshot_due(&self, threshold: u64) -> bool {
        self.inner.borrow().pace.due(threshold)
    }
}

/// Snapshot metadata rides in `StateImage::membership`: the membership's log id, then the
/// membership as a Raft membership payload.
fn encode_meta(m: &StoredMembershipOf<TypeConfig>) -> Vec<u8> {
    let mut out = Vec::new();
    match m.log_id() {
        Some(id) => {
            out.push(1);
            out.extend_from_slice(&id.leader_id.term.to_le_bytes());
            out.extend_from_slice(&id.index.to_le_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&encode_payload(&EntryPayload::Membership(
        m.membership().clone(),
    )));
    out
}

fn decode_meta(b: &[u8], last: Option<StoreLogId>) -> io::Result<SnapshotMetaOf<TypeConfig>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "snapshot membership is damaged");
    let (log_id, rest) = match b.first() {
        Some(0) => (None, &b[1..]),
        Some(1) if b.len() >= 17 => {
            let term = u64::from_le_bytes(b[1..9].try_into().expect("8"));
            let index = u64::from_le_bytes(b[9..17].try_into().expect("8"));
            (Some(RaftLogId::new_term_index(term, index)), &b[17..])
        }
        _ => return Err(bad()),
    };
    let membership = match decode_payload(&Bytes::copy_from_slice(rest))? {
        EntryPayload::Membership(m) => m,
        _ => return Err(bad()),
    };
    Ok(SnapshotMetaOf::<TypeConfig> {
        last_log_id: last.map(to_raft),
        last_membership: StoredMembership::new(log_id, membership),
    })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<TypeConfig, SnapshotData>> {
        // The applied log id, the catalog and the membership are read, and the shards'
        // image barrier is queued, in one step (no await in between): the barrier follows
        // every KV write queued up to that log id, so the image is exactly that state.
        let image = {
            let (catalog, last, dir, membership, shards) = {
                let mut inner = self.inner.borrow_mut();
                inner.pace.restart();
                (
                    inner.catalog.encode_image(),
                    inner.last_applied,
                    inner.dir.clone(),
                    inner.membership.clone(),
                    inner.shards.clone(),
                )
            };
            let membership_meta = encode_meta(&membership);
            // The entries themselves are shared with the shards (a handle each), not copied.
            let kv = shards.image().await;
            (kv, catalog, membership_meta, last, dir, membership)
        };
        let (kv, catalog, membership_meta, last, dir, membership) = image;
        // Serializing, writing and fsyncing a large state takes long (a 25 MB state held
        // the core for ~170 ms, the p99 of every write around it): it runs on a thread of
        // its own while the core goes on; only the image above is taken on the core. The
        // archive is streamed into the file from the shared entries: no copy of the state
        // is built in memory.
        let (tx, rx) = futures_channel::oneshot::channel();
        let last_store = last.as_ref().map(to_store);
        std::thread::Builder::new()
            .name("cairn-snapshot".into())
            .spawn(move || {
                let image = StateImageOf {
                    kv: kv.records(),
                    tombstones: kv.tombstones.clone(),
                    kv_index: kv.index,
                    sessions: kv.sessions.clone(),
                    lock_delays: kv.lock_delays.clone(),
                    catalog,
                    membership: membership_meta,
                };
                let written = write_snapshot(&dir, last_store, &image, 2)
                    .and_then(|path| map_snapshot_file(&path))
                    .map_err(io_err);
                drop(image);
                drop(kv);
                let _ = tx.send(written);
            })?;
        // openraft only keeps the metadata of a built snapshot; the data is the file,
        // mapped (nothing of it is read unless a follower is sent it).
        let data = rx
            .await
            .map_err(|_| io::Error::other("the snapshot thread ended without an answer"))??;
        self.inner.borrow_mut().pace.snapshot_bytes = data.len() as u64;
        Ok(SnapshotOf::<TypeConfig, SnapshotData> {
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: last,
                last_membership: membership,
            },
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> io::Result<(Option<RaftLogId>, StoredMembershipOf<TypeConfig>)> {
        let inner = self.inner.borrow();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: futures_util::Stream<Item = io::Result<EntryResponder<TypeConfig>>>
            + Unpin
            + OptionalSend,
    {
        // KV writes are queued for the shard cores as they come and their outcomes
        // awaited afterwards, in order: the shards apply a batch in parallel.
        enum Pending {
            Ready(Outcome),
            Kv(futures_channel::oneshot::Receiver<crate::kv::KvOutcome>),
        }
        let mut batch = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let pending = {
                let mut inner = self.inner.borrow_mut();
                inner.last_applied = Some(entry.log_id);
                inner.pace.entries += 1;
                match entry.payload {
                    EntryPayload::Blank => Pending::Ready(Outcome::None),
                    EntryPayload::Normal(p) => {
                        inner.pace.bytes += p.encoded_len() as u64;
                        match p.into_command() {
                            Command::Kv(cmd) => {
                                Pending::Kv(inner.shards.apply_enqueue(entry.log_id.index, cmd))
                            }
                            Command::Catalog(cmd) => Pending::Ready(Outcome::Catalog(
                                inner.catalog.apply(entry.log_id.index, &cmd),
                            )),
                        }
                    }
                    EntryPayload::Membership(m) => {
                        inner.membership = StoredMembership::new(Some(entry.log_id), m);
                        Pending::Ready(Outcome::None)
                    }
                }
            };
            batch.push((responder, pending));
        }
        for (responder, pending) in batch {
            let outcome = match pending {
                Pending::Ready(o) => o,
                Pending::Kv(rx) => Outcome::Kv(rx.await.map_err(|_| {
                    io::Error::other("the shard cores stopped before applying a write")
                })?),
            };
            if let Some(r) = responder {
                r.send(outcome);
            }
        }
        let mut inner = self.inner.borrow_mut();
        let index = inner.last_applied.map_or(0, |l| l.index);
        inner.applied.send_replace(index);
        Self::catalog_changed(&mut inner);
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> io::Result<()> {
        let dir = self.inner.borrow().dir.clone();
        let name =
            cairn_storage::snapshot::snapshot_file_name(meta.last_log_id.as_ref().map(to_store));
        let mut rx = SnapshotReceiver::begin(
            &dir,
            &name,
            snapshot.len() as u64,
            DEFAULT_MAX_SNAPSHOT_BYTES,
        )
        .map_err(io_err)?;
        rx.accept(&Chunk {
            offset: 0,
            data: snapshot,
        })
        .map_err(io_err)?;
        let path = rx.finish().map_err(io_err)?;
        match self.restore(&path).await {
            Ok(_) => {
                let mut inner = self.inner.borrow_mut();
                inner.last_applied = meta.last_log_id;
                inner.membership = meta.last_membership.clone();
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<SnapshotOf<TypeConfig, SnapshotData>>> {
        let dir = self.inner.borrow().dir.clone();
        let Some(newest) = list_snapshots(&dir).map_err(io_err)?.into_iter().next() else {
            return Ok(None);
        };
        let snap = SnapshotFile::<StateImage>::open(&newest).map_err(io_err)?;
        let meta = decode_meta(snap.state().membership.as_slice(), snap.last_included())?;
        drop(snap);
        let data = map_snapshot_file(&newest).map_err(io_err)?;
        Ok(Some(SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::StorageError;

    use super::*;

    /// The flush mode, and whether the follower flag flips while the suite runs (appends
    /// then go inline or to the sync thread by turns, which must still complete in
    /// order).
    struct Builder(Flush, bool);

    thread_local! {
        /// The runtime's handle on the test's core (openraft's builder must be Send).
        static SHARDS: RefCell<Option<Shards>> = const { RefCell::new(None) };
    }

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
            let dir = tempfile::tempdir().expect("temp dir");
            let opts = LogOptions {
                segment_size: 64 * 1024,
            };
            let log = LogStore::open(&dir.path().join("log"), opts, self.0).expect("log");
            if self.1 {
                let following = log.follower_flushes_inline();
                let weak = Rc::downgrade(&following);
                drop(following);
                glommio::spawn_local(async move {
                    // Until the store is dropped; every 200 µs.
                    while let Some(f) = weak.upgrade() {
                        f.set(!f.get());
                        drop(f);
                        glommio::timer::sleep(std::time::Duration::from_micros(200)).await;
                    }
                })
                .detach();
            }
            let shards = SHARDS
                .with(|s| s.borrow().clone())
                .expect("inside the runtime");
            let sm = StateMachine::open(&dir.path().join("snapshots"), shards)
                .await
                .expect("state machine");
            Ok((dir, log, sm))
        }
    }

    #[test]
    fn a_snapshot_is_due_after_the_threshold_and_as_many_logged_bytes_as_the_last_snapshot() {
        // Before the first snapshot, the threshold alone decides.
        let mut pace = SnapshotPace {
            entries: 99,
            bytes: 99 * 300,
            snapshot_bytes: 0,
        };
        assert!(!pace.due(100));
        pace.entries = 100;
        assert!(pace.due(100));
        // A 30 MB state is rewritten only after 30 MB more of log, however many entries.
        pace.restart();
        assert_eq!((pace.entries, pace.bytes), (0, 0));
        pace.snapshot_bytes = 30_000_000;
        pace.entries = 50_000;
        pace.bytes = 15_000_000;
        assert!(!pace.due(16_384));
        pace.entries = 100_000;
        pace.bytes = 30_000_000;
        assert!(pace.due(16_384));
        // Enough bytes but too few entries: not yet.
        pace.entries = 10;
        assert!(!pace.due(16_384));
    }

    #[test]
    fn the_log_store_and_state_machine_pass_openraft_storage_suite() {
        // On two shard cores, so the suite also covers the cross-core apply and image.
        crate::runtime::shards::run(2, false, |shards| async move {
            if shards.core() == 0 {
                SHARDS.with(|s| *s.borrow_mut() = Some(shards));
                Suite::test_all(Builder(Flush::Inline, false))
                    .await
                    .expect("openraft storage suite, inline flush");
            }
        })
        .expect("runtime");
    }

    #[test]
    fn the_log_store_passes_openraft_storage_suite_flushing_inline_and_in_the_background_by_turns()
    {
        crate::runtime::shards::run(1, false, |shards| async move {
            SHARDS.with(|s| *s.borrow_mut() = Some(shards));
            Suite::test_all(Builder(Flush::Background, true))
                .await
                .expect("openraft storage suite");
        })
        .expect("runtime");
    }

    #[test]
    fn the_log_store_passes_openraft_storage_suite_with_background_flush() {
        crate::runtime::shards::run(1, false, |shards| async move {
            SHARDS.with(|s| *s.borrow_mut() = Some(shards));
            Suite::test_all(Builder(Flush::Background, false))
                .await
                .expect("openraft storage suite, background flush");
        })
        .expect("runtime");
    }
}
