//! The log's contract with its caller: clear errors for bad requests, and nothing changed.

use cairn_storage::{GroupCommitLog, LogId, LogOptions, NewEntry, SegmentLog, StorageError, Vote};

fn small() -> LogOptions {
    LogOptions {
        segment_size: 64 * 1024,
    }
}

fn e(term: u64, index: u64, payload: &[u8]) -> NewEntry<'_> {
    NewEntry {
        term,
        index,
        payload,
    }
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = SegmentLog::open(dir.path(), small()).unwrap();
    match SegmentLog::open(dir.path(), small()) {
        Err(StorageError::Locked { .. }) => {}
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(log);
    SegmentLog::open(dir.path(), small()).unwrap();
}

#[test]
fn an_append_that_leaves_a_gap_or_lowers_the_term_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentLog::open(dir.path(), small()).unwrap();
    log.append(&[e(2, 0, b"a"), e(2, 1, b"b")]).unwrap();
    assert!(matches!(
        log.append(&[e(2, 3, b"gap")]),
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        log.append(&[e(2, 2, b"ok"), e(2, 4, b"gap")]),
        Err(StorageError::Invalid(_))
    ));
    assert!(matches!(
        log.append(&[e(1, 2, b"old term")]),
        Err(StorageError::Invalid(_))
    ));
    assert_eq!(log.next_index(), 2);
    assert!(log.get(2).is_none());
}

#[test]
fn a_log_remembers_where_it_started_so_losing_its_first_segment_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SegmentLog::open(dir.path(), small()).unwrap();
        let big = vec![7u8; 30_000];
        let entries: Vec<NewEntry<'_>> = (5..12).map(|i| e(1, i, &big)).collect();
        log.append(&entries).unwrap();
        log.sync().unwrap();
        assert!(log.segment_summary().len() >= 2);
    }
    {
        let log = SegmentLog::open(dir.path(), small()).unwrap();
        assert_eq!(log.first_index(), 5);
        assert_eq!(log.get(5).unwrap().payload.len(), 30_000);
    }
    std::fs::remove_file(dir.path().join(format!("{:020}.seg", 5))).unwrap();
    assert!(matches!(
        SegmentLog::open(dir.path(), small()),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn an_entry_larger_than_a_segment_is_refused_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentLog::open(dir.path(), small()).unwrap();
    let max = log.max_payload();
    let big = vec![1u8; max + 1];
    match log.append(&[e(1, 0, &big)]) {
        Err(StorageError::EntryTooLarge { size, limit }) => {
            assert_eq!((size, limit), (max + 1, max));
        }
        other => panic!("expected EntryTooLarge, got {other:?}"),
    }
    let fits = vec![2u8; max];
    log.append(&[e(1, 0, &fits)]).unwrap();
    log.append(&[e(1, 1, &fits)]).unwrap();
    log.sync().unwrap();
    assert_eq!(log.get(1).unwrap().payload.len(), max);
}

#[test]
fn a_read_only_log_refuses_every_change() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SegmentLog::open(dir.path(), small()).unwrap();
        log.append(&[e(1, 0, b"a")]).unwrap();
        log.sync().unwrap();
    }
    let mut ro = SegmentLog::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.get(0).unwrap().payload.as_ref(), b"a");
    assert!(ro.append(&[e(1, 1, b"b")]).is_err());
    assert!(ro.truncate_after(0).is_err());
    assert!(ro.purge_to(LogId { term: 1, index: 0 }).is_err());
    assert!(ro
        .save_vote(Vote {
            term: 1,
            node_id: 1,
            committed: false
        })
        .is_err());
}

#[test]
fn vote_and_committed_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let vote = Vote {
        term: 7,
        node_id: 3,
        committed: true,
    };
    let committed = Some(LogId { term: 7, index: 0 });
    {
        let mut log = SegmentLog::open(dir.path(), small()).unwrap();
        log.append(&[e(7, 0, b"a")]).unwrap();
        log.save_vote(vote).unwrap();
        log.save_committed(committed).unwrap();
    }
    let log = SegmentLog::open(dir.path(), small()).unwrap();
    assert_eq!(log.meta().vote, Some(vote));
    assert_eq!(log.meta().committed, committed);
}

#[test]
fn an_entry_is_durable_only_after_a_sync_that_covers_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentLog::open(dir.path(), small()).unwrap();
    log.append(&[e(1, 0, b"a")]).unwrap();
    assert_eq!(log.durable_end(), 0);
    let pending = log.prepare_sync().unwrap().expect("dirty");
    // Written after the sync was prepared: not covered by it.
    log.append(&[e(1, 1, b"b")]).unwrap();
    pending.run();
    log.complete_sync(pending);
    assert_eq!(log.durable_end(), 1);
    log.sync().unwrap();
    assert_eq!(log.durable_end(), 2);
}

#[test]
fn a_sync_prepared_before_a_truncation_does_not_cover_rewritten_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentLog::open(dir.path(), small()).unwrap();
    log.append(&[e(1, 0, b"a"), e(1, 1, b"b"), e(1, 2, b"c")])
        .unwrap();
    let pending = log.prepare_sync().unwrap().expect("dirty");
    log.truncate_after(0).unwrap();
    log.append(&[e(2, 1, b"B"), e(2, 2, b"C")]).unwrap();
    pending.run();
    log.complete_sync(pending);
    assert_eq!(
        log.durable_end(),
        1,
        "rewritten entries are not durable yet"
    );
}

#[test]
fn concurrent_writers_share_fdatasyncs_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = GroupCommitLog::new(SegmentLog::open(dir.path(), small()).unwrap());
    let ranges = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..8u8 {
            let (log, ranges) = (&log, &ranges);
            s.spawn(move || {
                for i in 0..50u8 {
                    let r = log.append_next_durable(1, &[&[t, i]]).unwrap();
                    ranges.lock().unwrap().push((r.start, t, i));
                }
            });
        }
    });
    let log = log.into_inner();
    assert_eq!(log.durable_end(), 400);
    drop(log);
    let log = SegmentLog::open(dir.path(), small()).unwrap();
    for (index, t, i) in ranges.into_inner().unwrap() {
        assert_eq!(log.get(index).unwrap().payload.as_ref(), &[t, i]);
    }
}

#[test]
fn truncating_everything_leaves_an_empty_log_that_starts_again_at_zero() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = SegmentLog::open(dir.path(), small()).unwrap();
        log.append(&[e(1, 0, b"a"), e(1, 1, b"b")]).unwrap();
        log.sync().unwrap();
        log.truncate_all().unwrap();
        assert_eq!(log.next_index(), 0);
        assert!(log.last_log_id().is_none());
        log.append(&[e(2, 0, b"x")]).unwrap();
        log.sync().unwrap();
    }
    let log = SegmentLog::open(dir.path(), small()).unwrap();
    assert_eq!(log.get(0).unwrap().payload.as_ref(), b"x");
    assert_eq!(log.next_index(), 1);
}

#[test]
fn a_noted_committed_id_is_persisted_with_the_next_metadata_write() {
    let dir = tempfile::tempdir().unwrap();
    let c = Some(LogId { term: 2, index: 1 });
    {
        let mut log = SegmentLog::open(dir.path(), small()).unwrap();
        log.append(&[e(2, 0, b"a"), e(2, 1, b"b")]).unwrap();
        log.note_committed(c);
        assert_eq!(log.meta().committed, c, "readable at once");
    }
    // Not persisted by itself (it may lag)...
    {
        let mut log = SegmentLog::open(dir.path(), small()).unwrap();
        assert_eq!(log.meta().committed, None);
        log.note_committed(c);
        log.save_vote(Vote {
            term: 2,
            node_id: 1,
            committed: true,
        })
        .unwrap();
    }
    // ...but it rides along with the next metadata write.
    let log = SegmentLog::open(dir.path(), small()).unwrap();
    assert_eq!(log.meta().committed, c);
}

#[test]
fn entries_read_before_a_purge_inside_a_segment_still_read_the_same_bytes() {
    // The purge gives back the resident pages of the purged records (MADV_DONTNEED):
    // payloads handed out earlier must read the same bytes, as must what remains.
    let dir = tempfile::tempdir().unwrap();
    let mut log = SegmentLog::open(
        dir.path(),
        LogOptions {
            segment_size: 1 << 20,
        },
    )
    .unwrap();
    let payload = |i: u64| vec![(i % 251) as u8; 3000 + i as usize];
    let payloads: Vec<Vec<u8>> = (1..200).map(payload).collect();
    let entries: Vec<NewEntry<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| e(1, i as u64 + 1, p))
        .collect();
    log.append(&entries).unwrap();
    log.sync().unwrap();
    let held = log.range(1..200);
    log.purge_to(LogId {
        term: 1,
        index: 150,
    })
    .unwrap();
    for en in &held {
        assert_eq!(&en.payload[..], &payload(en.index)[..], "held {}", en.index);
    }
    assert!(log.get(150).is_none());
    for i in 151..200 {
        assert_eq!(&log.get(i).unwrap().payload[..], &payload(i)[..]);
    }
    drop(held);
    drop(log);
    let log = SegmentLog::open(dir.path(), small()).unwrap();
    assert_eq!(&log.get(199).unwrap().payload[..], &payload(199)[..]);
}
