//! Honest latency recording: one histogram for the whole run, one per interval for the
//! progress line and the interval log, errors counted by kind and never mixed into the
//! latencies.
//!
//! Latencies are recorded in microseconds, from 1 µs to 60 s, with 3 significant digits.
//! In an open-loop run the caller measures from the *intended* send time (see
//! [`crate::workload::intended_offset`]), which corrects coordinated omission.

use std::fmt;
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

/// Highest latency recorded; larger values are clamped to it (and counted in `clamped`).
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// Kinds of failed operations, shown next to the latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No answer before the deadline.
    Timeout,
    /// The server was not the leader and the retry budget ran out.
    NotLeader,
    /// A check-and-set lost its race (an expected outcome, counted apart).
    CasFailed,
    /// Anything else (connection lost, server error).
    Other,
}

const KINDS: [ErrorKind; 4] = [
    ErrorKind::Timeout,
    ErrorKind::NotLeader,
    ErrorKind::CasFailed,
    ErrorKind::Other,
];

impl ErrorKind {
    fn slot(self) -> usize {
        self as usize
    }
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeouts",
            ErrorKind::NotLeader => "not_leader",
            ErrorKind::CasFailed => "cas_failed",
            ErrorKind::Other => "other_errors",
        }
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static bounds are valid")
}

/// One second (or interval) of the run, for the progress line.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub at: Duration,
    pub ops_per_s: f64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>6.1}s {:>10.0} ops/s  errors {:>6}  p50 {:>8.3} ms  p99 {:>8.3} ms  p99.9 {:>8.3} ms",
            self.at.as_secs_f64(),
            self.ops_per_s,
            self.errors,
            self.p50_us as f64 / 1e3,
            self.p99_us as f64 / 1e3,
            self.p999_us as f64 / 1e3
        )
    }
}

/// Records a run.
pub struct Recorder {
    total: Histogram<u64>,
    interval: Histogram<u64>,
    interval_start: Duration,
    errors: [u64; 4],
    interval_errors: u64,
    clamped: u64,
    /// Each closed interval: start, length, and the histogram, deflate-compressed (small
    /// enough to keep a long run's intervals in memory until the log is written).
    intervals: Vec<(Duration, Duration, Vec<u8>)>,
    serializer: V2DeflateSerializer,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("ops", &self.total.len())
            .field("errors", &self.errors)
            .field("intervals", &self.intervals.len())
            .finish()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            total: new_hist(),
            interval: new_hist(),
            interval_start: Duration::ZERO,
            errors: [0; 4],
            interval_errors: 0,
            clamped: 0,
            intervals: Vec::new(),
            serializer: V2DeflateSerializer::new(),
        }
    }
}

impl Recorder {
    /// Records one successful operation's latency.
    pub fn record(&mut self, latency: Duration) {
        let mut us = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        if us > MAX_LATENCY_US {
            us = MAX_LATENCY_US;
            self.clamped += 1;
        }
        let us = us.max(1);
        // In bounds by construction: recording cannot fail.
        let _ = self.total.record(us);
        let _ = self.interval.record(us);
    }

    /// Counts a failed operation; its latency is not recorded.
    pub fn error(&mut self, kind: ErrorKind) {
        self.errors[kind.slot()] += 1;
        self.interval_errors += 1;
    }

    /// Closes the interval that ends at `now` (time since the run started).
    pub fn tick(&mut self, now: Duration) -> Progress {
        let len = now.saturating_sub(self.interval_start);
        let secs = len.as_secs_f64().max(1e-9);
        let h = &self.interval;
        let p = Progress {
            at: now,
            ops_per_s: h.len() as f64 / secs,
            errors: self.interval_errors,
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
        };
        let mut buf = Vec::new();
        if self.serializer.serialize(h, &mut buf).is_ok() {
            self.intervals.push((self.interval_start, len, buf));
        }
        self.interval.reset();
        self.interval_errors = 0;
        self.interval_start = now;
        p
    }

    pub fn total(&self) -> &Histogram<u64> {
        &self.total
    }

    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.slot()]
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Latencies above [`MAX_LATENCY_US`] that were recorded as the maximum.
    pub fn clamped(&self) -> u64 {
        self.clamped
    }

    /// The HdrHistogram interval log (`.hlog`) of every closed interval.
    pub fn interval_log(&self, start: SystemTime) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut ser = V2DeflateSerializer::new();
        let mut de = Deserializer::new();
        {
            let mut log = IntervalLogWriterBuilder::new()
                .add_comment("loadgen (Cairn): latencies in microseconds")
                .with_start_time(start)
                .with_base_time(start)
                .with_max_value_divisor(1000.0)
                .begin_log_with(&mut out, &mut ser)?;
            for (at, len, bytes) in &self.intervals {
                let h: Histogram<u64> = de
                    .deserialize(&mut bytes.as_slice())
                    .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
                log.write_histogram(&h, *at, *len, None)
                    .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
            }
        }
        Ok(out)
    }

    /// The JSON summary: throughput, errors by kind, percentiles in µs, and `params`
    /// (every parameter of the run) merged in.
    pub fn summary(&self, duration: Duration, params: serde_json::Value) -> serde_json::Value {
        let h = &self.total;
        let secs = duration.as_secs_f64().max(1e-9);
        let mut v = serde_json::json!({
            "ops_per_s": h.len() as f64 / secs,
            "ops": h.len(),
            "errors": self.error_total(),
            "p50_us": h.value_at_quantile(0.5),
            "p90_us": h.value_at_quantile(0.9),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
            "duration_s": secs,
            "clamped": self.clamped,
        });
        for k in KINDS {
            v[k.name()] = serde_json::json!(self.errors(k));
        }
        v["params"] = params;
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

    #[test]
    fn errors_are_counted_by_kind_and_never_enter_the_histogram() {
        let mut r = Recorder::default();
        r.record(Duration::from_micros(100));
        r.error(ErrorKind::Timeout);
        r.error(ErrorKind::CasFailed);
        r.error(ErrorKind::CasFailed);
        assert_eq!(r.total().len(), 1);
        assert_eq!(r.errors(ErrorKind::CasFailed), 2);
        assert_eq!(r.error_total(), 3);
        let s = r.summary(Duration::from_secs(1), serde_json::json!({"keys": 10}));
        assert_eq!(s["timeouts"], 1);
        assert_eq!(s["errors"], 3);
        assert_eq!(s["params"]["keys"], 10);
    }

    #[test]
    fn a_tick_reports_the_interval_and_starts_a_new_one() {
        let mut r = Recorder::default();
        for i in 0..1000u64 {
            r.record(Duration::from_micros(100 + i));
        }
        let p = r.tick(Duration::from_secs(1));
        assert!((p.ops_per_s - 1000.0).abs() < 1e-6);
        assert!((590..=610).contains(&p.p50_us), "{p}");
        r.record(Duration::from_millis(5));
        let p = r.tick(Duration::from_secs(2));
        assert_eq!(p.ops_per_s, 1.0);
        assert!(p.p50_us >= 4990, "{p}");
        assert_eq!(r.total().len(), 1001);
    }

    #[test]
    fn latencies_beyond_a_minute_are_clamped_and_counted() {
        let mut r = Recorder::default();
        r.record(Duration::from_secs(120));
        assert_eq!(r.clamped(), 1);
        assert!(r.total().max() >= MAX_LATENCY_US - MAX_LATENCY_US / 1000);
    }

    #[test]
    fn the_interval_log_reads_back_with_hdrhistograms_parser() {
        let mut r = Recorder::default();
        for s in 1..=3u64 {
            for _ in 0..100 {
                r.record(Duration::from_micros(s * 1000));
            }
            r.tick(Duration::from_secs(s));
        }
        let log = r.interval_log(SystemTime::UNIX_EPOCH).unwrap();
        let hists: Vec<_> = IntervalLogIterator::new(&log)
            .filter_map(|e| match e {
                Ok(LogEntry::Interval(h)) => Some(h),
                _ => None,
            })
            .collect();
        assert_eq!(hists.len(), 3);
        assert_eq!(hists[2].start_timestamp(), Duration::from_secs(2));
        assert!(
            (hists[2].max() - 3.0).abs() < 0.01,
            "max in ms: {}",
            hists[2].max()
        );
    }
}
