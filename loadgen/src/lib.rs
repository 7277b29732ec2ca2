//! `loadgen`: Cairn's load generator and latency-histogram tools.
//!
//! Built so far: the histogram formats (`.hgrm` writing and parsing, HdrHistogram interval
//! logs), `compare`, which plots percentile spectra of runs from any source, the seeded
//! workload generator and the recorder that keeps latencies honest. Driving a cluster
//! (`loadgen kv`) and `sweep` need Cairn's binary RPC servers (issue 3) and arrive with
//! issue 5.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod catalog;
pub mod compare;
pub mod gossip_sim;
pub mod hgrm;
pub mod kv;
pub mod linearizability;
pub mod measure;
pub mod swarm;
pub mod targets;
pub mod workload;
