//! Group commit for callers on several threads (tools, tests, benchmarks).
//!
//! Each caller appends under a short lock and waits for durability. Whoever finds no sync
//! running becomes the syncer: it prepares a sync covering everything written so far, runs
//! the fdatasync without holding the lock, and wakes everyone it covered. Appends that
//! arrive during a sync are covered by the next one, so N concurrent writers share
//! fdatasyncs instead of paying one each.

use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::error::Result;
use crate::log::{NewEntry, SegmentLog};

#[derive(Debug)]
struct State {
    log: SegmentLog,
    /// A thread is running an fdatasync right now.
    syncing: bool,
}

/// A [`SegmentLog`] shared by threads that each want their appends durable.
#[derive(Debug)]
pub struct GroupCommitLog {
    state: Mutex<State>,
    synced: Condvar,
}

impl GroupCommitLog {
    pub fn new(log: SegmentLog) -> GroupCommitLog {
        GroupCommitLog {
            state: Mutex::new(State {
                log,
                syncing: false,
            }),
            synced: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the log half-updated in a way this
        // type relies on (the syncer flag is reset below), so keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `entries` and returns once they are durable, with the index after them.
    pub fn append_durable(&self, entries: &[NewEntry<'_>]) -> Result<u64> {
        let mut st = self.lock();
        st.log.append(entries)?;
        let mine = st.log.next_index();
        self.wait_durable(st, mine)
    }

    /// Appends `payloads` as the next entries with `term`, and returns the index range
    /// they got once they are durable. Writers that do not pick indexes themselves use this.
    pub fn append_next_durable(&self, term: u64, payloads: &[&[u8]]) -> Result<Range<u64>> {
        let mut st = self.lock();
        let first = st.log.next_index();
        let entries: Vec<NewEntry<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| NewEntry {
                term,
                index: first + i as u64,
                payload: p,
            })
            .collect();
        st.log.append(&entries)?;
        let end = st.log.next_index();
        self.wait_durable(st, end)?;
        Ok(first..end)
    }

    fn wait_durable<'a>(&'a self, mut st: MutexGuard<'a, State>, mine: u64) -> Result<u64> {
        loop {
            if st.log.durable_end() >= mine {
                return Ok(mine);
            }
            if st.syncing {
                st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let Some(pending) = st.log.prepare_sync()? else {
                continue;
            };
            st.syncing = true;
            drop(st);
            pending.run();
            st = self.lock();
            st.log.complete_sync(pending);
            st.syncing = false;
            self.synced.notify_all();
        }
    }

    /// Runs `f` on the log once no sync is running (for reads, truncation, purge).
    pub fn with_log<R>(&self, f: impl FnOnce(&mut SegmentLog) -> R) -> R {
        let mut st = self.lock();
        while st.syncing {
            st = self.synced.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        f(&mut st.log)
    }

    pub fn into_inner(self) -> SegmentLog {
        self.state
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .log
    }
}
