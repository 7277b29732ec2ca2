//! Multi-server clusters of real `cairn agent --server` processes on loopback: formation,
//! replication, forwarding, leader failure under load, full restarts and catching up
//! through a snapshot.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn::client::RpcClient;
use cairn::raft::types::{TypeConfig, Vote as RaftVote};
use cairn::raft::wire;
use cairn_net::rpc::message::{Consistency, ErrorCode, Op, Response};
use openraft::impls::leader_id_std::LeaderId;
use openraft::raft::VoteRequest;
use support::{b, get, put, req, Cluster};

#[test]
fn three_servers_elect_one_leader_and_a_write_through_a_follower_reaches_every_server() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(Duration::from_secs(10));
    let follower = c.other_than(leader);
    let mut client = c.servers[follower]
        .client(Duration::from_secs(5))
        .expect("connect");
    assert_eq!(put(&mut client, "k", "v"), Ok(Response::Bool(true)));
    for i in 0..3 {
        c.wait_stale_value(i, "k", "v", Duration::from_secs(10));
    }
    // Every read mode answers through any server.
    for i in 0..3 {
        for mode in [Consistency::Default, Consistency::Consistent] {
            assert_eq!(get(&c.servers[i], "k", mode).as_deref(), Some("v"));
        }
    }
    // The configuration names three voters and one leader.
    let Some(Response::Servers(servers)) =
        c.servers[follower].call(Op::RaftConfiguration, Duration::from_secs(5))
    else {
        panic!("no configuration");
    };
    assert_eq!(servers.len(), 3, "{servers:?}");
    assert!(servers.iter().all(|s| s.voter));
    assert_eq!(servers.iter().filter(|s| s.leader).count(), 1);
    assert_eq!(
        servers.iter().find(|s| s.leader).map(|s| s.address.clone()),
        Some(c.servers[leader].addr())
    );
}

/// Writes unique keys through whichever server answers until told to stop; returns the
/// keys whose writes were acknowledged.
fn writer(addrs: Vec<String>, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut acked = Vec::new();
    let mut client: Option<RpcClient> = None;
    let mut n = 0u64;
    let mut at = 0usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        if client.is_none() {
            at = (at + 1) % addrs.len();
            client = RpcClient::connect(&addrs[at], Duration::from_secs(3)).ok();
            if client.is_none() {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        let key = format!("w/{n:06}");
        n += 1;
        match put(client.as_mut().unwrap(), &key, &key) {
            Ok(Response::Bool(true)) => acked.push(key),
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => client = None,
        }
    }
    acked
}

#[test]
fn killing_the_leader_under_continuous_writes_elects_a_new_one_and_loses_no_acknowledged_write() {
    // Two cores per server: acknowledged writes went through the shard cores.
    let mut c = Cluster::start(3, &["--cores", "2"]);
    let old = c.wait_for_leader(Duration::from_secs(10));
    let addrs: Vec<String> = c.servers.iter().map(|s| s.addr()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let stop = stop.clone();
        std::thread::spawn(move || writer(addrs, stop))
    };
    std::thread::sleep(Duration::from_millis(1500));
    c.servers[old].kill();
    let new = c.wait_for_leader(Duration::from_secs(15));
    assert_ne!(new, old);
    // Keep writing under the new leader.
    let before = Instant::now();
    let probe = c.servers[new]
        .client(Duration::from_secs(5))
        .map(|mut cl| put(&mut cl, "after-failover", "yes"));
    assert_eq!(probe, Some(Ok(Response::Bool(true))), "{}", c.logs());
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(before.elapsed()));
    stop.store(true, Ordering::Relaxed);
    let acked = w.join().unwrap();
    assert!(acked.len() > 10, "only {} writes acknowledged", acked.len());
    // The old leader comes back as a follower and catches up.
    c.servers[old].restart();
    c.wait_for_leader(Duration::from_secs(15));
    c.wait_stale_value(old, "after-failover", "yes", Duration::from_secs(20));
    let last = acked.last().unwrap().clone();
    for i in 0..3 {
        c.wait_stale_value(i, &last, &last, Duration::from_secs(20));
    }
    // Every acknowledged write is there, on every server.
    for i in 0..3 {
        let Some(Response::Keys { keys, .. }) = c.servers[i].call(
            Op::KvList {
                prefix: b("w/"),
                keys_only: true,
                separator: None,
                opts: Default::default(),
            },
            Duration::from_secs(10),
        ) else {
            panic!("no list from server {i}\n{}", c.logs());
        };
        let have: std::collections::HashSet<String> = keys
            .iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        let lost: Vec<&String> = acked.iter().filter(|k| !have.contains(*k)).collect();
        assert!(
            lost.is_empty(),
            "server {i} lost {} acknowledged writes, e.g. {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
}

#[test]
fn a_full_cluster_restart_keeps_every_write_and_never_bootstraps_again() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(Duration::from_secs(10));
    let mut client = c.servers[leader].client(Duration::from_secs(5)).unwrap();
    for i in 0..100 {
        let k = format!("r/{i}");
        assert_eq!(put(&mut client, &k, &k), Ok(Response::Bool(true)));
    }
    drop(client);
    let config = |c: &Cluster, i: usize| match c.servers[i]
        .call(Op::RaftConfiguration, Duration::from_secs(5))
    {
        Some(Response::Servers(mut s)) => {
            s.sort_by_key(|s| s.id);
            s.into_iter()
                .map(|s| (s.id, s.address, s.voter))
                .collect::<Vec<_>>()
        }
        other => panic!("no configuration from server {i}: {other:?}\n{}", c.logs()),
    };
    let before = config(&c, leader);
    for s in &mut c.servers {
        s.kill();
    }
    for s in &mut c.servers {
        s.restart();
    }
    let leader = c.wait_for_leader(Duration::from_secs(20));
    assert_eq!(config(&c, leader), before);
    for i in 0..100 {
        let k = format!("r/{i}");
        assert_eq!(
            get(&c.servers[leader], &k, Consistency::Consistent).as_deref(),
            Some(k.as_str())
        );
    }
    let bootstraps: usize = c
        .servers
        .iter()
        .map(|s| s.log_text().matches("bootstrapped a cluster").count())
        .sum();
    assert_eq!(bootstraps, 1, "{}", c.logs());
}

fn snapshot_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("raft/snapshots"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_server_down_while_the_cluster_snapshots_and_purges_catches_up_from_the_snapshot() {
    // Two cores per server: snapshots are gathered from, and restored into, both shards.
    let mut c = Cluster::start(
        3,
        &[
            "--raft-snapshot-threshold",
            "50",
            "--raft-trailing-logs",
            "5",
            "--cores",
            "2",
        ],
    );
    let leader = c.wait_for_leader(Duration::from_secs(10));
    let down = c.other_than(leader);
    c.servers[down].kill();
    assert_eq!(snapshot_files(&c.servers[down].dir), 0);
    let mut client = c.servers[leader].client(Duration::from_secs(5)).unwrap();
    for i in 0..300 {
        let k = format!("s/{i:03}");
        assert_eq!(put(&mut client, &k, &k), Ok(Response::Bool(true)));
    }
    // The leader snapshots as it goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while snapshot_files(&c.servers[leader].dir) == 0 {
        assert!(Instant::now() < deadline, "the leader never snapshotted");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.servers[down].restart();
    c.wait_stale_value(down, "s/299", "s/299", Duration::from_secs(30));
    for i in (0..300).step_by(37) {
        let k = format!("s/{i:03}");
        assert_eq!(
            get(&c.servers[down], &k, Consistency::Stale).as_deref(),
            Some(k.as_str())
        );
    }
    // It received the leader's snapshot: the entries it missed were purged from the
    // leader's log, and it applied fewer than the 50 entries that would make it take
    // a snapshot of its own.
    assert!(
        snapshot_files(&c.servers[down].dir) > 0,
        "the lagging server caught up without a snapshot\n{}",
        c.logs()
    );
}

#[test]
fn a_write_to_a_server_that_cannot_reach_a_quorum_is_not_acknowledged() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(Duration::from_secs(10));
    let survivor = c.other_than(leader);
    for i in 0..3 {
        if i != survivor {
            c.servers[i].kill();
        }
    }
    let mut client = c.servers[survivor].client(Duration::from_secs(30)).unwrap();
    let r = put(&mut client, "lonely", "x");
    match r {
        Ok(Response::Error(e)) => assert!(
            matches!(e.code, ErrorCode::NoLeader | ErrorCode::Unavailable),
            "{e:?}"
        ),
        other => panic!("a write without a quorum answered {other:?}"),
    }
    assert_eq!(
        get(&c.servers[survivor], "lonely", Consistency::Stale),
        None
    );
    let r = client.call(&req(Op::KvGet {
        key: b("lonely"),
        opts: Default::default(),
    }));
    assert!(
        matches!(r, Ok(Response::Error(_))),
        "a default read without a leader answered {r:?}"
    );
}

#[test]
fn a_client_given_every_server_carries_on_when_the_server_it_used_dies() {
    use cairn_net::rpc::cluster::{ClientOptions, ClusterClient};
    let mut c = Cluster::start(3, &[]);
    c.wait_for_leader(Duration::from_secs(10));
    let addrs: Vec<String> = c.servers.iter().map(|s| s.addr()).collect();
    let mut client = ClusterClient::new(&addrs, ClientOptions::default());
    let write = |client: &mut ClusterClient, v: &str| {
        client.call(&req(Op::KvPut {
            key: b("k"),
            value: b(v),
            flags: 0,
            cas: None,
            acquire: None,
            release: None,
        }))
    };
    assert!(matches!(write(&mut client, "1"), Ok(Response::Bool(true))));
    let used = client.connected_to().unwrap().to_string();
    let i = addrs.iter().position(|a| *a == used).unwrap();
    c.servers[i].kill();
    // A read is safe to retry: it moves to another server by itself.
    let r = client.call(&req(Op::KvGet {
        key: b("k"),
        opts: Default::default(),
    }));
    match r {
        Ok(Response::Entries { entries, .. }) => assert_eq!(&entries[0].value[..], b"1"),
        other => panic!("{other:?}\n{}", c.logs()),
    }
    assert_ne!(client.connected_to(), Some(used.as_str()));
    assert!(matches!(write(&mut client, "2"), Ok(Response::Bool(true))));
}

#[test]
fn the_cli_lists_peers_and_reads_as_json_through_any_server() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(Duration::from_secs(10));
    let all: Vec<String> = c.servers.iter().map(|s| s.addr()).collect();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(support::CAIRN)
            .args(args)
            .env("CAIRN_RPC_ADDR", all.join(","))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    assert_eq!(cli(&["kv", "put", "a/b", "1"]).0, Some(0));
    let (code, out) = cli(&["operator", "raft", "list-peers", "--format", "json"]);
    assert_eq!(code, Some(0));
    let peers: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(peers.as_array().unwrap().len(), 3);
    let leaders: Vec<&serde_json::Value> = peers
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["Leader"] == true)
        .collect();
    assert_eq!(leaders.len(), 1);
    assert_eq!(leaders[0]["Address"], c.servers[leader].addr());
    let (code, out) = cli(&["kv", "get", "a/b", "--format", "json"]);
    assert_eq!(code, Some(0));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Value"], "1");
    assert!(v["ModifyIndex"].as_u64().unwrap() > 0);
    let (code, out) = cli(&["status", "leader", "--format", "json"]);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::Value::String(c.servers[leader].addr())
    );
    // A key that is not there: exit 1.
    assert_eq!(cli(&["kv", "get", "nope"]).0, Some(1));
}

/// Each member's status as server `i` sees the gossip pool.
fn member_status(c: &Cluster, i: usize) -> std::collections::BTreeMap<String, String> {
    match c.servers[i].call(Op::Members, Duration::from_secs(5)) {
        Some(Response::Members(m)) => m.into_iter().map(|m| (m.name, m.status)).collect(),
        other => panic!("no members from server {i}: {other:?}"),
    }
}

fn wait_status(c: &Cluster, i: usize, node: &str, status: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let seen = member_status(c, i);
        if seen.get(node).map(String::as_str) == Some(status) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server {i} never saw {node} as {status}: {seen:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_gossip_pool_shows_a_server_that_leaves_as_left_and_one_killed_as_failed() {
    let mut c = Cluster::start(3, &[]);
    c.wait_for_leader(Duration::from_secs(10));
    for n in ["s0", "s1", "s2"] {
        wait_status(&c, 0, n, "alive", Duration::from_secs(10));
    }
    c.servers[1].terminate();
    wait_status(&c, 0, "s1", "left", Duration::from_secs(10));
    c.servers[2].kill();
    wait_status(&c, 0, "s2", "failed", Duration::from_secs(60));
    // The survivor still knows itself alive.
    assert_eq!(
        member_status(&c, 0).get("s0").map(String::as_str),
        Some("alive")
    );
}

fn voters(c: &Cluster, i: usize) -> Vec<(u64, String)> {
    match c.servers[i].call(Op::RaftConfiguration, Duration::from_secs(5)) {
        Some(Response::Servers(s)) => s
            .into_iter()
            .filter(|s| s.voter)
            .map(|s| (s.id, s.address))
            .collect(),
        other => panic!("no configuration from server {i}: {other:?}\n{}", c.logs()),
    }
}

#[test]
fn a_new_server_joins_a_running_cluster_and_remove_peer_takes_it_out_again() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(Duration::from_secs(10));
    let mut client = c.servers[leader].client(Duration::from_secs(5)).unwrap();
    assert_eq!(put(&mut client, "before", "1"), Ok(Response::Bool(true)));
    let new = c.add_server();
    let new_addr = c.servers[new].addr();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !voters(&c, leader).iter().any(|(_, a)| *a == new_addr) {
        assert!(
            Instant::now() < deadline,
            "the new server was never added\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(voters(&c, leader).len(), 4);
    // It has the state from before it joined.
    c.wait_stale_value(new, "before", "1", Duration::from_secs(10));
    let id = voters(&c, leader)
        .into_iter()
        .find(|(_, a)| *a == new_addr)
        .unwrap()
        .0;
    // Removing it goes through any server (forwarded to the leader).
    let other = c.other_than(leader);
    assert_eq!(
        c.servers[other].call(Op::RaftRemovePeer { id }, Duration::from_secs(10)),
        Some(Response::Done)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while voters(&c, leader).len() != 3 {
        assert!(Instant::now() < deadline, "{:?}", voters(&c, leader));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Removing a server that is not there is a clear error, not a change.
    match c.servers[leader].call(Op::RaftRemovePeer { id: 42 }, Duration::from_secs(5)) {
        Some(Response::Error(e)) => assert!(e.message.contains("not in the Raft configuration")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn transfer_leader_hands_leadership_to_the_named_voter() {
    let c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(Duration::from_secs(10));
    let target = c.other_than(leader);
    let target_addr = c.servers[target].addr();
    let id = voters(&c, leader)
        .into_iter()
        .find(|(_, a)| *a == target_addr)
        .unwrap()
        .0;
    assert_eq!(
        c.servers[leader].call(
            Op::RaftTransferLeader { to: Some(id) },
            Duration::from_secs(5)
        ),
        Some(Response::Done)
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if c.wait_for_leader(Duration::from_secs(10)) == target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leadership never moved\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_client_agent_joins_the_pool_and_serves_its_node_through_the_servers() {
    let mut c = Cluster::start(3, &[]);
    c.wait_for_leader(Duration::from_secs(10));
    let client = c.add_client();
    wait_status(
        &c,
        0,
        &format!("c{client}"),
        "alive",
        Duration::from_secs(20),
    );
    let role = match c.servers[0].call(Op::Members, Duration::from_secs(5)) {
        Some(Response::Members(m)) => m
            .into_iter()
            .find(|m| m.name == format!("c{client}"))
            .map(|m| m.role),
        other => panic!("{other:?}"),
    };
    assert_eq!(role.as_deref(), Some("client"));
    // Reads and writes through the client agent's own port.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut conn = loop {
        if let Some(conn) = c.servers[client].client(Duration::from_secs(10)) {
            break conn;
        }
        assert!(Instant::now() < deadline, "{}", c.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        put(&mut conn, "via-client", "yes"),
        Ok(Response::Bool(true))
    );
    for i in 0..3 {
        c.wait_stale_value(i, "via-client", "yes", Duration::from_secs(10));
    }
    // A server going away does not stop the client agent.
    c.servers[0].kill();
    for n in 0..10 {
        let r = conn.call(&req(Op::KvGet {
            key: b("via-client"),
            opts: Default::default(),
        }));
        assert!(
            matches!(&r, Ok(Response::Entries { entries, .. }) if entries.len() == 1),
            "read {n} through the client agent: {r:?}\n{}",
            c.logs()
        );
    }
    // It answers for the pool too; it is not a server.
    assert!(matches!(
        c.servers[client].call(Op::Members, Duration::from_secs(5)),
        Some(Response::Members(m)) if m.len() == 4
    ));
    assert!(matches!(
        c.servers[client].call(
            Op::Internal {
                kind: 6,
                body: bytes::Bytes::new()
            },
            Duration::from_secs(5)
        ),
        Some(Response::Error(_))
    ));
}

#[test]
fn the_gossip_key_rotates_across_a_running_cluster_without_splitting_the_pool() {
    use cairn_net::rpc::message::KeyringAction;
    let k1 = cairn::gossip::keygen();
    let k2 = cairn::gossip::keygen();
    let c = Cluster::start(3, &["--encrypt", &k1]);
    c.wait_for_leader(Duration::from_secs(10));
    for n in ["s0", "s1", "s2"] {
        wait_status(&c, 0, n, "alive", Duration::from_secs(10));
    }
    let ring = |i: usize, action: KeyringAction, key: Option<&str>| {
        c.servers[i].call(
            Op::Keyring {
                action,
                key: key.map(String::from),
            },
            Duration::from_secs(5),
        )
    };
    // A bad key and removing the primary are refused, and change nothing.
    assert!(matches!(
        ring(0, KeyringAction::Install, Some("not base64!")),
        Some(Response::Error(_))
    ));
    assert!(matches!(
        ring(0, KeyringAction::Remove, Some(&k1)),
        Some(Response::Error(_))
    ));
    for step in [
        (KeyringAction::Install, &k2),
        (KeyringAction::Use, &k2),
        (KeyringAction::Remove, &k1),
    ] {
        for i in 0..3 {
            let r = ring(i, step.0, Some(step.1));
            assert!(
                matches!(r, Some(Response::Keyring(_))),
                "{step:?} on {i}: {r:?}"
            );
        }
        // Traffic flows between the steps, as the rotation needs.
        std::thread::sleep(Duration::from_millis(500));
    }
    for i in 0..3 {
        assert_eq!(
            ring(i, KeyringAction::List, None),
            Some(Response::Keyring(vec![k2.clone()]))
        );
    }
    // Still one pool: nobody was marked failed, and everyone is alive.
    std::thread::sleep(Duration::from_secs(2));
    for n in ["s0", "s1", "s2"] {
        wait_status(&c, 1, n, "alive", Duration::from_secs(10));
    }
}

#[test]
fn a_fresh_server_on_a_dead_servers_address_refuses_the_old_id_and_joins_under_its_own() {
    let mut c = Cluster::start(3, &[]);
    let leader = c.wait_for_leader(Duration::from_secs(10));
    let mut client = c.servers[leader].client(Duration::from_secs(5)).unwrap();
    assert_eq!(put(&mut client, "before", "1"), Ok(Response::Bool(true)));
    let i = c.other_than(leader);
    let addr = c.servers[i].addr();
    let old_id = voters(&c, leader)
        .into_iter()
        .find(|(_, a)| *a == addr)
        .expect("the follower is a voter")
        .0;
    // Same address, fresh data directory (a new node id); the leader still replicates to
    // the old id there. Taking those requests would leave the fresh server holding the
    // leader's vote and log under an id it does not have, so it would never join.
    c.servers[i].kill();
    std::fs::remove_dir_all(&c.servers[i].dir).unwrap();
    c.servers[i].restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = voters(&c, leader);
        if v.len() == 3 && v.iter().any(|(id, a)| *a == addr && *id != old_id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fresh server never replaced server {old_id}: {v:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(voters(&c, leader).iter().all(|(id, _)| *id != old_id));
    c.wait_stale_value(i, "before", "1", Duration::from_secs(10));
    assert!(
        !c.servers[i].log_text().contains("panicked"),
        "{}",
        c.logs()
    );
}

/// Waits until `s`'s log says `what` at least `times` times.
fn wait_log(s: &support::Server, what: &str, times: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while s.log_text().matches(what).count() < times {
        assert!(
            Instant::now() < deadline,
            "the log never said {what:?} {times} time(s):\n{}",
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_forming_server_that_holds_only_a_vote_says_why_it_waits_even_after_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let mut s = support::lone_server(root.path(), 3);
    // Its id, from its answer to a hello.
    let deadline = Instant::now() + Duration::from_secs(20);
    let id = loop {
        let hello = s.call(
            Op::Internal {
                kind: wire::Kind::Hello as u8,
                body: bytes::Bytes::new(),
            },
            Duration::from_secs(2),
        );
        if let Some(Response::Internal(b)) = hello {
            break wire::decode_hello(&b).unwrap().id;
        }
        assert!(
            Instant::now() < deadline,
            "the server never answered a hello"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // A candidate it does not know asks for its vote (properly addressed): it grants it,
    // and so holds a vote with no log and no membership.
    let candidate = id.wrapping_add(1);
    let ask = VoteRequest::<TypeConfig>::new(
        RaftVote {
            leader_id: LeaderId {
                term: 3,
                voted_for: candidate,
            },
            committed: false,
        },
        None,
    );
    match s.call(
        Op::Internal {
            kind: wire::Kind::Vote as u8,
            body: wire::address(id, &wire::encode_vote(&ask)),
        },
        Duration::from_secs(5),
    ) {
        Some(Response::Internal(b)) => {
            assert!(wire::decode_vote_response(&b).unwrap().vote_granted)
        }
        other => panic!("no vote answer: {other:?}"),
    }
    let note = format!("holds a Raft vote (term 3, for server {candidate}) but no log");
    wait_log(&s, &note, 1, Duration::from_secs(10));
    // After a restart it is initialized to openraft from the start, and still says so.
    s.kill();
    s.restart();
    wait_log(&s, &note, 2, Duration::from_secs(20));
    assert!(!s.log_text().contains("bootstrapped"), "{}", s.log_text());
}
