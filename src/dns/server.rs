//! The DNS driver on glommio: one UDP socket and one TCP listener on the same port,
//! thin loops that hand each query to [`answer`] and send what it returns.
//!
//! Limits: at most `max_udp_in_flight` UDP queries being answered (more are dropped and
//! counted: a resolver retries), at most `max_tcp_connections` TCP connections (more are
//! closed on accept), a TCP connection must deliver each complete query within
//! `tcp_idle_timeout` or is closed. Queries on one TCP connection are answered in order.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream, UdpSocket};
use hickory_proto::op::ResponseCode;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::answer::{
    decode, finish, resolve, respond, Decoded, Found, Request, Response, Transport, MAX_UDP_BYTES,
};
use super::{DnsConfig, DnsView};

/// How many times [`DnsServer::bind`] on port 0 tries for a port free for both UDP and
/// TCP before giving up.
const BIND_ATTEMPTS: usize = 16;
/// How many differently shuffled encodings of one cached answer are kept; each query
/// answered from the cache gets one of them at random (see [`AnswerCache`]).
const SHUFFLES: usize = 16;
/// Most distinct queries (per transport) in the answer cache.
const CACHE_ENTRIES: usize = 4096;
/// Most bytes (per transport) the answer cache holds, counted as the keys, the encoded
/// answers and [`INSTANCE_BYTES`] per instance read from the catalog: TCP answers reach
/// 64 KiB each and a large service's instances much more, so the entry count alone does
/// not bound it.
const CACHE_BYTES: usize = 32 << 20;
/// What one cached instance is counted as (its names, tags, addresses and metadata).
const INSTANCE_BYTES: usize = 512;
/// Queries longer than this are never cached (dig's cookies make a query unique anyway).
const CACHE_QUERY_BYTES: usize = 512;
/// The UDP loop lets the executor's other tasks run after this many datagrams.
const YIELD_EVERY: u32 = 32;
/// Pause after a failed `accept` or `recv` (out of descriptors, say), so a lasting
/// failure does not spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(20);

/// Counters of what the driver did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Datagrams received.
    pub udp_received: u64,
    /// Datagrams answered.
    pub udp_answered: u64,
    /// Datagrams dropped because `max_udp_in_flight` were being answered.
    pub udp_dropped_busy: u64,
    /// Datagrams given no answer: shorter than a header, or not a query.
    pub udp_dropped_garbage: u64,
    /// Failed `recv_from` and `send_to` calls.
    pub udp_errors: u64,
    /// Responses (UDP or TCP) with records dropped to fit, TC set.
    pub truncated: u64,
    /// Queries answered SERVFAIL: the catalog could not be read.
    pub servfail: u64,
    /// TCP connections accepted and served.
    pub tcp_accepted: u64,
    /// TCP connections closed on accept because `max_tcp_connections` were open.
    pub tcp_refused: u64,
    /// Queries answered over TCP.
    pub tcp_answered: u64,
    /// Messages over TCP given no answer (not a query); the connection stays open.
    pub tcp_dropped_garbage: u64,
    /// TCP connections closed for idling past the timeout or an IO error (a client
    /// closing between queries is not counted).
    pub tcp_closed_early: u64,
    /// Failed `accept` calls.
    pub tcp_accept_errors: u64,
}

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Config(String),
    #[error("DNS port {addr} is already in use")]
    PortInUse { addr: SocketAddr },
    #[error("binding the DNS {proto} socket on {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A bound DNS server, not yet serving. Binding first lets a caller learn the port
/// (bind to port 0 in tests) and read the counters before handing it the view.
pub struct DnsServer {
    udp: UdpSocket,
    tcp: TcpListener,
    local: SocketAddr,
    stats: Rc<RefCell<DnsStats>>,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr`; with port 0, on one port free for both. Must be
    /// called on a glommio executor.
    pub fn bind(addr: SocketAddr) -> Result<DnsServer, ServeError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let udp = bind_udp(addr)?;
            let local = udp.local_addr().map_err(|source| ServeError::Bind {
                proto: "udp",
                addr,
                source,
            })?;
            match TcpListener::bind(local) {
                Ok(tcp) => {
                    let udp = UdpSocket::from(glommio_socket2::Socket::from(udp));
                    return Ok(DnsServer {
                        udp,
                        tcp,
                        local,
                        stats: Rc::default(),
                    });
                }
                // The port the kernel picked for UDP is taken for TCP: pick again.
                Err(_) if addr.port() == 0 && attempt < BIND_ATTEMPTS => continue,
                Err(e) => {
                    return Err(ServeError::Bind {
                        proto: "tcp",
                        addr: local,
                        source: std::io::Error::other(e.to_string()),
                    })
                }
            }
        }
    }

    /// The address bound (UDP and TCP share it).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The driver's counters, readable while it serves.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle(self.stats.clone())
    }

    /// Serves queries from `view` until the future is dropped (it returns only to
    /// refuse `cfg`). Dropping it stops the loops; queries being answered still finish
    /// and open TCP connections go on until their client closes or idles out (their
    /// tasks are detached, each bounded by the idle timeout).
    pub async fn serve<V: DnsView + 'static>(
        self,
        view: Rc<V>,
        cfg: DnsConfig,
    ) -> Result<(), ServeError> {
        cfg.validate().map_err(ServeError::Config)?;
        let shared = Rc::new(Shared {
            view,
            cfg,
            stats: self.stats,
            rng: RefCell::new(SmallRng::from_os_rng()),
            udp_in_flight: Cell::new(0),
            tcp_open: Cell::new(0),
            cache: Default::default(),
        });
        // Two tasks, not one future polling both loops: glommio's pending IO futures
        // keep a clone of the waker each time they are polled, so the pending `accept`,
        // polled again every time the UDP loop was woken or yielded, piled up clones until
        // the task's 16-bit reference count overflowed and glommio panicked: the agent
        // died after ≈ 40 s of dnsperf once cached queries were answered inline, within
        // 10 s once the loop also yielded every `YIELD_EVERY`. Dropping the handles
        // cancels the tasks.
        let udp = glommio::spawn_local(udp_loop(shared.clone(), Rc::new(self.udp)));
        let tcp = glommio::spawn_local(tcp_loop(shared, self.tcp));
        futures_lite::future::zip(udp, tcp).await;
        Ok(())
    }
}

/// Reads a running server's counters.
#[derive(Debug, Clone)]
pub struct StatsHandle(Rc<RefCell<DnsStats>>);

impl StatsHandle {
    pub fn get(&self) -> DnsStats {
        *self.0.borrow()
    }
}

/// Binds `addr` and serves DNS from `view` on it, UDP and TCP, until dropped.
pub async fn serve_dns<V: DnsView + 'static>(
    view: Rc<V>,
    addr: SocketAddr,
    cfg: DnsConfig,
) -> Result<(), ServeError> {
    cfg.validate().map_err(ServeError::Config)?;
    DnsServer::bind(addr)?.serve(view, cfg).await
}

struct Shared<V> {
    view: Rc<V>,
    cfg: DnsConfig,
    stats: Rc<RefCell<DnsStats>>,
    /// Draws each query's shuffle seed. Not cryptographic: the order only spreads load.
    rng: RefCell<SmallRng>,
    udp_in_flight: Cell<usize>,
    tcp_open: Cell<usize>,
    /// Answers by query, UDP's and TCP's apart (their size limits differ).
    cache: [RefCell<AnswerCache>; 2],
}

/// Encoded answers to the queries a server was asked, keyed by the query's bytes after
/// its id (so two queries with equal keys decode to the same request and get the same
/// answer but for the id and the shuffle). An entry holds the request, what the catalog
/// said for it and up to [`SHUFFLES`] encodings of it, each with its own shuffle, built
/// on first use. It is used only while the view's [`DnsView::version`] (the catalog's
/// index) and the SOA serial (the second) are what they were when the catalog was read
/// for it, so a cached answer is exactly what a stale read would give now. Only
/// answers built from a catalog read are cached (not SERVFAIL, nor the answers
/// `decode` gives without the catalog).
///
/// Past [`CACHE_ENTRIES`] or [`CACHE_BYTES`] it is emptied, and fills again from the
/// queries that follow.
#[derive(Default)]
struct AnswerCache {
    map: HashMap<Box<[u8]>, Cached>,
    /// What `map` holds, counted as [`CACHE_BYTES`] says.
    bytes: usize,
}

impl AnswerCache {
    /// Makes room for `bytes` more: empties the cache when it would be too large.
    fn reserve(&mut self, entries: usize, bytes: usize) {
        if self.map.len() + entries > CACHE_ENTRIES || self.bytes + bytes > CACHE_BYTES {
            self.map.clear();
            self.bytes = 0;
        }
        self.bytes += bytes;
    }
}

struct Cached {
    version: u64,
    serial: u32,
    req: Request,
    found: Found,
    shuffles: Vec<Option<Response>>,
}

impl Cached {
    /// What this entry is counted as in [`AnswerCache::bytes`] (`query_len`: its key's
    /// query length).
    fn weight(&self, query_len: usize) -> usize {
        let instances = match &self.found {
            Found::Instances(list) => list.len(),
            Found::Node(_) => 1,
        };
        let answers: usize = self.shuffles.iter().flatten().map(|r| r.bytes.len()).sum();
        query_len + answers + instances * INSTANCE_BYTES
    }
}

impl<V: DnsView> Shared<V> {
    fn count(&self, f: impl FnOnce(&mut DnsStats)) {
        f(&mut self.stats.borrow_mut());
    }

    fn counted(&self, resp: &Response) {
        self.count(|s| {
            s.truncated += u64::from(resp.truncated);
            s.servfail += u64::from(resp.code == ResponseCode::ServFail);
        });
    }

    /// The cache's key for `packet`, if it may be cached at all.
    fn cache_key(&self, packet: &[u8]) -> Option<Option<u64>> {
        if !self.cfg.allow_stale || packet.len() <= 12 || packet.len() > CACHE_QUERY_BYTES {
            return None;
        }
        Some(self.view.version())
    }

    /// Answers `packet` from the cache into `out` (replacing its contents), without
    /// waiting: false if it is not cached or no longer valid.
    fn cached(&self, packet: &[u8], transport: Transport, out: &mut Vec<u8>) -> bool {
        let Some(Some(version)) = self.cache_key(packet) else {
            return false;
        };
        let serial = soa_serial();
        let mut cache = self.cache[transport as usize].borrow_mut();
        let cache = &mut *cache;
        let Some(entry) = cache.map.get_mut(&packet[2..]) else {
            return false;
        };
        if entry.version != version || entry.serial != serial {
            return false;
        }
        let (slot, seed) = {
            let mut rng = self.rng.borrow_mut();
            (rng.random_range(0..SHUFFLES), rng.random())
        };
        if entry.shuffles[slot].is_none() {
            let found = Ok(&entry.found);
            let Some(resp) = respond(&entry.req, found, &self.cfg, transport, serial, seed) else {
                return false;
            };
            if cache.bytes + resp.bytes.len() > CACHE_BYTES {
                // Full: answer without keeping it.
                self.counted(&resp);
                out.clear();
                out.extend_from_slice(&resp.bytes);
                out[..2].copy_from_slice(&packet[..2]);
                return true;
            }
            cache.bytes += resp.bytes.len();
            entry.shuffles[slot] = Some(resp);
        }
        let Some(resp) = &entry.shuffles[slot] else {
            return false;
        };
        self.counted(resp);
        out.clear();
        out.extend_from_slice(&resp.bytes);
        // The query's id (a response's first two bytes are its query's).
        out[..2].copy_from_slice(&packet[..2]);
        true
    }

    async fn answer(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        if self.cached(packet, transport, &mut out) {
            return Some(out);
        }
        // Read before the catalog is: if it moves meanwhile, the entry is already stale.
        let version = self.cache_key(packet).flatten();
        let serial = soa_serial();
        let seed = self.rng.borrow_mut().random();
        let resp = match decode(packet, &self.cfg, self.view.datacenter(), serial) {
            Decoded::Drop => None,
            Decoded::Reply(m) => finish(m, transport, None, &self.cfg),
            Decoded::Lookup(req) => {
                let found = resolve(&*self.view, &self.cfg, &req.lookup).await;
                let resp = respond(&req, found.as_ref(), &self.cfg, transport, serial, seed);
                if let (Some(version), Ok(found), Some(resp)) = (version, found, &resp) {
                    let mut shuffles = vec![None; SHUFFLES];
                    shuffles[0] = Some(resp.clone());
                    let entry = Cached {
                        version,
                        serial,
                        req,
                        found,
                        shuffles,
                    };
                    let mut cache = self.cache[transport as usize].borrow_mut();
                    cache.reserve(1, entry.weight(packet.len()));
                    if let Some(old) = cache.map.insert(packet[2..].into(), entry) {
                        // Replaced (a stale entry): its bytes are no longer held.
                        cache.bytes = cache.bytes.saturating_sub(old.weight(packet.len()));
                    }
                }
                resp
            }
        }?;
        self.counted(&resp);
        Some(resp.bytes)
    }
}

/// The SOA serial: the Unix time in seconds, as Consul's.
fn soa_serial() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

async fn udp_loop<V: DnsView + 'static>(shared: Rc<Shared<V>>, socket: Rc<UdpSocket>) {
    // A query larger than this arrives cut, fails to parse and is answered FORMERR.
    let mut buf = vec![0u8; MAX_UDP_BYTES];
    let mut out = Vec::with_capacity(MAX_UDP_BYTES);
    let mut since_yield = 0u32;
    loop {
        // Under load the socket rarely runs dry and its reads never wait: step aside
        // every `YIELD_EVERY` datagrams, so the other tasks on this core (Raft, HTTP, the
        // queries spawned below) run within a few hundred µs, and whenever the executor
        // asks for the core back.
        since_yield += 1;
        if since_yield >= YIELD_EVERY {
            since_yield = 0;
            futures_lite::future::yield_now().await;
        }
        glommio::yield_if_needed().await;
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => {
                shared.count(|s| s.udp_errors += 1);
                glommio::timer::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        shared.count(|s| s.udp_received += 1);
        // Cached: answered here and now, no task, no copy of the query.
        if shared.cached(&buf[..n], Transport::Udp, &mut out) {
            match socket.send_to(&out, peer).await {
                Ok(_) => shared.count(|s| s.udp_answered += 1),
                Err(_) => shared.count(|s| s.udp_errors += 1),
            }
            continue;
        }
        if shared.udp_in_flight.get() >= shared.cfg.max_udp_in_flight {
            shared.count(|s| s.udp_dropped_busy += 1);
            continue;
        }
        shared.udp_in_flight.set(shared.udp_in_flight.get() + 1);
        let packet = buf[..n].to_vec();
        let (shared, socket) = (shared.clone(), socket.clone());
        glommio::spawn_local(async move {
            match shared.answer(&packet, Transport::Udp).await {
                Some(resp) => match socket.send_to(&resp, peer).await {
                    Ok(_) => shared.count(|s| s.udp_answered += 1),
                    Err(_) => shared.count(|s| s.udp_errors += 1),
                },
                None => shared.count(|s| s.udp_dropped_garbage += 1),
            }
            shared.udp_in_flight.set(shared.udp_in_flight.get() - 1);
        })
        .detach();
    }
}

async fn tcp_loop<V: DnsView + 'static>(shared: Rc<Shared<V>>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                shared.count(|s| s.tcp_accept_errors += 1);
                glommio::timer::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        if shared.tcp_open.get() >= shared.cfg.max_tcp_connections {
            shared.count(|s| s.tcp_refused += 1);
            drop(stream);
            continue;
        }
        shared.count(|s| s.tcp_accepted += 1);
        shared.tcp_open.set(shared.tcp_open.get() + 1);
        let shared = shared.clone();
        glommio::spawn_local(async move {
            if tcp_connection(&shared, stream).await.is_err() {
                shared.count(|s| s.tcp_closed_early += 1);
            }
            shared.tcp_open.set(shared.tcp_open.get() - 1);
        })
        .detach();
    }
}

/// Serves one TCP connection: 2-byte length, message, repeated (RFC 1035 §4.2.2).
/// `Ok` when the client closed between queries.
async fn tcp_connection<V: DnsView>(
    shared: &Shared<V>,
    mut stream: TcpStream,
) -> std::io::Result<()> {
    let idle = shared.cfg.tcp_idle_timeout;
    let _ = stream.set_write_timeout(Some(idle));
    loop {
        // The whole query, length and body, must arrive within the idle timeout, so a
        // client trickling bytes cannot hold the connection forever.
        let packet = glommio::timer::timeout(idle, async {
            let mut len = [0u8; 2];
            if let Err(e) = stream.read_exact(&mut len).await {
                return Ok(Err(e));
            }
            let mut packet = vec![0u8; u16::from_be_bytes(len) as usize];
            Ok(stream.read_exact(&mut packet).await.map(|_| packet))
        })
        .await;
        let packet = match packet {
            Ok(Ok(p)) => p,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        };
        let Some(resp) = shared.answer(&packet, Transport::Tcp).await else {
            // Framing is intact: skip the message, keep the connection.
            shared.count(|s| s.tcp_dropped_garbage += 1);
            continue;
        };
        // `answer` cuts TCP responses to 65,535 bytes.
        let Ok(len) = u16::try_from(resp.len()) else {
            shared.count(|s| s.tcp_dropped_garbage += 1);
            continue;
        };
        let mut out = Vec::with_capacity(2 + resp.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&resp);
        stream.write_all(&out).await?;
        shared.count(|s| s.tcp_answered += 1);
    }
}

/// Binds a plain UDP socket (no SO_REUSEPORT, unlike glommio's own `bind`: a second
/// agent on the port must be an error, not a silent split of its queries).
fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, ServeError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_err = |source| ServeError::Bind {
        proto: "udp",
        addr,
        source,
    };
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err)?;
    s.bind(&addr.into()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            ServeError::PortInUse { addr }
        } else {
            bind_err(e)
        }
    })?;
    Ok(s.into())
}
