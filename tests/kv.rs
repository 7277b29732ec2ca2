//! The KV state machine's semantics (Consul's), and that sharding is invisible.

use bytes::Bytes;
use cairn::kv::{KvCommand, KvLimitError, KvOutcome, ShardedKv, TxnOp, WatchTarget, MAX_TXN_OPS};
use proptest::prelude::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn set(key: &str, value: &str) -> KvCommand {
    KvCommand::Set {
        key: b(key),
        value: b(value),
        flags: 0,
    }
}

fn applied(kv: &mut ShardedKv, index: u64, cmd: KvCommand) -> bool {
    match kv.apply(index, &cmd).0 {
        KvOutcome::Applied(ok) => ok,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_write_sets_create_and_modify_index_and_a_rewrite_moves_only_modify_index() {
    let mut kv = ShardedKv::new(4);
    applied(&mut kv, 5, set("a", "1"));
    let (e, idx) = kv.get(b"a");
    let e = e.unwrap();
    assert_eq!(
        (e.create_index, e.modify_index, e.lock_index, idx),
        (5, 5, 0, 5)
    );
    applied(
        &mut kv,
        9,
        KvCommand::Set {
            key: b("a"),
            value: b("2"),
            flags: 42,
        },
    );
    let (e, idx) = kv.get(b"a");
    let e = e.unwrap();
    assert_eq!(
        (e.create_index, e.modify_index, e.flags, idx),
        (5, 9, 42, 9)
    );
    assert_eq!(e.value, b("2"));
}

#[test]
fn cas_with_index_zero_writes_only_when_the_key_is_absent() {
    let mut kv = ShardedKv::new(2);
    let cas = |index| KvCommand::Cas {
        key: b("k"),
        value: b("v"),
        flags: 0,
        index,
    };
    assert!(applied(&mut kv, 3, cas(0)));
    assert!(!applied(&mut kv, 4, cas(0)));
    assert!(!applied(&mut kv, 5, cas(2)), "stale index");
    assert!(applied(&mut kv, 6, cas(3)), "matching index");
    assert_eq!(kv.get(b"k").0.unwrap().modify_index, 6);
}

#[test]
fn delete_cas_with_index_zero_never_deletes() {
    let mut kv = ShardedKv::new(2);
    applied(&mut kv, 3, set("k", "v"));
    let del = |index| KvCommand::DeleteCas { key: b("k"), index };
    assert!(!applied(&mut kv, 4, del(0)));
    assert!(!applied(&mut kv, 5, del(2)));
    assert!(applied(&mut kv, 6, del(3)));
    assert!(kv.get(b"k").0.is_none());
}

#[test]
fn deleting_a_missing_key_succeeds_and_changes_nothing() {
    let mut kv = ShardedKv::new(2);
    applied(&mut kv, 3, set("a", "v"));
    assert!(applied(&mut kv, 4, KvCommand::Delete { key: b("zzz") }));
    assert_eq!(kv.index(), 3);
}

#[test]
fn a_delete_moves_the_index_of_a_prefix_read_through_its_tombstone() {
    let mut kv = ShardedKv::new(4);
    applied(&mut kv, 3, set("web/a", "1"));
    applied(&mut kv, 4, set("web/b", "1"));
    applied(&mut kv, 5, set("other", "1"));
    assert_eq!(kv.list(b"web/").index, 4);
    applied(&mut kv, 7, KvCommand::Delete { key: b("web/b") });
    let l = kv.list(b"web/");
    assert_eq!(l.entries.len(), 1);
    assert_eq!(l.index, 7, "the delete must move the prefix's index");
    assert_eq!(
        kv.get(b"web/b").1,
        7,
        "a deleted key reports its delete index"
    );
    // Once reaped, the tombstone no longer counts.
    applied(&mut kv, 8, KvCommand::ReapTombstones { up_to: 7 });
    assert_eq!(kv.list(b"web/").index, 3);
}

#[test]
fn a_prefix_nobody_wrote_reports_the_store_index_and_never_zero() {
    let mut kv = ShardedKv::new(4);
    assert_eq!(kv.list(b"x/").index, 1);
    assert_eq!(kv.get(b"x").1, 1);
    applied(&mut kv, 12, set("a", "1"));
    assert_eq!(kv.list(b"x/").index, 12);
}

#[test]
fn keys_roll_up_at_the_separator_and_merge_across_shards() {
    let mut kv = ShardedKv::new(8);
    for (i, k) in ["a/b/c", "a/b/d", "a/e", "a/f/g", "b/x"].iter().enumerate() {
        applied(&mut kv, i as u64 + 1, set(k, "v"));
    }
    let (keys, idx) = kv.keys(b"a/", Some(b"/"));
    assert_eq!(keys, vec![b("a/b/"), b("a/e"), b("a/f/")]);
    assert_eq!(idx, 4);
    let (keys, _) = kv.keys(b"a/", None);
    assert_eq!(keys.len(), 4);
}

#[test]
fn a_transaction_applies_every_op_at_one_index_and_later_ops_see_earlier_ones() {
    let mut kv = ShardedKv::new(4);
    let ops = vec![
        TxnOp::Set {
            key: b("x"),
            value: b("1"),
            flags: 0,
        },
        TxnOp::CheckIndex {
            key: b("x"),
            index: 10,
        },
        TxnOp::Get { key: b("x") },
        TxnOp::Cas {
            key: b("y"),
            value: b("2"),
            flags: 0,
            index: 0,
        },
    ];
    let (out, _) = kv.apply(10, &KvCommand::Txn { ops });
    let KvOutcome::Txn(Ok(results)) = out else {
        panic!("{out:?}")
    };
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].value, Bytes::new(), "writes return no value");
    assert_eq!(results[2].value, b("1"), "reads return the value");
    assert_eq!(kv.get(b"y").0.unwrap().modify_index, 10);
}

#[test]
fn a_failed_transaction_reports_every_failing_op_and_changes_nothing() {
    let mut kv = ShardedKv::new(4);
    applied(&mut kv, 3, set("keep", "old"));
    applied(&mut kv, 4, set("tree/1", "v"));
    let before: Vec<_> = kv.list(b"").entries;
    let before_index = kv.index();
    let ops = vec![
        TxnOp::Set {
            key: b("keep"),
            value: b("new"),
            flags: 1,
        },
        TxnOp::DeleteTree { prefix: b("tree/") },
        TxnOp::Get { key: b("missing") },
        TxnOp::Set {
            key: b("fresh"),
            value: b("v"),
            flags: 0,
        },
        TxnOp::CheckNotExists { key: b("keep") },
    ];
    let (out, _) = kv.apply(9, &KvCommand::Txn { ops });
    let KvOutcome::Txn(Err(errors)) = out else {
        panic!("{out:?}")
    };
    let positions: Vec<usize> = errors.iter().map(|e| e.op_index).collect();
    assert_eq!(positions, vec![2, 4]);
    assert!(errors[0].what.contains("doesn't exist"), "{errors:?}");
    assert_eq!(
        kv.list(b"").entries,
        before,
        "rollback must restore every key"
    );
    assert_eq!(kv.index(), before_index);
    assert_eq!(
        kv.list(b"tree/").index,
        4,
        "no tombstone may survive a rollback"
    );
}

#[test]
fn limits_are_checked_before_anything_enters_the_log() {
    let big = Bytes::from(vec![0u8; 512 * 1024 + 1]);
    let cmd = KvCommand::Set {
        key: b("k"),
        value: big,
        flags: 0,
    };
    assert_eq!(
        cmd.validate(),
        Err(KvLimitError::ValueTooLarge {
            size: 512 * 1024 + 1
        })
    );
    let ops = vec![TxnOp::Get { key: b("k") }; MAX_TXN_OPS + 1];
    assert_eq!(
        KvCommand::Txn { ops }.validate(),
        Err(KvLimitError::TxnTooLarge {
            ops: MAX_TXN_OPS + 1
        })
    );
    assert_eq!(
        KvCommand::Delete { key: Bytes::new() }.validate(),
        Err(KvLimitError::EmptyKey)
    );
    assert!(KvCommand::Delete {
        key: Bytes::from(vec![b'k'; 9000])
    }
    .validate()
    .is_err());
}

#[test]
fn a_write_wakes_the_watches_on_its_key_and_on_every_prefix_of_it_once() {
    let mut kv = ShardedKv::new(1);
    let s = kv.shard_mut(0);
    s.watch(1, WatchTarget::Key(b("svc/web/a")));
    s.watch(2, WatchTarget::Prefix(b("svc/")));
    s.watch(3, WatchTarget::Prefix(b("svc/db/")));
    s.watch(4, WatchTarget::Prefix(b("")));
    let (_, mut woken) = kv.apply(5, &set("svc/web/a", "1"));
    woken.sort();
    assert_eq!(woken, vec![1, 2, 4]);
    assert_eq!(kv.shard(0).watch_count(), 1, "woken watches are removed");
    let (_, woken) = kv.apply(6, &set("svc/web/a", "2"));
    assert!(woken.is_empty());
    assert!(kv
        .shard_mut(0)
        .unwatch(3, &WatchTarget::Prefix(b("svc/db/"))));
    assert_eq!(kv.shard(0).watch_count(), 0);
}

// ---- sharding is invisible -------------------------------------------------------------

fn key() -> impl Strategy<Value = Bytes> {
    prop::sample::select(vec![
        "a", "a/b", "a/c", "b", "b/x/y", "c", "web/1", "web/2", "z",
    ])
    .prop_map(b)
}

fn prefix() -> impl Strategy<Value = Bytes> {
    prop::sample::select(vec!["", "a", "a/", "b/", "web/", "q"]).prop_map(b)
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        (key(), 0..3u64).prop_map(|(key, flags)| TxnOp::Set {
            key,
            value: b("t"),
            flags
        }),
        (key(), 0..12u64).prop_map(|(key, index)| TxnOp::Cas {
            key,
            value: b("c"),
            flags: 0,
            index
        }),
        key().prop_map(|key| TxnOp::Get { key }),
        prefix().prop_map(|prefix| TxnOp::GetTree { prefix }),
        (key(), 0..12u64).prop_map(|(key, index)| TxnOp::CheckIndex { key, index }),
        key().prop_map(|key| TxnOp::CheckNotExists { key }),
        key().prop_map(|key| TxnOp::Delete { key }),
        (key(), 0..12u64).prop_map(|(key, index)| TxnOp::DeleteCas { key, index }),
        prefix().prop_map(|prefix| TxnOp::DeleteTree { prefix }),
    ]
}

fn session_cmd() -> impl Strategy<Value = KvCommand> {
    let sid = prop::sample::select(vec!["s1", "s2"]);
    prop_oneof![
        (sid.clone(), any::<bool>()).prop_map(|(id, del)| KvCommand::SessionCreate {
            session: cairn::kv::Session {
                id: id.to_string(),
                name: "n".into(),
                node: "node".into(),
                behavior: if del {
                    cairn::kv::Behavior::Delete
                } else {
                    cairn::kv::Behavior::Release
                },
                ttl_ms: 10_000,
                lock_delay_ms: 1000,
                create_index: 0,
                node_checks: if del {
                    vec!["serfHealth".into()]
                } else {
                    Vec::new()
                },
                service_checks: if del { vec!["svc".into()] } else { Vec::new() },
            },
        }),
        (sid.clone(), 0..5000u64).prop_map(|(id, now_ms)| KvCommand::SessionDestroy {
            id: id.to_string(),
            now_ms
        }),
        (key(), sid.clone(), 0..5000u64).prop_map(|(key, s, now_ms)| KvCommand::Acquire {
            key,
            value: b("l"),
            flags: 2,
            session: s.to_string(),
            now_ms,
        }),
        (key(), sid).prop_map(|(key, s)| KvCommand::Release {
            key,
            value: b("r"),
            flags: 3,
            session: s.to_string()
        }),
    ]
}

fn command() -> impl Strategy<Value = KvCommand> {
    prop_oneof![
        3 => session_cmd(),
        4 => (key(), 0..5u64).prop_map(|(key, flags)| KvCommand::Set { key, value: b("v"), flags }),
        2 => (key(), 0..12u64).prop_map(|(key, index)| KvCommand::Cas { key, value: b("w"), flags: 1, index }),
        2 => key().prop_map(|key| KvCommand::Delete { key }),
        1 => (key(), 0..12u64).prop_map(|(key, index)| KvCommand::DeleteCas { key, index }),
        1 => prefix().prop_map(|prefix| KvCommand::DeleteTree { prefix }),
        2 => prop::collection::vec(txn_op(), 1..6).prop_map(|ops| KvCommand::Txn { ops }),
        1 => (0..12u64).prop_map(|up_to| KvCommand::ReapTombstones { up_to }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_command_sequence_gives_the_same_results_on_one_shard_and_on_many(
        cmds in prop::collection::vec(command(), 1..40),
        shards in 2..9usize,
    ) {
        let mut one = ShardedKv::new(1);
        let mut many = ShardedKv::new(shards);
        for (i, cmd) in cmds.iter().enumerate() {
            let index = i as u64 + 1;
            prop_assert_eq!(one.apply(index, cmd).0, many.apply(index, cmd).0, "command {}", i);
            for p in ["", "a", "a/", "b/", "web/", "q"] {
                prop_assert_eq!(one.list(p.as_bytes()), many.list(p.as_bytes()), "list {:?}", p);
                prop_assert_eq!(
                    one.keys(p.as_bytes(), Some(b"/")),
                    many.keys(p.as_bytes(), Some(b"/"))
                );
            }
            for k in ["a", "a/b", "b/x/y", "z"] {
                prop_assert_eq!(one.get(k.as_bytes()).0, many.get(k.as_bytes()).0);
            }
        }
    }
}

#[test]
fn a_snapshot_round_trip_restores_every_entry_tombstone_and_index_without_copying() {
    use cairn_storage::snapshot::{write_snapshot, Snapshot};
    use cairn_storage::state::StateImage;
    let mut kv = ShardedKv::new(4);
    for i in 0..200u64 {
        applied(
            &mut kv,
            i + 1,
            set(&format!("k/{i:03}"), &format!("value {i}")),
        );
    }
    applied(&mut kv, 201, KvCommand::DeleteTree { prefix: b("k/1") });
    applied(&mut kv, 202, session("s1", cairn::kv::Behavior::Release));
    applied(&mut kv, 203, session("s2", cairn::kv::Behavior::Delete));
    applied(&mut kv, 204, acquire("k/042", "locked", "s2", 0));
    applied(&mut kv, 205, acquire("k/043", "locked", "s1", 0));
    applied(
        &mut kv,
        206,
        KvCommand::SessionDestroy {
            id: "s1".into(),
            now_ms: 1000,
        },
    );
    let (entries, tombstones, kv_index) = kv.to_image();
    let (sessions, lock_delays) = kv.sessions_image();
    assert_eq!(tombstones.len(), 100);
    assert_eq!((sessions.len(), lock_delays.len()), (1, 1));
    let image = StateImage {
        kv: entries,
        tombstones,
        kv_index,
        sessions,
        lock_delays,
        ..StateImage::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_snapshot(dir.path(), None, &image, 2).unwrap();
    let snap = Snapshot::<StateImage>::open(&path).unwrap();
    let restored = ShardedKv::from_archived(snap.state(), 3);
    // The restored store owns its keys and values: the snapshot's mapping can go.
    drop(snap);
    assert_eq!(restored.list(b"").entries, kv.list(b"").entries);
    assert_eq!(restored.list(b"k/1").index, 201, "tombstones survive");
    assert_eq!(restored.index(), 206);
    let mut restored = restored;
    // The lock-delay survived: k/043 cannot be taken before t = 16 s.
    applied(
        &mut restored,
        207,
        session("s3", cairn::kv::Behavior::Release),
    );
    assert!(!applied(
        &mut restored,
        208,
        acquire("k/043", "x", "s3", 5_000)
    ));
    // s2 survived with its lock: destroying it deletes k/042 everywhere.
    applied(
        &mut restored,
        209,
        KvCommand::SessionDestroy {
            id: "s2".into(),
            now_ms: 0,
        },
    );
    assert!(restored.get(b"k/042").0.is_none());
    let (e, _) = restored.get(b"k/044");
    // The value was copied out of the snapshot (whose mapping is gone) intact.
    assert_eq!(e.unwrap().value, kv.get(b"k/044").0.unwrap().value);
}

// ---- the command's binary form -----------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn every_command_decodes_to_itself(cmd in command()) {
        let enc = cmd.encode();
        prop_assert_eq!(KvCommand::decode(&enc).unwrap(), cmd);
    }

    #[test]
    fn random_or_cut_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), cmd in command(), cut in 0usize..64) {
        let _ = KvCommand::decode(&Bytes::from(bytes));
        let enc = cmd.encode();
        if cut < enc.len() {
            prop_assert!(KvCommand::decode(&enc.slice(..cut)).is_err());
        }
    }
}

#[test]
fn decoded_keys_and_values_are_slices_of_the_entry() {
    let cmd = set("some/key", "a value that should not be copied");
    let enc = cmd.encode();
    let KvCommand::Set { value, .. } = KvCommand::decode(&enc).unwrap() else {
        unreachable!()
    };
    let r = enc.as_ptr() as usize..enc.as_ptr() as usize + enc.len();
    assert!(r.contains(&(value.as_ptr() as usize)));
}

#[test]
fn a_foreign_version_or_trailing_bytes_are_refused() {
    let mut enc = set("k", "v").encode().to_vec();
    enc.push(0);
    assert_eq!(
        KvCommand::decode(&Bytes::from(enc.clone())),
        Err(cairn::kv::DecodeError::Trailing(1))
    );
    enc[0] = 9;
    assert_eq!(
        KvCommand::decode(&Bytes::from(enc)),
        Err(cairn::kv::DecodeError::Version(9))
    );
}

// ---- sessions and locks -------------------------------------------------------------------

fn session(id: &str, behavior: cairn::kv::Behavior) -> KvCommand {
    KvCommand::SessionCreate {
        session: cairn::kv::Session {
            id: id.into(),
            name: "leader-election".into(),
            node: "node-1".into(),
            behavior,
            ttl_ms: 0,
            lock_delay_ms: 15_000,
            create_index: 0,
            node_checks: vec!["serfHealth".into()],
            service_checks: Vec::new(),
        },
    }
}

fn acquire(key: &str, value: &str, s: &str, now_ms: u64) -> KvCommand {
    KvCommand::Acquire {
        key: b(key),
        value: b(value),
        flags: 0,
        session: s.into(),
        now_ms,
    }
}

fn release(key: &str, s: &str) -> KvCommand {
    KvCommand::Release {
        key: b(key),
        value: b("released"),
        flags: 0,
        session: s.into(),
    }
}

#[test]
fn only_one_session_holds_a_lock_and_lock_index_counts_acquisitions() {
    use cairn::kv::Behavior::Release;
    let mut kv = ShardedKv::new(4);
    assert!(applied(&mut kv, 1, session("a", Release)));
    assert!(applied(&mut kv, 2, session("b", Release)));
    assert!(applied(&mut kv, 3, acquire("lock", "a-leads", "a", 0)));
    assert!(
        !applied(&mut kv, 4, acquire("lock", "b-leads", "b", 0)),
        "second holder"
    );
    assert!(
        applied(&mut kv, 5, acquire("lock", "a-again", "a", 0)),
        "re-acquire by holder"
    );
    let e = kv.get(b"lock").0.unwrap().clone();
    assert_eq!((e.lock_index, e.session.as_deref()), (1, Some("a")));
    assert_eq!(e.value, b("a-again"));
    assert!(
        !applied(&mut kv, 6, release("lock", "b")),
        "release by a non-holder"
    );
    assert!(applied(&mut kv, 7, release("lock", "a")));
    assert!(applied(&mut kv, 8, acquire("lock", "b-leads", "b", 0)));
    let e = kv.get(b"lock").0.unwrap();
    assert_eq!((e.lock_index, e.session.as_deref()), (2, Some("b")));
}

#[test]
fn acquiring_with_an_unknown_session_is_rejected_and_changes_nothing() {
    let mut kv = ShardedKv::new(2);
    let (out, _) = kv.apply(1, &acquire("k", "v", "ghost", 0));
    assert!(
        matches!(out, KvOutcome::Rejected(ref why) if why.contains("invalid session")),
        "{out:?}"
    );
    assert!(kv.get(b"k").0.is_none());
    assert_eq!(kv.index(), 0);
}

#[test]
fn destroying_a_session_releases_or_deletes_its_keys_and_starts_the_lock_delay() {
    use cairn::kv::Behavior::{Delete, Release};
    let mut kv = ShardedKv::new(4);
    applied(&mut kv, 1, session("rel", Release));
    applied(&mut kv, 2, session("del", Delete));
    applied(&mut kv, 3, session("other", Release));
    for (i, k) in ["r/1", "r/2", "r/3"].iter().enumerate() {
        assert!(applied(&mut kv, 4 + i as u64, acquire(k, "v", "rel", 0)));
    }
    assert!(applied(&mut kv, 7, acquire("d/1", "v", "del", 0)));
    assert!(applied(
        &mut kv,
        8,
        KvCommand::SessionDestroy {
            id: "rel".into(),
            now_ms: 1_000
        }
    ));
    assert!(applied(
        &mut kv,
        9,
        KvCommand::SessionDestroy {
            id: "del".into(),
            now_ms: 1_000
        }
    ));
    let l = kv.list(b"r/");
    assert_eq!(l.entries.len(), 3);
    assert!(l
        .entries
        .iter()
        .all(|e| e.session.is_none() && e.modify_index == 8));
    assert!(kv.get(b"d/1").0.is_none(), "delete behavior must delete");
    // Lock-delay: 15 s after the invalidation at t=1 s.
    assert!(!applied(&mut kv, 10, acquire("r/1", "v", "other", 15_999)));
    assert!(applied(&mut kv, 11, acquire("r/1", "v", "other", 16_000)));
    assert!(
        !applied(
            &mut kv,
            12,
            KvCommand::SessionDestroy {
                id: "rel".into(),
                now_ms: 0
            }
        ),
        "twice"
    );
}

#[test]
fn a_rolled_back_transaction_that_deleted_a_held_key_keeps_the_lock_tracked() {
    use cairn::kv::Behavior::Delete;
    let mut kv = ShardedKv::new(3);
    applied(&mut kv, 1, session("s", Delete));
    applied(&mut kv, 2, acquire("held", "v", "s", 0));
    let ops = vec![
        TxnOp::Delete { key: b("held") },
        TxnOp::Get { key: b("missing") },
    ];
    let (out, _) = kv.apply(3, &KvCommand::Txn { ops });
    assert!(matches!(out, KvOutcome::Txn(Err(_))));
    applied(
        &mut kv,
        4,
        KvCommand::SessionDestroy {
            id: "s".into(),
            now_ms: 0,
        },
    );
    assert!(
        kv.get(b"held").0.is_none(),
        "the lock was forgotten by the rollback"
    );
}
