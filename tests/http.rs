//! Consul's HTTP API on real agent processes, driven by a plain HTTP/1.1 client over
//! `std::net::TcpStream` (no curl needed, and it can also send what curl would refuse
//! to: garbage, trickled headers, too many connections). Every wait is bounded; nothing
//! here asserts on timing.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_port, free_udp_port, CAIRN};

/// An agent process, killed when dropped.
struct Agent {
    child: Child,
    http: String,
    log: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Http {
        call(&self.http, "GET", path, b"")
    }

    fn put(&self, path: &str, body: &[u8]) -> Http {
        call(&self.http, "PUT", path, body)
    }

    fn delete(&self, path: &str) -> Http {
        call(&self.http, "DELETE", path, b"")
    }
}

/// Spawns `cairn agent` with `args` and its HTTP API on a free port; waits (bounded)
/// until `/v1/status/leader` names a leader.
fn start(args: &[&str]) -> Agent {
    start_until(
        args,
        "named a leader",
        |r| r.status == 200 && r.text().len() > 2,
        "/v1/status/leader",
    )
}

/// Spawns `cairn agent` with `args` and its HTTP API on a free port; waits (bounded)
/// until the answer to GET `path` satisfies `ok`.
fn start_until(args: &[&str], what: &str, ok: impl Fn(&Http) -> bool, path: &str) -> Agent {
    let http_port = free_port("127.0.0.1");
    let log = std::env::temp_dir().join(format!(
        "cairn-http-test-{http_port}-{}.log",
        std::process::id()
    ));
    let child = Command::new(CAIRN)
        .arg("agent")
        .args(args)
        .args(["--http-port", &http_port.to_string(), "--dns-port", "-1"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let agent = Agent {
        child,
        http: format!("127.0.0.1:{http_port}"),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = try_call(&agent.http, "GET", path, b"") {
            if ok(&r) {
                return agent;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the agent's HTTP API never {what}: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn dev(extra: &[&str]) -> Agent {
    let rpc = free_port("127.0.0.1").to_string();
    let mut args = vec!["--dev", "--server-port", &rpc, "--serf-lan-port", "0"];
    args.extend_from_slice(extra);
    start(&args)
}

/// One parsed HTTP answer.
#[derive(Debug)]
struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    fn index(&self) -> u64 {
        self.header("X-Consul-Index")
            .expect("X-Consul-Index")
            .parse()
            .unwrap()
    }
}

/// Sends raw bytes on a fresh connection and reads until the server closes it (or
/// `timeout` passes without a byte).
fn exchange(addr: &str, raw: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(raw)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

fn parse(raw: &[u8]) -> Http {
    let text_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..text_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[text_end + 4..].to_vec();
    if let Some(len) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        body.truncate(len);
    }
    Http {
        status,
        headers,
        body,
    }
}

fn try_call(addr: &str, method: &str, path: &str, body: &[u8]) -> std::io::Result<Http> {
    let mut raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    let out = exchange(addr, &raw, Duration::from_secs(90))?;
    if out.is_empty() {
        // Closed without an answer (a refused connection).
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(parse(&out))
}

fn call(addr: &str, method: &str, path: &str, body: &[u8]) -> Http {
    try_call(addr, method, path, body).unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

#[test]
fn kv_put_get_raw_recurse_keys_cas_and_delete_answer_as_consul() {
    let a = dev(&[]);
    let r = a.put("/v1/kv/app/db/host?flags=42", b"10.0.0.5");
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    a.put("/v1/kv/app/db/port", b"5432");
    a.put("/v1/kv/app/name", b"");

    let r = a.get("/v1/kv/app/db/host");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));
    assert!(r.header("X-Consul-LastContact").is_some());
    let v = r.json();
    assert_eq!(v[0]["Key"], "app/db/host");
    assert_eq!(v[0]["Flags"], 42);
    assert_eq!(v[0]["Value"], "MTAuMC4wLjU="); // base64 of 10.0.0.5
    assert_eq!(v[0]["LockIndex"], 0);
    let modify = v[0]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(v[0]["CreateIndex"].as_u64(), Some(modify));
    assert_eq!(r.index(), modify);
    // An empty value is null, as in Consul.
    assert!(a.get("/v1/kv/app/name").json()[0]["Value"].is_null());

    let r = a.get("/v1/kv/app/db/host?raw");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"10.0.0.5"[..]));

    let r = a.get("/v1/kv/app/?recurse");
    let keys: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["app/db/host", "app/db/port", "app/name"]);
    let r = a.get("/v1/kv/app/?keys&separator=/");
    assert_eq!(r.json(), serde_json::json!(["app/db/", "app/name"]));
    let r = a.get("/v1/kv/app/?keys&stale");
    assert_eq!(r.json().as_array().unwrap().len(), 3);
    assert_eq!(r.header("X-Consul-Effective-Consistency"), Some("stale"));
    assert_eq!(a.get("/v1/kv/app/db/host?consistent").status, 200);

    // Check-and-set: a stale index fails, the current one wins, 0 means "only if absent".
    let r = a.put(&format!("/v1/kv/app/db/host?cas={}", modify - 1), b"x");
    assert_eq!(r.text(), "false");
    assert_eq!(
        a.put(&format!("/v1/kv/app/db/host?cas={modify}"), b"10.0.0.6")
            .text(),
        "true"
    );
    assert_eq!(a.get("/v1/kv/app/db/host?raw").text(), "10.0.0.6");
    assert_eq!(a.put("/v1/kv/app/db/host?cas=0", b"y").text(), "false");
    assert_eq!(a.put("/v1/kv/app/new?cas=0", b"y").text(), "true");

    // Delete with a stale cas changes nothing; then delete, then delete a whole tree.
    let idx = a.get("/v1/kv/app/new").json()[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    assert_eq!(
        a.delete(&format!("/v1/kv/app/new?cas={}", idx + 100))
            .text(),
        "false"
    );
    assert_eq!(a.get("/v1/kv/app/new").status, 200);
    assert_eq!(
        a.delete(&format!("/v1/kv/app/new?cas={idx}")).text(),
        "true"
    );
    assert_eq!(a.get("/v1/kv/app/new").status, 404);
    assert_eq!(a.delete("/v1/kv/app/db/port").text(), "true");
    assert_eq!(a.get("/v1/kv/app/db/port").status, 404);
    assert_eq!(a.delete("/v1/kv/app/?recurse").text(), "true");
    assert_eq!(a.get("/v1/kv/app/?recurse").status, 404);

    // Values are bytes: every byte value survives a round trip, raw and base64.
    let binary: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    assert_eq!(a.put("/v1/kv/bin", &binary).text(), "true");
    assert_eq!(a.get("/v1/kv/bin?raw").body, binary);
    let b64 = a.get("/v1/kv/bin").json()[0]["Value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(b64.starts_with("AAECAwQF"), "{}", &b64[..16]);
    assert_eq!(a.delete("/v1/kv/bin").text(), "true");

    // Keys travel percent-encoded in the path.
    a.put("/v1/kv/with%20space", b"s");
    assert_eq!(a.get("/v1/kv/with%20space?raw").text(), "s");
    assert_eq!(
        a.get("/v1/kv/?keys").json(),
        serde_json::json!(["with space"])
    );
}

#[test]
fn a_missing_key_is_404_with_an_index_and_bad_parameters_are_400_changing_nothing() {
    let a = dev(&[]);
    let r = a.get("/v1/kv/nope");
    assert_eq!(r.status, 404);
    assert!(r.body.is_empty());
    assert!(r.index() >= 1);
    assert_eq!(a.get("/v1/kv/nope/?keys").status, 404);

    a.put("/v1/kv/k", b"v1");
    for (method, path) in [
        ("PUT", "/v1/kv/k?cas=abc"),
        ("PUT", "/v1/kv/k?flags=x"),
        ("DELETE", "/v1/kv/k?cas=-3"),
        ("GET", "/v1/kv/k?index=1&wait=xyz"),
        ("GET", "/v1/kv/k?index=abc"),
        ("GET", "/v1/kv/k?stale&consistent"),
        ("PUT", "/v1/kv/"),
    ] {
        let r = call(&a.http, method, path, b"changed");
        assert_eq!(r.status, 400, "{method} {path}: {}", r.text());
    }
    assert_eq!(
        call(&a.http, "GET", "/v1/kv/k?index=1&wait=xyz", b"").text(),
        "Invalid wait time"
    );
    assert_eq!(
        a.get("/v1/kv/k?raw").text(),
        "v1",
        "a refused request changed nothing"
    );

    // Another datacenter has no path yet.
    let r = a.get("/v1/kv/k?dc=elsewhere");
    assert_eq!(
        (r.status, r.text().as_str()),
        (500, "No path to datacenter")
    );
    assert_eq!(a.get("/v1/kv/k?dc=dc1").status, 200);
}

#[test]
fn an_oversize_value_is_413_and_the_agent_keeps_serving() {
    let a = dev(&["--max-value-size", "1024"]);
    let r = a.put("/v1/kv/big", &vec![b'x'; 1025]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.text().contains("too large"), "{}", r.text());
    assert_eq!(a.get("/v1/kv/big").status, 404);
    // Without a Content-Length (chunked), the body is cut at the limit.
    let mut raw = b"PUT /v1/kv/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend_from_slice(&[b'y'; 0x200]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = parse(&exchange(&a.http, &raw, Duration::from_secs(30)).unwrap());
    assert_eq!(r.status, 413);
    assert_eq!(a.put("/v1/kv/big", &[b'x'; 1024]).text(), "true");
}

#[test]
fn a_blocking_get_returns_after_a_put_to_its_key() {
    let a = dev(&[]);
    a.put("/v1/kv/watched", b"one");
    let index = a.get("/v1/kv/watched").index();
    let http = a.http.clone();
    let watcher = std::thread::spawn(move || {
        call(
            &http,
            "GET",
            &format!("/v1/kv/watched?index={index}&wait=60s"),
            b"",
        )
    });
    // The write is retried until the watcher has seen it: a write before the watch was
    // parked is just as good (the watch then answers at once).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while !watcher.is_finished() {
        n += 1;
        a.put("/v1/kv/watched", format!("two-{n}").as_bytes());
        assert!(Instant::now() < deadline, "the blocking GET never returned");
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = watcher.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.index() > index);
    let v = r.json();
    let value = v[0]["Value"].as_str().unwrap();
    assert!(value.starts_with("dHdvL")); // base64 of "two-"
}

#[test]
fn a_transaction_commits_with_results_or_rolls_back_with_409() {
    let a = dev(&[]);
    let r = a.put(
        "/v1/txn",
        br#"[{"KV": {"Verb": "set", "Key": "t/a", "Value": "YQ=="}},
            {"KV": {"Verb": "set", "Key": "t/b", "Value": "Yg==", "Flags": 7}},
            {"KV": {"Verb": "get", "Key": "t/a"}}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["Errors"].is_null());
    let results = v["Results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[1]["KV"]["Flags"], 7);
    assert!(results[1]["KV"]["Value"].is_null(), "writes carry no value");
    assert_eq!(results[2]["KV"]["Value"], "YQ==");

    // A failing check rolls back the whole transaction, including the set before it.
    let r = a.put(
        "/v1/txn",
        br#"[{"KV": {"Verb": "set", "Key": "t/c", "Value": "Yw=="}},
            {"KV": {"Verb": "check-not-exists", "Key": "t/a"}}]"#,
    );
    assert_eq!(r.status, 409, "{}", r.text());
    let v = r.json();
    assert!(v["Results"].is_null());
    assert_eq!(v["Errors"][0]["OpIndex"], 1);
    assert_eq!(a.get("/v1/kv/t/c").status, 404);

    let r = a.put(
        "/v1/txn",
        b"[{\"KV\": {\"Verb\": \"nope\", \"Key\": \"x\"}}]",
    );
    assert_eq!(r.status, 400);
    let r = a.put("/v1/txn", b"{not json");
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Failed to parse body"));
}

#[test]
fn status_operator_and_agent_endpoints_describe_the_cluster() {
    let rpc = free_port("127.0.0.1");
    let a = start(&[
        "--dev",
        "--node",
        "alpha",
        "--server-port",
        &rpc.to_string(),
        "--serf-lan-port",
        &free_udp_port("127.0.0.1").to_string(),
    ]);
    let leader = format!("127.0.0.1:{rpc}");
    let r = a.get("/v1/status/leader");
    assert_eq!(r.json(), serde_json::json!(leader));
    assert_eq!(
        a.get("/v1/status/peers").json(),
        serde_json::json!([leader])
    );
    let v = a.get("/v1/operator/raft/configuration").json();
    assert_eq!(v["Servers"][0]["Address"], leader);
    assert_eq!(v["Servers"][0]["Leader"], true);
    assert_eq!(v["Servers"][0]["Voter"], true);
    let v = a.get("/v1/agent/self").json();
    assert_eq!(v["Config"]["NodeName"], "alpha");
    assert_eq!(v["Config"]["Datacenter"], "dc1");
    assert_eq!(v["Config"]["Server"], true);
    assert_eq!(v["Member"]["Name"], "alpha");
    assert_eq!(v["Member"]["Status"], 1);
    let v = a.get("/v1/agent/members").json();
    assert_eq!(v[0]["Name"], "alpha");
    assert_eq!(v[0]["Tags"]["role"], "consul");
}

#[test]
fn malformed_requests_get_4xx_and_the_agent_stays_up() {
    let a = dev(&[]);
    let t = Duration::from_secs(30);
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /v1/status/leader HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"GET /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        b"\x00\x01\x02\x03\xff\xfe\r\n\r\n",
    ] {
        let out = exchange(&a.http, raw, t).unwrap_or_default();
        // hyper answers a request it cannot parse with a 4xx, or just closes.
        if !out.is_empty() {
            let r = parse(&out);
            assert!((400..500).contains(&r.status), "{raw:?}: {r:?}");
        }
    }
    // Headers too large for hyper's buffer.
    let mut huge = b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1 << 20));
    huge.extend_from_slice(b"\r\n\r\n");
    if let Ok(out) = exchange(&a.http, &huge, t) {
        if !out.is_empty() {
            let r = parse(&out);
            assert!((400..500).contains(&r.status), "{r:?}");
        }
    }
    assert_eq!(a.get("/v1/nope").status, 404);
    assert_eq!(a.get("/v2/kv/a").status, 404);
    let r = call(&a.http, "POST", "/v1/kv/a", b"");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("Allow"), Some("GET,PUT,DELETE"));
    assert_eq!(a.get("/v1/txn").status, 405);
    // Still serving.
    assert_eq!(a.get("/v1/status/leader").status, 200);
    assert_eq!(a.put("/v1/kv/after", b"ok").text(), "true");
}

#[test]
fn a_slow_loris_client_is_cut_off_and_others_are_served() {
    let a = dev(&["--http-read-timeout-ms", "500"]);
    let mut s = TcpStream::connect(&a.http).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // Trickle a header, one byte at a time, never finishing it.
    let head = b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let bytes = head.iter().chain(std::iter::repeat(&b'a'));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut cut = false;
    for byte in bytes {
        if s.write_all(&[*byte]).is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 256];
        match s.read(&mut buf) {
            Ok(0) => {
                cut = true;
                break;
            }
            // hyper may say why before closing (408); the close follows.
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
    }
    assert!(cut, "a client trickling its headers was never cut off");
    assert_eq!(a.get("/v1/status/leader").status, 200);
}

#[test]
fn connections_beyond_the_limit_are_closed_and_freed_slots_are_reused() {
    let a = dev(&["--http-max-connections", "2"]);
    // The readiness probe's connection may still be closing: wait until two idle
    // connections are held and a third is refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (held, refused) = loop {
        let held: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(&a.http).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let third = try_call(&a.http, "GET", "/v1/status/leader", b"");
        match third {
            Err(_) => break (held, true),
            Ok(r) if r.status != 200 => break (held, true),
            Ok(_) => {}
        }
        drop(held);
        assert!(
            Instant::now() < deadline,
            "a third connection was never refused"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(refused);
    drop(held);
    // Slots free up once the held connections close.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = try_call(&a.http, "GET", "/v1/status/leader", b"") {
            if r.status == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "freed slots were never reused");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_http_port_clash_is_a_clear_error_and_minus_one_turns_http_off() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let out = Command::new(CAIRN)
        .args(["agent", "--dev", "--serf-lan-port", "0"])
        .args(["--server-port", &free_port("127.0.0.1").to_string()])
        .args(["--http-port", &port.to_string(), "--dns-port", "-1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("HTTP port") && err.contains("already in use"),
        "{err}"
    );
    drop(holder);

    let rpc = free_port("127.0.0.1");
    let mut child = Command::new(CAIRN)
        .args([
            "agent",
            "--dev",
            "--serf-lan-port",
            "0",
            "--http-port",
            "-1",
            "--dns-port",
            "-1",
        ])
        .args(["--server-port", &rpc.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The start-up line says where the agent serves; without HTTP it names no HTTP API.
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("agent running"), "{line}");
    assert!(!line.contains("HTTP"), "{line}");
}

#[test]
fn a_client_agent_serves_the_http_api_through_the_servers() {
    let serf = free_udp_port("127.0.0.1");
    let server = start(&[
        "--dev",
        "--server-port",
        &free_port("127.0.0.1").to_string(),
        "--serf-lan-port",
        &serf.to_string(),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let client = start(&[
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--retry-join",
        &format!("127.0.0.1:{serf}"),
        "--server-port",
        &free_port("127.0.0.1").to_string(),
        "--serf-lan-port",
        "0",
    ]);
    assert_eq!(client.put("/v1/kv/via-client", b"hi").text(), "true");
    assert_eq!(server.get("/v1/kv/via-client?raw").text(), "hi");
    assert_eq!(client.get("/v1/kv/via-client?raw").text(), "hi");
    assert_eq!(
        client.get("/v1/agent/self").json()["Config"]["Server"],
        false
    );

    // The client's own services reach the catalog; catalog reads and sessions go through
    // the servers, and a session defaults to the client's node.
    let node = node_name(&client);
    let r = client.put(
        "/v1/agent/service/register",
        br#"{"Name": "app", "Port": 7000, "Check": {"TTL": "60s", "Status": "passing"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = wait_for(
        &server,
        "/v1/health/service/app?passing",
        "app in the catalog",
        |r| r.json().as_array().is_some_and(|l| l.len() == 1),
    );
    assert_eq!(r.json()[0]["Node"]["Node"], node.as_str());
    wait_for(
        &client,
        &format!("/v1/health/node/{node}"),
        "the client's serfHealth",
        |r| r.text().contains("serfHealth"),
    );
    let r = client.put("/v1/session/create", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["ID"].as_str().unwrap().to_string();
    assert_eq!(
        server.get(&format!("/v1/session/info/{id}")).json()[0]["Node"],
        node.as_str()
    );
}

#[test]
fn a_blocking_get_whose_client_hangs_up_frees_its_connection_slot() {
    let a = dev(&["--http-max-connections", "1"]);
    // Wait until the readiness probe's connection is gone and the one slot is free.
    let deadline = Instant::now() + Duration::from_secs(30);
    let watcher = loop {
        let mut s = TcpStream::connect(&a.http).unwrap();
        s.write_all(b"GET /v1/kv/never?index=1000000&wait=10m HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            // Still waiting: it holds the slot.
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break s
            }
            // Refused (the slot was still taken): try again.
            _ => {}
        }
        assert!(Instant::now() < deadline, "the one slot never came free");
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(watcher);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = try_call(&a.http, "GET", "/v1/status/leader", b"") {
            if r.status == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the hung-up blocking GET kept its connection slot"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_dev_agent_serves_http_on_loopback_port_8500_by_default() {
    let mut child = Command::new(CAIRN)
        .args(["agent", "--dev", "--serf-lan-port", "0", "--dns-port", "-1"])
        .args(["--server-port", &free_port("127.0.0.1").to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The start-up line names the HTTP address; if something else holds 8500 on this
    // machine, the refusal names the same address. Either shows the default.
    let mut line = String::new();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        line.contains("HTTP API on 127.0.0.1:8500")
            || err.contains("HTTP port 127.0.0.1:8500 is already in use"),
        "stdout {line:?}, stderr {err:?}"
    );
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits (bounded) until `ok` holds for the answer to GET `path`.
fn wait_for(a: &Agent, path: &str, what: &str, ok: impl Fn(&Http) -> bool) -> Http {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = a.get(path);
        if ok(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: last answer {} {}",
            r.status,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node_name(a: &Agent) -> String {
    a.get("/v1/agent/self").json()["Config"]["NodeName"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn catalog_register_read_and_deregister_answer_as_consul() {
    let a = dev(&[]);
    assert_eq!(
        a.get("/v1/catalog/datacenters").json(),
        serde_json::json!(["dc1"])
    );
    let r = a.put(
        "/v1/catalog/register",
        br#"{"Node": "ext1", "Address": "10.0.0.1", "NodeMeta": {"rack": "r1"},
            "Service": {"Service": "redis", "ID": "redis-1", "Tags": ["primary"], "Port": 6379,
                        "Meta": {"version": "7"}},
            "Check": {"Name": "redis alive", "Status": "passing", "ServiceID": "redis-1"}}"#,
    );
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    let r = a.put(
        "/v1/catalog/register",
        br#"{"Node": "ext2", "Address": "10.0.0.2",
            "Service": {"Service": "redis", "Tags": ["replica"], "Port": 6380},
            "Checks": [{"CheckID": "r2", "Name": "redis alive", "Status": "critical", "ServiceID": "redis"}]}"#,
    );
    assert_eq!(r.text(), "true");

    let r = a.get("/v1/catalog/nodes");
    assert_eq!(r.status, 200);
    assert!(r.index() >= 1);
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));
    let nodes: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Node"].as_str().unwrap().to_string())
        .collect();
    assert!(
        nodes.contains(&"ext1".into()) && nodes.contains(&"ext2".into()),
        "{nodes:?}"
    );
    let r = a.get(&format!(
        "/v1/catalog/nodes?filter={}",
        enc(r#"Meta.rack == "r1""#)
    ));
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    assert_eq!(r.json()[0]["Address"], "10.0.0.1");
    let r = a.get("/v1/catalog/nodes?node-meta=rack:r1");
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    assert_eq!(
        a.get("/v1/catalog/nodes?node-meta=rack:r9").json(),
        serde_json::json!([])
    );

    let services = a.get("/v1/catalog/services").json();
    let mut tags: Vec<&str> = services["redis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["primary", "replica"]);

    let r = a.get("/v1/catalog/service/redis?tag=primary");
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["Node"], "ext1");
    assert_eq!(v[0]["Address"], "10.0.0.1");
    assert_eq!(v[0]["ServiceID"], "redis-1");
    assert_eq!(v[0]["ServiceName"], "redis");
    assert_eq!(v[0]["ServicePort"], 6379);
    assert_eq!(v[0]["ServiceMeta"]["version"], "7");
    assert_eq!(v[0]["NodeMeta"]["rack"], "r1");
    assert_eq!(
        v[0]["ServiceWeights"],
        serde_json::json!({"Passing": 1, "Warning": 1})
    );
    let r = a.get(&format!(
        "/v1/catalog/service/redis?filter={}",
        enc(r#""replica" in ServiceTags or ServicePort == 1"#)
    ));
    assert_eq!(r.json()[0]["Node"], "ext2");
    assert_eq!(r.json().as_array().unwrap().len(), 1);

    let v = a.get("/v1/catalog/node/ext1").json();
    assert_eq!(v["Node"]["Node"], "ext1");
    assert_eq!(v["Services"]["redis-1"]["Port"], 6379);
    let r = a.get("/v1/catalog/node/nobody");
    assert_eq!((r.status, r.text().as_str()), (404, "null"));

    // Deregister one service, then a whole node.
    assert_eq!(
        a.put(
            "/v1/catalog/deregister",
            br#"{"Node": "ext2", "ServiceID": "redis"}"#
        )
        .text(),
        "true"
    );
    assert_eq!(
        a.get("/v1/catalog/service/redis")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        a.put("/v1/catalog/deregister", br#"{"Node": "ext1"}"#)
            .text(),
        "true"
    );
    assert_eq!(a.get("/v1/catalog/node/ext1").status, 404);

    // Bad bodies and parameters are 400 and change nothing.
    for (method, path, body) in [
        ("PUT", "/v1/catalog/register", &br#"{"Node": "x"}"#[..]),
        ("PUT", "/v1/catalog/register", b"not json"),
        ("PUT", "/v1/catalog/deregister", b"{}"),
        (
            "GET",
            "/v1/catalog/nodes?filter=Nope%20%3D%3D%20%22a%22",
            b"",
        ),
        (
            "GET",
            "/v1/catalog/nodes?filter=Node%20matches%20%22a%22",
            b"",
        ),
        ("GET", "/v1/catalog/services?stale&consistent", b""),
    ] {
        let r = call(&a.http, method, path, body);
        assert_eq!(r.status, 400, "{method} {path}: {}", r.text());
    }
    assert_eq!(
        call(&a.http, "POST", "/v1/catalog/register", b"{}").status,
        405
    );
    assert_eq!(a.get("/v1/catalog/node/x").status, 404);
}

#[test]
fn a_blocking_catalog_read_returns_after_a_registration() {
    let a = dev(&[]);
    let index = a.get("/v1/catalog/service/late").index();
    let http = a.http.clone();
    let watcher = std::thread::spawn(move || {
        call(
            &http,
            "GET",
            &format!("/v1/catalog/service/late?index={index}&wait=60s"),
            b"",
        )
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    while !watcher.is_finished() {
        n += 1;
        let body = format!(
            r#"{{"Node": "late-node", "Address": "10.0.0.9", "Service": {{"Service": "late", "Port": {n}}}}}"#
        );
        a.put("/v1/catalog/register", body.as_bytes());
        assert!(
            Instant::now() < deadline,
            "the blocking read never returned"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = watcher.join().unwrap();
    assert!(r.index() > index);
    assert_eq!(r.json()[0]["ServiceName"], "late");
}

#[test]
fn health_endpoints_show_checks_by_node_service_and_state() {
    let a = dev(&[]);
    for (node, status) in [("h1", "passing"), ("h2", "critical"), ("h3", "warning")] {
        let body = format!(
            r#"{{"Node": "{node}", "Address": "10.1.0.1",
                "Service": {{"Service": "api", "Tags": ["{node}"], "Port": 80}},
                "Check": {{"CheckID": "api-{node}", "Name": "api", "Status": "{status}", "ServiceID": "api"}}}}"#
        );
        assert_eq!(
            a.put("/v1/catalog/register", body.as_bytes()).text(),
            "true"
        );
    }
    let v = a.get("/v1/health/node/h2").json();
    assert_eq!(v[0]["CheckID"], "api-h2");
    assert_eq!(v[0]["Status"], "critical");
    assert_eq!(v[0]["ServiceName"], "api");

    let r = a.get("/v1/health/checks/api");
    assert_eq!(r.json().as_array().unwrap().len(), 3);
    assert!(r.index() >= 1);

    let all = a.get("/v1/health/service/api").json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    assert!(all[0]["Node"]["Node"].is_string());
    assert_eq!(all[0]["Service"]["Service"], "api");
    assert!(all[0]["Checks"].is_array());
    let passing = a.get("/v1/health/service/api?passing").json();
    let nodes: Vec<&str> = passing
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Node"]["Node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["h1"]);
    assert_eq!(
        a.get("/v1/health/service/api?passing&tag=h3").json(),
        serde_json::json!([])
    );
    assert_eq!(
        a.get("/v1/health/service/api?tag=h3")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let r = a.get(&format!(
        "/v1/health/service/api?filter={}",
        enc(r#"Checks.Status == "warning" or Node.Node == "h2""#)
    ));
    assert_eq!(r.json().as_array().unwrap().len(), 2);

    let critical = a.get("/v1/health/state/critical").json();
    assert!(critical
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["Status"] == "critical"));
    assert!(critical
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["CheckID"] == "api-h2"));
    // `any` includes the dev agent's own serfHealth.
    let any = a.get("/v1/health/state/any").json();
    assert!(any.as_array().unwrap().len() >= 3);
    let r = a.get("/v1/health/state/bogus");
    assert_eq!((r.status, r.text().as_str()), (400, "Invalid check state"));
    assert_eq!(a.get("/v1/health/service/api?passing=maybe").status, 400);
}

#[test]
fn sessions_are_created_read_renewed_used_for_locks_and_destroyed() {
    let a = dev(&[]);
    let node = node_name(&a);
    // The agent's node is in the catalog (with serfHealth) once the leader reconciled it.
    wait_for(
        &a,
        &format!("/v1/health/node/{node}"),
        "the agent's serfHealth",
        |r| r.status == 200 && r.text().contains("serfHealth"),
    );
    let r = a.put(
        "/v1/session/create",
        br#"{"Name": "lock", "TTL": "30s", "Behavior": "release"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["ID"].as_str().unwrap().to_string();

    let r = a.get(&format!("/v1/session/info/{id}"));
    assert!(r.index() >= 1);
    let v = r.json();
    assert_eq!(v[0]["ID"], id.as_str());
    assert_eq!(v[0]["Name"], "lock");
    assert_eq!(v[0]["Node"], node.as_str());
    assert_eq!(v[0]["TTL"], "30s");
    assert_eq!(v[0]["LockDelay"], 15_000_000_000u64);
    assert_eq!(v[0]["Behavior"], "release");
    assert_eq!(v[0]["NodeChecks"], serde_json::json!(["serfHealth"]));
    assert_eq!(
        a.get("/v1/session/list").json().as_array().unwrap().len(),
        1
    );
    assert_eq!(
        a.get(&format!("/v1/session/node/{node}")).json()[0]["ID"],
        id.as_str()
    );
    assert_eq!(
        a.put(&format!("/v1/session/renew/{id}"), b"").json()[0]["ID"],
        id.as_str()
    );

    // A lock held by the session, released when it is destroyed.
    assert_eq!(
        a.put(&format!("/v1/kv/leader?acquire={id}"), b"me").text(),
        "true"
    );
    assert_eq!(a.get("/v1/kv/leader").json()[0]["Session"], id.as_str());
    let r = a.put(&format!("/v1/session/destroy/{id}"), b"");
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    assert!(a.get("/v1/kv/leader").json()[0].get("Session").is_none());
    assert_eq!(
        a.get(&format!("/v1/session/info/{id}")).json(),
        serde_json::json!([])
    );
    let r = a.put(&format!("/v1/session/renew/{id}"), b"");
    assert_eq!(r.status, 404, "{}", r.text());

    // An empty body takes every default; a bad one is a 400.
    let r = a.put("/v1/session/create", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        a.put("/v1/session/create", br#"{"Behavior": "keep"}"#)
            .status,
        400
    );
    assert_eq!(
        a.put("/v1/session/create", br#"{"Node": "nobody"}"#).status / 100,
        4
    );
}

#[test]
fn agent_services_and_checks_are_registered_updated_and_removed_through_the_agent() {
    let a = dev(&[]);
    let node = node_name(&a);
    let r = a.put(
        "/v1/agent/service/register",
        br#"{"Name": "web", "ID": "web-1", "Port": 8080, "Tags": ["v1"],
            "Check": {"CheckID": "web-ttl", "TTL": "60s"}}"#,
    );
    assert_eq!((r.status, r.body.len()), (200, 0), "{}", r.text());
    let v = a.get("/v1/agent/services").json();
    assert_eq!(v["web-1"]["Service"], "web");
    assert_eq!(v["web-1"]["Port"], 8080);
    assert_eq!(v["web-1"]["Tags"], serde_json::json!(["v1"]));
    assert_eq!(a.get("/v1/agent/service/web-1").json()["ID"], "web-1");
    assert_eq!(a.get("/v1/agent/service/nope").status, 404);
    assert_eq!(
        a.get("/v1/agent/checks").json()["web-ttl"]["Status"],
        "critical"
    );

    // A TTL pass reaches the agent at once and the catalog through anti-entropy.
    assert_eq!(
        a.put("/v1/agent/check/pass/web-ttl?note=fine", b"").status,
        200
    );
    let c = &a.get("/v1/agent/checks").json()["web-ttl"];
    assert_eq!(
        (c["Status"].as_str(), c["Output"].as_str()),
        (Some("passing"), Some("fine"))
    );
    wait_for(
        &a,
        "/v1/health/service/web?passing",
        "web passing in the catalog",
        |r| r.json().as_array().is_some_and(|l| l.len() == 1),
    );
    assert_eq!(
        a.put(
            "/v1/agent/check/update/web-ttl",
            br#"{"Status": "warning", "Output": "slow"}"#
        )
        .status,
        200
    );
    assert_eq!(
        a.get("/v1/agent/checks").json()["web-ttl"]["Status"],
        "warning"
    );
    assert_eq!(
        a.put("/v1/agent/check/update/web-ttl", br#"{"Status": "ok"}"#)
            .status,
        400
    );
    assert_eq!(a.put("/v1/agent/check/fail/nope", b"").status, 404);

    // Maintenance mode is a critical check; the node's instances drop out of ?passing.
    assert_eq!(
        a.put("/v1/agent/maintenance?enable=true&reason=upgrade", b"")
            .status,
        200
    );
    assert_eq!(
        a.get("/v1/agent/checks").json()["_node_maintenance"]["Output"],
        "upgrade"
    );
    wait_for(
        &a,
        "/v1/health/service/web?passing",
        "web out of ?passing",
        |r| r.json() == serde_json::json!([]),
    );
    assert_eq!(a.put("/v1/agent/maintenance?enable=false", b"").status, 200);
    assert_eq!(a.put("/v1/agent/maintenance", b"").status, 400);
    assert_eq!(
        a.put("/v1/agent/service/maintenance/web-1?enable=true", b"")
            .status,
        200
    );
    assert!(a.get("/v1/agent/checks").json()["_service_maintenance:web-1"].is_object());
    assert_eq!(
        a.put("/v1/agent/service/maintenance/nope?enable=true", b"")
            .status,
        404
    );

    // A standalone check, then removal of both.
    let r = a.put(
        "/v1/agent/check/register",
        br#"{"Name": "mem", "TTL": "30s"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(a.get("/v1/agent/checks").json()["mem"].is_object());
    let r = a.put(
        "/v1/agent/check/register",
        br#"{"Name": "bad", "TTL": "30s", "TCP": "a:1"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(a.put("/v1/agent/check/deregister/mem", b"").status, 200);
    assert_eq!(a.put("/v1/agent/service/deregister/web-1", b"").status, 200);
    assert_eq!(a.get("/v1/agent/services").json(), serde_json::json!({}));
    assert_eq!(a.put("/v1/agent/service/deregister/web-1", b"").status, 404);
    wait_for(
        &a,
        &format!("/v1/catalog/node/{node}"),
        "web-1 gone from the catalog",
        |r| r.json()["Services"].get("web-1").is_none(),
    );
    // Force-leave of an unknown member is refused.
    assert_eq!(a.put("/v1/agent/force-leave/nobody", b"").status, 400);
}

#[test]
fn an_agent_joins_the_pool_and_leaves_it_through_the_http_api() {
    let serf = free_udp_port("127.0.0.1");
    let server = start(&[
        "--dev",
        "--server-port",
        &free_port("127.0.0.1").to_string(),
        "--serf-lan-port",
        &serf.to_string(),
    ]);
    // A client agent whose --retry-join names nobody: it serves HTTP but has no servers.
    let dir = tempfile::tempdir().unwrap();
    let nobody = free_udp_port("127.0.0.1");
    let mut client = start_until(
        &[
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--retry-join",
            &format!("127.0.0.1:{nobody}"),
            "--server-port",
            &free_port("127.0.0.1").to_string(),
            "--serf-lan-port",
            "0",
        ],
        "answered",
        |r| r.status == 200,
        "/v1/agent/self",
    );
    let node = node_name(&client);
    assert_eq!(
        client
            .get("/v1/agent/members")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let r = client.put(&format!("/v1/agent/join/127.0.0.1:{serf}"), b"");
    assert_eq!((r.status, r.body.len()), (200, 0), "{}", r.text());
    wait_for(
        &client,
        "/v1/status/leader",
        "a leader through the joined pool",
        |r| r.status == 200 && r.text().len() > 2,
    );
    assert_eq!(client.put("/v1/kv/joined", b"yes").text(), "true");
    // Joining an address where nobody answers is an error, not a hang.
    let r = client.put(&format!("/v1/agent/join/127.0.0.1:{nobody}"), b"");
    assert_eq!(r.status, 500, "{}", r.text());
    assert_eq!(client.put("/v1/agent/join/127.0.0.1?wan", b"").status, 400);

    // Leave: the answer comes first, then the agent leaves the pool and exits.
    let r = client.put("/v1/agent/leave", b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = client.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not exit: {}",
            client.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}: {}", client.log_text());
    // serf's status 3: left (not 4, failed).
    wait_for(
        &server,
        "/v1/agent/members",
        "the client seen as left",
        |r| {
            r.json().as_array().is_some_and(|ms| {
                ms.iter()
                    .any(|m| m["Name"] == node.as_str() && m["Status"] == 3)
            })
        },
    );
}
