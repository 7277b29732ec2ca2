//! The `cairn` binary's storage tools, run as a user would.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::process::Command;

use cairn_storage::{LogOptions, NewEntry, SegmentLog};

fn cairn(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("run cairn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn make_log(dir: &std::path::Path, n: u64) {
    let mut log = SegmentLog::open(
        dir,
        LogOptions {
            segment_size: 64 * 1024,
        },
    )
    .unwrap();
    let payload = vec![9u8; 1000];
    let entries: Vec<NewEntry<'_>> = (0..n)
        .map(|i| NewEntry {
            term: 1 + i / 50,
            index: i,
            payload: &payload,
        })
        .collect();
    log.append(&entries).unwrap();
    log.sync().unwrap();
}

#[test]
fn log_check_reports_a_healthy_log() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 200);
    let (code, out, _) = cairn(&["debug", "log-check", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(": OK"), "{out}");
    assert!(out.contains("entries: 0..=199 (last term 4)"), "{out}");
    let (code, out, _) = cairn(&["debug", "log-check", "--json", dir.path().to_str().unwrap()]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["healthy"], true);
    assert_eq!(v["last_index"], 199);
    assert!(v["segments"].as_array().unwrap().len() >= 3);
}

#[test]
fn log_check_names_file_and_offset_of_damage_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    make_log(dir.path(), 200);
    let first = dir.path().join(format!("{:020}.seg", 0));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&first)
        .unwrap();
    f.write_all_at(b"XX", 5000).unwrap();
    drop(f);
    let before = std::fs::read(&first).unwrap();
    let (code, out, _) = cairn(&["debug", "log-check", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DAMAGED"), "{out}");
    assert!(out.contains(first.to_str().unwrap()), "{out}");
    assert!(out.contains("at byte"), "{out}");
    assert_eq!(std::fs::read(&first).unwrap(), before, "log-check wrote");
}

#[test]
fn log_check_of_a_missing_directory_is_a_clear_error() {
    let (code, out, _) = cairn(&["debug", "log-check", "/nonexistent/cairn-log"]);
    assert_eq!(code, 1);
    assert!(out.contains("/nonexistent/cairn-log"), "{out}");
}

#[test]
fn unknown_commands_and_flags_are_rejected_with_usage() {
    let (code, _, err) = cairn(&["debug", "log-check", "--bogus", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--bogus"), "{err}");
    let (code, _, err) = cairn(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("frobnicate"), "{err}");
}

#[test]
fn snapshot_check_accepts_a_good_file_and_refuses_a_damaged_one() {
    use cairn_storage::snapshot::write_snapshot;
    use cairn_storage::state::StateImage;
    let dir = tempfile::tempdir().unwrap();
    let path = write_snapshot(dir.path(), None, &StateImage::default(), 2).unwrap();
    let (code, out, _) = cairn(&["debug", "snapshot-check", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("keys: 0"), "{out}");
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"\xff", 20).unwrap();
    let (code, out, _) = cairn(&["debug", "snapshot-check", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("header checksum mismatch"), "{out}");
}

#[test]
fn disk_check_measures_and_cleans_up_after_itself() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = cairn(&["debug", "disk-check", "--dir", d, "--samples", "10"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("raw 4 KiB pwrite + fdatasync"), "{out}");
    assert!(out.contains("batch 256"), "{out}");
    assert!(out.contains("verdict"), "{out}");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "left files behind"
    );
}

#[test]
fn disk_check_rejects_out_of_range_samples() {
    let (code, _, err) = cairn(&["debug", "disk-check", "--samples", "3"]);
    assert_eq!(code, 2);
    assert!(err.contains("--samples"), "{err}");
}

#[test]
fn preflight_reports_every_check_and_exits_by_the_worst_finding() {
    let (code, out, _) = cairn(&["debug", "preflight", "--cores", "1"]);
    assert!(code == 0 || code == 1, "{out}");
    for what in ["RLIMIT_MEMLOCK", "RLIMIT_NOFILE", "kernel"] {
        assert!(out.contains(what), "{out}");
    }
    assert_eq!(code == 1, out.contains("[FAIL]"), "{out}");
}

#[test]
fn keygen_prints_a_fresh_32_byte_key_that_the_gossip_keyring_accepts() {
    let (code, a, _) = cairn(&["keygen"]);
    assert_eq!(code, 0);
    let (_, b, _) = cairn(&["keygen"]);
    assert_ne!(a, b, "two keys were the same");
    let key = cairn_net::gossip::crypto::Key::from_base64(a.trim());
    assert!(key.is_ok(), "{a:?}: {:?}", key.err());
}
