//! The catalog in a real cluster: gossip members become catalog nodes with a `serfHealth`
//! check; a killed agent's check goes critical and its services leave passing queries;
//! its sessions are invalidated and their locks released; an agent that leaves is
//! deregistered; all of it carries on under a new leader; the catalog survives a restart
//! through a snapshot.

mod support;

use std::time::{Duration, Instant};

use cairn::catalog::{
    CatalogQuery, CatalogResult, Check, Registration, Service, SessionInfo, SessionQuery, Status,
};
use cairn_net::rpc::message::{Consistency, ErrorCode, Op, ReadOpts, Response};
use support::{b, Cluster};

const T: Duration = Duration::from_secs(10);

fn read(c: &Cluster, i: usize, query: CatalogQuery) -> Option<CatalogResult> {
    match c.servers[i].call(
        Op::CatalogRead {
            query,
            opts: ReadOpts::default(),
        },
        T,
    ) {
        Some(Response::Catalog { result, .. }) => Some(result),
        _ => None,
    }
}

/// Polls `query` on server `i` until `ok` holds (at most `limit`).
fn wait_for(
    c: &Cluster,
    i: usize,
    query: CatalogQuery,
    limit: Duration,
    what: &str,
    ok: impl Fn(&CatalogResult) -> bool,
) -> CatalogResult {
    let deadline = Instant::now() + limit;
    let mut last = None;
    loop {
        if let Some(r) = read(c, i, query.clone()) {
            if ok(&r) {
                return r;
            }
            last = Some(r);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last answer {last:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn serf_status(r: &CatalogResult, node: &str) -> Option<Status> {
    match r {
        CatalogResult::Checks(checks) => checks
            .iter()
            .find(|c| c.node == node && c.id == "serfHealth")
            .map(|c| c.status),
        _ => None,
    }
}

fn node_names(r: &CatalogResult) -> Vec<String> {
    match r {
        CatalogResult::Nodes(n) => n.iter().map(|n| n.name.clone()).collect(),
        _ => Vec::new(),
    }
}

fn instances(r: &CatalogResult) -> usize {
    match r {
        CatalogResult::Instances(i) => i.len(),
        _ => usize::MAX,
    }
}

#[test]
fn gossip_members_are_catalog_nodes_and_failures_leaves_and_sessions_follow_them() {
    let mut c = Cluster::start(3, &[]);
    c.wait_for_leader(T);
    let a = c.add_client();
    let bb = c.add_client();
    let (na, nb) = (format!("c{a}"), format!("c{bb}"));
    // Every member is a node with a passing serfHealth.
    let all = CatalogQuery::ChecksInState { state: None };
    wait_for(
        &c,
        0,
        all.clone(),
        Duration::from_secs(30),
        "5 healthy nodes",
        |r| {
            ["s0", "s1", "s2", &na, &nb]
                .iter()
                .all(|n| serf_status(r, n) == Some(Status::Passing))
        },
    );
    // A service on agent a, with a passing check of its own.
    let reg = Registration {
        node: na.clone(),
        address: "127.0.0.1".into(),
        service: Some(Service {
            id: "web-1".into(),
            name: "web".into(),
            tags: vec!["v1".into()],
            port: 8080,
            ..Service::default()
        }),
        checks: vec![Check {
            id: "web-alive".into(),
            name: "web alive".into(),
            status: Status::Passing,
            service_id: "web-1".into(),
            kind: "ttl".into(),
            ..Check::default()
        }],
        ..Registration::default()
    };
    // Through a follower (forwarded to the leader).
    let leader = c.wait_for_leader(T);
    let follower = c.other_than(leader);
    assert_eq!(
        c.servers[follower].call(Op::CatalogRegister(Box::new(reg)), T),
        Some(Response::Bool(true))
    );
    let web_passing = CatalogQuery::Service {
        name: "web".into(),
        tag: Some("v1".into()),
        passing_only: true,
    };
    wait_for(&c, 1, web_passing.clone(), T, "web passing", |r| {
        instances(r) == 1
    });
    // A session on a's node holding a lock.
    let Some(Response::Sessions { sessions, .. }) = c.servers[follower].call(
        Op::SessionCreate(SessionInfo {
            node: na.clone(),
            name: "lock-holder".into(),
            node_checks: vec!["serfHealth".into()],
            ..SessionInfo::default()
        }),
        T,
    ) else {
        panic!("no session\n{}", c.logs());
    };
    let sid = sessions[0].id.clone();
    assert_eq!(
        c.servers[0].call(
            Op::KvPut {
                key: b("locks/web"),
                value: b("a"),
                flags: 0,
                cas: None,
                acquire: Some(sid.clone()),
                release: None,
            },
            T,
        ),
        Some(Response::Bool(true))
    );
    // A session for a node the catalog does not know is refused.
    assert!(matches!(
        c.servers[0].call(
            Op::SessionCreate(SessionInfo {
                node: "nowhere".into(),
                ..SessionInfo::default()
            }),
            T
        ),
        Some(Response::Error(e)) if e.code == ErrorCode::Invalid
    ));

    // kill -9 a: its serfHealth goes critical, web leaves passing queries, the session
    // is invalidated and the lock released.
    c.servers[a].kill();
    wait_for(
        &c,
        0,
        all.clone(),
        Duration::from_secs(30),
        "a critical",
        |r| serf_status(r, &na) == Some(Status::Critical),
    );
    wait_for(&c, 2, web_passing.clone(), T, "web not passing", |r| {
        instances(r) == 0
    });
    let every_web = CatalogQuery::Service {
        name: "web".into(),
        tag: None,
        passing_only: false,
    };
    assert_eq!(instances(&read(&c, 0, every_web).unwrap()), 1);
    let deadline = Instant::now() + T;
    loop {
        let gone = matches!(
            c.servers[0].call(
                Op::SessionRead {
                    query: SessionQuery::Info { id: sid.clone() },
                    opts: ReadOpts::default()
                },
                T
            ),
            Some(Response::Sessions { sessions, .. }) if sessions.is_empty()
        );
        if gone {
            break;
        }
        assert!(Instant::now() < deadline, "session never invalidated");
        std::thread::sleep(Duration::from_millis(100));
    }
    match c.servers[0].call(
        Op::KvGet {
            key: b("locks/web"),
            opts: ReadOpts::default(),
        },
        T,
    ) {
        Some(Response::Entries { entries, .. }) => {
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].session, None, "the lock was released");
        }
        other => panic!("{other:?}"),
    }

    // Forcing a live agent out is refused; forcing the failed one out deregisters it.
    assert!(matches!(
        c.servers[0].call(Op::ForceLeave { node: nb.clone() }, T),
        Some(Response::Error(e)) if e.code == ErrorCode::Invalid && e.message.contains("not failed")
    ));
    // Server 0's own gossip view may not have declared it failed yet (the catalog shows
    // the leader's view): ask until it has.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.servers[0].call(Op::ForceLeave { node: na.clone() }, T) {
            Some(Response::Done) => break,
            Some(Response::Error(e)) if e.message.contains("not failed") => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "never failed in server 0's view");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(&c, 1, CatalogQuery::Nodes, T, "a force-left", |r| {
        !node_names(r).contains(&na)
    });

    // b leaves gracefully: deregistered.
    c.servers[bb].terminate();
    wait_for(
        &c,
        0,
        CatalogQuery::Nodes,
        Duration::from_secs(30),
        "b gone",
        |r| !node_names(r).contains(&nb),
    );

    // The leader dies: the new leader finds it failed and marks it critical.
    let old = c.wait_for_leader(T);
    c.servers[old].kill();
    let new = c.wait_for_leader(Duration::from_secs(30));
    let old_name = format!("s{old}");
    wait_for(
        &c,
        new,
        all,
        Duration::from_secs(30),
        "old leader critical",
        |r| serf_status(r, &old_name) == Some(Status::Critical),
    );
}

#[test]
fn the_catalog_survives_a_full_restart_through_its_snapshot() {
    // Snapshot every 20 entries so the catalog is restored from a snapshot, not only
    // replayed from the log.
    let mut c = Cluster::start(3, &["--raft-snapshot-threshold", "20"]);
    c.wait_for_leader(T);
    for i in 0..30 {
        let reg = Registration {
            node: format!("ext-{i}"),
            address: format!("192.0.2.{i}"),
            service: Some(Service {
                name: "db".into(),
                id: format!("db-{i}"),
                port: 5432,
                ..Service::default()
            }),
            ..Registration::default()
        };
        assert_eq!(
            c.servers[0].call(Op::CatalogRegister(Box::new(reg)), T),
            Some(Response::Bool(true)),
            "{}",
            c.logs()
        );
    }
    for s in c.servers.iter_mut() {
        s.kill();
    }
    for s in c.servers.iter_mut() {
        s.restart();
    }
    c.wait_for_leader(Duration::from_secs(30));
    let r = wait_for(
        &c,
        1,
        CatalogQuery::Service {
            name: "db".into(),
            tag: None,
            passing_only: false,
        },
        T,
        "30 db instances",
        |r| instances(r) == 30,
    );
    let CatalogResult::Instances(list) = r else {
        unreachable!()
    };
    assert!(list.iter().all(|i| i.service.port == 5432));
    // Each server wrote a snapshot (so the catalog came back from one, then the log).
    for srv in &c.servers {
        let snaps = std::fs::read_dir(srv.dir.join("raft/snapshots"))
            .map(|d| d.filter_map(Result::ok).count())
            .unwrap_or(0);
        assert!(snaps > 0, "no snapshot in {}", srv.dir.display());
    }
    // Stale reads on a follower catch up to the same.
    let deadline = Instant::now() + T;
    loop {
        let stale = c.servers[2].call(
            Op::CatalogRead {
                query: CatalogQuery::Nodes,
                opts: ReadOpts {
                    consistency: Consistency::Stale,
                    ..ReadOpts::default()
                },
            },
            T,
        );
        if matches!(&stale, Some(Response::Catalog { result: CatalogResult::Nodes(n), .. }) if n.len() >= 33)
        {
            break;
        }
        assert!(Instant::now() < deadline, "{stale:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_ttl_session_expires_unless_renewed_and_its_delete_behavior_removes_its_lock() {
    use cairn::catalog::SessionBehavior;
    let c = Cluster::start(1, &[]);
    c.wait_for_leader(T);
    wait_for(&c, 0, CatalogQuery::Nodes, T, "s0 registered", |r| {
        node_names(r).contains(&"s0".to_string())
    });
    let create = |name: &str, behavior| match c.servers[0].call(
        Op::SessionCreate(SessionInfo {
            node: "s0".into(),
            name: name.into(),
            ttl_ms: 10_000,
            behavior,
            ..SessionInfo::default()
        }),
        T,
    ) {
        Some(Response::Sessions { sessions, .. }) => sessions[0].id.clone(),
        other => panic!("{other:?}\n{}", c.logs()),
    };
    let lapsing = create("lapsing", SessionBehavior::Delete);
    let renewed = create("renewed", SessionBehavior::Release);
    // A TTL outside Consul's bounds is refused.
    assert!(matches!(
        c.servers[0].call(
            Op::SessionCreate(SessionInfo {
                node: "s0".into(),
                ttl_ms: 1_000,
                ..SessionInfo::default()
            }),
            T
        ),
        Some(Response::Error(e)) if e.code == ErrorCode::Invalid
    ));
    assert_eq!(
        c.servers[0].call(
            Op::KvPut {
                key: b("leader/job"),
                value: b("me"),
                flags: 0,
                cas: None,
                acquire: Some(lapsing.clone()),
                release: None,
            },
            T,
        ),
        Some(Response::Bool(true))
    );
    let exists = |id: &str| {
        matches!(
            c.servers[0].call(
                Op::SessionRead {
                    query: SessionQuery::Info { id: id.into() },
                    opts: ReadOpts::default()
                },
                T
            ),
            Some(Response::Sessions { sessions, .. }) if sessions.len() == 1
        )
    };
    // Renew one every 3 s; the other lapses after its TTL (at most twice the TTL).
    let deadline = Instant::now() + Duration::from_secs(40);
    while exists(&lapsing) {
        assert!(Instant::now() < deadline, "the session never expired");
        assert!(
            matches!(
                c.servers[0].call(
                    Op::SessionRenew {
                        id: renewed.clone()
                    },
                    T
                ),
                Some(Response::Sessions { .. })
            ),
            "renewal failed"
        );
        std::thread::sleep(Duration::from_secs(3));
    }
    assert!(exists(&renewed), "a renewed session was expired");
    // The lapsed session's delete behavior removed the key it held.
    assert!(matches!(
        c.servers[0].call(
            Op::KvGet {
                key: b("leader/job"),
                opts: ReadOpts::default()
            },
            T
        ),
        Some(Response::Entries { entries, .. }) if entries.is_empty()
    ));
    // Renewing a session that is gone is NotFound.
    assert!(matches!(
        c.servers[0].call(Op::SessionRenew { id: lapsing }, T),
        Some(Response::Error(e)) if e.code == ErrorCode::NotFound
    ));
    // Destroying the other releases nothing it did not hold, and it is gone.
    assert_eq!(
        c.servers[0].call(
            Op::SessionDestroy {
                id: renewed.clone()
            },
            T
        ),
        Some(Response::Bool(true))
    );
    assert!(!exists(&renewed));
}

/// kill -9 of a client agent: a blocking query on its service returns with the instance
/// gone from passing results, its session's lock is released and another session gets it
/// once the lock-delay has passed; restarted, the agent is passing again.
#[test]
fn a_killed_client_agent_wakes_watchers_frees_its_locks_after_the_delay_and_comes_back() {
    let mut c = Cluster::start(3, &[]);
    c.wait_for_leader(T);
    let a = c.add_client();
    let na = format!("c{a}");
    // A service on the agent, passing (a TTL check reported passing).
    let register = |c: &Cluster| {
        c.servers[a].call(
            Op::AgentRegister {
                kind: cairn_net::rpc::message::AgentKind::Service,
                definition: bytes::Bytes::from_static(
                    br#"{"Name": "api", "Port": 9000,
                         "Check": {"CheckID": "api-ttl", "TTL": "300s", "Status": "passing"}}"#,
                ),
            },
            T,
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while register(&c) != Some(Response::Bool(true)) {
        assert!(Instant::now() < deadline, "agent never up\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let api_passing = CatalogQuery::Service {
        name: "api".into(),
        tag: None,
        passing_only: true,
    };
    wait_for(
        &c,
        0,
        api_passing.clone(),
        Duration::from_secs(30),
        "api passing",
        |r| instances(r) == 1,
    );
    // A session on the agent's node holds a lock (lock-delay 2 s).
    let create = |node: &str| match c.servers[0].call(
        Op::SessionCreate(SessionInfo {
            node: node.into(),
            lock_delay_ms: 2_000,
            node_checks: vec!["serfHealth".into()],
            ..SessionInfo::default()
        }),
        T,
    ) {
        Some(Response::Sessions { sessions, .. }) => sessions[0].id.clone(),
        other => panic!("{other:?}"),
    };
    let holder = create(&na);
    let waiter = create("s0");
    let acquire = |c: &Cluster, session: &str| {
        c.servers[1].call(
            Op::KvPut {
                key: b("locks/api"),
                value: b("x"),
                flags: 0,
                cas: None,
                acquire: Some(session.into()),
                release: None,
            },
            T,
        )
    };
    assert_eq!(acquire(&c, &holder), Some(Response::Bool(true)));
    assert_eq!(
        acquire(&c, &waiter),
        Some(Response::Bool(false)),
        "held by the agent"
    );
    // A blocking watcher of api's passing instances, on another server.
    let index = match c.servers[2].call(
        Op::CatalogRead {
            query: api_passing.clone(),
            opts: ReadOpts::default(),
        },
        T,
    ) {
        Some(Response::Catalog { meta, .. }) => meta.index,
        other => panic!("{other:?}"),
    };
    let addr = c.servers[2].addr();
    let watcher = std::thread::spawn(move || {
        let mut conn = cairn::client::RpcClient::connect(&addr, T).expect("connect");
        conn.call(&support::req(Op::CatalogRead {
            query: CatalogQuery::Service {
                name: "api".into(),
                tag: None,
                passing_only: true,
            },
            opts: ReadOpts {
                index,
                wait_ms: 60_000,
                ..ReadOpts::default()
            },
        }))
    });
    c.servers[a].kill();
    // The watcher wakes with api gone from the passing instances.
    match watcher.join().unwrap() {
        Ok(Response::Catalog {
            result: CatalogResult::Instances(i),
            meta,
        }) => {
            assert!(meta.index > index);
            assert!(i.is_empty(), "{i:?}");
        }
        other => panic!("{other:?}\n{}", c.logs()),
    }
    // The holder's session is invalidated; the waiter gets the lock once the lock-delay
    // has passed (and not before the session ended).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match acquire(&c, &waiter) {
            Some(Response::Bool(true)) => break,
            Some(Response::Bool(false)) => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "the waiter never got the lock");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Restarted, the agent is passing again (its registration was kept).
    c.servers[a].restart();
    wait_for(
        &c,
        0,
        api_passing,
        Duration::from_secs(30),
        "api passing again",
        |r| instances(r) == 1,
    );
}

/// A session bound to a service check ends when that check goes critical; a session
/// naming a check the node does not have is refused; one bound to nothing outlives a
/// critical check.
#[test]
fn a_session_bound_to_a_service_check_ends_when_the_check_goes_critical() {
    let c = Cluster::start(1, &[]);
    c.wait_for_leader(T);
    let reg = |status: Status| Registration {
        node: "app-1".into(),
        address: "192.0.2.7".into(),
        service: Some(Service {
            id: "web".into(),
            name: "web".into(),
            ..Service::default()
        }),
        checks: vec![Check {
            id: "web-alive".into(),
            name: "web alive".into(),
            status,
            service_id: "web".into(),
            ..Check::default()
        }],
        ..Registration::default()
    };
    assert_eq!(
        c.servers[0].call(Op::CatalogRegister(Box::new(reg(Status::Passing))), T),
        Some(Response::Bool(true))
    );
    let create = |service_checks: Vec<String>| {
        c.servers[0].call(
            Op::SessionCreate(SessionInfo {
                node: "app-1".into(),
                service_checks,
                ..SessionInfo::default()
            }),
            T,
        )
    };
    let id_of = |r: Option<Response>| match r {
        Some(Response::Sessions { sessions, .. }) => sessions[0].id.clone(),
        other => panic!("{other:?}"),
    };
    let bound = id_of(create(vec!["web-alive".into()]));
    let unbound = id_of(create(Vec::new()));
    assert!(matches!(
        create(vec!["nope".into()]),
        Some(Response::Error(e)) if e.code == ErrorCode::Invalid && e.message.contains("nope")
    ));
    assert_eq!(
        c.servers[0].call(Op::CatalogRegister(Box::new(reg(Status::Critical))), T),
        Some(Response::Bool(true))
    );
    let exists = |id: &str| {
        matches!(
            c.servers[0].call(
                Op::SessionRead {
                    query: SessionQuery::Info { id: id.into() },
                    opts: ReadOpts::default()
                },
                T
            ),
            Some(Response::Sessions { sessions, .. }) if sessions.len() == 1
        )
    };
    let deadline = Instant::now() + T;
    while exists(&bound) {
        assert!(
            Instant::now() < deadline,
            "the bound session outlived its check"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        exists(&unbound),
        "a session bound to nothing was invalidated"
    );
}

/// A catalog answer larger than any request (here ≈ 3.3 MB of nodes, beyond the 2 MiB a
/// server accepts in one request frame) reaches a client directly from the server and
/// through a client agent, which forwards it from the server.
#[test]
fn a_catalog_answer_larger_than_a_request_frame_reaches_clients_and_client_agents() {
    let mut c = Cluster::start(1, &[]);
    c.wait_for_leader(T);
    let agent = c.add_client();
    let mut rpc = c.servers[0].client(T).expect("connect");
    let meta: std::collections::BTreeMap<String, String> = (0..32)
        .map(|k| (format!("k{k:02}"), "v".repeat(1000)))
        .collect();
    for n in 0..100 {
        let reg = Registration {
            node: format!("big-{n:03}"),
            address: "192.0.2.1".into(),
            node_meta: meta.clone(),
            ..Registration::default()
        };
        assert_eq!(
            rpc.call(&support::req(Op::CatalogRegister(Box::new(reg))))
                .ok(),
            Some(Response::Bool(true))
        );
    }
    let big = |r: &CatalogResult| {
        node_names(r)
            .iter()
            .filter(|n| n.starts_with("big-"))
            .count()
    };
    let r = read(&c, 0, CatalogQuery::Nodes).expect("the server's answer");
    assert_eq!(big(&r), 100);
    // The client agent reads through its server (eventually: it may still be joining).
    let r = wait_for(
        &c,
        agent,
        CatalogQuery::Nodes,
        T,
        "nodes via the client agent",
        |r| big(r) == 100,
    );
    assert_eq!(big(&r), 100);
}
