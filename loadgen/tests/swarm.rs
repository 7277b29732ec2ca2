//! `loadgen swarm` against a seed that is itself a swarm member: no `cairn` binary needed.

use std::net::SocketAddr;
use std::time::Duration;

use loadgen::swarm::{self, SwarmConfig};

/// A base port per test process, below 32768 and away from the default 20000, so two
/// test runs on one machine rarely collide.
fn base_port() -> u16 {
    23_000 + (std::process::id() % 200) as u16 * 40
}

#[test]
fn every_live_member_marks_a_killed_member_failed_and_sees_it_rejoin() {
    let base = base_port();
    let seed: SocketAddr = ([127, 0, 0, 1], base).into();
    let mut cfg = SwarmConfig::new(vec![seed], 20);
    cfg.profile = "local".into();
    cfg.base_port = base;
    cfg.duration = Duration::from_secs(13);
    cfg.kill_every = Some(Duration::from_secs(2));
    cfg.down_for = Duration::from_secs(6);
    cfg.seed = 7;
    cfg.progress = false;
    let summary = swarm::run(&cfg).expect("the swarm runs");
    println!("{}", summary.table());

    assert!(summary.converged_ms.is_some(), "the swarm never converged");
    assert!(!summary.kills.is_empty(), "no member was killed");
    for k in &summary.kills {
        assert_ne!(k.victim, seed, "the seed must never be killed");
    }
    // The first kill comes 2 s after convergence and stays down 6 s; the local profile
    // detects a crash in a few seconds (probe period, then the suspicion timeout), so
    // every live member must have marked it failed before its revival.
    let first = &summary.kills[0];
    assert!(
        first.detection_ms.is_some_and(|d| d <= 6_000),
        "not every live member marked {} failed within its 6 s down: {first:?}",
        first.victim
    );
    assert_eq!(summary.detection.len() as usize, summary.detected());
    assert_eq!(summary.counters.refused, 0, "{:?}", summary.counters);
    assert!(summary.counters.packets_sent > 0 && summary.counters.packets_received > 0);

    let dir = tempfile::tempdir().unwrap();
    let hgrm = dir.path().join("swarm.hgrm");
    let written = swarm::write_hgrm(&summary, &hgrm).unwrap();
    assert_eq!(written.len(), 2);
    let text = std::fs::read_to_string(&hgrm).unwrap();
    let dist = loadgen::hgrm::parse(&text).expect("the .hgrm parses");
    assert_eq!(dist.total_count, Some(summary.detected() as u64));
    let max_ms = dist.max().unwrap();
    let want = summary.detection.max() as f64 / 1000.0;
    assert!((max_ms - want).abs() < 1.0, "{max_ms} vs {want}");
    // The rejoin file is written and parses even when empty.
    let rejoin = std::fs::read_to_string(dir.path().join("swarm-rejoin.hgrm")).unwrap();
    assert!(rejoin.contains("Total count"));

    let json = summary.to_json(&cfg);
    std::fs::write(dir.path().join("swarm.json"), json.to_string()).unwrap();
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("swarm.json")).unwrap())
            .unwrap();
    assert_eq!(back["nodes"], 20);
    assert_eq!(back["kills"], summary.kills.len());
    assert!(back["detection_p50_ms"].as_f64().is_some());
    assert!(back["packets_sent_per_member_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_cli_writes_json_and_hgrm_and_refuses_bad_flags() {
    let bin = env!("CARGO_BIN_EXE_loadgen");
    let dir = tempfile::tempdir().unwrap();
    let base = base_port() + 25;
    let out = std::process::Command::new(bin)
        .args(["swarm", "--join", &format!("127.0.0.1:{base}")])
        .args(["--nodes", "5", "--duration", "2", "--profile", "local"])
        .args(["--base-port", &base.to_string()])
        .arg("--hgrm")
        .arg(dir.path().join("s.hgrm"))
        .arg("--json")
        .arg(dir.path().join("s.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.json")).unwrap()).unwrap();
    assert_eq!(json["nodes"], 5);
    assert!(json["converged_ms"].as_u64().is_some(), "{json}");
    // No kills: the distribution is empty but written, with its footers.
    let hgrm = std::fs::read_to_string(dir.path().join("s.hgrm")).unwrap();
    assert!(hgrm.contains("Total count"), "{hgrm}");

    let bad = std::process::Command::new(bin)
        .args(["swarm", "--join", "127.0.0.1:1", "--nodes", "3"])
        .args(["--profile", "moon", "--duration", "1"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown gossip profile"));
    let ports = std::process::Command::new(bin)
        .args(["swarm", "--join", "127.0.0.1:1", "--nodes", "10"])
        .args(["--base-port", "32760"])
        .output()
        .unwrap();
    assert!(!ports.status.success());
    assert!(String::from_utf8_lossy(&ports.stderr).contains("below 32768"));
}
