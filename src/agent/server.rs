//! The server: open storage, start Raft, form or join the cluster, accept RPC connections,
//! answer requests, forward what only the leader may answer.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cairn_net::rpc::frame::{encode_with, FrameDecoder, Kind as FrameKind};
use cairn_net::rpc::message::{
    Consistency, Entry as WireEntry, ErrorCode, Limits, Meta, Op, RaftServer, Request, Response,
    RpcError,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use openraft::error::{ClientWriteError, RaftError};
use openraft::impls::BasicNode;
use openraft::metrics::RaftMetrics;
use openraft::raft::ReadPolicy;
use openraft::type_config::alias::{SnapshotOf, WatchReceiverOf};
use openraft::{ChangeMembers, Config, Raft, SnapshotPolicy};
use openraft_rt::watch::WatchReceiver;
use tokio::sync::{oneshot, Notify};

use super::cluster::Seen;
use super::peer::Peers;
use super::{AgentConfig, AgentError};
use crate::kv::{KvCommand, KvEntry, KvOutcome};
use crate::raft::network::Network;
use crate::raft::store::{Flush, LogStore, SnapshotData, StateMachine};
use crate::raft::types::{Command, Outcome, Proposal, TypeConfig};
use crate::raft::wire::{self, Kind};

mod answers;
mod front;
pub(crate) mod kv_read;
mod read_index;
mod state;

type CairnRaft = Raft<TypeConfig, StateMachine>;
type Metrics = WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>;

/// Longest blocking wait, as Consul.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Longest a blocking read sleeps between looks when nothing is applied (it is woken at
/// once by every applied batch).
const BLOCKING_RECHECK: Duration = Duration::from_secs(1);
/// Most client connections served at once; more are closed on accept, so a flood of
/// connections cannot exhaust file descriptors or memory.
pub(super) const MAX_CONNECTIONS: usize = 10_000;
/// Most requests one connection may have in flight; the server stops reading from a
/// connection at this many, so a client cannot queue unbounded work.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 1024;
/// Bytes one socket read takes (the connection's read buffer starts at this size and grows
/// only for frames larger than it). Every connection holds one zeroed chunk, so this is
/// per-connection memory: at 64 KiB, 10,000 client connections held 625 MiB of chunks
/// alone, and a client agent's heap was 60 kB larger (its server connection's chunk in
/// `peer.rs`, and those of the connections it serves). Requests are small (a write of a
/// 256-byte value is about 0.3 KiB on the wire; 16 pipelined, about 5 KiB), and a value
/// near the 512 KiB limit takes 32 reads instead of 8, each a copy of what loopback
/// delivers in one piece anyway.
pub(super) const READ_CHUNK: usize = 16 * 1024;
/// How long a request waits for a leader to be known (during an election) before it is
/// answered with `NoLeader`.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// Attempts to reach the leader for one forwarded request.
pub(super) const FORWARD_ATTEMPTS: usize = 8;
/// Longest a forwarded write waits for the leader's answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest snapshot a follower accepts from a leader.
const MAX_SNAPSHOT_BYTES: u64 = cairn_storage::transfer::DEFAULT_MAX_SNAPSHOT_BYTES;

fn io(what: &str) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        what: what.to_string(),
        source,
    }
}

/// Runs the server until the process is stopped. Everything acknowledged is durable, so
/// stopping (Ctrl-C, SIGTERM, or a crash) loses nothing that was acknowledged.
/// The start-up callback (the CLI prints the agent's addresses), run once on core 0.
type Ready = Box<dyn FnOnce(&AgentConfig, u64) + Send>;

pub fn serve(
    cfg: AgentConfig,
    ready: impl FnOnce(&AgentConfig, u64) + Send + 'static,
) -> Result<(), AgentError> {
    // glommio binds with SO_REUSEPORT, so a second agent on the same port would silently
    // share its connections: probe with a plain bind first and refuse a clash.
    let addr = cfg.rpc_addr();
    probe_port(addr)?;
    if let Some(http) = &cfg.http {
        crate::http::probe(http.addr)?;
    }
    // One executor per core (`--cores`): core 0 runs Raft and everything else and is the
    // KV sequencer; every core owns a KV shard and accepts connections.
    let cores = cfg.cores.max(1);
    let (to_core0, from_fronts) = flume::unbounded::<front::ToCore0>();
    let shared = Arc::new(front::SharedMeta::default());
    let ready: Arc<std::sync::Mutex<Option<Ready>>> =
        Arc::new(std::sync::Mutex::new(Some(Box::new(ready))));
    let spin = cfg.spin_before_park;
    crate::runtime::shards::run_with(cores, cores > 1, spin, move |shards| async move {
        if shards.core() == 0 {
            let ready = ready.lock().ok().and_then(|mut r| r.take());
            if let Err(e) = run(cfg, shards, from_fronts, shared, ready).await {
                // The other cores serve until every core is done: end the process here,
                // as a failed start of a one-core agent would.
                eprintln!("cairn: agent: {e}");
                std::process::exit(1);
            }
        } else {
            front::serve_front(cfg, shards, to_core0, shared).await
        }
    })?;
    Ok(())
}

/// The agent's glommio executor.
pub(super) fn executor(
    cfg: &AgentConfig,
    io_memory: usize,
    name: &str,
) -> Result<glommio::LocalExecutor, AgentError> {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(io_memory)
        .spin_before_park(cfg.spin_before_park)
        .name(name)
        .make()
        .map_err(|e| AgentError::Raft(format!("starting the executor: {e}")))
}

/// Refuses a port another process listens on. A listener of a process that just died
/// can linger for a moment while the kernel tears down its io_uring, so a clash is only
/// reported after it persisted for [`PORT_CLASH_GRACE`]; connections a killed agent left
/// behind on the port are not a clash.
pub(crate) fn probe_port(addr: std::net::SocketAddr) -> Result<(), AgentError> {
    let deadline = Instant::now() + PORT_CLASH_GRACE;
    loop {
        match probe_bind(addr) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                // Connections of a killed agent linger on the port (FIN_WAIT) until its
                // peers close their ends; they do not listen. Only a listener that
                // accepts connections is another agent.
                let live = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500));
                if live.is_err() {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(AgentError::PortInUse { addr, source: e });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(source) => return Err(AgentError::PortInUse { addr, source }),
        }
    }
}

/// Binds and listens on `addr` once, the way a listener that shares nothing would:
/// SO_REUSEADDR (so connections of a previous agent lingering in TIME_WAIT do not count
/// as a clash) but not SO_REUSEPORT (so another listener does).
fn probe_bind(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1)
}

/// How long a port clash must last before the agent gives up (see [`probe_port`]).
const PORT_CLASH_GRACE: Duration = Duration::from_secs(3);

/// The server's Raft node id: chosen at random when its data directory is new, kept in
/// `DATA_DIR/node-id` so a restart is the same server to its peers.
fn node_id(data_dir: &std::path::Path) -> Result<u64, AgentError> {
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().map_err(|_| AgentError::Io {
            what: format!("reading {}", path.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{:?} is not a node id (a decimal number)", s.trim()),
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io("creating the data directory"))?;
            // Never 0: some tools read 0 as "no node".
            let id = rand010::random::<u64>().max(1);
            cairn_storage::fsutil::write_atomic(&path, format!("{id}\n").as_bytes()).map_err(
                |e| AgentError::Io {
                    what: format!("writing {}", path.display()),
                    source: std::io::Error::other(e.to_string()),
                },
            )?;
            Ok(id)
        }
        Err(source) => Err(AgentError::Io {
            what: format!("reading {}", path.display()),
            source,
        }),
    }
}

async fn run(
    cfg: AgentConfig,
    shards: crate::runtime::shards::Shards,
    fronts: flume::Receiver<front::ToCore0>,
    shared: Arc<front::SharedMeta>,
    ready: Option<Ready>,
) -> Result<(), AgentError> {
    let id = node_id(&cfg.data_dir)?;
    let raft_dir = cfg.data_dir.join("raft");
    // A lone server flushes inline; in a cluster the flush runs beside replication
    // (measured in ARCHITECTURE.md, "Raft").
    let flush = if cfg.bootstrap_expect == 1 && cfg.retry_join.is_empty() {
        Flush::Inline
    } else {
        Flush::Background
    };
    let log = LogStore::open(
        &raft_dir.join("log"),
        cairn_storage::LogOptions::default(),
        flush,
    )
    .map_err(io("opening the raft log"))?;
    let following = log.follower_flushes_inline();
    let sm = StateMachine::open(&raft_dir.join("snapshots"), shards)
        .await
        .map_err(io("opening the state machine"))?;
    let config = Config {
        cluster_name: "cairn".into(),
        heartbeat_interval: cfg.raft.heartbeat_ms,
        election_timeout_min: cfg.raft.election_timeout_ms,
        election_timeout_max: cfg.raft.election_timeout_ms * 2,
        // Snapshots are paced by the state machine (`SnapshotPace`), triggered below.
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: cfg.raft.trailing_logs,
        enable_pre_vote: Some(true),
        ..Config::default()
    }
    .validate()
    .map_err(|e| AgentError::Raft(e.to_string()))?;
    let peers = Peers::new();
    let raft = Raft::new(
        id,
        Arc::new(config),
        Network::new(peers.clone()),
        log,
        sm.clone(),
    )
    .await
    .map_err(|e| AgentError::Raft(e.to_string()))?;
    let addr = cfg.rpc_addr();
    let listener = TcpListener::bind(addr).map_err(|e| AgentError::Io {
        what: format!("listening on {addr}"),
        source: std::io::Error::other(e.to_string()),
    })?;
    let gossip = match &cfg.gossip {
        Some(g) => Some(start_gossip(&cfg, g)?),
        None => None,
    };
    let local = Rc::new(super::local::LocalAgent::start(
        &cfg.node,
        &cfg.datacenter,
        &gossip
            .as_ref()
            .map_or(cfg.bind, |g| g.local_addr().ip())
            .to_string(),
        &cfg.data_dir,
        &cfg.definitions,
        cfg.enable_script_checks,
        id,
    )?);
    let read_index = read_index::ReadIndexBatch::new(raft.clone());
    let server = Rc::new(Server {
        local: local.clone(),
        gossip,
        metrics: raft.metrics(),
        raft,
        sm,
        id,
        addr: addr.to_string(),
        peers,
        connections: Cell::new(0),
        incoming_snapshot: RefCell::new(None),
        last_leader_contact: Cell::new(None),
        limits: cfg.limits,
        seen: RefCell::new(BTreeMap::new()),
        node: cfg.node.clone(),
        datacenter: cfg.datacenter.clone(),
        bind_ip: cfg.bind.to_string(),
        session_timers: RefCell::new(state::SessionTimers::default()),
        answers: RefCell::new(answers::AnswerCache::default()),
        read_index,
    });
    {
        let s = server.clone();
        glommio::spawn_local(async move { s.leader_loop().await }).detach();
        // A follower flushes its log inline (LogStore::follower_flushes_inline). The
        // server metrics change with the role, not with every applied entry.
        let mut metrics = server.raft.server_metrics();
        glommio::spawn_local(async move {
            loop {
                let leading = metrics.borrow_watched().state == openraft::ServerState::Leader;
                following.set(!leading);
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .detach();
        let s = server.clone();
        let threshold = cfg.raft.snapshot_threshold;
        glommio::spawn_local(async move { s.snapshot_loop(threshold).await }).detach();
        let s = server.clone();
        glommio::spawn_local(async move {
            let pool = s.clone();
            super::local::sync_loop(s, local, move || {
                pool.gossip.as_ref().map_or(1, |g| g.num_live())
            })
            .await
        })
        .detach();
    }
    // Form the cluster (or join one) in the background: requests are served meanwhile
    // (and answered "no leader" until there is one).
    // A server with only a vote (no log) forms too: it must say why it waits.
    let standing = super::cluster::standing(&server)
        .await
        .map_err(AgentError::Raft)?;
    if standing != super::cluster::Standing::Member {
        if standing == super::cluster::Standing::Fresh
            && cfg.bootstrap_expect == 1
            && cfg.retry_join.is_empty()
        {
            super::cluster::bootstrap_alone(&server)
                .await
                .map_err(|e| AgentError::Raft(format!("bootstrap: {e}")))?;
        } else {
            let s = server.clone();
            let expect = cfg.bootstrap_expect;
            // Without gossip, the join addresses are the servers' RPC addresses.
            let rpc_join = match cfg.gossip {
                Some(_) => None,
                None => Some(cfg.retry_join.clone()),
            };
            glommio::spawn_local(async move {
                super::cluster::form(&s, expect, rpc_join.as_deref()).await
            })
            .detach();
        }
    }
    // Leaving on SIGINT/SIGTERM: members then see this node as left, not failed.
    {
        let s = server.clone();
        glommio::spawn_local(async move {
            use std::sync::atomic::Ordering;
            while !super::LEAVE.load(Ordering::SeqCst) {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            if let Some(g) = &s.gossip {
                if let Err(e) = g.leave().await {
                    eprintln!("cairn: leaving the gossip pool: {e}");
                }
            }
            super::LEFT.store(true, Ordering::SeqCst);
        })
        .detach();
    }
    if let Some(http) = &cfg.http {
        crate::http::start(server.clone(), http, crate::http::Ctx::of(&cfg))?;
    }
    if let Some(dns) = &cfg.dns {
        super::dns::start(server.clone(), &cfg.datacenter, dns)?;
    }
    // Requests the other cores hand over, and the Raft state they report with reads.
    {
        let s = server.clone();
        glommio::spawn_local(async move {
            while let Ok((req, mut tx)) = fronts.recv_async().await {
                let s = s.clone();
                glommio::spawn_local(async move {
                    let resp = if s.is_blocking(&req) {
                        // The other core drops its receiver when its client hangs up or
                        // cancels (see `connection`): stop waiting then, as there.
                        let gone = tx.cancellation();
                        let answer = async { Some(s.handle(req).await) };
                        match futures_lite::future::or(answer, async {
                            gone.await;
                            None
                        })
                        .await
                        {
                            Some(resp) => resp,
                            None => return,
                        }
                    } else {
                        s.handle(req).await
                    };
                    let _ = tx.send(resp);
                })
                .detach();
            }
        })
        .detach();
        let s = server.clone();
        glommio::spawn_local(async move {
            use std::sync::atomic::Ordering;
            loop {
                let m = s.meta(0);
                shared.known_leader.store(m.known_leader, Ordering::Relaxed);
                shared
                    .last_contact_ms
                    .store(m.last_contact_ms, Ordering::Relaxed);
                glommio::timer::sleep(Duration::from_millis(100)).await;
            }
        })
        .detach();
    }
    if let Some(ready) = ready {
        ready(&cfg, id);
    }
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if server.connections.get() >= MAX_CONNECTIONS {
                    eprintln!("cairn: {MAX_CONNECTIONS} connections open; refusing another");
                    drop(stream);
                    continue;
                }
                server.connections.set(server.connections.get() + 1);
                let s = server.clone();
                glommio::spawn_local(async move {
                    connection(s.clone(), stream).await;
                    s.connections.set(s.connections.get() - 1);
                })
                .detach();
            }
            Err(e) => {
                eprintln!("cairn: accept on {addr}: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Joins (or starts) the LAN gossip pool: this server's name, role, datacenter and RPC
/// port travel in its metadata, so the other servers find its RPC address there.
pub(super) fn start_gossip(
    cfg: &AgentConfig,
    g: &super::GossipSettings,
) -> Result<crate::gossip::GossipHandle, AgentError> {
    use crate::gossip::{GossipConfig, GossipHandle, Key, Keyring, NodeMeta, Profile, Role};
    let meta = NodeMeta {
        name: cfg.node.clone(),
        role: if cfg.server {
            Role::Server
        } else {
            Role::Client
        },
        datacenter: g.datacenter.clone(),
        // Where a server answers RPCs; a client agent's port serves only its node.
        rpc_port: if cfg.server { cfg.server_port } else { 0 },
        protocol_version: 1,
        tags: Default::default(),
    };
    let profile = if g.local_profile {
        Profile::local()
    } else {
        Profile::lan()
    };
    let mut gc = GossipConfig::new(std::net::SocketAddr::new(cfg.bind, g.port), profile, meta);
    gc.join = super::cluster::gossip_seeds(&cfg.retry_join)
        .map_err(|e| AgentError::Config(format!("--retry-join: {e}")))?;
    if let Some(k) = &g.encrypt {
        let key = Key::from_base64(k).map_err(|e| AgentError::Config(format!("--encrypt: {e}")))?;
        gc.keyring = Some(Keyring::new(key));
    }
    GossipHandle::start(gc).map_err(|e| AgentError::Gossip(e.to_string()))
}

/// Waits until something is applied, the deadline passes, or [`BLOCKING_RECHECK`].
async fn wait_applied(applied: &mut tokio::sync::watch::Receiver<u64>, deadline: Instant) {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .min(BLOCKING_RECHECK);
    let timer = glommio::timer::sleep(left);
    let changed = applied.changed();
    futures_lite::future::or(
        async {
            if changed.await.is_err() {
                // The state machine is gone: only the timer can end the wait.
                std::future::pending::<()>().await;
            }
        },
        timer,
    )
    .await;
}

pub(super) struct Server {
    /// The LAN gossip pool, if on: it finds the other servers and tells who is alive.
    pub(super) gossip: Option<crate::gossip::GossipHandle>,
    pub(super) raft: CairnRaft,
    metrics: Metrics,
    sm: StateMachine,
    pub(super) id: u64,
    /// This server's RPC address, as its peers reach it.
    pub(super) addr: String,
    pub(super) peers: Rc<Peers>,
    /// Connections being served.
    connections: Cell<usize>,
    /// A snapshot arriving from the leader: its id and the bytes so far.
    incoming_snapshot: RefCell<Option<(String, BytesMut)>>,
    /// When the leader last reached this follower (Consul's LastContact).
    last_leader_contact: Cell<Option<Instant>>,
    limits: Limits,
    /// Servers that said hello, or answered ours, while this one formed a cluster.
    seen: RefCell<BTreeMap<u64, Seen>>,
    /// This agent's node name, datacenter and address (the catalog's view of it).
    node: String,
    datacenter: String,
    bind_ip: String,
    /// The leader's session TTL timers.
    session_timers: RefCell<state::SessionTimers>,
    /// Catalog answers shared between readers of the same query.
    answers: RefCell<answers::AnswerCache>,
    /// Quorum confirmations shared by concurrent consistent reads.
    read_index: read_index::ReadIndexBatch,
    /// This agent's own services and checks.
    local: Rc<super::local::LocalAgent>,
}

fn entry(e: &KvEntry) -> WireEntry {
    WireEntry {
        key: e.key.clone(),
        value: e.value.clone(),
        flags: e.flags,
        create_index: e.create_index,
        modify_index: e.modify_index,
        lock_index: e.lock_index,
        session: e.session.clone(),
    }
}

pub(super) fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(RpcError {
        code,
        message: message.into(),
        leader: None,
    })
}

/// The typed error for a request that does not decode: a limit names its own code.
fn decode_error_code(e: &cairn_net::rpc::message::MessageError) -> ErrorCode {
    match e {
        cairn_net::rpc::message::MessageError::Limit { what, .. } => match *what {
            "key" => ErrorCode::KeyTooLarge,
            "value" => ErrorCode::ValueTooLarge,
            "transaction operations" => ErrorCode::TxnTooLarge,
            _ => ErrorCode::Invalid,
        },
        _ => ErrorCode::Invalid,
    }
}

/// What running a request on this server gave.
enum Local {
    Done(Response),
    /// Only the leader may answer, and this server is not it. Nothing was changed, so the
    /// request may be sent to the leader (named if known).
    NotLeader(Option<(u64, String)>),
}

fn not_leader(hint: Option<(u64, String)>) -> Response {
    Response::Error(RpcError {
        code: ErrorCode::NotLeader,
        message: "this server is not the leader".into(),
        leader: hint.map(|(_, a)| a),
    })
}

/// Reads that may be answered by any server from its own state, and questions about the
/// cluster that every server answers from what it knows.
fn answers_locally(op: &Op) -> bool {
    match op {
        Op::KvGet { opts, .. }
        | Op::KvList { opts, .. }
        | Op::CatalogRead { opts, .. }
        | Op::SessionRead { opts, .. } => opts.consistency == Consistency::Stale,
        Op::StatusLeader
        | Op::StatusPeers
        | Op::RaftConfiguration
        | Op::Members
        | Op::Keyring { .. }
        | Op::AgentRegister { .. }
        | Op::AgentDeregister { .. }
        | Op::AgentCheckUpdate { .. }
        | Op::AgentMaintenance { .. }
        | Op::AgentLocal { .. }
        | Op::ForceLeave { .. }
        | Op::Join { .. }
        | Op::Leave
        | Op::Internal { .. } => true,
        _ => false,
    }
}

pub(super) fn is_read(op: &Op) -> bool {
    cairn_net::rpc::cluster::is_read(op)
}

/// How long the leader may take to answer a forwarded request.
pub(super) fn forward_timeout(op: &Op) -> Duration {
    match op.read_opts() {
        Some(opts) if op.is_blocking() => {
            Duration::from_millis(opts.wait_ms).min(MAX_WAIT) + MAX_WAIT / 16 + FORWARD_TIMEOUT
        }
        _ => FORWARD_TIMEOUT,
    }
}

impl Server {
    pub(super) fn note_peer(&self, h: &wire::Hello) {
        if h.id == self.id {
            return;
        }
        self.seen.borrow_mut().insert(
            h.id,
            Seen {
                addr: h.addr.clone(),
                initialized: h.initialized,
                leader: h.leader.clone(),
                at: Instant::now(),
            },
        );
    }

    pub(super) fn seen_peers(&self) -> BTreeMap<u64, Seen> {
        self.seen.borrow().clone()
    }

    /// The leader this server knows of, with its RPC address.
    pub(super) fn leader(&self) -> Option<(u64, String)> {
        let m = self.metrics.borrow_watched();
        let id = m.current_leader?;
        let node = m.membership_config.membership().get_node(&id)?;
        Some((id, node.addr.clone()))
    }

    fn is_leader(&self) -> bool {
        self.metrics.borrow_watched().current_leader == Some(self.id)
    }

    /// Waits (at most [`LEADER_WAIT`]) until a leader is known.
    async fn wait_leader(&self) -> Option<(u64, String)> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            if Instant::now() >= deadline {
                return None;
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }

    fn meta(&self, index: u64) -> Meta {
        let leader = self.metrics.borrow_watched().current_leader;
        let last_contact_ms = match leader {
            Some(id) if id == self.id => 0,
            _ => self
                .last_leader_contact
                .get()
                .map_or(0, |t| t.elapsed().as_millis() as u64),
        };
        Meta {
            index,
            known_leader: leader.is_some(),
            last_contact_ms,
        }
    }

    /// Answers a request: here if this server may, otherwise through the leader.
    pub(super) async fn handle(&self, req: Request) -> Response {
        if !req.datacenter.is_empty() && req.datacenter != self.datacenter {
            return error(
                ErrorCode::NoPathToDatacenter,
                format!("No path to datacenter {:?}", req.datacenter),
            );
        }
        if let Op::Internal { kind, body } = &req.op {
            return Box::pin(self.internal(*kind, body.clone())).await;
        }
        if let Some(r) = self.local.answer(&req.op) {
            return r;
        }
        if answers_locally(&req.op) || self.is_leader() {
            match self.local(&req).await {
                Local::Done(r) => return r,
                Local::NotLeader(_) => {}
            }
        }
        Box::pin(self.forward(req)).await
    }

    /// Sends a request to the leader and returns its answer. Retries only what is safe:
    /// a request the leader certainly did not act on (not sent, or refused as not-leader)
    /// and reads.
    async fn forward(&self, req: Request) -> Response {
        let mut payload = BytesMut::new();
        req.encode(&mut payload);
        let fwd = Request {
            datacenter: String::new(),
            token: String::new(),
            op: Op::Internal {
                kind: Kind::Forward as u8,
                body: payload.freeze(),
            },
        };
        let timeout = forward_timeout(&req.op);
        let mut last = String::from("no leader");
        for attempt in 0..FORWARD_ATTEMPTS {
            if attempt > 0 {
                glommio::timer::sleep(Duration::from_millis(25 << attempt.min(4))).await;
            }
            let Some((leader, addr)) = self.wait_leader().await else {
                return error(
                    ErrorCode::NoLeader,
                    "no cluster leader (an election is under way, or too few servers are up)",
                );
            };
            if leader == self.id {
                match self.local(&req).await {
                    Local::Done(r) => return r,
                    Local::NotLeader(_) => continue,
                }
            }
            match self.peers.call(&addr, &fwd, timeout).await {
                Ok(Response::Error(e)) if e.code == ErrorCode::NotLeader => {
                    last = format!("server {addr} is no longer the leader");
                }
                Ok(resp) => return resp,
                Err(e) if e.not_sent() || is_read(&req.op) => last = e.to_string(),
                Err(e) => {
                    return error(
                        ErrorCode::Unavailable,
                        format!(
                            "lost the connection to the leader while it handled the write \
                             ({e}); the write may or may not have been applied"
                        ),
                    )
                }
            }
        }
        error(
            ErrorCode::NoLeader,
            format!("could not reach the leader after {FORWARD_ATTEMPTS} attempts: {last}"),
        )
    }

    async fn write(&self, cmd: KvCommand) -> Result<KvOutcome, Local> {
        if let Err(e) = cmd.validate() {
            let code = match e {
                crate::kv::KvLimitError::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
                crate::kv::KvLimitError::TxnTooLarge { .. } => ErrorCode::TxnTooLarge,
                crate::kv::KvLimitError::KeyTooLarge { .. } => ErrorCode::KeyTooLarge,
                _ => ErrorCode::Invalid,
            };
            return Err(Local::Done(error(code, e.to_string())));
        }
        match self.propose(Command::Kv(cmd)).await? {
            Outcome::Kv(KvOutcome::Rejected(why)) if why.contains("session") => {
                Err(Local::Done(error(ErrorCode::InvalidSession, why)))
            }
            Outcome::Kv(KvOutcome::Rejected(why)) => {
                Err(Local::Done(error(ErrorCode::Invalid, why)))
            }
            Outcome::Kv(o) => Ok(o),
            other => Err(Local::Done(error(
                ErrorCode::Internal,
                format!("a KV write applied with outcome {other:?}"),
            ))),
        }
    }

    /// Takes a snapshot whenever the state machine's pacing says one is due
    /// ([`crate::raft::store::SnapshotPace`]), checked after every applied batch as
    /// openraft's own policy is; openraft ignores a trigger while one builds. Runs until
    /// the server stops.
    async fn snapshot_loop(&self, threshold: u64) {
        let mut applied = self.sm.applied();
        while applied.changed().await.is_ok() {
            if self.sm.snapshot_due(threshold) && self.raft.trigger().snapshot().await.is_err() {
                // Raft stopped (shutting down, or a fatal storage error it reports).
                return;
            }
        }
    }

    /// Proposes a command to Raft and waits until it is committed and applied here.
    async fn propose(&self, cmd: Command) -> Result<Outcome, Local> {
        // Boxed: openraft's future is about 4 KiB, and every request task would carry it.
        match Box::pin(self.raft.client_write(Proposal::new(cmd))).await {
            Ok(resp) => Ok(resp.data),
            Err(e) => Err(self.write_failed(e)),
        }
    }

    fn write_failed(&self, e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> Local {
        match e.api_error() {
            // Refused before it was appended: nothing happened, send it to the leader.
            Some(ClientWriteError::ForwardToLeader(f)) => Local::NotLeader(
                f.leader_id
                    .zip(f.leader_node.as_ref().map(|n| n.addr.clone())),
            ),
            _ => Local::Done(error(
                ErrorCode::Unavailable,
                format!("the write's outcome is unknown (leadership changed while it was in flight): {e}"),
            )),
        }
    }

    /// Makes a read on the leader as fresh as its consistency asks.
    async fn read_barrier(&self, consistency: Consistency) -> Result<(), Local> {
        let lease = match consistency {
            Consistency::Stale => return Ok(()),
            Consistency::Default => true,
            Consistency::Consistent => false,
        };
        // Boxed, as in `propose`: openraft's future is about 4 KiB.
        if lease
            && Box::pin(self.raft.ensure_linearizable(ReadPolicy::LeaseRead))
                .await
                .is_ok()
        {
            return Ok(());
        }
        // Consistent reads, and default ones whose lease ran out between heartbeats while
        // leadership still holds: confirm with a quorum, in a round shared with every
        // read waiting at the same time.
        if self.read_index.confirm().await {
            return Ok(());
        }
        Err(Local::NotLeader(
            self.leader().filter(|(id, _)| *id != self.id),
        ))
    }

    /// Blocking-read deadline: the wait (capped) plus up to wait/16 of jitter, so many
    /// watchers of one key do not all come back at the same instant.
    fn deadline(wait_ms: u64) -> Instant {
        let wait = Duration::from_millis(wait_ms).min(MAX_WAIT);
        let jitter_ms = (wait.as_millis() as u64) / 16;
        let jitter = if jitter_ms > 0 {
            rand010::random::<u64>() % jitter_ms
        } else {
            0
        };
        Instant::now() + wait + Duration::from_millis(jitter)
    }

    /// Runs a request on this server.
    async fn local(&self, req: &Request) -> Local {
        match self.local_inner(req).await {
            Ok(r) => Local::Done(r),
            Err(l) => l,
        }
    }

    /// KV requests take a path of their own, and everything else a boxed one: a request's
    /// task carries its whole future, and the catalog, session and operator arms await
    /// futures of several KiB (openraft's membership changes) that a KV read or write never
    /// needs (a KV request's task was 7.8 KiB, now 2.7 KiB).
    async fn local_inner(&self, req: &Request) -> Result<Response, Local> {
        match &req.op {
            Op::KvGet { .. }
            | Op::KvList { .. }
            | Op::KvPut { .. }
            | Op::KvDelete { .. }
            | Op::Txn { .. } => self.local_kv(req.op.clone()).await,
            _ => Box::pin(self.local_other(req)).await,
        }
    }

    async fn local_kv(&self, op: Op) -> Result<Response, Local> {
        Ok(match op {
            op @ (Op::KvGet { .. } | Op::KvList { .. }) => {
                let consistency = match &op {
                    Op::KvGet { opts, .. } | Op::KvList { opts, .. } => opts.consistency,
                    _ => unreachable!(),
                };
                self.read_barrier(consistency).await?;
                let shards = self.sm.shards();
                kv_read::kv_read(&shards, &op, |i| self.meta(i))
                    .await
                    .expect("a KV read")
            }
            Op::KvPut {
                key,
                value,
                flags,
                cas,
                acquire,
                release,
            } => {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let cmd = match (acquire, release, cas) {
                    (Some(session), _, _) => KvCommand::Acquire {
                        key,
                        value,
                        flags,
                        session,
                        now_ms,
                    },
                    (None, Some(session), _) => KvCommand::Release {
                        key,
                        value,
                        flags,
                        session,
                    },
                    (None, None, Some(index)) => KvCommand::Cas {
                        key,
                        value,
                        flags,
                        index,
                    },
                    (None, None, None) => KvCommand::Set { key, value, flags },
                };
                match self.write(cmd).await? {
                    KvOutcome::Applied(ok) => Response::Bool(ok),
                    other => error(ErrorCode::Internal, format!("unexpected outcome {other:?}")),
                }
            }
            Op::KvDelete { key, recurse, cas } => {
                let cmd = match (recurse, cas) {
                    (true, _) => KvCommand::DeleteTree { prefix: key },
                    (false, Some(index)) => KvCommand::DeleteCas { key, index },
                    (false, None) => KvCommand::Delete { key },
                };
                match self.write(cmd).await? {
                    KvOutcome::Applied(ok) => Response::Bool(ok),
                    other => error(ErrorCode::Internal, format!("unexpected outcome {other:?}")),
                }
            }
            Op::Txn { ops } => match self.write(KvCommand::Txn { ops }).await? {
                KvOutcome::Txn(Ok(results)) => Response::Txn {
                    results: results.iter().map(entry).collect(),
                    errors: Vec::new(),
                    index: self.sm.applied_index(),
                },
                KvOutcome::Txn(Err(errors)) => Response::Txn {
                    results: Vec::new(),
                    errors: errors
                        .into_iter()
                        .map(|e| (e.op_index as u32, e.what))
                        .collect(),
                    index: self.sm.applied_index(),
                },
                other => error(ErrorCode::Internal, format!("unexpected outcome {other:?}")),
            },
            _ => error(ErrorCode::Internal, "not a KV request"),
        })
    }

    async fn local_other(&self, req: &Request) -> Result<Response, Local> {
        if let Some(r) = self.state_op(&req.op).await {
            return r;
        }
        Ok(match req.op.clone() {
            Op::StatusLeader => Response::Leader(self.leader().map(|(_, a)| a)),
            Op::StatusPeers => {
                let m = self.metrics.borrow_watched();
                let membership = m.membership_config.membership();
                Response::Peers(
                    membership
                        .voter_ids()
                        .filter_map(|id| membership.get_node(&id).map(|n| n.addr.clone()))
                        .collect(),
                )
            }
            Op::RaftConfiguration => {
                let m = self.metrics.borrow_watched();
                let membership = m.membership_config.membership();
                let voters: BTreeSet<u64> = membership.voter_ids().collect();
                Response::Servers(
                    membership
                        .nodes()
                        .map(|(id, n)| RaftServer {
                            id: *id,
                            address: n.addr.clone(),
                            leader: m.current_leader == Some(*id),
                            voter: voters.contains(id),
                        })
                        .collect(),
                )
            }
            Op::Members => members_response(self.gossip.as_ref()),
            Op::ForceLeave { node } => force_leave_response(self.gossip.as_ref(), &node).await,
            Op::Join { addresses } => join_response(self.gossip.as_ref(), &addresses).await,
            Op::Leave => leave_response(),
            Op::Keyring { action, key } => {
                keyring_response(self.gossip.as_ref(), action, key.as_deref())
            }
            Op::RaftAddVoter { id, address } => {
                self.add_voter(id, address).await?;
                Response::Done
            }
            Op::RaftRemovePeer { id } => {
                let voters: BTreeSet<u64> = {
                    let m = self.metrics.borrow_watched();
                    let v = m.membership_config.membership().voter_ids().collect();
                    v
                };
                if !voters.contains(&id)
                    && self
                        .metrics
                        .borrow_watched()
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .is_none()
                {
                    return Ok(error(
                        ErrorCode::Invalid,
                        format!("server {id} is not in the Raft configuration"),
                    ));
                }
                if voters.len() == 1 && voters.contains(&id) {
                    return Ok(error(
                        ErrorCode::Invalid,
                        "refusing to remove the last voter",
                    ));
                }
                self.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
                    .await?;
                Response::Done
            }
            Op::RaftTransferLeader { to } => {
                if !self.is_leader() {
                    return Err(Local::NotLeader(self.leader()));
                }
                let target = match to {
                    Some(t) => t,
                    None => {
                        let m = self.metrics.borrow_watched();
                        let other = m
                            .membership_config
                            .membership()
                            .voter_ids()
                            .find(|v| *v != self.id);
                        match other {
                            Some(t) => t,
                            None => {
                                return Ok(error(
                                    ErrorCode::Invalid,
                                    "no other voter to transfer leadership to",
                                ))
                            }
                        }
                    }
                };
                if target == self.id {
                    return Ok(Response::Done);
                }
                let is_voter = self
                    .metrics
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == target);
                if !is_voter {
                    return Ok(error(
                        ErrorCode::Invalid,
                        format!("server {target} is not a voter"),
                    ));
                }
                self.raft
                    .trigger()
                    .transfer_leader(target)
                    .await
                    .map_err(|e| Local::Done(error(ErrorCode::Internal, e.to_string())))?;
                Response::Done
            }
            Op::Internal { .. } => error(ErrorCode::Invalid, "internal requests are not forwarded"),
            // Answered by `local_kv`.
            Op::KvGet { .. }
            | Op::KvList { .. }
            | Op::KvPut { .. }
            | Op::KvDelete { .. }
            | Op::Txn { .. } => error(ErrorCode::Internal, "unhandled KV request"),
            // Answered by `state_op` above.
            Op::CatalogRegister(_)
            | Op::CatalogDeregister { .. }
            | Op::CatalogRead { .. }
            | Op::SessionCreate(_)
            | Op::SessionDestroy { .. }
            | Op::SessionRenew { .. }
            | Op::SessionRead { .. } => error(ErrorCode::Internal, "unhandled catalog request"),
            // Answered by the local agent in `handle`.
            Op::AgentRegister { .. }
            | Op::AgentDeregister { .. }
            | Op::AgentCheckUpdate { .. }
            | Op::AgentMaintenance { .. }
            | Op::AgentLocal { .. } => error(ErrorCode::Internal, "unhandled agent request"),
        })
    }

    /// Adds a server as a voter: first as a learner that catches up, then promoted. A
    /// server already in the configuration under another id at the same address (its data
    /// directory was wiped) is replaced.
    async fn add_voter(&self, id: u64, address: String) -> Result<(), Local> {
        if !self.is_leader() {
            return Err(Local::NotLeader(self.leader()));
        }
        let (voters, stale): (BTreeSet<u64>, Vec<u64>) = {
            let m = self.metrics.borrow_watched();
            let membership = m.membership_config.membership();
            let stale = membership
                .nodes()
                .filter(|(nid, n)| **nid != id && n.addr == address)
                .map(|(nid, _)| *nid)
                .collect();
            (membership.voter_ids().collect(), stale)
        };
        if voters.contains(&id) && stale.is_empty() {
            return Ok(());
        }
        self.raft
            .add_learner(id, BasicNode { addr: address }, true)
            .await
            .map_err(|e| self.write_failed(e))?;
        let mut new_voters = voters;
        for s in &stale {
            new_voters.remove(s);
        }
        new_voters.insert(id);
        self.change_membership(ChangeMembers::ReplaceAllVoters(new_voters))
            .await
    }

    /// Changes the voters. A change refused because another one is still in progress (a
    /// server being promoted, say) changed nothing: it is tried again, for at most
    /// [`FORWARD_TIMEOUT`].
    async fn change_membership(&self, change: ChangeMembers<u64, BasicNode>) -> Result<(), Local> {
        use openraft::error::ChangeMembershipError;
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        loop {
            match self.raft.change_membership(change.clone(), false).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let busy = matches!(
                        e.api_error(),
                        Some(ClientWriteError::ChangeMembershipError(
                            ChangeMembershipError::InProgress(_)
                        ))
                    );
                    if !busy || Instant::now() >= deadline {
                        return Err(self.write_failed(e));
                    }
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Server-to-server messages.
    async fn internal(&self, kind: u8, body: Bytes) -> Response {
        let Some(kind) = Kind::from_u8(kind) else {
            return error(
                ErrorCode::Invalid,
                format!("unknown server message kind {kind}"),
            );
        };
        let bad = |e: wire::WireError| error(ErrorCode::Invalid, e.to_string());
        let fatal = |e: &dyn std::fmt::Display| error(ErrorCode::Internal, format!("raft: {e}"));
        // A Raft RPC for another node id was meant for a server that was at this address
        // before (a leader still sending to it): refused before it reaches Raft, so it
        // leaves no vote or log here (as hashicorp/raft's "target ID mismatch").
        let body = if kind.is_raft() {
            match wire::split_target(&body) {
                Ok((target, rest)) if target == self.id => rest,
                Ok((target, _)) => {
                    return error(
                        ErrorCode::WrongServer,
                        format!(
                            "{kind:?} for server {target} refused: the address {} now belongs \
                             to a different server, {}",
                            self.addr, self.id
                        ),
                    )
                }
                Err(e) => return bad(e),
            }
        } else {
            body
        };
        match kind {
            Kind::AppendEntries => {
                let req = match wire::decode_append(&body) {
                    Ok(r) => r,
                    Err(e) => return bad(e),
                };
                match self.raft.append_entries(req).await {
                    Ok(resp) => {
                        if resp.is_success() {
                            self.last_leader_contact.set(Some(Instant::now()));
                        }
                        Response::Internal(wire::encode_append_response(&resp))
                    }
                    Err(e) => fatal(&e),
                }
            }
            Kind::Vote | Kind::PreVote => {
                let req = match wire::decode_vote(&body) {
                    Ok(r) => r,
                    Err(e) => return bad(e),
                };
                let resp = if kind == Kind::Vote {
                    self.raft.vote(req).await
                } else {
                    self.raft.pre_vote(req).await
                };
                match resp {
                    Ok(resp) => Response::Internal(wire::encode_vote_response(&resp)),
                    Err(e) => fatal(&e),
                }
            }
            Kind::SnapshotChunk => {
                let c = match wire::decode_chunk(&body) {
                    Ok(c) => c,
                    Err(e) => return bad(e),
                };
                match self.accept_chunk(c) {
                    Ok(()) => Response::Internal(Bytes::new()),
                    Err(why) => error(ErrorCode::Invalid, why),
                }
            }
            Kind::InstallSnapshot => {
                let m = match wire::decode_install(&body) {
                    Ok(m) => m,
                    Err(e) => return bad(e),
                };
                let data = match self.incoming_snapshot.borrow_mut().take() {
                    Some((id, data)) if id == m.snapshot_id => data.freeze(),
                    _ => {
                        return error(
                            ErrorCode::Invalid,
                            format!("snapshot {} was not received whole", m.snapshot_id),
                        )
                    }
                };
                let snapshot = SnapshotOf::<TypeConfig, SnapshotData> {
                    meta: m.meta,
                    snapshot: data,
                };
                match self.raft.install_full_snapshot(m.vote, snapshot).await {
                    Ok(resp) => Response::Internal(wire::encode_snapshot_response(&resp)),
                    Err(e) => fatal(&e),
                }
            }
            Kind::TransferLeader => {
                let req = match wire::decode_transfer(&body) {
                    Ok(r) => r,
                    Err(e) => return bad(e),
                };
                match self.raft.handle_transfer_leader(req).await {
                    Ok(Ok(())) => Response::Internal(Bytes::from_static(&[0])),
                    Ok(Err(refused)) => {
                        let mut b = vec![1u8];
                        b.extend_from_slice(refused.to_string().as_bytes());
                        Response::Internal(Bytes::from(b))
                    }
                    Err(e) => fatal(&e),
                }
            }
            Kind::Hello => {
                // A forming server names itself; remember it for our own formation.
                if !body.is_empty() {
                    match wire::decode_hello(&body) {
                        Ok(h) => self.note_peer(&h),
                        Err(e) => return bad(e),
                    }
                }
                let initialized = self.raft.is_initialized().await.unwrap_or(true);
                Response::Internal(wire::encode_hello(&wire::Hello {
                    id: self.id,
                    addr: self.addr.clone(),
                    initialized,
                    leader: self.leader(),
                }))
            }
            Kind::Join => {
                let j = match wire::decode_join(&body) {
                    Ok(j) => j,
                    Err(e) => return bad(e),
                };
                match self.add_voter(j.id, j.addr).await {
                    Ok(()) => Response::Internal(Bytes::new()),
                    Err(Local::NotLeader(hint)) => not_leader(hint),
                    Err(Local::Done(r)) => r,
                }
            }
            Kind::Forward => {
                let req = match Request::decode(&body, &self.limits) {
                    Ok(r) => r,
                    Err(e) => return error(ErrorCode::Invalid, e.to_string()),
                };
                if let Op::Internal { .. } = req.op {
                    return error(ErrorCode::Invalid, "internal requests are not forwarded");
                }
                if !self.is_leader() {
                    return not_leader(self.leader());
                }
                match self.local(&req).await {
                    Local::Done(r) => r,
                    Local::NotLeader(hint) => not_leader(hint),
                }
            }
        }
    }

    fn accept_chunk(&self, c: wire::SnapshotChunk) -> Result<(), String> {
        if c.total > MAX_SNAPSHOT_BYTES {
            return Err(format!(
                "snapshot of {} bytes exceeds the limit of {MAX_SNAPSHOT_BYTES}",
                c.total
            ));
        }
        let mut slot = self.incoming_snapshot.borrow_mut();
        if c.offset == 0 {
            // Grown as chunks arrive: the announced size is the sender's word, not an
            // allocation to make up front.
            let capacity = c.total.min(64 << 20) as usize;
            *slot = Some((c.snapshot_id.clone(), BytesMut::with_capacity(capacity)));
        }
        match slot.as_mut() {
            Some((id, data)) if *id == c.snapshot_id && data.len() as u64 == c.offset => {
                if c.offset + c.data.len() as u64 > c.total {
                    *slot = None;
                    return Err("snapshot chunk runs past the announced size".into());
                }
                data.extend_from_slice(&c.data);
                Ok(())
            }
            _ => {
                *slot = None;
                Err(format!(
                    "snapshot chunk at offset {} of {} arrived out of order",
                    c.offset, c.snapshot_id
                ))
            }
        }
    }
}

/// How long an `Op::Join` waits for a member to answer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to `Op::Join`: `Done` once a member at one of the addresses is alive in
/// this agent's view (as Consul's join, which succeeds when it reached a node there).
pub(super) async fn join_response(
    gossip: Option<&crate::gossip::GossipHandle>,
    addresses: &[String],
) -> Response {
    let Some(g) = gossip else {
        return error(
            ErrorCode::Invalid,
            "this agent runs no gossip (--serf-lan-port -1)",
        );
    };
    let seeds = match super::cluster::gossip_seeds(addresses) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return error(ErrorCode::Invalid, "no address to join"),
        Err(e) => return error(ErrorCode::Invalid, e),
    };
    if let Err(e) = g.join(&seeds).await {
        return error(ErrorCode::Unavailable, e.to_string());
    }
    let deadline = Instant::now() + JOIN_TIMEOUT;
    loop {
        let reached = g
            .members()
            .iter()
            .any(|m| seeds.contains(&m.addr) && m.status == crate::gossip::Status::Alive);
        if reached {
            return Response::Done;
        }
        if Instant::now() >= deadline {
            return error(
                ErrorCode::Unavailable,
                format!(
                    "no member answered at {addresses:?} within {} s",
                    JOIN_TIMEOUT.as_secs()
                ),
            );
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

/// The answer to `Op::Leave`: asks the agent to leave as on SIGTERM (see
/// [`super::LEAVE`]); the process exits once the pool has been told.
pub(super) fn leave_response() -> Response {
    super::LEAVE.store(true, std::sync::atomic::Ordering::SeqCst);
    Response::Done
}

/// The answer to `Op::ForceLeave`, from this agent's gossip driver.
pub(super) async fn force_leave_response(
    gossip: Option<&crate::gossip::GossipHandle>,
    node: &str,
) -> Response {
    match gossip {
        Some(g) => match g.force_leave(node).await {
            Ok(()) => Response::Done,
            Err(e) => error(ErrorCode::Invalid, e),
        },
        None => error(
            ErrorCode::Invalid,
            "this agent runs no gossip (--serf-lan-port -1)",
        ),
    }
}

/// The answer to `Op::Members`: the gossip pool as this agent sees it.
pub(super) fn members_response(gossip: Option<&crate::gossip::GossipHandle>) -> Response {
    match gossip {
        Some(g) => Response::Members(
            g.members()
                .into_iter()
                .map(|m| cairn_net::rpc::message::MemberInfo {
                    name: m.meta.name.clone(),
                    address: m.addr.to_string(),
                    status: crate::gossip::status_name(m.status).to_string(),
                    role: match m.meta.role {
                        crate::gossip::Role::Server => "server".into(),
                        _ => "client".into(),
                    },
                    datacenter: m.meta.datacenter.clone(),
                    tags: m.meta.tags.into_iter().collect(),
                })
                .collect(),
        ),
        None => error(
            ErrorCode::Invalid,
            "this agent runs without gossip (--serf-lan-port -1)",
        ),
    }
}

/// The answer to `Op::Keyring`: this agent's gossip keyring, changed as asked. Keys
/// are per agent: rotate the pool by installing the new key on every agent, then using
/// it on every agent, then removing the old one from every agent.
pub(super) fn keyring_response(
    gossip: Option<&crate::gossip::GossipHandle>,
    action: cairn_net::rpc::message::KeyringAction,
    key: Option<&str>,
) -> Response {
    use cairn_net::rpc::message::KeyringAction;
    let Some(g) = gossip else {
        return error(
            ErrorCode::Invalid,
            "this agent runs without gossip (--serf-lan-port -1)",
        );
    };
    let key = match (action, key) {
        (KeyringAction::List, _) => None,
        (_, None) => return error(ErrorCode::Invalid, "this keyring action needs a key"),
        (_, Some(k)) => match crate::gossip::Key::from_base64(k) {
            Ok(k) => Some(k),
            Err(e) => return error(ErrorCode::Invalid, e.to_string()),
        },
    };
    let result = g.with_keyring(|ring| {
        match (action, &key) {
            (KeyringAction::Install, Some(k)) => {
                ring.install(k.clone());
            }
            (KeyringAction::Use, Some(k)) => ring.use_key(k).map_err(|e| e.to_string())?,
            (KeyringAction::Remove, Some(k)) => ring.remove(k).map_err(|e| e.to_string())?,
            _ => {}
        }
        Ok::<_, String>(
            ring.keys()
                .iter()
                .map(|k| k.to_base64())
                .collect::<Vec<_>>(),
        )
    });
    match result {
        Some(Ok(keys)) => Response::Keyring(keys),
        Some(Err(why)) => error(ErrorCode::Invalid, why),
        None => error(
            ErrorCode::Invalid,
            "gossip encryption is off on this agent (start it with --encrypt KEY)",
        ),
    }
}

/// What answers requests, from an RPC connection or the HTTP API (`crate::http`): a
/// server, or a client agent.
pub(crate) trait Handler: 'static {
    fn limits(&self) -> &Limits;
    fn answer(self: Rc<Self>, req: Request) -> impl std::future::Future<Output = Response>;
    /// Encodes the answer to `req` (frame id `id`) into `out` and returns true if it can
    /// be given at once without waiting for anything (a stale read of a local key); the
    /// connection then spawns no task for it. False: use [`Handler::answer`].
    fn answer_now(&self, _req: &Request, _out: &mut BytesMut, _id: u64) -> bool {
        false
    }
    /// The index of the last change to the catalog this agent reads stale from its own
    /// state, without a request (the DNS answer cache's validity); `None` when stale
    /// reads go elsewhere (a client agent asks a server).
    fn local_catalog_index(&self) -> Option<u64> {
        None
    }
    /// Blocking KV reads parked on this agent's shard cores now (a prefix read parks one
    /// on every core; `/v1/agent/metrics`); `None` when blocking reads park elsewhere (a
    /// client agent's park on a server).
    fn parked_reads(&self) -> Option<usize> {
        None
    }
    /// Whether `req` is a blocking read ([`Op::is_blocking`]), also inside a follower's
    /// `Kind::Forward`: the requests a hang-up or a cancel frame drops ([`blocking_read`]).
    fn is_blocking(&self, req: &Request) -> bool {
        match &req.op {
            Op::Internal { kind, body } => {
                *kind == Kind::Forward as u8 && Request::is_blocking_read(body, self.limits())
            }
            op => op.is_blocking(),
        }
    }
}

impl Handler for Server {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn answer(self: Rc<Self>, req: Request) -> Response {
        self.handle(req).await
    }

    fn answer_now(&self, req: &Request, out: &mut BytesMut, id: u64) -> bool {
        self.sm.with_shards(|shards| {
            kv_read::kv_get_now(shards, req, &self.datacenter, |i| self.meta(i), out, id)
        })
    }

    fn local_catalog_index(&self) -> Option<u64> {
        Some(self.sm.with_catalog(|c| c.index()))
    }

    fn parked_reads(&self) -> Option<usize> {
        Some(self.sm.with_shards(|s| s.parked_reads()))
    }
}

/// What a connection's reader, writer and request tasks share (one allocation per
/// connection; a request task holds one handle).
#[derive(Default)]
struct Conn {
    /// Answers encoded and not yet sent.
    out: RefCell<BytesMut>,
    /// Bytes of a batch the reader began to send itself ([`send_now`]) that the socket did
    /// not take at once: the writer sends them before anything in `out`.
    unsent: RefCell<BytesMut>,
    /// Wakes the writer: answers are ready, or the connection is closing.
    ready: Notify,
    /// Wakes the reader: a request finished, so a slot is free.
    slot_free: Notify,
    /// Requests being answered by their own tasks.
    in_flight: Cell<usize>,
    /// The client stopped sending (EOF or a read error), the stream broke, or a write
    /// failed: nothing more is read, and blocking reads are dropped.
    closed: Cell<bool>,
    /// Wakes the parked blocking reads when `closed` is set.
    hung_up: Notify,
    /// The blocking reads in flight by request id, for cancel frames: each with its
    /// number on this connection (a client may reuse an id; only its own entry is
    /// removed when a read ends) and what ends it. Only blocking reads are entered (the
    /// other requests are not dropped by a cancel), so the hot path pays nothing.
    blocking: RefCell<HashMap<u64, (u64, oneshot::Sender<()>)>>,
    /// Numbers the blocking reads (`blocking`).
    blocking_seq: Cell<u64>,
}

impl Conn {
    /// Marks the connection closed and drops its parked blocking reads; the writer
    /// still sends the answers of the other requests in flight.
    fn close(&self) {
        if !self.closed.replace(true) {
            self.hung_up.notify_waiters();
        }
        self.ready.notify_one();
    }

    /// The client cancelled request `id` (a cancel frame): a blocking read of that id still
    /// waiting is dropped as on a hang-up; anything else is left alone.
    fn cancel(&self, id: u64) {
        if let Some((_, stop)) = self.blocking.borrow_mut().remove(&id) {
            let _ = stop.send(());
        }
    }

    /// A request task ended; `answer` is its answer to request `id`, if it has one.
    fn finish(&self, answer: Option<(u64, Response)>) {
        if let Some((id, resp)) = answer {
            encode_with(&mut self.out.borrow_mut(), FrameKind::Response, id, |b| {
                resp.encode(b)
            });
        }
        self.in_flight.set(self.in_flight.get() - 1);
        self.ready.notify_one();
        self.slot_free.notify_one();
    }
}

/// Answers the blocking read `req` (frame id `id`), unless the connection closes first or
/// the client cancels it (a cancel frame: a follower or client agent whose own client
/// hung up): then the read is dropped unanswered, with everything it holds (its place among the
/// shard's parked reads, its timer, its reply on the way). Consul's HTTP server does the
/// same: Go's net/http cancels a request's context when the connection's background read
/// sees the client's EOF, and a blocking query ends with its context. Nobody is left to
/// read the answer, and without this a client that reconnects in a loop (a restarting
/// consul-template, a crashing app) would leave one parked read behind per connection for
/// up to the 10-minute cap. Only blocking reads are dropped: they change nothing, while
/// a write already accepted may be applied by Raft anyway, so it runs to its end and is
/// answered if the socket still takes it.
async fn blocking_read<H: Handler>(h: Rc<H>, conn: Rc<Conn>, req: Request, id: u64) {
    let hung_up = conn.hung_up.notified();
    let seq = conn.blocking_seq.get();
    conn.blocking_seq.set(seq + 1);
    let (stop, cancelled) = oneshot::channel();
    conn.blocking.borrow_mut().insert(id, (seq, stop));
    let answer = if conn.closed.get() {
        None
    } else {
        let answer = async { Some(h.answer(req).await) };
        let dropped = async {
            let cancelled = async {
                // Err: a later read with the same id took this one's entry, so only a
                // hang-up ends this one early.
                if cancelled.await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            futures_lite::future::or(hung_up, cancelled).await;
            None
        };
        futures_lite::future::or(answer, dropped).await
    };
    let mut blocking = conn.blocking.borrow_mut();
    if blocking.get(&id).is_some_and(|(s, _)| *s == seq) {
        blocking.remove(&id);
    }
    drop(blocking);
    conn.finish(answer.map(|resp| (id, resp)));
}

/// Sends the answers waiting in `conn.out` from the reader, without waking the writer
/// task, when the writer is idle and the socket takes them at once: the usual case for
/// answers encoded in the read loop (a stale get, an error), where the task switch to the
/// writer cost more than the send. What the socket does not take is left to the writer.
fn send_now<W: futures_lite::AsyncWrite + Unpin>(conn: &Conn, writer: &RefCell<Option<W>>) {
    let mut guard = writer.borrow_mut();
    let idle = guard.is_some() && conn.unsent.borrow().is_empty() && !conn.closed.get();
    let (Some(w), true) = (guard.as_mut(), idle) else {
        conn.ready.notify_one(); // the writer is writing, or has bytes to finish first
        return;
    };
    let mut batch = conn.out.borrow_mut().split();
    if batch.is_empty() {
        return;
    }
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        match std::pin::Pin::new(&mut *w).poll_write(&mut cx, &batch) {
            std::task::Poll::Ready(Ok(n)) if n > 0 => {
                let _ = batch.split_to(n);
                if batch.is_empty() {
                    return;
                }
            }
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            std::task::Poll::Ready(Ok(_) | Err(_)) => {
                // Written nothing, or failed: the writer retries and sees the error.
                break;
            }
            std::task::Poll::Pending => break,
        }
    }
    *conn.unsent.borrow_mut() = batch;
    conn.ready.notify_one();
}

/// Serves one client or peer connection: requests are read and run concurrently (up
/// to [`MAX_IN_FLIGHT_PER_CONNECTION`]) and answered in the order they finish. When the
/// client stops sending (or a write to it fails), its blocking reads are dropped
/// ([`blocking_read`]) and the answers to its other requests are still sent.
pub(super) async fn connection<H: Handler>(h: Rc<H>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = futures_lite::io::split(stream);
    // Taken by the writer task while it writes (so the reader leaves it alone then).
    let writer = Rc::new(RefCell::new(Some(writer)));
    let decoder = FrameDecoder::default();
    let conn = Rc::new(Conn::default());
    // The writer: sends whatever answers are ready, in batches; after the client
    // stopped sending, it still delivers the answers to what it sent. The reader sends
    // the answers it encodes itself when the writer is idle ([`send_now`]).
    let writer_task = {
        let (conn, writer) = (conn.clone(), writer.clone());
        glommio::spawn_local(async move {
            loop {
                let batch = match conn.unsent.take() {
                    unsent if !unsent.is_empty() => unsent,
                    _ => conn.out.borrow_mut().split(),
                };
                if batch.is_empty() {
                    if conn.closed.get() && conn.in_flight.get() == 0 {
                        return;
                    }
                    conn.ready.notified().await;
                    continue;
                }
                let Some(mut w) = writer.borrow_mut().take() else {
                    return; // only this task takes it
                };
                let sent = w.write_all(&batch).await;
                *writer.borrow_mut() = Some(w);
                if sent.is_err() {
                    conn.close(); // the client is gone
                    return;
                }
            }
        })
    };
    let mut inbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut chunk = vec![0u8; READ_CHUNK];
    'read: loop {
        let read = if conn.in_flight.get() < MAX_IN_FLIGHT_PER_CONNECTION {
            reader.read(&mut chunk).await
        } else {
            // Back-pressure: no new requests while this connection has too many in
            // flight. The socket is still watched, so a client that hangs up while its
            // slots hold parked blocking reads is noticed. Bytes that come instead (one
            // read's worth: nothing more is read) wait below for a free slot, and a
            // hang-up after them is only seen once one is free. (A read that loses the
            // race loses no bytes: glommio's socket reads wait for readiness, then read.)
            let slot = async {
                conn.slot_free.notified().await;
                None
            };
            match futures_lite::future::or(slot, async { Some(reader.read(&mut chunk).await) })
                .await
            {
                Some(read) => read,
                None => continue,
            }
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        inbuf.extend_from_slice(&chunk[..n]);
        while conn.in_flight.get() >= MAX_IN_FLIGHT_PER_CONNECTION {
            conn.slot_free.notified().await;
        }
        if conn.closed.get() {
            break; // the writer failed: the client is gone
        }
        loop {
            match decoder.decode(&mut inbuf) {
                Ok(Some(frame)) => {
                    if frame.kind == FrameKind::Cancel {
                        conn.cancel(frame.id);
                        continue;
                    }
                    let req = match Request::decode(&frame.payload, h.limits()) {
                        Ok(req) => req,
                        Err(e) => {
                            let resp = error(decode_error_code(&e), e.to_string());
                            encode_with(
                                &mut conn.out.borrow_mut(),
                                FrameKind::Response,
                                frame.id,
                                |b| resp.encode(b),
                            );
                            conn.ready.notify_one();
                            continue;
                        }
                    };
                    if h.answer_now(&req, &mut conn.out.borrow_mut(), frame.id) {
                        continue; // the writer is woken after this read's frames
                    }
                    conn.in_flight.set(conn.in_flight.get() + 1);
                    let (s, c, id) = (h.clone(), conn.clone(), frame.id);
                    if h.is_blocking(&req) {
                        glommio::spawn_local(blocking_read(s, c, req, id)).detach();
                    } else {
                        glommio::spawn_local(async move {
                            let resp = s.answer(req).await;
                            c.finish(Some((id, resp)));
                        })
                        .detach();
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The stream is out of step: say why and close.
                    let resp = error(ErrorCode::Invalid, e.to_string());
                    encode_with(&mut conn.out.borrow_mut(), FrameKind::Response, 0, |b| {
                        resp.encode(b)
                    });
                    break 'read;
                }
            }
        }
        send_now(&conn, &writer);
    }
    // Drop the blocking reads; let the other answers in flight finish (bounded by their
    // own timeouts) and go out, then close.
    conn.close();
    writer_task.await;
}

/// The Raft configuration a set of servers bootstraps with.
pub(super) fn bootstrap_members(servers: &[(u64, String)]) -> BTreeMap<u64, BasicNode> {
    servers
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect()
}
