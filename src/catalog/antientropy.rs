//! Anti-entropy: an agent is the source of truth for its own node's services and checks,
//! and keeps the servers' catalog in line with it, as Consul's agents do.
//!
//! Pure: [`plan`] compares what the agent knows ([`LocalNode`]) with what the catalog
//! holds for the node and answers the writes that make them agree: register what is
//! missing or different, deregister what the agent does not know (except the leader's
//! `serfHealth`), re-register what someone deleted. Nothing when they agree, so a
//! periodic full sync costs one read per node in steady state. [`sync_interval`] scales
//! the period with the cluster's size so 10,000 agents do not overload the servers.

use std::collections::BTreeMap;
use std::time::Duration;

use super::reconcile::SERF_CHECK_ID;
use super::{CatalogCommand, Check, Node, Registration, Service};

/// What the agent knows about its node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalNode {
    pub node: String,
    pub id: String,
    pub address: String,
    pub datacenter: String,
    pub meta: BTreeMap<String, String>,
    /// By service id.
    pub services: BTreeMap<String, Service>,
    /// By check id; a service check names its service in `service_id`.
    pub checks: BTreeMap<String, Check>,
}

fn same_service(a: &Service, b: &Service) -> bool {
    a.id == b.id
        && a.name == b.name
        && a.tags == b.tags
        && a.address == b.address
        && a.port == b.port
        && a.meta == b.meta
        && a.weights == b.weights
}

fn same_check(a: &Check, b: &Check) -> bool {
    a.id == b.id
        && a.name == b.name
        && a.status == b.status
        && a.output == b.output
        && a.service_id == b.service_id
        && a.kind == b.kind
}

impl LocalNode {
    fn registration(&self) -> Registration {
        Registration {
            node: self.node.clone(),
            id: self.id.clone(),
            address: self.address.clone(),
            datacenter: self.datacenter.clone(),
            node_meta: self.meta.clone(),
            service: None,
            checks: Vec::new(),
        }
    }
}

/// The writes that bring the catalog's view of the node (`remote`: the node if
/// registered, its services and its checks) in line with `local`.
pub fn plan(
    local: &LocalNode,
    remote_node: Option<&Node>,
    remote_services: &[Service],
    remote_checks: &[Check],
) -> Vec<CatalogCommand> {
    let mut out = Vec::new();
    let node_ok = remote_node
        .is_some_and(|n| n.address == local.address && n.meta == local.meta && n.id == local.id);
    let mut node_sent = false;
    let remote_svc: BTreeMap<&str, &Service> =
        remote_services.iter().map(|s| (s.id.as_str(), s)).collect();
    let remote_chk: BTreeMap<&str, &Check> =
        remote_checks.iter().map(|c| (c.id.as_str(), c)).collect();

    // Services the catalog lacks or has differently: registered with all their checks.
    let mut synced_checks = std::collections::BTreeSet::new();
    for (id, s) in &local.services {
        let service_ok = remote_svc
            .get(id.as_str())
            .is_some_and(|r| same_service(r, s));
        if service_ok {
            continue;
        }
        let mut reg = local.registration();
        reg.service = Some(s.clone());
        for c in local.checks.values().filter(|c| &c.service_id == id) {
            reg.checks.push(c.clone());
            synced_checks.insert(c.id.as_str());
        }
        out.push(CatalogCommand::Register(Box::new(reg)));
        node_sent = true;
    }
    // Checks the catalog lacks or has differently (status, output, ...).
    let stale_checks: Vec<Check> = local
        .checks
        .values()
        .filter(|c| !synced_checks.contains(c.id.as_str()))
        .filter(|c| {
            !remote_chk
                .get(c.id.as_str())
                .is_some_and(|r| same_check(r, c))
        })
        .cloned()
        .collect();
    if !stale_checks.is_empty() {
        let mut reg = local.registration();
        reg.checks = stale_checks;
        out.push(CatalogCommand::Register(Box::new(reg)));
        node_sent = true;
    }
    if !node_ok && !node_sent {
        out.push(CatalogCommand::Register(Box::new(local.registration())));
    }
    // What the catalog has for the node that the agent does not know.
    for s in remote_services {
        if !local.services.contains_key(&s.id) {
            out.push(CatalogCommand::Deregister {
                node: local.node.clone(),
                service_id: Some(s.id.clone()),
                check_id: None,
            });
        }
    }
    for c in remote_checks {
        let owned_by_removed_service =
            !c.service_id.is_empty() && !local.services.contains_key(&c.service_id);
        if c.id != SERF_CHECK_ID && !local.checks.contains_key(&c.id) && !owned_by_removed_service {
            out.push(CatalogCommand::Deregister {
                node: local.node.clone(),
                service_id: None,
                check_id: Some(c.id.clone()),
            });
        }
    }
    out
}

/// The full-sync period for a cluster of `nodes` agents: `base` (Consul's 1 minute) up
/// to 128 nodes, then one more `base` for every doubling beyond, as Consul's `aeScale`,
/// so the servers see about the same full-sync load per second at any size:
/// `base * (ceil(log2(nodes) - log2(128)) + 1)`. On integers (`ceil(log2(n))` is
/// `ilog2(n - 1) + 1`), not `f64::log2`, which would link the C library's libm into
/// the binary only for this (see `cairn_net::gossip::config`).
pub fn sync_interval(base: Duration, nodes: usize) -> Duration {
    const THRESHOLD: usize = 128;
    if nodes <= THRESHOLD {
        return base;
    }
    let mult = (nodes - 1).ilog2() + 1 - THRESHOLD.ilog2() + 1;
    base * mult
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, Status};

    fn local() -> LocalNode {
        let mut l = LocalNode {
            node: "n1".into(),
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            ..LocalNode::default()
        };
        l.services.insert(
            "web".into(),
            Service {
                id: "web".into(),
                name: "web".into(),
                port: 80,
                ..Service::default()
            },
        );
        l.checks.insert(
            "service:web".into(),
            Check {
                id: "service:web".into(),
                name: "web http".into(),
                node: "n1".into(),
                status: Status::Passing,
                service_id: "web".into(),
                kind: "http".into(),
                ..Check::default()
            },
        );
        l.checks.insert(
            "mem".into(),
            Check {
                id: "mem".into(),
                name: "memory".into(),
                node: "n1".into(),
                status: Status::Warning,
                kind: "script".into(),
                ..Check::default()
            },
        );
        l
    }

    /// Applies the plan to `cat`, then plans again from the result.
    fn sync(cat: &mut Catalog, l: &LocalNode, index: &mut u64) -> usize {
        let (node, services, _) = cat.node_services(&l.node);
        let node = node.cloned();
        let services: Vec<Service> = services.into_iter().cloned().collect();
        let checks: Vec<Check> = cat.node_checks(&l.node).0.into_iter().cloned().collect();
        let cmds = plan(l, node.as_ref(), &services, &checks);
        for c in &cmds {
            *index += 1;
            cat.apply(*index, c).unwrap();
        }
        cmds.len()
    }

    fn converges(cat: &mut Catalog, l: &LocalNode, index: &mut u64) {
        sync(cat, l, index);
        assert_eq!(sync(cat, l, index), 0, "a second sync has nothing to do");
        let (_, services, _) = cat.node_services(&l.node);
        assert_eq!(services.len(), l.services.len());
        let checks = cat.node_checks(&l.node).0;
        let ours: Vec<&str> = checks
            .iter()
            .filter(|c| c.id != SERF_CHECK_ID)
            .map(|c| c.id.as_str())
            .collect();
        assert_eq!(
            ours,
            l.checks.keys().map(String::as_str).collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_empty_catalog_gets_the_node_then_nothing_more() {
        let mut cat = Catalog::default();
        let mut i = 0;
        converges(&mut cat, &local(), &mut i);
    }

    #[test]
    fn status_changes_and_removals_sync_and_foreign_entries_go_but_serf_health_stays() {
        let mut cat = Catalog::default();
        let mut i = 0;
        let mut l = local();
        converges(&mut cat, &l, &mut i);
        // The leader's serfHealth and an entry someone else registered for this node.
        i += 1;
        cat.register(
            i,
            &Registration {
                node: "n1".into(),
                address: "10.0.0.1".into(),
                datacenter: "dc1".into(),
                service: Some(Service {
                    id: "rogue".into(),
                    name: "rogue".into(),
                    ..Service::default()
                }),
                checks: vec![Check {
                    id: SERF_CHECK_ID.into(),
                    name: "Serf Health Status".into(),
                    status: Status::Passing,
                    ..Check::default()
                }],
                ..Registration::default()
            },
        )
        .unwrap();
        l.checks.get_mut("service:web").unwrap().status = Status::Critical;
        l.checks.remove("mem");
        converges(&mut cat, &l, &mut i);
        assert!(cat.check("n1", SERF_CHECK_ID).is_some());
        assert_eq!(
            cat.check("n1", "service:web").unwrap().status,
            Status::Critical
        );
        // Removing the service takes its check along.
        l.services.clear();
        l.checks.clear();
        converges(&mut cat, &l, &mut i);
    }

    #[test]
    fn what_an_operator_deleted_is_restored() {
        let mut cat = Catalog::default();
        let mut i = 0;
        let l = local();
        converges(&mut cat, &l, &mut i);
        i += 1;
        cat.deregister(i, "n1", Some("web"), None);
        converges(&mut cat, &l, &mut i);
        i += 1;
        cat.deregister(i, "n1", None, None);
        converges(&mut cat, &l, &mut i);
    }

    #[test]
    fn the_full_sync_period_grows_with_the_log_of_the_cluster_size() {
        let base = Duration::from_secs(60);
        assert_eq!(sync_interval(base, 1), base);
        assert_eq!(sync_interval(base, 128), base);
        assert_eq!(sync_interval(base, 129), base * 2);
        assert_eq!(sync_interval(base, 256), base * 2);
        assert_eq!(sync_interval(base, 10_000), base * 8);
        // As Consul's aeScale computes it, in floating point.
        for n in 129..1_000_000usize {
            let mult = ((n as f64).log2() - 128f64.log2()).ceil() + 1.0;
            assert_eq!(sync_interval(base, n), base * mult as u32, "{n}");
        }
    }
}
