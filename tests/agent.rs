//! A real agent process on loopback, driven through the `cairn` CLI: writes, reads,
//! check-and-set, kill -9 and restart, and clear refusals of clashes and bad flags.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Agent {
    child: Child,
    addr: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str], port: u16) -> Agent {
    let port_s = port.to_string();
    let mut all = vec![
        "agent",
        "--server-port",
        &port_s,
        "--serf-lan-port",
        "0",
        "--http-port",
        "-1",
        "--dns-port",
        "-1",
    ];
    all.extend_from_slice(args);
    let log = std::env::temp_dir().join(format!(
        "cairn-agent-test-{port}-{}.log",
        std::process::id()
    ));
    let child = Command::new(CAIRN)
        .args(&all)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let agent = Agent {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    // Ready when it names a leader; bounded wait.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = cli(&agent, &["status", "leader"]);
        if code == 0 && out.trim() == agent.addr {
            return agent;
        }
        assert!(
            Instant::now() < deadline,
            "agent on {} never became ready (last answer: {code} {out:?} {err:?}): {}",
            agent.addr,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sessions need the node's serfHealth check, which the leader registers soon after it
/// starts (as Consul's, a session cannot be made before): waits for it (at most 20 s).
fn wait_for_serf_health(agent: &Agent, node: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cli(agent, &["health", "node", node])
        .1
        .contains("serfHealth")
    {
        assert!(Instant::now() < deadline, "serfHealth never registered");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cli(agent: &Agent, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--rpc-addr", &agent.addr, "--timeout-ms", "5000"]);
    let out = Command::new(CAIRN).args(&all).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_dev_agent_serves_writes_reads_and_check_and_set() {
    let a = start(&["--dev"], free_port());
    assert_eq!(cli(&a, &["kv", "put", "greeting", "hello"]).0, 0);
    let (code, out, _) = cli(&a, &["kv", "get", "greeting"]);
    assert_eq!((code, out.as_str()), (0, "hello\n"));
    let (code, _, err) = cli(&a, &["kv", "put", "--cas", "0", "greeting", "again"]);
    assert_eq!(code, 1);
    assert!(err.contains("CAS failed"), "{err}");
    for (k, v) in [("app/a", "1"), ("app/b/c", "2"), ("other", "3")] {
        assert_eq!(cli(&a, &["kv", "put", k, v]).0, 0);
    }
    let (_, out, _) = cli(&a, &["kv", "keys", "app/", "--separator", "/"]);
    assert_eq!(out, "app/a\napp/b/\n");
    let (_, out, _) = cli(&a, &["kv", "get", "--recurse", "--consistent", "app/"]);
    assert_eq!(out, "app/a:1\napp/b/c:2\n");
    assert_eq!(cli(&a, &["kv", "delete", "--recurse", "app/"]).0, 0);
    let (code, _, err) = cli(&a, &["kv", "get", "app/a"]);
    assert_eq!(code, 1);
    assert!(err.contains("No key exists at: app/a"), "{err}");
}

#[test]
fn acknowledged_writes_survive_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let port = free_port();
    let args = [
        "--server",
        "--bootstrap-expect",
        "1",
        "--data-dir",
        d.as_str(),
    ];
    {
        let a = start(&args, port);
        for i in 0..40 {
            let (code, _, err) = cli(&a, &["kv", "put", &format!("k/{i:02}"), &format!("v{i}")]);
            assert_eq!(code, 0, "{err}");
        }
        // Dropping the agent kills it with SIGKILL.
    }
    // The kernel releases a killed process's io_uring listener asynchronously: wait for
    // the port (bounded) so the restart is not refused as a clash.
    let t = Instant::now();
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
        && t.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = start(&args, port);
    let (_, out, _) = cli(&a, &["kv", "keys", "k/"]);
    assert_eq!(out.lines().count(), 40, "{out}");
    let (_, out, _) = cli(&a, &["kv", "get", "k/39"]);
    assert_eq!(out, "v39\n");
    // Still writable after the restart, and the log is healthy.
    assert_eq!(cli(&a, &["kv", "put", "after", "restart"]).0, 0);
    drop(a);
    let out = Command::new(CAIRN)
        .args(["debug", "log-check", &format!("{d}/raft/log")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_second_agent_on_the_same_port_or_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let port = free_port();
    let _a = start(
        &["--server", "--bootstrap-expect", "1", "--data-dir", d],
        port,
    );
    let out = Command::new(CAIRN)
        .args(["agent", "--dev", "--server-port", &port.to_string()])
        .args(["--http-port", "-1", "--dns-port", "-1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
    let out = Command::new(CAIRN)
        .args([
            "agent",
            "--server",
            "--bootstrap-expect",
            "1",
            "--data-dir",
            d,
            "--server-port",
            &free_port().to_string(),
            "--serf-lan-port",
            "0",
            "--http-port",
            "-1",
            "--dns-port",
            "-1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another process"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unsupported_or_incomplete_agent_flags_are_clear_errors() {
    for (args, needle) in [
        (vec!["agent"], "needs --data-dir DIR and --retry-join"),
        (
            vec!["agent", "--data-dir", "/tmp/x", "--bootstrap-expect", "3"],
            "add --server",
        ),
        (vec!["agent", "--server"], "needs --data-dir"),
        (
            vec!["agent", "--server", "--data-dir", "/tmp/x"],
            "needs --bootstrap-expect N",
        ),
        (
            vec!["agent", "--dev", "--bootstrap-expect", "3"],
            "cannot be used with",
        ),
        (
            vec!["agent", "--server", "--bootstrap-expect", "0"],
            "not in 1..=9",
        ),
        (
            vec!["agent", "--dev", "--data-dir", "/tmp/x"],
            "cannot be used with",
        ),
    ] {
        let out = Command::new(CAIRN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn a_cli_call_with_no_agent_says_how_to_start_one() {
    let out = Command::new(CAIRN)
        .args([
            "kv",
            "get",
            "x",
            "--rpc-addr",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cairn agent --dev"));
}

#[test]
fn garbage_and_oversize_requests_get_clear_errors_and_the_agent_stays_up() {
    use std::io::{Read, Write};
    let a = start(&["--dev"], free_port());
    // Not the RPC protocol at all: an error frame comes back, then the connection closes.
    let mut s = std::net::TcpStream::connect(&a.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(text.contains("bad magic"), "{text:?}");
    // A value over 512 KiB is refused with the limit, and nothing is written.
    let mut c = cairn::client::RpcClient::connect(&a.addr, Duration::from_secs(5)).unwrap();
    let req = cairn_net::rpc::message::Request {
        datacenter: String::new(),
        token: String::new(),
        op: cairn_net::rpc::message::Op::KvPut {
            key: bytes::Bytes::from_static(b"big"),
            value: bytes::Bytes::from(vec![b'x'; 512 * 1024]),
            flags: 0,
            cas: None,
            acquire: None,
            release: None,
        },
    };
    // Exactly at the limit is fine; one byte more is refused.
    assert!(matches!(
        c.call(&req).unwrap(),
        cairn_net::rpc::message::Response::Bool(true)
    ));
    let mut over = req.clone();
    if let cairn_net::rpc::message::Op::KvPut { key, value, .. } = &mut over.op {
        *key = bytes::Bytes::from_static(b"bigger");
        *value = bytes::Bytes::from(vec![b'x'; 512 * 1024 + 1]);
    }
    match c.call(&over) {
        Ok(cairn_net::rpc::message::Response::Error(e)) => {
            assert!(e.message.contains("value"), "{e:?}")
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
    let (code, _, _) = cli(&a, &["kv", "get", "bigger"]);
    assert_eq!(code, 1);
    // Still serving.
    assert_eq!(cli(&a, &["kv", "put", "ok", "1"]).0, 0);
}

#[test]
fn a_blocking_get_returns_as_soon_as_the_key_changes() {
    use cairn_net::rpc::message::{Op, ReadOpts, Request, Response};
    let a = start(&["--dev"], free_port());
    assert_eq!(cli(&a, &["kv", "put", "watched", "v1"]).0, 0);
    let get = |index: u64, wait_ms: u64| Request {
        datacenter: String::new(),
        token: String::new(),
        op: Op::KvGet {
            key: bytes::Bytes::from_static(b"watched"),
            opts: ReadOpts {
                index,
                wait_ms,
                ..ReadOpts::default()
            },
        },
    };
    let mut c = cairn::client::RpcClient::connect(&a.addr, Duration::from_secs(700)).unwrap();
    let Response::Entries { meta, .. } = c.call(&get(0, 0)).unwrap() else {
        panic!()
    };
    let addr = a.addr.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let out = Command::new(CAIRN)
            .args(["kv", "put", "watched", "v2", "--rpc-addr", &addr])
            .output()
            .unwrap();
        assert!(out.status.success());
    });
    // A wait longer than the test's time limit: only the write can end it.
    let Response::Entries { entries, meta: m2 } = c.call(&get(meta.index, 600_000)).unwrap() else {
        panic!()
    };
    writer.join().unwrap();
    assert_eq!(entries[0].value.as_ref(), b"v2");
    assert!(m2.index > meta.index);
    // With nothing changing, the wait runs out and the current value comes back.
    let t = Instant::now();
    let Response::Entries { meta: m3, .. } = c.call(&get(m2.index, 300)).unwrap() else {
        panic!()
    };
    assert_eq!(m3.index, m2.index);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[test]
fn a_configuration_file_sets_the_node_and_its_services_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.json");
    std::fs::write(
        &file,
        r#"{"node_name": "cfgnode", "datacenter": "east",
            "services": [{"name": "cache", "port": 6379,
                          "check": {"ttl": "60s", "status": "passing"}}]}"#,
    )
    .unwrap();
    let port = free_port();
    let a = start(
        &[
            "--dev",
            "--config-file",
            file.to_str().unwrap(),
            "--datacenter",
            "west",
        ],
        port,
    );
    // Anti-entropy registers the file's service under the file's node name, in the
    // datacenter the flag chose.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, _) = cli(&a, &["catalog", "node", "cfgnode", "--format", "json"]);
        if code == 0 && out.contains("\"cache\"") {
            assert!(out.contains("\"Datacenter\": \"west\""), "{out}");
            assert!(out.contains("6379"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "cache never registered: {out}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_bad_configuration_file_is_refused_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (json, says) in [
        (r#"{"node_nam": "x"}"#, "node_nam"),
        (r#"{"ports": {"serf_wan": 8302}}"#, "serf_wan"),
        (
            r#"{"service": {"name": "x", "check": {"ttl": "1s", "tcp": "a:1"}}}"#,
            "check",
        ),
        ("{not json", "key must be a string"),
    ] {
        std::fs::write(dir.path().join("bad.json"), json).unwrap();
        let out = Command::new(CAIRN)
            .args(["agent", "--dev", "--http-port", "-1", "--dns-port", "-1"])
            .args([
                "--serf-lan-port",
                "0",
                "--server-port",
                &free_port().to_string(),
            ])
            .args(["--config-dir", dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{json}: {err}");
        assert!(
            err.contains("bad.json") && err.contains(says),
            "{json}: {err}"
        );
    }
}

#[test]
fn a_dev_agent_removes_the_state_that_killed_dev_agents_left_behind() {
    // A dev agent killed with -9 cannot remove its temporary state; the next one does.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    let dead = (pid_max - 1000..pid_max)
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid");
    let stale = std::env::temp_dir().join(format!("cairn-dev-{dead}"));
    std::fs::create_dir_all(stale.join("raft")).unwrap();
    std::fs::write(stale.join("node-id"), "1\n").unwrap();
    let port = free_port();
    let a = start(&["--dev"], port);
    assert!(!stale.exists(), "{} was left behind", stale.display());
    // Its own directory is still there while it runs.
    let own = std::env::temp_dir().join(format!("cairn-dev-{}", a.child.id()));
    assert!(own.join("node-id").exists());
}

#[test]
fn cairn_lock_runs_commands_one_at_a_time_and_passes_their_exit_status() {
    let port = free_port();
    let a = start(&["--dev", "--node", "locker"], port);
    wait_for_serf_health(&a, "locker");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let script = format!(
        "echo start $0 >> {o}; sleep 0.5; echo end $0 >> {o}; exit 3",
        o = out.display()
    );
    let children: Vec<std::process::Child> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            Command::new(CAIRN)
                .args(["lock", "jobs/nightly", "--rpc-addr", &a.addr, "--"])
                .args(["sh", "-c", &script, name])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Never two at once: every start is followed by its own end.
    let lines: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    for pair in lines.chunks(2) {
        let who = pair[0].strip_prefix("start ").expect("a start");
        assert_eq!(pair[1], format!("end {who}"), "{lines:?}");
    }
    // The lock is free again and the sessions are gone.
    let (code, json, _) = cli(&a, &["kv", "get", "jobs/nightly/.lock", "--format", "json"]);
    assert_eq!(code, 0);
    assert!(json.contains("\"Session\": null"), "{json}");
}

#[test]
fn the_cli_creates_sessions_and_acquires_and_releases_locks_with_them() {
    let port = free_port();
    let a = start(&["--dev", "--node", "cli-node"], port);
    wait_for_serf_health(&a, "cli-node");
    let (code, s1, err) = cli(&a, &["session", "create", "--name", "one"]);
    assert_eq!(code, 0, "{err}");
    let s1 = s1.trim().to_string();
    let (_, s2, _) = cli(&a, &["session", "create", "--name", "two", "--ttl-s", "30"]);
    let s2 = s2.trim().to_string();
    let (code, list, _) = cli(&a, &["session", "list", "--format", "json"]);
    assert_eq!(code, 0);
    assert!(list.contains(&s1) && list.contains(&s2), "{list}");
    // One holder at a time.
    assert_eq!(
        cli(&a, &["kv", "put", "svc/leader", "one", "--acquire", &s1]).0,
        0
    );
    let (code, _, err) = cli(&a, &["kv", "put", "svc/leader", "two", "--acquire", &s2]);
    assert_eq!(code, 1);
    assert!(err.contains("held by another session"), "{err}");
    let (_, json, _) = cli(&a, &["kv", "get", "svc/leader", "--format", "json"]);
    assert!(
        json.contains(&s1) && json.contains("\"LockIndex\": 1"),
        "{json}"
    );
    // Released by its holder only.
    assert_eq!(
        cli(&a, &["kv", "put", "svc/leader", "x", "--release", &s2]).0,
        1
    );
    assert_eq!(
        cli(&a, &["kv", "put", "svc/leader", "one", "--release", &s1]).0,
        0
    );
    assert_eq!(cli(&a, &["session", "renew", &s2]).0, 0);
    assert_eq!(cli(&a, &["session", "destroy", &s1]).0, 0);
    let (code, _, err) = cli(&a, &["session", "info", &s1]);
    assert_eq!(code, 1, "{err}");
    assert!(cli(&a, &["session", "renew", &s1]).0 != 0);
}
