//! A blocking client for a Cairn cluster: give it every server's address and it finds one
//! that answers, follows the leader hints servers give, and retries only what is safe to
//! retry, all within one deadline per request.
//!
//! What is safe to retry:
//! - anything, when the connection could not be made (nothing was sent);
//! - anything answered `NotLeader` or `NoLeader`: a server answers those only for a
//!   request it did not act on (a follower forwards writes itself; it says not-leader or
//!   no-leader only when the write was never appended);
//! - reads and status questions, whatever happened: they change nothing.
//!
//! A write whose connection broke, timed out or was answered `Unavailable` after it was
//! sent is not retried: it may have been applied, and retrying a non-idempotent write
//! (a CAS, a delete-tree) could apply it twice. The caller gets
//! [`ClusterError::Unknown`] and decides.
//!
//! It drives the sans-IO [`ClientConn`] over a std socket; [`ClusterClient::call_many`]
//! pipelines a batch on one connection.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::client::{CallError, ClientConn};
use super::frame::FrameDecoder;
use super::message::{ErrorCode, Limits, MessageError, Op, Request, Response};

/// Knobs, with defaults for a CLI.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Longest a request may take, retries included.
    pub timeout: Duration,
    /// Longest one connection attempt may take.
    pub connect_timeout: Duration,
    /// Most requests in flight on the connection (pipelining).
    pub max_in_flight: usize,
    pub limits: Limits,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            max_in_flight: 256,
            limits: Limits::default(),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no server could be reached ({0}); is an agent running there? start one with `cairn agent --dev`")]
    NoServer(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// A write was sent and then its answer was lost: it may or may not have happened.
    #[error("the write may or may not have been applied: {0}")]
    Unknown(String),
    #[error("bad response from {addr}: {source}")]
    BadResponse { addr: String, source: MessageError },
}

/// Requests that change nothing, so running them twice is harmless.
pub fn is_read(op: &Op) -> bool {
    matches!(
        op,
        Op::KvGet { .. }
            | Op::KvList { .. }
            | Op::CatalogRead { .. }
            | Op::SessionRead { .. }
            | Op::StatusLeader
            | Op::StatusPeers
            | Op::RaftConfiguration
            | Op::Members
            | Op::Keyring {
                action: super::message::KeyringAction::List,
                ..
            }
    )
}

struct Conn {
    addr: String,
    stream: TcpStream,
    rpc: ClientConn,
}

/// A client for a set of servers.
pub struct ClusterClient {
    servers: Vec<String>,
    /// The server to try next.
    at: usize,
    conn: Option<Conn>,
    opts: ClientOptions,
}

/// What happened to one request on one connection.
enum Attempt {
    Answer(Response),
    /// Failed after it was sent.
    Lost(String),
    BadResponse(MessageError),
}

impl ClusterClient {
    /// A client for `servers` (HOST:PORT each). Nothing is connected until a call.
    pub fn new(servers: &[String], opts: ClientOptions) -> ClusterClient {
        ClusterClient {
            servers: servers.to_vec(),
            at: 0,
            conn: None,
            opts,
        }
    }

    /// The server the client is connected to, if any.
    pub fn connected_to(&self) -> Option<&str> {
        self.conn.as_ref().map(|c| c.addr.as_str())
    }

    fn connect(&mut self, deadline: Instant) -> Result<(), ClusterError> {
        if self.conn.is_some() {
            return Ok(());
        }
        let mut errors = Vec::new();
        for _ in 0..self.servers.len().max(1) {
            let Some(addr) = self.servers.get(self.at).cloned() else {
                return Err(ClusterError::NoServer("no server addresses given".into()));
            };
            self.at = (self.at + 1) % self.servers.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match open(&addr, self.opts.connect_timeout.min(left)) {
                Ok(stream) => {
                    self.conn = Some(Conn {
                        addr,
                        stream,
                        rpc: ClientConn::new(
                            self.opts.max_in_flight,
                            self.opts.limits,
                            FrameDecoder::for_responses(),
                        ),
                    });
                    return Ok(());
                }
                Err(e) => errors.push(format!("{addr}: {e}")),
            }
        }
        Err(ClusterError::NoServer(errors.join("; ")))
    }

    /// Makes `addr` the next server tried, adding it if it is new (a leader hint).
    fn prefer(&mut self, addr: &str) {
        let i = match self.servers.iter().position(|s| s == addr) {
            Some(i) => i,
            None => {
                self.servers.push(addr.to_string());
                self.servers.len() - 1
            }
        };
        self.at = i;
        self.conn = None;
    }

    /// Sends one request and waits for its answer, retrying what is safe (see the module
    /// documentation) until the deadline.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClusterError> {
        let deadline = Instant::now() + self.opts.timeout;
        let read = is_read(&req.op);
        let mut backoff = Duration::from_millis(10);
        let mut last = String::new();
        // The last not-leader or no-leader answer: what the caller gets if the deadline
        // passes while the cluster has no leader.
        let mut refused: Option<Response> = None;
        loop {
            if Instant::now() >= deadline {
                return match refused {
                    Some(r) => Ok(r),
                    None if !last.is_empty() => Err(ClusterError::NoServer(last)),
                    None => Err(ClusterError::Timeout(self.opts.timeout)),
                };
            }
            // Every server refusing the connection is an answer in itself: no agent runs
            // there, and waiting would not change that.
            self.connect(deadline)?;
            let conn = self.conn.as_mut().expect("connected above");
            let addr = conn.addr.clone();
            match attempt(conn, std::slice::from_ref(req), deadline).pop() {
                Some(Attempt::Answer(Response::Error(e))) if e.code == ErrorCode::NotLeader => {
                    last = format!("{addr} is not the leader");
                    refused = Some(Response::Error(e.clone()));
                    match e.leader {
                        Some(l) if l != addr => self.prefer(&l),
                        _ => {
                            self.conn = None;
                            sleep_until_before(deadline, &mut backoff);
                        }
                    }
                }
                Some(Attempt::Answer(Response::Error(e))) if e.code == ErrorCode::NoLeader => {
                    last = e.message.clone();
                    refused = Some(Response::Error(e));
                    sleep_until_before(deadline, &mut backoff);
                }
                Some(Attempt::Answer(Response::Error(e)))
                    if e.code == ErrorCode::Unavailable && read =>
                {
                    last = e.message.clone();
                    self.conn = None;
                    sleep_until_before(deadline, &mut backoff);
                }
                Some(Attempt::Answer(r)) => return Ok(r),
                Some(Attempt::BadResponse(source)) => {
                    self.conn = None;
                    return Err(ClusterError::BadResponse { addr, source });
                }
                Some(Attempt::Lost(why)) => {
                    self.conn = None;
                    if !read {
                        return Err(ClusterError::Unknown(format!("{addr}: {why}")));
                    }
                    last = format!("{addr}: {why}");
                }
                None => unreachable!("one request gives one attempt"),
            }
        }
    }

    /// Pipelines `reqs` on one connection and returns their answers in the same order.
    /// Nothing is retried but the connection itself.
    pub fn call_many(&mut self, reqs: &[Request]) -> Vec<Result<Response, ClusterError>> {
        let deadline = Instant::now() + self.opts.timeout;
        if let Err(e) = self.connect(deadline) {
            let why = e.to_string();
            return reqs
                .iter()
                .map(|_| Err(ClusterError::NoServer(why.clone())))
                .collect();
        }
        let conn = self.conn.as_mut().expect("connected above");
        let addr = conn.addr.clone();
        let out: Vec<Result<Response, ClusterError>> = reqs
            .chunks(self.opts.max_in_flight)
            .flat_map(|chunk| attempt(conn, chunk, deadline))
            .zip(reqs)
            .map(|(a, req)| match a {
                Attempt::Answer(r) => Ok(r),
                Attempt::BadResponse(source) => Err(ClusterError::BadResponse {
                    addr: addr.clone(),
                    source,
                }),
                Attempt::Lost(why) if is_read(&req.op) => {
                    Err(ClusterError::NoServer(format!("{addr}: {why}")))
                }
                Attempt::Lost(why) => Err(ClusterError::Unknown(format!("{addr}: {why}"))),
            })
            .collect();
        if out.iter().any(|r| r.is_err()) {
            self.conn = None;
        }
        out
    }
}

fn sleep_until_before(deadline: Instant, backoff: &mut Duration) {
    let left = deadline.saturating_duration_since(Instant::now());
    std::thread::sleep((*backoff).min(left));
    *backoff = (*backoff * 2).min(Duration::from_millis(500));
}

fn open(addr: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let sock: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("the address resolves to nothing"))?;
    let stream = TcpStream::connect_timeout(&sock, timeout.max(Duration::from_millis(1)))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Sends `reqs` on `conn` and waits for all their answers (or the deadline); one
/// [`Attempt`] per request, in order.
fn attempt(conn: &mut Conn, reqs: &[Request], deadline: Instant) -> Vec<Attempt> {
    let mut results: Vec<Option<Attempt>> = reqs.iter().map(|_| None).collect();
    let mut pending: HashMap<u64, usize> = HashMap::new();
    for (i, r) in reqs.iter().enumerate() {
        match conn.rpc.send(r, deadline) {
            Ok(id) => {
                pending.insert(id, i);
            }
            Err(e) => results[i] = Some(Attempt::Lost(e.to_string())),
        }
    }
    let out = conn.rpc.take_outgoing();
    let mut failed = conn.stream.write_all(&out).err().map(|e| e.to_string());
    let mut buf = vec![0u8; 64 * 1024];
    while failed.is_none() && !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            failed = Some("no answer before the deadline".into());
            break;
        }
        if let Err(e) = conn
            .stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        {
            failed = Some(e.to_string());
            break;
        }
        let n = match conn.stream.read(&mut buf) {
            Ok(0) => {
                failed = Some("the server closed the connection".into());
                break;
            }
            Ok(n) => n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(e) => {
                failed = Some(e.to_string());
                break;
            }
        };
        for c in conn.rpc.receive(&buf[..n]) {
            if let Some(i) = pending.remove(&c.id) {
                results[i] = Some(match c.result {
                    Ok(r) => Attempt::Answer(r),
                    Err(CallError::BadResponse(m)) => Attempt::BadResponse(m),
                    Err(e) => Attempt::Lost(e.to_string()),
                });
            }
        }
    }
    let why = failed.unwrap_or_else(|| "no answer".into());
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Attempt::Lost(why.clone())))
        .collect()
}
