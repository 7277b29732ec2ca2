//! Model-based test: random sequences of append, sync, truncate, purge and close-and-reopen
//! run against the segment log and against a plain in-memory model; after every step every
//! read must agree.

use cairn_storage::{LogId, LogOptions, NewEntry, SegmentLog};
use proptest::prelude::*;

/// The in-memory model: the entries still readable, and the purge point.
#[derive(Debug, Default)]
struct Model {
    /// (term, index, payload), contiguous indexes.
    entries: Vec<(u64, u64, Vec<u8>)>,
    last_purged: Option<LogId>,
    /// Index of the next append.
    next: u64,
    last_term: u64,
}

impl Model {
    fn first_index(&self) -> u64 {
        self.entries.first().map_or(self.next, |e| e.1)
    }
    fn last_log_id(&self) -> Option<LogId> {
        match self.entries.last() {
            Some(e) => Some(LogId {
                term: e.0,
                index: e.1,
            }),
            None => self.last_purged,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Append `sizes.len()` entries with these payload sizes; `bump` raises the term first.
    Append {
        sizes: Vec<usize>,
        bump: bool,
    },
    Sync,
    /// Truncate after the entry at this fraction of the readable range.
    Truncate(f64),
    /// Purge up to the entry at this fraction of the readable range.
    Purge(f64),
    /// Purge beyond the last entry, as installing a leader's snapshot does.
    PurgeBeyond(u64),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec(prop_oneof![0..64usize, 64..3000usize, Just(9000usize)], 1..12), any::<bool>())
            .prop_map(|(sizes, bump)| Op::Append { sizes, bump }),
        2 => Just(Op::Sync),
        1 => (0.0..1.0f64).prop_map(Op::Truncate),
        1 => (0.0..1.0f64).prop_map(Op::Purge),
        1 => (1..5u64).prop_map(Op::PurgeBeyond),
        2 => Just(Op::Reopen),
    ]
}

fn payload(index: u64, term: u64, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (index as usize * 31 + term as usize * 7 + i) as u8)
        .collect()
}

fn check(log: &SegmentLog, model: &Model) {
    assert_eq!(log.next_index(), model.next, "next index");
    assert_eq!(log.last_log_id(), model.last_log_id(), "last log id");
    assert_eq!(log.last_purged(), model.last_purged, "last purged");
    let first = model.first_index();
    assert_eq!(log.first_index(), first, "first index");
    for (term, index, data) in &model.entries {
        let e = log
            .get(*index)
            .unwrap_or_else(|| panic!("entry {index} missing"));
        assert_eq!((e.term, e.index), (*term, *index));
        assert_eq!(&e.payload[..], &data[..], "payload of {index}");
    }
    if first > 0 {
        assert!(log.get(first - 1).is_none(), "purged entry still readable");
    }
    assert!(log.get(model.next).is_none(), "entry past the end readable");
    let all = log.range(0..u64::MAX);
    assert_eq!(all.len(), model.entries.len(), "range length");
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 64 * 1024,
    };
    let mut log = SegmentLog::open(dir.path(), opts.clone()).unwrap();
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Append { sizes, bump } => {
                if bump {
                    model.last_term += 1;
                }
                let term = model.last_term;
                let datas: Vec<Vec<u8>> = sizes
                    .iter()
                    .enumerate()
                    .map(|(i, s)| payload(model.next + i as u64, term, *s))
                    .collect();
                let entries: Vec<NewEntry<'_>> = datas
                    .iter()
                    .enumerate()
                    .map(|(i, d)| NewEntry {
                        term,
                        index: model.next + i as u64,
                        payload: d,
                    })
                    .collect();
                log.append(&entries).unwrap();
                for (i, d) in datas.into_iter().enumerate() {
                    model.entries.push((term, model.next + i as u64, d));
                }
                model.next += sizes.len() as u64;
            }
            Op::Sync => {
                assert_eq!(log.sync().unwrap(), model.next);
            }
            Op::Truncate(f) => {
                if model.entries.is_empty() {
                    continue;
                }
                let k = (f * model.entries.len() as f64) as usize;
                let after = model.entries[k].1;
                log.truncate_after(after).unwrap();
                model.entries.truncate(k + 1);
                model.next = after + 1;
                model.last_term = model.entries.last().map_or(model.last_term, |e| e.0);
            }
            Op::Purge(f) => {
                if model.entries.is_empty() {
                    continue;
                }
                let k = (f * model.entries.len() as f64) as usize;
                let (term, index, _) = model.entries[k];
                let id = LogId { term, index };
                log.purge_to(id).unwrap();
                model.entries.drain(..=k);
                model.last_purged = Some(id);
            }
            Op::PurgeBeyond(gap) => {
                let id = LogId {
                    term: model.last_term + 1,
                    index: model.next + gap,
                };
                log.purge_to(id).unwrap();
                model.entries.clear();
                model.last_purged = Some(id);
                model.next = id.index + 1;
                model.last_term = id.term;
            }
            Op::Reopen => {
                log.sync().unwrap();
                drop(log);
                log = SegmentLog::open(dir.path(), opts.clone()).unwrap();
                assert!(
                    log.open_report().torn_tail.is_none(),
                    "clean close left a torn tail"
                );
            }
        }
        check(&log, &model);
    }
    drop(log);
    let log = SegmentLog::open(dir.path(), opts).unwrap();
    check(&log, &model);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_read_matches_the_model_after_any_sequence_of_operations(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        run(ops);
    }
}

#[test]
fn a_log_that_starts_after_a_snapshot_install_accepts_the_next_index() {
    run(vec![
        Op::PurgeBeyond(10),
        Op::Append {
            sizes: vec![10, 20],
            bump: true,
        },
        Op::Reopen,
        Op::Append {
            sizes: vec![3000; 40],
            bump: false,
        },
        Op::Truncate(0.5),
        Op::Reopen,
    ]);
}
