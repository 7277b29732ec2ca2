//! The agent in client mode: `cairn agent --data-dir DIR --retry-join ADDR` without
//! `--server`. It holds no state: it joins the LAN gossip pool as a client, finds the
//! servers there, and serves the binary RPC protocol on its own port for the
//! applications of its node, sending every request on to a server (which forwards to the
//! leader what only the leader may answer), except the agent API (its own services and
//! checks, `local.rs`), which it answers itself and keeps in the catalog by anti-entropy.
//!
//! Like a follower, it retries only what is safe: a request no server received (the
//! connection could not be made) and reads. A write whose server went away after it was
//! sent is answered `Unavailable` with "may or may not have been applied".

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cairn_net::rpc::message::{ErrorCode, Limits, Op, Request, Response};
use glommio::net::TcpListener;

use super::peer::Peers;
use super::server::{
    connection, error, executor, force_leave_response, forward_timeout, is_read, join_response,
    keyring_response, leave_response, members_response, probe_port, start_gossip, Handler,
    FORWARD_ATTEMPTS, MAX_CONNECTIONS,
};
use super::{AgentConfig, AgentError};
use crate::gossip::{GossipHandle, Role, Status};

/// io_uring memory for a client agent's executor: 0, a small pool that is not registered
/// with the rings (a change to the vendored glommio, third_party/README.md). A client
/// agent reads no files and passes few small messages, and Cairn does no fixed-buffer IO:
/// sockets use the pool only as an allocator for the buffer of a read the kernel
/// completes later, and glommio takes one from the heap when the pool cannot hold it.
/// Registering pins every page of the pool, so a registered pool is resident whether
/// used or not: the server-sized default (6 MiB under an 8 MiB memlock limit) was half
/// of a client agent's resident memory, and the 128 KiB it had since, 132 kB of its
/// 4.4 MB (README, "Gossip figures").
const CLIENT_IO_MEMORY: usize = 0;

/// How long a request waits for a server to appear in the pool.
const SERVER_WAIT: Duration = Duration::from_secs(5);

/// Runs a client agent until the process is stopped.
pub fn serve_client(
    cfg: AgentConfig,
    ready: impl FnOnce(&AgentConfig) + Send + 'static,
) -> Result<(), AgentError> {
    // The memlock limit is still checked, with Cairn's message: glommio refuses to start
    // under 512 KiB of it.
    crate::runtime::io_memory_per_executor(1)?;
    probe_port(cfg.rpc_addr())?;
    if let Some(http) = &cfg.http {
        crate::http::probe(http.addr)?;
    }
    executor(&cfg, CLIENT_IO_MEMORY, "cairn-client")?.run(async move { run(cfg, ready).await })
}

struct ClientAgent {
    gossip: GossipHandle,
    peers: Rc<Peers>,
    limits: Limits,
    /// Spreads requests over the servers.
    next: Cell<usize>,
    datacenter: String,
    /// This agent's own services and checks.
    local: Rc<super::local::LocalAgent>,
}

async fn run(cfg: AgentConfig, ready: impl FnOnce(&AgentConfig)) -> Result<(), AgentError> {
    let Some(g) = &cfg.gossip else {
        return Err(AgentError::Config(
            "a client agent finds the servers through gossip: --serf-lan-port -1 cannot be used without --server".into(),
        ));
    };
    std::fs::create_dir_all(&cfg.data_dir).map_err(|source| AgentError::Io {
        what: format!("creating {}", cfg.data_dir.display()),
        source,
    })?;
    let gossip = start_gossip(&cfg, g)?;
    let addr = cfg.rpc_addr();
    let listener = TcpListener::bind(addr).map_err(|e| AgentError::Io {
        what: format!("listening on {addr}"),
        source: std::io::Error::other(e.to_string()),
    })?;
    let local = Rc::new(super::local::LocalAgent::start(
        &cfg.node,
        &cfg.datacenter,
        &gossip.local_addr().ip().to_string(),
        &cfg.data_dir,
        &cfg.definitions,
        cfg.enable_script_checks,
        rand010::random(),
    )?);
    let agent = Rc::new(ClientAgent {
        local: local.clone(),
        gossip,
        peers: Peers::new(),
        limits: cfg.limits,
        next: Cell::new(0),
        datacenter: g.datacenter.clone(),
    });
    {
        let a = agent.clone();
        glommio::spawn_local(async move {
            use std::sync::atomic::Ordering;
            while !super::LEAVE.load(Ordering::SeqCst) {
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
            if let Err(e) = a.gossip.leave().await {
                eprintln!("cairn: leaving the gossip pool: {e}");
            }
            super::LEFT.store(true, Ordering::SeqCst);
        })
        .detach();
    }
    {
        let a = agent.clone();
        glommio::spawn_local(async move {
            let pool = a.clone();
            super::local::sync_loop(a, local, move || pool.gossip.num_live()).await
        })
        .detach();
    }
    if let Some(http) = &cfg.http {
        crate::http::start(agent.clone(), http, crate::http::Ctx::of(&cfg))?;
    }
    if let Some(dns) = &cfg.dns {
        super::dns::start(agent.clone(), &cfg.datacenter, dns)?;
    }
    ready(&cfg);
    let open = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if open.get() >= MAX_CONNECTIONS {
                    eprintln!("cairn: {MAX_CONNECTIONS} connections open; refusing another");
                    continue;
                }
                open.set(open.get() + 1);
                let (a, open) = (agent.clone(), open.clone());
                glommio::spawn_local(async move {
                    connection(a, stream).await;
                    open.set(open.get() - 1);
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

impl ClientAgent {
    /// The RPC addresses of the alive servers of this datacenter.
    fn servers(&self) -> Vec<String> {
        self.gossip
            .members()
            .into_iter()
            .filter(|m| {
                m.status == Status::Alive
                    && m.meta.role == Role::Server
                    && m.meta.datacenter == self.datacenter
            })
            .map(|m| std::net::SocketAddr::new(m.addr.ip(), m.meta.rpc_port).to_string())
            .collect()
    }

    async fn wait_servers(&self) -> Vec<String> {
        let deadline = Instant::now() + SERVER_WAIT;
        loop {
            let s = self.servers();
            if !s.is_empty() || Instant::now() >= deadline {
                return s;
            }
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn forward(&self, req: Request) -> Response {
        let timeout = forward_timeout(&req.op);
        let mut last = String::new();
        for attempt in 0..FORWARD_ATTEMPTS {
            if attempt > 0 {
                glommio::timer::sleep(Duration::from_millis(25 << attempt.min(4))).await;
            }
            let servers = self.wait_servers().await;
            if servers.is_empty() {
                return error(
                    ErrorCode::NoLeader,
                    "no server in the gossip pool (check --retry-join and --encrypt)",
                );
            }
            let i = self.next.get() % servers.len();
            self.next.set(self.next.get().wrapping_add(1));
            match self.peers.call(&servers[i], &req, timeout).await {
                Ok(resp) => return resp,
                Err(e) if e.not_sent() || is_read(&req.op) => last = e.to_string(),
                Err(e) => {
                    return error(
                        ErrorCode::Unavailable,
                        format!(
                            "lost the server while it handled the write ({e}); the write \
                             may or may not have been applied"
                        ),
                    )
                }
            }
        }
        error(
            ErrorCode::Unavailable,
            format!("no server answered after {FORWARD_ATTEMPTS} attempts: {last}"),
        )
    }
}

impl Handler for ClientAgent {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    async fn answer(self: Rc<Self>, req: Request) -> Response {
        if let Some(r) = self.local.answer(&req.op) {
            return r;
        }
        match req.op {
            Op::Members => members_response(Some(&self.gossip)),
            Op::ForceLeave { node } => force_leave_response(Some(&self.gossip), &node).await,
            Op::Join { addresses } => join_response(Some(&self.gossip), &addresses).await,
            Op::Leave => leave_response(),
            Op::Keyring { action, key } => {
                keyring_response(Some(&self.gossip), action, key.as_deref())
            }
            Op::Internal { .. } => error(
                ErrorCode::Invalid,
                "this is a client agent: server-to-server messages go to servers",
            ),
            _ => self.forward(req).await,
        }
    }
}
