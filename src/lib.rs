//! The Cairn agent as a library: the pieces the `cairn` binary is built from.
//!
//! - [`kv`]: the KV state machine with Consul's semantics (indexes, check-and-set,
//!   transactions, tombstones, blocking-query wake-ups), partitioned into shards so each
//!   core owns one.
//! - [`catalog`]: nodes, services and health checks with Consul's semantics, replicated
//!   on every core.
//! - [`runtime`]: one glommio executor per core, each owning a KV shard, talking over a
//!   channel mesh; executor 0 sequences writes and cross-shard reads.
//! - [`raft`]: openraft's async runtime on glommio.
//! - [`health`]: service and check definitions, and the agent's check runner (TCP, HTTP,
//!   script and TTL checks on their own threads).
//! - [`http`]: Consul's HTTP API, translated to and from the RPC protocol.
//! - [`dns`]: Consul's DNS interface (node and service lookups, SRV, RFC 2782) over a
//!   view of the catalog, served on UDP and TCP.
//! - [`preflight`]: checks a machine's limits and kernel settings against what an agent
//!   needs (`cairn debug preflight`).
//!
//! The Raft integration, the server and client roles and the interfaces arrive with their
//! issues; see ARCHITECTURE.md.
#![forbid(unsafe_code)]

pub mod agent;
pub mod catalog;
pub mod client;
pub mod dns;
pub mod gossip;
pub mod health;
pub mod http;
pub mod kv;
pub mod preflight;
pub mod raft;
pub mod runtime;
