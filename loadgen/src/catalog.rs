//! `loadgen catalog`: fills a cluster's catalog, then times how fast blocking watchers of
//! one service see a health change, and how many `service NAME --passing` reads the
//! servers answer.
//!
//! Phases, in order, all over Cairn's binary RPC on non-blocking sockets driven by one
//! poll(2) loop on the calling thread:
//! 1. **register** `nodes × services_per_node` instances, each with a passing check of its
//!    own (one `CatalogRegister` per instance: the node, the service, its check),
//!    pipelined over `connections` connections spread over the servers;
//! 2. **watch**: `watchers` connections, spread over the servers, each with one blocking
//!    `CatalogRead` of the watched service (`passing_only`, `index` = the last index seen,
//!    `wait` = `wait_s`), re-armed after every answer;
//! 3. **change** (`changes` times): one instance of the watched service has its check
//!    registered critical (then passing again, alternately); for every watcher, the time
//!    from the write's send and from its acknowledgement until the watcher holds an
//!    answer that reflects it (the instance gone from, or back in, its passing list);
//! 4. **query**: `query_connections` connections, closed loop, reading the watched
//!    service `--passing` for `query_duration`;
//! 5. the servers' memory, from `/proc/PID/status` of the `pids` given.
//!
//! Instance `j` of node `n` belongs to service `svc-K` with `K = (n × S + j) mod
//! service_names`, so every service has `nodes × S / service_names` instances spread over
//! as many nodes; the watched service is `svc-0` and the instance changed is on
//! `node-00000`.
//!
//! One thread stands in for every watcher. It reads all the sockets that are ready before
//! decoding any, and a watcher's answer counts as seen when its bytes were read plus the
//! time its own decoding took (see [`pump`]): separate watchers decode at the same time.
//! The thread's total work still shares the machine with the servers, and answers that
//! arrive while it decodes a round are read in the next one.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use cairn_net::rpc::catalog::{
    CatalogQuery, CatalogResult, Check, Instance, Registration, Service, Status,
};
use cairn_net::rpc::client::{CallError, ClientConn, Completion};
use cairn_net::rpc::frame::FrameDecoder;
use cairn_net::rpc::message::{Consistency, Limits, Op, ReadOpts, Request, Response};
use hdrhistogram::Histogram;
use rustix::event::{PollFd, PollFlags};

/// The service the watchers watch and the query phase reads.
pub const WATCHED: &str = "svc-0";
/// The node whose instance of [`WATCHED`] changes health.
pub const VICTIM: &str = "node-00000";
/// Longest the poll loop sleeps: how late it notices a deadline of its own.
const POLL_MAX: Duration = Duration::from_millis(20);
/// Time given to the servers, after the last watcher's request is written, to park every
/// blocking read before the first change (a watcher that is not parked yet would answer
/// at once and be counted as fast).
const SETTLE: Duration = Duration::from_millis(500);
/// Longest one change may take to reach every watcher before the missing ones are
/// counted as missed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `loadgen catalog`.
#[derive(clap::Args, Debug, Clone)]
pub struct CatalogArgs {
    /// Server RPC addresses, comma-separated; connections are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8300")]
    pub servers: Vec<String>,
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub nodes: u64,
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub services_per_node: u64,
    /// Distinct service names (at least --services-per-node, so a node's services have
    /// distinct names); every service gets nodes × services-per-node / this instances.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub service_names: u64,
    /// Connections for the registrations.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub connections: u64,
    /// Registrations in flight per connection.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub pipeline: u64,
    /// Do not register (the catalog was filled by an earlier run with the same sizes).
    #[arg(long)]
    pub skip_register: bool,
    /// Blocking watchers of the watched service, one connection each.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=20_000))]
    pub watchers: u64,
    /// Health changes to time (critical, passing, critical, ...); each gives one sample
    /// per watcher.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub changes: u64,
    /// Longest wait of a blocking read, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub wait_s: u64,
    /// Consistency of the watchers' and the query phase's reads: stale | default |
    /// consistent. Stale (the default) lets every server answer from its own state, so
    /// watchers spread over the servers are served there; with default or consistent,
    /// followers forward every read to the leader.
    #[arg(long, default_value = "stale")]
    pub consistency: String,
    /// After the last change, keep the watchers parked for this many seconds (to see
    /// what parked watchers cost the servers under another load, e.g. `loadgen kv
    /// --workload write` run meanwhile).
    #[arg(long, default_value_t = 0)]
    pub hold_s: u64,
    /// Connections for the query phase (closed loop, one request in flight each).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=4096))]
    pub query_connections: u64,
    /// Seconds of the query phase.
    #[arg(long, default_value_t = 5.0)]
    pub query_duration: f64,
    /// PIDs of the servers, comma-separated, for their memory (VmRSS) at the end.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Give up on a registration or query after this many milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Percentile distribution (.hgrm) of the watchers' time from acknowledgement;
    /// `STEM-send.hgrm` beside it holds the time from send, `STEM-query.hgrm` the query
    /// latencies.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// JSON summary.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What a run measured.
pub struct Summary {
    pub instances: u64,
    pub register_s: f64,
    pub register_errors: u64,
    /// Instances of the watched service (the most any answer held).
    pub watched_instances: u64,
    /// Per watcher and change: from the write's acknowledgement until the watcher saw it
    /// (µs; 0 when it saw it before the acknowledgement arrived).
    pub from_ack: Histogram<u64>,
    /// Per watcher and change: from the write's send (µs).
    pub from_send: Histogram<u64>,
    /// Samples where the watcher saw the change before the acknowledgement arrived.
    pub before_ack: u64,
    /// Watcher answers that did not reflect the change yet (woken, re-armed).
    pub spurious: u64,
    /// Watchers that did not see a change within [`CHANGE_TIMEOUT`].
    pub missed: u64,
    pub watcher_errors: u64,
    /// Acknowledgement latency of each change write (µs).
    pub write: Histogram<u64>,
    pub query: Histogram<u64>,
    pub query_s: f64,
    pub query_errors: u64,
    /// (pid, VmRSS KiB, RssAnon KiB, RssFile KiB).
    pub rss: Vec<(u32, u64, u64, u64)>,
}

impl Summary {
    pub fn register_rate(&self) -> f64 {
        self.instances as f64 / self.register_s.max(1e-9)
    }

    pub fn query_rate(&self) -> f64 {
        self.query.len() as f64 / self.query_s.max(1e-9)
    }

    pub fn table(&self) -> String {
        let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let mut s = String::new();
        if self.register_s > 0.0 {
            s += &format!(
                "register: {} instances in {:.1} s = {:.0}/s ({} errors)\n",
                self.instances,
                self.register_s,
                self.register_rate(),
                self.register_errors
            );
        }
        s += &format!(
            "change seen by watchers ({} samples, {} instances in {WATCHED}):\n",
            self.from_ack.len(),
            self.watched_instances
        );
        for (what, h) in [
            ("from ack ", &self.from_ack),
            ("from send", &self.from_send),
        ] {
            s += &format!(
                "  {what}: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n",
                ms(h, 0.5),
                ms(h, 0.99),
                h.max() as f64 / 1000.0
            );
        }
        s += &format!(
            "  write ack: p50 {:.2} ms  max {:.2} ms; seen before ack {}, woken without it {}, \
             missed {}, errors {}\n",
            ms(&self.write, 0.5),
            self.write.max() as f64 / 1000.0,
            self.before_ack,
            self.spurious,
            self.missed,
            self.watcher_errors
        );
        if !self.query.is_empty() || self.query_errors > 0 {
            s += &format!(
                "query service {WATCHED} --passing: {:.0}/s  p50 {:.2} ms  p99 {:.2} ms ({} errors)\n",
                self.query_rate(),
                ms(&self.query, 0.5),
                ms(&self.query, 0.99),
                self.query_errors
            );
        }
        for (pid, rss, anon, file) in &self.rss {
            s += &format!(
                "server pid {pid}: VmRSS {:.0} MiB (anon {:.0} MiB, file {:.0} MiB)\n",
                *rss as f64 / 1024.0,
                *anon as f64 / 1024.0,
                *file as f64 / 1024.0
            );
        }
        s
    }

    pub fn to_json(&self, a: &CatalogArgs) -> serde_json::Value {
        let q = |h: &Histogram<u64>| {
            serde_json::json!({
                "count": h.len(),
                "p50_us": h.value_at_quantile(0.5),
                "p99_us": h.value_at_quantile(0.99),
                "max_us": h.max(),
            })
        };
        serde_json::json!({
            "params": {
                "servers": a.servers, "nodes": a.nodes,
                "services_per_node": a.services_per_node, "service_names": a.service_names,
                "watchers": a.watchers, "changes": a.changes, "consistency": a.consistency,
                "query_connections": a.query_connections,
            },
            "instances": self.instances,
            "register_s": self.register_s,
            "register_per_s": self.register_rate(),
            "register_errors": self.register_errors,
            "watched_instances": self.watched_instances,
            "seen_from_ack": q(&self.from_ack),
            "seen_from_send": q(&self.from_send),
            "write_ack": q(&self.write),
            "seen_before_ack": self.before_ack,
            "spurious_wakeups": self.spurious,
            "missed": self.missed,
            "watcher_errors": self.watcher_errors,
            "query": q(&self.query),
            "query_per_s": self.query_rate(),
            "query_errors": self.query_errors,
            "rss_kib": self.rss.iter().map(|(p, r, a, f)| serde_json::json!(
                {"pid": p, "vm_rss": r, "rss_anon": a, "rss_file": f})).collect::<Vec<_>>(),
        })
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn micros(d: Duration) -> u64 {
    d.as_micros().clamp(1, 3_600_000_000) as u64
}

/// The consistency named on the command line.
pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    match s {
        "stale" => Ok(Consistency::Stale),
        "default" => Ok(Consistency::Default),
        "consistent" => Ok(Consistency::Consistent),
        o => Err(format!(
            "unknown consistency {o:?}: use stale, default or consistent"
        )),
    }
}

/// The name of node `n`.
pub fn node_name(n: u64) -> String {
    format!("node-{n:05}")
}

/// The service name of instance `j` on node `n`.
pub fn service_name(n: u64, j: u64, a: &CatalogArgs) -> String {
    format!("svc-{}", (n * a.services_per_node + j) % a.service_names)
}

/// Instance `j` of node `n` with its own check in `status`.
pub fn registration(n: u64, j: u64, status: Status, a: &CatalogArgs) -> Registration {
    let name = service_name(n, j, a);
    Registration {
        node: node_name(n),
        address: format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255),
        service: Some(Service {
            id: name.clone(),
            name: name.clone(),
            port: 8000 + j as u16,
            ..Service::default()
        }),
        checks: vec![Check {
            id: format!("service:{name}"),
            name: format!("{name} alive"),
            status,
            output: String::new(),
            service_id: name.clone(),
            service_name: name,
            kind: "ttl".into(),
            ..Check::default()
        }],
        ..Registration::default()
    }
}

fn request(op: Op) -> Request {
    Request {
        datacenter: String::new(),
        token: String::new(),
        op,
    }
}

fn watch_read(consistency: Consistency, index: u64, wait_ms: u64) -> Request {
    request(Op::CatalogRead {
        query: CatalogQuery::Service {
            name: WATCHED.into(),
            tag: None,
            passing_only: true,
        },
        opts: ReadOpts {
            consistency,
            index,
            wait_ms,
        },
    })
}

/// One non-blocking connection with its sans-IO RPC client.
struct Conn {
    stream: TcpStream,
    rpc: ClientConn,
    unsent: BytesMut,
    /// Bytes read but not decoded yet (see [`pump`]).
    received: BytesMut,
    failed: bool,
}

impl Conn {
    fn connect(addr: &str, max_in_flight: usize) -> Result<Conn, String> {
        let sock = addr
            .to_socket_addrs()
            .map_err(|e| format!("{addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} resolves to nothing"))?;
        let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("{addr}: {e}"))?;
        Ok(Conn {
            stream,
            rpc: ClientConn::new(
                max_in_flight,
                Limits::default(),
                FrameDecoder::new(64 * 1024 * 1024),
            ),
            unsent: BytesMut::new(),
            received: BytesMut::new(),
            failed: false,
        })
    }

    fn send(&mut self, req: &Request, deadline: Instant) -> Result<u64, CallError> {
        self.rpc.send(req, deadline)
    }

    fn write_some(&mut self) {
        let more = self.rpc.take_outgoing();
        if self.unsent.is_empty() {
            self.unsent = more;
        } else {
            self.unsent.extend_from_slice(&more);
        }
        while !self.unsent.is_empty() && !self.failed {
            match self.stream.write(&self.unsent) {
                Ok(0) => self.failed = true,
                Ok(n) => self.unsent.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => self.failed = true,
            }
        }
    }

    /// Reads what the socket holds into `received` without decoding it; the error that
    /// ended the connection, if one did.
    fn read_raw(&mut self, buf: &mut [u8]) -> Option<String> {
        loop {
            match self.stream.read(buf) {
                Ok(0) => return Some("the server closed the connection".into()),
                Ok(n) => {
                    self.received.extend_from_slice(&buf[..n]);
                    if n < buf.len() {
                        return None;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some(e.to_string()),
            }
        }
    }

    /// Decodes what [`Conn::read_raw`] read.
    fn decode(&mut self, closed: Option<String>, out: &mut Vec<Completion>) {
        if !self.received.is_empty() {
            out.extend(self.rpc.receive(&self.received));
            self.received.clear();
        }
        if let Some(why) = closed {
            self.failed = true;
            out.extend(self.rpc.closed(&why));
        }
    }
}

/// Writes what every connection has queued, waits at most `wait` for any to become
/// readable, and returns the completions that arrived, timeouts included, each with the
/// connection's index and the time its answer was in hand.
///
/// One thread stands in for many clients here, so it first reads every ready socket
/// (noting when each read ended) and then decodes them one after another: an answer's
/// time is when its bytes were read plus the time its own decoding took, not plus the
/// decoding of the other connections' answers read in the same round (which separate
/// clients would do at the same time on their own machines).
fn pump(conns: &mut [Conn], wait: Duration, buf: &mut [u8]) -> Vec<(usize, Instant, Completion)> {
    for c in conns.iter_mut() {
        c.write_some();
    }
    let mut out = Vec::new();
    {
        let mut fds: Vec<PollFd> = conns
            .iter()
            .map(|c| {
                let mut f = PollFlags::IN;
                if !c.unsent.is_empty() {
                    f |= PollFlags::OUT;
                }
                PollFd::new(&c.stream, f)
            })
            .collect();
        let ts = rustix::event::Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        let _ = rustix::event::poll(&mut fds, Some(&ts));
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        let mut read = Vec::new();
        for (i, c) in conns.iter_mut().enumerate() {
            if ready[i] && !c.failed {
                let closed = c.read_raw(buf);
                read.push((i, Instant::now(), closed));
            }
        }
        let mut done = Vec::new();
        for (i, at, closed) in read {
            let t = Instant::now();
            conns[i].decode(closed, &mut done);
            let at = at + t.elapsed();
            out.extend(done.drain(..).map(|d| (i, at, d)));
        }
    }
    let now = Instant::now();
    for (i, c) in conns.iter_mut().enumerate() {
        out.extend(c.rpc.expire(now).into_iter().map(|d| (i, now, d)));
    }
    out
}

fn connect_all(servers: &[String], n: usize, in_flight: usize) -> Result<Vec<Conn>, String> {
    (0..n)
        .map(|i| Conn::connect(&servers[i % servers.len()], in_flight))
        .collect()
}

/// Phase 1: registers every instance; returns (seconds, errors).
fn register(a: &CatalogArgs, timeout: Duration) -> Result<(f64, u64), String> {
    let mut conns = connect_all(&a.servers, a.connections as usize, a.pipeline as usize)?;
    let total = a.nodes * a.services_per_node;
    let mut next = 0u64;
    let mut done = 0u64;
    let mut errors = 0u64;
    let mut first_error = None;
    let mut buf = vec![0u8; 256 * 1024];
    let t0 = Instant::now();
    let mut last_line = t0;
    while done < total {
        for c in conns.iter_mut() {
            while next < total && c.rpc.in_flight() < a.pipeline as usize && !c.failed {
                let (n, j) = (next / a.services_per_node, next % a.services_per_node);
                let r = registration(n, j, Status::Passing, a);
                c.send(
                    &request(Op::CatalogRegister(Box::new(r))),
                    Instant::now() + timeout,
                )
                .map_err(|e| format!("register: {e}"))?;
                next += 1;
            }
        }
        if conns.iter().all(|c| c.failed) {
            return Err(format!(
                "every registration connection failed ({first_error:?})"
            ));
        }
        for (_, _, d) in pump(&mut conns, POLL_MAX, &mut buf) {
            done += 1;
            if !matches!(d.result, Ok(Response::Bool(true))) {
                errors += 1;
                first_error.get_or_insert_with(|| format!("{:?}", d.result));
            }
        }
        if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            eprintln!(
                "  registered {done}/{total} ({:.0}/s)",
                done as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    if let Some(e) = first_error {
        eprintln!("loadgen: catalog: {errors} registrations failed; the first: {e}");
    }
    Ok((t0.elapsed().as_secs_f64(), errors))
}

/// Does this answer show the victim's instance in the state `critical` (gone from the
/// passing list) or passing (in it)?
fn reflects(instances: &[Instance], critical: bool) -> bool {
    instances.iter().any(|i| i.node.name == VICTIM) != critical
}

struct Watcher {
    index: u64,
    /// When this watcher saw the current change, if it has.
    seen: Option<Instant>,
}

/// Phases 2 and 3.
fn watch(a: &CatalogArgs, consistency: Consistency, s: &mut Summary) -> Result<(), String> {
    let w = a.watchers as usize;
    let wait_ms = a.wait_s * 1000;
    let wait_deadline = || Instant::now() + Duration::from_millis(wait_ms + 15_000);
    let mut conns = connect_all(&a.servers, w, 1)?;
    // The writer: its own connection to the first server (followers forward writes).
    conns.push(Conn::connect(&a.servers[0], 1)?);
    let writer = w;
    let mut buf = vec![0u8; 256 * 1024];
    let mut ws: Vec<Watcher> = (0..w)
        .map(|_| Watcher {
            index: 0,
            seen: None,
        })
        .collect();
    // Start from a passing victim: the first answer of every watcher is the current state.
    let mut critical = false;
    let reg = |status| request(Op::CatalogRegister(Box::new(registration(0, 0, status, a))));
    conns[writer]
        .send(&reg(Status::Passing), Instant::now() + CHANGE_TIMEOUT)
        .map_err(|e| e.to_string())?;
    // Arm: a non-blocking read each, answered at once; then each re-arms as blocking.
    for c in conns[..w].iter_mut() {
        c.send(&watch_read(consistency, 0, wait_ms), wait_deadline())
            .map_err(|e| e.to_string())?;
    }
    let mut armed = 0usize;
    let mut ready = false;
    let mut change = 0u64;
    let mut sent_at = Instant::now();
    let mut acked: Option<Instant> = None;
    let mut round_start = Instant::now();
    let mut settle_from: Option<Instant> = None;
    // Between sending a change and recording what the watchers saw of it.
    let mut in_round = false;
    // Set after the last change with `hold_s`: the watchers stay parked until then.
    let mut hold_until: Option<Instant> = None;
    loop {
        for (i, now, d) in pump(&mut conns, POLL_MAX, &mut buf) {
            if i == writer {
                if !matches!(d.result, Ok(Response::Bool(true))) {
                    return Err(format!("the health change failed: {:?}", d.result));
                }
                if ready {
                    acked = Some(now);
                    s.write.record(micros(now - sent_at)).ok();
                } else {
                    ready = true; // the initial "passing" registration
                }
                continue;
            }
            let index = match d.result {
                Ok(Response::Catalog {
                    result: CatalogResult::Instances(inst),
                    meta,
                }) => {
                    s.watched_instances = s.watched_instances.max(inst.len() as u64);
                    if in_round && ws[i].seen.is_none() {
                        if reflects(&inst, critical) {
                            ws[i].seen = Some(now);
                        } else {
                            s.spurious += 1;
                        }
                    }
                    meta.index
                }
                other => {
                    s.watcher_errors += 1;
                    if s.watcher_errors == 1 {
                        eprintln!("loadgen: catalog: a watcher's read failed: {other:?}");
                    }
                    ws[i].index
                }
            };
            if ws[i].index == 0 {
                armed += 1;
            }
            ws[i].index = index.max(1);
            if !conns[i].failed {
                conns[i]
                    .send(
                        &watch_read(consistency, ws[i].index, wait_ms),
                        wait_deadline(),
                    )
                    .map_err(|e| e.to_string())?;
            }
        }
        let now = Instant::now();
        let timed_out = in_round && now > round_start + CHANGE_TIMEOUT;
        if timed_out && acked.is_none() {
            return Err(format!(
                "change {change} was not acknowledged within {CHANGE_TIMEOUT:?}"
            ));
        }
        if in_round && acked.is_some() && (timed_out || ws.iter().all(|x| x.seen.is_some())) {
            // Record the finished change.
            let ack = acked.take().expect("checked");
            for x in ws.iter_mut() {
                let Some(seen) = x.seen.take() else {
                    s.missed += 1;
                    continue;
                };
                s.from_send.record(micros(seen - sent_at)).ok();
                if seen < ack {
                    s.before_ack += 1;
                }
                s.from_ack
                    .record(micros(seen.saturating_duration_since(ack)))
                    .ok();
            }
            in_round = false;
            if change == a.changes {
                if a.hold_s == 0 {
                    return Ok(());
                }
                eprintln!("  holding {} watchers parked for {} s", w, a.hold_s);
                hold_until = Some(now + Duration::from_secs(a.hold_s));
            }
        }
        if hold_until.is_some_and(|t| now >= t) {
            return Ok(());
        }
        if !in_round
            && change < a.changes
            && ready
            && armed == w
            && conns.iter().all(|c| c.unsent.is_empty())
        {
            // Every watcher is parked (or about to be): give the servers a moment, then
            // send the next change.
            let from = *settle_from.get_or_insert(now);
            if now >= from + SETTLE {
                settle_from = None;
                change += 1;
                critical = !critical;
                let status = if critical {
                    Status::Critical
                } else {
                    Status::Passing
                };
                round_start = Instant::now();
                sent_at = round_start;
                conns[writer]
                    .send(&reg(status), sent_at + CHANGE_TIMEOUT)
                    .map_err(|e| e.to_string())?;
                in_round = true;
            }
        }
        if armed < w && conns.iter().any(|c| c.failed) {
            return Err("a watcher's connection failed while arming".into());
        }
    }
}

/// Phase 4: closed-loop reads of the watched service; returns seconds measured.
fn query(a: &CatalogArgs, consistency: Consistency, s: &mut Summary) -> Result<(), String> {
    let n = a.query_connections as usize;
    if n == 0 {
        return Ok(());
    }
    let mut conns = connect_all(&a.servers, n, 1)?;
    let timeout = Duration::from_millis(a.timeout_ms);
    let read = watch_read(consistency, 0, 0);
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent: Vec<Instant> = vec![Instant::now(); n];
    let warmup = Duration::from_secs(1);
    let t0 = Instant::now();
    let measure_from = t0 + warmup;
    let end = measure_from + Duration::from_secs_f64(a.query_duration.max(0.1));
    for (i, c) in conns.iter_mut().enumerate() {
        sent[i] = Instant::now();
        c.send(&read, sent[i] + timeout)
            .map_err(|e| e.to_string())?;
    }
    while Instant::now() < end {
        for (i, now, d) in pump(&mut conns, POLL_MAX, &mut buf) {
            let ok = matches!(
                d.result,
                Ok(Response::Catalog {
                    result: CatalogResult::Instances(_),
                    ..
                })
            );
            if now >= measure_from && now < end {
                if ok {
                    s.query.record(micros(now - sent[i])).ok();
                } else {
                    s.query_errors += 1;
                }
            }
            if !conns[i].failed {
                sent[i] = Instant::now();
                conns[i]
                    .send(&read, sent[i] + timeout)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    s.query_s = (end - measure_from).as_secs_f64();
    Ok(())
}

/// VmRSS, RssAnon, RssFile of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<(u64, u64, u64), String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let mut f: BTreeMap<&str, u64> = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if let Some(kib) = v.trim().strip_suffix(" kB") {
                f.insert(k, kib.trim().parse().unwrap_or(0));
            }
        }
    }
    let g = |k| f.get(k).copied().unwrap_or(0);
    Ok((g("VmRSS"), g("RssAnon"), g("RssFile")))
}

/// Runs every phase.
pub fn run(a: &CatalogArgs) -> Result<Summary, String> {
    let consistency = parse_consistency(&a.consistency)?;
    if a.service_names < a.services_per_node {
        return Err(format!(
            "--service-names ({}) must be at least --services-per-node ({}): a node's \
             services need distinct names",
            a.service_names, a.services_per_node
        ));
    }
    if a.servers.is_empty() {
        return Err("no --servers given".into());
    }
    let mut s = Summary {
        instances: a.nodes * a.services_per_node,
        register_s: 0.0,
        register_errors: 0,
        watched_instances: 0,
        from_ack: histogram(),
        from_send: histogram(),
        before_ack: 0,
        spurious: 0,
        missed: 0,
        watcher_errors: 0,
        write: histogram(),
        query: histogram(),
        query_s: 0.0,
        query_errors: 0,
        rss: Vec::new(),
    };
    if !a.skip_register {
        let (secs, errors) = register(a, Duration::from_millis(a.timeout_ms))?;
        s.register_s = secs;
        s.register_errors = errors;
        eprintln!(
            "  registered {} instances in {secs:.1} s ({:.0}/s)",
            s.instances,
            s.register_rate()
        );
    }
    if a.watchers > 0 {
        watch(a, consistency, &mut s)?;
    }
    query(a, consistency, &mut s)?;
    for &pid in &a.pids {
        let (rss, anon, file) = rss_kib(pid)?;
        s.rss.push((pid, rss, anon, file));
    }
    Ok(s)
}

/// Writes the three `.hgrm` files named after `path` (see [`CatalogArgs::hgrm`]).
pub fn write_hgrm(s: &Summary, path: &std::path::Path) -> Result<Vec<PathBuf>, String> {
    let stem = path
        .file_stem()
        .map(|x| x.to_string_lossy().into_owned())
        .unwrap_or_else(|| "catalog".into());
    let send = path.with_file_name(format!("{stem}-send.hgrm"));
    let query = path.with_file_name(format!("{stem}-query.hgrm"));
    let mut out = Vec::new();
    for (p, h) in [
        (path.to_path_buf(), &s.from_ack),
        (send, &s.from_send),
        (query, &s.query),
    ] {
        std::fs::write(&p, crate::hgrm::write(h, 5))
            .map_err(|e| format!("{}: {e}", p.display()))?;
        out.push(p);
    }
    Ok(out)
}

/// `loadgen catalog`.
pub fn main(a: CatalogArgs) -> ExitCode {
    eprintln!(
        "loadgen catalog: {} nodes x {} services ({} names), {} watchers ({}), servers {}",
        a.nodes,
        a.services_per_node,
        a.service_names,
        a.watchers,
        a.consistency,
        a.servers.join(",")
    );
    let s = match run(&a) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loadgen: catalog: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", s.table());
    if let Some(p) = &a.hgrm {
        if let Err(e) = write_hgrm(&s, p) {
            eprintln!("loadgen: catalog: {e}");
            return ExitCode::FAILURE;
        }
    }
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&s.to_json(&a)).expect("json");
        if let Err(e) = std::fs::write(p, text) {
            eprintln!("loadgen: catalog: {}: {e}", p.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
