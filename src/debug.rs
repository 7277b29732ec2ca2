//! `cairn debug ...`: read-only inspection of the storage files.

use std::path::Path;
use std::process::ExitCode;

use cairn_storage::snapshot::Snapshot;
use cairn_storage::state::StateImage;
use cairn_storage::SegmentLog;
use serde_json::json;

/// Reports a log directory's segments, index range, metadata and health.
pub fn log_check(dir: &Path, json: bool) -> ExitCode {
    let log = match SegmentLog::open_read_only(dir) {
        Ok(log) => log,
        Err(e) => {
            if json {
                println!("{}", json!({"healthy": false, "error": e.to_string()}));
            } else {
                println!("log {}: DAMAGED", dir.display());
                println!("  {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    let report = log.open_report();
    let segs = log.segment_summary();
    let last = log.last_log_id();
    let meta = log.meta();
    if json {
        let segments: Vec<_> = segs
            .iter()
            .map(|(p, first, end, used)| {
                json!({"file": p.display().to_string(), "first_index": first,
                       "entries": end - first, "bytes_used": used})
            })
            .collect();
        let torn = report.torn_tail.as_ref().map(|(p, t)| {
            json!({"file": p.display().to_string(), "offset": t.cut_at,
                   "bytes": t.zeroed_bytes, "reason": t.reason})
        });
        let has_entries = log.next_index() > log.first_index();
        println!(
            "{}",
            json!({
                "healthy": true,
                "segments": segments,
                "first_index": has_entries.then(|| log.first_index()),
                "last_index": has_entries.then(|| last.map(|l| l.index)).flatten(),
                "last_term": last.map(|l| l.term),
                "last_purged_index": meta.last_purged.map(|l| l.index),
                "committed_index": meta.committed.map(|l| l.index),
                "vote_term": meta.vote.map(|v| v.term),
                "torn_tail": torn,
                "leftover_temp_files": report.removed_temp_files,
                "unremoved_purged_segments": report.removed_purged_segments,
                "leftover_segments": report.removed_leftover_segments,
            })
        );
        return ExitCode::SUCCESS;
    }
    println!("log {}: OK", dir.display());
    println!("  segments: {}", segs.len());
    for (p, first, end, used) in &segs {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default();
        if end > first {
            println!(
                "    {name}: entries {first}..={} ({} entries, {used} bytes used)",
                end - 1,
                end - first
            );
        } else {
            println!("    {name}: empty");
        }
    }
    match last {
        Some(l) if log.next_index() > log.first_index() => println!(
            "  entries: {}..={} (last term {})",
            log.first_index(),
            l.index,
            l.term
        ),
        _ => println!("  entries: none"),
    }
    if let Some(p) = meta.last_purged {
        println!("  purged through: index {} (term {})", p.index, p.term);
    }
    if let Some(c) = meta.committed {
        println!("  committed: index {} (term {})", c.index, c.term);
    }
    if let Some(v) = meta.vote {
        println!(
            "  vote: term {}, node {}{}",
            v.term,
            v.node_id,
            if v.committed { ", committed" } else { "" }
        );
    }
    if let Some((p, t)) = &report.torn_tail {
        println!(
            "  torn tail: {} at byte {} ({} bytes, {}); the next open cuts it",
            p.display(),
            t.cut_at,
            t.zeroed_bytes,
            t.reason
        );
    }
    if report.removed_temp_files > 0 {
        println!(
            "  leftover temp files: {} (removed at the next open)",
            report.removed_temp_files
        );
    }
    if report.removed_leftover_segments > 0 {
        println!(
            "  leftover segments of an interrupted roll-over or truncation: {} (removed at the \
             next open)",
            report.removed_leftover_segments
        );
    }
    if report.removed_purged_segments > 0 {
        println!(
            "  purged segments not yet deleted: {} (deleted at the next open)",
            report.removed_purged_segments
        );
    }
    ExitCode::SUCCESS
}

/// Validates a snapshot file and prints what it holds.
pub fn snapshot_check(file: &Path) -> ExitCode {
    match Snapshot::<StateImage>::open(file) {
        Ok(s) => {
            let st = s.state();
            println!("snapshot {}: OK", file.display());
            match s.last_included() {
                Some(l) => println!("  last included: index {} (term {})", l.index, l.term),
                None => println!("  last included: none"),
            }
            println!("  keys: {}", st.kv.len());
            match cairn::catalog::Catalog::decode_image(st.catalog.as_slice()) {
                Ok(c) => println!("  catalog nodes: {}", c.nodes().0.len()),
                Err(e) => {
                    println!("  catalog: DAMAGED ({e})");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("snapshot {}: DAMAGED", file.display());
            println!("  {e}");
            ExitCode::FAILURE
        }
    }
}

/// Measures fdatasync latency and durable append throughput on the disk holding `dir`.
pub fn disk_check(dir: &Path, samples: usize, segment_size: u64, keep: bool) -> ExitCode {
    let work = dir.join(format!("cairn-disk-check-{}", std::process::id()));
    let result = run_disk_check(&work, samples, segment_size);
    if keep {
        println!(
            "log kept in {} (try: cairn debug log-check {}/log)",
            work.display(),
            work.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: disk-check in {}: {e}", work.display());
            ExitCode::FAILURE
        }
    }
}

fn run_disk_check(
    work: &Path,
    samples: usize,
    segment_size: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};

    std::fs::create_dir_all(work)?;
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
    };

    // The floor: what the device and file system give one 4 KiB durable write.
    let floor_path = work.join("floor.bin");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&floor_path)?;
    f.write_all_at(&vec![0u8; 1 << 20], 0)?;
    f.sync_all()?;
    let block = vec![0x42u8; 4096];
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        f.write_all_at(&block, 0)?;
        f.sync_data()?;
        lat.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&floor_path)?;
    let floor_p50 = pct(&mut lat, 0.5);
    println!("disk check in {} ({samples} samples each)", work.display());
    println!(
        "  raw 4 KiB pwrite + fdatasync:      p50 {floor_p50:>7.0} us   p99 {:>7.0} us",
        pct(&mut lat, 0.99)
    );

    let mut log = SegmentLog::open(work.join("log"), cairn_storage::LogOptions { segment_size })?;
    let payload = vec![0x5au8; 256];
    for batch in [1usize, 16, 256] {
        let mut lat = Vec::with_capacity(samples);
        let mut total = Duration::ZERO;
        for _ in 0..samples {
            let next = log.next_index();
            let entries: Vec<cairn_storage::NewEntry<'_>> = (0..batch as u64)
                .map(|i| cairn_storage::NewEntry {
                    term: 1,
                    index: next + i,
                    payload: &payload,
                })
                .collect();
            let t = Instant::now();
            log.append(&entries)?;
            log.sync()?;
            let d = t.elapsed();
            total += d;
            lat.push(d);
        }
        let eps = (batch * samples) as f64 / total.as_secs_f64();
        println!(
            "  log append, batch {batch:>3} x 256 B:     p50 {:>7.0} us   p99 {:>7.0} us   {eps:>9.0} entries/s",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );
    }
    let advice = if floor_p50 > 2000.0 {
        "slow: a durable write takes over 2 ms; Raft commits will be slow (use local SSD/NVMe)"
    } else if floor_p50 > 500.0 {
        "fair: usable, but commit latency will be dominated by the disk"
    } else {
        "good for a Cairn server"
    };
    println!("  verdict: {advice}");
    Ok(())
}

/// Prints the preflight findings; fails if any check fails.
pub fn preflight(cores: Option<usize>) -> ExitCode {
    use cairn::preflight::{evaluate, gather, Level};
    let cores = cores.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let findings = evaluate(&gather(cores));
    println!("preflight for a Cairn agent on {cores} cores");
    for f in &findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("  [{tag}] {:<26} {}", f.what, f.detail);
    }
    if findings.iter().any(|f| f.level == Level::Fail) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
