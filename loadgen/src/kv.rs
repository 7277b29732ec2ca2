//! `loadgen kv`: drive a Cairn cluster through the binary RPC protocol.
//!
//! Each connection runs on its own thread with up to `pipeline` requests in flight (the
//! sans-IO client matches responses by id). Closed loop (`rate` 0): a new request as soon
//! as one completes. Open loop: requests are due at a constant rate and latency is
//! measured from when each was due, so a stalled server is charged for every request it
//! delayed (no coordinated omission).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cairn_net::rpc::message::Consistency;

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
                        for d in c.poll(Instant::now() + Duration::from_millis(50)) {
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
    for addr in &t.addrs {
        let mut c = Conn::connect(t.kind, addr, &Bytes::new(), consistency, 1, timeout)?;
        let deadline = Instant::now() + timeout;
        let id = c
            .session
            .send(WOp::Read(0), deadline)
            .map_err(|e| format!("{addr}: {e:?}"))?;
        c.flush().map_err(|e| format!("{addr}: {e}"))?;
        'wait: loop {
            for d in c.poll(deadline) {
                if d.id == id {
                    d.result.map_err(|e| format!("{addr}: {}", e.detail))?;
                    break 'wait;
                }
            }
        }
    }
    Ok(())
}

/// A socket and the protocol session on it.
struct Conn {
    stream: TcpStream,
    session: Box<dyn Session>,
    buf: Vec<u8>,
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
            buf: vec![0u8; 256 * 1024],
        })
    }

    /// Writes everything queued; waits for room when the socket's buffer is full.
    fn flush(&mut self) -> std::io::Result<()> {
        let out = self.session.take_outgoing();
        let mut at = 0;
        while at < out.len() {
            match self.stream.write(&out[at..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut fds = [rustix::event::PollFd::new(
                        &self.stream,
                        rustix::event::PollFlags::OUT,
                    )];
                    let _ = rustix::event::poll(&mut fds, None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what has arrived, waiting at most until `until`, and returns completions,
    /// including requests that timed out. The socket is non-blocking: a wait of a
    /// millisecond or more uses poll(2) (precise to about a millisecond; a socket read
    /// timeout would be rounded up to a scheduler tick, ~4 ms, and make an open-loop
    /// generator late); a shorter wait yields the CPU and returns, so the caller can send
    /// what is due on time.
    fn poll(&mut self, until: Instant) -> Vec<Done> {
        let mut done = self.session.expire(Instant::now());
        match self.stream.read(&mut self.buf) {
            Ok(0) => {
                done.extend(self.session.closed("the server closed the connection"));
                return done;
            }
            Ok(n) => {
                done.extend(self.session.receive(&self.buf[..n]));
                return done;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                done.extend(self.session.closed(&e.to_string()));
                return done;
            }
        }
        if !done.is_empty() {
            return done;
        }
        let mut until = until;
        if let Some(d) = self.session.next_deadline() {
            until = until.min(d);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left >= Duration::from_millis(2) {
            let ms = (left.as_millis() as i32 - 1).max(1);
            let mut fds = [rustix::event::PollFd::new(
                &self.stream,
                rustix::event::PollFlags::IN,
            )];
            let timeout = rustix::event::Timespec {
                tv_sec: (ms / 1000) as i64,
                tv_nsec: ((ms % 1000) as i64) * 1_000_000,
            };
            let _ = rustix::event::poll(&mut fds, Some(&timeout));
        } else {
            std::thread::yield_now();
        }
        done
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

/// Runs the load; calls `progress` once a second with the interval's line.
pub fn run(
    run: &KvRun,
    mut progress: impl FnMut(&crate::measure::Progress),
) -> Result<Outcome, String> {
    let t = targets_of(run)?;
    let recorder = Arc::new(Mutex::new(Recorder::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(run.warmup.is_zero()));
    let value = Bytes::from(vec![b'v'; run.value_size]);
    let per_conn_rate = if run.rate > 0.0 {
        run.rate / run.connections as f64
    } else {
        0.0
    };
    let start = Instant::now();
    let started = SystemTime::now();
    let cpu0 = cpu_seconds();
    let mut conns = Vec::new();
    for c in 0..run.connections {
        let addr = t.addrs[c % t.addrs.len()].clone();
        let conn = Conn::connect(
            t.kind,
            &addr,
            &value,
            run.consistency,
            run.pipeline,
            run.timeout,
        )?;
        conns.push((addr, conn));
    }
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, (addr, mut conn))| {
            let (recorder, stop, measuring, value) = (
                recorder.clone(),
                stop.clone(),
                measuring.clone(),
                value.clone(),
            );
            let run = run.clone();
            let kind = t.kind;
            std::thread::spawn(move || {
                let mut gen =
                    Generator::new(run.seed ^ (c as u64) << 32, run.keys, run.dist, run.mix);
                // id → when the request was due (open loop) or sent (closed loop).
                let mut due: HashMap<u64, Instant> = Default::default();
                let mut batch: Vec<Result<Duration, ErrorKind>> = Vec::with_capacity(1024);
                let mut last_flush = Instant::now();
                let mut last_connect = Instant::now();
                let t0 = Instant::now();
                let mut issued = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if conn.session.failed() {
                        // Whatever was in flight has failed (and was counted); open a new
                        // connection, at most ten times a second. In an open loop the
                        // requests due meanwhile are sent late and charged for it.
                        for _ in due.drain() {
                            batch.push(Err(ErrorKind::Other));
                        }
                        let wait =
                            Duration::from_millis(100).saturating_sub(last_connect.elapsed());
                        std::thread::sleep(wait);
                        last_connect = Instant::now();
                        if let Ok(fresh) = Conn::connect(
                            kind,
                            &addr,
                            &value,
                            run.consistency,
                            run.pipeline,
                            run.timeout,
                        ) {
                            conn = fresh;
                        }
                    }
                    // Issue what is due, up to the pipeline depth.
                    while due.len() < run.pipeline {
                        let when = if per_conn_rate > 0.0 {
                            let at = t0 + intended_offset(issued, per_conn_rate);
                            if at > Instant::now() {
                                break;
                            }
                            at
                        } else {
                            Instant::now()
                        };
                        match conn
                            .session
                            .send(gen.next_op(), Instant::now() + run.timeout)
                        {
                            Ok(id) => {
                                due.insert(id, when);
                                issued += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    let mut done = match conn.flush() {
                        Ok(()) => Vec::new(),
                        Err(e) => conn.session.closed(&e.to_string()),
                    };
                    let until = if per_conn_rate > 0.0 {
                        t0 + intended_offset(issued, per_conn_rate)
                    } else {
                        Instant::now() + Duration::from_millis(50)
                    };
                    if !conn.session.failed() {
                        done.extend(conn.poll(until));
                    }
                    let now = Instant::now();
                    for d in done {
                        let Some(when) = due.remove(&d.id) else {
                            continue;
                        };
                        batch.push(match d.result {
                            Ok(()) => Ok(now.saturating_duration_since(when)),
                            Err(e) => Err(e.kind),
                        });
                    }
                    if batch.len() >= 1024 || last_flush.elapsed() > Duration::from_millis(20) {
                        if measuring.load(Ordering::Relaxed) {
                            let mut rec = recorder.lock().unwrap_or_else(|p| p.into_inner());
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
            })
        })
        .collect();

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
    stop.store(true, Ordering::Relaxed);
    let measured = measure_start.elapsed();
    for h in handles {
        let _ = h.join();
    }
    let cpu = cpu_seconds() - cpu0;
    let wall = start.elapsed().as_secs_f64().max(1e-9);
    let recorder = Arc::try_unwrap(recorder)
        .map_err(|_| "recorder still shared".to_string())?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    Ok(Outcome {
        recorder,
        measured,
        started,
        cpu_cores_used: cpu / wall,
    })
}
