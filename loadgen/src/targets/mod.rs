//! What `loadgen kv` can drive: Cairn's binary RPC and, for baselines, Redis (RESP),
//! etcd (v3 HTTP/JSON gateway) and Consul's HTTP KV API, all through one driver and one
//! histogram method so their figures compare.
//!
//! Each protocol is a sans-IO [`Session`]: operations in, bytes out; bytes in,
//! completions out. The socket loop in [`crate::kv`] is the same for all of them.
//! Cairn's RPC matches responses by request id; the others answer in order, which
//! [`Fifo`] turns into the same interface.

pub mod cairn;
pub mod consul_http;
pub mod etcd;
pub mod http;
pub mod resp;

use std::collections::VecDeque;
use std::time::Instant;

use bytes::BytesMut;
use cairn_net::rpc::message::Consistency;

use crate::measure::ErrorKind;
use crate::workload::{Mix, Op};

/// The protocol a server address speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Cairn's binary RPC (`HOST:PORT` or `cairn://HOST:PORT`).
    Cairn,
    /// `redis://HOST:PORT`
    Redis,
    /// `etcd://HOST:PORT`
    Etcd,
    /// `consul+http://HOST:PORT`
    ConsulHttp,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cairn => "cairn",
            Kind::Redis => "redis",
            Kind::Etcd => "etcd",
            Kind::ConsulHttp => "consul+http",
        }
    }

    /// Whether this kind of target can run `mix`; the error says why not.
    pub fn supports(self, mix: Mix) -> Result<(), TargetError> {
        match (self, mix) {
            (Kind::Redis, Mix::List) => Err(TargetError::Unsupported {
                kind: self.name(),
                workload: "list",
                why: "Redis has no ordered keyspace to list a prefix from (SCAN walks every key)",
            }),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("no server address given")]
    Empty,
    #[error(
        "unknown scheme in {0:?}: use HOST:PORT or cairn://, redis://, etcd://, consul+http://"
    )]
    Scheme(String),
    #[error("{0:?} is not HOST:PORT")]
    Address(String),
    #[error("{first} and {other} targets in one run: drive one kind of system at a time")]
    Mixed {
        first: &'static str,
        other: &'static str,
    },
    #[error("the {workload} workload does not run against {kind}: {why}")]
    Unsupported {
        kind: &'static str,
        workload: &'static str,
        why: &'static str,
    },
}

/// The servers of one run: their kind, and each `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    pub kind: Kind,
    pub addrs: Vec<String>,
}

/// Parses `--servers`. An address without a scheme takes the scheme of the one before it
/// (so `etcd://a:2379,b:2379` names two etcd members); the first defaults to Cairn.
/// Every address must be of the same kind.
pub fn parse_servers(servers: &[String]) -> Result<Targets, TargetError> {
    let mut kind: Option<Kind> = None;
    let mut addrs = Vec::new();
    for s in servers.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let (k, addr) = match s.split_once("://") {
            None => (kind.unwrap_or(Kind::Cairn), s),
            Some((scheme, rest)) => {
                let k = match scheme {
                    "cairn" => Kind::Cairn,
                    "redis" => Kind::Redis,
                    "etcd" => Kind::Etcd,
                    "consul+http" => Kind::ConsulHttp,
                    _ => return Err(TargetError::Scheme(s.to_string())),
                };
                (k, rest.trim_end_matches('/'))
            }
        };
        if let Some(first) = kind.filter(|f| *f != k) {
            return Err(TargetError::Mixed {
                first: first.name(),
                other: k.name(),
            });
        }
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !port_ok {
            return Err(TargetError::Address(addr.to_string()));
        }
        kind = Some(k);
        addrs.push(addr.to_string());
    }
    match kind {
        Some(kind) => Ok(Targets { kind, addrs }),
        None => Err(TargetError::Empty),
    }
}

/// The prefix a `list` operation on key number `k` reads: the block of 1000 keys holding it.
pub fn list_prefix(k: u64) -> String {
    format!("loadgen/{:09}", k / 1000)
}

/// Why an operation failed: its kind for the counts, and the detail for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl OpError {
    pub fn new(kind: ErrorKind, detail: String) -> OpError {
        OpError { kind, detail }
    }
}

/// A finished operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub id: u64,
    pub result: Result<(), OpError>,
}

/// Why an operation could not be queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// As many requests in flight as allowed: wait for completions.
    Full,
    /// The connection failed; reconnect.
    Failed(String),
}

/// One connection's protocol state, without the socket.
pub trait Session: Send {
    /// Queues `op`, due back before `deadline`; returns its id.
    fn send(&mut self, op: Op, deadline: Instant) -> Result<u64, SendError>;
    /// The bytes to write (all of them).
    fn take_outgoing(&mut self) -> BytesMut;
    /// Bytes read from the socket: the operations they complete.
    fn receive(&mut self, bytes: &[u8]) -> Vec<Done>;
    /// Completes what is past its deadline with a timeout.
    fn expire(&mut self, now: Instant) -> Vec<Done>;
    /// When to call [`Session::expire`] next.
    fn next_deadline(&self) -> Option<Instant>;
    /// The socket closed or failed: every operation in flight fails.
    fn closed(&mut self, why: &str) -> Vec<Done>;
    fn in_flight(&self) -> usize;
    /// The connection can take no more requests (reconnect to go on).
    fn failed(&self) -> bool;
}

/// A reply decoded by a [`Codec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the buffer the reply took.
    pub consumed: usize,
    pub result: Result<(), OpError>,
    /// The server closes the connection after this reply.
    pub close: bool,
}

/// A protocol whose replies come back in request order (RESP, HTTP/1.1).
pub trait Codec: Send {
    /// Appends the request for `op`.
    fn encode(&mut self, op: Op, out: &mut Vec<u8>);
    /// Decodes the reply to `op` from the front of `buf`; `Ok(None)` while incomplete;
    /// `Err` when the stream is broken (the connection cannot go on).
    fn decode(&mut self, buf: &[u8], op: Op) -> Result<Option<Decoded>, String>;
}

/// A [`Session`] for an in-order protocol: the first reply answers the oldest request.
/// A request past its deadline fails the connection (with every request in flight as a
/// timeout): the replies after it could no longer be matched to their requests.
pub struct Fifo<C> {
    codec: C,
    max_in_flight: usize,
    next_id: u64,
    /// Scratch for one encoded request (codecs write to a `Vec`).
    encoded: Vec<u8>,
    outgoing: BytesMut,
    incoming: Vec<u8>,
    /// Bytes of `incoming` already decoded (compacted when it passes half).
    read_at: usize,
    /// Oldest first: id, deadline, operation.
    in_flight: VecDeque<(u64, Instant, Op)>,
    failed: Option<String>,
}

impl<C: Codec> Fifo<C> {
    pub fn new(codec: C, max_in_flight: usize) -> Fifo<C> {
        Fifo {
            codec,
            max_in_flight: max_in_flight.max(1),
            next_id: 1,
            encoded: Vec::new(),
            outgoing: BytesMut::new(),
            incoming: Vec::new(),
            read_at: 0,
            in_flight: VecDeque::new(),
            failed: None,
        }
    }

    fn fail_all(&mut self, why: String, kind: ErrorKind, done: &mut Vec<Done>) {
        for (id, _, _) in self.in_flight.drain(..) {
            done.push(Done {
                id,
                result: Err(OpError::new(kind, why.clone())),
            });
        }
        self.incoming.clear();
        self.read_at = 0;
        self.failed = Some(why);
    }
}

impl<C: Codec> Session for Fifo<C> {
    fn send(&mut self, op: Op, deadline: Instant) -> Result<u64, SendError> {
        if let Some(why) = &self.failed {
            return Err(SendError::Failed(why.clone()));
        }
        if self.in_flight.len() >= self.max_in_flight {
            return Err(SendError::Full);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.encoded.clear();
        self.codec.encode(op, &mut self.encoded);
        self.outgoing.extend_from_slice(&self.encoded);
        self.in_flight.push_back((id, deadline, op));
        Ok(id)
    }

    fn take_outgoing(&mut self) -> BytesMut {
        self.outgoing.split()
    }

    fn receive(&mut self, bytes: &[u8]) -> Vec<Done> {
        let mut done = Vec::new();
        if self.failed.is_some() {
            return done;
        }
        self.incoming.extend_from_slice(bytes);
        while self.read_at < self.incoming.len() {
            let Some(&(id, _, op)) = self.in_flight.front() else {
                let why = "the server sent a reply to no request".to_string();
                self.fail_all(why, ErrorKind::Other, &mut done);
                return done;
            };
            match self.codec.decode(&self.incoming[self.read_at..], op) {
                Ok(None) => break,
                Ok(Some(d)) => {
                    self.in_flight.pop_front();
                    self.read_at += d.consumed;
                    done.push(Done {
                        id,
                        result: d.result,
                    });
                    if d.close {
                        let why = "the server closed the connection after a reply".to_string();
                        self.fail_all(why, ErrorKind::Other, &mut done);
                        return done;
                    }
                }
                Err(why) => {
                    self.fail_all(why, ErrorKind::Other, &mut done);
                    return done;
                }
            }
        }
        if self.read_at == self.incoming.len() {
            self.incoming.clear();
            self.read_at = 0;
        } else if self.read_at > self.incoming.len() / 2 {
            self.incoming.drain(..self.read_at);
            self.read_at = 0;
        }
        done
    }

    fn expire(&mut self, now: Instant) -> Vec<Done> {
        let mut done = Vec::new();
        if self.in_flight.front().is_some_and(|(_, d, _)| *d <= now) {
            let why = "no reply before the deadline".to_string();
            self.fail_all(why, ErrorKind::Timeout, &mut done);
        }
        done
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.in_flight.front().map(|(_, d, _)| *d)
    }

    fn closed(&mut self, why: &str) -> Vec<Done> {
        let mut done = Vec::new();
        self.fail_all(why.to_string(), ErrorKind::Other, &mut done);
        done
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn failed(&self) -> bool {
        self.failed.is_some()
    }
}

/// A new session for one connection to `addr` (`HOST:PORT`, used as the HTTP Host).
pub fn session(
    kind: Kind,
    addr: &str,
    value: &bytes::Bytes,
    consistency: Consistency,
    max_in_flight: usize,
) -> Box<dyn Session> {
    match kind {
        Kind::Cairn => Box::new(cairn::CairnSession::new(
            value.clone(),
            consistency,
            max_in_flight,
        )),
        Kind::Redis => Box::new(Fifo::new(resp::RedisCodec::new(value), max_in_flight)),
        Kind::Etcd => Box::new(Fifo::new(
            etcd::EtcdCodec::new(addr, value, consistency == Consistency::Stale),
            max_in_flight,
        )),
        Kind::ConsulHttp => Box::new(Fifo::new(
            consul_http::ConsulCodec::new(addr, value, consistency),
            max_in_flight,
        )),
    }
}
