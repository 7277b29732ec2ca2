//! Snapshot files: round trip, in-place reads, retention, and refusal of damaged files.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use cairn_storage::snapshot::{list_snapshots, write_snapshot, Snapshot, SNAPSHOT_HEADER_LEN};
use cairn_storage::state::{KvRecord, StateImage};
use cairn_storage::{LogId, StorageError};

fn image(keys: usize) -> StateImage {
    StateImage {
        kv: (0..keys)
            .map(|i| KvRecord {
                key: format!("service/web/{i:08}").into_bytes(),
                value: format!("value-{i}").into_bytes(),
                create_index: i as u64 + 1,
                modify_index: i as u64 * 2 + 1,
                lock_index: (i % 3) as u64,
                flags: i as u64 ^ 0xfeed,
                session: (i % 5 == 0).then(|| format!("session-{i}")),
            })
            .collect(),
        catalog: b"an encoded catalog".to_vec(),
        tombstones: vec![cairn_storage::state::TombstoneRecord {
            key: b"gone".to_vec(),
            delete_index: 77,
        }],
        kv_index: 4242,
        membership: vec![1, 2, 3],
        ..StateImage::default()
    }
}

#[test]
fn a_snapshot_round_trips_and_is_read_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(1000);
    let last = LogId {
        term: 3,
        index: 4242,
    };
    let path = write_snapshot(dir.path(), Some(last), &img, 2).unwrap();
    let snap = Snapshot::<StateImage>::open(&path).unwrap();
    assert_eq!(snap.last_included(), Some(last));
    let st = snap.state();
    assert_eq!(st.kv.len(), 1000);
    let r = st.get(b"service/web/00000500").expect("key present");
    assert_eq!(r.value.as_slice(), b"value-500");
    assert_eq!(r.modify_index, 1001);
    assert_eq!(r.session.as_ref().map(|s| s.as_str()), Some("session-500"));
    assert!(st.get(b"service/web/zzz").is_none());
    let back: StateImage =
        rkyv::deserialize::<StateImage, rkyv::rancor::Error>(snap.state()).unwrap();
    assert_eq!(back, img);
}

#[test]
fn only_the_newest_snapshots_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=5u64 {
        let last = LogId {
            term: 1,
            index: i * 100,
        };
        write_snapshot(dir.path(), Some(last), &image(3), 2).unwrap();
    }
    let left = list_snapshots(dir.path()).unwrap();
    assert_eq!(left.len(), 2);
    let newest = Snapshot::<StateImage>::open(&left[0]).unwrap();
    assert_eq!(newest.last_included().unwrap().index, 500);
    let second = Snapshot::<StateImage>::open(&left[1]).unwrap();
    assert_eq!(second.last_included().unwrap().index, 400);
}

fn expect_corrupt(path: &std::path::Path, needle: &str) {
    match Snapshot::<StateImage>::open(path) {
        Err(StorageError::CorruptSnapshot { reason, path: p }) => {
            assert_eq!(p, path);
            assert!(
                reason.contains(needle),
                "reason {reason:?} lacks {needle:?}"
            );
        }
        other => panic!("expected a corrupt-snapshot error, got {other:?}"),
    }
}

#[test]
fn a_truncated_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_snapshot(dir.path(), None, &image(100), 2).unwrap();
    let len = fs::metadata(&path).unwrap().len();
    for cut in [0, 10, SNAPSHOT_HEADER_LEN as u64, len / 2, len - 1] {
        let copy = dir.path().join(format!("cut-{cut}.snap"));
        fs::copy(&path, &copy).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let needle = if cut < SNAPSHOT_HEADER_LEN as u64 {
            "shorter than"
        } else {
            "truncated"
        };
        expect_corrupt(&copy, needle);
    }
}

#[test]
fn a_flipped_byte_anywhere_in_a_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_snapshot(dir.path(), None, &image(50), 2).unwrap();
    let len = fs::metadata(&path).unwrap().len();
    // Every byte of the header and a spread of body bytes.
    let offsets = (0..SNAPSHOT_HEADER_LEN as u64).chain((64..len).step_by(97));
    for off in offsets {
        // Reserved header bytes are covered by the header checksum too.
        let copy = dir.path().join("flip.snap");
        fs::copy(&path, &copy).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&copy)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off).unwrap();
        f.write_all_at(&[b[0] ^ 0x5a], off).unwrap();
        drop(f);
        assert!(
            Snapshot::<StateImage>::open(&copy).is_err(),
            "flip at {off} was accepted"
        );
    }
}

#[test]
fn a_valid_checksum_over_a_bad_archive_is_refused_by_validation() {
    // The checksums only catch accidents; bytecheck stops a well-formed file whose archive
    // is not a StateImage (here: random bytes with a correct header and crc).
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let path = cairn_storage::snapshot::write_snapshot_bytes(dir.path(), None, &body, 2).unwrap();
    expect_corrupt(&path, "archive does not validate");
}

// ---- transfer to another server ---------------------------------------------------------

use cairn_storage::transfer::{Chunk, ChunkReader, SnapshotReceiver, DEFAULT_MAX_SNAPSHOT_BYTES};

#[test]
fn a_snapshot_sent_in_chunks_is_installed_whole_and_validates() {
    let from = tempfile::tempdir().unwrap();
    let to = tempfile::tempdir().unwrap();
    let last = LogId {
        term: 2,
        index: 900,
    };
    let path = write_snapshot(from.path(), Some(last), &image(3000), 2).unwrap();
    let reader = ChunkReader::open(&path, 4096).unwrap();
    let mut rx = SnapshotReceiver::begin(
        to.path(),
        reader.name(),
        reader.total_len(),
        DEFAULT_MAX_SNAPSHOT_BYTES,
    )
    .unwrap();
    let mut chunks = 0;
    for c in reader {
        rx.accept(&c).unwrap();
        chunks += 1;
    }
    assert!(chunks > 10);
    let installed = rx.finish().unwrap();
    assert_eq!(installed.file_name(), path.file_name());
    let snap = Snapshot::<StateImage>::open(&installed).unwrap();
    assert_eq!(snap.last_included(), Some(last));
    assert_eq!(snap.state().kv.len(), 3000);
    assert_eq!(
        list_snapshots(to.path()).unwrap().len(),
        1,
        "temp file left behind"
    );
}

#[test]
fn out_of_order_overlong_or_incomplete_transfers_are_refused() {
    let from = tempfile::tempdir().unwrap();
    let to = tempfile::tempdir().unwrap();
    let path = write_snapshot(from.path(), None, &image(100), 2).unwrap();
    let chunks: Vec<Chunk> = ChunkReader::open(&path, 512).unwrap().collect();
    let total: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
    let name = path.file_name().unwrap().to_str().unwrap();

    let mut rx =
        SnapshotReceiver::begin(to.path(), name, total, DEFAULT_MAX_SNAPSHOT_BYTES).unwrap();
    rx.accept(&chunks[0]).unwrap();
    assert!(rx.accept(&chunks[2]).is_err(), "gap accepted");
    assert!(rx.accept(&chunks[0]).is_err(), "overlap accepted");
    assert_eq!(rx.received(), chunks[0].data.len() as u64);
    assert!(rx.finish().is_err(), "incomplete transfer installed");
    assert!(
        std::fs::read_dir(to.path()).unwrap().next().is_none(),
        "partial file left"
    );

    let mut rx = SnapshotReceiver::begin(to.path(), name, 10, DEFAULT_MAX_SNAPSHOT_BYTES).unwrap();
    assert!(
        rx.accept(&chunks[0]).is_err(),
        "chunk past the announced length"
    );
    rx.abort();

    assert!(SnapshotReceiver::begin(to.path(), name, 1 << 20, 1000).is_err());
    for bad in [
        "../snap-00000000000000000001-00000000000000000001.snap",
        "meta",
        "snap-1-2.snap",
    ] {
        assert!(
            SnapshotReceiver::begin(to.path(), bad, 10, DEFAULT_MAX_SNAPSHOT_BYTES).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn a_chunk_damaged_in_flight_is_caught_when_the_installed_file_is_opened() {
    let from = tempfile::tempdir().unwrap();
    let to = tempfile::tempdir().unwrap();
    let path = write_snapshot(from.path(), None, &image(500), 2).unwrap();
    let reader = ChunkReader::open(&path, 1000).unwrap();
    let name = reader.name().to_string();
    let mut rx = SnapshotReceiver::begin(
        to.path(),
        &name,
        reader.total_len(),
        DEFAULT_MAX_SNAPSHOT_BYTES,
    )
    .unwrap();
    for (i, c) in reader.enumerate() {
        let c = if i == 3 {
            let mut d = c.data.to_vec();
            d[10] ^= 0xff;
            Chunk {
                offset: c.offset,
                data: d.into(),
            }
        } else {
            c
        };
        rx.accept(&c).unwrap();
    }
    let installed = rx.finish().unwrap();
    assert!(Snapshot::<StateImage>::open(&installed).is_err());
}

#[test]
fn an_image_of_borrowed_records_writes_the_same_file_as_the_owned_image() {
    use cairn_storage::state::{KvRecordRef, StateImageOf, TombstoneRecord};
    let mut owned = image(500);
    owned.kv[7].session = Some("sess-7".into());
    owned.kv[9].value.clear();
    owned.tombstones.push(TombstoneRecord {
        key: b"zz/gone".to_vec(),
        delete_index: 77,
    });
    owned.catalog = vec![1, 2, 3];
    owned.membership = vec![9];
    let borrowed = StateImageOf {
        kv: owned.kv.iter().map(KvRecordRef::from),
        tombstones: owned.tombstones.clone(),
        kv_index: owned.kv_index,
        sessions: owned.sessions.clone(),
        lock_delays: owned.lock_delays.clone(),
        catalog: owned.catalog.clone(),
        membership: owned.membership.clone(),
    };
    let last = LogId { term: 2, index: 40 };
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let pa = write_snapshot(a.path(), Some(last), &owned, 2).unwrap();
    let pb = write_snapshot(b.path(), Some(last), &borrowed, 2).unwrap();
    assert_eq!(std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
    // And the streamed file is the one a whole in-memory archive makes.
    let body = rkyv::to_bytes::<rkyv::rancor::Error>(&owned).unwrap();
    let c = tempfile::tempdir().unwrap();
    let pc = cairn_storage::snapshot::write_snapshot_bytes(c.path(), Some(last), &body, 2).unwrap();
    assert_eq!(std::fs::read(&pa).unwrap(), std::fs::read(&pc).unwrap());
    let snap = Snapshot::<StateImage>::open(&pb).unwrap();
    let r = snap.state().get(&owned.kv[7].key).unwrap();
    assert_eq!(r.session.as_ref().map(|s| s.as_str()), Some("sess-7"));
    assert_eq!(snap.state().kv.len(), 500);
}
