//! A network partition with real processes: three servers, each in a network namespace
//! this test creates (veth pairs on a bridge; the test, in the root namespace, reaches
//! every server). Isolating the leader is done with blackhole routes between it and the
//! other servers, in both directions. Needs root and iproute2 (`ip`).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use cairn_net::rpc::message::{Consistency, Op, Response};
use support::{b, get, put, Cluster};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!(
            "running `ip {}`: {e} (this test needs iproute2)",
            args.join(" ")
        )
    });
    assert!(
        out.status.success(),
        "`ip {}` failed: {} (this test needs root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces, veths and a bridge, removed on drop.
struct Net {
    bridge: String,
    namespaces: Vec<String>,
    ips: Vec<String>,
}

impl Net {
    fn new(n: usize) -> Net {
        let tag = std::process::id() % 100_000;
        let subnet = 100 + (std::process::id() % 150);
        let bridge = format!("cb{tag}");
        let mut net = Net {
            bridge: bridge.clone(),
            namespaces: Vec::new(),
            ips: Vec::new(),
        };
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&[
            "addr",
            "add",
            &format!("10.77.{subnet}.1/24"),
            "dev",
            &bridge,
        ]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..n {
            let ns = format!("cairn-{tag}-{i}");
            let (host, inner) = (format!("cv{tag}h{i}"), format!("cv{tag}n{i}"));
            let addr = format!("10.77.{subnet}.{}", 11 + i);
            ip(&["netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &host, "master", &bridge]);
            ip(&["link", "set", &host, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            net.ips.push(addr);
        }
        net
    }

    /// Cuts (or restores) the path between server `i` and every other server.
    fn isolate(&self, i: usize, cut: bool) {
        let verb = if cut { "add" } else { "del" };
        for j in 0..self.ips.len() {
            if j == i {
                continue;
            }
            let (a, b) = (&self.namespaces[i], &self.ips[j]);
            ip(&["-n", a, "route", verb, "blackhole", &format!("{b}/32")]);
            let (a, b) = (&self.namespaces[j], &self.ips[i]);
            ip(&["-n", a, "route", verb, "blackhole", &format!("{b}/32")]);
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

#[test]
fn an_isolated_leader_never_acknowledges_a_write_and_stops_serving_default_reads() {
    let net = Net::new(3);
    let c = Cluster::start_on(&net.ips, Some(&net.namespaces), &[]);
    let old = c.wait_for_leader(Duration::from_secs(20));
    let mut to_old = c.servers[old].client(Duration::from_secs(5)).unwrap();
    assert_eq!(put(&mut to_old, "k", "before"), Ok(Response::Bool(true)));
    for i in 0..3 {
        c.wait_stale_value(i, "k", "before", Duration::from_secs(10));
    }

    net.isolate(old, true);
    // The majority elects a new leader among themselves.
    let deadline = Instant::now() + Duration::from_secs(20);
    let new = loop {
        let named: Vec<Option<String>> = (0..3)
            .filter(|i| *i != old)
            .map(
                |i| match c.servers[i].call(Op::StatusLeader, Duration::from_secs(2)) {
                    Some(Response::Leader(l)) => l,
                    _ => None,
                },
            )
            .collect();
        if let Some(Some(l)) = named.first() {
            if named.iter().all(|n| n.as_ref() == Some(l)) && *l != c.servers[old].addr() {
                break c.servers.iter().position(|s| s.addr() == *l).unwrap();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the majority elected no leader: {named:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut to_new = c.servers[new].client(Duration::from_secs(5)).unwrap();
    assert_eq!(put(&mut to_new, "k", "after"), Ok(Response::Bool(true)));

    // The old leader cannot commit: its write is never acknowledged.
    let mut slow = c.servers[old].client(Duration::from_secs(4)).unwrap();
    let r = put(&mut slow, "during", "lost");
    eprintln!("write through the isolated leader: {r:?}");
    assert!(
        !matches!(r, Ok(Response::Bool(true))),
        "the isolated leader acknowledged a write: {r:?}"
    );
    // Its lease has run out by now (an election took place meanwhile): a default read
    // must not answer from its stale state.
    let r = c.servers[old].call(
        Op::KvGet {
            key: b("k"),
            opts: Default::default(),
        },
        Duration::from_secs(4),
    );
    eprintln!("default read on the isolated leader: {r:?}");
    assert!(
        !matches!(&r, Some(Response::Entries { .. })),
        "the isolated old leader served a default read: {r:?}"
    );
    // A stale read is allowed to, and does.
    assert_eq!(
        get(&c.servers[old], "k", Consistency::Stale).as_deref(),
        Some("before")
    );

    net.isolate(old, false);
    // Healed: the old leader follows, has the majority's write, and the write it could
    // not commit is gone.
    c.wait_stale_value(old, "k", "after", Duration::from_secs(30));
    let leader = c.wait_for_leader(Duration::from_secs(20));
    assert_eq!(
        get(&c.servers[leader], "during", Consistency::Consistent),
        None
    );
    assert_eq!(get(&c.servers[old], "during", Consistency::Stale), None);
}
