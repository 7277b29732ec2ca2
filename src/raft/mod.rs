//! Raft: openraft on glommio.
//!
//! - [`rt`]: the async runtime (passes `openraft_rt::testing::Suite`).
//! - [`types`]: the type configuration and the binary form of log entry payloads.
//! - [`store`]: the log store over `cairn-storage`'s segment log and the KV state machine
//!   with `StateImage` snapshots (passes openraft's storage test suite).
//!
//! Not yet: the Raft network (server-to-server RPC), the sharded state machine on the
//! runtime's sequencer, and group commit across append calls (each `append` syncs once).

pub mod network;
pub mod rt;
pub mod store;
pub mod types;
pub mod wire;
