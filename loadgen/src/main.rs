//! `loadgen`: drives Cairn clusters and compares latency histograms (issue 5).
//!
//! It needs the binary RPC client from the servers issue, which does not exist yet, so
//! this binary only says so instead of pretending to measure anything.

fn main() {
    eprintln!(
        "loadgen: not built yet: it needs Cairn's binary RPC servers (issue 3); \
         see README.md for what works today"
    );
    std::process::exit(2);
}
