//! The server loop: open storage, start Raft, accept RPC connections, answer requests.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cairn_net::rpc::frame::{encode_with, FrameDecoder, Kind};
use cairn_net::rpc::message::{
    Consistency, Entry as WireEntry, ErrorCode, Limits, Meta, Op, Request, Response, RpcError,
};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use openraft::impls::BasicNode;
use openraft::{Config, Raft};

use super::{AgentConfig, AgentError};
use crate::kv::{KvCommand, KvEntry, KvOutcome};
use crate::raft::network::SingleServer;
use crate::raft::store::{LogStore, StateMachine};
use crate::raft::types::{Command, TypeConfig};

type CairnRaft = Raft<TypeConfig, StateMachine>;

/// The node id of the only server (multi-server ids come with cluster formation).
const NODE_ID: u64 = 1;
/// Longest blocking wait, as Consul.
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Longest a blocking read sleeps between looks when nothing is applied (it is woken at
/// once by every applied batch).
const BLOCKING_RECHECK: Duration = Duration::from_secs(1);
/// Most client connections served at once; more are closed on accept, so a flood of
/// connections cannot exhaust file descriptors or memory.
const MAX_CONNECTIONS: usize = 10_000;

fn io(what: &str) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        what: what.to_string(),
        source,
    }
}

/// Runs the server until the process is stopped. Everything acknowledged is durable, so
/// stopping (Ctrl-C, SIGTERM, or a crash) loses nothing that was acknowledged.
pub fn serve(
    cfg: AgentConfig,
    ready: impl FnOnce(&AgentConfig) + Send + 'static,
) -> Result<(), AgentError> {
    let io_memory = crate::runtime::io_memory_per_executor(1)?;
    // glommio binds with SO_REUSEPORT, so a second agent on the same port would silently
    // share its connections: probe with a plain bind first and refuse a clash.
    let addr = cfg.rpc_addr();
    probe_port(addr)?;
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(io_memory)
        .spin_before_park(Duration::from_micros(200))
        .name("cairn-server")
        .make()
        .map_err(|e| AgentError::Raft(format!("starting the executor: {e}")))?;
    ex.run(async move { run(cfg, ready).await })
}

/// Refuses a port another process listens on. A listener of a process that just died
/// can linger for a moment while the kernel tears down its io_uring, so a clash is only
/// reported after it persisted for [`PORT_CLASH_GRACE`].
fn probe_port(addr: std::net::SocketAddr) -> Result<(), AgentError> {
    let deadline = Instant::now() + PORT_CLASH_GRACE;
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => {
                drop(l);
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(source) => return Err(AgentError::PortInUse { addr, source }),
        }
    }
}

/// How long a port clash must last before the agent gives up (see [`probe_port`]).
const PORT_CLASH_GRACE: Duration = Duration::from_secs(3);

async fn run(cfg: AgentConfig, ready: impl FnOnce(&AgentConfig)) -> Result<(), AgentError> {
    let raft_dir = cfg.data_dir.join("raft");
    let log = LogStore::open(&raft_dir.join("log"), cairn_storage::LogOptions::default())
        .map_err(io("opening the raft log"))?;
    let sm =
        StateMachine::open(&raft_dir.join("snapshots")).map_err(io("opening the state machine"))?;
    let config = Config {
        cluster_name: "cairn".into(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Config::default()
    }
    .validate()
    .map_err(|e| AgentError::Raft(e.to_string()))?;
    let raft = Raft::new(NODE_ID, Arc::new(config), SingleServer, log, sm.clone())
        .await
        .map_err(|e| AgentError::Raft(e.to_string()))?;
    let addr = cfg.rpc_addr();
    // Bootstrap exactly once: a server that already has a vote or a log never does again.
    let members = BTreeMap::from([(
        NODE_ID,
        BasicNode {
            addr: addr.to_string(),
        },
    )]);
    match raft.initialize(members).await {
        Ok(()) => {}
        Err(e) if e.to_string().contains("not allowed") || e.to_string().contains("NotAllowed") => {
        }
        Err(e) => return Err(AgentError::Raft(format!("bootstrap: {e}"))),
    }
    let listener = TcpListener::bind(addr).map_err(|e| AgentError::Io {
        what: format!("listening on {addr}"),
        source: std::io::Error::other(e.to_string()),
    })?;
    ready(&cfg);
    let state = Rc::new(Server {
        raft,
        sm,
        addr: addr.to_string(),
        connections: std::cell::Cell::new(0),
    });
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if state.connections.get() >= MAX_CONNECTIONS {
                    eprintln!("cairn: {MAX_CONNECTIONS} connections open; refusing another");
                    drop(stream);
                    continue;
                }
                state.connections.set(state.connections.get() + 1);
                let s = state.clone();
                glommio::spawn_local(async move {
                    s.connection(stream).await;
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

struct Server {
    raft: CairnRaft,
    sm: StateMachine,
    addr: String,
    /// Connections being served.
    connections: std::cell::Cell<usize>,
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

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error(RpcError {
        code,
        message: message.into(),
        leader: None,
    })
}

impl Server {
    async fn connection(&self, mut stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let decoder = FrameDecoder::default();
        let limits = Limits::default();
        let mut inbuf = BytesMut::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            inbuf.extend_from_slice(&chunk[..n]);
            let mut out = BytesMut::new();
            loop {
                match decoder.decode(&mut inbuf) {
                    Ok(Some(frame)) => {
                        let resp = match Request::decode(&frame.payload, &limits) {
                            Ok(req) => self.handle(req).await,
                            Err(e) => error(ErrorCode::Invalid, e.to_string()),
                        };
                        encode_with(&mut out, Kind::Response, frame.id, |b| resp.encode(b));
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // The stream is out of step: say why and close.
                        let resp = error(ErrorCode::Invalid, e.to_string());
                        encode_with(&mut out, Kind::Response, 0, |b| resp.encode(b));
                        let _ = stream.write_all(&out).await;
                        return;
                    }
                }
            }
            if !out.is_empty() && stream.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    fn meta(&self, index: u64) -> Meta {
        Meta {
            index,
            known_leader: true,
            last_contact_ms: 0,
        }
    }

    async fn write(&self, cmd: KvCommand) -> Result<KvOutcome, Response> {
        if let Err(e) = cmd.validate() {
            let code = match e {
                crate::kv::KvLimitError::ValueTooLarge { .. } => ErrorCode::ValueTooLarge,
                crate::kv::KvLimitError::TxnTooLarge { .. } => ErrorCode::TxnTooLarge,
                crate::kv::KvLimitError::KeyTooLarge { .. } => ErrorCode::KeyTooLarge,
                _ => ErrorCode::Invalid,
            };
            return Err(error(code, e.to_string()));
        }
        match self.raft.client_write(Command(cmd)).await {
            Ok(resp) => match resp.data.0 {
                Some(KvOutcome::Rejected(why)) if why.contains("session") => {
                    Err(error(ErrorCode::InvalidSession, why))
                }
                Some(KvOutcome::Rejected(why)) => Err(error(ErrorCode::Invalid, why)),
                Some(o) => Ok(o),
                None => Err(error(
                    ErrorCode::Internal,
                    "write applied without an outcome",
                )),
            },
            Err(e) => Err(error(ErrorCode::NoLeader, e.to_string())),
        }
    }

    async fn read_barrier(&self, consistency: Consistency) -> Result<(), Response> {
        if consistency == Consistency::Consistent {
            self.raft
                .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex)
                .await
                .map_err(|e| error(ErrorCode::NoLeader, e.to_string()))?;
        }
        Ok(())
    }

    async fn handle(&self, req: Request) -> Response {
        if !req.datacenter.is_empty() && req.datacenter != "dc1" {
            return error(
                ErrorCode::NoPathToDatacenter,
                format!("No path to datacenter {:?}", req.datacenter),
            );
        }
        match req.op {
            Op::KvGet { key, opts } => {
                if let Err(r) = self.read_barrier(opts.consistency).await {
                    return r;
                }
                let deadline = Instant::now() + Duration::from_millis(opts.wait_ms).min(MAX_WAIT);
                let mut applied = self.sm.applied();
                loop {
                    let (e, index) = self.sm.with_kv(|kv| {
                        let (e, i) = kv.get(&key);
                        (e.map(entry), i)
                    });
                    if opts.index == 0 || index > opts.index || Instant::now() >= deadline {
                        return Response::Entries {
                            entries: e.into_iter().collect(),
                            meta: self.meta(index),
                        };
                    }
                    wait_applied(&mut applied, deadline).await;
                }
            }
            Op::KvList {
                prefix,
                keys_only,
                separator,
                opts,
            } => {
                if let Err(r) = self.read_barrier(opts.consistency).await {
                    return r;
                }
                let deadline = Instant::now() + Duration::from_millis(opts.wait_ms).min(MAX_WAIT);
                let mut applied = self.sm.applied();
                loop {
                    let resp = self.sm.with_kv(|kv| {
                        if keys_only {
                            let (keys, index) = kv.keys(&prefix, separator.as_deref());
                            (Response::Keys { keys, meta: self.meta(index) }, index)
                        } else {
                            let l = kv.list(&prefix);
                            let entries = l.entries.iter().map(entry).collect();
                            (Response::Entries { entries, meta: self.meta(l.index) }, l.index)
                        }
                    });
                    if opts.index == 0 || resp.1 > opts.index || Instant::now() >= deadline {
                        return resp.0;
                    }
                    wait_applied(&mut applied, deadline).await;
                }
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
                    (Some(session), _, _) => KvCommand::Acquire { key, value, flags, session, now_ms },
                    (None, Some(session), _) => KvCommand::Release { key, value, flags, session },
                    (None, None, Some(index)) => KvCommand::Cas { key, value, flags, index },
                    (None, None, None) => KvCommand::Set { key, value, flags },
                };
                match self.write(cmd).await {
                    Ok(KvOutcome::Applied(ok)) => Response::Bool(ok),
                    Ok(other) => error(ErrorCode::Internal, format!("unexpected outcome {other:?}")),
                    Err(r) => r,
                }
            }
            Op::KvDelete { key, recurse, cas } => {
                let cmd = match (recurse, cas) {
                    (true, _) => KvCommand::DeleteTree { prefix: key },
                    (false, Some(index)) => KvCommand::DeleteCas { key, index },
                    (false, None) => KvCommand::Delete { key },
                };
                match self.write(cmd).await {
                    Ok(KvOutcome::Applied(ok)) => Response::Bool(ok),
                    Ok(other) => error(ErrorCode::Internal, format!("unexpected outcome {other:?}")),
                    Err(r) => r,
                }
            }
            Op::Txn { ops } => match self.write(KvCommand::Txn { ops }).await {
                Ok(KvOutcome::Txn(Ok(results))) => Response::Txn {
                    results: results.iter().map(entry).collect(),
                    errors: Vec::new(),
                    index: self.sm.with_kv(|kv| kv.index()),
                },
                Ok(KvOutcome::Txn(Err(errors))) => Response::Txn {
                    results: Vec::new(),
                    errors: errors.into_iter().map(|e| (e.op_index as u32, e.what)).collect(),
                    index: self.sm.with_kv(|kv| kv.index()),
                },
                Ok(other) => error(ErrorCode::Internal, format!("unexpected outcome {other:?}")),
                Err(r) => r,
            },
            Op::StatusLeader => {
                let leader = self.raft.current_leader().await;
                Response::Leader(leader.map(|_| self.addr.clone()))
            }
            Op::StatusPeers => Response::Peers(vec![self.addr.clone()]),
            Op::RaftAddVoter { .. } | Op::RaftRemovePeer { .. } | Op::RaftTransferLeader { .. } => error(
                ErrorCode::Invalid,
                "this agent runs a one-server cluster; membership changes need the Raft network, which is not built yet",
            ),
        }
    }
}
