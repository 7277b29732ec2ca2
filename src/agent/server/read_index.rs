//! Quorum confirmations shared by the consistent reads that wait at the same time.
//!
//! openraft answers each `ensure_linearizable(ReadIndex)` with a heartbeat round of its
//! own (`send_heartbeat` on every call), so 64 concurrent consistent reads cost 64 rounds
//! of messages to every follower. Here the reads that arrive while a round is under way
//! wait for the next one, which confirms them all: it starts after each of them arrived,
//! so its read index covers everything they must see (the Raft dissertation's batching
//! of read-only requests, §6.4).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use futures_channel::oneshot;
use openraft::raft::ReadPolicy;

use super::CairnRaft;

#[derive(Default)]
struct Waiting {
    /// A round is under way (its task runs rounds until nobody waits).
    running: Cell<bool>,
    /// Reads that arrived since the current round started.
    next: RefCell<Vec<oneshot::Sender<bool>>>,
}

/// One confirmation round at a time for every consistent read on this server.
pub(super) struct ReadIndexBatch {
    raft: CairnRaft,
    waiting: Rc<Waiting>,
}

impl ReadIndexBatch {
    pub(super) fn new(raft: CairnRaft) -> ReadIndexBatch {
        ReadIndexBatch {
            raft,
            waiting: Rc::new(Waiting::default()),
        }
    }

    /// Waits until a quorum confirmed this server's leadership in a round that started
    /// after the call, and the state machine applied what was committed when the round
    /// started. False if it could not (not the leader, or no quorum answered in time).
    pub(super) async fn confirm(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.waiting.next.borrow_mut().push(tx);
        if !self.waiting.running.replace(true) {
            let (raft, waiting) = (self.raft.clone(), self.waiting.clone());
            glommio::spawn_local(async move {
                loop {
                    let batch = std::mem::take(&mut *waiting.next.borrow_mut());
                    if batch.is_empty() {
                        waiting.running.set(false);
                        return;
                    }
                    let ok = raft
                        .ensure_linearizable(ReadPolicy::ReadIndex)
                        .await
                        .is_ok();
                    for tx in batch {
                        let _ = tx.send(ok);
                    }
                }
            })
            .detach();
        }
        rx.await.unwrap_or(false)
    }
}
