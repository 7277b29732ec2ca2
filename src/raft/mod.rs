//! Raft: openraft on glommio. Today: the async runtime ([`rt`]); the log store over
//! `cairn-storage` and the state machine over the shard runtime come next (issue 3).

pub mod rt;
pub mod store;
pub mod types;
