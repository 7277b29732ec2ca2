//! `loadgen kv`: drive a Cairn cluster through the binary RPC protocol.
//!
//! A few worker threads (one per CPU by default, `--threads`) each drive many
//! connections: non-blocking sockets and one poll(2) over all of a worker's sockets, so a
//! wake-up serves every connection with replies waiting instead of one thread switch per
//! request. Each connection has up to `pipeline` requests in flight (the sans-IO sessions
//! of [`crate::targets`] match responses to requests); its state machine (`Load`) is kept
//! apart from the poll loop (`worker`) that feeds it. Closed loop (`rate` 0): a new
//! request as soon as one completes. Open loop: requests are due at a constant rate and
//! latency is measured from when each was due, so a stalled server is charged for every
//! request it delayed (no coordinated omission).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use cairn_net::rpc::message::Consistency;
use rustix::event::{PollFd, PollFlags};

use crate::measure::{ErrorKind, Recorder};
use crate::targets::{self, Done, Kind, Session};
use crate::workload::{intended_offset, Generator, KeyDist, Mix, Op as WOp};

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct KvRun {
    /// `HOST:PORT` (Cairn's RPC), or with a scheme: `cairn://`, `redis://`, `etcd://`,
    /// `consul+http://` (see [`targets::parse_servers`]).
    pub servers: Vec<String>,
    pub mix: Mix,
    pub keys: u64,
    pub dist: KeyDist,
    pub value_size: usize,
    pub connections: usize,
    pub pipeline: usize,
    /// Total requests per second; 0: closed loop.
    pub rate: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub consistency: Consistency,
    pub seed: u64,
    pub timeout: Duration,
}

/// What a run measured.
pub struct Outcome {
    pub recorder: Recorder,
    pub measured: Duration,
    pub started: SystemTime,
    /// Share of this process's CPU time over the run, in cores.
    pub cpu_cores_used: f64,
    /// Share of the measured time the busiest worker thread spent working rather than
    /// waiting for its sockets: near 1, loadgen, not the server, is the limit.
    pub busy_share: f64,
}

/// Requests in flight per preload connection: enough to hide the round trip, few enough
/// that a slow server does not time them out.
const PRELOAD_DEPTH: usize = 16;

/// The servers of `run`, checked against its workload.
pub fn targets_of(run: &KvRun) -> Result<targets::Targets, String> {
    let t = targets::parse_servers(&run.servers).map_err(|e| e.to_string())?;
    t.kind.supports(run.mix).map_err(|e| e.to_string())?;
    Ok(t)
}

/// Writes every key once (before a read workload).
pub fn preload(run: &KvRun) -> Result<(), String> {
    let t = targets::parse_servers(&run.servers).map_err(|e| e.to_string())?;
    let value = Bytes::from(vec![b'v'; run.value_size]);
    let workers = run.connections.clamp(1, 8);
    let per = run.keys.div_ceil(workers as u64);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers as u64)
            .map(|w| {
                let value = value.clone();
                let addr = t.addrs[w as usize % t.addrs.len()].clone();
                s.spawn(move || -> Result<(), String> {
                    let mut c = Conn::connect(
                        t.kind,
                        &addr,
                        &value,
                        run.consistency,
                        PRELOAD_DEPTH,
                        run.timeout,
                    )?;
                    let (mut next, end) = (w * per, ((w + 1) * per).min(run.keys));
                    let mut key_of: HashMap<u64, u64> = HashMap::new();
                    let mut buf = vec![0u8; READ_BUF_BYTES];
                    while next < end || !key_of.is_empty() {
                        while key_of.len() < PRELOAD_DEPTH && next < end {
                            let id = c
                                .session
                                .send(WOp::Write(next), Instant::now() + run.timeout)
                                .map_err(|e| format!("preload of key {next}: {e:?}"))?;
                            key_of.insert(id, next);
                            next += 1;
                        }
                        if let Err(e) = c.flush() {
                            return Err(format!("preload: writing to {addr}: {e}"));
                        }
                        for d in c.poll(Instant::now() + Duration::from_millis(50), &mut buf) {
                            let k = key_of.remove(&d.id);
                            if let (Some(k), Err(e)) = (k, d.result) {
                                return Err(format!("preload of key {k}: {}", e.detail));
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("a preload thread panicked".into()))
            })
            .collect::<Result<Vec<()>, String>>()
    })?;
    Ok(())
}

/// Sends one read to each of `servers` and waits for its answer: whether they are up and
/// serving (a read of a missing key is an answer). The error names the server and why.
pub fn probe(
    servers: &[String],
    consistency: Consistency,
    timeout: Duration,
) -> Result<(), String> {
    let t = targets::parse_servers(servers).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; READ_BUF_BYTES];
    for addr in &t.addrs {
        let mut c = Conn::connect(t.kind, addr, &Bytes::new(), consistency, 1, timeout)?;
        let deadline = Instant::now() + timeout;
        let id = c
            .session
            .send(WOp::Read(0), deadline)
            .map_err(|e| format!("{addr}: {e:?}"))?;
        c.flush().map_err(|e| format!("{addr}: {e}"))?;
        'wait: loop {
            for d in c.poll(deadline, &mut buf) {
                if d.id == id {
                    d.result.map_err(|e| format!("{addr}: {}", e.detail))?;
                    break 'wait;
                }
            }
        }
    }
    Ok(())
}

/// A socket and the protocol session on it. The socket is non-blocking: bytes the
/// socket's buffer cannot take yet wait in `unsent` until it is writable again.
struct Conn {
    stream: TcpStream,
    session: Box<dyn Session>,
    unsent: BytesMut,
}

/// Connects within `timeout`, so a target that is down or unreachable is a clear error,
/// not a hang.
fn connect_stream(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let resolved = addr
        .to_socket_addrs()
        .map_err(|e| format!("resolving {addr}: {e}"))?;
    let mut last = format!("{addr} resolves to no address");
    for a in resolved {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = format!("connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// Bytes read from a socket at once: many pipelined replies per read(2).
const READ_BUF_BYTES: usize = 256 * 1024;

fn timespec(d: Duration) -> rustix::event::Timespec {
    rustix::event::Timespec {
        tv_sec: d.as_secs() as i64,
        tv_nsec: i64::from(d.subsec_nanos()),
    }
}

impl Conn {
    fn connect(
        kind: Kind,
        addr: &str,
        value: &Bytes,
        consistency: Consistency,
        pipeline: usize,
        timeout: Duration,
    ) -> Result<Conn, String> {
        let stream = connect_stream(addr, timeout)?;
        let _ = stream.set_nodelay(true);
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        Ok(Conn {
            stream,
            session: targets::session(kind, addr, value, consistency, pipeline),
            unsent: BytesMut::new(),
        })
    }

    /// Writes what the session queued, as much as the socket takes now.
    fn write_some(&mut self) -> std::io::Result<()> {
        let more = self.session.take_outgoing();
        if self.unsent.is_empty() {
            self.unsent = more;
        } else {
            self.unsent.extend_from_slice(&more);
        }
        while !self.unsent.is_empty() {
            match self.stream.write(&self.unsent) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => self.unsent.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Let go of the session's buffer so it can reuse the memory.
        self.unsent = BytesMut::new();
        Ok(())
    }

    /// Bytes are waiting for the socket to become writable.
    fn wants_write(&self) -> bool {
        !self.unsent.is_empty()
    }

    /// Reads what has arrived (without waiting) into `buf` and returns the operations it
    /// completes; a closed or failed socket fails every operation in flight.
    fn read_some(&mut self, buf: &mut [u8]) -> Vec<Done> {
        let mut done = Vec::new();
        loop {
            match self.stream.read(buf) {
                Ok(0) => {
                    done.extend(self.session.closed("the server closed the connection"));
                    return done;
                }
                // A full buffer: more may be waiting.
                Ok(n) if n == buf.len() => done.extend(self.session.receive(&buf[..n])),
                Ok(n) => {
                    done.extend(self.session.receive(&buf[..n]));
                    return done;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return done,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    done.extend(self.session.closed(&e.to_string()));
                    return done;
                }
            }
        }
    }

    /// Writes everything queued, waiting for room when the socket's buffer is full (for
    /// the one-connection loops of preload and probe).
    fn flush(&mut self) -> std::io::Result<()> {
        self.write_some()?;
        while self.wants_write() {
            let mut fds = [rustix::event::PollFd::new(
                &self.stream,
                rustix::event::PollFlags::OUT,
            )];
            let _ = rustix::event::poll(&mut fds, None);
            self.write_some()?;
        }
        Ok(())
    }

    /// Waits at most until `until` (or the session's next deadline) for replies and
    /// returns completions, including requests that timed out (for the one-connection
    /// loops of preload and probe).
    fn poll(&mut self, until: Instant, buf: &mut [u8]) -> Vec<Done> {
        let mut done = self.session.expire(Instant::now());
        if !done.is_empty() {
            return done;
        }
        let until = match self.session.next_deadline() {
            Some(d) => until.min(d),
            None => until,
        };
        let left = until.saturating_duration_since(Instant::now());
        let mut fds = [rustix::event::PollFd::new(
            &self.stream,
            rustix::event::PollFlags::IN,
        )];
        let _ = rustix::event::poll(&mut fds, Some(&timespec(left)));
        done.extend(self.read_some(buf));
        done
    }
}

/// The longest a worker sleeps in poll(2): how soon it sees the end of the run and hands
/// its latencies to the recorder.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// The least time between two connection attempts of one connection.
const RECONNECT_EVERY: Duration = Duration::from_millis(100);
/// Latencies a worker keeps before taking the recorder's lock.
const BATCH: usize = 1024;

/// What every connection of a run shares.
struct Plan {
    kind: Kind,
    value: Bytes,
    consistency: Consistency,
    pipeline: usize,
    timeout: Duration,
    /// Requests per second per connection; 0: closed loop.
    rate: f64,
}

/// Where a connection's socket is.
enum Link {
    Up(Conn),
    /// Failed; the next attempt to connect is at `retry_at`.
    Down {
        retry_at: Instant,
    },
    /// A helper thread is connecting (a connect can take up to the timeout, and the
    /// worker's other connections must not wait for it).
    Connecting {
        result: mpsc::Receiver<Result<Conn, String>>,
    },
}

/// One connection's load: its schedule, its requests in flight and its socket. The state
/// machine of a connection, apart from the poll loop that drives it: the loop says when
/// the socket is ready ([`Load::on_ready`]) and lets it act on time ([`Load::advance`]).
struct Load {
    addr: String,
    link: Link,
    gen: Generator,
    /// id → when the request was due (open loop) or sent (closed loop).
    due: HashMap<u64, Instant>,
    /// Requests sent: in an open loop, the next one is due at `t0 + issued / rate`.
    issued: u64,
    t0: Instant,
    /// When this connection last began to connect.
    last_attempt: Instant,
}

/// One completed request, as the recorder takes it.
type Sample = Result<Duration, ErrorKind>;

impl Load {
    fn new(addr: String, conn: Conn, gen: Generator, t0: Instant) -> Load {
        Load {
            addr,
            link: Link::Up(conn),
            gen,
            due: HashMap::new(),
            issued: 0,
            t0,
            last_attempt: t0,
        }
    }

    /// When the next request is due in an open loop.
    fn next_send(&self, plan: &Plan) -> Instant {
        self.t0 + intended_offset(self.issued, plan.rate)
    }

    /// Charges completions to their requests.
    fn complete(&mut self, done: Vec<Done>, now: Instant, out: &mut Vec<Sample>) {
        for d in done {
            let Some(when) = self.due.remove(&d.id) else {
                continue;
            };
            out.push(match d.result {
                Ok(()) => Ok(now.saturating_duration_since(when)),
                Err(e) => Err(e.kind),
            });
        }
    }

    /// The socket is ready for what `ready` says.
    fn on_ready(&mut self, ready: PollFlags, buf: &mut [u8], out: &mut Vec<Sample>) {
        let Link::Up(conn) = &mut self.link else {
            return;
        };
        let mut done = Vec::new();
        if ready.intersects(PollFlags::IN | PollFlags::ERR | PollFlags::HUP) {
            done = conn.read_some(buf);
        }
        if ready.contains(PollFlags::OUT) {
            if let Err(e) = conn.write_some() {
                done.extend(conn.session.closed(&e.to_string()));
            }
        }
        self.complete(done, Instant::now(), out);
    }

    /// Acts on the time: times out late requests, reconnects a failed connection, sends
    /// what is due up to the pipeline depth and writes it.
    fn advance(&mut self, plan: &Plan, now: Instant, out: &mut Vec<Sample>) {
        self.reconnect(plan, now, out);
        let Link::Up(conn) = &mut self.link else {
            return;
        };
        let mut done = conn.session.expire(now);
        if !conn.session.failed() {
            while self.due.len() < plan.pipeline {
                let when = if plan.rate > 0.0 {
                    let at = self.t0 + intended_offset(self.issued, plan.rate);
                    if at > now {
                        break;
                    }
                    at
                } else {
                    now
                };
                match conn.session.send(self.gen.next_op(), now + plan.timeout) {
                    Ok(id) => {
                        self.due.insert(id, when);
                        self.issued += 1;
                    }
                    Err(_) => break,
                }
            }
            if let Err(e) = conn.write_some() {
                done.extend(conn.session.closed(&e.to_string()));
            }
        }
        self.complete(done, now, out);
        // Reconnect on the next pass, not at once: at most ten attempts a second.
        self.reconnect(plan, now, out);
    }

    /// Moves a failed connection towards a fresh one.
    fn reconnect(&mut self, plan: &Plan, now: Instant, out: &mut Vec<Sample>) {
        match &mut self.link {
            Link::Up(conn) if conn.session.failed() => {
                // Whatever was in flight has failed (and was counted); open a new
                // connection, at most ten times a second. In an open loop the requests
                // due meanwhile are sent late and charged for it.
                for _ in self.due.drain() {
                    out.push(Err(ErrorKind::Other));
                }
                self.link = Link::Down {
                    retry_at: now.max(self.last_attempt + RECONNECT_EVERY),
                };
            }
            Link::Down { retry_at } if *retry_at <= now => {
                let (tx, rx) = mpsc::channel();
                let addr = self.addr.clone();
                let (kind, value, consistency, pipeline, timeout) = (
                    plan.kind,
                    plan.value.clone(),
                    plan.consistency,
                    plan.pipeline,
                    plan.timeout,
                );
                std::thread::spawn(move || {
                    let _ = tx.send(Conn::connect(
                        kind,
                        &addr,
                        &value,
                        consistency,
                        pipeline,
                        timeout,
                    ));
                });
                self.last_attempt = now;
                self.link = Link::Connecting { result: rx };
            }
            Link::Connecting { result } => match result.try_recv() {
                Ok(Ok(conn)) => self.link = Link::Up(conn),
                Ok(Err(_)) | Err(mpsc::TryRecvError::Disconnected) => {
                    self.link = Link::Down {
                        retry_at: self.last_attempt + RECONNECT_EVERY,
                    }
                }
                Err(mpsc::TryRecvError::Empty) => {}
            },
            _ => {}
        }
    }

    /// The latest time to call [`Load::advance`] again, without news from the socket.
    fn wake_at(&self, plan: &Plan, now: Instant) -> Instant {
        match &self.link {
            Link::Up(conn) => {
                let mut at = now + MAX_WAIT;
                if plan.rate > 0.0 && self.due.len() < plan.pipeline {
                    at = at.min(self.next_send(plan));
                }
                if let Some(d) = conn.session.next_deadline() {
                    at = at.min(d);
                }
                at
            }
            Link::Down { retry_at } => *retry_at,
            // The helper thread cannot wake poll(2): look again soon.
            Link::Connecting { .. } => now + Duration::from_millis(1),
        }
    }

    /// The socket to poll and what for.
    fn interest(&self) -> Option<(&TcpStream, PollFlags)> {
        match &self.link {
            Link::Up(conn) if conn.wants_write() => {
                Some((&conn.stream, PollFlags::IN | PollFlags::OUT))
            }
            Link::Up(conn) => Some((&conn.stream, PollFlags::IN)),
            _ => None,
        }
    }
}

/// What the run's threads share.
struct Shared {
    recorder: Mutex<Recorder>,
    stop: AtomicBool,
    measuring: AtomicBool,
}

/// A worker thread: one poll(2) over the sockets of its connections. Returns the share of
/// its measured time it spent working rather than waiting for its sockets.
fn worker(mut loads: Vec<Load>, plan: &Plan, shared: &Shared) -> f64 {
    let mut buf = vec![0u8; READ_BUF_BYTES];
    let mut batch: Vec<Sample> = Vec::with_capacity(BATCH);
    let mut ready: Vec<(usize, PollFlags)> = Vec::with_capacity(loads.len());
    let mut last_flush = Instant::now();
    // Busy share, counted from when measuring starts.
    let (mut measured_from, mut waited) = (None::<Instant>, Duration::ZERO);
    while !shared.stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut wake = now + MAX_WAIT;
        for l in &mut loads {
            l.advance(plan, now, &mut batch);
            wake = wake.min(l.wake_at(plan, now));
        }
        {
            let mut fds = Vec::with_capacity(loads.len());
            let mut which = Vec::with_capacity(loads.len());
            for (i, l) in loads.iter().enumerate() {
                if let Some((s, flags)) = l.interest() {
                    fds.push(PollFd::new(s, flags));
                    which.push(i);
                }
            }
            let before = Instant::now();
            let wait = wake.saturating_duration_since(before);
            let _ = rustix::event::poll(&mut fds, Some(&timespec(wait)));
            if measured_from.is_some() {
                waited += before.elapsed();
            }
            ready.clear();
            ready.extend(
                fds.iter()
                    .zip(&which)
                    .filter(|(fd, _)| !fd.revents().is_empty())
                    .map(|(fd, &i)| (i, fd.revents())),
            );
        }
        for &(i, flags) in &ready {
            loads[i].on_ready(flags, &mut buf, &mut batch);
        }
        if batch.len() >= BATCH || last_flush.elapsed() > MAX_WAIT {
            if shared.measuring.load(Ordering::Relaxed) {
                measured_from.get_or_insert_with(Instant::now);
                let mut rec = shared.recorder.lock().unwrap_or_else(|p| p.into_inner());
                for r in batch.drain(..) {
                    match r {
                        Ok(l) => rec.record(l),
                        Err(k) => rec.error(k),
                    }
                }
            } else {
                batch.clear();
            }
            last_flush = Instant::now();
        }
    }
    match measured_from {
        Some(from) => {
            let total = from.elapsed().as_secs_f64().max(1e-9);
            (1.0 - waited.as_secs_f64() / total).clamp(0.0, 1.0)
        }
        None => 0.0,
    }
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (fields 14 and 15 of /proc/self/stat).
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Worker threads by default: one per CPU.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs the load on [`default_threads`] worker threads; calls `progress` once a second
/// with the interval's line.
pub fn run(
    run: &KvRun,
    progress: impl FnMut(&crate::measure::Progress),
) -> Result<Outcome, String> {
    run_on(run, default_threads(), progress)
}

/// Runs the load on `threads` worker threads (at most one per connection), each driving
/// its share of the connections; calls `progress` once a second with the interval's line.
pub fn run_on(
    run: &KvRun,
    threads: usize,
    mut progress: impl FnMut(&crate::measure::Progress),
) -> Result<Outcome, String> {
    let t = targets_of(run)?;
    let shared = Arc::new(Shared {
        recorder: Mutex::new(Recorder::default()),
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(run.warmup.is_zero()),
    });
    let plan = Arc::new(Plan {
        kind: t.kind,
        value: Bytes::from(vec![b'v'; run.value_size]),
        consistency: run.consistency,
        pipeline: run.pipeline,
        timeout: run.timeout,
        rate: if run.rate > 0.0 {
            run.rate / run.connections as f64
        } else {
            0.0
        },
    });
    let start = Instant::now();
    let started = SystemTime::now();
    let cpu0 = cpu_seconds();
    let threads = threads.clamp(1, run.connections.max(1));
    let mut shares: Vec<Vec<Load>> = (0..threads).map(|_| Vec::new()).collect();
    for c in 0..run.connections {
        let addr = t.addrs[c % t.addrs.len()].clone();
        let conn = Conn::connect(
            t.kind,
            &addr,
            &plan.value,
            run.consistency,
            run.pipeline,
            run.timeout,
        )?;
        let gen = Generator::new(run.seed ^ (c as u64) << 32, run.keys, run.dist, run.mix);
        shares[c % threads].push(Load::new(addr, conn, gen, Instant::now()));
    }
    let handles: Vec<_> = shares
        .into_iter()
        .map(|loads| {
            let (plan, shared) = (plan.clone(), shared.clone());
            std::thread::spawn(move || worker(loads, &plan, &shared))
        })
        .collect();
    let recorder = &shared.recorder;
    let measuring = &shared.measuring;

    // Warmup, then measure with a progress line a second.
    std::thread::sleep(run.warmup);
    {
        let mut rec = recorder.lock().unwrap_or_else(|p| p.into_inner());
        *rec = Recorder::default();
    }
    measuring.store(true, Ordering::Relaxed);
    let measure_start = Instant::now();
    let mut next = measure_start + Duration::from_secs(1);
    while measure_start.elapsed() < run.duration {
        let sleep_until = next.min(measure_start + run.duration);
        std::thread::sleep(sleep_until.saturating_duration_since(Instant::now()));
        let at = measure_start.elapsed();
        let p = recorder.lock().unwrap_or_else(|p| p.into_inner()).tick(at);
        progress(&p);
        next += Duration::from_secs(1);
    }
    shared.stop.store(true, Ordering::Relaxed);
    let measured = measure_start.elapsed();
    let busy_share = handles
        .into_iter()
        .map(|h| h.join().unwrap_or(0.0))
        .fold(0.0, f64::max);
    let cpu = cpu_seconds() - cpu0;
    let wall = start.elapsed().as_secs_f64().max(1e-9);
    let recorder = Arc::try_unwrap(shared)
        .map_err(|_| "recorder still shared".to_string())?
        .recorder
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    Ok(Outcome {
        recorder,
        measured,
        started,
        cpu_cores_used: cpu / wall,
        busy_share,
    })
}
