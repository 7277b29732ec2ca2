//! The service catalog's state machine, with Consul's semantics: nodes, their services and
//! health checks; registration and deregistration; the reads behind Consul's catalog and
//! health endpoints; and the indexes blocking queries wait on.
//!
//! Pure code: no IO, no clock. Decision: unlike the KV store (sharded by key), the catalog
//! is *replicated* on every core — each core applies every catalog write in the order the
//! sequencer sends them — because catalog reads (DNS, health queries) are hot and span
//! every node of a service, while catalog writes (registrations, check status changes) are
//! comparatively rare. A read is then answered by the core that took the request.

use std::collections::{BTreeMap, BTreeSet};

pub mod antientropy;
mod codec;
pub mod reconcile;
pub use codec::{CatalogCommand, DecodeError};

pub use cairn_net::rpc::catalog::{
    CatalogQuery, CatalogResult, Check, Instance, Node, Registration, Service, SessionBehavior,
    SessionInfo, SessionQuery, Status, Weights,
};

/// What a registration or deregistration may be refused for (nothing changes then).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("missing node name")]
    MissingNode,
    #[error("missing node address")]
    MissingAddress,
    #[error("missing service name")]
    MissingServiceName,
    #[error(
        "check {check:?} refers to service {service:?}, which is not registered on node {node:?}"
    )]
    UnknownService {
        check: String,
        service: String,
        node: String,
    },
    #[error("missing check id")]
    MissingCheckId,
}

/// The catalog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    nodes: BTreeMap<String, Node>,
    /// (node, service id) → service.
    services: BTreeMap<(String, String), Service>,
    /// (node, check id) → check.
    checks: BTreeMap<(String, String), Check>,
    /// Service name → the (node, service id) instances of it.
    by_name: BTreeMap<String, BTreeSet<(String, String)>>,
    /// Index of the last change to each table, and to each service name (including
    /// changes to its checks and to node-level checks of its nodes): what a blocking
    /// query on that service waits on.
    nodes_index: u64,
    services_index: u64,
    checks_index: u64,
    service_index: BTreeMap<String, u64>,
    /// Index of the last change to each node (its record, services or checks).
    node_index: BTreeMap<String, u64>,
}

impl Catalog {
    /// Applies a catalog command at Raft index `index`.
    pub fn apply(&mut self, index: u64, cmd: &CatalogCommand) -> Result<(), CatalogError> {
        match cmd {
            CatalogCommand::Register(r) => self.register(index, r),
            CatalogCommand::Deregister {
                node,
                service_id,
                check_id,
            } => {
                self.deregister(index, node, service_id.as_deref(), check_id.as_deref());
                Ok(())
            }
        }
    }

    /// Registers (creates or updates) a node, a service and checks at Raft index `index`,
    /// all or nothing.
    pub fn register(&mut self, index: u64, reg: &Registration) -> Result<(), CatalogError> {
        if reg.node.is_empty() {
            return Err(CatalogError::MissingNode);
        }
        if reg.address.is_empty() {
            return Err(CatalogError::MissingAddress);
        }
        let service = match &reg.service {
            Some(s) if s.name.is_empty() => return Err(CatalogError::MissingServiceName),
            Some(s) => {
                let mut s = s.clone();
                if s.id.is_empty() {
                    s.id = s.name.clone();
                }
                Some(s)
            }
            None => None,
        };
        for c in &reg.checks {
            if c.id.is_empty() {
                return Err(CatalogError::MissingCheckId);
            }
            if !c.service_id.is_empty() {
                let known = self
                    .services
                    .contains_key(&(reg.node.clone(), c.service_id.clone()))
                    || service.as_ref().is_some_and(|s| s.id == c.service_id);
                if !known {
                    return Err(CatalogError::UnknownService {
                        check: c.id.clone(),
                        service: c.service_id.clone(),
                        node: reg.node.clone(),
                    });
                }
            }
        }

        // The node: only a real change moves its indexes.
        let node = Node {
            name: reg.node.clone(),
            id: reg.id.clone(),
            address: reg.address.clone(),
            datacenter: reg.datacenter.clone(),
            meta: reg.node_meta.clone(),
            create_index: index,
            modify_index: index,
        };
        let node_changed = match self.nodes.get(&reg.node) {
            Some(old) => {
                let same = old.id == node.id
                    && old.address == node.address
                    && old.datacenter == node.datacenter
                    && old.meta == node.meta;
                if !same {
                    let create = old.create_index;
                    self.nodes.insert(
                        reg.node.clone(),
                        Node {
                            create_index: create,
                            ..node
                        },
                    );
                }
                !same
            }
            None => {
                self.nodes.insert(reg.node.clone(), node);
                true
            }
        };
        if node_changed {
            self.nodes_index = index;
            self.touch_node(index, &reg.node);
            // Every service on the node reports the node's address: their reads change.
            for name in self.service_names_on(&reg.node) {
                self.service_index.insert(name, index);
            }
        }

        if let Some(mut s) = service {
            let key = (reg.node.clone(), s.id.clone());
            let old = self.services.get(&key).cloned();
            let changed = old.as_ref().is_none_or(|o| {
                o.name != s.name
                    || o.tags != s.tags
                    || o.address != s.address
                    || o.port != s.port
                    || o.meta != s.meta
                    || o.weights != s.weights
            });
            if changed {
                s.create_index = old.as_ref().map_or(index, |o| o.create_index);
                s.modify_index = index;
                if let Some(o) = &old {
                    if o.name != s.name {
                        self.unlink(&o.name, &key, index);
                    }
                }
                self.by_name
                    .entry(s.name.clone())
                    .or_default()
                    .insert(key.clone());
                self.service_index.insert(s.name.clone(), index);
                self.services.insert(key, s);
                self.services_index = index;
                self.touch_node(index, &reg.node);
            }
        }

        for c in &reg.checks {
            let mut c = c.clone();
            c.node = reg.node.clone();
            if !c.service_id.is_empty() {
                c.service_name = self
                    .services
                    .get(&(reg.node.clone(), c.service_id.clone()))
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
            }
            let key = (reg.node.clone(), c.id.clone());
            let old = self.checks.get(&key);
            let changed = old.is_none_or(|o| {
                o.status != c.status
                    || o.output != c.output
                    || o.name != c.name
                    || o.service_id != c.service_id
                    || o.kind != c.kind
            });
            if changed {
                c.create_index = old.map_or(index, |o| o.create_index);
                c.modify_index = index;
                self.checks.insert(key, c.clone());
                self.checks_index = index;
                self.touch_node(index, &reg.node);
                self.touch_check_services(index, &c);
            }
        }
        Ok(())
    }

    /// Deregisters a whole node (with its services and checks), one service (with its
    /// checks), or one check. Removing something absent changes nothing.
    pub fn deregister(
        &mut self,
        index: u64,
        node: &str,
        service_id: Option<&str>,
        check_id: Option<&str>,
    ) {
        match (service_id, check_id) {
            (None, None) => {
                if self.nodes.remove(node).is_none() {
                    return;
                }
                self.nodes_index = index;
                for sid in self.service_ids_on(node) {
                    self.remove_service(index, node, &sid);
                }
                let checks: Vec<String> = self.check_ids_on(node);
                for cid in checks {
                    self.remove_check(index, node, &cid);
                }
                self.node_index.insert(node.to_string(), index);
            }
            (Some(sid), _) => self.remove_service(index, node, sid),
            (None, Some(cid)) => self.remove_check(index, node, cid),
        }
    }

    fn remove_service(&mut self, index: u64, node: &str, sid: &str) {
        let key = (node.to_string(), sid.to_string());
        let Some(s) = self.services.remove(&key) else {
            return;
        };
        self.unlink(&s.name, &key, index);
        self.services_index = index;
        self.touch_node(index, node);
        let checks: Vec<String> = self
            .checks
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .filter(|(_, c)| c.service_id == sid)
            .map(|((_, id), _)| id.clone())
            .collect();
        for cid in checks {
            self.remove_check(index, node, &cid);
        }
    }

    fn remove_check(&mut self, index: u64, node: &str, cid: &str) {
        if let Some(c) = self.checks.remove(&(node.to_string(), cid.to_string())) {
            self.checks_index = index;
            self.touch_node(index, node);
            self.touch_check_services(index, &c);
        }
    }

    fn unlink(&mut self, name: &str, key: &(String, String), index: u64) {
        if let Some(set) = self.by_name.get_mut(name) {
            set.remove(key);
            if set.is_empty() {
                self.by_name.remove(name);
            }
        }
        self.service_index.insert(name.to_string(), index);
    }

    fn touch_node(&mut self, index: u64, node: &str) {
        self.node_index.insert(node.to_string(), index);
    }

    /// A check change affects its service's reads, or, for a node-level check, the reads
    /// of every service on the node.
    fn touch_check_services(&mut self, index: u64, c: &Check) {
        if c.service_id.is_empty() {
            for name in self.service_names_on(&c.node) {
                self.service_index.insert(name, index);
            }
        } else if !c.service_name.is_empty() {
            self.service_index.insert(c.service_name.clone(), index);
        }
    }

    fn service_ids_on(&self, node: &str) -> Vec<String> {
        self.services
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .map(|((_, id), _)| id.clone())
            .collect()
    }

    fn service_names_on(&self, node: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .map(|(_, s)| s.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn check_ids_on(&self, node: &str) -> Vec<String> {
        self.checks
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .map(|((_, id), _)| id.clone())
            .collect()
    }

    // ---- reads ----------------------------------------------------------------------

    /// Every node, by name, and the nodes table's index.
    pub fn nodes(&self) -> (Vec<&Node>, u64) {
        (self.nodes.values().collect(), self.nodes_index.max(1))
    }

    /// Every service name with the union of its instances' tags, and the services index.
    pub fn services(&self) -> (BTreeMap<&str, BTreeSet<&str>>, u64) {
        let mut out: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for s in self.services.values() {
            out.entry(s.name.as_str())
                .or_default()
                .extend(s.tags.iter().map(String::as_str));
        }
        (out, self.services_index.max(1))
    }

    /// The instances of service `name` (with `tag`, if given; only those whose checks all
    /// pass, if `passing_only`), ordered by node name, and the service's index.
    /// The index of a service's instances (what [`Catalog::instances`] returns beside
    /// them), without building them: a parked blocking read checks this on every applied
    /// entry.
    pub fn service_index_of(&self, name: &str) -> u64 {
        self.service_index
            .get(name)
            .copied()
            .unwrap_or(self.services_index)
            .max(1)
    }

    /// The index of the catalog's last change of any kind (a node, a service or a
    /// check): equal indexes mean equal contents, so a cache of answers built from the
    /// catalog (the DNS interface's) stays valid while this does not move.
    pub fn index(&self) -> u64 {
        self.nodes_index
            .max(self.services_index)
            .max(self.checks_index)
    }

    /// The index [`Catalog::query`] would return, where it is cheaper to find than the
    /// result (today: a service's instances); `None`: run the query.
    pub fn query_index(&self, q: &CatalogQuery) -> Option<u64> {
        match q {
            CatalogQuery::Service { name, .. } => Some(self.service_index_of(name)),
            _ => None,
        }
    }

    pub fn instances(
        &self,
        name: &str,
        tag: Option<&str>,
        passing_only: bool,
    ) -> (Vec<Instance>, u64) {
        let index = self.service_index_of(name);
        let Some(keys) = self.by_name.get(name) else {
            return (Vec::new(), index);
        };
        let mut out = Vec::new();
        for key in keys {
            let (Some(s), Some(n)) = (self.services.get(key), self.nodes.get(&key.0)) else {
                continue;
            };
            if tag.is_some_and(|t| !s.tags.iter().any(|x| x == t)) {
                continue;
            }
            let checks = || {
                self.checks
                    .range((key.0.clone(), String::new())..)
                    .take_while(|((node, _), _)| node == &key.0)
                    .map(|(_, c)| c)
                    .filter(|c| c.service_id.is_empty() || c.service_id == s.id)
            };
            // Decided on the stored checks, before anything is cloned.
            if passing_only && checks().any(|c| c.status != Status::Passing) {
                continue;
            }
            out.push(Instance {
                node: n.clone(),
                service: s.clone(),
                checks: checks().cloned().collect(),
            });
        }
        (out, index)
    }

    /// A node's services and the node's index.
    pub fn node_services(&self, node: &str) -> (Option<&Node>, Vec<&Service>, u64) {
        let services = self
            .services
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .map(|(_, s)| s)
            .collect();
        let index = self
            .node_index
            .get(node)
            .copied()
            .unwrap_or(self.nodes_index)
            .max(1);
        (self.nodes.get(node), services, index)
    }

    /// A node's checks.
    pub fn node_checks(&self, node: &str) -> (Vec<&Check>, u64) {
        let checks = self
            .checks
            .range((node.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == node)
            .map(|(_, c)| c)
            .collect();
        let index = self
            .node_index
            .get(node)
            .copied()
            .unwrap_or(self.checks_index)
            .max(1);
        (checks, index)
    }

    /// The checks of service `name` (its own checks, on every node).
    pub fn service_checks(&self, name: &str) -> (Vec<&Check>, u64) {
        let checks = self
            .checks
            .values()
            .filter(|c| c.service_name == name)
            .collect();
        let index = self
            .service_index
            .get(name)
            .copied()
            .unwrap_or(self.checks_index)
            .max(1);
        (checks, index)
    }

    /// Checks in `state` (`None`: every check, Consul's `any`).
    pub fn checks_in_state(&self, state: Option<Status>) -> (Vec<&Check>, u64) {
        let checks = self
            .checks
            .values()
            .filter(|c| state.is_none_or(|s| c.status == s))
            .collect();
        (checks, self.checks_index.max(1))
    }
}

impl Catalog {
    /// Answers a catalog or health read: the result and its index (what a blocking query
    /// on it waits to exceed).
    pub fn query(&self, q: &CatalogQuery) -> (CatalogResult, u64) {
        match q {
            CatalogQuery::Nodes => {
                let (nodes, index) = self.nodes();
                (
                    CatalogResult::Nodes(nodes.into_iter().cloned().collect()),
                    index,
                )
            }
            CatalogQuery::Services => {
                let (services, index) = self.services();
                (
                    CatalogResult::Services(
                        services
                            .into_iter()
                            .map(|(name, tags)| {
                                (
                                    name.to_string(),
                                    tags.into_iter().map(str::to_string).collect(),
                                )
                            })
                            .collect(),
                    ),
                    index,
                )
            }
            CatalogQuery::Service {
                name,
                tag,
                passing_only,
            } => {
                let (instances, index) = self.instances(name, tag.as_deref(), *passing_only);
                (CatalogResult::Instances(instances), index)
            }
            CatalogQuery::NodeServices { node } => {
                let (n, services, index) = self.node_services(node);
                (
                    CatalogResult::NodeServices(
                        n.cloned(),
                        services.into_iter().cloned().collect(),
                    ),
                    index,
                )
            }
            CatalogQuery::NodeChecks { node } => {
                let (checks, index) = self.node_checks(node);
                (
                    CatalogResult::Checks(checks.into_iter().cloned().collect()),
                    index,
                )
            }
            CatalogQuery::ServiceChecks { name } => {
                let (checks, index) = self.service_checks(name);
                (
                    CatalogResult::Checks(checks.into_iter().cloned().collect()),
                    index,
                )
            }
            CatalogQuery::ChecksInState { state } => {
                let (checks, index) = self.checks_in_state(*state);
                (
                    CatalogResult::Checks(checks.into_iter().cloned().collect()),
                    index,
                )
            }
        }
    }

    /// A node, if registered.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// One check of a node, if registered.
    pub fn check(&self, node: &str, id: &str) -> Option<&Check> {
        self.checks.get(&(node.to_string(), id.to_string()))
    }
}
