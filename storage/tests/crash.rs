//! Crash and corruption tests: damage a log's files the ways crashes and disks do (cut
//! files, flipped bytes, torn writes, lost files), then reopen. The log must either recover
//! a prefix that holds every entry reported durable, or refuse to open with an error naming
//! the file and offset. It must never return a damaged entry.
//!
//! Seeded: the seed is printed; `CAIRN_CRASH_SEED=N cargo test -p cairn-storage --test crash`
//! replays a run.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use cairn_storage::{LogOptions, NewEntry, SegmentLog, StorageError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SEGMENT_SIZE: u64 = 64 * 1024;

/// What was written before the damage: every entry, and how many were reported durable.
struct Written {
    entries: Vec<(u64, u64, Vec<u8>)>,
    durable_end: u64,
    /// Offsets in the last segment where unsynced bytes start and end.
    unsynced: Option<(PathBuf, u64, u64)>,
}

fn opts() -> LogOptions {
    LogOptions {
        segment_size: SEGMENT_SIZE,
    }
}

/// Writes batches of random entries; all but the last `unsynced_batches` are synced.
fn write_log(dir: &Path, rng: &mut StdRng, batches: usize, unsynced_batches: usize) -> Written {
    let mut log = SegmentLog::open(dir, opts()).unwrap();
    let mut entries = Vec::new();
    let mut term = 1;
    let mut next = 0;
    let mut unsynced_start = None;
    for b in 0..batches {
        if rng.random_bool(0.2) {
            term += 1;
        }
        let n = rng.random_range(1..20);
        let datas: Vec<Vec<u8>> = (0..n)
            .map(|_| {
                let len = rng.random_range(0..2500);
                (0..len).map(|_| rng.random()).collect()
            })
            .collect();
        let batch: Vec<NewEntry<'_>> = datas
            .iter()
            .enumerate()
            .map(|(i, d)| NewEntry {
                term,
                index: next + i as u64,
                payload: d,
            })
            .collect();
        let synced = b + unsynced_batches < batches;
        if !synced && unsynced_start.is_none() {
            let segs = log.segment_summary();
            let last = segs.last().map(|s| (s.0.clone(), s.3));
            // Only meaningful if the batch goes to the same segment; recorded below.
            unsynced_start = last;
        }
        log.append(&batch).unwrap();
        for (i, d) in datas.into_iter().enumerate() {
            entries.push((term, next + i as u64, d));
        }
        next += n;
        if synced {
            log.sync().unwrap();
        }
    }
    let durable_end = log.durable_end();
    let segs = log.segment_summary();
    let unsynced = match (unsynced_start, segs.last()) {
        (Some((path, from)), Some(last)) if path == last.0 && last.3 > from => {
            Some((path, from, last.3))
        }
        _ => None,
    };
    drop(log);
    Written {
        entries,
        durable_end,
        unsynced,
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "LOCK")
        .collect();
    v.sort();
    v
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect()
}

fn flip(path: &Path, offset: u64, rng: &mut StdRng) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= rng.random_range(1..=255u8);
    f.write_all_at(&b, offset).unwrap();
}

fn zero(path: &Path, from: u64, to: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&vec![0u8; (to - from) as usize], from)
        .unwrap();
}

/// The outcome must be a clean refusal or a log holding a prefix with every durable entry.
fn verify(dir: &Path, w: &Written, what: &str) -> bool {
    match SegmentLog::open(dir, opts()) {
        Ok(log) => {
            let next = log.next_index();
            assert!(
                next >= w.durable_end,
                "{what}: recovered up to {next} but entries up to {} were durable",
                w.durable_end
            );
            assert!(next as usize <= w.entries.len(), "{what}: entries appeared");
            for (term, index, data) in &w.entries[..next as usize] {
                let e = log
                    .get(*index)
                    .unwrap_or_else(|| panic!("{what}: entry {index} missing"));
                assert_eq!(e.term, *term, "{what}: term of {index}");
                assert_eq!(
                    &e.payload[..],
                    &data[..],
                    "{what}: payload of {index} damaged"
                );
            }
            // A second open after the repair is clean and identical.
            drop(log);
            let again = SegmentLog::open(dir, opts()).unwrap();
            assert_eq!(again.next_index(), next, "{what}: second open differs");
            assert!(again.open_report().torn_tail.is_none());
            true
        }
        Err(e) => {
            let msg = e.to_string();
            eprintln!("{what}: refused: {msg}");
            match &e {
                StorageError::Corrupt { path, .. } => {
                    assert!(
                        msg.contains(&path.display().to_string()) && msg.contains("at byte"),
                        "{what}: error must name file and offset: {msg}"
                    );
                }
                StorageError::CorruptMeta { .. } => {}
                other => panic!("{what}: unexpected error kind: {other}"),
            }
            false
        }
    }
}

fn seed() -> u64 {
    let seed = std::env::var("CAIRN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test seed: {seed} (replay with CAIRN_CRASH_SEED={seed})");
    seed
}

#[test]
fn truncated_files_recover_every_durable_entry_or_refuse() {
    let mut rng = StdRng::seed_from_u64(seed());
    let (mut opened, mut refused) = (0, 0);
    for case in 0..60 {
        let dir = tempfile::tempdir().unwrap();
        let batches = rng.random_range(3..40);
        let w = write_log(dir.path(), &mut rng, batches, 2);
        let fs = files(dir.path());
        let victim = &fs[rng.random_range(0..fs.len())];
        let len = fs::metadata(victim).unwrap().len();
        let cut = rng.random_range(0..len.max(1));
        OpenOptions::new()
            .write(true)
            .open(victim)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let what = format!("case {case}: {} cut to {cut}", victim.display());
        if verify(dir.path(), &w, &what) {
            opened += 1
        } else {
            refused += 1
        }
    }
    eprintln!("truncation: {opened} opened, {refused} refused");
    assert!(
        refused > 0,
        "truncation inside data must be refused sometimes"
    );
}

#[test]
fn flipped_bytes_never_yield_a_damaged_entry() {
    let mut rng = StdRng::seed_from_u64(seed());
    let (mut opened, mut refused) = (0, 0);
    for case in 0..150 {
        let dir = tempfile::tempdir().unwrap();
        let batches = rng.random_range(3..40);
        let w = write_log(dir.path(), &mut rng, batches, 0);
        let fs = files(dir.path());
        let victim = fs[rng.random_range(0..fs.len())].clone();
        let len = fs::metadata(&victim).unwrap().len();
        // Aim at written bytes most of the time: a segment is mostly preallocated zeros.
        let hot = rng.random_bool(0.8);
        let mut offsets = Vec::new();
        for _ in 0..rng.random_range(1..4) {
            let limit = if hot && victim.extension().is_some_and(|e| e == "seg") {
                // Bytes used are at least the header; records follow.
                written_len(&victim).min(len)
            } else {
                len
            };
            let off = rng.random_range(0..limit.max(1));
            flip(&victim, off, &mut rng);
            offsets.push(off);
        }
        let what = format!("case {case}: {} flipped at {offsets:?}", victim.display());
        if verify(dir.path(), &w, &what) {
            opened += 1
        } else {
            refused += 1
        }
    }
    eprintln!("flips: {opened} opened, {refused} refused");
    assert!(refused > 0, "flips inside records must be refused");
}

#[test]
fn a_flipped_byte_past_the_end_of_the_last_segment_is_cut_and_nothing_is_lost() {
    let mut rng = StdRng::seed_from_u64(seed());
    for case in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let batches = rng.random_range(3..30);
        let w = write_log(dir.path(), &mut rng, batches, 0);
        let last = segments(dir.path()).pop().unwrap();
        let end = written_len(&last);
        if end + 64 >= SEGMENT_SIZE {
            continue; // the last segment is full: nothing lies past its end
        }
        let off = rng.random_range(end + 64..SEGMENT_SIZE);
        flip(&last, off, &mut rng);
        let what = format!(
            "case {case}: {} flipped at {off} (end {end})",
            last.display()
        );
        assert!(verify(dir.path(), &w, &what), "{what}: must open");
    }
}

/// Bytes up to the last non-zero byte of a file (the written part of a segment).
fn written_len(path: &Path) -> u64 {
    let b = fs::read(path).unwrap();
    b.iter().rposition(|&x| x != 0).map_or(0, |p| p as u64 + 1)
}

#[test]
fn a_torn_tail_is_cut_and_every_durable_entry_survives() {
    let mut rng = StdRng::seed_from_u64(seed());
    let mut cut = 0;
    for case in 0..80 {
        let dir = tempfile::tempdir().unwrap();
        let batches = rng.random_range(3..30);
        let w = write_log(dir.path(), &mut rng, batches, 3);
        let Some((path, from, to)) = w.unsynced.clone() else {
            continue;
        };
        // The sectors from some point of the unsynced write to its end never reached disk.
        let first_sector = from.div_ceil(512);
        let last_sector = to.div_ceil(512);
        let s = rng.random_range(first_sector..=last_sector);
        let at = (s * 512).max(from);
        if at >= to {
            continue;
        }
        zero(&path, at, to);
        let what = format!("case {case}: {} zeroed from {at} to {to}", path.display());
        assert!(
            verify(dir.path(), &w, &what),
            "{what}: a torn tail must be recovered, not refused"
        );
        cut += 1;
    }
    assert!(cut > 10, "too few torn-tail cases ran ({cut})");
}

#[test]
fn sectors_lost_out_of_order_recover_or_refuse_but_never_lie() {
    let mut rng = StdRng::seed_from_u64(seed());
    for case in 0..80 {
        let dir = tempfile::tempdir().unwrap();
        let batches = rng.random_range(3..30);
        let w = write_log(dir.path(), &mut rng, batches, 3);
        let Some((path, from, to)) = w.unsynced.clone() else {
            continue;
        };
        // One sector in the middle of the unsynced write never reached disk.
        let s = rng.random_range(from / 512..=to / 512);
        let (a, b) = ((s * 512).max(from), ((s + 1) * 512).min(to));
        if a >= b {
            continue;
        }
        zero(&path, a, b);
        verify(
            dir.path(),
            &w,
            &format!("case {case}: {} sector {a}..{b} lost", path.display()),
        );
    }
}

#[test]
fn a_lost_segment_file_is_refused() {
    let mut rng = StdRng::seed_from_u64(seed());
    for case in 0..30 {
        let dir = tempfile::tempdir().unwrap();
        let batches = rng.random_range(10..60);
        let w = write_log(dir.path(), &mut rng, batches, 1);
        let segs = segments(dir.path());
        let i = rng.random_range(0..segs.len());
        fs::remove_file(&segs[i]).unwrap();
        let what = format!("case {case}: {} deleted", segs[i].display());
        assert!(!verify(dir.path(), &w, &what), "{what}: must be refused");
    }
}

#[test]
fn garbage_files_never_panic() {
    let mut rng = StdRng::seed_from_u64(seed());
    for _ in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("{:020}.seg", rng.random_range(0..3u64));
        let len = rng.random_range(0..70_000usize);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if rng.random_bool(0.5) && len >= 8 {
            bytes[..8].copy_from_slice(b"CAIRNLOG");
        }
        fs::write(dir.path().join(name), &bytes).unwrap();
        if rng.random_bool(0.3) {
            let meta: Vec<u8> = (0..rng.random_range(0..100))
                .map(|_| rng.random())
                .collect();
            fs::write(dir.path().join("meta"), meta).unwrap();
        }
        let _ = SegmentLog::open(dir.path(), opts());
        let _ = SegmentLog::open_read_only(dir.path());
    }
}
