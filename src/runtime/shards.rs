//! Shard cores on glommio: every executor owns one [`ShardCore`]; cores talk over a full
//! `channel_mesh`; executor 0 is also the sequencer that orders writes, transactions and
//! barrier reads (the protocol itself is pure: [`crate::kv::core`]).
//!
//! The IO here is thin: move messages between cores, turn replies into completed futures,
//! and arm the timers of parked blocking reads. Nothing on the path takes a lock; each
//! core's state is an `Rc<RefCell<_>>` touched only by its own executor, and no borrow is
//! held across an await.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::task::JoinHandle;
use glommio::{GlommioError, LocalExecutorPoolBuilder, PoolPlacement, ResourceType};

use super::{io_memory_per_executor, RuntimeError};
use crate::kv::core::{plan, Effect, Origin, Plan, ReadReq, Reply, ShardCore, StreamMsg};
use crate::kv::{
    combine_txn, merge_images, outcome_of, shard_of, KvCommand, KvEntry, KvOutcome, KvShard,
    ListResult, ShardImage, Stored, WatchId,
};

/// Longest blocking wait, as in Consul.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Messages buffered per pair of cores before a sender waits.
const MESH_CAPACITY: usize = 1024;
/// How long an idle executor polls before it parks in the kernel. Waking a parked
/// executor from another core costs tens of microseconds; spinning briefly keeps a
/// cross-core request near a microsecond while load is flowing (see ARCHITECTURE.md).
pub const DEFAULT_SPIN_BEFORE_PARK: Duration = Duration::from_micros(200);
/// Period of each executor's wake-up tick (see `run_with`).
const WAKE_TICK: Duration = Duration::from_millis(5);

/// What travels between cores.
#[derive(Debug)]
pub enum Msg {
    /// Sequencer → shard.
    Stream(StreamMsg),
    /// Any core → the shard owning the data. `deadline` bounds a blocking read.
    Read {
        origin: Origin,
        req: ReadReq,
        deadline: Option<Instant>,
    },
    /// Any core → the sequencer: answer `read` with a barrier on every shard; shard `i`
    /// replies to `origin` with id `origin.id + i`.
    Barrier { origin: Origin, read: ReadReq },
    /// Shard → the requesting core.
    Reply { id: u64, reply: Reply },
    /// The requesting core → the shard it sent a blocking read to: nobody waits for its
    /// answer any more (see [`Withdraw`]).
    Cancel { origin: Origin },
}

/// Who waits for a reply with a given id.
enum Waiter {
    Reply(oneshot::Sender<Reply>),
    /// A write's caller, given its outcome directly (no task in between).
    Applied(oneshot::Sender<KvOutcome>),
}

impl Waiter {
    fn deliver(self, reply: Reply) {
        match self {
            Waiter::Reply(tx) => {
                let _ = tx.send(reply);
            }
            Waiter::Applied(tx) => {
                if let Reply::Applied(r) = reply {
                    let _ = tx.send(outcome_of(r));
                }
            }
        }
    }
}

struct Local {
    core: ShardCore,
    pending: HashMap<u64, Waiter>,
    next_id: u64,
    /// Deadlines of blocking reads not yet parked (a read is parked, or answered at once,
    /// in the step that receives it, unless a prepared transaction defers it), by origin.
    deadlines: HashMap<Origin, Instant>,
    /// The timer task of each parked read, cancelled when the read leaves the parked set
    /// before its wait ran out ([`Effect::Unparked`]): a watcher answered by a write, or
    /// withdrawn by its caller, holds no task for the rest of its wait.
    timers: HashMap<WatchId, JoinHandle<()>>,
    jitter_state: u64,
}

impl Local {
    /// A read answered without parking needs no deadline. (Deadlines are rare: they live
    /// only between a blocking read's arrival and its parking, so this is one check.)
    fn forget_deadlines(&mut self, effects: &[Effect]) {
        if self.deadlines.is_empty() {
            return;
        }
        for e in effects {
            if let Effect::Reply { to, .. } = e {
                self.deadlines.remove(to);
            }
        }
    }
}

/// A core's handle on the shard cores: reads from any core, writes on the sequencer.
#[derive(Clone)]
pub struct Shards {
    me: usize,
    n: usize,
    local: Rc<RefCell<Local>>,
    senders: Rc<Senders<Msg>>,
    /// The sequencer's queue (core 0 only): one task takes steps in arrival order, so the
    /// steps never interleave in any shard's stream and reads are not starved by writes.
    seq: Option<Rc<LocalSender<Step>>>,
    txn: Rc<RefCell<u64>>,
    /// Blocking reads parked on every core of this runtime (a prefix read parks one
    /// on each core): [`Shards::parked_reads`].
    parked: Arc<AtomicUsize>,
}

/// One step of the sequencer.
enum Step {
    Apply {
        index: u64,
        cmd: KvCommand,
        done: oneshot::Sender<KvOutcome>,
    },
    Barrier {
        origin: Origin,
        read: ReadReq,
    },
    /// Replace every shard (a restored snapshot); `done` when all have.
    Replace {
        shards: Vec<KvShard>,
        done: oneshot::Sender<()>,
    },
}

/// Runs `f` on each of `cores` executors with its core's [`Shards`] handle, and returns
/// every core's result once all finished. `pin` pins executor `i` to a CPU.
pub fn run<G, F, T>(cores: usize, pin: bool, f: G) -> Result<Vec<T>, RuntimeError>
where
    G: FnOnce(Shards) -> F + Clone + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    run_with(cores, pin, DEFAULT_SPIN_BEFORE_PARK, f)
}

/// [`run`] with an explicit spin-before-park time (zero: park at once when idle).
pub fn run_with<G, F, T>(
    cores: usize,
    pin: bool,
    spin: Duration,
    f: G,
) -> Result<Vec<T>, RuntimeError>
where
    G: FnOnce(Shards) -> F + Clone + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let cores = cores.max(1);
    let io_memory = io_memory_per_executor(cores)?;
    let placement = if pin {
        PoolPlacement::MaxSpread(cores, None)
    } else {
        PoolPlacement::Unbound(cores)
    };
    let mesh: MeshBuilder<Msg, Full> = MeshBuilder::full(cores, MESH_CAPACITY);
    // How many cores finished their work; each keeps serving the others until all did.
    // An atomic, not a message: shutdown must not depend on a wake-up arriving.
    let finished = Arc::new(AtomicUsize::new(0));
    let parked = Arc::new(AtomicUsize::new(0));
    let handles = LocalExecutorPoolBuilder::new(placement)
        .io_memory(io_memory)
        .spin_before_park(spin)
        .name("cairn-core")
        .on_all_shards(move || async move {
            let (senders, mut receivers) = mesh.join().await.expect("mesh join");
            let me = senders.peer_id();
            let n = senders.nr_consumers();
            let (seq_tx, seq_rx) = local_channel::new_unbounded::<Step>();
            let mut shards = Shards {
                me,
                n,
                local: Rc::new(RefCell::new(Local {
                    core: ShardCore::default(),
                    pending: HashMap::new(),
                    next_id: 1,
                    deadlines: HashMap::new(),
                    timers: HashMap::new(),
                    jitter_state: 0x9e37_79b9_7f4a_7c15 ^ me as u64,
                })),
                senders: Rc::new(senders),
                seq: None,
                txn: Rc::new(RefCell::new(0)),
                parked,
            };
            if me == 0 {
                shards.seq = Some(Rc::new(seq_tx));
                let s = shards.clone();
                glommio::spawn_local(async move {
                    while let Some(step) = seq_rx.recv().await {
                        s.sequence(step).await;
                    }
                })
                .detach();
            }
            for (_, rx) in receivers.streams() {
                let s = shards.clone();
                glommio::spawn_local(async move {
                    while let Some(msg) = rx.recv().await {
                        s.receive(msg);
                    }
                })
                .detach();
            }
            // A tick that wakes the executor now and then: a cross-core wake-up that races
            // with the executor going to sleep is then picked up within one tick instead of
            // never (seen as a rare hang of a parked core before this was added).
            let ticking = Rc::new(std::cell::Cell::new(true));
            let t = ticking.clone();
            glommio::spawn_local(async move {
                while t.get() {
                    glommio::timer::sleep(WAKE_TICK).await;
                }
            })
            .detach();
            let out = f(shards.clone()).await;
            finished.fetch_add(1, Ordering::AcqRel);
            // Keep serving the other cores until every one of them is done.
            while finished.load(Ordering::Acquire) < n {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            ticking.set(false);
            out
        })
        .map_err(|e| RuntimeError::Spawn(e.to_string()))?;
    handles
        .join_all()
        .into_iter()
        .map(|r| r.map_err(|e| RuntimeError::Spawn(e.to_string())))
        .collect()
}

impl Shards {
    /// This core's index (0 is the sequencer).
    pub fn core(&self) -> usize {
        self.me
    }

    pub fn cores(&self) -> usize {
        self.n
    }

    fn new_ids(&self, count: usize) -> (u64, Vec<oneshot::Receiver<Reply>>) {
        let mut l = self.local.borrow_mut();
        let base = l.next_id;
        l.next_id += count as u64;
        let mut rxs = Vec::with_capacity(count);
        for i in 0..count as u64 {
            let (tx, rx) = oneshot::channel();
            l.pending.insert(base + i, Waiter::Reply(tx));
            rxs.push(rx);
        }
        (base, rxs)
    }

    /// An id whose reply goes to `done` as a write's outcome.
    fn new_applied_id(&self, done: oneshot::Sender<KvOutcome>) -> u64 {
        let mut l = self.local.borrow_mut();
        let id = l.next_id;
        l.next_id += 1;
        l.pending.insert(id, Waiter::Applied(done));
        id
    }

    async fn send(&self, to: usize, msg: Msg) {
        if to == self.me {
            self.receive(msg);
        } else if self.senders.send_to(to, msg).await.is_err() {
            // Only after shutdown: every core stays up until all are done.
            debug_assert!(false, "mesh closed while in use");
        }
    }

    /// Sends without awaiting: at once when the channel has room (most messages), else
    /// from a task that waits for room.
    fn post(&self, to: usize, msg: Msg) {
        if to == self.me {
            self.receive(msg);
            return;
        }
        match self.senders.try_send_to(to, msg) {
            Ok(()) => {}
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => {
                let s = self.clone();
                glommio::spawn_local(async move { s.send(to, msg).await }).detach();
            }
            // Closed: only after shutdown, when nobody waits for replies.
            Err(_) => {}
        }
    }

    /// Handles a message on this core. Never awaits: replies to other cores are sent by
    /// a spawned task, timers by spawned sleeps.
    fn receive(&self, msg: Msg) {
        let effects = match msg {
            Msg::Stream(m) => {
                let mut l = self.local.borrow_mut();
                let out = l.core.stream(m);
                l.forget_deadlines(&out);
                out
            }
            Msg::Read {
                origin,
                req,
                deadline,
            } => {
                let mut l = self.local.borrow_mut();
                if let Some(d) = deadline {
                    l.deadlines.insert(origin, d);
                }
                let mut out = Vec::new();
                l.core.read(origin, req, &mut out);
                l.forget_deadlines(&out);
                out
            }
            Msg::Barrier { origin, read } => {
                self.enqueue(Step::Barrier { origin, read });
                Vec::new()
            }
            Msg::Reply { id, reply } => {
                let waiter = self.local.borrow_mut().pending.remove(&id);
                if let Some(w) = waiter {
                    w.deliver(reply);
                }
                Vec::new()
            }
            Msg::Cancel { origin } => {
                let mut l = self.local.borrow_mut();
                l.deadlines.remove(&origin);
                l.core.cancel(origin)
            }
        };
        self.dispatch(effects);
    }

    fn dispatch(&self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Reply { to, reply } => {
                    if to.core == self.me {
                        let waiter = self.local.borrow_mut().pending.remove(&to.id);
                        if let Some(w) = waiter {
                            w.deliver(reply);
                        }
                    } else {
                        self.post(to.core, Msg::Reply { id: to.id, reply });
                    }
                }
                Effect::Parked { watch, to } => {
                    let deadline = self.local.borrow_mut().deadlines.remove(&to);
                    let wait = deadline
                        .map(|d| d.saturating_duration_since(Instant::now()))
                        .unwrap_or(MAX_WAIT);
                    let s = self.clone();
                    let timer = glommio::spawn_local(async move {
                        glommio::timer::sleep(wait).await;
                        // Fired: from here on this task ends by itself.
                        s.local.borrow_mut().timers.remove(&watch);
                        let effects = s.local.borrow_mut().core.timeout(watch);
                        s.dispatch(effects);
                    })
                    .detach();
                    self.local.borrow_mut().timers.insert(watch, timer);
                    self.parked.fetch_add(1, Ordering::Relaxed);
                }
                Effect::Unparked { watch } => {
                    let timer = self.local.borrow_mut().timers.remove(&watch);
                    if let Some(t) = timer {
                        t.cancel();
                    }
                    self.parked.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Blocking reads parked on every core of this runtime now (a prefix read parks one
    /// on each core); a read whose caller stopped waiting is not counted.
    pub fn parked_reads(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    fn enqueue(&self, step: Step) {
        let seq = self.seq.as_ref().expect("barriers and writes go to core 0");
        // Unbounded: every step has a caller waiting for it, which bounds the queue.
        if seq.try_send(step).is_err() {
            debug_assert!(false, "sequencer queue closed");
        }
    }

    /// Applies a command at Raft index `index` (sequencer core only).
    pub async fn apply(&self, index: u64, cmd: &KvCommand) -> KvOutcome {
        self.apply_enqueue(index, cmd.clone())
            .await
            .expect("the sequencer answers every step")
    }

    /// Queues a command at Raft index `index` for the sequencer at once and returns where
    /// its outcome will arrive: the Raft apply loop queues a whole batch, then awaits the
    /// outcomes in order, so the shards work on the batch in parallel (sequencer core only).
    pub fn apply_enqueue(&self, index: u64, cmd: KvCommand) -> oneshot::Receiver<KvOutcome> {
        assert_eq!(self.me, 0, "only the sequencer core applies writes");
        let (done, rx) = oneshot::channel();
        self.enqueue(Step::Apply { index, cmd, done });
        rx
    }

    /// Replaces every shard's state with `shards` (one per core, in order), after every
    /// step queued before (sequencer core only). Parked blocking reads are answered.
    pub async fn replace(&self, shards: Vec<KvShard>) {
        assert_eq!(self.me, 0, "only the sequencer core replaces the state");
        assert_eq!(shards.len(), self.n, "one shard per core");
        let (done, rx) = oneshot::channel();
        self.enqueue(Step::Replace { shards, done });
        let _ = rx.await;
    }

    /// Runs `f` on this core's own shard (its session table is the whole table: sessions
    /// are replicated on every shard).
    pub fn with_local<R>(&self, f: impl FnOnce(&KvShard) -> R) -> R {
        f(self.local.borrow().core.shard())
    }

    /// A snapshot image of every shard at one point of the stream: after every step
    /// queued before it.
    pub async fn image(&self) -> ShardImage {
        let (base, rxs) = self.new_ids(self.n);
        let origin = Origin {
            core: self.me,
            id: base,
        };
        self.send(
            0,
            Msg::Barrier {
                origin,
                read: ReadReq::Image,
            },
        )
        .await;
        let mut parts = Vec::with_capacity(self.n);
        for rx in rxs {
            match rx.await {
                Ok(Reply::Image(p)) => parts.push(*p),
                other => unreachable!("image answered with {other:?}"),
            }
        }
        merge_images(parts)
    }

    /// Keys under `prefix` rolled up at `separator`, as one consistent cut, and the
    /// result's index.
    pub async fn keys(&self, prefix: Bytes, separator: Option<Bytes>) -> (Vec<Bytes>, u64) {
        let (base, rxs) = self.new_ids(self.n);
        let origin = Origin {
            core: self.me,
            id: base,
        };
        let read = ReadReq::KeysPart { prefix, separator };
        self.send(0, Msg::Barrier { origin, read }).await;
        let mut all = Vec::new();
        let mut touched = None;
        let mut fallback = 0;
        for rx in rxs {
            match rx.await {
                Ok(Reply::Keys {
                    keys,
                    touched: t,
                    shard_index,
                }) => {
                    all.extend(keys);
                    touched = touched.max(t);
                    fallback = fallback.max(shard_index);
                }
                other => unreachable!("keys answered with {other:?}"),
            }
        }
        // Keys rolled up at a separator can come from several shards.
        all.sort();
        all.dedup();
        (all, touched.unwrap_or(fallback).max(1))
    }

    /// One step, run by the sequencer task only.
    async fn sequence(&self, step: Step) {
        match step {
            Step::Barrier { origin, read } => {
                for s in 0..self.n {
                    let reply = Origin {
                        core: origin.core,
                        id: origin.id + s as u64,
                    };
                    let m = StreamMsg::Barrier {
                        read: read.clone(),
                        reply,
                    };
                    self.send(s, Msg::Stream(m)).await;
                }
            }
            Step::Replace { shards, done } => {
                let (base, rxs) = self.new_ids(self.n);
                for (i, kv) in shards.into_iter().enumerate() {
                    let reply = Origin {
                        core: self.me,
                        id: base + i as u64,
                    };
                    let m = StreamMsg::Replace {
                        kv: Box::new(kv),
                        reply,
                    };
                    self.send(i, Msg::Stream(m)).await;
                }
                for rx in rxs {
                    let _ = rx.await;
                }
                let _ = done.send(());
            }
            Step::Apply { index, cmd, done } => {
                if let Plan::One { shard, cmd } = plan(&cmd, self.n) {
                    // Pipelined: send and move on; the shard keeps the stream's order, and
                    // the caller gets the answer when it comes.
                    let id = self.new_applied_id(done);
                    let origin = Origin { core: self.me, id };
                    let m = StreamMsg::Apply {
                        index,
                        cmd,
                        reply: Some(origin),
                    };
                    self.send(shard, Msg::Stream(m)).await;
                } else {
                    let outcome = self.sequence_apply(index, cmd).await;
                    let _ = done.send(outcome);
                }
            }
        }
    }

    async fn sequence_apply(&self, index: u64, cmd: KvCommand) -> KvOutcome {
        match plan(&cmd, self.n) {
            Plan::One { .. } => unreachable!("single-shard writes are pipelined in sequence()"),
            Plan::All { cmd } => {
                // Every shard answers alike; shard 0 (this core) gives the outcome.
                let (id, mut rx) = self.new_ids(1);
                for s in 0..self.n {
                    let reply = (s == 0).then_some(Origin { core: self.me, id });
                    let m = StreamMsg::Apply {
                        index,
                        cmd: cmd.clone(),
                        reply,
                    };
                    self.send(s, Msg::Stream(m)).await;
                }
                match rx.pop().expect("one id").await {
                    Ok(Reply::Applied(r)) => outcome_of(r),
                    other => unreachable!("apply answered with {other:?}"),
                }
            }
            Plan::Txn { parts } => {
                let txn = {
                    let mut t = self.txn.borrow_mut();
                    *t += 1;
                    *t
                };
                let (base, rxs) = self.new_ids(parts.len());
                for (i, (shard, ops)) in parts.iter().enumerate() {
                    let reply = Origin {
                        core: self.me,
                        id: base + i as u64,
                    };
                    let m = StreamMsg::TxnPrepare {
                        index,
                        txn,
                        ops: ops.clone(),
                        reply,
                    };
                    self.send(*shard, Msg::Stream(m)).await;
                }
                let mut outcomes = Vec::with_capacity(parts.len());
                for rx in rxs {
                    match rx.await {
                        Ok(Reply::Prepared { results, errors }) => outcomes.push((results, errors)),
                        other => unreachable!("prepare answered with {other:?}"),
                    }
                }
                let commit = outcomes.iter().all(|o| o.1.is_empty());
                for (shard, _) in &parts {
                    self.send(*shard, Msg::Stream(StreamMsg::TxnDecide { txn, commit }))
                        .await;
                }
                KvOutcome::Txn(combine_txn(outcomes))
            }
        }
    }

    fn jittered(&self, wait: Duration) -> Instant {
        let wait = wait.min(MAX_WAIT);
        // xorshift: a per-core RNG for jitter only, no shared state.
        let mut l = self.local.borrow_mut();
        let mut x = l.jitter_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        l.jitter_state = x;
        let extra = wait.as_nanos() as u64 / 16;
        let jitter = if extra == 0 { 0 } else { x % extra };
        Instant::now() + wait + Duration::from_nanos(jitter)
    }

    /// A non-blocking get of a key this core owns, answered in place: no message, no
    /// reply channel, no task. `None` when another core owns the key or the shard must
    /// answer in order (a transaction is prepared): use [`Shards::get`] then. `f` is
    /// given the entry, borrowed where it is stored, and the result's index.
    pub(crate) fn get_now<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(Option<&Stored>, u64) -> R,
    ) -> Option<R> {
        if shard_of(key, self.n) != self.me {
            return None;
        }
        self.local.borrow().core.get_now(key, f)
    }

    /// Reads one key from the core that owns it. With `min_index` > 0, waits until the
    /// key's index exceeds it or `wait` (capped at 10 minutes, plus up to wait/16 of
    /// jitter) runs out.
    pub async fn get(&self, key: Bytes, min_index: u64, wait: Duration) -> (Option<KvEntry>, u64) {
        let owner = shard_of(&key, self.n);
        let (id, mut rx) = self.new_ids(1);
        let deadline = (min_index > 0).then(|| self.jittered(wait));
        // Only a blocking read can be left parked by a caller that stops waiting.
        let _withdraw = deadline.map(|_| Withdraw {
            shards: self,
            first_id: id,
            first_core: owner,
            count: 1,
        });
        let origin = Origin { core: self.me, id };
        let req = ReadReq::Get { key, min_index };
        self.send(
            owner,
            Msg::Read {
                origin,
                req,
                deadline,
            },
        )
        .await;
        match rx.pop().expect("one id").await {
            Ok(Reply::Entry { entry, index }) => (entry, index),
            other => unreachable!("get answered with {other:?}"),
        }
    }

    /// Entries under `prefix`, as one consistent cut across every shard.
    pub async fn list(&self, prefix: Bytes) -> ListResult {
        let (base, rxs) = self.new_ids(self.n);
        let origin = Origin {
            core: self.me,
            id: base,
        };
        let read = ReadReq::ListPart { prefix };
        self.send(0, Msg::Barrier { origin, read }).await;
        let mut parts = Vec::with_capacity(self.n);
        let mut fallback = 0;
        for rx in rxs {
            match rx.await {
                Ok(Reply::Part {
                    entries,
                    touched,
                    shard_index,
                }) => {
                    fallback = fallback.max(shard_index);
                    parts.push((entries, touched));
                }
                other => unreachable!("list answered with {other:?}"),
            }
        }
        ListResult::merge(parts, fallback)
    }

    /// A blocking prefix read: returns once the result's index exceeds `min_index`, or
    /// when `wait` runs out.
    pub async fn list_blocking(&self, prefix: Bytes, min_index: u64, wait: Duration) -> ListResult {
        let first = self.list(prefix.clone()).await;
        if min_index == 0 || first.index > min_index {
            return first;
        }
        self.wait_prefix(prefix.clone(), min_index, wait).await;
        self.list(prefix).await
    }

    /// Waits until something under `prefix` changes after `min_index` on any shard, or
    /// `wait` (capped and jittered) runs out.
    pub async fn wait_prefix(&self, prefix: Bytes, min_index: u64, wait: Duration) {
        let deadline = self.jittered(wait);
        let (base, rxs) = self.new_ids(self.n);
        // Withdraws the watches still parked when the wait ends: on the other shards once
        // one answered, or on all of them if the caller stops waiting.
        let _withdraw = Withdraw {
            shards: self,
            first_id: base,
            first_core: 0,
            count: self.n,
        };
        for s in 0..self.n {
            let origin = Origin {
                core: self.me,
                id: base + s as u64,
            };
            let req = ReadReq::WatchPrefix {
                prefix: prefix.clone(),
                min_index,
            };
            self.send(
                s,
                Msg::Read {
                    origin,
                    req,
                    deadline: Some(deadline),
                },
            )
            .await;
        }
        // The first shard to answer (a change, or its timeout) ends the wait; the others
        // are withdrawn then (their tasks end as their replies are forgotten).
        let (tx, rx) = oneshot::channel::<()>();
        let tx = Rc::new(RefCell::new(Some(tx)));
        for r in rxs {
            let tx = tx.clone();
            glommio::spawn_local(async move {
                let _ = r.await;
                if let Some(t) = tx.borrow_mut().take() {
                    let _ = t.send(());
                }
            })
            .detach();
        }
        let _ = rx.await;
    }
}

/// Takes back blocking reads nobody waits for any more, when dropped: the caller's future
/// was dropped (its client went away) or finished without them (a prefix wait another
/// shard answered). Each read still unanswered is forgotten here and its shard is told to
/// drop it ([`Msg::Cancel`]), so it stops holding a watch, a timer and a pending reply
/// for the rest of its wait (up to [`MAX_WAIT`]). Read `first_id + i` went to core
/// `first_core + i`.
struct Withdraw<'a> {
    shards: &'a Shards,
    first_id: u64,
    first_core: usize,
    count: usize,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        for i in 0..self.count {
            let id = self.first_id + i as u64;
            let waiting = self.shards.local.borrow_mut().pending.remove(&id).is_some();
            if waiting {
                let origin = Origin {
                    core: self.shards.me,
                    id,
                };
                self.shards
                    .post(self.first_core + i, Msg::Cancel { origin });
            }
        }
    }
}
