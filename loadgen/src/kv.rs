//! `loadgen kv`: drive a Cairn cluster through the binary RPC protocol.
//!
//! Each connection runs on its own thread with up to `pipeline` requests in flight (the
//! sans-IO client matches responses by id). Closed loop (`rate` 0): a new request as soon
//! as one completes. Open loop: requests are due at a constant rate and latency is
//! measured from when each was due, so a stalled server is charged for every request it
//! delayed (no coordinated omission).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use cairn_net::rpc::client::{CallError, ClientConn};
use cairn_net::rpc::frame::FrameDecoder;
use cairn_net::rpc::message::{Consistency, ErrorCode, Limits, Op, ReadOpts, Request, Response};

use crate::measure::{ErrorKind, Recorder};
use crate::workload::{intended_offset, key_name, Generator, KeyDist, Mix, Op as WOp};

/// One run's parameters.
#[derive(Debug, Clone)]
pub struct KvRun {
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

fn request(op: Op) -> Request {
    Request {
        datacenter: String::new(),
        token: String::new(),
        op,
    }
}

fn build(op: WOp, value: &Bytes, consistency: Consistency) -> Op {
    let key = |k: u64| Bytes::from(key_name(k));
    let opts = ReadOpts {
        consistency,
        ..ReadOpts::default()
    };
    match op {
        WOp::Read(k) => Op::KvGet { key: key(k), opts },
        WOp::Write(k) => Op::KvPut {
            key: key(k),
            value: value.clone(),
            flags: 0,
            cas: None,
            acquire: None,
            release: None,
        },
        // Check-and-set "only if absent" on a key that usually exists: measures the CAS
        // path and counts the expected refusals apart.
        WOp::Cas(k) => Op::KvPut {
            key: key(k),
            value: value.clone(),
            flags: 0,
            cas: Some(0),
            acquire: None,
            release: None,
        },
        WOp::List(k) => Op::KvList {
            prefix: Bytes::from(format!("loadgen/{:09}", k / 1000)),
            keys_only: true,
            separator: None,
            opts,
        },
    }
}

fn classify(r: &Result<Response, CallError>) -> Option<ErrorKind> {
    match r {
        Ok(Response::Error(e)) => Some(match e.code {
            ErrorCode::NotLeader | ErrorCode::NoLeader => ErrorKind::NotLeader,
            ErrorCode::Timeout => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        }),
        Ok(Response::Bool(false)) => Some(ErrorKind::CasFailed),
        Ok(_) => None,
        Err(CallError::Timeout) => Some(ErrorKind::Timeout),
        Err(_) => Some(ErrorKind::Other),
    }
}

/// Writes every key once (before a read workload).
pub fn preload(run: &KvRun) -> Result<(), String> {
    let value = Bytes::from(vec![b'v'; run.value_size]);
    let workers = run.connections.clamp(1, 8);
    let per = run.keys.div_ceil(workers as u64);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers as u64)
            .map(|w| {
                let value = value.clone();
                let server = run.servers[w as usize % run.servers.len()].clone();
                s.spawn(move || -> Result<(), String> {
                    let mut c = cairn_client(&server, run.timeout)?;
                    for k in w * per..((w + 1) * per).min(run.keys) {
                        let op = Op::KvPut {
                            key: Bytes::from(key_name(k)),
                            value: value.clone(),
                            flags: 0,
                            cas: None,
                            acquire: None,
                            release: None,
                        };
                        match c.call(&request(op)) {
                            Ok(Response::Bool(true)) => {}
                            other => return Err(format!("preload of key {k}: {other:?}")),
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

/// A connection with up to `pipeline` requests in flight.
struct Conn {
    stream: TcpStream,
    conn: ClientConn,
    buf: Vec<u8>,
}

fn cairn_client(server: &str, timeout: Duration) -> Result<SimpleClient, String> {
    SimpleClient::connect(server, timeout)
}

/// One request at a time (preload).
struct SimpleClient(Conn, Duration);

impl SimpleClient {
    fn connect(server: &str, timeout: Duration) -> Result<SimpleClient, String> {
        Ok(SimpleClient(Conn::connect(server, 1)?, timeout))
    }
    fn call(&mut self, req: &Request) -> Result<Response, CallError> {
        let id = self.0.conn.send(req, Instant::now() + self.1)?;
        self.0
            .flush()
            .map_err(|e| CallError::Connection(e.to_string()))?;
        loop {
            for c in self.0.poll(Instant::now() + self.1)? {
                if c.id == id {
                    return c.result;
                }
            }
        }
    }
}

impl Conn {
    fn connect(server: &str, pipeline: usize) -> Result<Conn, String> {
        let stream = TcpStream::connect(server).map_err(|e| format!("connect to {server}: {e}"))?;
        let _ = stream.set_nodelay(true);
        stream
            .set_nonblocking(true)
            .map_err(|e| format!("connect to {server}: {e}"))?;
        Ok(Conn {
            stream,
            conn: ClientConn::new(pipeline.max(1), Limits::default(), FrameDecoder::default()),
            buf: vec![0u8; 256 * 1024],
        })
    }

    /// Writes everything queued; waits for room when the socket's buffer is full.
    fn flush(&mut self) -> std::io::Result<()> {
        let out = self.conn.take_outgoing();
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
    fn poll(
        &mut self,
        until: Instant,
    ) -> Result<Vec<cairn_net::rpc::client::Completion>, CallError> {
        let mut done = self.conn.expire(Instant::now());
        match self.stream.read(&mut self.buf) {
            Ok(0) => {
                done.extend(self.conn.closed("the server closed the connection"));
                return Ok(done);
            }
            Ok(n) => {
                done.extend(self.conn.receive(&self.buf[..n]));
                return Ok(done);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                done.extend(self.conn.closed(&e.to_string()));
                return Ok(done);
            }
        }
        if !done.is_empty() {
            return Ok(done);
        }
        let mut until = until;
        if let Some(d) = self.conn.next_deadline() {
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
        Ok(done)
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
        conns.push(Conn::connect(
            &run.servers[c % run.servers.len()],
            run.pipeline,
        )?);
    }
    let handles: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, mut conn)| {
            let (recorder, stop, measuring, value) = (
                recorder.clone(),
                stop.clone(),
                measuring.clone(),
                value.clone(),
            );
            let run = run.clone();
            std::thread::spawn(move || {
                let mut gen =
                    Generator::new(run.seed ^ (c as u64) << 32, run.keys, run.dist, run.mix);
                // id → when the request was due (open loop) or sent (closed loop).
                let mut due: std::collections::HashMap<u64, Instant> = Default::default();
                let mut batch: Vec<Result<Duration, ErrorKind>> = Vec::with_capacity(1024);
                let mut last_flush = Instant::now();
                let t0 = Instant::now();
                let mut issued = 0u64;
                while !stop.load(Ordering::Relaxed) {
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
                        let op = build(gen.next_op(), &value, run.consistency);
                        match conn.conn.send(&request(op), Instant::now() + run.timeout) {
                            Ok(id) => {
                                due.insert(id, when);
                                issued += 1;
                            }
                            Err(_) => break,
                        }
                    }
                    if conn.flush().is_err() {
                        batch.push(Err(ErrorKind::Other));
                        break;
                    }
                    let until = if per_conn_rate > 0.0 {
                        t0 + intended_offset(issued, per_conn_rate)
                    } else {
                        Instant::now() + Duration::from_millis(50)
                    };
                    let done = match conn.poll(until) {
                        Ok(d) => d,
                        Err(_) => break,
                    };
                    let now = Instant::now();
                    for d in done {
                        let Some(when) = due.remove(&d.id) else {
                            continue;
                        };
                        let r = match classify(&d.result) {
                            None => Ok(now.saturating_duration_since(when)),
                            Some(k) => Err(k),
                        };
                        batch.push(r);
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
