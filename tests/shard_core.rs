//! The shard-core protocol, driven by a simulated sequencer: results must equal the
//! single-store model, no read may see half a transaction, and blocking reads wake.

use bytes::Bytes;
use cairn::kv::core::{plan, Effect, Origin, Plan, ReadReq, Reply, ShardCore, StreamMsg};
use cairn::kv::{
    combine_txn, outcome_of, Behavior, KvCommand, KvOutcome, ListResult, Session, ShardedKv, TxnOp,
};
use proptest::prelude::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

const ME: Origin = Origin { core: 99, id: 1 };

fn reply_of(effects: Vec<Effect>) -> Reply {
    match effects.into_iter().next() {
        Some(Effect::Reply { reply, .. }) => reply,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// A sequencer over in-memory shard cores, as the agent runs one over channels.
struct Sim {
    cores: Vec<ShardCore>,
    txn: u64,
}

impl Sim {
    fn new(n: usize) -> Sim {
        Sim {
            cores: (0..n).map(|_| ShardCore::default()).collect(),
            txn: 0,
        }
    }

    fn apply(&mut self, index: u64, cmd: &KvCommand) -> KvOutcome {
        match plan(cmd, self.cores.len()) {
            Plan::One { shard, cmd } => {
                let r = reply_of(self.cores[shard].stream(StreamMsg::Apply {
                    index,
                    cmd,
                    reply: Some(ME),
                }));
                let Reply::Applied(r) = r else {
                    panic!("{r:?}")
                };
                outcome_of(r)
            }
            Plan::All { cmd } => {
                let mut first = None;
                for (i, c) in self.cores.iter_mut().enumerate() {
                    let out = c.stream(StreamMsg::Apply {
                        index,
                        cmd: cmd.clone(),
                        reply: (i == 0).then_some(ME),
                    });
                    if i == 0 {
                        first = Some(reply_of(out));
                    }
                }
                let Some(Reply::Applied(r)) = first else {
                    panic!("{first:?}")
                };
                outcome_of(r)
            }
            Plan::Txn { parts } => {
                self.txn += 1;
                let mut outcomes = Vec::new();
                for (s, ops) in &parts {
                    let r = reply_of(self.cores[*s].stream(StreamMsg::TxnPrepare {
                        index,
                        txn: self.txn,
                        ops: ops.clone(),
                        reply: ME,
                    }));
                    let Reply::Prepared { results, errors } = r else {
                        panic!("{r:?}")
                    };
                    outcomes.push((results, errors));
                }
                let commit = outcomes.iter().all(|p| p.1.is_empty());
                for (s, _) in &parts {
                    self.cores[*s].stream(StreamMsg::TxnDecide {
                        txn: self.txn,
                        commit,
                    });
                }
                KvOutcome::Txn(combine_txn(outcomes))
            }
        }
    }

    /// A prefix read through a barrier on every core, merged.
    fn list(&mut self, prefix: &str) -> ListResult {
        let mut parts = Vec::new();
        let mut fallback = 0;
        for c in &mut self.cores {
            let r = reply_of(c.stream(StreamMsg::Barrier {
                read: ReadReq::ListPart { prefix: b(prefix) },
                reply: ME,
            }));
            let Reply::Part {
                entries,
                touched,
                shard_index,
            } = r
            else {
                panic!("{r:?}")
            };
            fallback = fallback.max(shard_index);
            parts.push((entries, touched));
        }
        ListResult::merge(parts, fallback)
    }
}

fn key() -> impl Strategy<Value = Bytes> {
    prop::sample::select(vec!["a", "a/b", "a/c", "b", "b/x", "c", "web/1", "web/2"]).prop_map(b)
}

fn prefix() -> impl Strategy<Value = Bytes> {
    prop::sample::select(vec!["", "a", "a/", "b/", "web/"]).prop_map(b)
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        key().prop_map(|key| TxnOp::Set {
            key,
            value: b("t"),
            flags: 0
        }),
        (key(), 0..10u64).prop_map(|(key, index)| TxnOp::Cas {
            key,
            value: b("c"),
            flags: 0,
            index
        }),
        key().prop_map(|key| TxnOp::Get { key }),
        prefix().prop_map(|prefix| TxnOp::GetTree { prefix }),
        key().prop_map(|key| TxnOp::CheckNotExists { key }),
        key().prop_map(|key| TxnOp::Delete { key }),
        prefix().prop_map(|prefix| TxnOp::DeleteTree { prefix }),
    ]
}

fn session_cmd() -> impl Strategy<Value = KvCommand> {
    let sid = prop::sample::select(vec!["s1", "s2"]);
    prop_oneof![
        (sid.clone(), any::<bool>()).prop_map(|(id, del)| KvCommand::SessionCreate {
            session: Session {
                id: id.to_string(),
                name: String::new(),
                node: "n1".into(),
                behavior: if del {
                    Behavior::Delete
                } else {
                    Behavior::Release
                },
                ttl_ms: 0,
                lock_delay_ms: 1000,
                create_index: 0,
                node_checks: vec!["serfHealth".into()],
                service_checks: Vec::new(),
            },
        }),
        (sid.clone(), 0..5000u64).prop_map(|(id, now_ms)| KvCommand::SessionDestroy {
            id: id.to_string(),
            now_ms
        }),
        (key(), sid.clone(), 0..5000u64).prop_map(|(key, s, now_ms)| KvCommand::Acquire {
            key,
            value: b("l"),
            flags: 0,
            session: s.to_string(),
            now_ms,
        }),
        (key(), sid).prop_map(|(key, s)| KvCommand::Release {
            key,
            value: b("r"),
            flags: 0,
            session: s.to_string()
        }),
    ]
}

fn command() -> impl Strategy<Value = KvCommand> {
    prop_oneof![
        3 => session_cmd(),
        3 => key().prop_map(|key| KvCommand::Set { key, value: b("v"), flags: 0 }),
        1 => (key(), 0..10u64).prop_map(|(key, index)| KvCommand::Cas { key, value: b("w"), flags: 0, index }),
        1 => key().prop_map(|key| KvCommand::Delete { key }),
        1 => prefix().prop_map(|prefix| KvCommand::DeleteTree { prefix }),
        2 => prop::collection::vec(txn_op(), 1..6).prop_map(|ops| KvCommand::Txn { ops }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn shard_cores_driven_by_the_sequencer_agree_with_the_single_store_model(
        cmds in prop::collection::vec(command(), 1..30),
        n in 1..6usize,
    ) {
        let mut model = ShardedKv::new(1);
        let mut sim = Sim::new(n);
        for (i, cmd) in cmds.iter().enumerate() {
            let index = i as u64 + 1;
            prop_assert_eq!(sim.apply(index, cmd), model.apply(index, cmd).0);
            for p in ["", "a/", "web/"] {
                prop_assert_eq!(sim.list(p), model.list(p.as_bytes()));
            }
        }
    }
}

#[test]
fn a_read_during_a_prepared_transaction_waits_for_the_decision() {
    let mut core = ShardCore::default();
    core.stream(StreamMsg::Apply {
        index: 1,
        cmd: KvCommand::Set {
            key: b("k"),
            value: b("old"),
            flags: 0,
        },
        reply: None,
    });
    core.stream(StreamMsg::TxnPrepare {
        index: 2,
        txn: 7,
        ops: vec![(
            0,
            TxnOp::Set {
                key: b("k"),
                value: b("new"),
                flags: 0,
            },
        )],
        reply: ME,
    });
    let mut out = Vec::new();
    core.read(
        ME,
        ReadReq::Get {
            key: b("k"),
            min_index: 0,
        },
        &mut out,
    );
    assert!(out.is_empty(), "answered during a prepared transaction");
    assert_eq!(core.deferred_count(), 1);
    let out = core.stream(StreamMsg::TxnDecide {
        txn: 7,
        commit: false,
    });
    let Reply::Entry { entry, index } = reply_of(out) else {
        panic!()
    };
    assert_eq!(
        entry.unwrap().value,
        b("old"),
        "an aborted write was visible"
    );
    assert_eq!(index, 1);
}

#[test]
fn a_blocking_get_is_answered_by_the_next_write_to_its_key() {
    let mut core = ShardCore::default();
    core.stream(StreamMsg::Apply {
        index: 3,
        cmd: KvCommand::Set {
            key: b("k"),
            value: b("1"),
            flags: 0,
        },
        reply: None,
    });
    let mut out = Vec::new();
    core.read(
        ME,
        ReadReq::Get {
            key: b("k"),
            min_index: 3,
        },
        &mut out,
    );
    let [Effect::Parked { watch, .. }] = out[..] else {
        panic!("{out:?}")
    };
    // A write elsewhere does not answer it.
    let out = core.stream(StreamMsg::Apply {
        index: 4,
        cmd: KvCommand::Set {
            key: b("other"),
            value: b("x"),
            flags: 0,
        },
        reply: None,
    });
    assert!(out.is_empty());
    let out = core.stream(StreamMsg::Apply {
        index: 5,
        cmd: KvCommand::Set {
            key: b("k"),
            value: b("2"),
            flags: 0,
        },
        reply: None,
    });
    let Reply::Entry { entry, index } = reply_of(out) else {
        panic!()
    };
    assert_eq!((entry.unwrap().value, index), (b("2"), 5));
    assert!(core.timeout(watch).is_empty(), "answered twice");
    assert_eq!(core.parked_count(), 0);
}

#[test]
fn a_blocking_get_that_times_out_answers_with_the_current_state() {
    let mut core = ShardCore::default();
    let mut out = Vec::new();
    core.read(
        ME,
        ReadReq::Get {
            key: b("k"),
            min_index: 10,
        },
        &mut out,
    );
    let [Effect::Parked { watch, .. }] = out[..] else {
        panic!("{out:?}")
    };
    let Reply::Entry { entry, index } = reply_of(core.timeout(watch)) else {
        panic!()
    };
    assert!(entry.is_none());
    assert_eq!(index, 1);
    assert_eq!(
        core.shard().watch_count(),
        0,
        "timed-out watch left registered"
    );
}

#[test]
fn a_prefix_watch_fires_on_a_change_under_the_prefix_only() {
    let mut core = ShardCore::default();
    let mut out = Vec::new();
    core.read(
        ME,
        ReadReq::WatchPrefix {
            prefix: b("svc/"),
            min_index: 0,
        },
        &mut out,
    );
    assert!(matches!(out[..], [Effect::Parked { .. }]));
    let out = core.stream(StreamMsg::Apply {
        index: 2,
        cmd: KvCommand::Set {
            key: b("cfg/x"),
            value: b("1"),
            flags: 0,
        },
        reply: None,
    });
    assert!(out.is_empty());
    let out = core.stream(StreamMsg::Apply {
        index: 3,
        cmd: KvCommand::Delete { key: b("svc/none") },
        reply: None,
    });
    assert!(out.is_empty(), "deleting a missing key changes nothing");
    let out = core.stream(StreamMsg::Apply {
        index: 4,
        cmd: KvCommand::Set {
            key: b("svc/web"),
            value: b("1"),
            flags: 0,
        },
        reply: None,
    });
    assert_eq!(reply_of(out), Reply::Changed);
}

fn set(index: u64, key: &str, value: &str) -> StreamMsg {
    StreamMsg::Apply {
        index,
        cmd: KvCommand::Set {
            key: b(key),
            value: b(value),
            flags: 0,
        },
        reply: None,
    }
}

fn blocking_get(core: &mut ShardCore, to: Origin, key: &str, min_index: u64) -> Vec<Effect> {
    let mut out = Vec::new();
    let read = ReadReq::Get {
        key: b(key),
        min_index,
    };
    core.read(to, read, &mut out);
    out
}

#[test]
fn every_parked_read_is_unparked_once_whether_a_write_answers_it_or_its_wait_runs_out() {
    let mut core = ShardCore::default();
    core.stream(set(3, "k", "1"));
    let other = Origin { core: 98, id: 7 };
    let [Effect::Parked { watch: w1, to }] = blocking_get(&mut core, ME, "k", 3)[..] else {
        panic!()
    };
    assert_eq!(to, ME);
    let [Effect::Parked { watch: w2, .. }] = blocking_get(&mut core, other, "k", 3)[..] else {
        panic!()
    };
    let out = core.stream(set(4, "k", "2"));
    let entry = |value: &str| Reply::Entry {
        entry: Some(cairn::kv::KvEntry {
            key: b("k"),
            value: b(value),
            flags: 0,
            create_index: 3,
            modify_index: 4,
            lock_index: 0,
            session: None,
        }),
        index: 4,
    };
    assert_eq!(
        out,
        vec![
            Effect::Reply {
                to: ME,
                reply: entry("2")
            },
            Effect::Unparked { watch: w1 },
            Effect::Reply {
                to: other,
                reply: entry("2")
            },
            Effect::Unparked { watch: w2 },
        ]
    );
    assert!(core.timeout(w1).is_empty(), "answered twice");
    // A wait that runs out.
    let [Effect::Parked { watch, .. }] = blocking_get(&mut core, ME, "k", 4)[..] else {
        panic!()
    };
    assert_eq!(
        core.timeout(watch),
        vec![
            Effect::Reply {
                to: ME,
                reply: entry("2")
            },
            Effect::Unparked { watch },
        ]
    );
    assert_eq!(core.parked_count(), 0);
}

#[test]
fn a_withdrawn_read_is_dropped_unanswered() {
    let mut core = ShardCore::default();
    core.stream(set(3, "k", "1"));
    let [Effect::Parked { watch, .. }] = blocking_get(&mut core, ME, "k", 3)[..] else {
        panic!()
    };
    assert_eq!(core.cancel(ME), vec![Effect::Unparked { watch }]);
    assert_eq!(core.parked_count(), 0);
    assert_eq!(
        core.shard().watch_count(),
        0,
        "withdrawn watch left registered"
    );
    assert!(
        core.stream(set(4, "k", "2")).is_empty(),
        "a withdrawn read answered"
    );
    assert!(core.timeout(watch).is_empty(), "a withdrawn read timed out");
    assert!(core.cancel(ME).is_empty(), "withdrawn twice");
    // A read already answered: nothing to withdraw.
    assert!(matches!(
        blocking_get(&mut core, ME, "k", 3)[..],
        [Effect::Reply { .. }]
    ));
    assert!(core.cancel(ME).is_empty());
    // A prefix watch is withdrawn the same way.
    let mut out = Vec::new();
    let watch_prefix = ReadReq::WatchPrefix {
        prefix: b("svc/"),
        min_index: 4,
    };
    core.read(ME, watch_prefix, &mut out);
    let [Effect::Parked { watch, .. }] = out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(core.cancel(ME), vec![Effect::Unparked { watch }]);
    assert!(core.stream(set(5, "svc/web", "1")).is_empty());
    assert_eq!(core.shard().watch_count(), 0);
}

#[test]
fn a_read_withdrawn_while_a_transaction_defers_it_is_never_answered() {
    let mut core = ShardCore::default();
    core.stream(set(1, "k", "old"));
    core.stream(StreamMsg::TxnPrepare {
        index: 2,
        txn: 7,
        ops: vec![(
            0,
            TxnOp::Set {
                key: b("k"),
                value: b("new"),
                flags: 0,
            },
        )],
        reply: ME,
    });
    let other = Origin { core: 98, id: 7 };
    assert!(blocking_get(&mut core, ME, "k", 1).is_empty());
    assert!(blocking_get(&mut core, other, "k", 1).is_empty());
    assert_eq!(core.deferred_count(), 2);
    assert!(core.cancel(ME).is_empty());
    assert_eq!(core.deferred_count(), 1);
    let out = core.stream(StreamMsg::TxnDecide {
        txn: 7,
        commit: true,
    });
    assert!(
        matches!(out[..], [Effect::Reply { to, .. }] if to == other),
        "{out:?}"
    );
}
