//! `loadgen compare` end to end: histograms in, a picture and a table out.

use std::path::{Path, PathBuf};
use std::process::Command;

use hdrhistogram::Histogram;

fn write_run(dir: &Path, name: &str, base_us: u64, tail: u64, ops: f64) -> PathBuf {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for i in 0..100_000u64 {
        let v = base_us + (i % 100) * 3 + if i % 1000 == 0 { tail } else { 0 };
        h.record(v).unwrap();
    }
    let path = dir.join(format!("{name}.hgrm"));
    std::fs::write(&path, loadgen::hgrm::write(&h, 5)).unwrap();
    std::fs::write(
        dir.join(format!("{name}.json")),
        format!("{{\"ops_per_s\": {ops}}}"),
    )
    .unwrap();
    path
}

fn loadgen(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn compare_draws_svg_and_png_and_prints_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_run(dir.path(), "one-server", 200, 5_000, 91_000.0);
    let b = write_run(dir.path(), "three-servers", 450, 20_000, 60_000.0);
    for ext in ["svg", "png"] {
        let out = dir.path().join(format!("cmp.{ext}"));
        let (code, stdout, stderr) = loadgen(&[
            "compare",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(stdout.contains("one-server"), "{stdout}");
        assert!(stdout.contains("91000"), "{stdout}");
        let len = std::fs::metadata(&out).unwrap().len();
        assert!(len > 5_000, "{ext} output is only {len} bytes");
    }
    let svg = std::fs::read_to_string(dir.path().join("cmp.svg")).unwrap();
    assert!(svg.contains("three-servers") && svg.contains("99.9%"));
    if let Ok(keep) = std::env::var("LOADGEN_KEEP_PLOT") {
        std::fs::copy(dir.path().join("cmp.png"), keep).unwrap();
    }
}

#[test]
fn compare_refuses_bad_input_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.hgrm");
    std::fs::write(&junk, "not a histogram\n").unwrap();
    let out = dir.path().join("x.svg");
    let o = out.to_str().unwrap();
    let (code, _, err) = loadgen(&["compare", junk.to_str().unwrap(), "--out", o]);
    assert_eq!(code, 1);
    assert!(err.contains("junk.hgrm") && err.contains("line 1"), "{err}");

    let a = write_run(dir.path(), "a", 100, 10, 1.0);
    let a = a.to_str().unwrap();
    let (code, _, err) = loadgen(&["compare", a, "--out", "x.pdf"]);
    assert_eq!(code, 1);
    assert!(err.contains(".svg or .png"), "{err}");

    let (code, _, err) = loadgen(&["compare", a, "--out", o, "--labels", "x,y"]);
    assert_eq!(code, 2);
    assert!(err.contains("one label per file"), "{err}");

    let (code, _, err) = loadgen(&["compare", "/nonexistent.hgrm", "--out", o]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent.hgrm"), "{err}");
}

#[test]
fn sweep_refuses_cluster_sizes_outside_one_to_nine() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = loadgen(&[
        "sweep",
        "--sizes",
        "1,10",
        "--out-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("a cluster of 10 servers"), "{err}");
}

#[test]
fn kv_rejects_bad_workloads_and_rates_before_connecting() {
    let (code, _, err) = loadgen(&["kv", "--workload", "mixed:3"]);
    assert_eq!(code, 2);
    assert!(err.contains("mixed:R/W"), "{err}");
    let (code, _, err) = loadgen(&["kv", "--rate", "-5"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = loadgen(&["kv", "--key-dist", "zipf:0"]);
    assert_eq!(code, 2);
    assert!(err.contains("zipf:S"), "{err}");
}
