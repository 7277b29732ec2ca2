//! The gossip driver: the sans-IO SWIM/Lifeguard core of `cairn_net::gossip` on a
//! glommio UDP socket, for the rest of the agent.
//!
//! [`GossipHandle::start`] binds the socket, seeds the core from the operating system's
//! RNG once, and spawns two local tasks on the current glommio executor: one receives
//! datagrams (opening them with the [`Keyring`] when encryption is on) and feeds them to
//! the core; one keeps the core's timers in an ordered set and sleeps until the earliest.
//! Both then drain the core's outputs: datagrams are sealed and sent, timers recorded,
//! membership changes published as [`GossipEvent`]s. The core gets the time as
//! milliseconds since the driver started.
//!
//! Everything a datagram can be refused for — too big, truncated, malformed, a foreign
//! protocol, an unknown version, failed authentication, encrypted when encryption is off
//! or plain when it is on — drops that datagram alone and is counted in
//! [`DriverStats`]; nothing a peer sends can stop the loop or change state it did not
//! authenticate and decode whole.
//!
//! What the rest of the agent calls (all on the executor that started the driver; the
//! handle is not `Send`):
//! - [`GossipHandle::members`] (the local node included), [`GossipHandle::subscribe`]
//!   for events, [`GossipHandle::join`] / [`GossipHandle::join_and_wait`],
//!   [`GossipHandle::leave`], [`GossipHandle::update_meta`], [`GossipHandle::stats`],
//!   [`GossipHandle::with_keyring`].
//! - Dropping the handle stops the driver at once, as a crash would look to the others;
//!   call [`GossipHandle::leave`] first for a graceful exit.
//! - [`keygen`] and [`render_members`] for `cairn keygen` and `cairn members`.
//!
//! Left to others: the CLI wiring, turning events into node health (the catalog), and
//! the TCP state sync (the core's anti-entropy works over UDP alone).

mod driver;
mod render;

pub use self::driver::{
    DriverStats, DroppedDatagram, GossipConfig, GossipHandle, JoinError, NoAnswer, StartError,
};
pub use self::render::render_members;
pub use cairn_net::gossip::crypto::{Key, KeyError, Keyring, KeyringError};
pub use cairn_net::gossip::{Config as Profile, NodeMeta, Role, Status};

use rand::SeedableRng;
use std::net::SocketAddr;

/// A member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node name (`meta.name`, repeated for convenience).
    pub name: String,
    /// Where its gossip is reached; the member's identity in the pool.
    pub addr: SocketAddr,
    pub status: Status,
    /// Its incarnation number (SWIM §4.2): rises each time it refutes a suspicion or
    /// changes its metadata.
    pub incarnation: u32,
    pub meta: NodeMeta,
}

/// What changed about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A member we did not know, or knew only as failed or left, is alive.
    Joined,
    /// A live member changed its metadata.
    Updated,
    /// A suspect member refuted the suspicion.
    Alive,
    /// A member failed a probe; it is declared failed unless it refutes in time.
    Suspect,
    /// Declared failed (SWIM's "confirm").
    Failed,
    /// Left gracefully.
    Left,
}

/// A membership change, with the member as it is after the change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipEvent {
    pub kind: EventKind,
    pub member: Member,
}

/// The word operators see for a status (`cairn members`): Consul's names.
pub fn status_name(s: Status) -> &'static str {
    match s {
        Status::Alive => "alive",
        Status::Suspect => "suspect",
        Status::Dead => "failed",
        Status::Left => "left",
    }
}

/// A new random gossip encryption key as base64 (`cairn keygen`), drawn from an RNG
/// seeded by the operating system. Give it to every agent with `--encrypt`.
pub fn keygen() -> String {
    Key::generate(&mut rand::rngs::StdRng::from_os_rng()).to_base64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_prints_a_key_that_parses_and_differs_each_time() {
        let a = keygen();
        let b = keygen();
        assert_eq!(a.len(), 44);
        assert_ne!(a, b);
        Key::from_base64(&a).unwrap();
        Key::from_base64(&b).unwrap();
    }
}
