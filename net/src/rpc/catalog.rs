//! The catalog's data model as it travels in RPC messages: nodes, services, health
//! checks, registrations, the reads behind Consul's catalog and health endpoints, and
//! sessions. The server's state machine (the `cairn` crate's `catalog` module) works on
//! these same types, so nothing is converted between the wire and the state.
//!
//! Encoding follows [`super::message`]: strings as u32 length + UTF-8, maps and lists as a
//! u32 count, optional fields behind a 0/1 byte, enums as a tag byte. Decoding enforces
//! [`super::message::Limits`]: names and addresses at most `max_string`, free text (check output) at most
//! [`MAX_OUTPUT`], lists at most `max_items`.

use std::collections::BTreeMap;

use super::message::{MessageError, R, W};

/// Longest check output kept (Consul's agents cap script and HTTP output at 4 KiB; a
/// registration may still carry more, up to this).
pub const MAX_OUTPUT: usize = 64 * 1024;

/// A check's status, ordered from best to worst (so the worst of several is their max).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Status, String> {
        match s {
            "passing" => Ok(Status::Passing),
            "warning" => Ok(Status::Warning),
            "critical" => Ok(Status::Critical),
            other => Err(format!(
                "unknown check status {other:?}: use passing, warning or critical"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    pub name: String,
    pub id: String,
    pub address: String,
    pub datacenter: String,
    pub meta: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Service {
    /// Unique on its node; defaults to the name.
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    /// Empty: the node's address.
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub weights: Weights,
    pub create_index: u64,
    pub modify_index: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub id: String,
    pub name: String,
    pub node: String,
    pub status: Status,
    pub output: String,
    /// Empty: a node-level check (it affects every service on the node).
    pub service_id: String,
    pub service_name: String,
    /// ttl, tcp, http, script, or empty (Consul's `Type`).
    pub kind: String,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Default for Check {
    fn default() -> Self {
        Check {
            id: String::new(),
            name: String::new(),
            node: String::new(),
            status: Status::Critical,
            output: String::new(),
            service_id: String::new(),
            service_name: String::new(),
            kind: String::new(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// A registration, as Consul's `/v1/catalog/register` takes it: the node (created or
/// updated), optionally one service, and checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Registration {
    pub node: String,
    pub id: String,
    pub address: String,
    pub datacenter: String,
    pub node_meta: BTreeMap<String, String>,
    pub service: Option<Service>,
    pub checks: Vec<Check>,
}

/// One service instance with its node and the checks that apply to it (node-level and
/// its own), as Consul's health endpoint returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub node: Node,
    pub service: Service,
    pub checks: Vec<Check>,
}

impl Instance {
    /// The worst status among the instance's checks (passing if it has none).
    pub fn status(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Passing)
    }
}

/// A catalog or health read (Consul's `/v1/catalog/...` and `/v1/health/...`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CatalogQuery {
    /// Every node.
    Nodes,
    /// Every service name with its tags.
    Services,
    /// The instances of a service, optionally with a tag, optionally passing only.
    Service {
        name: String,
        tag: Option<String>,
        passing_only: bool,
    },
    /// A node and its services.
    NodeServices { node: String },
    /// A node's checks.
    NodeChecks { node: String },
    /// A service's checks on every node.
    ServiceChecks { name: String },
    /// Checks in one state (`None`: any).
    ChecksInState { state: Option<Status> },
}

/// The answer to a [`CatalogQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogResult {
    Nodes(Vec<Node>),
    /// Service name → its tags (the union over instances), by name.
    Services(Vec<(String, Vec<String>)>),
    Instances(Vec<Instance>),
    /// `None` when the node is not registered.
    NodeServices(Option<Node>, Vec<Service>),
    Checks(Vec<Check>),
}

/// A catalog answer shared by many readers: a server builds it once per change and
/// hands the same one to every blocking reader it wakes (and to repeated reads of the
/// same query), and encodes it for the wire at most once.
#[derive(Debug)]
pub struct SharedResult {
    result: CatalogResult,
    encoded: std::sync::OnceLock<bytes::Bytes>,
}

impl SharedResult {
    pub fn new(result: CatalogResult) -> SharedResult {
        SharedResult {
            result,
            encoded: std::sync::OnceLock::new(),
        }
    }

    pub fn result(&self) -> &CatalogResult {
        &self.result
    }

    /// The result as [`W::catalog_result`] writes it, encoded on first use.
    pub(crate) fn encoded(&self) -> &[u8] {
        self.encoded.get_or_init(|| {
            let mut out = bytes::BytesMut::new();
            W(&mut out).catalog_result(&self.result);
            out.freeze()
        })
    }

    /// The result itself: moved out if this is the last reference, cloned otherwise.
    pub fn into_result(this: std::sync::Arc<SharedResult>) -> CatalogResult {
        match std::sync::Arc::try_unwrap(this) {
            Ok(s) => s.result,
            Err(shared) => shared.result.clone(),
        }
    }
}

impl PartialEq for SharedResult {
    fn eq(&self, other: &SharedResult) -> bool {
        self.result == other.result
    }
}

impl Eq for SharedResult {}

/// What happens to a session's locks when it is invalidated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionBehavior {
    /// The keys stay, unlocked (Consul's default).
    #[default]
    Release,
    /// The keys are deleted.
    Delete,
}

/// A session (Consul's `/v1/session/...`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionInfo {
    /// Chosen by the leader on create (ignored in a create request).
    pub id: String,
    pub name: String,
    pub node: String,
    pub behavior: SessionBehavior,
    /// 0: no TTL.
    pub ttl_ms: u64,
    pub lock_delay_ms: u64,
    /// Node-level checks whose failure (critical, or deregistered) invalidates the
    /// session (Consul's `NodeChecks`). Taken as given: Consul's default, `serfHealth`, is
    /// the client's to fill in (the HTTP API and the CLI do).
    pub node_checks: Vec<String>,
    /// Service checks of the node that do the same (Consul's `ServiceChecks`).
    pub service_checks: Vec<String>,
    pub create_index: u64,
}

/// A session read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionQuery {
    Info { id: String },
    Node { node: String },
    List,
}

// ---- encoding -------------------------------------------------------------------------

impl W<'_> {
    pub(crate) fn string(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    pub(crate) fn strings(&mut self, v: &[String]) {
        self.count(v.len());
        for s in v {
            self.string(s);
        }
    }
    pub(crate) fn map(&mut self, m: &BTreeMap<String, String>) {
        self.count(m.len());
        for (k, v) in m {
            self.string(k);
            self.string(v);
        }
    }
    pub(crate) fn status(&mut self, s: Status) {
        self.u8(match s {
            Status::Passing => 0,
            Status::Warning => 1,
            Status::Critical => 2,
        });
    }
    pub(crate) fn node(&mut self, n: &Node) {
        self.string(&n.name);
        self.string(&n.id);
        self.string(&n.address);
        self.string(&n.datacenter);
        self.map(&n.meta);
        self.u64(n.create_index);
        self.u64(n.modify_index);
    }
    pub(crate) fn service(&mut self, s: &Service) {
        self.string(&s.id);
        self.string(&s.name);
        self.strings(&s.tags);
        self.string(&s.address);
        self.u64(s.port as u64);
        self.map(&s.meta);
        self.u64(s.weights.passing as u64);
        self.u64(s.weights.warning as u64);
        self.u64(s.create_index);
        self.u64(s.modify_index);
    }
    pub(crate) fn check(&mut self, c: &Check) {
        self.string(&c.id);
        self.string(&c.name);
        self.string(&c.node);
        self.status(c.status);
        self.string(&c.output);
        self.string(&c.service_id);
        self.string(&c.service_name);
        self.string(&c.kind);
        self.u64(c.create_index);
        self.u64(c.modify_index);
    }
    pub(crate) fn registration(&mut self, r: &Registration) {
        self.string(&r.node);
        self.string(&r.id);
        self.string(&r.address);
        self.string(&r.datacenter);
        self.map(&r.node_meta);
        match &r.service {
            Some(s) => {
                self.u8(1);
                self.service(s);
            }
            None => self.u8(0),
        }
        self.count(r.checks.len());
        for c in &r.checks {
            self.check(c);
        }
    }
    pub(crate) fn catalog_query(&mut self, q: &CatalogQuery) {
        match q {
            CatalogQuery::Nodes => self.u8(1),
            CatalogQuery::Services => self.u8(2),
            CatalogQuery::Service {
                name,
                tag,
                passing_only,
            } => {
                self.u8(3);
                self.string(name);
                self.opt_bytes(tag.as_deref().map(str::as_bytes));
                self.bool(*passing_only);
            }
            CatalogQuery::NodeServices { node } => {
                self.u8(4);
                self.string(node);
            }
            CatalogQuery::NodeChecks { node } => {
                self.u8(5);
                self.string(node);
            }
            CatalogQuery::ServiceChecks { name } => {
                self.u8(6);
                self.string(name);
            }
            CatalogQuery::ChecksInState { state } => {
                self.u8(7);
                match state {
                    Some(s) => {
                        self.u8(1);
                        self.status(*s);
                    }
                    None => self.u8(0),
                }
            }
        }
    }
    pub(crate) fn catalog_result(&mut self, r: &CatalogResult) {
        match r {
            CatalogResult::Nodes(nodes) => {
                self.u8(1);
                self.count(nodes.len());
                for n in nodes {
                    self.node(n);
                }
            }
            CatalogResult::Services(services) => {
                self.u8(2);
                self.count(services.len());
                for (name, tags) in services {
                    self.string(name);
                    self.strings(tags);
                }
            }
            CatalogResult::Instances(instances) => {
                self.u8(3);
                self.count(instances.len());
                for i in instances {
                    self.node(&i.node);
                    self.service(&i.service);
                    self.count(i.checks.len());
                    for c in &i.checks {
                        self.check(c);
                    }
                }
            }
            CatalogResult::NodeServices(node, services) => {
                self.u8(4);
                match node {
                    Some(n) => {
                        self.u8(1);
                        self.node(n);
                    }
                    None => self.u8(0),
                }
                self.count(services.len());
                for s in services {
                    self.service(s);
                }
            }
            CatalogResult::Checks(checks) => {
                self.u8(5);
                self.count(checks.len());
                for c in checks {
                    self.check(c);
                }
            }
        }
    }
    pub(crate) fn session(&mut self, s: &SessionInfo) {
        self.string(&s.id);
        self.string(&s.name);
        self.string(&s.node);
        self.u8(match s.behavior {
            SessionBehavior::Release => 0,
            SessionBehavior::Delete => 1,
        });
        self.u64(s.ttl_ms);
        self.u64(s.lock_delay_ms);
        self.strings(&s.node_checks);
        self.strings(&s.service_checks);
        self.u64(s.create_index);
    }
    pub(crate) fn session_query(&mut self, q: &SessionQuery) {
        match q {
            SessionQuery::Info { id } => {
                self.u8(1);
                self.string(id);
            }
            SessionQuery::Node { node } => {
                self.u8(2);
                self.string(node);
            }
            SessionQuery::List => self.u8(3),
        }
    }
}

// ---- decoding -------------------------------------------------------------------------

impl R<'_> {
    pub(crate) fn strings(&mut self, what: &'static str) -> Result<Vec<String>, MessageError> {
        let n = self.count(what)?;
        let mut v = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            v.push(self.string(what)?);
        }
        Ok(v)
    }
    pub(crate) fn map(
        &mut self,
        what: &'static str,
    ) -> Result<BTreeMap<String, String>, MessageError> {
        let n = self.count(what)?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = self.string(what)?;
            let v = self.text(what)?;
            m.insert(k, v);
        }
        Ok(m)
    }
    pub(crate) fn status(&mut self) -> Result<Status, MessageError> {
        match self.u8()? {
            0 => Ok(Status::Passing),
            1 => Ok(Status::Warning),
            2 => Ok(Status::Critical),
            tag => Err(MessageError::UnknownTag {
                what: "check status",
                tag,
            }),
        }
    }
    pub(crate) fn node(&mut self) -> Result<Node, MessageError> {
        Ok(Node {
            name: self.string("node name")?,
            id: self.string("node id")?,
            address: self.string("node address")?,
            datacenter: self.string("datacenter")?,
            meta: self.map("node meta")?,
            create_index: self.u64()?,
            modify_index: self.u64()?,
        })
    }
    pub(crate) fn service(&mut self) -> Result<Service, MessageError> {
        let id = self.string("service id")?;
        let name = self.string("service name")?;
        let tags = self.strings("service tags")?;
        let address = self.string("service address")?;
        let port = self.u64()?;
        let port = u16::try_from(port).map_err(|_| MessageError::Limit {
            what: "service port",
            len: port as usize,
            max: u16::MAX as usize,
        })?;
        let meta = self.map("service meta")?;
        let weight = |r: &mut Self| -> Result<u32, MessageError> {
            let w = r.u64()?;
            u32::try_from(w).map_err(|_| MessageError::Limit {
                what: "service weight",
                len: w as usize,
                max: u32::MAX as usize,
            })
        };
        let weights = Weights {
            passing: weight(self)?,
            warning: weight(self)?,
        };
        Ok(Service {
            id,
            name,
            tags,
            address,
            port,
            meta,
            weights,
            create_index: self.u64()?,
            modify_index: self.u64()?,
        })
    }
    pub(crate) fn check(&mut self) -> Result<Check, MessageError> {
        Ok(Check {
            id: self.string("check id")?,
            name: self.string("check name")?,
            node: self.string("check node")?,
            status: self.status()?,
            output: {
                let b = self.raw("check output", MAX_OUTPUT)?;
                String::from_utf8(b.to_vec()).map_err(|_| MessageError::Utf8("check output"))?
            },
            service_id: self.string("check service id")?,
            service_name: self.string("check service name")?,
            kind: self.string("check type")?,
            create_index: self.u64()?,
            modify_index: self.u64()?,
        })
    }
    pub(crate) fn registration(&mut self) -> Result<Registration, MessageError> {
        let node = self.string("node name")?;
        let id = self.string("node id")?;
        let address = self.string("node address")?;
        let datacenter = self.string("datacenter")?;
        let node_meta = self.map("node meta")?;
        let service = self.opt(|r| r.service())?;
        let n = self.count("checks")?;
        let mut checks = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            checks.push(self.check()?);
        }
        Ok(Registration {
            node,
            id,
            address,
            datacenter,
            node_meta,
            service,
            checks,
        })
    }
    pub(crate) fn catalog_query(&mut self) -> Result<CatalogQuery, MessageError> {
        Ok(match self.u8()? {
            1 => CatalogQuery::Nodes,
            2 => CatalogQuery::Services,
            3 => CatalogQuery::Service {
                name: self.string("service name")?,
                tag: self.opt(|r| r.string("tag"))?,
                passing_only: self.bool()?,
            },
            4 => CatalogQuery::NodeServices {
                node: self.string("node name")?,
            },
            5 => CatalogQuery::NodeChecks {
                node: self.string("node name")?,
            },
            6 => CatalogQuery::ServiceChecks {
                name: self.string("service name")?,
            },
            7 => CatalogQuery::ChecksInState {
                state: self.opt(|r| r.status())?,
            },
            tag => {
                return Err(MessageError::UnknownTag {
                    what: "catalog query",
                    tag,
                })
            }
        })
    }
    pub(crate) fn catalog_result(&mut self) -> Result<CatalogResult, MessageError> {
        Ok(match self.u8()? {
            1 => {
                let n = self.count("nodes")?;
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    v.push(self.node()?);
                }
                CatalogResult::Nodes(v)
            }
            2 => {
                let n = self.count("services")?;
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    v.push((self.string("service name")?, self.strings("tags")?));
                }
                CatalogResult::Services(v)
            }
            3 => {
                let n = self.count("instances")?;
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let node = self.node()?;
                    let service = self.service()?;
                    let c = self.count("checks")?;
                    let mut checks = Vec::with_capacity(c.min(64));
                    for _ in 0..c {
                        checks.push(self.check()?);
                    }
                    v.push(Instance {
                        node,
                        service,
                        checks,
                    });
                }
                CatalogResult::Instances(v)
            }
            4 => {
                let node = self.opt(|r| r.node())?;
                let n = self.count("services")?;
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    v.push(self.service()?);
                }
                CatalogResult::NodeServices(node, v)
            }
            5 => {
                let n = self.count("checks")?;
                let mut v = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    v.push(self.check()?);
                }
                CatalogResult::Checks(v)
            }
            tag => {
                return Err(MessageError::UnknownTag {
                    what: "catalog result",
                    tag,
                })
            }
        })
    }
    pub(crate) fn session(&mut self) -> Result<SessionInfo, MessageError> {
        Ok(SessionInfo {
            id: self.string("session id")?,
            name: self.string("session name")?,
            node: self.string("session node")?,
            behavior: match self.u8()? {
                0 => SessionBehavior::Release,
                1 => SessionBehavior::Delete,
                tag => {
                    return Err(MessageError::UnknownTag {
                        what: "session behavior",
                        tag,
                    })
                }
            },
            ttl_ms: self.u64()?,
            lock_delay_ms: self.u64()?,
            node_checks: self.strings("session checks")?,
            service_checks: self.strings("session service checks")?,
            create_index: self.u64()?,
        })
    }
    pub(crate) fn session_query(&mut self) -> Result<SessionQuery, MessageError> {
        Ok(match self.u8()? {
            1 => SessionQuery::Info {
                id: self.string("session id")?,
            },
            2 => SessionQuery::Node {
                node: self.string("node name")?,
            },
            3 => SessionQuery::List,
            tag => {
                return Err(MessageError::UnknownTag {
                    what: "session query",
                    tag,
                })
            }
        })
    }
}

// ---- items on their own ---------------------------------------------------------------

/// Writes catalog items back to back in this module's encoding. The server's Raft log
/// entries and snapshot image are made of these, so the log, the image and the wire share
/// one codec.
pub struct ItemWriter<'a>(W<'a>);

impl<'a> ItemWriter<'a> {
    pub fn new(out: &'a mut bytes::BytesMut) -> ItemWriter<'a> {
        ItemWriter(W(out))
    }
    pub fn u8(&mut self, v: u8) {
        self.0.u8(v)
    }
    pub fn u64(&mut self, v: u64) {
        self.0.u64(v)
    }
    pub fn count(&mut self, n: usize) {
        self.0.count(n)
    }
    pub fn string(&mut self, s: &str) {
        self.0.string(s)
    }
    pub fn opt_string(&mut self, s: Option<&str>) {
        self.0.opt_bytes(s.map(str::as_bytes))
    }
    pub fn node(&mut self, n: &Node) {
        self.0.node(n)
    }
    pub fn service(&mut self, s: &Service) {
        self.0.service(s)
    }
    pub fn check(&mut self, c: &Check) {
        self.0.check(c)
    }
    pub fn registration(&mut self, r: &Registration) {
        self.0.registration(r)
    }
}

/// Reads what an [`ItemWriter`] wrote. Malformed input is a [`MessageError`], never a
/// panic; strings and lists are held to `limits`.
pub struct ItemReader<'a>(R<'a>);

impl<'a> ItemReader<'a> {
    pub fn new(data: &'a bytes::Bytes, limits: &'a super::message::Limits) -> ItemReader<'a> {
        ItemReader(R::new(data, limits))
    }
    pub fn u8(&mut self) -> Result<u8, MessageError> {
        self.0.u8()
    }
    pub fn u64(&mut self) -> Result<u64, MessageError> {
        self.0.u64()
    }
    pub fn count(&mut self, what: &'static str) -> Result<usize, MessageError> {
        self.0.count(what)
    }
    pub fn string(&mut self, what: &'static str) -> Result<String, MessageError> {
        self.0.string(what)
    }
    pub fn opt_string(&mut self, what: &'static str) -> Result<Option<String>, MessageError> {
        self.0.opt(|r| r.string(what))
    }
    pub fn node(&mut self) -> Result<Node, MessageError> {
        self.0.node()
    }
    pub fn service(&mut self) -> Result<Service, MessageError> {
        self.0.service()
    }
    pub fn check(&mut self) -> Result<Check, MessageError> {
        self.0.check()
    }
    pub fn registration(&mut self) -> Result<Registration, MessageError> {
        self.0.registration()
    }
    /// Every byte was read.
    pub fn end(&self) -> Result<(), MessageError> {
        self.0.end()
    }
}
