//! The agent's own node: its services and health checks, and anti-entropy.
//!
//! Every agent (client or server) is the source of truth for its node, as in Consul.
//! Services and checks come from `--config-dir` (reloaded at every start) and from the
//! agent API (`Op::AgentRegister` ... ; kept in `DATA_DIR/local/` as the JSON definitions
//! they were registered with, so they survive a restart). Checks run on the health
//! module's [`CheckRunner`] threads. The sync task pushes the node's state to the servers
//! through the agent's own request path: at once after every local change or check status
//! change, and in full every [`antientropy::sync_interval`] (which grows with the pool),
//! each time reading the catalog's view of the node and writing only the difference
//! ([`antientropy::plan`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use cairn_net::rpc::message::{AgentKind, ErrorCode, Op, ReadOpts, Request, Response, RpcError};
use tokio::sync::Notify;

use super::server::Handler;
use crate::catalog::antientropy::{self, LocalNode};
use crate::catalog::{CatalogQuery, CatalogResult, Check, Status};
use crate::health::definition::{self, CheckDefinition, Definitions, ServiceDefinition};
use crate::health::runner::{CheckRunner, RunnerOptions};
use crate::health::schedule::CheckEvent;

/// Consul's base full-sync period (scaled up with the cluster's size).
const SYNC_BASE: Duration = Duration::from_secs(60);
/// After a failed sync (no leader, servers unreachable), try again this soon.
const SYNC_RETRY: Duration = Duration::from_secs(2);
/// Node maintenance check id, as Consul's.
const NODE_MAINTENANCE: &str = "_node_maintenance";

/// Where a local service or check came from: config files are reloaded at every start,
/// API registrations are kept in the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Config,
    Api,
}

/// What the agent knows about its node.
pub(super) struct LocalAgent {
    node: String,
    datacenter: String,
    /// The node's address in the catalog: the gossip address's IP (the leader's
    /// reconciliation registers the same, so the two never fight over it).
    address: String,
    services: RefCell<BTreeMap<String, (ServiceDefinition, Source)>>,
    /// Standalone checks (service checks live in their service's definition).
    checks: RefCell<BTreeMap<String, (CheckDefinition, Source)>>,
    /// Maintenance-mode checks (always critical), by check id.
    maintenance: RefCell<BTreeMap<String, Check>>,
    runner: CheckRunner,
    events: flume::Receiver<CheckEvent>,
    /// `DATA_DIR/local`: `services/<id>.json` and `checks/<id>.json`.
    dir: PathBuf,
    /// Wakes the sync task.
    changed: Notify,
}

fn error(code: ErrorCode, message: impl Into<String>) -> RpcError {
    RpcError {
        code,
        message: message.into(),
        leader: None,
    }
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> super::AgentError {
    move |source| super::AgentError::Io { what, source }
}

/// A file name for an id (ids may hold any characters).
fn file_name(id: &str) -> String {
    let mut s = String::with_capacity(id.len() * 2 + 5);
    for b in id.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s.push_str(".json");
    s
}

/// A maintenance mode as kept in `DATA_DIR/local/maintenance/` (empty service id: the
/// node's).
#[derive(serde::Serialize, serde::Deserialize)]
struct KeptMaintenance {
    service_id: String,
    reason: String,
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

impl LocalAgent {
    /// Takes the configuration files' definitions and the API registrations kept in
    /// `data_dir`, and starts their checks.
    pub(super) fn start(
        node: &str,
        datacenter: &str,
        address: &str,
        data_dir: &Path,
        config: &Definitions,
        enable_script_checks: bool,
        seed: u64,
    ) -> Result<LocalAgent, super::AgentError> {
        let dir = data_dir.join("local");
        for sub in ["services", "checks", "maintenance"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(io_error(format!("creating {}", dir.join(sub).display())))?;
        }
        let config = config.clone();
        let mut services = BTreeMap::new();
        let mut checks = BTreeMap::new();
        for s in config.services {
            services.insert(s.id.clone(), (s, Source::Config));
        }
        for c in config.checks {
            checks.insert(c.id.clone(), (c, Source::Config));
        }
        // API registrations from earlier runs; a damaged file is reported and skipped
        // (the application registers again), never fatal.
        for (sub, kind) in [
            ("services", AgentKind::Service),
            ("checks", AgentKind::Check),
        ] {
            let entries = std::fs::read_dir(dir.join(sub))
                .map_err(io_error(format!("reading {}", dir.join(sub).display())))?;
            for e in entries.flatten() {
                let path = e.path();
                if path.extension().is_none_or(|x| x != "json") {
                    continue;
                }
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                let source = path.display().to_string();
                let parsed = match kind {
                    AgentKind::Service => definition::parse_service(&source, &bytes).map(|s| {
                        services.entry(s.id.clone()).or_insert((s, Source::Api));
                    }),
                    AgentKind::Check => definition::parse_check(&source, &bytes).map(|c| {
                        checks.entry(c.id.clone()).or_insert((c, Source::Api));
                    }),
                };
                if let Err(e) = parsed {
                    eprintln!("cairn: skipping a saved registration: {e}");
                }
            }
        }
        let defs: Vec<CheckDefinition> = services
            .values()
            .flat_map(|(s, _): &(ServiceDefinition, Source)| s.checks.iter().cloned())
            .chain(checks.values().map(|(c, _)| c.clone()))
            .collect();
        let (runner, events) = CheckRunner::start(
            defs,
            RunnerOptions {
                enable_script_checks,
                state_dir: Some(dir.clone()),
                seed,
                ..RunnerOptions::default()
            },
        )
        .map_err(|e| super::AgentError::Config(e.to_string()))?;
        let agent = LocalAgent {
            node: node.to_string(),
            datacenter: datacenter.to_string(),
            address: address.to_string(),
            services: RefCell::new(services),
            checks: RefCell::new(checks),
            maintenance: RefCell::new(BTreeMap::new()),
            runner,
            events,
            dir,
            changed: Notify::new(),
        };
        agent.restore_maintenance();
        Ok(agent)
    }

    /// Maintenance modes kept by earlier runs (as Consul keeps them): the node's, and
    /// those of services still registered; a damaged file is reported and skipped.
    fn restore_maintenance(&self) {
        let dir = self.dir.join("maintenance");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let kept = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<KeptMaintenance>(&b).ok());
            let Some(kept) = kept else {
                eprintln!(
                    "cairn: skipping a damaged maintenance file {}",
                    path.display()
                );
                continue;
            };
            let service = if kept.service_id.is_empty() {
                None
            } else {
                Some(kept.service_id.as_str())
            };
            if self.set_maintenance(service, true, &kept.reason).is_err() {
                // Its service is gone.
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// The node as this agent knows it, in the catalog's terms.
    pub(super) fn local_node(&self) -> LocalNode {
        let mut l = LocalNode {
            node: self.node.clone(),
            address: self.address.clone(),
            datacenter: self.datacenter.clone(),
            ..LocalNode::default()
        };
        for (id, (s, _)) in self.services.borrow().iter() {
            l.services.insert(id.clone(), s.to_catalog());
        }
        for st in self.runner.statuses() {
            l.checks.insert(st.id.clone(), st.to_catalog(&self.node));
        }
        for (id, c) in self.maintenance.borrow().iter() {
            l.checks.insert(id.clone(), c.clone());
        }
        l
    }

    /// Answers the agent API requests; `None` for any other request.
    pub(super) fn answer(&self, op: &Op) -> Option<Response> {
        let r = match op {
            Op::AgentRegister { kind, definition } => self.register(*kind, definition),
            Op::AgentDeregister { kind, id } => self.deregister(*kind, id),
            Op::AgentCheckUpdate { id, status, output } => self
                .runner
                .ttl_update(id, *status, output)
                .map(|()| Response::Bool(true))
                .map_err(|e| match e {
                    crate::health::HealthError::UnknownCheck { .. } => {
                        error(ErrorCode::NotFound, e.to_string())
                    }
                    e => error(ErrorCode::Invalid, e.to_string()),
                }),
            Op::AgentMaintenance {
                service_id,
                enable,
                reason,
            } => self.set_maintenance(service_id.as_deref(), *enable, reason),
            Op::AgentLocal { kind } => {
                let l = self.local_node();
                let meta = cairn_net::rpc::message::Meta::default();
                Ok(match kind {
                    AgentKind::Service => Response::Catalog {
                        result: CatalogResult::NodeServices(
                            Some(crate::catalog::Node {
                                name: l.node.clone(),
                                address: l.address.clone(),
                                datacenter: l.datacenter.clone(),
                                ..crate::catalog::Node::default()
                            }),
                            l.services.into_values().collect(),
                        ),
                        meta,
                    },
                    AgentKind::Check => Response::Catalog {
                        result: CatalogResult::Checks(l.checks.into_values().collect()),
                        meta,
                    },
                })
            }
            _ => return None,
        };
        Some(r.unwrap_or_else(Response::Error))
    }

    fn register(&self, kind: AgentKind, json: &Bytes) -> Result<Response, RpcError> {
        let invalid = |e: definition::DefinitionError| error(ErrorCode::Invalid, e.to_string());
        match kind {
            AgentKind::Service => {
                let s = definition::parse_service("request", json).map_err(invalid)?;
                // Replacing a service replaces its checks.
                if let Some((old, _)) = self.services.borrow().get(&s.id) {
                    for c in &old.checks {
                        self.runner.remove(&c.id);
                    }
                }
                for c in &s.checks {
                    self.runner
                        .add(c.clone())
                        .map_err(|e| error(ErrorCode::Invalid, e.to_string()))?;
                }
                self.persist("services", &s.id, Some(json));
                self.services
                    .borrow_mut()
                    .insert(s.id.clone(), (s, Source::Api));
            }
            AgentKind::Check => {
                let c = definition::parse_check("request", json).map_err(invalid)?;
                if !c.service_id.is_empty() && !self.services.borrow().contains_key(&c.service_id) {
                    return Err(error(
                        ErrorCode::NotFound,
                        format!("ServiceID \"{}\" does not exist", c.service_id),
                    ));
                }
                self.runner
                    .add(c.clone())
                    .map_err(|e| error(ErrorCode::Invalid, e.to_string()))?;
                self.persist("checks", &c.id, Some(json));
                self.checks
                    .borrow_mut()
                    .insert(c.id.clone(), (c, Source::Api));
            }
        }
        self.changed.notify_one();
        Ok(Response::Bool(true))
    }

    fn deregister(&self, kind: AgentKind, id: &str) -> Result<Response, RpcError> {
        match kind {
            AgentKind::Service => {
                let Some((s, _)) = self.services.borrow_mut().remove(id) else {
                    return Err(error(
                        ErrorCode::NotFound,
                        format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."),
                    ));
                };
                for c in &s.checks {
                    self.runner.remove(&c.id);
                }
                // Standalone checks registered for this service go with it.
                let owned: Vec<String> = self
                    .checks
                    .borrow()
                    .iter()
                    .filter(|(_, (c, _))| c.service_id == id)
                    .map(|(k, _)| k.clone())
                    .collect();
                for cid in owned {
                    self.checks.borrow_mut().remove(&cid);
                    self.runner.remove(&cid);
                    self.persist("checks", &cid, None);
                }
                let maintenance = format!("_service_maintenance:{id}");
                self.maintenance.borrow_mut().remove(&maintenance);
                self.persist("maintenance", &maintenance, None);
                self.persist("services", id, None);
            }
            AgentKind::Check => {
                if self.checks.borrow_mut().remove(id).is_none() {
                    return Err(error(
                        ErrorCode::NotFound,
                        format!("Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."),
                    ));
                }
                self.runner.remove(id);
                self.persist("checks", id, None);
            }
        }
        self.changed.notify_one();
        Ok(Response::Bool(true))
    }

    fn set_maintenance(
        &self,
        service_id: Option<&str>,
        enable: bool,
        reason: &str,
    ) -> Result<Response, RpcError> {
        let (id, service) = match service_id {
            None => (NODE_MAINTENANCE.to_string(), None),
            Some(sid) => {
                let services = self.services.borrow();
                let Some((s, _)) = services.get(sid) else {
                    return Err(error(
                        ErrorCode::NotFound,
                        format!("No service registered with ID {sid:?}"),
                    ));
                };
                (
                    format!("_service_maintenance:{sid}"),
                    Some((s.id.clone(), s.name.clone())),
                )
            }
        };
        if enable {
            let what = if service.is_some() { "service" } else { "node" };
            let output = if reason.is_empty() {
                format!("Maintenance mode is enabled for this {what}, but no reason was provided. This is a default message.")
            } else {
                reason.to_string()
            };
            let (service_id, service_name) = service.unwrap_or_default();
            let kept = KeptMaintenance {
                service_id: service_id.clone(),
                reason: reason.to_string(),
            };
            if let Ok(json) = serde_json::to_vec(&kept) {
                self.persist("maintenance", &id, Some(&Bytes::from(json)));
            }
            self.maintenance.borrow_mut().insert(
                id.clone(),
                Check {
                    id,
                    name: format!(
                        "{} Maintenance Mode",
                        if service_id.is_empty() {
                            "Node"
                        } else {
                            "Service"
                        }
                    ),
                    node: self.node.clone(),
                    status: Status::Critical,
                    output,
                    service_id,
                    service_name,
                    kind: "maintenance".into(),
                    ..Check::default()
                },
            );
        } else {
            self.maintenance.borrow_mut().remove(&id);
            self.persist("maintenance", &id, None);
        }
        self.changed.notify_one();
        Ok(Response::Bool(true))
    }

    /// Keeps (or with `None`, forgets) an API registration's definition.
    fn persist(&self, sub: &str, id: &str, json: Option<&Bytes>) {
        let path = self.dir.join(sub).join(file_name(id));
        let r = match json {
            Some(j) => write_atomic(&path, j),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
        };
        if let Err(e) = r {
            eprintln!(
                "cairn: keeping the registration of {id:?} in {}: {e} (it will not survive a restart)",
                path.display()
            );
        }
    }
}

/// Keeps the catalog's view of this node in line with the agent's, for the life of the
/// agent. `handler` is the agent's own request path (a server answers or forwards to the
/// leader; a client agent sends to a server); `pool_size` tells how many agents there are.
pub(super) async fn sync_loop<H: Handler>(
    handler: Rc<H>,
    local: Rc<LocalAgent>,
    pool_size: impl Fn() -> usize,
) {
    loop {
        // Every wake-up compares the whole node (one read of its services and one of its
        // checks), so a change and a full sync are the same operation.
        let wait = if sync_once(&handler, &local).await {
            let period = antientropy::sync_interval(SYNC_BASE, pool_size());
            // Spread the full syncs of many agents over the period.
            period - period.mul_f64(rand010::random::<f64>() * 0.25)
        } else {
            SYNC_RETRY
        };
        // Wake at the next full sync, on a local change, or on a check event.
        let timer = glommio::timer::sleep(wait);
        let changed = local.changed.notified();
        let event = async {
            match local.events.recv_async().await {
                Ok(CheckEvent::DeregisterService { service_id, .. }) => {
                    let _ = local.deregister(AgentKind::Service, &service_id);
                }
                Ok(_) => {}
                // The runner is gone: only the other wake-ups remain.
                Err(_) => std::future::pending::<()>().await,
            }
        };
        futures_lite::future::or(futures_lite::future::or(timer, changed), event).await;
    }
}

/// One sync: read the catalog's view of the node, write the difference. False if it
/// could not be completed.
async fn sync_once<H: Handler>(handler: &Rc<H>, local: &LocalAgent) -> bool {
    let ask = |op: Op| {
        let answer = handler.clone().answer(Request {
            datacenter: String::new(),
            token: String::new(),
            op,
        });
        async move { answer.await.into_owned() }
    };
    let read = |query: CatalogQuery| Op::CatalogRead {
        query,
        opts: ReadOpts::default(),
    };
    let node = local.node.clone();
    let (remote_node, services) =
        match ask(read(CatalogQuery::NodeServices { node: node.clone() })).await {
            Response::Catalog {
                result: CatalogResult::NodeServices(n, s),
                ..
            } => (n, s),
            _ => return false,
        };
    let checks = match ask(read(CatalogQuery::NodeChecks { node })).await {
        Response::Catalog {
            result: CatalogResult::Checks(c),
            ..
        } => c,
        _ => return false,
    };
    let l = local.local_node();
    for cmd in antientropy::plan(&l, remote_node.as_ref(), &services, &checks) {
        let op = match cmd {
            crate::catalog::CatalogCommand::Register(r) => Op::CatalogRegister(r),
            crate::catalog::CatalogCommand::Deregister {
                node,
                service_id,
                check_id,
            } => Op::CatalogDeregister {
                node,
                service_id,
                check_id,
            },
        };
        match ask(op).await {
            Response::Bool(true) => {}
            Response::Error(e) => {
                eprintln!("cairn: anti-entropy: {}", e.message);
                return false;
            }
            other => {
                eprintln!("cairn: anti-entropy: unexpected answer {other:?}");
                return false;
            }
        }
    }
    true
}
