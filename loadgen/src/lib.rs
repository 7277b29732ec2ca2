//! `loadgen`: Cairn's load generator and latency-histogram tools.
//!
//! Built so far: the histogram formats (`.hgrm` writing and parsing) and `compare`, which
//! plots percentile spectra of runs from any source. Driving a cluster (`loadgen kv`) and
//! `sweep` need Cairn's binary RPC servers (issue 3) and arrive with issue 5.
#![forbid(unsafe_code)]

pub mod compare;
pub mod hgrm;
