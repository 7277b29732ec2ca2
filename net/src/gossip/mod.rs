//! The sans-IO SWIM + Lifeguard gossip engine: membership and failure detection.
//!
//! [`Gossip`] is a pure state machine. Its inputs are received datagrams
//! ([`Gossip::handle_packet`]), timer firings ([`Gossip::handle_timer`]) and commands
//! ([`Gossip::join`], [`Gossip::leave`], [`Gossip::update_meta`]), each with the current
//! time in milliseconds passed in by the caller. Its outputs are queued as [`Output`]s —
//! datagrams to send, timers to set, membership events — that the caller drains with
//! [`Gossip::poll_output`]. There is no socket, clock, thread or global RNG inside: the
//! RNG is seeded by the caller, so the same core runs under the UDP driver and under the
//! seeded simulator in [`sim`], and every simulated run replays exactly from its seed.
//!
//! What it implements, with the paper each part comes from:
//! - SWIM (Das, Gupta, Motivala 2002): randomized round-robin probing (§4.3), ping /
//!   ping-req through `k` members (§3.1), suspicion with incarnation numbers and
//!   refutation (§4.2), dissemination piggybacked on protocol messages (§4.1).
//! - Lifeguard (Dadgar, Phillips, Currey 2018): nacks from ping-req helpers (§4.3), the
//!   local health multiplier that stretches a struggling node's probe interval and
//!   timeouts (§4.1, "Local Health Aware Probe"), the suspicion timeout that starts at a
//!   maximum and shrinks logarithmically toward a minimum as independent confirmations
//!   arrive (§4.2, "Local Health Aware Suspicion"), and the buddy system (§4.4): a ping to
//!   a suspect carries the suspicion so the suspect can refute at once.
//! - Anti-entropy: push-pull of the full state only on join; afterwards a fixed-size
//!   digest exchanged with one random peer per `sync_interval_ms` (see [`core`] for why).
//!
//! Also here: [`crypto`], AES-256-GCM datagrams and the keyring; [`sim`], the seeded
//! simulator, and [`scenario`], the scenarios `loadgen gossip-sim` runs on it. The member
//! table (`members`) is private: compact because the simulator holds N² entries. Left to
//! others: the UDP driver (the agent's `src/gossip/`) and turning events into node
//! health.

pub mod config;
pub mod core;
pub mod crypto;
pub mod scenario;
pub mod sim;
pub mod wire;

mod broadcast;
mod members;

pub use self::config::{Config, ConfigError};
pub use self::core::{Footprint, Gossip, GossipError, MemberView, Stats};
pub use self::wire::{NodeMeta, Role, WireError};

use bytes::Bytes;
use std::net::SocketAddr;

/// Milliseconds on the caller's clock. The core only compares and adds them, so any
/// monotonic origin works (the simulator starts at 0, a driver uses time since start).
pub type Millis = u64;

/// A member's status as this node sees it (SWIM §4.2 plus an explicit "left").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Alive,
    /// Failed a probe; becomes [`Status::Dead`] unless it refutes before the suspicion
    /// timeout.
    Suspect,
    /// Declared failed; kept as a tombstone until `tombstone_timeout_ms`.
    Dead,
    /// Left gracefully; kept as a tombstone like a dead member.
    Left,
}

impl Status {
    /// Members that are probed and gossiped to.
    pub fn is_live(self) -> bool {
        matches!(self, Status::Alive | Status::Suspect)
    }
}

/// What the core asks its caller to do. Drained in order with [`Gossip::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send one datagram. Never larger than `Config::max_packet_bytes`.
    Send { to: SocketAddr, bytes: Bytes },
    /// Call [`Gossip::handle_timer`] with `timer` at (or after) time `at`. Timers are
    /// never cancelled: a firing that no longer matters is ignored by the core, so a
    /// driver may keep them in a plain heap.
    SetTimer { at: Millis, timer: Timer },
    /// A change in membership, for the rest of the agent.
    Event(MemberEvent),
}

/// The core's timers. Each names what it is for, so stale firings can be recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Start the next probe (one per `probe_interval_ms`, scaled by local health).
    Probe,
    /// The direct ping of probe `seq` went unanswered for half of `probe_timeout_ms`:
    /// ping once more (with [`Config::probe_retry`]).
    ProbeRetry { seq: u32 },
    /// The direct ping of probe `seq` went unanswered for `probe_timeout_ms`: try
    /// indirectly.
    ProbeTimeout { seq: u32 },
    /// The end of probe `seq`'s period: without an ack, the target becomes suspect.
    ProbeDeadline { seq: u32 },
    /// As a ping-req helper, our ping `seq` to the target went unanswered for half the
    /// time we have: ping it once more (with [`Config::probe_retry`]).
    IndirectRetry { seq: u32 },
    /// As a ping-req helper, our ping `seq` to the target went unanswered: send a nack.
    IndirectTimeout { seq: u32 },
    /// Push queued broadcasts to `gossip_fanout` random members.
    Gossip,
    /// A suspicion about `addr` may have run out.
    Suspicion { addr: SocketAddr },
    /// Exchange a digest with one random member (anti-entropy).
    Sync,
    /// Drop tombstones older than `tombstone_timeout_ms`.
    Reclaim,
    /// We refuted our own death a little while ago: we were cut off from the members
    /// that declared it, so we likely missed news too. Ask one member for its state.
    Resync,
    /// A round of the digest exchanges that follow a join (see `Gossip::join`).
    CatchUp,
}

/// A membership change, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member we did not know (or knew only as dead or left) is alive.
    Joined {
        addr: SocketAddr,
        incarnation: u32,
        meta: NodeMeta,
    },
    /// A live member changed its metadata.
    Updated {
        addr: SocketAddr,
        incarnation: u32,
        meta: NodeMeta,
    },
    /// A suspect member refuted the suspicion.
    Alive {
        addr: SocketAddr,
        incarnation: u32,
    },
    Suspect {
        addr: SocketAddr,
        incarnation: u32,
    },
    /// Declared dead (SWIM's "confirm").
    Failed {
        addr: SocketAddr,
        incarnation: u32,
    },
    Left {
        addr: SocketAddr,
        incarnation: u32,
    },
}

impl MemberEvent {
    pub fn addr(&self) -> SocketAddr {
        match self {
            MemberEvent::Joined { addr, .. }
            | MemberEvent::Updated { addr, .. }
            | MemberEvent::Alive { addr, .. }
            | MemberEvent::Suspect { addr, .. }
            | MemberEvent::Failed { addr, .. }
            | MemberEvent::Left { addr, .. } => *addr,
        }
    }
}
