//! The probes: one blocking call each, returning a status and Consul-like output. They
//! run on the runner's probe threads, never on a glommio executor.

use std::io::Read;
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::definition::{HttpProbe, Probe};
use super::schedule::MAX_OUTPUT_BYTES;
use crate::catalog::Status;

/// The `User-Agent` of HTTP checks (Consul sends "Consul Health Check").
pub const HTTP_USER_AGENT: &str = "Cairn Health Check";

/// What a probe needs beyond its definition.
pub struct ProbeContext<'a> {
    /// HTTP clients, made once per probe thread.
    pub http: &'a HttpClients,
    /// Set when the runner stops: a running script is killed.
    pub stop: &'a AtomicBool,
}

/// Runs `probe`, giving up after `timeout`.
pub fn run(probe: &Probe, timeout: Duration, cx: &ProbeContext) -> (Status, String) {
    match probe {
        Probe::Tcp { address } => tcp(address, timeout),
        Probe::Http(http) => cx.http.probe(http, timeout),
        Probe::Script { args } => script(args, timeout, cx.stop),
    }
}

/// Connects to `address` (each resolved address in turn, within one `timeout`); passing
/// if a connection opens. Name resolution uses the system resolver and its own timeouts.
pub fn tcp(address: &str, timeout: Duration) -> (Status, String) {
    let critical = |reason: &dyn std::fmt::Display| {
        (Status::Critical, format!("TCP connect {address}: {reason}"))
    };
    let addrs: Vec<_> = match address.to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(e) => return critical(&e),
    };
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, left) {
            Ok(_) => return (Status::Passing, format!("TCP connect {address}: Success")),
            Err(e) => last_error = Some(e),
        }
    }
    match last_error {
        Some(e) => critical(&e),
        None => critical(&"no address to connect to (or timed out)"),
    }
}

/// Two blocking HTTP clients: one verifying TLS certificates, one not (`tls_skip_verify`).
/// Each is built by its first probe: a probe thread of an agent with only TCP or script
/// checks never needs one.
pub struct HttpClients {
    verifying: std::cell::OnceCell<ureq::Agent>,
    skipping: std::cell::OnceCell<ureq::Agent>,
}

impl Default for HttpClients {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClients {
    pub fn new() -> HttpClients {
        HttpClients {
            verifying: std::cell::OnceCell::new(),
            skipping: std::cell::OnceCell::new(),
        }
    }

    fn agent(&self, skip_verify: bool) -> &ureq::Agent {
        let cell = if skip_verify {
            &self.skipping
        } else {
            &self.verifying
        };
        cell.get_or_init(|| {
            ureq::Agent::config_builder()
                // 4xx and 5xx are results to report, not errors.
                .http_status_as_error(false)
                .user_agent(HTTP_USER_AGENT)
                // Methods are validated as upper-case tokens; let WebDAV's and others through.
                .allow_non_standard_methods(true)
                // A new connection per run, as Consul (DisableKeepAlives): a check that reused
                // a kept-alive connection would not notice a server that stopped accepting.
                .max_idle_connections(0)
                .max_idle_connections_per_host(0)
                .tls_config(
                    ureq::tls::TlsConfig::builder()
                        .disable_verification(skip_verify)
                        .build(),
                )
                .build()
                .new_agent()
        })
    }

    /// Sends the check's request; 2xx is passing, 429 (Too Many Requests) warning, anything
    /// else or no answer critical. The output starts like Consul's: `HTTP GET <url>: 200 OK
    /// Output: <start of the body>`.
    pub fn probe(&self, probe: &HttpProbe, timeout: Duration) -> (Status, String) {
        use ureq::RequestExt;
        let agent = self.agent(probe.tls_skip_verify);
        let prefix = format!("HTTP {} {}", probe.method, probe.url);
        let mut builder = ureq::http::Request::builder()
            .method(probe.method.as_str())
            .uri(probe.url.as_str());
        if !probe
            .header
            .keys()
            .any(|k| k.eq_ignore_ascii_case("accept"))
        {
            // Consul's default: health endpoints tend to answer text.
            builder = builder.header("Accept", "text/plain, text/*, */*");
        }
        for (name, values) in &probe.header {
            for value in values {
                builder = builder.header(name.as_str(), value.as_str());
            }
        }
        // An empty body is no body (no Content-Length: 0 on a GET).
        let sent = if probe.body.is_empty() {
            builder.body(()).map(|r| {
                r.with_agent(agent)
                    .configure()
                    .timeout_global(Some(timeout))
                    .run()
            })
        } else {
            builder.body(probe.body.clone()).map(|r| {
                r.with_agent(agent)
                    .configure()
                    .timeout_global(Some(timeout))
                    .run()
            })
        };
        let mut response = match sent {
            Err(e) => return (Status::Critical, format!("{prefix}: bad request: {e}")),
            Ok(Err(e)) => return (Status::Critical, format!("{prefix}: {e}")),
            Ok(Ok(response)) => response,
        };
        let code = response.status();
        let mut body = Vec::new();
        // Only the start of the body is kept; an error mid-body still leaves the status.
        let _ = response
            .body_mut()
            .as_reader()
            .take(MAX_OUTPUT_BYTES as u64)
            .read_to_end(&mut body);
        let status = if code.is_success() {
            Status::Passing
        } else if code.as_u16() == 429 {
            Status::Warning
        } else {
            Status::Critical
        };
        let output = format!(
            "{prefix}: {} {} Output: {}",
            code.as_u16(),
            code.canonical_reason().unwrap_or(""),
            String::from_utf8_lossy(&body)
        );
        (status, output)
    }
}

/// Runs a script check: `args[0]` with the rest as arguments, no shell, stdin empty,
/// stdout and stderr into one pipe (so their order is kept). Exit 0 is passing, 1
/// warning, anything else (a signal too) critical. At the timeout, or when the runner
/// stops, the script's whole process group is killed, as Consul does, so a shell's
/// children die with it. Output is the last bytes written, at most 4 KiB in all.
pub fn script(args: &[String], timeout: Duration, stop: &AtomicBool) -> (Status, String) {
    assert!(!args.is_empty(), "validated: a script check has a program");
    let failed = |e: &dyn std::fmt::Display| {
        (
            Status::Critical,
            format!("Failed to run {:?}: {e}", args[0]),
        )
    };
    let (reader, writer) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(pair) => pair,
        Err(e) => return failed(&e),
    };
    let spawned = {
        // The Command holds the pipe's write ends: dropped at the end of this block, so the
        // reader sees end-of-file once the script's processes have exited.
        let mut command = Command::new(&args[0]);
        let writer2 = match writer.try_clone() {
            Ok(w) => w,
            Err(e) => return failed(&e),
        };
        command
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::from(writer))
            .stderr(Stdio::from(writer2));
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command.spawn()
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return failed(&e),
    };
    let (captured_tx, captured_rx) = std::sync::mpsc::sync_channel(1);
    let reader_thread = std::thread::Builder::new()
        .name("cairn-check-output".into())
        .spawn(move || {
            let _ = captured_tx.send(read_tail(std::fs::File::from(reader)));
        });
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    // Polls the child: std has no wait with a timeout. Naps grow to 50 ms, so a long script
    // costs a few wake-ups per second and a quick one is seen within a millisecond or two.
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(exit)) => break Ok(exit),
            Ok(None) => {}
            Err(e) => break Err(format!("waiting for it failed: {e}")),
        }
        let stopping = stop.load(Ordering::Relaxed);
        if stopping || Instant::now() >= deadline {
            // The child is not reaped yet, so its pid (= its group id) cannot be reused.
            let _ = rustix::process::kill_process_group(
                rustix::process::Pid::from_child(&child),
                rustix::process::Signal::KILL,
            );
            let _ = child.wait();
            break Err(if stopping {
                "Stopped: the check runner is shutting down".to_string()
            } else {
                format!("Timed out ({timeout:?}) running check")
            });
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(50));
    };
    // A script's background children may keep the pipe open after it exits: take what
    // arrived within a second and leave the reader to finish when they do.
    let captured = match reader_thread {
        Ok(_) => captured_rx
            .recv_timeout(Duration::from_secs(1))
            .unwrap_or_default(),
        Err(_) => Tail::default(),
    };
    match outcome {
        Ok(exit) => {
            let status = match exit.code() {
                Some(0) => Status::Passing,
                Some(1) => Status::Warning,
                _ => Status::Critical,
            };
            (status, captured.render(""))
        }
        Err(reason) => (Status::Critical, captured.render(&reason)),
    }
}

/// The last bytes of a stream and how many there were.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    total: u64,
}

fn read_tail(mut source: impl Read) -> Tail {
    let mut tail = Tail::default();
    let mut buf = [0u8; 4096];
    loop {
        match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                tail.total += n as u64;
                tail.bytes.extend_from_slice(&buf[..n]);
                if tail.bytes.len() > 2 * MAX_OUTPUT_BYTES {
                    let cut = tail.bytes.len() - MAX_OUTPUT_BYTES;
                    tail.bytes.drain(..cut);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    tail
}

impl Tail {
    /// `first_line` (if any), then, when output was cut, Consul's "Captured N of M bytes"
    /// note, then as much of the end of the output as fits in 4 KiB.
    fn render(&self, first_line: &str) -> String {
        let mut head = String::new();
        if !first_line.is_empty() {
            head.push_str(first_line);
            head.push('\n');
        }
        let budget = MAX_OUTPUT_BYTES.saturating_sub(head.len() + 64);
        let text = String::from_utf8_lossy(&self.bytes);
        if self.total as usize <= budget && text.len() <= budget {
            head.push_str(&text);
            return head;
        }
        let mut start = text.len().saturating_sub(budget);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        let kept = &text[start..];
        head.push_str(&format!(
            "Captured {} of {} bytes\n...\n",
            kept.len(),
            self.total
        ));
        head.push_str(kept);
        head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_output_is_kept_whole() {
        let tail = read_tail(&b"hello\n"[..]);
        assert_eq!(tail.render(""), "hello\n");
        assert_eq!(tail.render("Timed out"), "Timed out\nhello\n");
    }

    #[test]
    fn a_long_output_keeps_its_end_and_says_how_much_was_cut() {
        let mut long = vec![b'a'; 10_000];
        long.extend_from_slice(b"THE END");
        let out = read_tail(&long[..]).render("");
        assert!(out.len() <= MAX_OUTPUT_BYTES, "{}", out.len());
        assert!(out.starts_with("Captured "), "{}", &out[..40]);
        assert!(out.contains(" of 10007 bytes\n...\n"));
        assert!(out.ends_with("aTHE END"));
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let long = "é".repeat(5000);
        let out = read_tail(long.as_bytes()).render("x");
        assert!(out.len() <= MAX_OUTPUT_BYTES);
        assert!(out.ends_with('é'));
    }
}
