//! `loadgen catalog` against a real dev agent, at a size that takes seconds: every
//! registration succeeds, every watcher sees every change, the query phase and the
//! memory line have figures.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_net::rpc::catalog::Status;
use clap::Parser;
use loadgen::catalog::{self, CatalogArgs};

struct Agent(std::process::Child);
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `cairn` binary of this build (`target/PROFILE/cairn`, beside `deps/` where this
/// test runs), built first if `cargo test -p loadgen` alone did not build it.
fn cairn_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let bin = profile_dir.join("cairn");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "cairn", "--bin", "cairn"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
        assert!(ok && bin.exists(), "could not build {}", bin.display());
    }
    bin
}

fn agent() -> (Agent, String) {
    let bin = cairn_bin();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let agent = Agent(
        Command::new(&bin)
            .args(["agent", "--dev", "--server-port", &port.to_string()])
            .args([
                "--serf-lan-port",
                "0",
                "--http-port",
                "-1",
                "--dns-port",
                "-1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let ok = Command::new(&bin)
            .args(["status", "leader", "--rpc-addr", &addr])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return (agent, addr);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("agent did not start");
}

/// The arguments as the command line would give them (so the defaults are clap's).
fn args(line: &[&str]) -> CatalogArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: CatalogArgs,
    }
    Cli::parse_from(std::iter::once("loadgen-catalog").chain(line.iter().copied())).a
}

#[test]
fn instances_are_spread_over_services_and_a_node_never_repeats_a_name() {
    let a = args(&[
        "--nodes",
        "20",
        "--services-per-node",
        "5",
        "--service-names",
        "10",
    ]);
    let mut per_name = std::collections::BTreeMap::new();
    for n in 0..20 {
        let mut names = std::collections::BTreeSet::new();
        for j in 0..5 {
            let r = catalog::registration(n, j, Status::Passing, &a);
            let s = r.service.unwrap();
            assert!(names.insert(s.name.clone()), "node {n} repeats {}", s.name);
            assert_eq!(r.checks[0].service_id, s.id);
            *per_name.entry(s.name).or_insert(0) += 1;
        }
    }
    assert_eq!(per_name.len(), 10);
    assert!(per_name.values().all(|&c| c == 10), "{per_name:?}");
    assert_eq!(catalog::service_name(0, 0, &a), catalog::WATCHED);
}

#[test]
fn watchers_see_every_health_change_on_a_dev_agent() {
    let (agent, addr) = agent();
    let pid = agent.0.id().to_string();
    let dir = tempfile::tempdir().unwrap();
    let hgrm = dir.path().join("catalog.hgrm");
    let a = args(&[
        "--servers",
        &addr,
        "--nodes",
        "20",
        "--services-per-node",
        "5",
        "--service-names",
        "10",
        "--watchers",
        "20",
        "--changes",
        "2",
        "--query-connections",
        "4",
        "--query-duration",
        "0.5",
        "--pids",
        &pid,
    ]);
    let s = catalog::run(&a).expect("the run completes");
    println!("{}", s.table());
    assert_eq!(s.instances, 100);
    assert_eq!(s.register_errors, 0);
    assert_eq!(s.watched_instances, 10, "20 × 5 instances over 10 names");
    assert_eq!(s.from_ack.len(), 40, "20 watchers × 2 changes");
    assert_eq!(s.from_send.len(), 40);
    assert_eq!((s.missed, s.watcher_errors), (0, 0));
    assert_eq!(s.write.len(), 2);
    assert!(!s.query.is_empty() && s.query_errors == 0);
    assert!(s.rss.len() == 1 && s.rss[0].1 > 0, "{:?}", s.rss);
    // Every sample from send is at least the one from the acknowledgement.
    assert!(s.from_send.max() >= s.from_ack.max());

    let written = catalog::write_hgrm(&s, &hgrm).unwrap();
    assert_eq!(written.len(), 3);
    let dist = loadgen::hgrm::parse(&std::fs::read_to_string(&hgrm).unwrap()).unwrap();
    assert_eq!(dist.total_count, Some(40));

    // A second run over the same catalog, without registering again.
    let mut again = a.clone();
    again.skip_register = true;
    again.query_connections = 0;
    again.changes = 1;
    let s = catalog::run(&again).expect("the second run completes");
    assert_eq!((s.from_ack.len(), s.missed), (20, 0));
}
