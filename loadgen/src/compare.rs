//! `loadgen compare`: percentile-spectrum plots of several runs, and a table side by side.
//!
//! The plot is HdrHistogram's: the x axis is 1/(1-percentile) on a log scale, labelled
//! 0%, 90%, 99%, 99.9%, ...; the y axis is latency in milliseconds; one line per run.
//! Works on `.hgrm` files from any source (loadgen, wrk2, a bare-metal cluster, the gossip
//! simulator). If a `.json` summary with `ops_per_s` sits beside an `.hgrm` (same stem),
//! its throughput goes into the table.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::hgrm::{self, Distribution};

/// One run to compare.
#[derive(Debug, Clone)]
pub struct Run {
    pub label: String,
    pub dist: Distribution,
    pub ops_per_s: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: hgrm::HgrmError,
    },
    #[error("output {0}: the file name must end in .svg or .png")]
    Format(PathBuf),
    #[error("no TrueType font found for the plot's text (looked in {0}); install fonts-dejavu-core or pass --font FILE.ttf")]
    NoFont(String),
    #[error("drawing {path}: {reason}")]
    Draw { path: PathBuf, reason: String },
}

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Loads and registers a font for the plot's text (once per process).
pub fn register_font(explicit: Option<&Path>) -> Result<(), CompareError> {
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p.to_path_buf()],
        None => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
    };
    for c in &candidates {
        if let Ok(bytes) = std::fs::read(c) {
            // plotters keeps fonts for the life of the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(CompareError::NoFont(looked.join(", ")))
}

/// Reads an `.hgrm` file and the `ops_per_s` of a `.json` summary beside it, if any.
pub fn load(path: &Path, label: Option<String>) -> Result<Run, CompareError> {
    let text = std::fs::read_to_string(path).map_err(|source| CompareError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let dist = hgrm::parse(&text).map_err(|source| CompareError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    let ops_per_s = std::fs::read_to_string(path.with_extension("json"))
        .ok()
        .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
        .and_then(|v| v.get("ops_per_s").and_then(|x| x.as_f64()));
    let label = label.unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
    });
    Ok(Run {
        label,
        dist,
        ops_per_s,
    })
}

const HEADER: [&str; 7] = [
    "run", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
];

/// One table row per run: label, throughput, p50/p90/p99/p99.9/max in ms.
pub fn rows(runs: &[Run]) -> Vec<[String; 7]> {
    runs.iter()
        .map(|r| {
            let v = |p| {
                r.dist
                    .value_at(p)
                    .map_or("-".to_string(), |x| format!("{x:.3}"))
            };
            [
                r.label.clone(),
                r.ops_per_s.map_or("-".to_string(), |x| format!("{x:.0}")),
                v(0.5),
                v(0.9),
                v(0.99),
                v(0.999),
                r.dist.max().map_or("-".to_string(), |x| format!("{x:.3}")),
            ]
        })
        .collect()
}

/// The comparison table as text.
pub fn table(runs: &[Run]) -> String {
    let mut out = String::new();
    let line = |c: &[String; 7]| {
        format!(
            "{:<24} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6]
        )
    };
    out.push_str(&line(&HEADER.map(String::from)));
    for r in rows(runs) {
        out.push_str(&line(&r));
    }
    out
}

fn percentile_label(x: f64) -> String {
    // x = 1/(1-p)  =>  p = 1 - 1/x
    let p = (1.0 - 1.0 / x) * 100.0;
    let digits = (x.log10().round() as usize).saturating_sub(2);
    format!("{p:.digits$}%")
}

/// Draws the percentile spectrum of `runs` into `out` (.svg or .png).
pub fn plot(runs: &[Run], out: &Path, title: &str) -> Result<(), CompareError> {
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase());
    let size = (1200, 800);
    match ext.as_deref() {
        Some("svg") => draw(SVGBackend::new(out, size).into_drawing_area(), runs, title),
        Some("png") => draw(
            BitMapBackend::new(out, size).into_drawing_area(),
            runs,
            title,
        ),
        _ => return Err(CompareError::Format(out.to_path_buf())),
    }
    .map_err(|reason| CompareError::Draw {
        path: out.to_path_buf(),
        reason,
    })
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    runs: &[Run],
    title: &str,
) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let (top, bottom) = root.split_vertically(620);
    // Widest x: the deepest percentile below 100% any run reached, at least 99.99%.
    let x_max = runs
        .iter()
        .flat_map(|r| r.dist.points.iter())
        .filter(|(_, q, _)| *q < 1.0)
        .map(|(_, q, _)| 1.0 / (1.0 - q))
        .fold(1e4f64, f64::max)
        .min(1e7);
    let y_max = runs
        .iter()
        .filter_map(|r| r.dist.max())
        .fold(0.001f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(title, ("sans-serif", 26))
        .margin(16)
        .margin_right(48)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d((1.0f64..x_max).log_scale(), 0.0f64..y_max)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, r) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = r
            .dist
            .points
            .iter()
            .map(|(v, q, _)| {
                let x = if *q >= 1.0 {
                    x_max
                } else {
                    (1.0 / (1.0 - q)).min(x_max)
                };
                (x, *v)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(3)))
            .map_err(|x| e(&x))?
            .label(r.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(|x| e(&x))?;
    let font = ("sans-serif", 16).into_font();
    let xs = [20, 360, 500, 620, 740, 860, 980];
    let header = HEADER.map(String::from);
    for (i, row) in std::iter::once(&header)
        .chain(rows(runs).iter())
        .enumerate()
    {
        for (cell, x) in row.iter().zip(xs) {
            bottom
                .draw(&Text::new(
                    cell.clone(),
                    (x, 20 + 26 * i as i32),
                    font.clone(),
                ))
                .map_err(|x| e(&x))?;
        }
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels_read_as_hdrhistogram_draws_them() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1000.0), "99.9%");
        assert_eq!(percentile_label(100000.0), "99.999%");
    }
}
