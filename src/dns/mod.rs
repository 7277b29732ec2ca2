//! Consul's DNS interface: `<node>.node[.<dc>].<domain>`,
//! `[<tag>.]<service>.service[.<dc>].<domain>` and RFC 2782
//! `_<service>._<tag|tcp>.service[.<dc>].<domain>`, answered from the catalog.
//!
//! Three layers, so the protocol can be tested without a socket:
//!
//! - [`lookup`]: a query name → a typed [`Lookup`] (pure).
//! - [`answer`](mod@answer): a query packet → what to ask the catalog → the response
//!   packet (pure, apart from awaiting the [`DnsView`]; time and randomness come in as
//!   arguments). Health filtering, shuffling, SRV targets and their ADDITIONAL records,
//!   NXDOMAIN/SOA, FORMERR/NOTIMP/REFUSED, and truncation live here.
//! - [`server`]: the glommio driver, a thin UDP loop and a TCP accept loop around
//!   [`answer::answer`].
//!
//! What this module leaves to others: reading the catalog. It asks through [`DnsView`],
//! which the agent implements over its catalog (a server over its local replica, a client
//! agent over RPC to a server). [`CatalogView`] is the implementation over a catalog held
//! in memory on the current core.
//!
//! Where Cairn differs from Consul is written down in ARCHITECTURE.md ("DNS").

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use crate::catalog::{Catalog, Instance, Node};

pub mod answer;
pub mod contract;
pub mod lookup;
pub mod server;

pub use answer::{answer, Response, Transport};
pub use lookup::Lookup;
pub use server::{serve_dns, DnsServer, DnsStats, ServeError, StatsHandle};

/// How the DNS interface reads the catalog. Single-threaded (glommio): the futures need
/// not be `Send`.
///
/// Contract, as Consul's catalog gives it (checked by [`contract::check`], which every
/// implementation should run):
/// - Names (node, service, tag) match ASCII case-insensitively: DNS names are
///   case-insensitive and a query may arrive in any case.
/// - `stale` true: any server may answer from its own state, however far behind
///   (Consul's `allow_stale`, its default). False: the read goes through the leader.
/// - An error means the catalog could not be read at all (no leader, no server
///   reachable); the query is answered SERVFAIL. "Not found" is not an error.
pub trait DnsView {
    /// This agent's datacenter; a query naming another one is answered NXDOMAIN.
    fn datacenter(&self) -> &str;

    /// A number that moves whenever a stale read through this view could answer
    /// differently (the local catalog replica's index), read without waiting. The server
    /// reuses an answer only while this has not moved since it read the catalog for it;
    /// `None` (the default): this view cannot tell cheaply, and nothing is cached.
    /// Consulted only when reads are stale (`allow_stale`). It must move on every change
    /// ([`CatalogView`]'s is [`Catalog::index`], which does as long as each change is
    /// applied at a larger index than the last, as the Raft log's are).
    fn version(&self) -> Option<u64> {
        None
    }

    /// The node called `name`, if registered.
    fn node(&self, name: &str, stale: bool)
        -> impl Future<Output = Result<Option<Node>, DnsError>>;

    /// Every instance of service `service` (with tag `tag`, if given), whatever the
    /// status of its checks: the DNS layer filters by health itself.
    fn instances(
        &self,
        service: &str,
        tag: Option<&str>,
        stale: bool,
    ) -> impl Future<Output = Result<Vec<Instance>, DnsError>>;
}

/// The catalog could not be read; nothing changed anywhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("catalog unavailable: {0}")]
    Unavailable(String),
}

/// The DNS interface's settings, named after Consul's `dns_config` keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The zone answered for, as a fully qualified name (Consul's `domain`, default
    /// `consul.`). Names outside it are REFUSED: Cairn does not recurse.
    pub domain: String,
    /// TTL of node lookups' records (`node_ttl`). 0, as in Consul, so a failed node
    /// disappears from answers at once; raise it to let resolvers cache.
    pub node_ttl_s: u32,
    /// TTL of service lookups' records by service name (`service_ttl`): an exact name,
    /// or a `prefix*` pattern (the longest matching prefix wins; `*` alone is the
    /// default). Names matching nothing get 0.
    pub service_ttl_s: BTreeMap<String, u32>,
    /// Most answers in a UDP response to a query without EDNS0 (`udp_answer_limit`,
    /// default 3, at least 1): a random subset of the instances, which spreads load
    /// and keeps plain-DNS answers far below 512 bytes. No TC bit for this cut: it is
    /// a choice, not a lost record (as in Consul with `enable_truncate` off).
    pub udp_answer_limit: usize,
    /// Read the catalog stale (`allow_stale`, default true): any server answers.
    pub allow_stale: bool,
    /// Answer only instances whose checks all pass (`only_passing`, default false:
    /// warning is answered, critical never).
    pub only_passing: bool,
    /// The SOA's minimum field and the TTL of the SOA record in negative answers
    /// (Consul's `soa.min_ttl`, default 0): how long resolvers cache "no such name".
    pub soa_min_ttl_s: u32,
    /// A TCP connection with no complete query for this long is closed (RFC 7766 asks
    /// servers to time out idle clients; a client holding sockets open costs us).
    pub tcp_idle_timeout: Duration,
    /// Most TCP connections open at once; more are closed on accept.
    pub max_tcp_connections: usize,
    /// Most UDP queries being answered at once; further datagrams are dropped (and
    /// counted) until one finishes, so a flood cannot queue unbounded work.
    pub max_udp_in_flight: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            domain: "consul.".to_string(),
            node_ttl_s: 0,
            service_ttl_s: BTreeMap::new(),
            udp_answer_limit: 3,
            allow_stale: true,
            only_passing: false,
            soa_min_ttl_s: 0,
            tcp_idle_timeout: Duration::from_secs(10),
            max_tcp_connections: 1024,
            max_udp_in_flight: 1024,
        }
    }
}

impl DnsConfig {
    /// Checks the settings a server cannot run with; says which and why.
    pub fn validate(&self) -> Result<(), String> {
        let domain = hickory_proto::rr::Name::from_ascii(&self.domain)
            .map_err(|e| format!("DNS domain {:?} is not a domain name: {e}", self.domain))?;
        if domain.num_labels() == 0 {
            return Err("the DNS domain must not be the root: Cairn answers one zone".into());
        }
        if self.udp_answer_limit == 0 {
            return Err("udp_answer_limit must be at least 1".into());
        }
        if self.max_tcp_connections == 0 || self.max_udp_in_flight == 0 {
            return Err("max_tcp_connections and max_udp_in_flight must be at least 1".into());
        }
        if self.tcp_idle_timeout.is_zero() {
            return Err("tcp_idle_timeout must be above 0".into());
        }
        Ok(())
    }

    /// The TTL of records answering a lookup of service `name` (case-insensitive, as
    /// lookups are).
    pub fn service_ttl(&self, name: &str) -> u32 {
        let mut best: Option<(usize, u32)> = None;
        for (key, ttl) in &self.service_ttl_s {
            if key.eq_ignore_ascii_case(name) {
                return *ttl;
            }
            if let Some(prefix) = key.strip_suffix('*') {
                let matches = name.len() >= prefix.len()
                    && name.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes());
                if matches && best.is_none_or(|(len, _)| prefix.len() > len) {
                    best = Some((prefix.len(), *ttl));
                }
            }
        }
        best.map_or(0, |(_, ttl)| ttl)
    }
}

/// A [`DnsView`] over a catalog held on the current core. A server agent replicates
/// the catalog on every core, so this answers a stale read from local state; a
/// consistent read (`allow_stale` off) needs the leader and is not served here: the
/// agent wraps its own view for that.
#[derive(Debug, Clone)]
pub struct CatalogView {
    pub datacenter: String,
    pub catalog: Rc<RefCell<Catalog>>,
}

impl DnsView for CatalogView {
    fn datacenter(&self) -> &str {
        &self.datacenter
    }

    fn version(&self) -> Option<u64> {
        Some(self.catalog.borrow().index())
    }

    async fn node(&self, name: &str, _stale: bool) -> Result<Option<Node>, DnsError> {
        let catalog = self.catalog.borrow();
        if let (Some(n), _, _) = catalog.node_services(name) {
            return Ok(Some(n.clone()));
        }
        let (nodes, _) = catalog.nodes();
        Ok(nodes
            .into_iter()
            .find(|n| n.name.eq_ignore_ascii_case(name))
            .cloned())
    }

    async fn instances(
        &self,
        service: &str,
        tag: Option<&str>,
        _stale: bool,
    ) -> Result<Vec<Instance>, DnsError> {
        let catalog = self.catalog.borrow();
        let (names, _) = catalog.services();
        let mut out = Vec::new();
        // Every registered spelling of the name (Consul folds case in its index).
        for name in names.keys().filter(|n| n.eq_ignore_ascii_case(service)) {
            let (instances, _) = catalog.instances(name, None, false);
            out.extend(instances.into_iter().filter(|i| {
                tag.is_none_or(|t| i.service.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
            }));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
