//! Server-to-server RPC connections: one multiplexed connection per peer address, shared by
//! the Raft network and request forwarding on the Raft core.
//!
//! A thin IO loop around the sans-IO [`ClientConn`]: callers queue a request and await its
//! answer; one task writes what is queued, another reads and hands answers to their
//! callers by request id. A connection that fails fails every call in flight on it and is
//! replaced by the next call. Everything lives on one glommio executor (`Rc`, no locks).
//!
//! A call whose caller stops waiting (its future is dropped: the client of a forwarded
//! request hung up, or the call timed out) frees its slot at once; if it is a blocking
//! read, a cancel frame also tells the peer to drop it. Without that, every forwarded
//! blocking read of a client that went away held a slot here and a parked read on the
//! leader until its wait ended (up to 10 minutes), and clients that reconnect in a loop
//! filled the 8,192 slots, refusing every forwarded request, writes included.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_net::rpc::client::{CallError, ClientConn};
use cairn_net::rpc::frame::FrameDecoder;
use cairn_net::rpc::message::{Limits, Op, Request, Response};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tokio::sync::{oneshot, Notify};

/// Most requests in flight on one peer connection (forwarded client requests share it).
const MAX_IN_FLIGHT: usize = 8192;
/// Longest a connect may take: peers are on a LAN.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a call to a peer failed, and whether the peer may have acted on it.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Nothing was sent: safe to retry anything.
    #[error("cannot connect to server {addr}: {why}")]
    Connect { addr: String, why: String },
    /// The request may have been received: only reads are safe to retry.
    #[error("server {addr}: {source}")]
    Call { addr: String, source: CallError },
}

impl PeerError {
    /// The peer certainly did not receive the request.
    pub fn not_sent(&self) -> bool {
        matches!(self, PeerError::Connect { .. })
            || matches!(
                self,
                PeerError::Call {
                    source: CallError::TooManyInFlight { .. },
                    ..
                }
            )
    }
}

struct ConnState {
    conn: ClientConn,
    waiters: HashMap<u64, oneshot::Sender<Result<Response, CallError>>>,
    /// Set when the socket failed; the pool then connects anew.
    dead: bool,
}

/// One multiplexed connection to a peer.
#[derive(Clone)]
struct Conn {
    state: Rc<RefCell<ConnState>>,
    /// Wakes the writer when requests are queued.
    queued: Rc<Notify>,
}

impl Conn {
    async fn open(addr: &str) -> Result<Conn, String> {
        let stream = glommio::net::TcpStream::connect_timeout(addr, CONNECT_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            state: Rc::new(RefCell::new(ConnState {
                conn: ClientConn::new(
                    MAX_IN_FLIGHT,
                    Limits::default(),
                    FrameDecoder::for_responses(),
                ),
                waiters: HashMap::new(),
                dead: false,
            })),
            queued: Rc::new(Notify::new()),
        };
        let (reader, writer) = futures_lite::io::split(stream);
        glommio::spawn_local(conn.clone().read_loop(reader)).detach();
        glommio::spawn_local(conn.clone().write_loop(writer)).detach();
        Ok(conn)
    }

    fn fail(&self, why: &str) {
        let mut st = self.state.borrow_mut();
        if st.dead {
            return;
        }
        st.dead = true;
        for c in st.conn.closed(why) {
            if let Some(w) = st.waiters.remove(&c.id) {
                let _ = w.send(c.result);
            }
        }
        // Callers whose requests already timed out in the sans-IO core still wait here.
        for (_, w) in st.waiters.drain() {
            let _ = w.send(Err(CallError::Connection(why.to_string())));
        }
        drop(st);
        self.queued.notify_one();
    }

    async fn read_loop(self, mut reader: futures_lite::io::ReadHalf<TcpStream>) {
        // A client agent keeps one of these for its server connection for good.
        let mut buf = vec![0u8; super::server::READ_CHUNK];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) => {
                    self.fail("the server closed the connection");
                    return;
                }
                Err(e) => {
                    self.fail(&e.to_string());
                    return;
                }
                Ok(n) => n,
            };
            let mut st = self.state.borrow_mut();
            for c in st.conn.receive(&buf[..n]) {
                if let Some(w) = st.waiters.remove(&c.id) {
                    let _ = w.send(c.result);
                }
            }
            if st.dead {
                return;
            }
        }
    }

    async fn write_loop(self, mut writer: futures_lite::io::WriteHalf<TcpStream>) {
        loop {
            let out = {
                let mut st = self.state.borrow_mut();
                if st.dead {
                    None
                } else {
                    Some(st.conn.take_outgoing())
                }
            };
            let Some(out) = out else {
                let _ = writer.close().await;
                return;
            };
            if out.is_empty() {
                self.queued.notified().await;
                continue;
            }
            if let Err(e) = writer.write_all(&out).await {
                self.fail(&e.to_string());
                return;
            }
        }
    }

    async fn call(&self, req: &Request, timeout: Duration) -> Result<Response, CallError> {
        let deadline = Instant::now() + timeout;
        let (rx, id) = {
            let mut st = self.state.borrow_mut();
            // Forget requests whose callers gave up (their answers are ignored).
            for c in st.conn.expire(Instant::now()) {
                st.waiters.remove(&c.id);
            }
            let id = st.conn.send(req, deadline)?;
            let (tx, rx) = oneshot::channel();
            st.waiters.insert(id, tx);
            (rx, id)
        };
        self.queued.notify_one();
        let mut pending = Pending {
            conn: self,
            id,
            blocking: is_blocking(req),
            answered: false,
        };
        let answer = async {
            rx.await
                .unwrap_or_else(|_| Err(CallError::Connection("connection dropped".into())))
        };
        let timer = async {
            glommio::timer::sleep(timeout).await;
            Err(CallError::Timeout)
        };
        let result = futures_lite::future::or(answer, timer).await;
        // A timeout leaves the call in flight: `pending` then cancels it as a dropped call.
        pending.answered = !matches!(result, Err(CallError::Timeout));
        result
    }
}

/// Whether `req` is a blocking read, forwarded (a follower's `Kind::Forward`) or not: the
/// calls worth a cancel frame when their caller stops waiting.
fn is_blocking(req: &Request) -> bool {
    match &req.op {
        Op::Internal { body, .. } => Request::is_blocking_read(body, &Limits::default()),
        op => op.is_blocking(),
    }
}

/// A call in flight. Dropped before its answer came (its caller stopped waiting, or it
/// timed out), it frees its slot and, for a blocking read, queues a cancel frame (only
/// blocking reads are dropped by the peer; anything else runs to its end there).
struct Pending<'a> {
    conn: &'a Conn,
    id: u64,
    blocking: bool,
    answered: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // The state is never borrowed across an await, and this runs when the caller's
        // task drops the call, not inside the read or write loop.
        let mut st = self.conn.state.borrow_mut();
        st.waiters.remove(&self.id);
        if st.dead {
            return;
        }
        let queued = if self.blocking {
            st.conn.cancel(self.id)
        } else {
            st.conn.forget(self.id);
            false
        };
        drop(st);
        if queued {
            self.conn.queued.notify_one();
        }
    }
}

/// Connections to peers by address.
#[derive(Default)]
pub struct Peers {
    conns: RefCell<HashMap<String, Conn>>,
}

impl Peers {
    pub fn new() -> Rc<Peers> {
        Rc::new(Peers::default())
    }

    async fn conn(&self, addr: &str) -> Result<Conn, PeerError> {
        if let Some(c) = self.conns.borrow().get(addr) {
            if !c.state.borrow().dead {
                return Ok(c.clone());
            }
        }
        let c = Conn::open(addr).await.map_err(|why| PeerError::Connect {
            addr: addr.to_string(),
            why,
        })?;
        self.conns.borrow_mut().insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Sends `req` to the server at `addr` and waits at most `timeout` for its answer.
    pub async fn call(
        &self,
        addr: &str,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, PeerError> {
        let conn = self.conn(addr).await?;
        conn.call(req, timeout)
            .await
            .map_err(|source| PeerError::Call {
                addr: addr.to_string(),
                source,
            })
    }
}
