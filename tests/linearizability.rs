//! Linearizability under failures: concurrent clients write, read (consistent) and
//! compare-and-swap a few keys through any server while the leader is killed with -9
//! and restarted, twice. The history (every call and return, with indeterminate writes
//! for timeouts and lost connections) is checked per key by loadgen's Wing–Gong checker;
//! any violation fails the test and leaves the history in a file to replay.
//!
//! Cairn's check-and-set compares a ModifyIndex. Every write here writes a value never
//! written before, so a value names exactly one write, and "the key's ModifyIndex is the
//! one I read" is "the key holds the value I read": a read followed by a CAS on its index
//! is recorded as a read and a CAS on the value.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::client::RpcClient;
use cairn_net::rpc::message::{Consistency, Op, ReadOpts, Response};
use loadgen::linearizability::{CheckOptions, CheckResult, Op as LOp, Outcome, Recorder};
use rand::{Rng, SeedableRng};
use support::{b, req, Cluster};

const KEYS: [&str; 3] = ["x", "y", "z"];

/// A client that talks to any server, moving on when one fails.
struct AnyServer {
    addrs: Vec<String>,
    at: usize,
    conn: Option<RpcClient>,
}

impl AnyServer {
    fn call(&mut self, op: Op) -> Option<Response> {
        if self.conn.is_none() {
            self.at = (self.at + 1) % self.addrs.len();
            self.conn = RpcClient::connect(&self.addrs[self.at], Duration::from_millis(2000)).ok();
        }
        let r = self.conn.as_mut()?.call(&req(op));
        match r {
            Ok(r) => Some(r),
            Err(_) => {
                self.conn = None;
                None
            }
        }
    }
}

fn read(c: &mut AnyServer, key: &str) -> Option<Option<(String, u64)>> {
    match c.call(Op::KvGet {
        key: b(key),
        opts: ReadOpts {
            consistency: Consistency::Consistent,
            ..ReadOpts::default()
        },
    })? {
        Response::Entries { entries, .. } => Some(entries.first().map(|e| {
            (
                String::from_utf8_lossy(&e.value).into_owned(),
                e.modify_index,
            )
        })),
        _ => None,
    }
}

fn client(id: u64, seed: u64, addrs: Vec<String>, rec: Recorder<String>, stop: Arc<AtomicBool>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ id);
    let mut c = AnyServer {
        addrs,
        at: id as usize,
        conn: None,
    };
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let key = KEYS[rng.random_range(0..KEYS.len())];
        let dice = rng.random_range(0..10);
        if dice < 4 {
            n += 1;
            let value = format!("c{id}-{n}");
            let op = rec.begin(
                id,
                key,
                LOp::Put {
                    value: value.clone(),
                },
            );
            let r = c.call(Op::KvPut {
                key: b(key),
                value: b(&value),
                flags: 0,
                cas: None,
                acquire: None,
                release: None,
            });
            rec.end(
                op,
                match r {
                    Some(Response::Bool(true)) => Outcome::Ok,
                    // Errors, timeouts and lost connections: it may or may not have
                    // happened.
                    _ => Outcome::Indeterminate,
                },
            );
        } else if dice < 8 {
            let op = rec.begin(id, key, LOp::Get);
            let r = read(&mut c, key);
            rec.end(
                op,
                match r {
                    Some(v) => Outcome::Read(v.map(|(v, _)| v)),
                    None => Outcome::Indeterminate,
                },
            );
        } else {
            // Read, then swap in a new value if nobody wrote in between.
            let op = rec.begin(id, key, LOp::Get);
            let r = read(&mut c, key);
            let Some(seen) = r else {
                rec.end(op, Outcome::Indeterminate);
                continue;
            };
            rec.end(op, Outcome::Read(seen.as_ref().map(|(v, _)| v.clone())));
            n += 1;
            let value = format!("c{id}-{n}");
            let (expect, index) = match seen {
                Some((v, i)) => (Some(v), i),
                None => (None, 0),
            };
            let op = rec.begin(
                id,
                key,
                LOp::Cas {
                    expect,
                    new: value.clone(),
                },
            );
            let r = c.call(Op::KvPut {
                key: b(key),
                value: b(&value),
                flags: 0,
                cas: Some(index),
                acquire: None,
                release: None,
            });
            rec.end(
                op,
                match r {
                    Some(Response::Bool(ok)) => Outcome::Cas(ok),
                    _ => Outcome::Indeterminate,
                },
            );
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..3)));
    }
}

#[test]
fn concurrent_clients_stay_linearizable_while_the_leader_is_killed_and_restarted() {
    let seed: u64 = std::env::var("CAIRN_LIN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (replay the client mix with CAIRN_LIN_SEED={seed})");
    // Two cores per server: connections land on both, writes and reads cross cores.
    let mut c = Cluster::start(3, &["--cores", "2"]);
    c.wait_for_leader(Duration::from_secs(10));
    let addrs: Vec<String> = c.servers.iter().map(|s| s.addr()).collect();
    let rec: Recorder<String> = Recorder::new();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|id| {
            let (addrs, rec, stop) = (addrs.clone(), rec.clone(), stop.clone());
            std::thread::spawn(move || client(id, seed, addrs, rec, stop))
        })
        .collect();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(1500));
        let leader = c.wait_for_leader(Duration::from_secs(15));
        c.servers[leader].kill();
        std::thread::sleep(Duration::from_millis(1500));
        c.servers[leader].restart();
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.join().unwrap();
    }
    let history = rec.history();
    let acked = history
        .ops()
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Ok | Outcome::Cas(true)))
        .count();
    let reads = history
        .ops()
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Read(_)))
        .count();
    eprintln!(
        "{} operations: {acked} acknowledged writes, {reads} reads",
        history.len()
    );
    assert!(acked > 20 && reads > 20, "too little happened to check");
    let started = Instant::now();
    let verdict = history.check(&CheckOptions {
        max_steps_per_key: 1 << 24,
        deadline: Some(Instant::now() + Duration::from_secs(120)),
    });
    eprintln!("checked in {:?}", started.elapsed());
    if !matches!(verdict, CheckResult::Ok) {
        let path = std::env::temp_dir().join(format!("cairn-lin-{seed}.jsonl"));
        let _ = history.write_jsonl(&path);
        panic!(
            "history is not shown linearizable (saved to {}): {verdict:?}",
            path.display()
        );
    }
}
