//! The gossip state machine: [`Gossip`].
//!
//! # Probing (SWIM §3, §4.3; Lifeguard §4.1, §4.3)
//! Every `probe_interval_ms` (times the local health multiplier) the next member in a
//! shuffled round-robin list is pinged, except every `ring_probe_every`-th probe, which
//! goes to our successor on a ring of members ordered by address hash (so every member
//! is probed by its predecessor at a fixed rate: a crashed member's wait for its first
//! probe is bounded). No ack within half of `probe_timeout_ms`: the ping is resent
//! ([`Config::probe_retry`]); none within `probe_timeout_ms`: it is sent a third time and
//! `indirect_checks` random members are asked to ping it (ping-req); each answers with the target's ack or, if it too hears nothing, a
//! nack. No ack by the end of the period: the target becomes suspect, and the helpers
//! that nacked are named in the suspicion as independent confirmations — four vantage
//! points failed to reach it, so Lifeguard's timeout can start near its minimum. Missing
//! nacks mean the problem is likely here, so they raise the local health score instead.
//!
//! # Suspicion (SWIM §4.2, Lifeguard §4.2, §4.4)
//! A suspect that hears of its suspicion refutes it with a higher incarnation. It hears
//! fast: the suspecter sends the suspicion straight to it, and every ping to a suspect
//! carries the suspicion (the buddy system). Each member runs its own timer, starting at
//! `max` and shrinking logarithmically toward `min` as distinct suspecters are learned;
//! when it runs out the member declares the suspect dead.
//!
//! # Dissemination (SWIM §4.1)
//! Accepted news is queued once per subject (see `broadcast`) and piggybacked on pings,
//! acks and ping-reqs, plus pushed every `gossip_interval_ms` to `gossip_fanout` random
//! members while the queue is not empty — an idle cluster sends only probes.
//!
//! # Anti-entropy
//! A joining node asks its seeds for their whole state (push-pull on join), and from
//! `join_catch_up_delay_ms` later exchanges digests with a random member every
//! `join_catch_up_interval_ms` for as long as the rounds teach it members it did not know
//! (at most 32 rounds):
//! the members already there are news to nobody, so nothing else would repair a datagram
//! of the seeds' answers lost on every seed (see `on_catch_up_timer`). After that,
//! each node sends one random member a digest of `sync_digest_buckets` hashes every
//! `sync_interval_ms`; the peer answers with the members of (at most `sync_max_buckets`)
//! differing buckets and its own digest, so both sides repair. The cost per node is one
//! datagram each way per interval whatever N is, plus repairs proportional to what was
//! actually missed — never a full-state exchange that grows with N (memberlist's periodic
//! push-pull moves the whole member list, which is what made 10,000-node clusters burn
//! bandwidth). A death learned this way is re-checked as a suspicion (as memberlist's
//! push-pull merge does), so a stale digest cannot kill a live member without giving it
//! the chance to refute. Every `sync_reconnect_every`-th digest goes to a dead member.
//!
//! # Healing (after a partition, a long stall)
//! Each side of a healed partition holds the other dead, and nobody probes or gossips to
//! dead members, so by itself nothing crosses the cut but a rare digest. Five cheap
//! pieces close it, none of which costs anything in a pool where nobody is held dead:
//! - reconnect pings: every probe period a node pings one random dead member with
//!   probability `probe_interval * dead / (reconnect_interval * live)`, so cluster-wide
//!   each dead member is pinged about once per `reconnect_interval_ms` whatever N is.
//!   The ping carries the sender's "you are dead" first, so a running target refutes and
//!   its ack carries the refutation back;
//! - dead notices: a member we hold dead that talks to us is told so (a ping's ack says
//!   it, any other datagram gets a notice); it refutes, or if it already outbid that
//!   incarnation, answers with its current alive message. Every member revived on the
//!   other side is then probed by that side, and tells each prober it holds dead: the
//!   revival spreads as an epidemic (bridges grow exponentially);
//! - retold suspicions: a suspicion we started is sent to its suspect again every probe
//!   period until it ends, so one raised just before the heal reaches its suspect;
//! - re-announcement: news that we are suspect or dead at an incarnation we already
//!   outbid means some members missed our refutation; we queue our alive message again;
//! - resync: `resync_delay_ms` after refuting, a node asks one member for its whole
//!   state (at most once per `sync_interval_ms`): whoever could not reach us, we could
//!   not hear from, and news spread in that time never reached us.

use super::broadcast::BroadcastQueue;
use super::config::{Config, ConfigError};
use super::members::{Member, MemberId, MemberTable};
use super::wire::{decode_packet, Message, NodeMeta, PacketBuilder, WireError};
use super::{MemberEvent, Millis, Output, Status, Timer};
use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;

/// Catch-up rounds in a row that teach nothing after which a joiner stops: a round
/// repairs `sync_max_buckets` of the buckets that differ, picked at random, and some
/// differ only by news still in flight or by what the peer itself lacks.
const CATCH_UP_IDLE_ROUNDS: u32 = 3;

/// Why a command was refused. In every case nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    #[error("invalid gossip configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("metadata of {len} bytes exceeds the limit of {max} bytes; nothing changed")]
    MetaTooLarge { len: usize, max: usize },
    #[error("metadata cannot be encoded ({0}); nothing changed")]
    Meta(WireError),
    #[error("this node has left the pool; nothing changed")]
    Left,
    #[error("no member at {0}")]
    UnknownMember(SocketAddr),
    #[error("member {0} is not failed ({1}); only a failed member can be forced to leave")]
    NotFailed(SocketAddr, &'static str),
}

/// Counters for operators and the simulator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets_received: u64,
    pub bytes_received: u64,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    /// Datagrams refused by the decoder (malformed, truncated, oversize, foreign, or of
    /// an unknown version).
    pub packets_refused: u64,
    pub probes: u64,
    /// Probes that ended without an ack.
    pub probe_failures: u64,
    /// Suspicions or deaths about this node that it refuted.
    pub refutations: u64,
    /// Broadcasts dropped because the queue was full.
    pub broadcasts_dropped: u64,
    /// News about new members ignored because `max_members` was reached.
    pub members_refused: u64,
    /// Ping-reqs ignored because `max_indirect_pending` were in flight.
    pub indirect_refused: u64,
    /// Digests whose bucket count does not match ours.
    pub digests_refused: u64,
}

/// See [`Gossip::footprint`]: entry counts, not bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub members: usize,
    pub tombstones: usize,
    pub suspicions: usize,
    pub broadcasts: usize,
    pub probe_list: usize,
    pub probe_list_capacity: usize,
    pub indirect: usize,
    pub outputs_capacity: usize,
}

impl std::ops::AddAssign for Footprint {
    fn add_assign(&mut self, o: Footprint) {
        self.members += o.members;
        self.tombstones += o.tombstones;
        self.suspicions += o.suspicions;
        self.broadcasts += o.broadcasts;
        self.probe_list += o.probe_list;
        self.probe_list_capacity += o.probe_list_capacity;
        self.indirect += o.indirect;
        self.outputs_capacity += o.outputs_capacity;
    }
}

/// A member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub addr: SocketAddr,
    pub status: Status,
    pub incarnation: u32,
    pub meta: NodeMeta,
}

struct Suspicion {
    incarnation: u32,
    started_ms: Millis,
    /// Distinct members that suspect it, the first being the original suspecter. Its
    /// length minus one is Lifeguard's confirmation count.
    suspecters: Vec<SocketAddr>,
}

/// The probe of the current protocol period.
struct Probe {
    seq: u32,
    target: SocketAddr,
    acked: bool,
    indirect_sent: bool,
    helpers: Vec<SocketAddr>,
    nackers: Vec<SocketAddr>,
}

/// One member's gossip engine. See the [module docs](self).
pub struct Gossip {
    config: Config,
    local: SocketAddr,
    incarnation: u32,
    /// Our encoded metadata.
    meta: Bytes,
    rng: SmallRng,
    /// Every other member we know of, tombstones included, with metadata kept encoded
    /// (it is what gets sent) and interned. Compact because it has N entries on every
    /// node, N² in the simulator (see `members`). Iterated in id order, which depends
    /// only on the inputs, so a run depends only on its seed.
    members: MemberTable,
    /// Members with status alive or suspect (not counting ourselves).
    live: usize,
    /// Sum of the entry hashes of `members` per digest bucket, kept up to date on every
    /// change so a digest costs nothing to produce.
    digest: Vec<u64>,
    suspicions: BTreeMap<SocketAddr, Suspicion>,
    /// Suspicions this node started and that are still pending: their suspects are told
    /// again every probe period (see `retell_suspects`).
    own_suspicions: Vec<SocketAddr>,
    next_retell_ms: Millis,
    /// When a member we held dead last came back alive.
    revived_ms: Option<Millis>,
    /// Randomized round-robin order (SWIM §4.3): reshuffled each pass, new members
    /// inserted at a random place still ahead. Ids, not addresses (4 bytes, not 32): an
    /// id freed by a reclaim and reused by a new member until the next reshuffle only
    /// means that member may be probed twice in this pass.
    probe_list: Vec<MemberId>,
    /// One bit per member id: set while the id is still ahead in this pass of
    /// `probe_list`. A member that dies and comes back is put back only if it is not
    /// already ahead: otherwise every flap of a member added it once more, and a member
    /// flapping often was probed several times per pass (and the list grew with it).
    probe_ahead: Vec<u64>,
    /// Probes started, for `ring_probe_every`.
    probe_count: u64,
    /// Our successor on the ring of live members ordered by `ring_pos` (id and
    /// distance from us), valid while `ring_valid`: updated as members come alive, and
    /// recomputed by one pass over the table only after it stops being live.
    ring: Option<(MemberId, u64)>,
    ring_valid: bool,
    probe_index: usize,
    probe: Option<Probe>,
    next_probe_ms: Millis,
    /// Pings we sent as a ping-req helper: our seq -> (requester, its seq, target).
    indirect: HashMap<u32, (SocketAddr, u32, SocketAddr)>,
    next_seq: u32,
    broadcasts: BroadcastQueue,
    /// Lifeguard's local health score, 0 (healthy) to `awareness_max_multiplier - 1`.
    health: u32,
    started: bool,
    leaving: bool,
    sync_round: u32,
    /// A `Timer::Resync` is set; and when the last one fired.
    resync_pending: bool,
    last_resync_ms: Option<Millis>,
    /// Seeds of the last `join`, asked again every probe period until some member is
    /// known: a lost join datagram must not leave a node alone forever.
    join_seeds: Vec<SocketAddr>,
    /// Members we learned of that we did not know at all (a `Joined` event for an unknown
    /// address): what tells a catch-up round whether the last one taught us anything.
    learned: u64,
    /// Catch-up digest rounds left after a join, and `learned` when the last one was
    /// sent (`None` before the first). See `on_catch_up_timer`.
    catch_up_left: u32,
    catch_up_mark: Option<u64>,
    /// Catch-up rounds in a row that taught us nothing.
    catch_up_idle: u32,
    outputs: VecDeque<Output>,
    stats: Stats,
}

impl Gossip {
    /// A node at `local` with metadata `meta`, starting at `incarnation` (a restarted node
    /// can start at 0: it refutes older news about itself when it hears it), drawing
    /// randomness from `rng_seed`.
    pub fn new(
        config: Config,
        local: SocketAddr,
        meta: &NodeMeta,
        incarnation: u32,
        rng_seed: u64,
    ) -> Result<Gossip, GossipError> {
        config.validate()?;
        let meta = encode_meta(meta, config.max_meta_bytes)?;
        Ok(Gossip {
            digest: vec![0; config.sync_digest_buckets],
            broadcasts: BroadcastQueue::new(config.broadcast_queue_max),
            config,
            local,
            incarnation,
            meta: Bytes::from(meta),
            rng: SmallRng::seed_from_u64(rng_seed),
            members: MemberTable::default(),
            live: 0,
            suspicions: BTreeMap::new(),
            own_suspicions: Vec::new(),
            next_retell_ms: 0,
            revived_ms: None,
            probe_list: Vec::new(),
            probe_ahead: Vec::new(),
            probe_count: 0,
            ring: None,
            ring_valid: false,
            probe_index: 0,
            probe: None,
            next_probe_ms: 0,
            indirect: HashMap::new(),
            next_seq: 0,
            health: 0,
            started: false,
            leaving: false,
            sync_round: 0,
            resync_pending: false,
            last_resync_ms: None,
            join_seeds: Vec::new(),
            learned: 0,
            catch_up_left: 0,
            catch_up_mark: None,
            catch_up_idle: 0,
            outputs: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn incarnation(&self) -> u32 {
        self.incarnation
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.broadcasts_dropped = self.broadcasts.dropped;
        s
    }

    /// Lifeguard's local health multiplier (1 = healthy): probe interval and timeouts are
    /// multiplied by it.
    pub fn health_multiplier(&self) -> u32 {
        self.health + 1
    }

    /// Live members including ourselves: the N of the log(N) formulas.
    pub fn num_live(&self) -> usize {
        self.live + 1
    }

    /// Broadcasts waiting to be piggybacked.
    pub fn pending_broadcasts(&self) -> usize {
        self.broadcasts.len()
    }

    /// Sizes of the core's growing structures, to check that they stay bounded (the
    /// simulator's long runs report them).
    pub fn footprint(&self) -> Footprint {
        Footprint {
            members: self.members.len(),
            tombstones: self.members.tombstone_count(),
            suspicions: self.suspicions.len(),
            broadcasts: self.broadcasts.len(),
            probe_list: self.probe_list.len(),
            probe_list_capacity: self.probe_list.capacity(),
            indirect: self.indirect.len(),
            outputs_capacity: self.outputs.capacity(),
        }
    }

    /// How this node sees `addr`, without decoding its metadata.
    pub fn status_of(&self, addr: &SocketAddr) -> Option<(Status, u32)> {
        if *addr == self.local {
            let s = if self.leaving {
                Status::Left
            } else {
                Status::Alive
            };
            return Some((s, self.incarnation));
        }
        self.members.get(addr).map(|m| (m.status(), m.incarnation))
    }

    /// Every other member we know of, tombstones included, in address order.
    pub fn members(&self) -> impl Iterator<Item = MemberView> + '_ {
        let mut views: Vec<MemberView> = self
            .members
            .iter()
            .map(|(_, m)| MemberView {
                addr: m.addr(),
                status: m.status(),
                incarnation: m.incarnation,
                meta: NodeMeta::decode(self.members.meta(m))
                    .expect("metadata is validated on receipt"),
            })
            .collect();
        views.sort_by_key(|v| v.addr);
        views.into_iter()
    }

    /// Members this node knows of, tombstones included (not counting itself).
    pub fn num_members(&self) -> usize {
        self.members.len()
    }

    /// The next thing to do, in the order the core asked for them.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Every pending output, in order.
    pub fn drain_outputs(&mut self) -> std::collections::vec_deque::Drain<'_, Output> {
        self.outputs.drain(..)
    }

    // ---- commands -------------------------------------------------------------------

    /// Starts the protocol timers (once) and asks each of `seeds` for its state, announcing
    /// ourselves. With no seeds this node starts a pool of its own. Returns the number of
    /// seeds contacted (seeds beyond `max_join_seeds` and our own address are skipped).
    pub fn join(&mut self, now: Millis, seeds: &[SocketAddr]) -> Result<usize, GossipError> {
        if self.leaving {
            return Err(GossipError::Left);
        }
        self.start(now);
        let local = self.local;
        self.join_seeds = seeds
            .iter()
            .copied()
            .filter(|s| *s != local)
            .take(self.config.max_join_seeds)
            .collect();
        self.send_joins();
        let delay = self.config.join_catch_up_delay_ms;
        if !self.join_seeds.is_empty() && delay > 0 {
            // Once the seeds' answers are in, check them against a member's digest (see
            // `on_catch_up_timer`).
            let buckets = self.config.sync_digest_buckets;
            let per_round = self.config.sync_max_buckets.max(1);
            self.catch_up_left = 2 * buckets.div_ceil(per_round) as u32;
            self.catch_up_mark = None;
            self.catch_up_idle = 0;
            self.set_timer(now + delay, Timer::CatchUp);
        }
        Ok(self.join_seeds.len())
    }

    fn send_joins(&mut self) {
        for i in 0..self.join_seeds.len() {
            let mut p = PacketBuilder::new(self.config.max_packet_bytes);
            p.push(&self.self_alive());
            p.push(&Message::Join);
            self.send(self.join_seeds[i], p.finish());
        }
    }

    /// Seeds the member table, e.g. from a snapshot of a previous run or, in the
    /// simulator, to start from a converged cluster. Members are added alive without
    /// events or broadcasts; members already known are left alone.
    pub fn restore(
        &mut self,
        now: Millis,
        members: impl IntoIterator<Item = (SocketAddr, u32, NodeMeta)>,
    ) -> Result<(), GossipError> {
        let members = members.into_iter();
        let room = members
            .size_hint()
            .0
            .min(self.config.max_members.saturating_sub(self.members.len()));
        self.members.reserve(room);
        self.probe_list.reserve_exact(room);
        let mut encoded = Vec::with_capacity(64);
        for (addr, incarnation, meta) in members {
            if addr == self.local || self.members.id(&addr).is_some() {
                continue;
            }
            if self.members.len() >= self.config.max_members {
                self.stats.members_refused += 1;
                continue;
            }
            // One buffer for all: restoring 10,000 members allocates nothing per member
            // (equal metadata is interned by the table).
            encoded.clear();
            meta.encode_into(&mut encoded).map_err(GossipError::Meta)?;
            if encoded.len() > self.config.max_meta_bytes {
                return Err(GossipError::MetaTooLarge {
                    len: encoded.len(),
                    max: self.config.max_meta_bytes,
                });
            }
            let id = self.put_member(addr, incarnation, Status::Alive, Some(&encoded), now);
            self.probe_list.push(id);
        }
        // Restored in address order; every node must probe in an order of its own
        // (SWIM §4.3), or they would all probe the same member at the same time.
        self.probe_list.shuffle(&mut self.rng);
        self.probe_index = 0;
        self.mark_all_ahead();
        Ok(())
    }

    /// Leaves gracefully: broadcasts that we left and stops probing. The caller should
    /// keep feeding the core for a few gossip intervals so the news spreads, then stop.
    pub fn leave(&mut self, now: Millis) -> Result<(), GossipError> {
        if self.leaving {
            return Err(GossipError::Left);
        }
        self.leaving = true;
        self.probe = None;
        let msg = Message::Left {
            addr: self.local,
            incarnation: self.incarnation,
        };
        self.broadcasts.push(self.local, msg.encode_to_bytes());
        // Push it out now rather than at the next gossip round: the caller may not wait.
        self.gossip_round(now);
        Ok(())
    }

    /// Consul's `force-leave`: declares a failed member left, as if it had left itself,
    /// and tells the pool (its tombstone is then reclaimed like any leaver's, and the
    /// catalog deregisters it). A member that is in fact alive hears it and refutes,
    /// so it cannot be pushed out this way; only a failed one is accepted.
    pub fn force_leave(&mut self, now: Millis, addr: SocketAddr) -> Result<(), GossipError> {
        let m = self
            .members
            .get(&addr)
            .ok_or(GossipError::UnknownMember(addr))?;
        match m.status() {
            Status::Dead => {}
            Status::Left => return Ok(()),
            Status::Alive => return Err(GossipError::NotFailed(addr, "alive")),
            Status::Suspect => return Err(GossipError::NotFailed(addr, "suspect")),
        }
        let incarnation = m.incarnation;
        self.on_left(now, addr, incarnation);
        Ok(())
    }

    /// Replaces our metadata and announces it with a new incarnation.
    pub fn update_meta(&mut self, _now: Millis, meta: &NodeMeta) -> Result<(), GossipError> {
        if self.leaving {
            return Err(GossipError::Left);
        }
        let meta = encode_meta(meta, self.config.max_meta_bytes)?;
        self.meta = Bytes::from(meta);
        self.incarnation = self.incarnation.saturating_add(1);
        self.queue_self_news();
        Ok(())
    }

    // ---- inputs ---------------------------------------------------------------------

    /// A datagram arrived from `from`. A datagram that does not decode is refused whole:
    /// the error says why, and no state changed.
    pub fn handle_packet(
        &mut self,
        now: Millis,
        from: SocketAddr,
        packet: &Bytes,
    ) -> Result<(), WireError> {
        let messages = match decode_packet(
            packet,
            self.config.max_packet_bytes,
            self.config.max_meta_bytes,
        ) {
            Ok(m) => m,
            Err(e) => {
                self.stats.packets_refused += 1;
                return Err(e);
            }
        };
        self.stats.packets_received += 1;
        self.stats.bytes_received += packet.len() as u64;
        let mut pinged = false;
        for m in messages {
            pinged |= matches!(m, Message::Ping { .. });
            self.handle_message(now, from, m);
        }
        // A member we still hold dead after all it said is talking to us: it does not
        // know (a healed partition, a stale view of ours that no broadcast will fix any
        // more). Tell it, so it refutes or tells us who it is now. A ping's ack already
        // says it.
        if !pinged {
            if let Some(m) = self
                .members
                .get(&from)
                .filter(|m| m.status() == Status::Dead)
            {
                let notice = Message::Dead {
                    addr: from,
                    incarnation: m.incarnation,
                    from: self.local,
                };
                self.send_with_news(from, &[notice], None);
            }
        }
        Ok(())
    }

    /// A timer set through [`Output::SetTimer`] fired.
    pub fn handle_timer(&mut self, now: Millis, timer: Timer) {
        match timer {
            Timer::Probe => self.on_probe_timer(now),
            Timer::ProbeRetry { seq } => {
                if let Some(p) = self
                    .probe
                    .as_ref()
                    .filter(|p| p.seq == seq && !p.acked && !p.indirect_sent)
                {
                    let target = p.target;
                    self.send_with_news(target, &[Message::Ping { seq }], Some(target));
                }
            }
            Timer::ProbeTimeout { seq } => self.on_probe_timeout(now, seq),
            Timer::ProbeDeadline { seq } => {
                if self.probe.as_ref().is_some_and(|p| p.seq == seq) {
                    self.finish_probe(now);
                }
            }
            Timer::IndirectRetry { seq } => {
                if let Some(&(_, _, target)) = self.indirect.get(&seq) {
                    self.send_with_news(target, &[Message::Ping { seq }], Some(target));
                }
            }
            Timer::IndirectTimeout { seq } => {
                if let Some((origin, origin_seq, _)) = self.indirect.remove(&seq) {
                    self.send_with_news(origin, &[Message::Nack { seq: origin_seq }], None);
                }
            }
            Timer::Gossip => {
                self.set_timer(now + self.config.gossip_interval_ms, Timer::Gossip);
                self.gossip_round(now);
                self.retell_suspects(now);
            }
            Timer::Suspicion { addr } => self.on_suspicion_timer(now, addr),
            Timer::Sync => self.on_sync_timer(now),
            Timer::Reclaim => self.on_reclaim_timer(now),
            Timer::Resync => self.on_resync_timer(now),
            Timer::CatchUp => self.on_catch_up_timer(now),
        }
    }

    // ---- probing --------------------------------------------------------------------

    fn start(&mut self, now: Millis) {
        if self.started {
            return;
        }
        self.started = true;
        // Random phases so that nodes started together do not probe, gossip and sync in
        // lockstep.
        let probe_at = now + self.rng.random_range(0..self.config.probe_interval_ms);
        self.next_probe_ms = probe_at;
        self.set_timer(probe_at, Timer::Probe);
        let g = now + self.rng.random_range(0..self.config.gossip_interval_ms);
        self.set_timer(g, Timer::Gossip);
        let s = now + self.rng.random_range(0..self.config.sync_interval_ms);
        self.set_timer(s, Timer::Sync);
        self.set_timer(now + self.config.reclaim_interval_ms, Timer::Reclaim);
    }

    fn scaled(&self, ms: u64) -> u64 {
        ms * (self.health as u64 + 1)
    }

    fn health_add(&mut self, delta: u32) {
        let max = self.config.awareness_max_multiplier.max(1) - 1;
        self.health = (self.health + delta).min(max);
    }

    fn health_sub(&mut self) {
        self.health = self.health.saturating_sub(1);
    }

    fn on_probe_timer(&mut self, now: Millis) {
        if self.leaving {
            return;
        }
        // A probe still open at the next period ends now (a driver may fire timers set for
        // the same instant in any order).
        self.finish_probe(now);
        // Lifeguard: a node that cannot keep its own schedule (CPU starvation, a long
        // pause) is likely the sick one; slow down before accusing others.
        if now > self.next_probe_ms + self.config.probe_interval_ms / 2 {
            self.health_add(1);
        }
        let interval = self.scaled(self.config.probe_interval_ms);
        self.next_probe_ms = now + interval;
        if !self.join_seeds.is_empty() {
            if self.live == 0 {
                self.send_joins();
            } else {
                self.join_seeds.clear();
            }
        }
        self.probe_count += 1;
        let every = self.config.ring_probe_every as u64;
        let ring = if every > 0 && self.probe_count % every == 0 {
            self.ring_successor()
        } else {
            None
        };
        let Some(target) = ring.or_else(|| self.next_probe_target()) else {
            self.set_timer(now + interval, Timer::Probe);
            return;
        };
        let seq = self.next_seq();
        self.stats.probes += 1;
        self.probe = Some(Probe {
            seq,
            target,
            acked: false,
            indirect_sent: false,
            helpers: Vec::new(),
            nackers: Vec::new(),
        });
        self.send_with_news(target, &[Message::Ping { seq }], Some(target));
        let timeout = self.scaled(self.config.probe_timeout_ms);
        if self.config.probe_retry {
            self.set_timer(now + timeout / 2, Timer::ProbeRetry { seq });
        }
        self.set_timer(now + timeout, Timer::ProbeTimeout { seq });
        self.set_timer(now + interval, Timer::ProbeDeadline { seq });
        self.set_timer(now + interval, Timer::Probe);
        self.maybe_reconnect(now, interval);
    }

    /// Sends each suspicion we started and that still runs to its suspect again. The
    /// first telling can be lost, or cut off by a partition: a suspicion started on one
    /// side shortly before a heal is held by that side, whose gossip of it is spent, and
    /// the suspect (alive, and held alive at the same incarnation by everyone else) never
    /// hears of it; when it runs out the death is news to the whole pool. One datagram
    /// per probe period per pending suspicion we started (a handful at most), on the
    /// gossip timer so that it keeps the unscaled period: a partition raises the local
    /// health multiplier of everyone on the small side (their helpers' nacks are lost
    /// too), which would stretch it up to 4 s.
    fn retell_suspects(&mut self, now: Millis) {
        if self.own_suspicions.is_empty() || now < self.next_retell_ms {
            return;
        }
        self.next_retell_ms = now + self.config.probe_interval_ms;
        let mut own = std::mem::take(&mut self.own_suspicions);
        let local = self.local;
        own.retain(|a| {
            self.suspicions
                .get(a)
                .is_some_and(|s| s.suspecters.first() == Some(&local))
        });
        for a in &own {
            self.send_with_news(*a, &[], Some(*a));
        }
        self.own_suspicions = own;
    }

    /// With probability `interval * dead / (reconnect_interval * live)`, pings one random
    /// dead member, telling it we hold it dead: cluster-wide, each dead member gets one
    /// such ping per `reconnect_interval_ms` on average, whatever N is. A crashed member
    /// costs one lost datagram. A running one (the other side of a healed partition, a
    /// node back from a long stall) refutes before it answers, so its ack brings its
    /// refutation back; and if it holds us dead its ack says so too (see the `Ping`
    /// handler), so we refute as well. Each side then gossips the other's refutation,
    /// and every member revived this way becomes a bridge: members on the other side
    /// now probe it, and it answers each one it holds dead with that news.
    ///
    /// That rate assumes every member holds the same dead. Right after a member we held
    /// dead came back (a heal in progress), our other dead may be stale views of ours
    /// alone, which the shared rate would reach once an hour; so for a sync interval after
    /// such a revival we also ping one at least every `reconnect_interval_ms / 4` (2.5 s).
    fn maybe_reconnect(&mut self, now: Millis, interval: u64) {
        let reconnect = self.config.reconnect_interval_ms;
        let tombstones = self.members.tombstone_count();
        if reconnect == 0 || tombstones == 0 {
            return;
        }
        let mut p =
            (interval as f64 * tombstones as f64) / (reconnect as f64 * self.num_live() as f64);
        if self
            .revived_ms
            .is_some_and(|t| now < t + self.config.sync_interval_ms)
        {
            p = p.max(interval as f64 * 4.0 / reconnect as f64);
        }
        if p < 1.0 && self.rng.random::<f64>() >= p {
            return;
        }
        let k = self.rng.random_range(0..tombstones);
        let Some(m) = self
            .members
            .tombstone_at(k)
            .and_then(|id| self.members.at(id))
            .filter(|m| m.status() == Status::Dead)
        else {
            // A left member is not pinged: it said it was going.
            return;
        };
        let (addr, incarnation) = (m.addr(), m.incarnation);
        let seq = self.next_seq();
        let notice = Message::Dead {
            addr,
            incarnation,
            from: self.local,
        };
        // The notice first, so the target refutes before it builds its ack.
        self.send_with_news(addr, &[notice, Message::Ping { seq }], None);
    }

    fn next_probe_target(&mut self) -> Option<SocketAddr> {
        for pass in 0..2 {
            while self.probe_index < self.probe_list.len() {
                let id = self.probe_list[self.probe_index];
                self.probe_index += 1;
                self.set_ahead(id, false);
                if let Some(m) = self.members.at(id).filter(|m| m.status().is_live()) {
                    return Some(m.addr());
                }
            }
            if pass == 0 {
                // End of a pass: rebuild from the table (dropping the dead and duplicates)
                // and reshuffle.
                self.probe_list.clear();
                self.probe_list.extend(
                    self.members
                        .iter()
                        .filter(|(_, m)| m.status().is_live())
                        .map(|(id, _)| id),
                );
                self.probe_list.shuffle(&mut self.rng);
                self.probe_index = 0;
                self.mark_all_ahead();
            }
        }
        None
    }

    fn on_probe_timeout(&mut self, now: Millis, seq: u32) {
        let Some(p) = self.probe.as_ref() else { return };
        if p.seq != seq || p.acked || p.indirect_sent {
            return;
        }
        let target = p.target;
        let helpers = self.random_members(self.config.indirect_checks, Some(target), false);
        if self.config.probe_retry {
            self.send_with_news(target, &[Message::Ping { seq }], Some(target));
        }
        for h in &helpers {
            self.send_with_news(*h, &[Message::PingReq { seq, target }], None);
        }
        let p = self.probe.as_mut().expect("checked above");
        p.indirect_sent = true;
        p.helpers = helpers;
        let _ = now;
    }

    /// Ends the current probe: an unacked target becomes suspect.
    fn finish_probe(&mut self, now: Millis) {
        let Some(p) = self.probe.take() else { return };
        if p.acked {
            return;
        }
        self.stats.probe_failures += 1;
        // Lifeguard §4.3: each helper that did not even nack points at our own network.
        let expected = p.helpers.len() as u32;
        if expected > 0 {
            self.health_add(expected - p.nackers.len() as u32);
        } else {
            self.health_add(1);
        }
        let Some(m) = self.members.get(&p.target) else {
            return;
        };
        if !m.status().is_live() {
            return;
        }
        let incarnation = m.incarnation;
        let mut suspecters = vec![self.local];
        suspecters.extend(p.nackers.iter().copied());
        self.on_suspect(now, p.target, incarnation, &suspecters);
        // Tell the suspect at once, so a live one refutes without waiting to be gossiped
        // to (part of the buddy system).
        self.send_with_news(p.target, &[], Some(p.target));
        if self
            .suspicions
            .get(&p.target)
            .is_some_and(|s| s.suspecters.first() == Some(&self.local))
            && !self.own_suspicions.contains(&p.target)
        {
            self.own_suspicions.push(p.target);
        }
    }

    // ---- messages -------------------------------------------------------------------

    fn handle_message(&mut self, now: Millis, from: SocketAddr, m: Message) {
        match m {
            Message::Ping { seq } => {
                let mut reply = vec![Message::Ack { seq }];
                // A member we hold dead is pinging us: a healed partition or a restart.
                // Tell it, so it refutes now instead of when someone happens to gossip it.
                if let Some(m) = self
                    .members
                    .get(&from)
                    .filter(|m| m.status() == Status::Dead)
                {
                    reply.push(Message::Dead {
                        addr: from,
                        incarnation: m.incarnation,
                        from: self.local,
                    });
                }
                self.send_with_news(from, &reply, Some(from));
            }
            Message::Ack { seq } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    if !p.acked {
                        p.acked = true;
                        self.health_sub();
                    }
                } else if let Some((origin, origin_seq, _)) = self.indirect.remove(&seq) {
                    self.send_with_news(origin, &[Message::Ack { seq: origin_seq }], None);
                }
            }
            Message::Nack { seq } => {
                if let Some(p) = self.probe.as_mut().filter(|p| p.seq == seq) {
                    if p.helpers.contains(&from) && !p.nackers.contains(&from) {
                        p.nackers.push(from);
                    }
                }
            }
            Message::PingReq { seq, target } => self.on_ping_req(now, from, seq, target),
            Message::Alive {
                addr,
                incarnation,
                meta,
            } => self.on_alive(now, addr, incarnation, &meta),
            Message::Suspect {
                addr,
                incarnation,
                suspecters,
            } => self.on_suspect(now, addr, incarnation, &suspecters),
            Message::Dead {
                addr,
                incarnation,
                from: declarer,
            } => {
                if addr == self.local && declarer == from && incarnation < self.incarnation {
                    // The sender itself holds us dead at an incarnation we already
                    // outbid, and the news that we did never reached it (a healed
                    // partition: a reconnect ping, or the answer to our ping). Nothing to
                    // refute; tell it directly who we are now.
                    let alive = self.self_alive();
                    self.send_with_news(from, &[alive], None);
                    self.schedule_resync(now);
                    return;
                }
                self.on_dead(now, addr, incarnation, declarer)
            }
            Message::Left { addr, incarnation } => self.on_left(now, addr, incarnation),
            Message::Join => self.send_state(from, None),
            Message::Digest { reply, buckets } => self.on_digest(from, reply, &buckets),
        }
    }

    fn on_ping_req(&mut self, now: Millis, origin: SocketAddr, seq: u32, target: SocketAddr) {
        if target == self.local {
            self.send_with_news(origin, &[Message::Ack { seq }], None);
            return;
        }
        if self.indirect.len() >= self.config.max_indirect_pending {
            self.stats.indirect_refused += 1;
            return;
        }
        let own = self.next_seq();
        self.indirect.insert(own, (origin, seq, target));
        self.send_with_news(target, &[Message::Ping { seq: own }], Some(target));
        // The nack must reach the requester before its probe period ends: of the
        // probe_timeout and the time left after it, take 80% of the shorter (Lifeguard
        // §4.3 uses 80% of the probe timeout).
        let window = self
            .config
            .probe_timeout_ms
            .min(self.config.probe_interval_ms - self.config.probe_timeout_ms);
        let wait = window * 8 / 10;
        if self.config.probe_retry {
            self.set_timer(now + wait / 2, Timer::IndirectRetry { seq: own });
        }
        self.set_timer(now + wait, Timer::IndirectTimeout { seq: own });
    }

    fn on_alive(&mut self, now: Millis, addr: SocketAddr, incarnation: u32, meta: &[u8]) {
        if addr == self.local {
            // Someone holds news of us at least as new as ours that is not ours (a previous
            // life of this address, or a replay): outbid it.
            if incarnation > self.incarnation
                || (incarnation == self.incarnation && meta != &self.meta[..])
            {
                self.refute(now, incarnation);
            }
            return;
        }
        let previous = self.members.get(&addr).map(|m| (m.status(), m.incarnation));
        match previous {
            Some((_, known)) if incarnation <= known => return,
            None if self.members.len() >= self.config.max_members => {
                self.stats.members_refused += 1;
                return;
            }
            _ => {}
        }
        let meta_changed = self
            .members
            .get(&addr)
            .is_none_or(|m| &self.members.meta(m)[..] != meta);
        self.suspicions.remove(&addr);
        self.put_member(addr, incarnation, Status::Alive, Some(meta), now);
        let decoded = || NodeMeta::decode(meta).expect("metadata is validated on receipt");
        if previous.is_none() {
            self.learned += 1;
        }
        match previous {
            None | Some((Status::Dead | Status::Left, _)) => {
                if matches!(previous, Some((Status::Dead, _))) {
                    self.revived_ms = Some(now);
                }
                self.add_to_probe_list(addr);
                self.event(MemberEvent::Joined {
                    addr,
                    incarnation,
                    meta: decoded(),
                });
            }
            Some((Status::Suspect, _)) => {
                self.event(MemberEvent::Alive { addr, incarnation });
                if meta_changed {
                    self.event(MemberEvent::Updated {
                        addr,
                        incarnation,
                        meta: decoded(),
                    });
                }
            }
            Some((Status::Alive, _)) => {
                if meta_changed {
                    self.event(MemberEvent::Updated {
                        addr,
                        incarnation,
                        meta: decoded(),
                    });
                }
            }
        }
        let msg = Message::Alive {
            addr,
            incarnation,
            meta: Bytes::copy_from_slice(meta),
        };
        self.broadcasts.push(addr, msg.encode_to_bytes());
    }

    fn on_suspect(
        &mut self,
        now: Millis,
        addr: SocketAddr,
        incarnation: u32,
        suspecters: &[SocketAddr],
    ) {
        if addr == self.local {
            if incarnation >= self.incarnation {
                self.refute(now, incarnation);
                // Lifeguard §4.1: being suspected is a hint that we are the slow one.
                self.health_add(1);
            } else {
                self.reannounce();
            }
            return;
        }
        let Some(m) = self.members.get(&addr) else {
            // News about a member we never knew (or reclaimed) brings nothing to probe.
            return;
        };
        if incarnation < m.incarnation || !m.status().is_live() {
            return;
        }
        let cap = (self.config.suspicion_confirmations + 1).min(super::wire::MAX_SUSPECTERS);
        if m.status() == Status::Suspect
            && self
                .suspicions
                .get(&addr)
                .is_some_and(|s| s.incarnation == incarnation)
        {
            // Lifeguard: a confirmation from a member not yet counted shrinks the timeout.
            let s = self.suspicions.get_mut(&addr).expect("checked above");
            let before = s.suspecters.len();
            for x in suspecters {
                if s.suspecters.len() < cap && !s.suspecters.contains(x) {
                    s.suspecters.push(*x);
                }
            }
            if s.suspecters.len() == before {
                return;
            }
            let list = s.suspecters.clone();
            self.queue_suspicion(addr, incarnation, list);
            self.set_suspicion_timer(addr);
            return;
        }
        let mut list: Vec<SocketAddr> = Vec::with_capacity(cap);
        for x in suspecters {
            if list.len() < cap && !list.contains(x) {
                list.push(*x);
            }
        }
        self.put_member(addr, incarnation, Status::Suspect, None, now);
        self.suspicions.insert(
            addr,
            Suspicion {
                incarnation,
                started_ms: now,
                suspecters: list.clone(),
            },
        );
        self.event(MemberEvent::Suspect { addr, incarnation });
        self.queue_suspicion(addr, incarnation, list);
        self.set_suspicion_timer(addr);
    }

    fn queue_suspicion(&mut self, addr: SocketAddr, incarnation: u32, suspecters: Vec<SocketAddr>) {
        let msg = Message::Suspect {
            addr,
            incarnation,
            suspecters,
        };
        self.broadcasts.push(addr, msg.encode_to_bytes());
    }

    fn suspicion_deadline(&self, s: &Suspicion) -> Millis {
        let n = self.num_live();
        // K is capped for small clusters: there are not K other members to confirm.
        let expected = self.config.suspicion_confirmations.min(n.saturating_sub(2));
        let confirmations = s.suspecters.len().saturating_sub(1);
        s.started_ms + self.config.suspicion_timeout_ms(n, confirmations, expected)
    }

    fn set_suspicion_timer(&mut self, addr: SocketAddr) {
        if let Some(s) = self.suspicions.get(&addr) {
            let at = self.suspicion_deadline(s);
            self.set_timer(at, Timer::Suspicion { addr });
        }
    }

    fn on_suspicion_timer(&mut self, now: Millis, addr: SocketAddr) {
        let Some(s) = self.suspicions.get(&addr) else {
            return;
        };
        let deadline = self.suspicion_deadline(s);
        if now < deadline {
            // The cluster shrank since the timer was set (a larger timeout now): wait on.
            self.set_timer(deadline, Timer::Suspicion { addr });
            return;
        }
        let incarnation = s.incarnation;
        let from = self.local;
        self.on_dead(now, addr, incarnation, from);
    }

    fn on_dead(&mut self, now: Millis, addr: SocketAddr, incarnation: u32, from: SocketAddr) {
        if addr == self.local {
            if incarnation >= self.incarnation {
                self.refute(now, incarnation);
            } else {
                self.reannounce();
            }
            return;
        }
        let Some(m) = self.members.get(&addr) else {
            return;
        };
        if incarnation < m.incarnation || !m.status().is_live() {
            return;
        }
        self.suspicions.remove(&addr);
        self.put_member(addr, incarnation, Status::Dead, None, now);
        self.event(MemberEvent::Failed { addr, incarnation });
        let msg = Message::Dead {
            addr,
            incarnation,
            from,
        };
        self.broadcasts.push(addr, msg.encode_to_bytes());
    }

    fn on_left(&mut self, now: Millis, addr: SocketAddr, incarnation: u32) {
        if addr == self.local {
            // A left message about us while we are not leaving is from a previous life.
            if !self.leaving && incarnation >= self.incarnation {
                self.refute(now, incarnation);
            }
            return;
        }
        let Some(m) = self.members.get(&addr) else {
            return;
        };
        // Leaving is said by the member itself, so it outranks a death at the same
        // incarnation: operators should see "left", not "failed".
        if incarnation < m.incarnation || m.status() == Status::Left {
            return;
        }
        self.suspicions.remove(&addr);
        self.put_member(addr, incarnation, Status::Left, None, now);
        self.event(MemberEvent::Left { addr, incarnation });
        let msg = Message::Left { addr, incarnation };
        self.broadcasts.push(addr, msg.encode_to_bytes());
    }

    /// Outbids news about us at `incarnation` (SWIM §4.2).
    /// Being suspected or declared dead means some members could not reach us for a
    /// while, so we may have missed news too: a resync follows.
    fn refute(&mut self, now: Millis, incarnation: u32) {
        self.incarnation = self.incarnation.max(incarnation).saturating_add(1);
        self.stats.refutations += 1;
        self.queue_self_news();
        self.schedule_resync(now);
    }

    /// News that we are suspect or dead at an incarnation we already outbid is still
    /// going round: some members never got our refutation (it spread while they were cut
    /// off from those who had it) and will declare us dead at the old incarnation, which
    /// we would ignore. Announce our current incarnation again (no new refutation), unless
    /// it is still queued: the members holding the old one take it, the others ignore it
    /// without passing it on, so it costs little.
    fn reannounce(&mut self) {
        if !self.leaving && !self.broadcasts.contains(&self.local) {
            self.queue_self_news();
        }
    }

    fn queue_self_news(&mut self) {
        let msg = if self.leaving {
            Message::Left {
                addr: self.local,
                incarnation: self.incarnation,
            }
        } else {
            self.self_alive()
        };
        self.broadcasts.push(self.local, msg.encode_to_bytes());
    }

    fn self_alive(&self) -> Message {
        Message::Alive {
            addr: self.local,
            incarnation: self.incarnation,
            meta: self.meta.clone(),
        }
    }

    // ---- dissemination --------------------------------------------------------------

    fn gossip_round(&mut self, _now: Millis) {
        if self.broadcasts.is_empty() {
            return;
        }
        let targets = self.random_members(self.config.gossip_fanout, None, true);
        for t in targets {
            let limit = self.config.retransmit_limit(self.num_live());
            let mut p = PacketBuilder::new(self.config.max_packet_bytes);
            self.broadcasts.fill(&mut p, limit, None);
            if p.messages() == 0 {
                break;
            }
            self.send(t, p.finish());
        }
    }

    /// Sends `first` to `to` with queued news filling the rest of the datagram. With
    /// `buddy`, a suspicion about that member goes in first (Lifeguard's buddy system).
    fn send_with_news(&mut self, to: SocketAddr, first: &[Message], buddy: Option<SocketAddr>) {
        let mut p = PacketBuilder::new(self.config.max_packet_bytes);
        for m in first {
            p.push(m);
        }
        let mut skip = None;
        if let Some(b) = buddy {
            if let Some(s) = self.suspicions.get(&b) {
                let msg = Message::Suspect {
                    addr: b,
                    incarnation: s.incarnation,
                    suspecters: s.suspecters.clone(),
                };
                if p.push(&msg) {
                    skip = Some(b);
                }
            }
        }
        let limit = self.config.retransmit_limit(self.num_live());
        self.broadcasts.fill(&mut p, limit, skip);
        if p.messages() > 0 {
            self.send(to, p.finish());
        }
    }

    // ---- anti-entropy ---------------------------------------------------------------

    fn on_sync_timer(&mut self, now: Millis) {
        self.set_timer(now + self.config.sync_interval_ms, Timer::Sync);
        if self.leaving {
            return;
        }
        self.sync_round = self.sync_round.wrapping_add(1);
        let reconnect = self.config.sync_reconnect_every > 0
            && self.sync_round % self.config.sync_reconnect_every == 0;
        let peer = if reconnect {
            let dead: Vec<SocketAddr> = self
                .members
                .iter()
                .filter(|(_, m)| m.status() == Status::Dead)
                .map(|(_, m)| m.addr())
                .collect();
            dead.choose(&mut self.rng).copied()
        } else {
            None
        };
        let peer = peer.or_else(|| self.random_members(1, None, false).first().copied());
        if let Some(peer) = peer {
            self.send_digest(peer);
        }
    }

    /// Sends `peer` our digest and asks for its own back (an anti-entropy exchange).
    fn send_digest(&mut self, peer: SocketAddr) {
        let msg = Message::Digest {
            reply: true,
            buckets: self.current_digest(),
        };
        let mut p = PacketBuilder::new(self.config.max_packet_bytes);
        p.push(&msg);
        self.send(peer, p.finish());
    }

    fn on_digest(&mut self, from: SocketAddr, reply: bool, theirs: &[u64]) {
        if theirs.len() != self.digest.len() {
            self.stats.digests_refused += 1;
            return;
        }
        let ours = self.current_digest();
        let differing: Vec<usize> = (0..ours.len()).filter(|i| ours[*i] != theirs[*i]).collect();
        if differing.is_empty() {
            return;
        }
        if reply {
            let mut p = PacketBuilder::new(self.config.max_packet_bytes);
            p.push(&Message::Digest {
                reply: false,
                buckets: ours,
            });
            self.send(from, p.finish());
        }
        // Start at a random differing bucket so repeated exchanges cover all of them.
        let start = self.rng.random_range(0..differing.len());
        let take = self.config.sync_max_buckets.min(differing.len());
        let mut chosen = vec![false; self.digest.len()];
        for i in 0..take {
            chosen[differing[(start + i) % differing.len()]] = true;
        }
        self.send_state(from, Some(&chosen));
    }

    /// Sends our view of members (all, or those in the `buckets` marked true) to `to`,
    /// packed into as many datagrams as needed, led by our own entry and our view of
    /// `to` (so a peer we think dead learns it and refutes).
    fn send_state(&mut self, to: SocketAddr, buckets: Option<&[bool]>) {
        let max = self.config.max_packet_bytes;
        let mut packets = Vec::new();
        let mut p = PacketBuilder::new(max);
        p.push(&self.self_alive());
        if let Some(m) = self.members.get(&to) {
            p.push(&self.state_entry(&to, m));
        }
        let nb = self.digest.len();
        for (_, m) in self.members.iter() {
            let addr = m.addr();
            if addr == to {
                continue;
            }
            if let Some(b) = buckets {
                if !b[bucket_of(&addr, nb)] {
                    continue;
                }
            }
            let entry = self.state_entry(&addr, m);
            if !p.push(&entry) {
                packets.push(std::mem::replace(&mut p, PacketBuilder::new(max)).finish());
                let fitted = p.push(&entry);
                debug_assert!(fitted, "an entry always fits an empty datagram");
            }
        }
        if p.messages() > 0 {
            packets.push(p.finish());
        }
        for b in packets {
            self.send(to, b);
        }
    }

    fn state_entry(&self, addr: &SocketAddr, m: &Member) -> Message {
        match m.status() {
            Status::Alive | Status::Suspect => Message::Alive {
                addr: *addr,
                incarnation: m.incarnation,
                meta: self.members.meta(m).clone(),
            },
            // A death learned from anti-entropy is re-checked as a suspicion.
            Status::Dead => Message::Suspect {
                addr: *addr,
                incarnation: m.incarnation,
                suspecters: vec![self.local],
            },
            Status::Left => Message::Left {
                addr: *addr,
                incarnation: m.incarnation,
            },
        }
    }

    fn current_digest(&self) -> Vec<u64> {
        let mut d = self.digest.clone();
        let me = if self.leaving {
            Status::Left
        } else {
            Status::Alive
        };
        let b = bucket_of(&self.local, d.len());
        d[b] = d[b].wrapping_add(entry_hash(&self.local, self.incarnation, me));
        d
    }

    /// Asks for a `Timer::Resync` in `resync_delay_ms`, unless one is set or the last
    /// fired less than `sync_interval_ms` ago.
    fn schedule_resync(&mut self, now: Millis) {
        let delay = self.config.resync_delay_ms;
        if delay == 0 || self.resync_pending || self.leaving {
            return;
        }
        if self
            .last_resync_ms
            .is_some_and(|t| now < t + self.config.sync_interval_ms)
        {
            return;
        }
        self.resync_pending = true;
        self.set_timer(now + delay, Timer::Resync);
    }

    /// Asks one random live member for its whole state (as a joiner does), announcing
    /// ourselves first.
    fn on_resync_timer(&mut self, now: Millis) {
        self.resync_pending = false;
        if self.leaving {
            return;
        }
        self.last_resync_ms = Some(now);
        if let Some(peer) = self.random_members(1, None, false).first().copied() {
            let mut p = PacketBuilder::new(self.config.max_packet_bytes);
            p.push(&self.self_alive());
            p.push(&Message::Join);
            self.send(peer, p.finish());
        }
    }

    /// A catch-up round after a join: one digest exchange with a random live member, as
    /// the sync timer does, repeated every `join_catch_up_interval_ms` for as long as the
    /// rounds teach us of members we did not know, at most `catch_up_left` rounds.
    ///
    /// Why: the members that were there before us are news to nobody, so no broadcast
    /// will ever tell us of them; the seeds' answers to our join are the only path, and
    /// they are ~N/55 datagrams each, none resent. A datagram lost from every answer (or
    /// a seed that never got our join) leaves a datagram's worth of members (~55) unknown
    /// to us, and a digest exchange every `sync_interval_ms` repairing
    /// `sync_max_buckets` buckets takes minutes to find them all (a mass join of 1,000
    /// into 9,000 at 1% loss had not converged after 60 s). Here the repairs come every
    /// 200 ms instead, while they are still teaching us something: a joiner that
    /// got everything stops after `CATCH_UP_IDLE_ROUNDS` exchanges (a digest each way,
    /// plus repairs of buckets that differ only by news in flight); one that missed a
    /// datagram's worth gets it back in a few seconds; the worst case, 2 x
    /// `sync_digest_buckets / sync_max_buckets` rounds (32), is a few times a full
    /// state, once per join.
    fn on_catch_up_timer(&mut self, now: Millis) {
        if self.catch_up_left == 0 || self.leaving {
            return;
        }
        if self.catch_up_mark.is_some_and(|m| m == self.learned) {
            self.catch_up_idle += 1;
        } else {
            self.catch_up_idle = 0;
        }
        if self.catch_up_idle >= CATCH_UP_IDLE_ROUNDS {
            // Rounds in a row with random members taught us no new member: we have
            // what the pool has.
            self.catch_up_left = 0;
            return;
        }
        self.catch_up_left -= 1;
        self.catch_up_mark = Some(self.learned);
        if let Some(peer) = self.random_members(1, None, false).first().copied() {
            self.send_digest(peer);
        }
        self.set_timer(now + self.config.join_catch_up_interval_ms, Timer::CatchUp);
    }

    fn on_reclaim_timer(&mut self, now: Millis) {
        self.set_timer(now + self.config.reclaim_interval_ms, Timer::Reclaim);
        let nb = self.digest.len();
        for id in self.members.expired(now, self.config.tombstone_timeout_ms) {
            if self.ring.is_some_and(|(r, _)| r == id) {
                self.ring_valid = false;
            }
            let m = self.members.remove(id);
            let a = m.addr();
            let b = bucket_of(&a, nb);
            self.digest[b] = self.digest[b].wrapping_sub(entry_hash(&a, m.incarnation, m.status()));
            self.broadcasts.remove(&a);
        }
    }

    // ---- bookkeeping ----------------------------------------------------------------

    /// The one place member entries change: keeps `live` and `digest` in step. `meta:
    /// None` keeps the member's metadata (it must be known).
    fn put_member(
        &mut self,
        addr: SocketAddr,
        incarnation: u32,
        status: Status,
        meta: Option<&[u8]>,
        now: Millis,
    ) -> MemberId {
        let nb = self.digest.len();
        let b = bucket_of(&addr, nb);
        let (id, old) = self.members.put(&addr, incarnation, status, meta, now);
        if let Some(old) = old {
            self.digest[b] =
                self.digest[b].wrapping_sub(entry_hash(&addr, old.incarnation, old.status));
            if old.status.is_live() {
                self.live -= 1;
            }
        }
        self.digest[b] = self.digest[b].wrapping_add(entry_hash(&addr, incarnation, status));
        if status.is_live() {
            self.live += 1;
        }
        if self.ring_valid {
            if status.is_live() {
                let d = self.ring_distance(&addr);
                if self.ring.is_none_or(|(_, best)| d < best) {
                    self.ring = Some((id, d));
                }
            } else if self.ring.is_some_and(|(r, _)| r == id) {
                self.ring_valid = false;
            }
        }
        id
    }

    /// How far clockwise `a` is from us on the ring of members (0 only for ourselves).
    fn ring_distance(&self, a: &SocketAddr) -> u64 {
        ring_pos(a).wrapping_sub(ring_pos(&self.local))
    }

    /// The first live member after us on the ring, if any.
    fn ring_successor(&mut self) -> Option<SocketAddr> {
        if !self.ring_valid {
            let mut best: Option<(MemberId, u64)> = None;
            for (id, m) in self.members.iter() {
                if !m.status().is_live() {
                    continue;
                }
                let d = self.ring_distance(&m.addr());
                if best.is_none_or(|(_, b)| d < b) {
                    best = Some((id, d));
                }
            }
            self.ring = best;
            self.ring_valid = true;
        }
        self.ring
            .and_then(|(id, _)| self.members.at(id))
            .map(|m| m.addr())
    }

    fn add_to_probe_list(&mut self, addr: SocketAddr) {
        let Some(id) = self.members.id(&addr) else {
            return;
        };
        if self.is_ahead(id) {
            return;
        }
        // Somewhere still ahead in this pass (SWIM §4.3: new members are probed within
        // one pass).
        self.set_ahead(id, true);
        self.probe_list.push(id);
        let last = self.probe_list.len() - 1;
        let lo = self.probe_index.min(last);
        let j = self.rng.random_range(lo..=last);
        self.probe_list.swap(j, last);
    }

    fn is_ahead(&self, id: MemberId) -> bool {
        let (w, b) = (id as usize / 64, id % 64);
        self.probe_ahead.get(w).is_some_and(|x| x & (1 << b) != 0)
    }

    fn set_ahead(&mut self, id: MemberId, on: bool) {
        let (w, b) = (id as usize / 64, id % 64);
        if w >= self.probe_ahead.len() {
            if !on {
                return;
            }
            self.probe_ahead.resize(w + 1, 0);
        }
        if on {
            self.probe_ahead[w] |= 1 << b;
        } else {
            self.probe_ahead[w] &= !(1 << b);
        }
    }

    /// After a reshuffle: every id in the list is ahead.
    fn mark_all_ahead(&mut self) {
        self.probe_ahead.iter_mut().for_each(|w| *w = 0);
        for i in self.probe_index..self.probe_list.len() {
            let id = self.probe_list[i];
            self.set_ahead(id, true);
        }
    }

    /// Up to `n` distinct random live members other than `except`; suspects only if
    /// `include_suspects`.
    fn random_members(
        &mut self,
        n: usize,
        except: Option<SocketAddr>,
        include_suspects: bool,
    ) -> Vec<SocketAddr> {
        let mut out = Vec::with_capacity(n);
        if self.probe_list.is_empty() || n == 0 {
            return out;
        }
        // Sampling the probe list (live members, perhaps a few stale) is O(1) per try;
        // a bounded number of tries keeps a mostly-dead list from costing much.
        for _ in 0..n * 4 {
            if out.len() == n {
                break;
            }
            let id = self.probe_list[self.rng.random_range(0..self.probe_list.len())];
            let Some(m) = self.members.at(id) else {
                continue;
            };
            let ok =
                m.status() == Status::Alive || (include_suspects && m.status() == Status::Suspect);
            let a = m.addr();
            if !ok || Some(a) == except || out.contains(&a) {
                continue;
            }
            out.push(a);
        }
        out
    }

    fn next_seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    fn send(&mut self, to: SocketAddr, bytes: Bytes) {
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        self.outputs.push_back(Output::Send { to, bytes });
    }

    fn set_timer(&mut self, at: Millis, timer: Timer) {
        self.outputs.push_back(Output::SetTimer { at, timer });
    }

    fn event(&mut self, e: MemberEvent) {
        self.outputs.push_back(Output::Event(e));
    }
}

fn encode_meta(meta: &NodeMeta, max: usize) -> Result<Vec<u8>, GossipError> {
    let b = meta.encode().map_err(GossipError::Meta)?;
    if b.len() > max {
        return Err(GossipError::MetaTooLarge { len: b.len(), max });
    }
    Ok(b)
}

/// FNV-1a over the address: stable across runs and machines (std's hasher is seeded
/// per process, which would make digests incomparable between nodes).
fn addr_hash(a: &SocketAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match a.ip() {
        std::net::IpAddr::V4(ip) => eat(&ip.octets()),
        std::net::IpAddr::V6(ip) => eat(&ip.octets()),
    }
    eat(&a.port().to_le_bytes());
    h
}

/// splitmix64's finalizer: spreads FNV's weak low bits.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A member's place on the probe ring: the same for every node, spread by the hash.
fn ring_pos(a: &SocketAddr) -> u64 {
    mix(addr_hash(a) ^ 0x7269_6e67)
}

fn bucket_of(a: &SocketAddr, buckets: usize) -> usize {
    (mix(addr_hash(a)) % buckets as u64) as usize
}

/// What two nodes must agree on about a member. Suspect hashes like alive: a suspicion
/// is in flight and settles by itself; repairing it would spread it.
fn entry_hash(a: &SocketAddr, incarnation: u32, status: Status) -> u64 {
    let class = match status {
        Status::Alive | Status::Suspect => 0u64,
        Status::Dead => 1,
        Status::Left => 2,
    };
    mix(addr_hash(a) ^ mix(((incarnation as u64) << 2) | class))
}
