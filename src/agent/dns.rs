//! The agent's DNS interface (`--dns-port`, default 8600): `crate::dns` answering from
//! the catalog through the agent's own request path, so a client agent's DNS asks a
//! server (stale by default: any server answers from its own state, and DNS never waits
//! on the leader), and a server's answers from its local state. A server's view also
//! gives its local catalog's index as `DnsView::version`, so the DNS driver reuses an
//! encoded answer until the catalog changes (a client agent's gives none: no cache).

use std::net::SocketAddr;
use std::rc::Rc;

use cairn_net::rpc::message::{Consistency, Op, ReadOpts, Request, Response};

use super::server::Handler;
use super::AgentError;
use crate::catalog::{CatalogQuery, CatalogResult, Instance, Node};
use crate::dns::{DnsConfig, DnsError, DnsServer, DnsView, ServeError};

/// Consul's DNS port.
pub const DEFAULT_DNS_PORT: u16 = 8600;

/// Where and how the agent answers DNS.
#[derive(Debug, Clone)]
pub struct DnsSettings {
    /// `--client` address and `--dns-port`.
    pub addr: SocketAddr,
    pub config: DnsConfig,
}

/// The catalog as an agent's request path sees it.
pub(super) struct AgentView<H: Handler> {
    handler: Rc<H>,
    datacenter: String,
}

impl<H: Handler> AgentView<H> {
    async fn read(&self, query: CatalogQuery, stale: bool) -> Result<CatalogResult, DnsError> {
        let req = Request {
            datacenter: String::new(),
            token: String::new(),
            op: Op::CatalogRead {
                query,
                opts: ReadOpts {
                    consistency: if stale {
                        Consistency::Stale
                    } else {
                        Consistency::Default
                    },
                    ..ReadOpts::default()
                },
            },
        };
        match self.handler.clone().answer(req).await.into_owned() {
            Response::Catalog { result, .. } => Ok(result),
            Response::Error(e) => Err(DnsError::Unavailable(e.message)),
            other => Err(DnsError::Unavailable(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }
}

impl<H: Handler> DnsView for AgentView<H> {
    fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// A server's stale reads come from its own catalog replica, whose index it reads
    /// at once; a client agent's go to a server, so it caches nothing.
    fn version(&self) -> Option<u64> {
        self.handler.local_catalog_index()
    }

    async fn node(&self, name: &str, stale: bool) -> Result<Option<Node>, DnsError> {
        if let CatalogResult::NodeServices(Some(n), _) = self
            .read(
                CatalogQuery::NodeServices {
                    node: name.to_string(),
                },
                stale,
            )
            .await?
        {
            return Ok(Some(n));
        }
        // DNS names are case-insensitive; the catalog's names are not: look through the
        // node list only when the exact name missed.
        match self.read(CatalogQuery::Nodes, stale).await? {
            CatalogResult::Nodes(nodes) => Ok(nodes
                .into_iter()
                .find(|n| n.name.eq_ignore_ascii_case(name))),
            _ => Ok(None),
        }
    }

    async fn instances(
        &self,
        service: &str,
        tag: Option<&str>,
        stale: bool,
    ) -> Result<Vec<Instance>, DnsError> {
        let by_name = |name: &str| CatalogQuery::Service {
            name: name.to_string(),
            tag: None,
            passing_only: false,
        };
        let keep = |i: &Instance| {
            tag.is_none_or(|t| i.service.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
        };
        if let CatalogResult::Instances(list) = self.read(by_name(service), stale).await? {
            if !list.is_empty() {
                return Ok(list.into_iter().filter(keep).collect());
            }
        }
        // Every other registered spelling of the name (Consul folds case).
        let mut out = Vec::new();
        if let CatalogResult::Services(names) = self.read(CatalogQuery::Services, stale).await? {
            for (name, _) in names
                .iter()
                .filter(|(n, _)| n != service && n.eq_ignore_ascii_case(service))
            {
                if let CatalogResult::Instances(list) = self.read(by_name(name), stale).await? {
                    out.extend(list.into_iter().filter(keep));
                }
            }
        }
        Ok(out)
    }
}

/// Binds the DNS port (a clash is a clear error) and serves it on this executor.
pub(super) fn start<H: Handler>(
    handler: Rc<H>,
    datacenter: &str,
    s: &DnsSettings,
) -> Result<(), AgentError> {
    s.config.validate().map_err(AgentError::Config)?;
    let server = DnsServer::bind(s.addr).map_err(|e| match e {
        ServeError::PortInUse { addr } => AgentError::Config(format!(
            "DNS port {addr} is already in use (is another agent running? choose another \
             with --dns-port, or -1 to turn DNS off)"
        )),
        e => AgentError::Config(e.to_string()),
    })?;
    let view = Rc::new(AgentView {
        handler,
        datacenter: datacenter.to_string(),
    });
    let cfg = s.config.clone();
    glommio::spawn_local(async move {
        if let Err(e) = server.serve(view, cfg).await {
            eprintln!("cairn: DNS: {e}");
        }
    })
    .detach();
    Ok(())
}
