//! The shard runtime on this machine: cross-core reads, barrier prefix reads, and the
//! sequencer's write rate. Run with `cargo bench --bench shards`. Prints one table; it
//! measures the runtime alone (no Raft, no network).

use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn::kv::{KvCommand, TxnOp};
use cairn::runtime::shards::run_with;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

fn main() {
    for spin_us in [0u64, 200] {
        bench(Duration::from_micros(spin_us));
    }
}

fn bench(spin: Duration) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "== shard runtime, {cores} executors (pinned), spin before park {spin:?}, no Raft, no network"
    );
    let results = run_with(cores, true, spin, move |s| async move {
        let mut lines = Vec::new();
        if s.core() == 0 {
            // Fill 10,000 keys, pipelined: many applies in flight at once.
            let t = Instant::now();
            let n = 100_000u64;
            let mut in_flight = Vec::new();
            for i in 0..n {
                let cmd = KvCommand::Set {
                    key: Bytes::from(format!("k/{:06}", i % 10_000)),
                    value: Bytes::from_static(b"0123456789abcdef"),
                    flags: 0,
                };
                let s2 = s.clone();
                in_flight.push(glommio::spawn_local(
                    async move { s2.apply(i + 1, &cmd).await },
                ));
                if in_flight.len() >= 256 {
                    for t in in_flight.drain(..) {
                        t.await;
                    }
                }
            }
            for t in in_flight.drain(..) {
                t.await;
            }
            let secs = t.elapsed().as_secs_f64();
            lines.push(format!(
                "sequencer single-key writes, 256 in flight: {:.0} writes/s",
                n as f64 / secs
            ));
            let t = Instant::now();
            let m = 5_000u64;
            for i in 0..m {
                let ops = (0..4)
                    .map(|k| TxnOp::Set {
                        key: Bytes::from(format!("t/{k}")),
                        value: Bytes::from(i.to_string()),
                        flags: 0,
                    })
                    .collect();
                s.apply(n + 1 + i, &KvCommand::Txn { ops }).await;
            }
            lines.push(format!(
                "4-key transactions across shards, one at a time: {:.0} txns/s",
                m as f64 / t.elapsed().as_secs_f64()
            ));
            s.apply(
                n + m + 1,
                &KvCommand::Set {
                    key: Bytes::from_static(b"ready"),
                    value: Bytes::new(),
                    flags: 0,
                },
            )
            .await;
        } else {
            s.get(Bytes::from_static(b"ready"), 1, Duration::from_secs(120))
                .await;
        }
        // Reads: local and remote keys, measured one at a time.
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for i in 0..20_000u64 {
            let key = Bytes::from(format!("k/{:06}", i % 10_000));
            let owner = cairn::kv::shard_of(&key, s.cores());
            let t = Instant::now();
            let (e, _) = s.get(key, 0, Duration::ZERO).await;
            let d = t.elapsed();
            assert!(e.is_some());
            if owner == s.core() {
                local.push(d);
            } else {
                remote.push(d);
            }
        }
        let mut lists = Vec::new();
        for _ in 0..2_000 {
            let t = Instant::now();
            let l = s.list(Bytes::from_static(b"t/")).await;
            lists.push(t.elapsed());
            assert_eq!(l.entries.len(), 4);
        }
        if !local.is_empty() {
            lines.push(format!(
                "core {}: get, key on this core: p50 {:.2} us, p99 {:.2} us",
                s.core(),
                pct(&mut local, 0.5),
                pct(&mut local, 0.99)
            ));
        }
        if !remote.is_empty() {
            lines.push(format!(
                "core {}: get, key on another core: p50 {:.2} us, p99 {:.2} us",
                s.core(),
                pct(&mut remote, 0.5),
                pct(&mut remote, 0.99)
            ));
        }
        lines.push(format!(
            "core {}: prefix list (barrier on every core): p50 {:.2} us, p99 {:.2} us",
            s.core(),
            pct(&mut lists, 0.5),
            pct(&mut lists, 0.99)
        ));
        lines
    })
    .expect("runtime");
    for lines in results {
        for l in lines {
            println!("{l}");
        }
    }
}
