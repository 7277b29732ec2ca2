//! The check runner against real sockets and processes on this machine: TCP, HTTP,
//! script and TTL checks, state kept across a restart, events awaited from glommio.
//!
//! No timing is asserted: intervals are short and each test waits (bounded) for the event
//! it expects; only what happens is checked.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::catalog::Status;
use cairn::health::schedule::{ScheduleConfig, MAX_OUTPUT_BYTES};
use cairn::health::{
    parse_check, parse_file, CheckDefinition, CheckEvent, CheckRunner, CheckState, HealthError,
    RunnerOptions,
};

/// Longest wait for an expected event; far above what any of them needs.
const WAIT: Duration = Duration::from_secs(30);

fn check(json: &str) -> CheckDefinition {
    parse_check("test", json.as_bytes()).unwrap()
}

fn options() -> RunnerOptions {
    RunnerOptions {
        seed: 42,
        schedule: ScheduleConfig {
            // Checks here probe every 50–100 ms.
            min_interval: Duration::from_millis(1),
            ..ScheduleConfig::default()
        },
        ..RunnerOptions::default()
    }
}

/// A runner's events, with the ones already received but not yet asked for.
struct Events {
    rx: flume::Receiver<CheckEvent>,
    unclaimed: Vec<CheckEvent>,
}

impl Events {
    fn new(rx: flume::Receiver<CheckEvent>) -> Events {
        Events {
            rx,
            unclaimed: Vec::new(),
        }
    }

    /// The first event on `id` that `want` accepts, received earlier or within [`WAIT`].
    fn wait_for(&mut self, id: &str, what: &str, want: impl Fn(&CheckEvent) -> bool) -> CheckEvent {
        let matches = |e: &CheckEvent| e.check().id == id && want(e);
        if let Some(i) = self.unclaimed.iter().position(matches) {
            return self.unclaimed.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(event) if matches(&event) => return event,
                Ok(event) => self.unclaimed.push(event),
                Err(_) => panic!(
                    "no event for {id}: {what} within {WAIT:?}; saw {:#?}",
                    self.unclaimed
                ),
            }
        }
    }

    fn status_becomes(&mut self, id: &str, status: Status) -> CheckState {
        let event = self.wait_for(
            id,
            status.as_str(),
            |e| matches!(e, CheckEvent::StatusChanged(c) if c.status == status),
        );
        event.check().clone()
    }
}

fn start(
    defs: impl IntoIterator<Item = CheckDefinition>,
    options: RunnerOptions,
) -> (CheckRunner, Events) {
    let (runner, rx) = CheckRunner::start(defs, options).unwrap();
    (runner, Events::new(rx))
}

#[test]
fn a_tcp_check_passes_while_the_port_listens_and_turns_critical_when_it_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let def = check(&format!(
        r#"{{"name": "tcp", "tcp": "{address}", "interval": "100ms", "timeout": "2s"}}"#
    ));
    let (_runner, mut events) = start([def], options());
    let up = events.status_becomes("tcp", Status::Passing);
    assert_eq!(up.output, format!("TCP connect {address}: Success"));
    drop(listener);
    let down = events.status_becomes("tcp", Status::Critical);
    assert!(
        down.output.starts_with(&format!("TCP connect {address}: ")) && down.output != up.output,
        "{}",
        down.output
    );
}

/// A one-thread HTTP/1.1 responder on loopback: answers every request with the status in
/// `code` and a small body, and remembers the last request it read.
struct Responder {
    url: String,
    code: Arc<AtomicU16>,
    last_request: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    fn start(code: u16) -> Responder {
        Responder::start_with(code, None)
    }

    /// With `tls`, the responder speaks HTTPS (URL scheme included).
    fn start_with(code: u16, tls: Option<Arc<rustls::ServerConfig>>) -> Responder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let code = Arc::new(AtomicU16::new(code));
        let last_request = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (code, last_request, stop) = (code.clone(), last_request.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            stream
                                .set_read_timeout(Some(Duration::from_secs(5)))
                                .unwrap();
                            let code = code.load(Ordering::Relaxed);
                            let request = match &tls {
                                None => answer(stream, code),
                                Some(config) => {
                                    let conn =
                                        rustls::ServerConnection::new(config.clone()).unwrap();
                                    let mut tls = rustls::StreamOwned::new(conn, stream);
                                    let request = answer(&mut tls, code);
                                    tls.conn.send_close_notify();
                                    let _ = tls.flush();
                                    request
                                }
                            };
                            *last_request.lock().unwrap() = request;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Responder {
            url,
            code,
            last_request,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request (headers, then a Content-Length body) and answers it with `code`.
fn answer(mut stream: impl Read + Write, code: u16) -> String {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    // Bounded: at most 64 KiB of request, and a read timeout.
    while request.len() < 64 * 1024 {
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let reason = match code {
        200 => "OK",
        429 => "Too Many Requests",
        _ => "Internal Server Error",
    };
    let body = format!("state {code}");
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
    String::from_utf8_lossy(&request).to_string()
}

#[test]
fn an_http_check_follows_200_then_429_then_500_as_passing_warning_critical() {
    let server = Responder::start(200);
    let url = format!("{}/health", server.url);
    let def = check(&format!(
        r#"{{"name": "web", "http": "{url}", "interval": "50ms", "timeout": "5s"}}"#
    ));
    let (_runner, mut events) = start([def], options());
    let up = events.status_becomes("web", Status::Passing);
    assert_eq!(
        up.output,
        format!("HTTP GET {url}: 200 OK Output: state 200")
    );
    assert_eq!(up.kind, "http");
    server.code.store(429, Ordering::Relaxed);
    let slow = events.status_becomes("web", Status::Warning);
    assert_eq!(
        slow.output,
        format!("HTTP GET {url}: 429 Too Many Requests Output: state 429")
    );
    server.code.store(500, Ordering::Relaxed);
    let down = events.status_becomes("web", Status::Critical);
    assert_eq!(
        down.output,
        format!("HTTP GET {url}: 500 Internal Server Error Output: state 500")
    );
}

#[test]
fn an_http_check_sends_its_method_headers_and_body() {
    let server = Responder::start(200);
    let url = format!("{}/ping", server.url);
    let def = check(&format!(
        r#"{{"Name": "post", "HTTP": "{url}", "Method": "POST", "Interval": "50ms",
             "Header": {{"X-Check": ["one", "two"]}}, "Body": "are you there"}}"#
    ));
    let (_runner, mut events) = start([def], options());
    events.status_becomes("post", Status::Passing);
    let request = server.last_request.lock().unwrap().clone();
    let lower = request.to_ascii_lowercase();
    assert!(request.starts_with("POST /ping HTTP/1.1\r\n"), "{request}");
    assert!(
        lower.contains("x-check: one\r\n") && lower.contains("x-check: two\r\n"),
        "{request}"
    );
    assert!(
        lower.contains("user-agent: cairn health check\r\n"),
        "{request}"
    );
    assert!(request.ends_with("\r\n\r\nare you there"), "{request}");
}

#[test]
fn an_http_check_with_no_server_is_critical() {
    // A port that was just free: nothing listens there.
    let address = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let def = check(&format!(
        r#"{{"name": "gone", "http": "http://{address}/", "interval": "50ms", "status": "passing"}}"#
    ));
    let (_runner, mut events) = start([def], options());
    let down = events.status_becomes("gone", Status::Critical);
    assert!(
        down.output
            .starts_with(&format!("HTTP GET http://{address}/: ")),
        "{}",
        down.output
    );
}

#[test]
fn an_https_check_with_a_self_signed_certificate_passes_only_with_tls_skip_verify() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let server = Responder::start_with(200, Some(Arc::new(config)));
    let url = format!("{}/health", server.url);
    let defs = [
        check(&format!(
            r#"{{"name": "skip", "http": "{url}", "interval": "50ms", "tls_skip_verify": true}}"#
        )),
        check(&format!(
            r#"{{"name": "verify", "http": "{url}", "interval": "50ms", "status": "passing"}}"#
        )),
    ];
    let (_runner, mut events) = start(defs, options());
    let skipped = events.status_becomes("skip", Status::Passing);
    assert_eq!(
        skipped.output,
        format!("HTTP GET {url}: 200 OK Output: state 200")
    );
    let verified = events.status_becomes("verify", Status::Critical);
    assert!(
        verified.output.starts_with(&format!("HTTP GET {url}: "))
            && verified.output.to_lowercase().contains("certificate"),
        "{}",
        verified.output
    );
}

fn script_options() -> RunnerOptions {
    RunnerOptions {
        enable_script_checks: true,
        ..options()
    }
}

fn script(id: &str, args: &[&str], timeout: &str) -> CheckDefinition {
    let args = serde_json::to_string(args).unwrap();
    check(&format!(
        r#"{{"name": "{id}", "args": {args}, "interval": "100ms", "timeout": "{timeout}", "status": "warning"}}"#
    ))
}

#[test]
fn script_exit_codes_map_to_passing_warning_and_critical() {
    let defs = [
        script("true", &["true"], "10s"),
        script("exit-1", &["sh", "-c", "echo degraded; exit 1"], "10s"),
        script("exit-2", &["sh", "-c", "echo broken >&2; exit 2"], "10s"),
    ];
    // Initial status warning, so each expected status but exit-1's is a change.
    let (runner, mut events) = start(defs, script_options());
    events.status_becomes("true", Status::Passing);
    let broken = events.status_becomes("exit-2", Status::Critical);
    assert_eq!(broken.output, "broken\n", "stderr is captured");
    // exit-1 stays warning; its output arrives as an output change.
    let degraded = events.wait_for(
        "exit-1",
        "output degraded",
        |e| matches!(e, CheckEvent::OutputChanged(c) if c.output == "degraded\n"),
    );
    assert_eq!(degraded.check().status, Status::Warning);
    assert_eq!(runner.statuses().len(), 3);
}

#[test]
fn a_script_past_its_timeout_is_killed_with_its_children() {
    // The shell prints its background child's pid, then waits for it.
    let def = script("sleepy", &["sh", "-c", "sleep 60 & echo $!; wait"], "300ms");
    let (_runner, mut events) = start([def], script_options());
    let timed_out = events.status_becomes("sleepy", Status::Critical);
    let mut lines = timed_out.output.lines();
    assert_eq!(lines.next(), Some("Timed out (300ms) running check"));
    let pid: u32 = lines.next().unwrap().parse().unwrap();
    // The sleep was in the script's process group: gone, or a zombie awaiting its reaper.
    let deadline = Instant::now() + WAIT;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.chars().next()))
            .flatten();
        if matches!(state, None | Some('Z') | Some('X')) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sleep {pid} still alive ({state:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_script_printing_more_than_4_kib_is_capped_keeping_its_end() {
    let def = script(
        "loud",
        &["sh", "-c", "i=0; while [ $i -lt 200 ]; do echo 0123456789012345678901234567890123456789; i=$((i+1)); done; echo THE END"],
        "10s",
    );
    let (_runner, mut events) = start([def], script_options());
    let loud = events.status_becomes("loud", Status::Passing);
    assert!(
        loud.output.len() <= MAX_OUTPUT_BYTES,
        "{}",
        loud.output.len()
    );
    assert!(
        loud.output.starts_with("Captured "),
        "{}",
        &loud.output[..60]
    );
    assert!(
        loud.output.contains(" of 8208 bytes\n...\n"),
        "{}",
        &loud.output[..60]
    );
    assert!(loud.output.ends_with("0123456789\nTHE END\n"));
}

#[test]
fn script_checks_are_refused_unless_enabled() {
    let def = script("nope", &["true"], "1s");
    match CheckRunner::start([def.clone()], options()) {
        Err(HealthError::ScriptChecksDisabled(id)) => assert_eq!(id, "nope"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a script check started with scripts disabled"),
    }
    let (runner, _events) = CheckRunner::start([], options()).unwrap();
    assert!(matches!(
        runner.add(def),
        Err(HealthError::ScriptChecksDisabled(_))
    ));
    assert!(runner.statuses().is_empty(), "nothing was added");
}

#[test]
fn checks_are_added_and_removed_while_running_up_to_the_limit() {
    let (runner, mut events) = start(
        [],
        RunnerOptions {
            max_checks: 2,
            ..options()
        },
    );
    runner.add(check(r#"{"name": "a", "ttl": "1h"}"#)).unwrap();
    runner.add(check(r#"{"name": "b", "ttl": "1h"}"#)).unwrap();
    // Replacing one is not adding one.
    runner.add(check(r#"{"name": "b", "ttl": "2h"}"#)).unwrap();
    assert!(matches!(
        runner.add(check(r#"{"name": "c", "ttl": "1h"}"#)),
        Err(HealthError::TooManyChecks(2))
    ));
    runner.ttl_pass("a", "up").unwrap();
    runner.ttl_warn("b", "meh").unwrap();
    assert_eq!(events.status_becomes("a", Status::Passing).output, "up");
    assert_eq!(events.status_becomes("b", Status::Warning).output, "meh");
    runner.ttl_fail("a", "down").unwrap();
    assert_eq!(events.status_becomes("a", Status::Critical).output, "down");
    assert!(runner.remove("a"));
    let ids: Vec<_> = runner.statuses().into_iter().map(|c| c.id).collect();
    assert_eq!(ids, ["b"]);
    assert!(matches!(
        runner.ttl_pass("a", ""),
        Err(HealthError::UnknownCheck(_))
    ));
    runner.add(check(r#"{"name": "c", "ttl": "1h"}"#)).unwrap();
}

#[test]
fn a_ttl_check_expires_to_critical_without_updates() {
    let def = check(r#"{"name": "app", "ttl": "300ms"}"#);
    let (runner, mut events) = start([def], options());
    runner
        .ttl_update("app", Status::Passing, "all good")
        .unwrap();
    let up = events.status_becomes("app", Status::Passing);
    assert_eq!(up.output, "all good");
    let expired = events.status_becomes("app", Status::Critical);
    assert_eq!(
        expired.output,
        "TTL expired (last output before timeout follows): all good"
    );
    assert!(matches!(
        runner.ttl_update("other", Status::Passing, ""),
        Err(HealthError::UnknownCheck(_))
    ));
}

#[test]
fn a_ttl_status_survives_a_runner_restart_with_the_same_state_dir_until_its_ttl_runs_out() {
    let data_dir = tempfile::tempdir().unwrap();
    let options = || RunnerOptions {
        state_dir: Some(data_dir.path().to_path_buf()),
        ..options()
    };
    let defs = parse_file(
        "ttl.json",
        br#"{"service": {"name": "db", "checks": [
            {"id": "long", "ttl": "1h"},
            {"id": "short", "ttl": "100ms"}]}}"#,
    )
    .unwrap()
    .services
    .remove(0)
    .checks;
    {
        let (runner, _events) = CheckRunner::start(defs.clone(), options()).unwrap();
        runner
            .ttl_update("long", Status::Warning, "replica lagging")
            .unwrap();
        runner.ttl_update("short", Status::Passing, "ok").unwrap();
    }
    assert_eq!(
        std::fs::read_dir(data_dir.path().join("checks"))
            .unwrap()
            .count(),
        2
    );
    // Past the short check's TTL (a wait, not a timing assertion).
    std::thread::sleep(Duration::from_millis(300));
    let (runner, _events) = CheckRunner::start(defs, options()).unwrap();
    let statuses = runner.statuses();
    let long = statuses.iter().find(|c| c.id == "long").unwrap();
    assert_eq!(
        (long.status, long.output.as_str()),
        (Status::Warning, "replica lagging")
    );
    assert_eq!(long.service_name, "db");
    let short = statuses.iter().find(|c| c.id == "short").unwrap();
    assert_eq!(
        (short.status, short.output.as_str()),
        (Status::Critical, ""),
        "expired: initial state"
    );
    // Removing a check removes its saved state.
    assert!(runner.remove("long"));
    assert!(!runner.remove("long"));
    assert_eq!(
        std::fs::read_dir(data_dir.path().join("checks"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_service_check_critical_long_enough_asks_for_its_service_to_be_deregistered() {
    let address = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let defs = parse_file(
        "svc.json",
        format!(
            r#"{{"service": {{"name": "web", "id": "web-1", "check":
                {{"tcp": "{address}", "interval": "50ms", "deregister_critical_service_after": "200ms"}}}}}}"#
        )
        .as_bytes(),
    )
    .unwrap();
    let (_runner, mut events) = start(defs.all_checks().cloned(), options());
    let event = events.wait_for("service:web-1", "deregister", |e| {
        matches!(e, CheckEvent::DeregisterService { .. })
    });
    let CheckEvent::DeregisterService { service_id, check } = event else {
        unreachable!()
    };
    assert_eq!(service_id, "web-1");
    assert_eq!(check.status, Status::Critical);
}

#[test]
fn dropping_a_runner_stops_a_long_script() {
    let def = script("long", &["sleep", "60"], "60s");
    let (runner, events) = CheckRunner::start([def], script_options()).unwrap();
    // Give the script time to start; then drop must return and the channel close.
    std::thread::sleep(Duration::from_millis(300));
    drop(runner);
    let deadline = Instant::now() + WAIT;
    loop {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(_) => continue,
            Err(flume::RecvTimeoutError::Disconnected) => break,
            Err(flume::RecvTimeoutError::Timeout) => {
                panic!("the runner's threads still hold the channel")
            }
        }
    }
}

#[test]
fn events_can_be_awaited_on_a_glommio_executor() {
    let def = check(r#"{"name": "app", "ttl": "1h"}"#);
    let (runner, events) = CheckRunner::start([def], options()).unwrap();
    runner
        .ttl_update("app", Status::Passing, "from glommio")
        .unwrap();
    let event = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(cairn::runtime::MIN_IO_MEMORY)
        .name("health-events")
        .spawn(move || async move { events.recv_async().await })
        .expect("starting an executor (RLIMIT_MEMLOCK too low?)")
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(event.check().output, "from glommio");
}
