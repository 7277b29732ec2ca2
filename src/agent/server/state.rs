//! Catalog and session requests on a server, and the leader's duties that keep them
//! true: reconciling the gossip pool into the catalog (`serfHealth`), expiring sessions
//! whose TTL ran out, and invalidating sessions whose node failed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_net::rpc::catalog::{SessionBehavior, SessionInfo, SessionQuery, SharedResult};
use cairn_net::rpc::message::{ErrorCode, Op, ReadOpts, Response};

use super::answers::Stamp;
use super::{error, wait_applied, Local, Server};
use crate::catalog::reconcile::{self, MemberState, PoolMember};
use crate::catalog::{Catalog, CatalogCommand, CatalogQuery};
use crate::kv::{Behavior, KvCommand, KvOutcome, Session};
use crate::raft::types::{Command, Outcome};

/// Consul's session TTL bounds (0 = no TTL).
const MIN_SESSION_TTL: Duration = Duration::from_secs(10);
const MAX_SESSION_TTL: Duration = Duration::from_secs(86_400);
/// Consul's largest lock-delay.
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// A session's timer runs for twice its TTL, as Consul's (the TTL is a lower bound: a
/// session is never invalidated before it, and usually not long after).
const SESSION_TTL_MULTIPLIER: u32 = 2;
/// How often the leader looks at the pool and at session timers when nothing happened.
const LEADER_TICK: Duration = Duration::from_secs(1);

/// The leader's session timers: session id → when it expires. Not replicated: a new
/// leader starts every timer afresh (as Consul's), so a session is never cut short by a
/// leadership change, only lengthened.
#[derive(Default)]
pub(super) struct SessionTimers {
    deadlines: HashMap<String, Instant>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn session_info(s: &Session) -> SessionInfo {
    SessionInfo {
        id: s.id.clone(),
        name: s.name.clone(),
        node: s.node.clone(),
        behavior: match s.behavior {
            Behavior::Release => SessionBehavior::Release,
            Behavior::Delete => SessionBehavior::Delete,
        },
        ttl_ms: s.ttl_ms,
        lock_delay_ms: s.lock_delay_ms,
        node_checks: s.node_checks.clone(),
        service_checks: s.service_checks.clone(),
        create_index: s.create_index,
    }
}

/// Every check a session is bound to.
fn bound_checks(s: &Session) -> Vec<String> {
    s.node_checks
        .iter()
        .chain(&s.service_checks)
        .cloned()
        .collect()
}

/// A random session id in UUID form, as Consul's.
fn new_session_id() -> String {
    let a: u128 = rand010::random();
    let h = format!("{a:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Server {
    /// Proposes a catalog write and waits for it to be applied.
    async fn write_catalog(&self, cmd: CatalogCommand) -> Result<(), Local> {
        match self.propose(Command::Catalog(cmd)).await? {
            Outcome::Catalog(Ok(())) => Ok(()),
            Outcome::Catalog(Err(e)) => Err(Local::Done(error(ErrorCode::Invalid, e.to_string()))),
            other => Err(Local::Done(error(
                ErrorCode::Internal,
                format!("unexpected outcome {other:?}"),
            ))),
        }
    }

    /// Answers a read that may block: `look` gives the result and its index; it is
    /// called again after every applied batch until the index passes `opts.index` or the
    /// wait runs out.
    async fn blocking<T>(&self, opts: ReadOpts, look: impl Fn(&Server) -> (T, u64)) -> (T, u64) {
        self.blocking_on(opts, || self.sm.applied(), look).await
    }

    /// [`Server::blocking`], woken by `changes` rather than by every applied entry.
    async fn blocking_on<T>(
        &self,
        opts: ReadOpts,
        changes: impl FnOnce() -> tokio::sync::watch::Receiver<u64>,
        look: impl Fn(&Server) -> (T, u64),
    ) -> (T, u64) {
        let deadline = Self::deadline(opts.wait_ms);
        let mut applied = (opts.index > 0).then(changes);
        loop {
            let (result, index) = look(self);
            match applied.as_mut() {
                Some(a) if index <= opts.index && Instant::now() < deadline => {
                    wait_applied(a, deadline).await
                }
                _ => return (result, index),
            }
        }
    }

    /// Catalog and session requests; `None` for any other request.
    pub(super) async fn state_op(&self, op: &Op) -> Option<Result<Response, Local>> {
        Some(match op {
            Op::CatalogRegister(reg) => {
                let mut reg = (**reg).clone();
                if reg.datacenter.is_empty() {
                    reg.datacenter = self.datacenter.clone();
                }
                self.write_catalog(CatalogCommand::Register(Box::new(reg)))
                    .await
                    .map(|()| Response::Bool(true))
            }
            Op::CatalogDeregister {
                node,
                service_id,
                check_id,
            } => {
                if node.is_empty() {
                    return Some(Ok(error(ErrorCode::Invalid, "Missing node name")));
                }
                self.write_catalog(CatalogCommand::Deregister {
                    node: node.clone(),
                    service_id: service_id.clone(),
                    check_id: check_id.clone(),
                })
                .await
                .map(|()| Response::Bool(true))
            }
            Op::CatalogRead { query, opts } => self.catalog_read(query, *opts).await,
            Op::SessionCreate(info) => self.session_create(info).await,
            Op::SessionDestroy { id } => self
                .write(KvCommand::SessionDestroy {
                    id: id.clone(),
                    now_ms: now_ms(),
                })
                .await
                .map(|_| {
                    self.session_timers.borrow_mut().deadlines.remove(id);
                    Response::Bool(true)
                }),
            Op::SessionRenew { id } => self.session_renew(id).await,
            Op::SessionRead { query, opts } => self.session_read(query, *opts).await,
            _ => return None,
        })
    }

    async fn catalog_read(&self, query: &CatalogQuery, opts: ReadOpts) -> Result<Response, Local> {
        self.read_barrier(opts.consistency).await?;
        // A parked read is woken only by changes to what it reads: the watchers of a
        // service by that service's changes, other catalog reads by any catalog change;
        // KV writes never wake them. Woken, it compares the cheap index first and takes
        // the (shared) answer only when the index moved (measured: 1,000 parked watchers
        // of a 100-instance service, each building its answer on every entry, cut a
        // 3-server cluster's KV writes from 5,300/s to 50/s; README "Catalog figures").
        let changes = || match query {
            CatalogQuery::Service { name, .. } => self.sm.service_applied(name),
            _ => self.sm.catalog_applied(),
        };
        let (answer, index) = self
            .blocking_on(opts, changes, |s| {
                s.sm.with_catalog(|c| match c.query_index(query) {
                    Some(i) if i <= opts.index => (None, i),
                    _ => {
                        let (a, i) = s.shared_answer(c, query);
                        (Some(a), i)
                    }
                })
            })
            .await;
        // Answered at the deadline without a change: take the answer now.
        let (result, index) = match answer {
            Some(a) => (a, index),
            None => self.sm.with_catalog(|c| self.shared_answer(c, query)),
        };
        Ok(Response::SharedCatalog {
            result,
            meta: self.meta(index),
        })
    }

    /// The answer to `query` on the catalog as applied here, and its index: the one
    /// already built for this catalog state if there is one (every watcher a change
    /// wakes gets the same answer, built and encoded once), else built now and kept.
    fn shared_answer(&self, c: &Catalog, query: &CatalogQuery) -> (Arc<SharedResult>, u64) {
        let stamp = Stamp(
            self.sm.catalog_restores(),
            c.query_index(query).unwrap_or_else(|| c.index()),
        );
        if let Some(hit) = self.answers.borrow_mut().get(query, stamp) {
            return hit;
        }
        let (result, index) = c.query(query);
        let answer = Arc::new(SharedResult::new(result));
        self.answers
            .borrow_mut()
            .insert(query.clone(), stamp, index, answer.clone());
        (answer, index)
    }

    async fn session_create(&self, info: &SessionInfo) -> Result<Response, Local> {
        if !self.is_leader() {
            return Err(Local::NotLeader(self.leader()));
        }
        if info.node.is_empty() {
            return Ok(error(ErrorCode::Invalid, "Missing node name"));
        }
        let ttl = Duration::from_millis(info.ttl_ms);
        if info.ttl_ms != 0 && !(MIN_SESSION_TTL..=MAX_SESSION_TTL).contains(&ttl) {
            return Ok(error(
                ErrorCode::Invalid,
                format!(
                    "Invalid Session TTL '{}s', must be between [10s=24h0m0s]",
                    ttl.as_secs()
                ),
            ));
        }
        if Duration::from_millis(info.lock_delay_ms) > MAX_LOCK_DELAY {
            return Ok(error(
                ErrorCode::Invalid,
                "lock delay may be at most 60s".to_string(),
            ));
        }
        // The checks are taken as given: an empty list binds none (Consul's HTTP API, the
        // CLI and `cairn lock` fill in `serfHealth` when the caller names none).
        let node_checks = info.node_checks.clone();
        let mut all = node_checks.clone();
        all.extend(info.service_checks.iter().cloned());
        // Consul refuses a session for a node it does not know, or whose bound checks are
        // missing or critical.
        self.read_barrier(cairn_net::rpc::message::Consistency::Default)
            .await?;
        let refused = self
            .sm
            .with_catalog(|c| reconcile::session_failure(c, &info.node, &all));
        if let Some(why) = refused {
            return Ok(error(ErrorCode::Invalid, why));
        }
        let session = Session {
            id: new_session_id(),
            name: info.name.clone(),
            node: info.node.clone(),
            behavior: match info.behavior {
                SessionBehavior::Release => Behavior::Release,
                SessionBehavior::Delete => Behavior::Delete,
            },
            ttl_ms: info.ttl_ms,
            lock_delay_ms: info.lock_delay_ms,
            create_index: 0,
            node_checks,
            service_checks: info.service_checks.clone(),
        };
        let id = session.id.clone();
        match self.write(KvCommand::SessionCreate { session }).await? {
            KvOutcome::Applied(true) => {}
            other => {
                return Ok(error(
                    ErrorCode::Internal,
                    format!("session create: unexpected outcome {other:?}"),
                ))
            }
        }
        if info.ttl_ms > 0 {
            self.session_timers.borrow_mut().deadlines.insert(
                id.clone(),
                Instant::now() + Duration::from_millis(info.ttl_ms) * SESSION_TTL_MULTIPLIER,
            );
        }
        let created = self
            .sm
            .shards()
            .with_local(|kv| kv.session(&id).map(session_info));
        Ok(Response::Sessions {
            sessions: created.into_iter().collect(),
            meta: self.meta(self.sm.applied_index()),
        })
    }

    async fn session_renew(&self, id: &str) -> Result<Response, Local> {
        if !self.is_leader() {
            return Err(Local::NotLeader(self.leader()));
        }
        self.read_barrier(cairn_net::rpc::message::Consistency::Default)
            .await?;
        let Some(s) = self
            .sm
            .shards()
            .with_local(|kv| kv.session(id).map(session_info))
        else {
            return Ok(error(
                ErrorCode::NotFound,
                format!("Session id '{id}' not found"),
            ));
        };
        if s.ttl_ms > 0 {
            self.session_timers.borrow_mut().deadlines.insert(
                id.to_string(),
                Instant::now() + Duration::from_millis(s.ttl_ms) * SESSION_TTL_MULTIPLIER,
            );
        }
        Ok(Response::Sessions {
            sessions: vec![s],
            meta: self.meta(self.sm.applied_index()),
        })
    }

    async fn session_read(&self, query: &SessionQuery, opts: ReadOpts) -> Result<Response, Local> {
        self.read_barrier(opts.consistency).await?;
        let (sessions, index) = self
            .blocking(opts, |s| {
                let index = s.sm.applied_index().max(1);
                s.sm.shards().with_local(|shard| {
                    let sessions: Vec<SessionInfo> = match query {
                        SessionQuery::Info { id } => {
                            shard.session(id).map(session_info).into_iter().collect()
                        }
                        SessionQuery::Node { node } => shard
                            .sessions()
                            .filter(|x| &x.node == node)
                            .map(session_info)
                            .collect(),
                        SessionQuery::List => shard.sessions().map(session_info).collect(),
                    };
                    (sessions, index)
                })
            })
            .await;
        Ok(Response::Sessions {
            sessions,
            meta: self.meta(index),
        })
    }

    /// The leader's duties, run for the life of the server: while this server leads, it
    /// reconciles the gossip pool into the catalog and enforces session TTLs and node
    /// failures, on every membership event and at least every [`LEADER_TICK`].
    pub(super) async fn leader_loop(&self) {
        let mut events = self.gossip.as_ref().map(|g| g.subscribe());
        let mut was_leader = false;
        loop {
            let tick = glommio::timer::sleep(LEADER_TICK);
            match events.as_mut() {
                Some(rx) => {
                    futures_lite::future::or(
                        async {
                            // A lagged receiver just means "something changed".
                            let _ = rx.recv().await;
                        },
                        tick,
                    )
                    .await
                }
                None => tick.await,
            }
            let leader = self.is_leader();
            if !leader {
                if was_leader {
                    self.session_timers.borrow_mut().deadlines.clear();
                }
                was_leader = false;
                continue;
            }
            if !was_leader {
                // Applied state must include everything the previous leader committed
                // before it is compared with the pool.
                if self
                    .read_barrier(cairn_net::rpc::message::Consistency::Consistent)
                    .await
                    .is_err()
                {
                    continue;
                }
                was_leader = true;
            }
            self.reconcile_pool().await;
            self.enforce_sessions().await;
        }
    }

    /// This datacenter's LAN pool as the leader sees it (itself alone when gossip is off).
    fn pool(&self) -> Vec<PoolMember> {
        use cairn_net::gossip::Status as G;
        match &self.gossip {
            Some(g) => g
                .members()
                .into_iter()
                .map(|m| PoolMember {
                    name: m.name,
                    address: m.addr.ip().to_string(),
                    datacenter: m.meta.datacenter,
                    state: match m.status {
                        G::Alive | G::Suspect => MemberState::Alive,
                        G::Dead => MemberState::Failed,
                        G::Left => MemberState::Left,
                    },
                })
                .collect(),
            None => vec![PoolMember {
                name: self.node.clone(),
                address: self.bind_ip.clone(),
                datacenter: self.datacenter.clone(),
                state: MemberState::Alive,
            }],
        }
    }

    async fn reconcile_pool(&self) {
        let pool = self.pool();
        let mut cmds = self
            .sm
            .with_catalog(|c| reconcile::reconcile(&pool, c, &self.datacenter));
        if self.gossip.is_none() {
            // Without gossip the "pool" is this server alone: it says nothing about the
            // other nodes, so nothing is deregistered for being absent from it.
            cmds.retain(|c| !matches!(c, CatalogCommand::Deregister { .. }));
        }
        for cmd in cmds {
            if let Err(Local::Done(Response::Error(e))) = self.write_catalog(cmd).await {
                eprintln!(
                    "cairn: reconciling the gossip pool into the catalog: {}",
                    e.message
                );
                return;
            }
        }
    }

    async fn enforce_sessions(&self) {
        let now = Instant::now();
        let doomed: Vec<String> = self.sm.shards().with_local(|shard| {
            let mut timers = self.session_timers.borrow_mut();
            // Start a timer for every TTL session this leader has not seen yet.
            for s in shard.sessions().filter(|s| s.ttl_ms > 0) {
                timers.deadlines.entry(s.id.clone()).or_insert_with(|| {
                    now + Duration::from_millis(s.ttl_ms) * SESSION_TTL_MULTIPLIER
                });
            }
            timers.deadlines.retain(|id, _| shard.session(id).is_some());
            self.sm.with_catalog(|c| {
                shard
                    .sessions()
                    .filter(|s| {
                        timers.deadlines.get(&s.id).is_some_and(|d| *d <= now)
                            || reconcile::session_failure(c, &s.node, &bound_checks(s)).is_some()
                    })
                    .map(|s| s.id.clone())
                    .collect()
            })
        });
        for id in doomed {
            let r = self
                .write(KvCommand::SessionDestroy {
                    id: id.clone(),
                    now_ms: now_ms(),
                })
                .await;
            self.session_timers.borrow_mut().deadlines.remove(&id);
            if r.is_err() {
                return;
            }
        }
    }
}
