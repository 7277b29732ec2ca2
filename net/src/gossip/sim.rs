//! A seeded simulator: N [`Gossip`] cores in one process on a virtual clock, over a
//! simulated network with loss, latency, partitions, crashes, restarts and stalls.
//!
//! Everything random — latencies, losses, every core's own RNG — derives from
//! [`SimConfig::seed`], and events are processed in (time, insertion) order, so a run
//! replays exactly from its seed and parameters.
//!
//! What it measures:
//! - detection: for each crashed node, the time until each live member marks it failed
//!   ([`Sim::detection_ms`]);
//! - dissemination: the time until each member learns a metadata update
//!   ([`Sim::dissemination_ms`]);
//! - false suspicions and false deaths: suspect/failed events about members that never
//!   crashed, never left and were never stalled ([`SimCounters`]);
//! - traffic: datagrams and payload bytes sent per node per second ([`Sim::traffic`]).

use super::core::{Footprint, Gossip, GossipError};
use super::wire::{NodeMeta, Role};
use super::{Config, MemberEvent, Millis, Output, Timer};
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};

/// Parameters of a simulated cluster and network.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub nodes: usize,
    pub seed: u64,
    /// Probability that any one datagram is lost.
    pub loss: f64,
    /// One-way latency: `latency_min_ms` plus an exponential tail with this mean.
    pub latency_min_ms: u64,
    pub latency_mean_ms: f64,
    pub gossip: Config,
    /// Start with every member already knowing every other (as after completed joins,
    /// through [`Gossip::restore`]); otherwise every node joins through node 0 at time 0.
    pub converged_start: bool,
    /// Give every node a name and datacenter in its metadata. Off for the largest runs:
    /// identical metadata is shared between entries, which is what makes 10,000 full
    /// member tables fit in memory.
    pub named_nodes: bool,
    /// Keep every membership event (for tests on small clusters).
    pub record_events: bool,
    /// The last `joiners` nodes start down and unknown to the others; start them with
    /// [`Sim::restart`] (a mass join).
    pub joiners: usize,
}

impl SimConfig {
    pub fn new(nodes: usize, seed: u64) -> SimConfig {
        SimConfig {
            nodes,
            seed,
            loss: 0.0,
            latency_min_ms: 1,
            latency_mean_ms: 1.0,
            gossip: Config::lan(),
            converged_start: false,
            named_nodes: true,
            record_events: false,
            joiners: 0,
        }
    }
}

/// Safety counters over a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimCounters {
    /// Suspect events about members that never crashed, left or stalled.
    pub false_suspicions: u64,
    /// Failed events about such members: the failure detector was wrong.
    pub false_deaths: u64,
    /// Failed events about running members that were stalled at some point (not
    /// counted as false: a stalled node is indistinguishable from a crashed one while
    /// it lasts), and suspicions about them.
    pub stalled_deaths: u64,
    pub stalled_suspicions: u64,
    pub delivered: u64,
    pub lost: u64,
    pub partitioned: u64,
    /// Datagrams addressed to a crashed node.
    pub to_down: u64,
    /// Datagrams the receiving core refused (must stay 0: cores only send valid ones).
    pub refused: u64,
}

/// Datagrams and payload bytes (UDP/IP headers not included) sent per node per second
/// since the last [`Sim::reset_traffic`], as mean over nodes and the busiest node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Traffic {
    pub seconds: f64,
    pub packets_per_node_per_s: f64,
    pub bytes_per_node_per_s: f64,
    pub max_packets_per_node_per_s: f64,
    pub max_bytes_per_node_per_s: f64,
}

struct SimNode {
    addr: SocketAddr,
    core: Option<Gossip>,
    /// Bumped at each crash, so timers of a previous life are dropped.
    epoch: u32,
    stalled_until: Millis,
    /// Crashed, left or stalled at some point: events about it are not false.
    excused: bool,
    /// Stalled at some point (and neither crashed nor left since).
    stalled: bool,
    packets_sent: u64,
    bytes_sent: u64,
}

enum ItemKind {
    Deliver {
        to: u32,
        /// The sender's index (its address is `sim_addr(from)`): 4 bytes, not 32.
        from: u32,
        bytes: Bytes,
    },
    Timer {
        node: u32,
        epoch: u32,
        timer: Timer,
    },
}

struct Item {
    at: Millis,
    seq: u64,
    kind: ItemKind,
}

impl PartialEq for Item {
    fn eq(&self, o: &Item) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Item) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    fn cmp(&self, o: &Item) -> Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Span of [`EventQueue`]'s wheel: one bucket per millisecond for this long ahead.
/// Nearly every event lands within it (deliveries within milliseconds, probe, gossip
/// and most suspicion timers within 4 s); sync, reclaim and lone-suspicion timers go to
/// the heap. It was 65 s: a bucket keeps the capacity of the most events it ever held at
/// once, so 65,536 buckets each sized for a millisecond's peak (90 events at 2,000 nodes
/// under flapping, more in bursts) held 8 million slots (≈340 MiB) from the start and
/// kept growing as rarer peaks came by: 14 million slots after 600 virtual s of the
/// `slow` scenario at 2,000 nodes, the growth seen in the hour-long run. 4,096 buckets
/// hold 16 times less, and [`EventQueue::pop_until`] trims a bucket that a burst left
/// oversized.
const WHEEL_MS: u64 = 1 << 12;

/// A drained bucket keeps at most this capacity (slots): more is a burst's leftover.
const BUCKET_KEEP: usize = 1 << 10;

/// The simulator's event queue: a timer wheel of one FIFO bucket per virtual
/// millisecond for the next [`WHEEL_MS`], and a heap for anything later (sync and reclaim
/// timers, long suspicions). Pushing and popping are O(1) for the wheel, where nearly all
/// events land (deliveries within milliseconds, probe and gossip timers within a
/// second), instead of a heap's O(log n) moves of the whole item. Events come out in
/// (time, insertion) order, as from a heap keyed on both: a bucket is FIFO, and a far
/// event moves into its bucket as soon as the bucket comes in range, before anything
/// can be pushed there directly.
struct EventQueue {
    buckets: Vec<VecDeque<ItemKind>>,
    /// The bucket being drained; no event is due before it.
    time: Millis,
    in_wheel: usize,
    far: BinaryHeap<Reverse<Item>>,
    seq: u64,
}

impl EventQueue {
    fn new() -> EventQueue {
        EventQueue {
            buckets: (0..WHEEL_MS).map(|_| VecDeque::new()).collect(),
            time: 0,
            in_wheel: 0,
            far: BinaryHeap::new(),
            seq: 0,
        }
    }

    fn push(&mut self, at: Millis, kind: ItemKind) {
        debug_assert!(at >= self.time, "an event in the past");
        if at < self.time + WHEEL_MS {
            self.buckets[(at % WHEEL_MS) as usize].push_back(kind);
            self.in_wheel += 1;
        } else {
            self.seq += 1;
            self.far.push(Reverse(Item {
                at,
                seq: self.seq,
                kind,
            }));
        }
    }

    /// The next event due at or before `until`, with its time.
    fn pop_until(&mut self, until: Millis) -> Option<(Millis, ItemKind)> {
        loop {
            if let Some(k) = self.buckets[(self.time % WHEEL_MS) as usize].pop_front() {
                self.in_wheel -= 1;
                return Some((self.time, k));
            }
            if self.time >= until {
                return None;
            }
            let drained = &mut self.buckets[(self.time % WHEEL_MS) as usize];
            if drained.capacity() > BUCKET_KEEP {
                drained.shrink_to(BUCKET_KEEP / 4);
            }
            let next = if self.in_wheel > 0 {
                self.time + 1
            } else {
                // Nothing in the wheel: jump to the first far event (or to `until`).
                match self.far.peek() {
                    Some(Reverse(i)) => i.at.min(until),
                    None => until,
                }
            };
            self.time = next;
            while let Some(Reverse(i)) = self.far.peek() {
                if i.at >= self.time + WHEEL_MS {
                    break;
                }
                let Reverse(i) = self.far.pop().expect("peeked");
                self.buckets[(i.at % WHEEL_MS) as usize].push_back(i.kind);
                self.in_wheel += 1;
            }
        }
    }
}

/// Time from an event at one member until each other member noticed it.
struct Watch {
    since: Millis,
    /// Per node: ms until it noticed; `None` if not yet (or not an observer).
    noticed: Vec<Option<Millis>>,
    observers: Vec<bool>,
}

impl Watch {
    fn new(since: Millis, up: Vec<bool>) -> Watch {
        Watch {
            since,
            noticed: vec![None; up.len()],
            observers: up,
        }
    }

    fn note(&mut self, observer: usize, now: Millis) {
        if self.observers[observer] && self.noticed[observer].is_none() {
            self.noticed[observer] = Some(now - self.since);
        }
    }
}

/// The simulated cluster.
pub struct Sim {
    cfg: SimConfig,
    now: Millis,
    rng: SmallRng,
    nodes: Vec<SimNode>,
    queue: EventQueue,
    /// Reused for every node's outputs: no allocation per event.
    outputs: Vec<Output>,
    /// Partition group of each node; datagrams between groups are dropped.
    partition: Option<Vec<u32>>,
    counters: SimCounters,
    crashes: BTreeMap<usize, Watch>,
    updates: BTreeMap<usize, Watch>,
    events: Vec<(Millis, usize, MemberEvent)>,
    /// (time, observer, subject) of every false death, for debugging a seed.
    false_death_log: Vec<(Millis, usize, usize)>,
    traffic_since: Millis,
    /// While set, suspect and failed events are not counted as false (a partition:
    /// each side rightly declares the other dead).
    excuse_all: bool,
}

/// Simulated address of node `i`: 10.0.0.0/8 counted from 10.0.0.1, port 8301.
pub fn sim_addr(i: usize) -> SocketAddr {
    let ip = u32::from(Ipv4Addr::new(10, 0, 0, 1)) + i as u32;
    SocketAddr::from((Ipv4Addr::from(ip), 8301))
}

fn sim_index(a: &SocketAddr) -> Option<usize> {
    match a {
        SocketAddr::V4(v4) => {
            let base = u32::from(Ipv4Addr::new(10, 0, 0, 1));
            u32::from(*v4.ip()).checked_sub(base).map(|i| i as usize)
        }
        SocketAddr::V6(_) => None,
    }
}

fn node_meta(i: usize, named: bool) -> NodeMeta {
    if !named {
        return NodeMeta::default();
    }
    NodeMeta {
        name: format!("node-{i}"),
        role: if i < 3 { Role::Server } else { Role::Client },
        datacenter: "dc1".into(),
        rpc_port: if i < 3 { 8300 } else { 0 },
        protocol_version: 1,
        tags: Default::default(),
    }
}

/// Seed of node `i`'s own RNG, derived from the run's seed (splitmix64 of both).
fn node_seed(seed: u64, i: usize, life: u32) -> u64 {
    let mut x = seed ^ ((i as u64) << 20) ^ ((life as u64) << 52);
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Sim {
    /// Builds the cluster and starts every node at time 0.
    pub fn new(cfg: SimConfig) -> Result<Sim, GossipError> {
        let n = cfg.nodes;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let addr = sim_addr(i);
            let core = Gossip::new(
                cfg.gossip.clone(),
                addr,
                &node_meta(i, cfg.named_nodes),
                0,
                node_seed(cfg.seed, i, 0),
            )?;
            nodes.push(SimNode {
                addr,
                core: Some(core),
                epoch: 0,
                stalled_until: 0,
                excused: false,
                stalled: false,
                packets_sent: 0,
                bytes_sent: 0,
            });
        }
        let mut sim = Sim {
            rng: SmallRng::seed_from_u64(cfg.seed),
            cfg,
            now: 0,
            nodes,
            queue: EventQueue::new(),
            outputs: Vec::new(),
            partition: None,
            counters: SimCounters::default(),
            crashes: BTreeMap::new(),
            updates: BTreeMap::new(),
            events: Vec::new(),
            false_death_log: Vec::new(),
            traffic_since: 0,
            excuse_all: false,
        };
        let first_joiner = n.saturating_sub(sim.cfg.joiners);
        for i in first_joiner..n {
            sim.nodes[i].core = None;
        }
        if sim.cfg.converged_start {
            let named = sim.cfg.named_nodes;
            for i in 0..first_joiner {
                // All of them, ourselves included (restore skips it): an exact size hint
                // lets the table be sized once.
                let others = (0..first_joiner).map(|j| (sim_addr(j), 0, node_meta(j, named)));
                let core = sim.nodes[i].core.as_mut().expect("just built");
                core.restore(0, others)?;
                core.join(0, &[])?;
                sim.drain(i);
            }
        } else {
            let seed = [sim_addr(0)];
            for i in 0..first_joiner {
                let core = sim.nodes[i].core.as_mut().expect("just built");
                core.join(0, if i == 0 { &[] } else { &seed })?;
                sim.drain(i);
            }
        }
        Ok(sim)
    }

    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Node `i`'s core, `None` while it is crashed.
    pub fn core(&self, i: usize) -> Option<&Gossip> {
        self.nodes[i].core.as_ref()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    pub fn counters(&self) -> &SimCounters {
        &self.counters
    }

    pub fn events(&self) -> &[(Millis, usize, MemberEvent)] {
        &self.events
    }

    pub fn false_death_log(&self) -> &[(Millis, usize, usize)] {
        &self.false_death_log
    }

    /// Processes everything due up to and including `until`, then sets the clock to it.
    pub fn run_until(&mut self, until: Millis) {
        while let Some((at, kind)) = self.queue.pop_until(until) {
            self.now = at;
            self.process(kind);
        }
        self.now = until;
    }

    /// Runs until `done(self)` holds (checked every `step_ms`) or `until`; says whether
    /// it held.
    pub fn run_until_or(
        &mut self,
        until: Millis,
        step_ms: Millis,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> bool {
        while self.now < until {
            if done(self) {
                return true;
            }
            let next = (self.now + step_ms).min(until);
            self.run_until(next);
        }
        done(self)
    }

    fn push(&mut self, at: Millis, kind: ItemKind) {
        self.queue.push(at, kind);
    }

    fn process(&mut self, kind: ItemKind) {
        match kind {
            ItemKind::Deliver { to, from, bytes } => {
                let i = to as usize;
                let node = &mut self.nodes[i];
                if node.core.is_none() {
                    self.counters.to_down += 1;
                    return;
                }
                if node.stalled_until > self.now {
                    let at = node.stalled_until;
                    self.push(at, ItemKind::Deliver { to, from, bytes });
                    return;
                }
                self.counters.delivered += 1;
                let core = node.core.as_mut().expect("checked above");
                if core
                    .handle_packet(self.now, sim_addr(from as usize), &bytes)
                    .is_err()
                {
                    self.counters.refused += 1;
                }
                self.drain(i);
            }
            ItemKind::Timer { node, epoch, timer } => {
                let i = node as usize;
                let n = &mut self.nodes[i];
                if n.epoch != epoch || n.core.is_none() {
                    return;
                }
                if n.stalled_until > self.now {
                    let at = n.stalled_until;
                    self.push(at, ItemKind::Timer { node, epoch, timer });
                    return;
                }
                n.core
                    .as_mut()
                    .expect("checked above")
                    .handle_timer(self.now, timer);
                self.drain(i);
            }
        }
    }

    /// Carries out node `i`'s outputs.
    fn drain(&mut self, i: usize) {
        let mut outputs = std::mem::take(&mut self.outputs);
        match self.nodes[i].core.as_mut() {
            Some(c) => outputs.extend(c.drain_outputs()),
            None => return,
        }
        for o in outputs.drain(..) {
            match o {
                Output::Send { to, bytes } => self.send(i, to, bytes),
                Output::SetTimer { at, timer } => {
                    let epoch = self.nodes[i].epoch;
                    let at = at.max(self.now);
                    self.push(
                        at,
                        ItemKind::Timer {
                            node: i as u32,
                            epoch,
                            timer,
                        },
                    );
                }
                Output::Event(e) => self.observe(i, e),
            }
        }
        self.outputs = outputs;
    }

    fn send(&mut self, from: usize, to: SocketAddr, bytes: Bytes) {
        let node = &mut self.nodes[from];
        node.packets_sent += 1;
        node.bytes_sent += bytes.len() as u64;
        let Some(j) = sim_index(&to).filter(|j| *j < self.nodes.len()) else {
            return;
        };
        if self.cfg.loss > 0.0 && self.rng.random::<f64>() < self.cfg.loss {
            self.counters.lost += 1;
            return;
        }
        if let Some(groups) = &self.partition {
            if groups[from] != groups[j] {
                self.counters.partitioned += 1;
                return;
            }
        }
        let u: f64 = self.rng.random();
        let tail = -self.cfg.latency_mean_ms * (1.0 - u).ln();
        let latency = self.cfg.latency_min_ms + tail as u64;
        self.push(
            self.now + latency.max(1),
            ItemKind::Deliver {
                to: j as u32,
                from: from as u32,
                bytes,
            },
        );
    }

    fn observe(&mut self, observer: usize, e: MemberEvent) {
        if let Some(j) = sim_index(&e.addr()).filter(|j| *j < self.nodes.len()) {
            let up = self.nodes[j].core.is_some();
            let innocent = up && !self.nodes[j].excused && !self.excuse_all;
            let stalled = up && self.nodes[j].stalled && !self.excuse_all;
            match &e {
                MemberEvent::Suspect { .. } if innocent => self.counters.false_suspicions += 1,
                MemberEvent::Suspect { .. } if stalled => self.counters.stalled_suspicions += 1,
                MemberEvent::Failed { .. } => {
                    if stalled {
                        self.counters.stalled_deaths += 1;
                    }
                    if innocent {
                        self.counters.false_deaths += 1;
                        if self.false_death_log.len() < 1_000 {
                            self.false_death_log.push((self.now, observer, j));
                        }
                    }
                    if let Some(w) = self.crashes.get_mut(&j) {
                        w.note(observer, self.now);
                    }
                }
                MemberEvent::Updated { .. } => {
                    if let Some(w) = self.updates.get_mut(&j) {
                        w.note(observer, self.now);
                    }
                }
                _ => {}
            }
        }
        if self.cfg.record_events {
            self.events.push((self.now, observer, e));
        }
    }

    fn up_nodes(&self, except: usize) -> Vec<bool> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(k, n)| k != except && n.core.is_some())
            .collect()
    }

    // ---- faults ---------------------------------------------------------------------

    /// Node `i` stops dead: no more datagrams, no timers. Starts timing its detection.
    pub fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.core = None;
        n.epoch += 1;
        n.excused = true;
        n.stalled = false;
        let w = Watch::new(self.now, self.up_nodes(i));
        self.crashes.insert(i, w);
    }

    /// Restarts crashed node `i` as a new process (incarnation 0, fresh state) joining
    /// through `seeds`.
    pub fn restart(&mut self, i: usize, seeds: &[usize]) -> Result<(), GossipError> {
        assert!(self.nodes[i].core.is_none(), "node {i} is running");
        let epoch = self.nodes[i].epoch;
        let mut core = Gossip::new(
            self.cfg.gossip.clone(),
            self.nodes[i].addr,
            &node_meta(i, self.cfg.named_nodes),
            0,
            node_seed(self.cfg.seed, i, epoch),
        )?;
        let seeds: Vec<SocketAddr> = seeds.iter().map(|s| sim_addr(*s)).collect();
        core.join(self.now, &seeds)?;
        self.nodes[i].core = Some(core);
        self.crashes.remove(&i);
        self.drain(i);
        Ok(())
    }

    /// Node `i` leaves gracefully (it keeps running so the news spreads).
    pub fn leave(&mut self, i: usize) -> Result<(), GossipError> {
        self.nodes[i].excused = true;
        self.nodes[i].stalled = false;
        let now = self.now;
        self.nodes[i]
            .core
            .as_mut()
            .expect("node is running")
            .leave(now)?;
        self.drain(i);
        Ok(())
    }

    /// Node `i` changes its metadata; starts timing how fast the others learn it.
    pub fn update_meta(&mut self, i: usize, meta: &NodeMeta) -> Result<(), GossipError> {
        let now = self.now;
        self.nodes[i]
            .core
            .as_mut()
            .expect("node is running")
            .update_meta(now, meta)?;
        let w = Watch::new(self.now, self.up_nodes(i));
        self.updates.insert(i, w);
        self.drain(i);
        Ok(())
    }

    /// Node `i` processes nothing until `now + duration_ms` (a GC pause, a stalled VM),
    /// then everything queued for it at once.
    pub fn stall(&mut self, i: usize, duration_ms: Millis) {
        self.nodes[i].stalled_until = self.now + duration_ms;
        self.nodes[i].excused = true;
        self.nodes[i].stalled = true;
    }

    /// Whether node `i` is stalled now.
    pub fn is_stalled(&self, i: usize) -> bool {
        self.nodes[i].stalled_until > self.now
    }

    /// While `on`, no suspicion or death is counted as false or stalled (during a
    /// partition each side rightly declares the other dead, and the news lingers for a
    /// while after it heals).
    pub fn excuse_all(&mut self, on: bool) {
        self.excuse_all = on;
    }

    /// Splits the network: nodes in different groups cannot reach each other.
    pub fn partition(&mut self, groups: Vec<u32>) {
        assert_eq!(groups.len(), self.nodes.len());
        self.partition = Some(groups);
    }

    pub fn heal(&mut self) {
        self.partition = None;
    }

    // ---- measurements ---------------------------------------------------------------

    /// Per live observer of node `i`'s crash: ms until it marked `i` failed (`None`: not
    /// yet). Observers that crashed since are left out.
    pub fn detection_ms(&self, i: usize) -> Vec<Option<Millis>> {
        self.watch_ms(self.crashes.get(&i))
    }

    /// Per live member: ms until it saw node `i`'s last metadata update.
    pub fn dissemination_ms(&self, i: usize) -> Vec<Option<Millis>> {
        self.watch_ms(self.updates.get(&i))
    }

    fn watch_ms(&self, w: Option<&Watch>) -> Vec<Option<Millis>> {
        let Some(w) = w else { return Vec::new() };
        (0..self.nodes.len())
            .filter(|k| w.observers[*k] && self.nodes[*k].core.is_some())
            .map(|k| w.noticed[k])
            .collect()
    }

    /// Whether every live observer has marked crashed node `i` failed.
    pub fn crash_detected_by_all(&self, i: usize) -> bool {
        let d = self.detection_ms(i);
        !d.is_empty() && d.iter().all(Option::is_some)
    }

    pub fn reset_traffic(&mut self) {
        for n in &mut self.nodes {
            n.packets_sent = 0;
            n.bytes_sent = 0;
        }
        self.traffic_since = self.now;
    }

    pub fn traffic(&self) -> Traffic {
        let secs = ((self.now - self.traffic_since) as f64 / 1000.0).max(1e-9);
        let n = self.nodes.len().max(1) as f64;
        let packets: u64 = self.nodes.iter().map(|x| x.packets_sent).sum();
        let bytes: u64 = self.nodes.iter().map(|x| x.bytes_sent).sum();
        let maxp = self.nodes.iter().map(|x| x.packets_sent).max().unwrap_or(0);
        let maxb = self.nodes.iter().map(|x| x.bytes_sent).max().unwrap_or(0);
        Traffic {
            seconds: secs,
            packets_per_node_per_s: packets as f64 / n / secs,
            bytes_per_node_per_s: bytes as f64 / n / secs,
            max_packets_per_node_per_s: maxp as f64 / secs,
            max_bytes_per_node_per_s: maxb as f64 / secs,
        }
    }

    /// Sum of every running core's [`Footprint`], and the event queue's (events queued,
    /// slots allocated in the wheel's buckets): what a long run checks stays flat.
    pub fn footprint(&self) -> (Footprint, usize, usize) {
        let mut f = Footprint::default();
        for c in self.nodes.iter().filter_map(|n| n.core.as_ref()) {
            f += c.footprint();
        }
        let q = &self.queue;
        let slots = q.buckets.iter().map(VecDeque::capacity).sum();
        (f, q.in_wheel + q.far.len(), slots)
    }

    /// Whether every running node counts as many live members as there are running
    /// nodes: O(N), so it can be polled at 10,000 nodes (with no false deaths it means
    /// everyone knows everyone; [`Sim::converged`] checks each pair).
    pub fn live_counts_agree(&self) -> bool {
        let live = self.live_count();
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .all(|c| c.num_live() == live)
    }

    /// Running nodes.
    pub fn live_count(&self) -> usize {
        self.nodes.iter().filter(|n| n.core.is_some()).count()
    }

    /// Whether every live node sees every other live node alive, and nothing else alive.
    pub fn converged(&self) -> bool {
        let live: Vec<usize> = (0..self.nodes.len()).filter(|i| self.is_up(*i)).collect();
        live.iter().all(|i| {
            let core = self.nodes[*i].core.as_ref().expect("live");
            core.num_live() == live.len()
                && live.iter().all(|j| {
                    core.status_of(&self.nodes[*j].addr)
                        .is_some_and(|(s, _)| s == super::Status::Alive)
                })
        })
    }
}

/// The `q`-quantile (0..=1) of `values` (sorted in place), or `None` if empty.
pub fn quantile(values: &mut [Millis], q: f64) -> Option<Millis> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let idx = ((values.len() as f64 - 1.0) * q).round() as usize;
    Some(values[idx.min(values.len() - 1)])
}
