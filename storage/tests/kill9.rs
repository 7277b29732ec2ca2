//! A real process appends and syncs in a loop, printing every index it was told is
//! durable; it is killed with SIGKILL at a random moment, several times over the same log.
//! After each kill the log must open and hold every acknowledged entry, intact.
//!
//! The child is this same test binary, re-run with `CAIRN_KILL9_DIR` set.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_storage::{LogOptions, NewEntry, SegmentLog};
use rand::{Rng, SeedableRng};

fn opts() -> LogOptions {
    LogOptions {
        segment_size: 256 * 1024,
    }
}

/// Deterministic payload for an index, so the parent can check any entry.
fn payload(index: u64) -> Vec<u8> {
    let len = (index * 7919 % 1500) as usize;
    (0..len).map(|i| (index as usize + i * 31) as u8).collect()
}

/// The child: append batches forever; after each sync, print the durable end.
#[test]
fn child_writer() {
    let Ok(dir) = std::env::var("CAIRN_KILL9_DIR") else {
        return; // Only runs as the child of the test below.
    };
    let mut log = SegmentLog::open(&dir, opts()).expect("child open");
    let mut rng = rand::rngs::StdRng::seed_from_u64(log.next_index());
    // Bounded: the parent kills us long before this ends.
    for _ in 0..1_000_000 {
        let next = log.next_index();
        let n = rng.random_range(1..40u64);
        let datas: Vec<Vec<u8>> = (next..next + n).map(payload).collect();
        let entries: Vec<NewEntry<'_>> = datas
            .iter()
            .enumerate()
            .map(|(i, d)| NewEntry {
                term: 1,
                index: next + i as u64,
                payload: d,
            })
            .collect();
        log.append(&entries).expect("append");
        let durable = log.sync().expect("sync");
        println!("durable {durable}");
    }
}

#[test]
fn sigkill_at_any_moment_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let seed: u64 = rand::random();
    eprintln!("kill9 seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut acked = 0u64;
    for round in 0..8 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_writer",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("CAIRN_KILL9_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut max = 0u64;
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(n) = line.strip_prefix("durable ") {
                    max = max.max(n.trim().parse().unwrap_or(0));
                }
            }
            max
        });
        let run_for = Duration::from_millis(rng.random_range(50..400));
        let start = Instant::now();
        while start.elapsed() < run_for {
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        acked = acked.max(reader.join().unwrap());

        let log = SegmentLog::open(dir.path(), opts())
            .unwrap_or_else(|e| panic!("round {round}: log refused after kill -9: {e}"));
        assert!(
            log.next_index() >= acked,
            "round {round}: {acked} acknowledged, {} recovered",
            log.next_index()
        );
        for i in 0..log.next_index() {
            let e = log.get(i).unwrap();
            assert_eq!(e.payload.as_ref(), payload(i).as_slice(), "entry {i}");
        }
        eprintln!(
            "round {round}: {acked} acknowledged, {} recovered",
            log.next_index()
        );
    }
    assert!(acked > 0, "the child never acknowledged anything");
}
