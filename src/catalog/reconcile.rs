//! The leader's reconciliation of the gossip pool into the catalog, as Consul's leader
//! does it: every live member is a registered node with a passing `serfHealth` check, a
//! failed member's `serfHealth` is critical (its services drop out of passing queries), a
//! member that left is deregistered, and a node whose `serfHealth` the leader once wrote
//! but which is no longer in the pool at all (its tombstone was reclaimed, or it was
//! force-removed) is deregistered too. Nodes registered only through the catalog API (no
//! `serfHealth`, Consul's "external" nodes) are left alone.
//!
//! Pure: the caller passes the pool as it sees it and the catalog as applied; the answer
//! is the writes that bring the catalog in line, nothing when it already is, so running it
//! every second costs nothing in steady state.

use std::collections::BTreeSet;

use super::{Catalog, CatalogCommand, Check, Registration, Status};

/// The id and name of the check the leader keeps for every member, as Consul's.
pub const SERF_CHECK_ID: &str = "serfHealth";
pub const SERF_CHECK_NAME: &str = "Serf Health Status";
const ALIVE_OUTPUT: &str = "Agent alive and reachable";
const FAILED_OUTPUT: &str = "Agent not live or unreachable";

/// A member's state as the gossip pool reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Alive or suspect (a suspect may still refute; Consul keeps it passing too).
    Alive,
    Failed,
    Left,
}

/// One member of the LAN pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolMember {
    pub name: String,
    /// Its IP address (the node's address in the catalog).
    pub address: String,
    pub datacenter: String,
    pub state: MemberState,
}

fn serf_check(node: &str, status: Status) -> Check {
    Check {
        id: SERF_CHECK_ID.into(),
        name: SERF_CHECK_NAME.into(),
        node: node.into(),
        status,
        output: match status {
            Status::Passing => ALIVE_OUTPUT.into(),
            _ => FAILED_OUTPUT.into(),
        },
        ..Check::default()
    }
}

/// The writes that make `catalog` agree with the pool `members` for datacenter `dc`.
pub fn reconcile(members: &[PoolMember], catalog: &Catalog, dc: &str) -> Vec<CatalogCommand> {
    let mut out = Vec::new();
    let mut in_pool = BTreeSet::new();
    for m in members.iter().filter(|m| m.datacenter == dc) {
        in_pool.insert(m.name.as_str());
        let node = catalog.node(&m.name);
        let serf = catalog.check(&m.name, SERF_CHECK_ID);
        match m.state {
            MemberState::Alive | MemberState::Failed => {
                let want = if m.state == MemberState::Alive {
                    Status::Passing
                } else {
                    Status::Critical
                };
                let up_to_date = node.is_some_and(|n| n.address == m.address)
                    && serf.is_some_and(|c| c.status == want);
                // A failed member that was never registered is not registered now.
                if up_to_date || (node.is_none() && want == Status::Critical) {
                    continue;
                }
                out.push(CatalogCommand::Register(Box::new(Registration {
                    node: m.name.clone(),
                    // Keep what others registered for the node (its id and meta).
                    id: node.map(|n| n.id.clone()).unwrap_or_default(),
                    address: m.address.clone(),
                    datacenter: dc.to_string(),
                    node_meta: node.map(|n| n.meta.clone()).unwrap_or_default(),
                    service: None,
                    checks: vec![serf_check(&m.name, want)],
                })));
            }
            MemberState::Left => {
                if node.is_some() {
                    out.push(deregister(&m.name));
                }
            }
        }
    }
    // Nodes the leader registered from gossip that the pool no longer knows.
    for n in catalog.nodes().0 {
        if n.datacenter == dc
            && !in_pool.contains(n.name.as_str())
            && catalog.check(&n.name, SERF_CHECK_ID).is_some()
        {
            out.push(deregister(&n.name));
        }
    }
    out
}

fn deregister(node: &str) -> CatalogCommand {
    CatalogCommand::Deregister {
        node: node.to_string(),
        service_id: None,
        check_id: None,
    }
}

/// Why a session on `node` bound to `checks` (node-level or service check ids of that
/// node) must be invalidated, if it must: the node is gone, or one of the checks is gone
/// or critical. As Consul's, a check in warning keeps the session.
pub fn session_failure(catalog: &Catalog, node: &str, checks: &[String]) -> Option<String> {
    if catalog.node(node).is_none() {
        return Some(format!("Missing node registration for {node:?}"));
    }
    for id in checks {
        match catalog.check(node, id) {
            None => return Some(format!("Missing check '{id}' registration")),
            Some(c) if c.status == Status::Critical => {
                return Some(format!("Check '{id}' is in critical state"))
            }
            Some(_) => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a session bound to `node`'s serfHealth must end.
    fn session_node_failed(catalog: &Catalog, node: &str) -> bool {
        session_failure(catalog, node, &[SERF_CHECK_ID.to_string()]).is_some()
    }

    fn member(name: &str, state: MemberState) -> PoolMember {
        PoolMember {
            name: name.into(),
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            state,
        }
    }

    fn apply_all(cat: &mut Catalog, cmds: &[CatalogCommand], index: &mut u64) {
        for c in cmds {
            *index += 1;
            cat.apply(*index, c).unwrap();
        }
    }

    #[test]
    fn live_members_are_registered_once_and_then_left_alone() {
        let mut cat = Catalog::default();
        let mut i = 0;
        let pool = vec![
            member("a", MemberState::Alive),
            member("b", MemberState::Alive),
        ];
        let cmds = reconcile(&pool, &cat, "dc1");
        assert_eq!(cmds.len(), 2);
        apply_all(&mut cat, &cmds, &mut i);
        assert_eq!(
            cat.check("a", SERF_CHECK_ID).unwrap().status,
            Status::Passing
        );
        assert!(reconcile(&pool, &cat, "dc1").is_empty(), "steady state");
    }

    #[test]
    fn a_failed_member_goes_critical_and_its_sessions_fail_then_it_recovers() {
        let mut cat = Catalog::default();
        let mut i = 0;
        let cmds = reconcile(&[member("a", MemberState::Alive)], &cat, "dc1");
        apply_all(&mut cat, &cmds, &mut i);
        assert!(!session_node_failed(&cat, "a"));
        let cmds = reconcile(&[member("a", MemberState::Failed)], &cat, "dc1");
        apply_all(&mut cat, &cmds, &mut i);
        assert_eq!(
            cat.check("a", SERF_CHECK_ID).unwrap().status,
            Status::Critical
        );
        assert!(session_node_failed(&cat, "a"));
        let cmds = reconcile(&[member("a", MemberState::Alive)], &cat, "dc1");
        apply_all(&mut cat, &cmds, &mut i);
        assert_eq!(
            cat.check("a", SERF_CHECK_ID).unwrap().status,
            Status::Passing
        );
    }

    #[test]
    fn left_and_vanished_members_are_deregistered_but_external_nodes_stay() {
        let mut cat = Catalog::default();
        let mut i = 0;
        let pool = vec![
            member("a", MemberState::Alive),
            member("b", MemberState::Alive),
        ];
        let cmds = reconcile(&pool, &cat, "dc1");
        apply_all(&mut cat, &cmds, &mut i);
        i += 1;
        cat.register(
            i,
            &Registration {
                node: "external".into(),
                address: "192.0.2.1".into(),
                datacenter: "dc1".into(),
                ..Registration::default()
            },
        )
        .unwrap();
        // a left, b vanished from the pool.
        let cmds = reconcile(&[member("a", MemberState::Left)], &cat, "dc1");
        apply_all(&mut cat, &cmds, &mut i);
        let names: Vec<String> = cat.nodes().0.iter().map(|n| n.name.clone()).collect();
        assert_eq!(names, vec!["external".to_string()]);
        assert!(session_node_failed(&cat, "a"));
    }

    #[test]
    fn an_address_change_reregisters_and_keeps_node_meta() {
        let mut cat = Catalog::default();
        let mut i = 1;
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("rack".to_string(), "r1".to_string());
        cat.register(
            i,
            &Registration {
                node: "a".into(),
                id: "id-a".into(),
                address: "10.0.0.9".into(),
                datacenter: "dc1".into(),
                node_meta: meta.clone(),
                ..Registration::default()
            },
        )
        .unwrap();
        let cmds = reconcile(&[member("a", MemberState::Alive)], &cat, "dc1");
        apply_all(&mut cat, &cmds, &mut i);
        let n = cat.node("a").unwrap();
        assert_eq!(n.address, "10.0.0.1");
        assert_eq!(n.meta, meta);
        assert_eq!(n.id, "id-a");
    }

    #[test]
    fn members_of_other_datacenters_and_unregistered_failures_are_ignored() {
        let cat = Catalog::default();
        let mut other = member("x", MemberState::Alive);
        other.datacenter = "dc2".into();
        assert!(reconcile(&[other, member("f", MemberState::Failed)], &cat, "dc1").is_empty());
    }
}
