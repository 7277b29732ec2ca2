//! The shard cores on real glommio executors talking over the channel mesh.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn::kv::{KvCommand, KvOutcome, TxnOp};
use cairn::runtime::shards::run;

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

#[test]
fn writes_on_the_sequencer_are_read_from_every_core() {
    let results = run(3, false, |s| async move {
        if s.core() == 0 {
            for i in 0..100u64 {
                s.apply(i + 1, &set(&format!("k/{i:03}"), &i.to_string()))
                    .await;
            }
            s.apply(101, &KvCommand::DeleteTree { prefix: b("k/05") })
                .await;
            s.apply(102, &set("done", "1")).await;
        } else {
            // Block until the sequencer is finished.
            let (e, _) = s.get(b("done"), 1, Duration::from_secs(20)).await;
            assert!(e.is_some(), "core {} timed out waiting", s.core());
        }
        let list = s.list(b("k/")).await;
        let (e, idx) = s.get(b("k/042"), 0, Duration::ZERO).await;
        (list.entries.len(), list.index, e.map(|e| e.value), idx)
    })
    .unwrap();
    for r in results {
        assert_eq!(r, (90, 101, Some(b("42")), 43));
    }
}

#[test]
fn no_prefix_read_on_any_core_sees_half_a_transaction() {
    const ROUNDS: u64 = 300;
    let results = run(3, false, |s| async move {
        if s.core() == 0 {
            for i in 1..=ROUNDS {
                let v = b(&i.to_string());
                let ops = (0..4)
                    .map(|k| TxnOp::Set {
                        key: b(&format!("pair/{k}")),
                        value: v.clone(),
                        flags: 0,
                    })
                    .collect();
                let out = s.apply(i, &KvCommand::Txn { ops }).await;
                assert!(matches!(out, KvOutcome::Txn(Ok(_))));
            }
            0
        } else {
            let mut reads = 0u64;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let l = s.list(b("pair/")).await;
                reads += 1;
                let values: Vec<&Bytes> = l.entries.iter().map(|e| &e.value).collect();
                assert!(
                    values.windows(2).all(|w| w[0] == w[1]),
                    "half a transaction seen: {values:?}"
                );
                if l.index >= ROUNDS || Instant::now() > deadline {
                    break;
                }
            }
            reads
        }
    })
    .unwrap();
    // The readers' first barrier is queued before most transactions, so they overlap.
    assert!(
        results[1] + results[2] > 2,
        "readers did not overlap: {results:?}"
    );
}

#[test]
fn a_blocking_prefix_read_wakes_on_a_write_from_the_sequencer() {
    let results = run(2, false, |s| async move {
        if s.core() == 0 {
            s.apply(1, &set("other", "x")).await;
            glommio::timer::sleep(Duration::from_millis(100)).await;
            s.apply(2, &set("svc/web", "up")).await;
            Duration::ZERO
        } else {
            // A wait longer than the test's time limit: only the write can end it.
            let l = s
                .list_blocking(b("svc/"), 1, Duration::from_secs(600))
                .await;
            assert_eq!(l.entries.len(), 1);
            assert_eq!(l.index, 2);
            Duration::ZERO
        }
    })
    .unwrap();
    assert_eq!(results.len(), 2);
}

#[test]
fn a_blocking_get_returns_when_its_wait_runs_out() {
    let results = run(2, false, |s| async move {
        let t = Instant::now();
        let (e, idx) = s.get(b("never"), 5, Duration::from_millis(50)).await;
        (e.is_none(), idx, t.elapsed())
    })
    .unwrap();
    for (none, idx, took) in results {
        assert!(none);
        assert_eq!(idx, 1);
        assert!(took >= Duration::from_millis(50), "{took:?}");
    }
}
