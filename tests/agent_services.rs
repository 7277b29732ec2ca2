//! A client agent's own services and health checks, with real processes: definitions
//! from `--config-dir` and from the agent API, checks run by the agent (TCP, TTL), status
//! changes pushed to the catalog, anti-entropy restoring what was deleted and removing
//! what the agent does not know, maintenance mode, registrations and TTL states that
//! survive a kill -9 of the agent.

mod support;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use cairn::catalog::{CatalogQuery, CatalogResult, Registration, Service, Status};
use cairn_net::rpc::message::{AgentKind, ErrorCode, Op, ReadOpts, Response};
use support::Cluster;

const T: Duration = Duration::from_secs(10);

fn node_checks(c: &Cluster, node: &str) -> Vec<(String, Status)> {
    match c.servers[0].call(
        Op::CatalogRead {
            query: CatalogQuery::NodeChecks { node: node.into() },
            opts: ReadOpts::default(),
        },
        T,
    ) {
        Some(Response::Catalog {
            result: CatalogResult::Checks(checks),
            ..
        }) => checks.into_iter().map(|c| (c.id, c.status)).collect(),
        _ => Vec::new(),
    }
}

fn node_services(c: &Cluster, node: &str) -> Vec<String> {
    match c.servers[0].call(
        Op::CatalogRead {
            query: CatalogQuery::NodeServices { node: node.into() },
            opts: ReadOpts::default(),
        },
        T,
    ) {
        Some(Response::Catalog {
            result: CatalogResult::NodeServices(_, services),
            ..
        }) => services.into_iter().map(|s| s.id).collect(),
        _ => Vec::new(),
    }
}

fn wait(c: &Cluster, what: &str, limit: Duration, ok: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status_of(c: &Cluster, node: &str, check: &str) -> Option<Status> {
    node_checks(c, node)
        .into_iter()
        .find(|(id, _)| id == check)
        .map(|(_, s)| s)
}

#[test]
fn a_client_agents_services_and_checks_reach_the_catalog_and_stay_true() {
    let app = TcpListener::bind("127.0.0.1:0").unwrap();
    let app_port = app.local_addr().unwrap().port();
    let cfg = tempfile::tempdir().unwrap();
    std::fs::write(
        cfg.path().join("web.json"),
        format!(
            r#"{{"service": {{"name": "web", "tags": ["v1"], "port": {app_port},
                "check": {{"tcp": "127.0.0.1:{app_port}", "interval": "1s", "timeout": "1s"}}}}}}"#
        ),
    )
    .unwrap();
    std::fs::write(
        cfg.path().join("ttl.json"),
        r#"{"check": {"id": "app-ttl", "name": "app heartbeat", "ttl": "60s", "status": "passing"}}"#,
    )
    .unwrap();
    let mut c = Cluster::start(3, &[]);
    let a = c.add_client_with(&["--config-dir", cfg.path().to_str().unwrap()]);
    let node = format!("c{a}");

    // The config-dir service and its TCP check, the TTL check, and serfHealth.
    wait(
        &c,
        "web registered and passing",
        Duration::from_secs(30),
        || {
            status_of(&c, &node, "service:web") == Some(Status::Passing)
                && status_of(&c, &node, "app-ttl") == Some(Status::Passing)
                && status_of(&c, &node, "serfHealth") == Some(Status::Passing)
        },
    );
    assert_eq!(node_services(&c, &node), vec!["web".to_string()]);

    // The application stops listening: the TCP check goes critical in the catalog.
    drop(app);
    wait(&c, "web critical", T, || {
        status_of(&c, &node, "service:web") == Some(Status::Critical)
    });

    // A service registered through the agent API (CamelCase, as the HTTP API sends it).
    let api = &c.servers[a];
    assert_eq!(
        api.call(
            Op::AgentRegister {
                kind: AgentKind::Service,
                definition: bytes::Bytes::from_static(
                    br#"{"Name": "db", "ID": "db-1", "Port": 5432,
                         "Check": {"CheckID": "db-ttl", "TTL": "60s"}}"#
                ),
            },
            T
        ),
        Some(Response::Bool(true))
    );
    wait(&c, "db registered", T, || {
        node_services(&c, &node).contains(&"db-1".to_string())
    });
    // A bad definition is refused with the field named, and nothing changes.
    match api.call(
        Op::AgentRegister {
            kind: AgentKind::Service,
            definition: bytes::Bytes::from_static(
                br#"{"Name": "x", "Check": {"TTL": "10s", "TCP": "a:1"}}"#,
            ),
        },
        T,
    ) {
        Some(Response::Error(e)) => assert_eq!(e.code, ErrorCode::Invalid, "{}", e.message),
        other => panic!("{other:?}"),
    }

    // Someone deletes db-1 from the catalog and registers a service the agent does not
    // know on its node; the next sync (here: woken by a TTL status change) undoes both.
    assert_eq!(
        c.servers[1].call(
            Op::CatalogDeregister {
                node: node.clone(),
                service_id: Some("db-1".into()),
                check_id: None
            },
            T
        ),
        Some(Response::Bool(true))
    );
    assert_eq!(
        c.servers[1].call(
            Op::CatalogRegister(Box::new(Registration {
                node: node.clone(),
                address: "127.0.0.1".into(),
                service: Some(Service {
                    id: "rogue".into(),
                    name: "rogue".into(),
                    ..Service::default()
                }),
                ..Registration::default()
            })),
            T
        ),
        Some(Response::Bool(true))
    );
    assert_eq!(
        api.call(
            Op::AgentCheckUpdate {
                id: "db-ttl".into(),
                status: Status::Passing,
                output: "ok".into()
            },
            T
        ),
        Some(Response::Bool(true))
    );
    wait(&c, "db restored, rogue removed, db-ttl passing", T, || {
        let s = node_services(&c, &node);
        s.contains(&"db-1".to_string())
            && !s.contains(&"rogue".to_string())
            && status_of(&c, &node, "db-ttl") == Some(Status::Passing)
    });
    // An update for an unknown check is a clear error.
    assert!(matches!(
        api.call(
            Op::AgentCheckUpdate {
                id: "nope".into(),
                status: Status::Passing,
                output: String::new()
            },
            T
        ),
        Some(Response::Error(e)) if e.code == ErrorCode::NotFound
    ));

    // Maintenance mode on db-1: a critical check takes it out of passing queries.
    let db_passing = |c: &Cluster| match c.servers[0].call(
        Op::CatalogRead {
            query: CatalogQuery::Service {
                name: "db".into(),
                tag: None,
                passing_only: true,
            },
            opts: ReadOpts::default(),
        },
        T,
    ) {
        Some(Response::Catalog {
            result: CatalogResult::Instances(i),
            ..
        }) => i.len(),
        _ => usize::MAX,
    };
    // The node-level app-ttl check is passing, so db is passing now.
    wait(&c, "db passing", T, || db_passing(&c) == 1);
    assert_eq!(
        api.call(
            Op::AgentMaintenance {
                service_id: Some("db-1".into()),
                enable: true,
                reason: "upgrading".into()
            },
            T
        ),
        Some(Response::Bool(true))
    );
    wait(&c, "db in maintenance", T, || db_passing(&c) == 0);

    // kill -9 and restart the agent: the API registration, the TTL status and the
    // maintenance mode survive.
    c.servers[a].kill();
    c.servers[a].restart();
    wait(&c, "the agent answers again", T, || {
        matches!(
            c.servers[a].call(Op::AgentLocal { kind: AgentKind::Service }, T),
            Some(Response::Catalog { result: CatalogResult::NodeServices(_, s), .. })
                if s.iter().any(|s| s.id == "db-1")
        )
    });
    match c.servers[a].call(
        Op::AgentLocal {
            kind: AgentKind::Check,
        },
        T,
    ) {
        Some(Response::Catalog {
            result: CatalogResult::Checks(checks),
            ..
        }) => {
            let ttl = checks.iter().find(|c| c.id == "db-ttl").expect("db-ttl");
            assert_eq!(ttl.status, Status::Passing, "the TTL status was kept");
            assert_eq!(ttl.output, "ok");
            let maint = checks
                .iter()
                .find(|c| c.id == "_service_maintenance:db-1")
                .expect("the maintenance mode was kept");
            assert_eq!(maint.status, Status::Critical);
            assert_eq!(maint.output, "upgrading");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(db_passing(&c), 0, "still in maintenance after the restart");
    assert_eq!(
        c.servers[a].call(
            Op::AgentMaintenance {
                service_id: Some("db-1".into()),
                enable: false,
                reason: String::new()
            },
            T
        ),
        Some(Response::Bool(true))
    );
    wait(&c, "db out of maintenance", T, || db_passing(&c) == 1);

    // Deregistering through the agent removes it from the catalog.
    assert_eq!(
        c.servers[a].call(
            Op::AgentDeregister {
                kind: AgentKind::Service,
                id: "db-1".into()
            },
            T
        ),
        Some(Response::Bool(true))
    );
    wait(&c, "db gone", T, || {
        !node_services(&c, &node).contains(&"db-1".to_string())
            && status_of(&c, &node, "db-ttl").is_none()
    });
}

/// A tiny HTTP responder on `listener`: answers every request with `status()` until the
/// listener is dropped by the test (bounded: at most 10,000 requests).
fn serve_http(listener: TcpListener, status: std::sync::Arc<std::sync::atomic::AtomicU16>) {
    use std::io::{Read, Write};
    std::thread::spawn(move || {
        for stream in listener.incoming().take(10_000) {
            let Ok(mut s) = stream else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let code = status.load(std::sync::atomic::Ordering::SeqCst);
            let _ = write!(
                s,
                "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
}

#[test]
fn http_and_tcp_checks_follow_their_listener_and_an_unreported_ttl_check_expires() {
    use std::sync::atomic::{AtomicU16, Ordering};
    let web = TcpListener::bind("127.0.0.1:0").unwrap();
    let web_port = web.local_addr().unwrap().port();
    let status = std::sync::Arc::new(AtomicU16::new(200));
    serve_http(web, status.clone());
    let db = TcpListener::bind("127.0.0.1:0").unwrap();
    let db_port = db.local_addr().unwrap().port();
    let cfg = tempfile::tempdir().unwrap();
    std::fs::write(
        cfg.path().join("svc.json"),
        format!(
            r#"{{"services": [
                {{"name": "web", "port": {web_port},
                  "check": {{"http": "http://127.0.0.1:{web_port}/health", "interval": "1s", "timeout": "1s"}}}},
                {{"name": "db", "port": {db_port},
                  "check": {{"tcp": "127.0.0.1:{db_port}", "interval": "1s", "timeout": "1s"}}}}
            ]}}"#
        ),
    )
    .unwrap();
    let mut c = Cluster::start(1, &[]);
    let a = c.add_client_with(&["--config-dir", cfg.path().to_str().unwrap()]);
    let node = format!("c{a}");
    let long = Duration::from_secs(30);
    wait(&c, "both passing", long, || {
        status_of(&c, &node, "service:web") == Some(Status::Passing)
            && status_of(&c, &node, "service:db") == Some(Status::Passing)
    });
    // HTTP: 429 is warning, 500 critical, 200 passing again.
    status.store(429, Ordering::SeqCst);
    wait(&c, "web warning", long, || {
        status_of(&c, &node, "service:web") == Some(Status::Warning)
    });
    status.store(500, Ordering::SeqCst);
    wait(&c, "web critical", long, || {
        status_of(&c, &node, "service:web") == Some(Status::Critical)
    });
    status.store(200, Ordering::SeqCst);
    wait(&c, "web passing again", long, || {
        status_of(&c, &node, "service:web") == Some(Status::Passing)
    });
    // TCP: the listener stops, then starts again on the same port.
    drop(db);
    wait(&c, "db critical", long, || {
        status_of(&c, &node, "service:db") == Some(Status::Critical)
    });
    let db = TcpListener::bind(("127.0.0.1", db_port)).expect("the port again");
    wait(&c, "db passing again", long, || {
        status_of(&c, &node, "service:db") == Some(Status::Passing)
    });
    drop(db);
    // A TTL check nobody reports to turns critical when its TTL runs out.
    assert_eq!(
        c.servers[a].call(
            Op::AgentRegister {
                kind: AgentKind::Check,
                definition: bytes::Bytes::from_static(
                    br#"{"CheckID": "cron", "Name": "nightly cron", "TTL": "2s", "Status": "passing"}"#
                ),
            },
            T
        ),
        Some(Response::Bool(true))
    );
    wait(&c, "cron passing", long, || {
        status_of(&c, &node, "cron") == Some(Status::Passing)
    });
    wait(&c, "cron expired", long, || {
        status_of(&c, &node, "cron") == Some(Status::Critical)
    });
}
