//! The member table: every member a node knows of, in a compact form.
//!
//! Every node holds an entry for every member, so a 10,000-node pool simulated in one
//! process holds 10⁸ entries: the size of one entry is the size of the simulator. An
//! entry here is 28 bytes (address, incarnation, status and a metadata id), kept in a
//! slab indexed by a [`MemberId`]; a hash index of 4-byte ids finds an entry by address,
//! and metadata is interned per node, so members with equal metadata (the usual case:
//! same datacenter, same role, no tags, or none at all in a simulation) share one copy.
//! The previous form (a `BTreeMap<SocketAddr, Member>` with an `Arc<[u8]>` per entry,
//! plus a probe list of full addresses) cost about 150 bytes per entry.
//!
//! Ids are internal to the core: its API speaks addresses. A freed id is reused by the
//! next new member, so a holder of an id (the probe list) may find a different member
//! there later; the core only uses ids where that is harmless (see `Gossip::probe_list`).

use super::{Millis, Status};
use bytes::Bytes;
use hashbrown::HashTable;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Index of an entry in the member table.
pub(crate) type MemberId = u32;

/// Status codes in [`Member::flags`] (low 3 bits); bit 3 marks an IPv6 address.
const CODE_ALIVE: u8 = 0;
const CODE_SUSPECT: u8 = 1;
const CODE_DEAD: u8 = 2;
const CODE_LEFT: u8 = 3;
const CODE_VACANT: u8 = 7;
const CODE_MASK: u8 = 7;
const FLAG_V6: u8 = 8;

/// One member as this node sees it: 28 bytes.
#[derive(Clone, Copy)]
pub(crate) struct Member {
    /// IPv4 addresses are stored in the first 4 bytes.
    ip: [u8; 16],
    port: u16,
    /// Status code and address family.
    flags: u8,
    pub(crate) incarnation: u32,
    meta: u32,
}

impl Member {
    pub(crate) fn status(&self) -> Status {
        match self.flags & CODE_MASK {
            CODE_ALIVE => Status::Alive,
            CODE_SUSPECT => Status::Suspect,
            CODE_DEAD => Status::Dead,
            CODE_LEFT => Status::Left,
            _ => unreachable!("vacant entries are never handed out"),
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        if self.flags & FLAG_V6 != 0 {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(self.ip)), self.port)
        } else {
            let [a, b, c, d, ..] = self.ip;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), self.port)
        }
    }

    fn vacant(&self) -> bool {
        self.flags & CODE_MASK == CODE_VACANT
    }

    fn is(&self, a: &SocketAddr) -> bool {
        let (ip, port, v6) = pack(a);
        self.ip == ip && self.port == port && (self.flags & FLAG_V6 != 0) == v6
    }
}

fn code(s: Status) -> u8 {
    match s {
        Status::Alive => CODE_ALIVE,
        Status::Suspect => CODE_SUSPECT,
        Status::Dead => CODE_DEAD,
        Status::Left => CODE_LEFT,
    }
}

fn pack(a: &SocketAddr) -> ([u8; 16], u16, bool) {
    match a.ip() {
        IpAddr::V4(ip) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&ip.octets());
            (b, a.port(), false)
        }
        IpAddr::V6(ip) => (ip.octets(), a.port(), true),
    }
}

/// splitmix64's finalizer.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn hash_packed(ip: &[u8; 16], port: u16, v6: bool) -> u64 {
    let lo = u64::from_le_bytes(ip[..8].try_into().expect("8 bytes"));
    let hi = u64::from_le_bytes(ip[8..].try_into().expect("8 bytes"));
    mix(lo ^ mix(hi ^ ((port as u64) << 1) ^ u64::from(v6)))
}

fn hash_member(m: &Member) -> u64 {
    hash_packed(&m.ip, m.port, m.flags & FLAG_V6 != 0)
}

fn hash_bytes(b: &[u8]) -> u64 {
    // FNV-1a, finished with mix: metadata is short.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in b {
        h ^= *x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// Interned encoded metadata with reference counts.
#[derive(Default)]
struct MetaTable {
    /// (bytes, references); a freed entry has 0 references and is on `free`.
    entries: Vec<(Bytes, u32)>,
    by_content: HashTable<u32>,
    free: Vec<u32>,
}

impl MetaTable {
    fn acquire(&mut self, meta: &[u8]) -> u32 {
        let h = hash_bytes(meta);
        let entries = &self.entries;
        if let Some(id) = self
            .by_content
            .find(h, |id| &entries[*id as usize].0[..] == meta)
        {
            let id = *id;
            self.entries[id as usize].1 += 1;
            return id;
        }
        let bytes = Bytes::copy_from_slice(meta);
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = (bytes, 1);
                id
            }
            None => {
                self.entries.push((bytes, 1));
                (self.entries.len() - 1) as u32
            }
        };
        let entries = &self.entries;
        self.by_content
            .insert_unique(h, id, |id| hash_bytes(&entries[*id as usize].0));
        id
    }

    fn release(&mut self, id: u32) {
        let e = &mut self.entries[id as usize];
        e.1 -= 1;
        if e.1 > 0 {
            return;
        }
        let h = hash_bytes(&e.0);
        if let Ok(found) = self.by_content.find_entry(h, |x| *x == id) {
            found.remove();
        }
        self.entries[id as usize].0 = Bytes::new();
        self.free.push(id);
    }
}

/// What an update replaced.
pub(crate) struct Previous {
    pub(crate) status: Status,
    pub(crate) incarnation: u32,
}

/// See the [module docs](self).
#[derive(Default)]
pub(crate) struct MemberTable {
    slots: Vec<Member>,
    index: HashTable<MemberId>,
    free: Vec<MemberId>,
    metas: MetaTable,
    /// When each dead or left member got that status, for reclaiming tombstones. Alive
    /// members need no time, so it lives here rather than in every entry. A BTreeMap so
    /// that the order of reclaims (and with it which ids get reused) depends only on
    /// the inputs.
    tombstones: BTreeMap<MemberId, Millis>,
    len: usize,
}

impl MemberTable {
    /// Makes room for `n` more entries at once (growing 10,000 times by doubling costs
    /// rehashes and leaves up to half the capacity unused).
    pub(crate) fn reserve(&mut self, n: usize) {
        self.slots.reserve_exact(n.saturating_sub(self.free.len()));
        let slots = &self.slots;
        self.index
            .reserve(n, |id| hash_member(&slots[*id as usize]));
    }

    /// Entries in use, tombstones included.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn id(&self, a: &SocketAddr) -> Option<MemberId> {
        let (ip, port, v6) = pack(a);
        let slots = &self.slots;
        self.index
            .find(hash_packed(&ip, port, v6), |id| slots[*id as usize].is(a))
            .copied()
    }

    pub(crate) fn get(&self, a: &SocketAddr) -> Option<&Member> {
        self.id(a).map(|id| &self.slots[id as usize])
    }

    /// The member at `id`, `None` if the id is free.
    pub(crate) fn at(&self, id: MemberId) -> Option<&Member> {
        self.slots.get(id as usize).filter(|m| !m.vacant())
    }

    pub(crate) fn meta(&self, m: &Member) -> &Bytes {
        &self.metas.entries[m.meta as usize].0
    }

    /// Every entry in use, in id order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (MemberId, &Member)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.vacant())
            .map(|(i, m)| (i as MemberId, m))
    }

    /// Sets `a`'s entry (adding it if new) and returns its id and what it replaced.
    /// `meta: None` keeps the metadata (the entry must exist).
    pub(crate) fn put(
        &mut self,
        a: &SocketAddr,
        incarnation: u32,
        status: Status,
        meta: Option<&[u8]>,
        now: Millis,
    ) -> (MemberId, Option<Previous>) {
        let (ip, port, v6) = pack(a);
        let flags = code(status) | if v6 { FLAG_V6 } else { 0 };
        let (id, previous) = match self.id(a) {
            Some(id) => {
                let m = &mut self.slots[id as usize];
                let prev = Previous {
                    status: m.status(),
                    incarnation: m.incarnation,
                };
                m.incarnation = incarnation;
                m.flags = flags;
                if let Some(meta) = meta {
                    if &self.metas.entries[m.meta as usize].0[..] != meta {
                        let old = m.meta;
                        let new = self.metas.acquire(meta);
                        self.slots[id as usize].meta = new;
                        self.metas.release(old);
                    }
                }
                (id, Some(prev))
            }
            None => {
                let meta = self
                    .metas
                    .acquire(meta.expect("a new member comes with metadata"));
                let m = Member {
                    ip,
                    port,
                    flags,
                    incarnation,
                    meta,
                };
                let id = match self.free.pop() {
                    Some(id) => {
                        self.slots[id as usize] = m;
                        id
                    }
                    None => {
                        self.slots.push(m);
                        (self.slots.len() - 1) as MemberId
                    }
                };
                let slots = &self.slots;
                self.index
                    .insert_unique(hash_member(&m), id, |id| hash_member(&slots[*id as usize]));
                self.len += 1;
                (id, None)
            }
        };
        let was_tombstone = previous
            .as_ref()
            .is_some_and(|p| matches!(p.status, Status::Dead | Status::Left));
        // A refresh of the same status keeps the time of the last change.
        let changed = previous.as_ref().is_none_or(|p| p.status != status);
        match status {
            Status::Dead | Status::Left if changed => {
                self.tombstones.insert(id, now);
            }
            Status::Alive | Status::Suspect if was_tombstone => {
                self.tombstones.remove(&id);
            }
            _ => {}
        }
        (id, previous)
    }

    /// Tombstones whose status changed at least `ttl_ms` before `now`.
    pub(crate) fn expired(&self, now: Millis, ttl_ms: Millis) -> Vec<MemberId> {
        self.tombstones
            .iter()
            .filter(|(_, t)| now.saturating_sub(**t) >= ttl_ms)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Dead and left members held.
    pub(crate) fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// The `k`-th tombstone in id order (O(k): only used for rare random picks).
    pub(crate) fn tombstone_at(&self, k: usize) -> Option<MemberId> {
        self.tombstones.keys().nth(k).copied()
    }

    /// Drops the entry at `id`, returning it.
    pub(crate) fn remove(&mut self, id: MemberId) -> Member {
        let m = self.slots[id as usize];
        assert!(!m.vacant(), "removing a free id");
        let h = hash_member(&m);
        if let Ok(e) = self.index.find_entry(h, |x| *x == id) {
            e.remove();
        }
        self.metas.release(m.meta);
        self.tombstones.remove(&id);
        self.slots[id as usize].flags = CODE_VACANT;
        self.free.push(id);
        self.len -= 1;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(i: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], i))
    }

    #[test]
    fn an_entry_is_28_bytes() {
        assert_eq!(std::mem::size_of::<Member>(), 28);
    }

    #[test]
    fn entries_are_found_updated_and_removed_with_metadata_shared() {
        let mut t = MemberTable::default();
        let v6: SocketAddr = "[fe80::1]:8301".parse().unwrap();
        let (i1, p) = t.put(&a(1), 0, Status::Alive, Some(b"m"), 0);
        assert!(p.is_none());
        let (i2, _) = t.put(&a(2), 3, Status::Suspect, Some(b"m"), 0);
        let (i3, _) = t.put(&v6, 1, Status::Alive, Some(b"other"), 0);
        assert_eq!(t.len(), 3);
        assert_eq!(t.metas.entries.len(), 2, "equal metadata is stored once");
        assert_eq!(t.get(&v6).unwrap().addr(), v6);
        assert_eq!(t.get(&a(2)).unwrap().status(), Status::Suspect);
        let (same, prev) = t.put(&a(2), 4, Status::Dead, None, 10);
        assert_eq!(same, i2);
        assert_eq!(prev.unwrap().incarnation, 3);
        assert_eq!(t.expired(20, 10), vec![i2]);
        assert_eq!(t.expired(19, 10), Vec::<MemberId>::new());
        t.remove(i2);
        assert!(t.get(&a(2)).is_none());
        assert!(t.expired(100, 10).is_empty());
        // The freed id is reused; the others are untouched.
        let (i4, _) = t.put(&a(4), 0, Status::Alive, Some(b"m"), 0);
        assert_eq!(i4, i2);
        assert_eq!(t.get(&a(1)).unwrap().addr(), a(1));
        assert_eq!(t.id(&a(1)), Some(i1));
        assert_eq!(t.id(&v6), Some(i3));
        t.remove(i3);
        assert_eq!(t.metas.free.len(), 1, "unreferenced metadata is freed");
        let ids: Vec<MemberId> = t.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![i1, i4]);
    }
}
