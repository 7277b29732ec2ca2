//! The queue of membership news waiting to be piggybacked.
//!
//! At most one entry per subject member: queueing news about a member replaces whatever
//! was queued about it, because the core only queues news it has just accepted as newer
//! (a higher incarnation, or a worse status at the same one). Entries are handed out
//! fewest-transmits first — fresh news spreads before news most members already have —
//! and newest first among equals. An entry is dropped after `limit` transmits, and when
//! the queue is full the most-transmitted entries go first.

use super::wire::PacketBuilder;
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

/// Ordering key: transmits so far, then newest (highest id) first.
type Key = (u32, Reverse<u64>);

struct Entry {
    subject: SocketAddr,
    /// The framed message, encoded once and copied into every packet that carries it.
    framed: Bytes,
}

pub(crate) struct BroadcastQueue {
    entries: BTreeMap<Key, Entry>,
    by_subject: HashMap<SocketAddr, Key>,
    next_id: u64,
    max_len: usize,
    /// Entries dropped because the queue was full (a sign of churn beyond the bound).
    pub(crate) dropped: u64,
}

impl BroadcastQueue {
    pub(crate) fn new(max_len: usize) -> BroadcastQueue {
        BroadcastQueue {
            entries: BTreeMap::new(),
            by_subject: HashMap::new(),
            next_id: 0,
            max_len: max_len.max(1),
            dropped: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues news about `subject`, replacing older news about it.
    pub(crate) fn push(&mut self, subject: SocketAddr, framed: Bytes) {
        if let Some(old) = self.by_subject.remove(&subject) {
            self.entries.remove(&old);
        }
        while self.entries.len() >= self.max_len {
            let (_, e) = self.entries.pop_last().expect("queue is full");
            self.by_subject.remove(&e.subject);
            self.dropped += 1;
        }
        self.next_id += 1;
        let key = (0, Reverse(self.next_id));
        self.entries.insert(key, Entry { subject, framed });
        self.by_subject.insert(subject, key);
    }

    /// Whether news about `subject` is queued.
    pub(crate) fn contains(&self, subject: &SocketAddr) -> bool {
        self.by_subject.contains_key(subject)
    }

    /// The framed news queued about `subject`, if any.
    #[cfg(test)]
    pub(crate) fn get(&self, subject: &SocketAddr) -> Option<&Bytes> {
        self.by_subject
            .get(subject)
            .and_then(|k| self.entries.get(k))
            .map(|e| &e.framed)
    }

    /// Fills `packet` with as many entries as fit, fewest-transmits first, skipping
    /// `skip` (news already in the packet). Each entry placed counts one transmit and is
    /// dropped once it reaches `limit`.
    pub(crate) fn fill(
        &mut self,
        packet: &mut PacketBuilder,
        limit: u32,
        skip: Option<SocketAddr>,
    ) {
        // The smallest message is well over 8 bytes; below that nothing else fits.
        const MIN_MESSAGE: usize = 8;
        let mut taken: Vec<Key> = Vec::new();
        let mut misses = 0;
        for (key, e) in self.entries.iter() {
            if packet.remaining() < MIN_MESSAGE {
                break;
            }
            if Some(e.subject) == skip {
                continue;
            }
            if packet.push_encoded(&e.framed) {
                taken.push(*key);
            } else {
                // Entries differ in size (metadata); look a little further for one that
                // fits, but not through the whole queue.
                misses += 1;
                if misses > 16 {
                    break;
                }
            }
        }
        for key in taken {
            let e = self.entries.remove(&key).expect("taken entries exist");
            let transmits = key.0 + 1;
            if transmits >= limit {
                self.by_subject.remove(&e.subject);
            } else {
                let nk = (transmits, key.1);
                self.by_subject.insert(e.subject, nk);
                self.entries.insert(nk, e);
            }
        }
    }

    /// Forgets news about `subject` (it was reclaimed).
    pub(crate) fn remove(&mut self, subject: &SocketAddr) {
        if let Some(k) = self.by_subject.remove(subject) {
            self.entries.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gossip::wire::{decode_packet, Message};

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], i))
    }

    fn left(i: u16, inc: u32) -> Bytes {
        Message::Left {
            addr: addr(i),
            incarnation: inc,
        }
        .encode_to_bytes()
    }

    fn drain(q: &mut BroadcastQueue, limit: u32) -> Vec<Message> {
        let mut p = PacketBuilder::new(1400);
        q.fill(&mut p, limit, None);
        let b = p.finish();
        if b.len() == 3 {
            return vec![];
        }
        decode_packet(&b, 1400, 512).unwrap()
    }

    #[test]
    fn newer_news_about_a_member_replaces_older() {
        let mut q = BroadcastQueue::new(10);
        q.push(addr(1), left(1, 1));
        q.push(addr(1), left(1, 2));
        assert_eq!(q.len(), 1);
        assert_eq!(
            drain(&mut q, 5),
            vec![Message::Left {
                addr: addr(1),
                incarnation: 2
            }]
        );
    }

    #[test]
    fn fewest_transmits_first_and_dropped_at_the_limit() {
        let mut q = BroadcastQueue::new(10);
        q.push(addr(1), left(1, 1));
        assert_eq!(drain(&mut q, 2).len(), 1);
        q.push(addr(2), left(2, 1));
        // addr(2) has 0 transmits, addr(1) has 1: addr(2) comes first.
        let m = drain(&mut q, 2);
        assert_eq!(
            m[0],
            Message::Left {
                addr: addr(2),
                incarnation: 1
            }
        );
        assert_eq!(m.len(), 2);
        // addr(1) reached 2 transmits and is gone; addr(2) has one left.
        assert_eq!(
            drain(&mut q, 2),
            vec![Message::Left {
                addr: addr(2),
                incarnation: 1
            }]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn a_full_queue_drops_the_most_transmitted() {
        let mut q = BroadcastQueue::new(2);
        q.push(addr(1), left(1, 1));
        drain(&mut q, 10);
        q.push(addr(2), left(2, 1));
        q.push(addr(3), left(3, 1));
        assert_eq!(q.len(), 2);
        assert_eq!(q.dropped, 1);
        assert!(q.get(&addr(1)).is_none());
    }

    #[test]
    fn a_packet_is_never_overfilled() {
        let mut q = BroadcastQueue::new(1000);
        for i in 0..500 {
            q.push(addr(i), left(i, 1));
        }
        let mut p = PacketBuilder::new(1400);
        q.fill(&mut p, 5, None);
        let b = p.finish();
        assert!(b.len() <= 1400);
        assert!(b.len() > 1400 - 20);
    }
}
