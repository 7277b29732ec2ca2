//! How a shard stores one entry: a single reference-counted allocation holding the
//! entry's key, indexes, flags, session and value.
//!
//! ```text
//! key length | key | CreateIndex | ModifyIndex - CreateIndex | LockIndex | Flags | session tag | session | value
//! varint     |     | varint      | varint (wrapping)         | varint    | varint| varint      |         | (rest)
//! ```
//!
//! Varints are LEB128 (7 bits a byte, low first). Session tag: 0 no session, n + 1 a
//! session id of n bytes (UTF-8). The key comes first so that comparing keys, which the
//! ordered set does on every lookup, reads one length byte and the key.
//!
//! Why one allocation: a `KvEntry` kept as is costs a 120-byte struct in the map, its
//! `Bytes` handles and, for the session, a `String`; and the key and value `Bytes` it got
//! from the Raft log were slices of the log segment's mapping, so one live key kept a whole
//! purged 64 MiB segment mapped. A `Stored` copies key and value out of whatever they came
//! from, costs one 16-byte handle in the map and (for a fresh key, lock and flags 0) 8 to
//! 10 bytes of header next to its reference count (one: `triomphe::Arc` keeps no weak
//! count, 8 bytes less per entry than `std::sync::Arc`), and is shared (not copied) by a
//! snapshot image while the snapshot is written. Entries are immutable: a write builds a
//! new one.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::cmp::Ordering;

use bytes::Bytes;
use cairn_storage::state::KvRecordRef;

use super::KvEntry;

/// One live entry; ordered, compared and borrowed by its key, so a `BTreeSet<Stored>` is a
/// map from key to entry.
#[derive(Clone)]
pub struct Stored(triomphe::Arc<[u8]>);

thread_local! {
    /// Where a new entry is assembled before it is copied into its allocation of exactly
    /// the right size (kept per thread so building one allocates once).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// An entry's fields, borrowed: what [`Stored::new`] builds an entry from, and what
/// [`Stored::fields`] reads back (the RPC's borrowed entry, so an answer is encoded from
/// them directly).
pub(crate) use cairn_net::rpc::message::EntryRef as Fields;

fn put_varint(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

/// Reads a varint at `*at` and moves past it. Entries are only ever built by
/// `Stored::new`, so a varint is always complete.
fn get_varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// Every field's place in an entry.
struct Layout {
    key: (usize, usize),
    create_index: u64,
    modify_index: u64,
    lock_index: u64,
    flags: u64,
    session: Option<(usize, usize)>,
    value_start: usize,
}

impl Stored {
    pub(crate) fn new(f: Fields<'_>) -> Stored {
        SCRATCH.with(|scratch| {
            let mut b = scratch.borrow_mut();
            b.clear();
            put_varint(&mut b, f.key.len() as u64);
            b.extend_from_slice(f.key);
            put_varint(&mut b, f.create_index);
            put_varint(&mut b, f.modify_index.wrapping_sub(f.create_index));
            put_varint(&mut b, f.lock_index);
            put_varint(&mut b, f.flags);
            match f.session {
                None => put_varint(&mut b, 0),
                Some(s) => {
                    put_varint(&mut b, s.len() as u64 + 1);
                    b.extend_from_slice(s.as_bytes());
                }
            }
            b.extend_from_slice(f.value);
            let stored = Stored(triomphe::Arc::from(&b[..]));
            // A large value must not keep a large scratch buffer alive on every core.
            if b.capacity() > 64 * 1024 {
                *b = Vec::new();
            }
            stored
        })
    }

    /// The same entry with some fields changed (the key never changes).
    pub(crate) fn with<'a>(&'a self, change: impl FnOnce(&mut Fields<'a>)) -> Stored {
        let mut f = self.fields();
        change(&mut f);
        Stored::new(f)
    }

    fn key_range(&self) -> (usize, usize) {
        let mut at = 0;
        let len = get_varint(&self.0, &mut at) as usize;
        (at, at + len)
    }

    fn layout(&self) -> Layout {
        let b = &self.0[..];
        let key = self.key_range();
        let mut at = key.1;
        let create_index = get_varint(b, &mut at);
        let modify_index = create_index.wrapping_add(get_varint(b, &mut at));
        let lock_index = get_varint(b, &mut at);
        let flags = get_varint(b, &mut at);
        let session = match get_varint(b, &mut at) as usize {
            0 => None,
            n => {
                let s = (at, at + n - 1);
                at = s.1;
                Some(s)
            }
        };
        Layout {
            key,
            create_index,
            modify_index,
            lock_index,
            flags,
            session,
            value_start: at,
        }
    }

    pub(crate) fn modify_index(&self) -> u64 {
        self.layout().modify_index
    }

    pub(crate) fn key(&self) -> &[u8] {
        let (a, b) = self.key_range();
        &self.0[a..b]
    }

    /// The session holding the key, if any.
    pub(crate) fn session(&self) -> Option<String> {
        self.session_str(&self.layout()).map(str::to_string)
    }

    fn session_str(&self, l: &Layout) -> Option<&str> {
        let (a, b) = l.session?;
        // Written from a `&str` by `new`, so always UTF-8.
        std::str::from_utf8(&self.0[a..b]).ok()
    }

    /// Whether `session` holds the key.
    pub(crate) fn held_by(&self, session: &str) -> bool {
        self.session_str(&self.layout()) == Some(session)
    }

    /// The entry as reads return it. Key and value are slices of this allocation (one
    /// small allocation for the shared handle, no copy of the bytes).
    pub(crate) fn entry(&self) -> KvEntry {
        let l = self.layout();
        let whole = Bytes::from_owner(self.0.clone());
        KvEntry {
            key: whole.slice(l.key.0..l.key.1),
            value: whole.slice(l.value_start..),
            flags: l.flags,
            create_index: l.create_index,
            modify_index: l.modify_index,
            lock_index: l.lock_index,
            session: self.session_str(&l).map(str::to_string),
        }
    }

    /// The entry's fields, borrowed (decoded once).
    pub(crate) fn fields(&self) -> Fields<'_> {
        let l = self.layout();
        Fields {
            key: &self.0[l.key.0..l.key.1],
            value: &self.0[l.value_start..],
            flags: l.flags,
            create_index: l.create_index,
            modify_index: l.modify_index,
            lock_index: l.lock_index,
            session: self.session_str(&l),
        }
    }

    /// The entry as a snapshot record, borrowing key and value.
    pub(crate) fn record(&self) -> KvRecordRef<'_> {
        let f = self.fields();
        KvRecordRef {
            key: f.key,
            value: f.value,
            create_index: f.create_index,
            modify_index: f.modify_index,
            lock_index: f.lock_index,
            flags: f.flags,
            session: f.session.map(str::to_string),
        }
    }

    /// Bytes of memory this entry's allocation takes (excluding allocator overhead).
    #[cfg(test)]
    pub(crate) fn allocated(&self) -> usize {
        // One reference count (triomphe's Arc has no weak count) and the bytes.
        std::mem::size_of::<usize>() + self.0.len()
    }
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.entry().fmt(f)
    }
}

impl PartialEq for Stored {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Stored {}

impl PartialOrd for Stored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Stored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(other.key())
    }
}

impl Borrow<[u8]> for Stored {
    fn borrow(&self) -> &[u8] {
        self.key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_round_trips() {
        for session in [None, Some(""), Some("0f3c-sess")] {
            for (key, value) in [
                (&b""[..], &b""[..]),
                (b"k", b"v"),
                (b"a/b/c", &[7u8; 300][..]),
            ] {
                let s = Stored::new(Fields {
                    key,
                    value,
                    flags: u64::MAX,
                    create_index: 1,
                    modify_index: 2,
                    lock_index: 3,
                    session,
                });
                let e = s.entry();
                assert_eq!(&e.key[..], key);
                assert_eq!(&e.value[..], value);
                assert_eq!(e.flags, u64::MAX);
                assert_eq!((e.create_index, e.modify_index, e.lock_index), (1, 2, 3));
                assert_eq!(e.session.as_deref(), session);
                assert_eq!(s.held_by("0f3c-sess"), session == Some("0f3c-sess"));
                // Header: key length, create 1, modify +1, lock 3, flags (10 bytes for
                // u64::MAX), session tag.
                assert_eq!(
                    s.allocated(),
                    8 + 1
                        + 1
                        + 1
                        + 1
                        + 10
                        + 1
                        + key.len()
                        + value.len()
                        + session.map_or(0, str::len)
                );
                let changed = s.with(|f| {
                    f.session = None;
                    f.lock_index = 9;
                });
                assert_eq!(changed.session(), None);
                assert_eq!(changed.entry().lock_index, 9);
                assert_eq!(&changed.entry().value[..], value);
                assert_eq!(changed.key(), key);
            }
        }
    }

    #[test]
    fn large_and_odd_indexes_round_trip() {
        for (create, modify) in [(0, 0), (5, 3), (u64::MAX, 0), (1 << 40, u64::MAX)] {
            let s = Stored::new(Fields {
                key: &[0xff; 300],
                value: b"v",
                flags: 1 << 63,
                create_index: create,
                modify_index: modify,
                lock_index: u64::MAX,
                session: Some("s"),
            });
            let e = s.entry();
            assert_eq!((e.create_index, e.modify_index), (create, modify));
            assert_eq!((e.lock_index, e.flags), (u64::MAX, 1 << 63));
            assert_eq!(&e.key[..], &[0xff; 300][..]);
            assert_eq!(&e.value[..], b"v");
            assert_eq!(e.session.as_deref(), Some("s"));
        }
    }

    #[test]
    fn a_set_of_entries_is_ordered_and_found_by_key() {
        let mut set = std::collections::BTreeSet::new();
        for k in [&b"b"[..], b"a", b"ab", b""] {
            set.insert(Stored::new(Fields {
                key: k,
                value: b"x",
                flags: 0,
                create_index: 1,
                modify_index: 1,
                lock_index: 0,
                session: None,
            }));
        }
        let keys: Vec<&[u8]> = set.iter().map(Stored::key).collect();
        assert_eq!(keys, vec![&b""[..], b"a", b"ab", b"b"]);
        assert!(set.contains(&b"ab"[..]));
        assert!(!set.contains(&b"c"[..]));
    }
}
