//! The `.hgrm` percentile-distribution text that HdrHistogram writes and its plotter
//! reads: one line per percentile step with value, percentile, total count and
//! 1/(1-percentile), then `#[Mean ...]`, `#[Max ...]` and `#[Buckets ...]` footers.
//!
//! Values are written in milliseconds, as wrk2 and HdrHistogram's own tools do, from a
//! histogram recorded in microseconds.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// A parsed percentile distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    /// (value in ms, percentile in 0..=1, total count at or below it).
    pub points: Vec<(f64, f64, u64)>,
    pub mean_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub total_count: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum HgrmError {
    #[error("line {line}: {reason}")]
    Bad { line: usize, reason: String },
    #[error("no percentile lines found: not an .hgrm file")]
    Empty,
}

impl Distribution {
    /// The value (ms) at percentile `p` (0..=1): the first point at or beyond it.
    pub fn value_at(&self, p: f64) -> Option<f64> {
        self.points
            .iter()
            .find(|(_, q, _)| *q >= p - 1e-12)
            .or(self.points.last())
            .map(|(v, _, _)| *v)
    }

    /// The largest recorded value (ms): the footer's max, else the last point.
    pub fn max(&self) -> Option<f64> {
        self.max_ms.or_else(|| self.points.last().map(|p| p.0))
    }
}

/// Writes `hist` (recorded in microseconds) as `.hgrm` text with `ticks_per_half` steps per
/// halving of the remaining distance to 100% (HdrHistogram's default is 5).
pub fn write(hist: &Histogram<u64>, ticks_per_half: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if hist.is_empty() {
        let _ = writeln!(
            out,
            "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
            0.0, 0.0
        );
        let _ = writeln!(
            out,
            "#[Max     = {:>12.3}, Total count    = {:>12}]",
            0.0, 0
        );
        return out;
    }
    let mut total = 0u64;
    for v in hist.iter_quantiles(ticks_per_half) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let ms = v.value_iterated_to() as f64 / 1000.0;
        if q < 1.0 {
            let _ = writeln!(
                out,
                "{ms:>12.3} {q:>14.12} {total:>10} {:>14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(out, "{ms:>12.3} {q:>14.12} {total:>10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        hist.mean() / 1000.0,
        hist.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        hist.max() as f64 / 1000.0,
        hist.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        hist.buckets(),
        hist.distinct_values()
    );
    out
}

/// Parses `.hgrm` text from any HdrHistogram-compatible tool.
pub fn parse(text: &str) -> Result<Distribution, HgrmError> {
    let mut d = Distribution {
        points: Vec::new(),
        mean_ms: None,
        max_ms: None,
        total_count: None,
    };
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with("Value") {
            continue;
        }
        if let Some(footer) = line.strip_prefix("#[") {
            for part in footer.trim_end_matches(']').split(',') {
                let mut kv = part.splitn(2, '=');
                let (k, v) = (
                    kv.next().unwrap_or("").trim(),
                    kv.next().unwrap_or("").trim(),
                );
                match k {
                    "Mean" => d.mean_ms = v.parse().ok(),
                    "Max" => d.max_ms = v.parse().ok(),
                    "Total count" => d.total_count = v.parse().ok(),
                    _ => {}
                }
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 3 {
            return Err(HgrmError::Bad {
                line: i + 1,
                reason: format!("expected value, percentile, count; got {line:?}"),
            });
        }
        let bad = |what: &str| HgrmError::Bad {
            line: i + 1,
            reason: format!("{what} is not a number in {line:?}"),
        };
        let v: f64 = cols[0].parse().map_err(|_| bad("value"))?;
        let q: f64 = cols[1].parse().map_err(|_| bad("percentile"))?;
        let c: u64 = cols[2].parse().map_err(|_| bad("count"))?;
        if !(0.0..=1.0).contains(&q) || !v.is_finite() || v < 0.0 {
            return Err(HgrmError::Bad {
                line: i + 1,
                reason: format!("percentile {q} or value {v} out of range"),
            });
        }
        d.points.push((v, q, c));
    }
    if d.points.is_empty() {
        return Err(HgrmError::Empty);
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist() -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for i in 1..=10_000u64 {
            h.record(i * 10).unwrap(); // 10 us .. 100 ms
        }
        h
    }

    #[test]
    fn written_hgrm_parses_back_with_the_same_percentiles() {
        let h = hist();
        let d = parse(&write(&h, 5)).unwrap();
        let p50 = d.value_at(0.5).unwrap();
        assert!(
            (p50 - h.value_at_quantile(0.5) as f64 / 1000.0).abs() < 0.2,
            "{p50}"
        );
        assert_eq!(d.total_count, Some(10_000));
        assert!((d.max().unwrap() - 100.0).abs() < 0.1);
        assert!(d
            .points
            .windows(2)
            .all(|w| w[0].1 <= w[1].1 && w[0].2 <= w[1].2));
        assert_eq!(
            d.points.last().unwrap().2,
            10_000,
            "TotalCount is cumulative"
        );
    }

    #[test]
    fn an_hgrm_from_another_tool_parses() {
        let text = "       Value     Percentile TotalCount 1/(1-Percentile)\n\n\
                          0.5 0.000000000000          1           1.00\n\
                          1.2 0.500000000000        500           2.00\n\
                          9.9 0.990000000000        990         100.00\n\
                         12.0 1.000000000000       1000\n\
                    #[Mean    =        1.500, StdDeviation   =        0.300]\n\
                    #[Max     =       12.000, Total count    =         1000]\n";
        let d = parse(text).unwrap();
        assert_eq!(d.points.len(), 4);
        assert_eq!(d.value_at(0.99), Some(9.9));
        assert_eq!(d.max_ms, Some(12.0));
    }

    #[test]
    fn garbage_is_a_clear_error() {
        assert_eq!(
            parse("hello\n"),
            Err(HgrmError::Bad {
                line: 1,
                reason: "expected value, percentile, count; got \"hello\"".into()
            })
        );
        assert_eq!(parse(""), Err(HgrmError::Empty));
        assert!(matches!(parse("1.0 2.0 3\n"), Err(HgrmError::Bad { .. })));
    }
}
