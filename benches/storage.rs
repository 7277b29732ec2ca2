//! Storage benchmarks: the segment log's durable appends, mmap reads and recovery, and
//! snapshot write/open. Run with `cargo bench --bench storage`.
//!
//! Before criterion's statistics, a goals table is printed: each figure next to the raw
//! floor measured on the same disk in the same run (a 4 KiB `pwrite` + `fdatasync`
//! overwriting one block of an existing file), and next to the goal from issue 2.
//! Data goes to `$CAIRN_BENCH_DIR` (default `target/bench-data`), which must be on the disk
//! being measured.

use std::fs::{self, OpenOptions};
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_storage::snapshot::{write_snapshot, Snapshot};
use cairn_storage::state::{KvRecord, StateImage};
use cairn_storage::{GroupCommitLog, LogOptions, NewEntry, SegmentLog};
use criterion::{BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ENTRY: usize = 256;

fn bench_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("CAIRN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data"));
    let d = base.join(name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The floor: 4 KiB pwrite + fdatasync over one block of a file that already exists.
fn raw_floor(dir: &Path, n: usize) -> Vec<Duration> {
    let p = dir.join("floor.bin");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.write_all_at(&vec![0u8; 1 << 20], 0).unwrap();
    f.sync_all().unwrap();
    let buf = vec![7u8; 4096];
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all_at(&buf, 0).unwrap();
        f.sync_data().unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

/// Durable appends of `batch` entries of 256 bytes, one fdatasync per batch; per-batch
/// latencies, sorted.
fn durable_appends(dir: &Path, batch: usize, batches: usize) -> Vec<Duration> {
    let mut log = SegmentLog::open(dir, LogOptions::default()).unwrap();
    let payload = vec![0xabu8; ENTRY];
    let mut next = log.next_index();
    let mut lat = Vec::with_capacity(batches);
    for _ in 0..batches {
        let entries: Vec<NewEntry<'_>> = (0..batch as u64)
            .map(|i| NewEntry {
                term: 1,
                index: next + i,
                payload: &payload,
            })
            .collect();
        let t = Instant::now();
        log.append(&entries).unwrap();
        log.sync().unwrap();
        lat.push(t.elapsed());
        next += batch as u64;
    }
    lat.sort();
    lat
}

/// `threads` writers each appending single entries durably through group commit.
fn group_commit(dir: &Path, threads: usize, per_thread: usize) -> (f64, f64) {
    let log = GroupCommitLog::new(SegmentLog::open(dir, LogOptions::default()).unwrap());
    let payload = vec![0xcdu8; ENTRY];
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..per_thread {
                    log.append_next_durable(1, &[&payload]).unwrap();
                }
            });
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let n = (threads * per_thread) as f64;
    (n / secs, secs)
}

fn fill_log(dir: &Path, bytes: u64) -> SegmentLog {
    let mut log = SegmentLog::open(dir, LogOptions::default()).unwrap();
    let payload = vec![0x5au8; ENTRY];
    let per = cairn_storage::record_len(ENTRY) as u64;
    let total = bytes / per;
    let mut next = 0;
    while next < total {
        let n = 4096.min(total - next);
        let entries: Vec<NewEntry<'_>> = (0..n)
            .map(|i| NewEntry {
                term: 1,
                index: next + i,
                payload: &payload,
            })
            .collect();
        log.append(&entries).unwrap();
        next += n;
    }
    log.sync().unwrap();
    log
}

fn snapshot_image(keys: usize) -> StateImage {
    StateImage {
        kv: (0..keys)
            .map(|i| {
                let key = format!("config/service-{:04}/key-{i:08}", i % 1000).into_bytes();
                (
                    key.clone(),
                    KvRecord {
                        key,
                        value: vec![(i % 251) as u8; 64],
                        create_index: i as u64,
                        modify_index: i as u64,
                        lock_index: 0,
                        flags: 0,
                        session: None,
                    },
                )
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_values()
            .collect(),
        catalog: Vec::new(),
        tombstones: Vec::new(),
        kv_index: keys as u64,
        membership: Vec::new(),
        ..StateImage::default()
    }
}

fn goals() {
    println!("== storage goals (issue 2); machine: see README; one run, same disk");
    let dir = bench_dir("goals");
    let floor = raw_floor(&dir, 2000);
    let f50 = pct(&floor, 0.5);
    println!(
        "raw floor 4 KiB pwrite+fdatasync: p50 {:.0} us, p99 {:.0} us",
        us(f50),
        us(pct(&floor, 0.99))
    );
    for (batch, batches) in [(1usize, 2000usize), (16, 1000), (256, 3000)] {
        let d = bench_dir(&format!("append-{batch}"));
        let lat = durable_appends(&d, batch, batches);
        let total: Duration = lat.iter().sum();
        let eps = (batch * batches) as f64 / total.as_secs_f64();
        let mbps = eps * ENTRY as f64 / 1e6;
        let p50 = pct(&lat, 0.5);
        print!(
            "append batch {batch:>3} x 256 B durable: {:>10.0} entries/s, {:>6.1} MB/s, p50 {:.0} us, p99 {:.0} us",
            eps,
            mbps,
            us(p50),
            us(pct(&lat, 0.99))
        );
        match batch {
            1 => println!(
                "  | p50 = {:.2}x floor (goal <= 1.3x)",
                p50.as_secs_f64() / f50.as_secs_f64()
            ),
            256 => println!("  | goal >= 1,000,000 entries/s"),
            _ => println!(),
        }
        let _ = fs::remove_dir_all(&d);
    }
    for threads in [8usize, 64] {
        let d = bench_dir("group");
        let (eps, _) = group_commit(&d, threads, 4000 / threads * 4);
        println!(
            "group commit, {threads} writers x 1 entry, each waiting for durability: {eps:.0} entries/s"
        );
        let _ = fs::remove_dir_all(&d);
    }

    // Reads.
    let d = bench_dir("reads");
    let log = fill_log(&d, 256 << 20);
    let n = log.next_index();
    let mut rng = StdRng::seed_from_u64(7);
    let mut lat = Vec::with_capacity(200_000);
    for _ in 0..200_000 {
        let i = rng.random_range(0..n);
        let t = Instant::now();
        let e = log.get(i).unwrap();
        black_box(&e.payload[0]);
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "random read from mmap ({n} entries, 256 MiB): p50 {:.3} us, p99 {:.3} us (goal p50 <= 1 us; includes ~20 ns of timer)",
        us(pct(&lat, 0.5)),
        us(pct(&lat, 0.99))
    );
    drop(log);
    let _ = fs::remove_dir_all(&d);

    // Recovery of 1 GiB.
    let d = bench_dir("reopen");
    let log = fill_log(&d, 1 << 30);
    let n = log.next_index();
    drop(log);
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let log = SegmentLog::open(&d, LogOptions::default()).unwrap();
        times.push(t.elapsed());
        assert_eq!(log.next_index(), n);
    }
    times.sort();
    println!(
        "reopen (recover + validate every record) of a 1 GiB log, {n} entries, page cache warm: median {:.0} ms (goal <= 1000 ms)",
        times[2].as_secs_f64() * 1e3
    );
    let _ = fs::remove_dir_all(&d);

    // Snapshot of 1,000,000 keys.
    let d = bench_dir("snapshot");
    let img = snapshot_image(1_000_000);
    let t = Instant::now();
    let path = write_snapshot(&d, None, &img, 2).unwrap();
    let write = t.elapsed();
    let size = fs::metadata(&path).unwrap().len();
    let mut opens = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let s = Snapshot::<StateImage>::open(&path).unwrap();
        let r = s.state().get(b"config/service-0500/key-00500500").unwrap();
        black_box(r.modify_index);
        opens.push(t.elapsed());
    }
    opens.sort();
    println!(
        "snapshot 1,000,000 keys ({:.1} MB): write+fsync {:.0} ms; open (crc + validate + first read) median {:.1} ms (goal <= 100 ms)",
        size as f64 / 1e6,
        write.as_secs_f64() * 1e3,
        opens[2].as_secs_f64() * 1e3
    );
    let _ = fs::remove_dir_all(&d);
    let _ = fs::remove_dir_all(&dir);
}

fn criterion_benches(c: &mut Criterion) {
    let payload = vec![0xabu8; ENTRY];
    let mut g = c.benchmark_group("append_durable_256B");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for batch in [1u64, 16, 256] {
        let d = bench_dir(&format!("crit-append-{batch}"));
        let mut log = SegmentLog::open(&d, LogOptions::default()).unwrap();
        g.throughput(Throughput::Elements(batch));
        g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
            b.iter(|| {
                let next = log.next_index();
                let entries: Vec<NewEntry<'_>> = (0..batch)
                    .map(|i| NewEntry {
                        term: 1,
                        index: next + i,
                        payload: &payload,
                    })
                    .collect();
                log.append(&entries).unwrap();
                log.sync().unwrap();
            })
        });
        drop(log);
        let _ = fs::remove_dir_all(&d);
    }
    g.finish();

    let d = bench_dir("crit-read");
    let log = fill_log(&d, 64 << 20);
    let n = log.next_index();
    let mut rng = StdRng::seed_from_u64(1);
    c.bench_function("read_random_mmap", |b| {
        b.iter(|| {
            let e = log.get(rng.random_range(0..n)).unwrap();
            black_box(e.payload.len())
        })
    });
    drop(log);
    let _ = fs::remove_dir_all(&d);
}

/// `cargo bench --bench storage` runs the goals table, then criterion.
/// `cargo bench --bench storage -- goals` runs only the goals table;
/// `CAIRN_BENCH_GOALS=0 cargo bench --bench storage -- FILTER` runs only criterion.
fn main() {
    let only_goals = std::env::args().skip(1).any(|a| a == "goals");
    if only_goals || std::env::var("CAIRN_BENCH_GOALS").map_or(true, |v| v != "0") {
        goals();
    }
    if !only_goals {
        let mut c = Criterion::default().configure_from_args();
        criterion_benches(&mut c);
        c.final_summary();
    }
}
