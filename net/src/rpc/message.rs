//! RPC requests and responses inside frame payloads.
//!
//! Hand-written little-endian encoding: integers as u64/u32, byte strings as u32 length +
//! bytes, optional fields behind a 0/1 byte, enums as a tag byte. Every request carries a
//! datacenter and an ACL token from the first version (empty: local datacenter, anonymous).
//! Decoding borrows keys and values from the frame's `Bytes` (no copy) and enforces
//! [`Limits`]; malformed input is a [`MessageError`], never a panic.

use bytes::{BufMut, Bytes, BytesMut};

use super::catalog::{
    CatalogQuery, CatalogResult, Registration, SessionInfo, SessionQuery, SharedResult,
};

/// Size limits checked on decode (and by servers before acting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest key or prefix. Keys travel in every list result and watch.
    pub max_key: usize,
    /// Largest value, as in Consul.
    pub max_value: usize,
    /// Most operations in one transaction, as in Consul.
    pub max_txn_ops: usize,
    /// Largest datacenter name, token, session id or address.
    pub max_string: usize,
    /// Most entries or keys in one response (a prefix read larger than this is an error
    /// the client can narrow, not a frame that blows the limit).
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key: 8 * 1024,
            max_value: 512 * 1024,
            max_txn_ops: 128,
            max_string: 1024,
            max_items: 1_000_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message ends early at byte {0}")]
    Truncated(usize),
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("{what} of {len} exceeds the limit of {max}")]
    Limit {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0} is not UTF-8")]
    Utf8(&'static str),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Any server, from its local state.
    Stale,
    /// The leader, while its lease holds.
    #[default]
    Default,
    /// The leader, after confirming leadership with a quorum.
    Consistent,
}

/// Options of every read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadOpts {
    pub consistency: Consistency,
    /// Blocking read: answer once the result's index exceeds this (0: answer now).
    pub index: u64,
    /// Longest wait of a blocking read, in milliseconds (servers cap it at 10 minutes).
    pub wait_ms: u64,
}

/// One transaction operation (Consul's KV verbs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Set {
        key: Bytes,
        value: Bytes,
        flags: u64,
    },
    Cas {
        key: Bytes,
        value: Bytes,
        flags: u64,
        index: u64,
    },
    Get {
        key: Bytes,
    },
    GetTree {
        prefix: Bytes,
    },
    CheckIndex {
        key: Bytes,
        index: u64,
    },
    CheckNotExists {
        key: Bytes,
    },
    Delete {
        key: Bytes,
    },
    DeleteCas {
        key: Bytes,
        index: u64,
    },
    DeleteTree {
        prefix: Bytes,
    },
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    KvGet {
        key: Bytes,
        opts: ReadOpts,
    },
    KvList {
        prefix: Bytes,
        keys_only: bool,
        separator: Option<Bytes>,
        opts: ReadOpts,
    },
    KvPut {
        key: Bytes,
        value: Bytes,
        flags: u64,
        /// Check-and-set on ModifyIndex; 0 = only if absent.
        cas: Option<u64>,
        acquire: Option<String>,
        release: Option<String>,
    },
    KvDelete {
        key: Bytes,
        recurse: bool,
        cas: Option<u64>,
    },
    Txn {
        ops: Vec<TxnOp>,
    },
    StatusLeader,
    StatusPeers,
    RaftAddVoter {
        id: u64,
        address: String,
    },
    RaftRemovePeer {
        id: u64,
    },
    RaftTransferLeader {
        to: Option<u64>,
    },
    /// The Raft configuration: every server with its id, address and role.
    RaftConfiguration,
    /// The LAN gossip pool as this agent sees it.
    Members,
    /// This agent's gossip keyring: list, install, use (make primary) or remove a key
    /// (base64, as `cairn keygen` prints).
    Keyring {
        action: KeyringAction,
        key: Option<String>,
    },
    /// Register (create or update) a node, optionally a service, and checks.
    CatalogRegister(Box<Registration>),
    /// Deregister a node (with everything on it), one of its services (with its checks),
    /// or one of its checks.
    CatalogDeregister {
        node: String,
        service_id: Option<String>,
        check_id: Option<String>,
    },
    /// A catalog or health read.
    CatalogRead {
        query: CatalogQuery,
        opts: ReadOpts,
    },
    /// Create a session (the leader picks its id; the answer is the session).
    SessionCreate(SessionInfo),
    /// Destroy a session: its locks are released or their keys deleted.
    SessionDestroy {
        id: String,
    },
    /// Renew a TTL session (the answer is the session; `NotFound` if it is gone).
    SessionRenew {
        id: String,
    },
    /// One session, a node's sessions, or all.
    SessionRead {
        query: SessionQuery,
        opts: ReadOpts,
    },
    /// Agent API (answered by the agent that receives it, never forwarded): register a
    /// service or a check on this agent's node from a Consul-style JSON definition (a
    /// service definition, as `/v1/agent/service/register` takes it, or a check
    /// definition, as `/v1/agent/check/register`).
    AgentRegister {
        kind: AgentKind,
        definition: Bytes,
    },
    /// Agent API: remove a local service (with its checks) or a local check.
    AgentDeregister {
        kind: AgentKind,
        id: String,
    },
    /// Agent API: set a TTL check's status (Consul's check pass/warn/fail/update).
    AgentCheckUpdate {
        id: String,
        status: super::catalog::Status,
        output: String,
    },
    /// Agent API: put the node (`service_id: None`) or one service in maintenance mode, or
    /// take it out.
    AgentMaintenance {
        service_id: Option<String>,
        enable: bool,
        reason: String,
    },
    /// Agent API: this agent's own services (answered as `CatalogResult::NodeServices`)
    /// or checks (`CatalogResult::Checks`), as it knows them, not as the catalog has them.
    AgentLocal {
        kind: AgentKind,
    },
    /// Declare a failed gossip member left (Consul's `force-leave`); the leader then
    /// deregisters it from the catalog.
    ForceLeave {
        node: String,
    },
    /// Join the LAN gossip pool through these gossip addresses (HOST or HOST:PORT; Consul's
    /// `join`). Answered by the agent that receives it, never forwarded.
    Join {
        addresses: Vec<String>,
    },
    /// Leave the LAN gossip pool gracefully and stop (Consul's `leave`), as on SIGTERM.
    /// Answered by the agent that receives it, before it goes.
    Leave,
    /// Server-to-server traffic (Raft messages, cluster formation), opaque to this crate:
    /// `kind` says which message `body` holds; the agent's Raft layer encodes both. It
    /// shares the server port as Consul's Raft traffic shares port 8300.
    Internal {
        kind: u8,
        body: Bytes,
    },
}

impl Op {
    /// The options of a read that takes them (KV, catalog and session reads).
    pub fn read_opts(&self) -> Option<&ReadOpts> {
        match self {
            Op::KvGet { opts, .. }
            | Op::KvList { opts, .. }
            | Op::CatalogRead { opts, .. }
            | Op::SessionRead { opts, .. } => Some(opts),
            _ => None,
        }
    }

    /// A blocking read: it may wait (up to its `wait_ms`, capped by the server) for the
    /// result's index to pass `index`.
    pub fn is_blocking(&self) -> bool {
        self.read_opts().is_some_and(|o| o.index > 0)
    }
}

/// A request: where it goes, who asks, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Target datacenter; empty means the local one.
    pub datacenter: String,
    /// ACL token; empty means anonymous.
    pub token: String,
    pub op: Op,
}

/// One KV entry in a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Bytes,
    pub value: Bytes,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub session: Option<String>,
}

impl Entry {
    /// The entry, borrowed.
    pub fn borrowed(&self) -> EntryRef<'_> {
        EntryRef {
            key: &self.key,
            value: &self.value,
            flags: self.flags,
            create_index: self.create_index,
            modify_index: self.modify_index,
            lock_index: self.lock_index,
            session: self.session.as_deref(),
        }
    }
}

/// One KV entry borrowed from where a server stores it: an answer is encoded from it
/// directly ([`Response::encode_one_entry`]) without building an [`Entry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    pub lock_index: u64,
    pub session: Option<&'a str>,
}

/// Consul's query metadata: X-Consul-Index, X-Consul-KnownLeader, X-Consul-LastContact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    pub index: u64,
    pub known_leader: bool,
    pub last_contact_ms: u64,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    NotLeader = 1,
    NoLeader = 2,
    KeyTooLarge = 3,
    ValueTooLarge = 4,
    TxnTooLarge = 5,
    NoPathToDatacenter = 6,
    PermissionDenied = 7,
    Timeout = 8,
    Invalid = 9,
    Internal = 10,
    InvalidSession = 11,
    Overloaded = 12,
    /// The request could not be carried out now (e.g. the leader could not be reached);
    /// the message says whether it may have taken effect.
    Unavailable = 13,
    /// The thing the request names (a session, ...) does not exist.
    NotFound = 14,
    /// A server-to-server request named another server than the one that answers: the
    /// address now belongs to a different server (one restarted with a new node id, say).
    WrongServer = 15,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
    /// With `NotLeader`: the leader's RPC address, if known, to retry there.
    pub leader: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// A get (0 or 1 entries) or a list.
    Entries {
        entries: Vec<Entry>,
        meta: Meta,
    },
    Keys {
        keys: Vec<Bytes>,
        meta: Meta,
    },
    /// Put, delete, CAS, acquire, release.
    Bool(bool),
    /// A transaction: results, or (op index, reason) for every failed op.
    Txn {
        results: Vec<Entry>,
        errors: Vec<(u32, String)>,
        index: u64,
    },
    Leader(Option<String>),
    Peers(Vec<String>),
    Done,
    Error(RpcError),
    /// The answer to an [`Op::Internal`] request, opaque to this crate.
    Internal(Bytes),
    /// The answer to [`Op::RaftConfiguration`].
    Servers(Vec<RaftServer>),
    /// The answer to [`Op::Members`].
    Members(Vec<MemberInfo>),
    /// The answer to [`Op::Keyring`]: the installed keys, primary first.
    Keyring(Vec<String>),
    /// The answer to [`Op::CatalogRead`].
    Catalog {
        result: CatalogResult,
        meta: Meta,
    },
    /// A [`Response::Catalog`] whose result a server shares between readers (see
    /// [`SharedResult`]); it is the same on the wire and decodes as `Catalog`.
    SharedCatalog {
        result: std::sync::Arc<SharedResult>,
        meta: Meta,
    },
    /// The answer to session operations.
    Sessions {
        sessions: Vec<SessionInfo>,
        meta: Meta,
    },
}

/// What an agent API request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentKind {
    Service,
    Check,
}

/// What [`Op::Keyring`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyringAction {
    List,
    Install,
    Use,
    Remove,
}

/// One member of the gossip pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub name: String,
    /// Its gossip address.
    pub address: String,
    /// alive, suspect, failed or left.
    pub status: String,
    /// server or client.
    pub role: String,
    pub datacenter: String,
    pub tags: Vec<(String, String)>,
}

/// One server in the Raft configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftServer {
    pub id: u64,
    pub address: String,
    pub leader: bool,
    /// A voter (false: a learner still catching up).
    pub voter: bool,
}

// ---- encoding -------------------------------------------------------------------------

pub(crate) struct W<'a>(pub(crate) &'a mut BytesMut);

/// Largest service or check definition (JSON) accepted by the agent API.
pub const MAX_DEFINITION: usize = 256 * 1024;

impl W<'_> {
    pub(crate) fn agent_kind(&mut self, k: AgentKind) {
        self.u8(match k {
            AgentKind::Service => 1,
            AgentKind::Check => 2,
        });
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.put_u64_le(v);
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.0
            .put_u32_le(u32::try_from(b.len()).expect("limited far below 4 GiB"));
        self.0.put_slice(b);
    }
    pub(crate) fn opt_bytes(&mut self, b: Option<&[u8]>) {
        match b {
            Some(b) => {
                self.u8(1);
                self.bytes(b);
            }
            None => self.u8(0),
        }
    }
    pub(crate) fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
            None => self.u8(0),
        }
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(v as u8);
    }
    pub(crate) fn count(&mut self, n: usize) {
        self.0
            .put_u32_le(u32::try_from(n).expect("limited far below 4 billion"));
    }
    pub(crate) fn opts(&mut self, o: &ReadOpts) {
        self.u8(match o.consistency {
            Consistency::Stale => 0,
            Consistency::Default => 1,
            Consistency::Consistent => 2,
        });
        self.u64(o.index);
        self.u64(o.wait_ms);
    }
    pub(crate) fn entry(&mut self, e: &Entry) {
        self.entry_ref(&e.borrowed());
    }
    pub(crate) fn entry_ref(&mut self, e: &EntryRef<'_>) {
        self.bytes(e.key);
        self.bytes(e.value);
        self.u64(e.flags);
        self.u64(e.create_index);
        self.u64(e.modify_index);
        self.u64(e.lock_index);
        self.opt_bytes(e.session.map(str::as_bytes));
    }
    pub(crate) fn meta(&mut self, m: &Meta) {
        self.u64(m.index);
        self.bool(m.known_leader);
        self.u64(m.last_contact_ms);
    }
    pub(crate) fn txn_op(&mut self, op: &TxnOp) {
        match op {
            TxnOp::Set { key, value, flags } => {
                self.u8(1);
                self.bytes(key);
                self.bytes(value);
                self.u64(*flags);
            }
            TxnOp::Cas {
                key,
                value,
                flags,
                index,
            } => {
                self.u8(2);
                self.bytes(key);
                self.bytes(value);
                self.u64(*flags);
                self.u64(*index);
            }
            TxnOp::Get { key } => {
                self.u8(3);
                self.bytes(key);
            }
            TxnOp::GetTree { prefix } => {
                self.u8(4);
                self.bytes(prefix);
            }
            TxnOp::CheckIndex { key, index } => {
                self.u8(5);
                self.bytes(key);
                self.u64(*index);
            }
            TxnOp::CheckNotExists { key } => {
                self.u8(6);
                self.bytes(key);
            }
            TxnOp::Delete { key } => {
                self.u8(7);
                self.bytes(key);
            }
            TxnOp::DeleteCas { key, index } => {
                self.u8(8);
                self.bytes(key);
                self.u64(*index);
            }
            TxnOp::DeleteTree { prefix } => {
                self.u8(9);
                self.bytes(prefix);
            }
        }
    }
}

impl Request {
    pub fn encode(&self, out: &mut BytesMut) {
        let mut w = W(out);
        w.bytes(self.datacenter.as_bytes());
        w.bytes(self.token.as_bytes());
        match &self.op {
            Op::KvGet { key, opts } => {
                w.u8(1);
                w.bytes(key);
                w.opts(opts);
            }
            Op::KvList {
                prefix,
                keys_only,
                separator,
                opts,
            } => {
                w.u8(2);
                w.bytes(prefix);
                w.bool(*keys_only);
                w.opt_bytes(separator.as_deref());
                w.opts(opts);
            }
            Op::KvPut {
                key,
                value,
                flags,
                cas,
                acquire,
                release,
            } => {
                w.u8(3);
                w.bytes(key);
                w.bytes(value);
                w.u64(*flags);
                w.opt_u64(*cas);
                w.opt_bytes(acquire.as_deref().map(str::as_bytes));
                w.opt_bytes(release.as_deref().map(str::as_bytes));
            }
            Op::KvDelete { key, recurse, cas } => {
                w.u8(4);
                w.bytes(key);
                w.bool(*recurse);
                w.opt_u64(*cas);
            }
            Op::Txn { ops } => {
                w.u8(5);
                w.0.put_u32_le(ops.len() as u32);
                for op in ops {
                    w.txn_op(op);
                }
            }
            Op::StatusLeader => w.u8(6),
            Op::StatusPeers => w.u8(7),
            Op::RaftAddVoter { id, address } => {
                w.u8(8);
                w.u64(*id);
                w.bytes(address.as_bytes());
            }
            Op::RaftRemovePeer { id } => {
                w.u8(9);
                w.u64(*id);
            }
            Op::RaftTransferLeader { to } => {
                w.u8(10);
                w.opt_u64(*to);
            }
            Op::RaftConfiguration => w.u8(12),
            Op::Members => w.u8(13),
            Op::Keyring { action, key } => {
                w.u8(14);
                w.u8(match action {
                    KeyringAction::List => 0,
                    KeyringAction::Install => 1,
                    KeyringAction::Use => 2,
                    KeyringAction::Remove => 3,
                });
                w.opt_bytes(key.as_deref().map(str::as_bytes));
            }
            Op::CatalogRegister(r) => {
                w.u8(15);
                w.registration(r);
            }
            Op::CatalogDeregister {
                node,
                service_id,
                check_id,
            } => {
                w.u8(16);
                w.string(node);
                w.opt_bytes(service_id.as_deref().map(str::as_bytes));
                w.opt_bytes(check_id.as_deref().map(str::as_bytes));
            }
            Op::CatalogRead { query, opts } => {
                w.u8(17);
                w.catalog_query(query);
                w.opts(opts);
            }
            Op::SessionCreate(s) => {
                w.u8(18);
                w.session(s);
            }
            Op::SessionDestroy { id } => {
                w.u8(19);
                w.string(id);
            }
            Op::SessionRenew { id } => {
                w.u8(20);
                w.string(id);
            }
            Op::SessionRead { query, opts } => {
                w.u8(21);
                w.session_query(query);
                w.opts(opts);
            }
            Op::AgentRegister { kind, definition } => {
                w.u8(22);
                w.agent_kind(*kind);
                w.bytes(definition);
            }
            Op::AgentDeregister { kind, id } => {
                w.u8(23);
                w.agent_kind(*kind);
                w.string(id);
            }
            Op::AgentCheckUpdate { id, status, output } => {
                w.u8(24);
                w.string(id);
                w.status(*status);
                w.string(output);
            }
            Op::AgentMaintenance {
                service_id,
                enable,
                reason,
            } => {
                w.u8(25);
                w.opt_bytes(service_id.as_deref().map(str::as_bytes));
                w.bool(*enable);
                w.string(reason);
            }
            Op::AgentLocal { kind } => {
                w.u8(26);
                w.agent_kind(*kind);
            }
            Op::ForceLeave { node } => {
                w.u8(27);
                w.string(node);
            }
            Op::Join { addresses } => {
                w.u8(28);
                w.strings(addresses);
            }
            Op::Leave => w.u8(29),
            Op::Internal { kind, body } => {
                w.u8(11);
                w.u8(*kind);
                w.bytes(body);
            }
        }
    }

    /// Whether the encoded request `data` is a blocking read ([`Op::is_blocking`]) that
    /// decodes: a look at its op tag, and a full decode only for the four reads. For the
    /// body of a forwarded request, whose holder sees an opaque `Op::Internal`.
    pub fn is_blocking_read(data: &Bytes, limits: &Limits) -> bool {
        let mut r = R {
            data,
            at: 0,
            limits,
        };
        let tag = r
            .raw("datacenter", limits.max_string)
            .and_then(|_| r.raw("token", limits.max_string))
            .and_then(|_| r.u8());
        matches!(tag, Ok(1 | 2 | 17 | 21))
            && Request::decode(data, limits).is_ok_and(|req| req.op.is_blocking())
    }

    pub fn decode(data: &Bytes, limits: &Limits) -> Result<Request, MessageError> {
        let mut r = R {
            data,
            at: 0,
            limits,
        };
        let datacenter = r.string("datacenter")?;
        let token = r.string("token")?;
        let op = match r.u8()? {
            1 => Op::KvGet {
                key: r.key()?,
                opts: r.opts()?,
            },
            2 => Op::KvList {
                prefix: r.key()?,
                keys_only: r.bool()?,
                separator: r.opt(|r| r.key())?,
                opts: r.opts()?,
            },
            3 => Op::KvPut {
                key: r.key()?,
                value: r.value()?,
                flags: r.u64()?,
                cas: r.opt(|r| r.u64())?,
                acquire: r.opt(|r| r.string("session"))?,
                release: r.opt(|r| r.string("session"))?,
            },
            4 => Op::KvDelete {
                key: r.key()?,
                recurse: r.bool()?,
                cas: r.opt(|r| r.u64())?,
            },
            5 => {
                let n = r.u32()? as usize;
                if n > limits.max_txn_ops {
                    return Err(MessageError::Limit {
                        what: "transaction operations",
                        len: n,
                        max: limits.max_txn_ops,
                    });
                }
                let mut ops = Vec::with_capacity(n);
                for _ in 0..n {
                    ops.push(r.txn_op()?);
                }
                Op::Txn { ops }
            }
            6 => Op::StatusLeader,
            7 => Op::StatusPeers,
            8 => Op::RaftAddVoter {
                id: r.u64()?,
                address: r.string("address")?,
            },
            9 => Op::RaftRemovePeer { id: r.u64()? },
            10 => Op::RaftTransferLeader {
                to: r.opt(|r| r.u64())?,
            },
            12 => Op::RaftConfiguration,
            13 => Op::Members,
            14 => Op::Keyring {
                action: match r.u8()? {
                    0 => KeyringAction::List,
                    1 => KeyringAction::Install,
                    2 => KeyringAction::Use,
                    3 => KeyringAction::Remove,
                    tag => {
                        return Err(MessageError::UnknownTag {
                            what: "keyring action",
                            tag,
                        })
                    }
                },
                key: r.opt(|r| r.string("key"))?,
            },
            15 => Op::CatalogRegister(Box::new(r.registration()?)),
            16 => Op::CatalogDeregister {
                node: r.string("node name")?,
                service_id: r.opt(|r| r.string("service id"))?,
                check_id: r.opt(|r| r.string("check id"))?,
            },
            17 => Op::CatalogRead {
                query: r.catalog_query()?,
                opts: r.opts()?,
            },
            18 => Op::SessionCreate(r.session()?),
            19 => Op::SessionDestroy {
                id: r.string("session id")?,
            },
            20 => Op::SessionRenew {
                id: r.string("session id")?,
            },
            21 => Op::SessionRead {
                query: r.session_query()?,
                opts: r.opts()?,
            },
            22 => Op::AgentRegister {
                kind: r.agent_kind()?,
                definition: r.raw("definition", MAX_DEFINITION)?,
            },
            23 => Op::AgentDeregister {
                kind: r.agent_kind()?,
                id: r.string("id")?,
            },
            24 => Op::AgentCheckUpdate {
                id: r.string("check id")?,
                status: r.status()?,
                output: {
                    let b = r.raw("check output", super::catalog::MAX_OUTPUT)?;
                    String::from_utf8(b.to_vec()).map_err(|_| MessageError::Utf8("check output"))?
                },
            },
            25 => Op::AgentMaintenance {
                service_id: r.opt(|r| r.string("service id"))?,
                enable: r.bool()?,
                reason: r.text("reason")?,
            },
            26 => Op::AgentLocal {
                kind: r.agent_kind()?,
            },
            27 => Op::ForceLeave {
                node: r.string("node name")?,
            },
            28 => Op::Join {
                addresses: r.strings("join address")?,
            },
            29 => Op::Leave,
            11 => Op::Internal {
                kind: r.u8()?,
                body: r.raw("internal message", usize::MAX)?,
            },
            tag => {
                return Err(MessageError::UnknownTag {
                    what: "request",
                    tag,
                })
            }
        };
        r.end()?;
        Ok(Request {
            datacenter,
            token,
            op,
        })
    }
}

impl Response {
    /// The answer as a reader in this process uses it: a [`Response::SharedCatalog`]
    /// becomes a plain [`Response::Catalog`] (its result moved out, or cloned if others
    /// still share it); anything else is returned as it is.
    pub fn into_owned(self) -> Response {
        match self {
            Response::SharedCatalog { result, meta } => Response::Catalog {
                result: SharedResult::into_result(result),
                meta,
            },
            other => other,
        }
    }

    /// Encodes the same bytes as a [`Response::Entries`] holding `entry` (or nothing),
    /// from a borrowed entry.
    pub fn encode_one_entry(out: &mut BytesMut, entry: Option<&EntryRef<'_>>, meta: &Meta) {
        let mut w = W(out);
        w.u8(1);
        w.meta(meta);
        w.0.put_u32_le(u32::from(entry.is_some()));
        if let Some(e) = entry {
            w.entry_ref(e);
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let mut w = W(out);
        match self {
            Response::Entries { entries, meta } => {
                w.u8(1);
                w.meta(meta);
                w.0.put_u32_le(entries.len() as u32);
                for e in entries {
                    w.entry(e);
                }
            }
            Response::Keys { keys, meta } => {
                w.u8(2);
                w.meta(meta);
                w.0.put_u32_le(keys.len() as u32);
                for k in keys {
                    w.bytes(k);
                }
            }
            Response::Bool(b) => {
                w.u8(3);
                w.bool(*b);
            }
            Response::Txn {
                results,
                errors,
                index,
            } => {
                w.u8(4);
                w.u64(*index);
                w.0.put_u32_le(results.len() as u32);
                for e in results {
                    w.entry(e);
                }
                w.0.put_u32_le(errors.len() as u32);
                for (i, why) in errors {
                    w.0.put_u32_le(*i);
                    w.bytes(why.as_bytes());
                }
            }
            Response::Leader(l) => {
                w.u8(5);
                w.opt_bytes(l.as_deref().map(str::as_bytes));
            }
            Response::Peers(p) => {
                w.u8(6);
                w.0.put_u32_le(p.len() as u32);
                for a in p {
                    w.bytes(a.as_bytes());
                }
            }
            Response::Done => w.u8(7),
            Response::Error(e) => {
                w.u8(8);
                w.u8(e.code as u8);
                w.bytes(e.message.as_bytes());
                w.opt_bytes(e.leader.as_deref().map(str::as_bytes));
            }
            Response::Internal(body) => {
                w.u8(9);
                w.bytes(body);
            }
            Response::Catalog { result, meta } => {
                w.u8(13);
                w.meta(meta);
                w.catalog_result(result);
            }
            Response::SharedCatalog { result, meta } => {
                w.u8(13);
                w.meta(meta);
                w.0.put_slice(result.encoded());
            }
            Response::Sessions { sessions, meta } => {
                w.u8(14);
                w.meta(meta);
                w.count(sessions.len());
                for s in sessions {
                    w.session(s);
                }
            }
            Response::Keyring(keys) => {
                w.u8(12);
                w.0.put_u32_le(keys.len() as u32);
                for k in keys {
                    w.bytes(k.as_bytes());
                }
            }
            Response::Members(members) => {
                w.u8(11);
                w.0.put_u32_le(members.len() as u32);
                for m in members {
                    for s in [&m.name, &m.address, &m.status, &m.role, &m.datacenter] {
                        w.bytes(s.as_bytes());
                    }
                    w.0.put_u32_le(m.tags.len() as u32);
                    for (k, v) in &m.tags {
                        w.bytes(k.as_bytes());
                        w.bytes(v.as_bytes());
                    }
                }
            }
            Response::Servers(servers) => {
                w.u8(10);
                w.0.put_u32_le(servers.len() as u32);
                for s in servers {
                    w.u64(s.id);
                    w.bytes(s.address.as_bytes());
                    w.bool(s.leader);
                    w.bool(s.voter);
                }
            }
        }
    }

    pub fn decode(data: &Bytes, limits: &Limits) -> Result<Response, MessageError> {
        let mut r = R {
            data,
            at: 0,
            limits,
        };
        let resp = match r.u8()? {
            1 => {
                let meta = r.meta()?;
                let n = r.count("entries")?;
                let mut entries = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    entries.push(r.entry()?);
                }
                Response::Entries { entries, meta }
            }
            2 => {
                let meta = r.meta()?;
                let n = r.count("keys")?;
                let mut keys = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    keys.push(r.key()?);
                }
                Response::Keys { keys, meta }
            }
            3 => Response::Bool(r.bool()?),
            4 => {
                let index = r.u64()?;
                let n = r.count("txn results")?;
                let mut results = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    results.push(r.entry()?);
                }
                let n = r.count("txn errors")?;
                let mut errors = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    errors.push((r.u32()?, r.text("txn error")?));
                }
                Response::Txn {
                    results,
                    errors,
                    index,
                }
            }
            5 => Response::Leader(r.opt(|r| r.string("leader"))?),
            6 => {
                let n = r.count("peers")?;
                let mut p = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    p.push(r.string("peer")?);
                }
                Response::Peers(p)
            }
            7 => Response::Done,
            9 => Response::Internal(r.raw("internal message", usize::MAX)?),
            10 => {
                let n = r.count("servers")?;
                let mut servers = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    servers.push(RaftServer {
                        id: r.u64()?,
                        address: r.string("address")?,
                        leader: r.bool()?,
                        voter: r.bool()?,
                    });
                }
                Response::Servers(servers)
            }
            11 => {
                let n = r.count("members")?;
                let mut members = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    let name = r.string("member name")?;
                    let address = r.string("member address")?;
                    let status = r.string("member status")?;
                    let role = r.string("member role")?;
                    let datacenter = r.string("member datacenter")?;
                    let t = r.count("member tags")?;
                    let mut tags = Vec::with_capacity(t.min(64));
                    for _ in 0..t {
                        tags.push((r.string("tag")?, r.string("tag value")?));
                    }
                    members.push(MemberInfo {
                        name,
                        address,
                        status,
                        role,
                        datacenter,
                        tags,
                    });
                }
                Response::Members(members)
            }
            13 => {
                let meta = r.meta()?;
                Response::Catalog {
                    result: r.catalog_result()?,
                    meta,
                }
            }
            14 => {
                let meta = r.meta()?;
                let n = r.count("sessions")?;
                let mut sessions = Vec::with_capacity(n.min(1024));
                for _ in 0..n {
                    sessions.push(r.session()?);
                }
                Response::Sessions { sessions, meta }
            }
            12 => {
                let n = r.count("keys")?;
                let mut keys = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    keys.push(r.string("key")?);
                }
                Response::Keyring(keys)
            }
            8 => {
                let code = match r.u8()? {
                    1 => ErrorCode::NotLeader,
                    2 => ErrorCode::NoLeader,
                    3 => ErrorCode::KeyTooLarge,
                    4 => ErrorCode::ValueTooLarge,
                    5 => ErrorCode::TxnTooLarge,
                    6 => ErrorCode::NoPathToDatacenter,
                    7 => ErrorCode::PermissionDenied,
                    8 => ErrorCode::Timeout,
                    9 => ErrorCode::Invalid,
                    10 => ErrorCode::Internal,
                    11 => ErrorCode::InvalidSession,
                    12 => ErrorCode::Overloaded,
                    13 => ErrorCode::Unavailable,
                    14 => ErrorCode::NotFound,
                    15 => ErrorCode::WrongServer,
                    tag => {
                        return Err(MessageError::UnknownTag {
                            what: "error code",
                            tag,
                        })
                    }
                };
                Response::Error(RpcError {
                    code,
                    message: r.text("error message")?,
                    leader: r.opt(|r| r.string("leader"))?,
                })
            }
            tag => {
                return Err(MessageError::UnknownTag {
                    what: "response",
                    tag,
                })
            }
        };
        r.end()?;
        Ok(resp)
    }
}

// ---- decoding -------------------------------------------------------------------------

pub(crate) struct R<'a> {
    data: &'a Bytes,
    at: usize,
    limits: &'a Limits,
}

impl<'a> R<'a> {
    pub(crate) fn new(data: &'a Bytes, limits: &'a Limits) -> R<'a> {
        R {
            data,
            at: 0,
            limits,
        }
    }
}

impl R<'_> {
    pub(crate) fn agent_kind(&mut self) -> Result<AgentKind, MessageError> {
        match self.u8()? {
            1 => Ok(AgentKind::Service),
            2 => Ok(AgentKind::Check),
            tag => Err(MessageError::UnknownTag {
                what: "agent kind",
                tag,
            }),
        }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, MessageError> {
        if n > self.data.len() - self.at {
            return Err(MessageError::Truncated(self.at));
        }
        let r = self.at..self.at + n;
        self.at += n;
        Ok(r)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, MessageError> {
        let r = self.take(1)?;
        Ok(self.data[r.start])
    }
    pub(crate) fn bool(&mut self) -> Result<bool, MessageError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(MessageError::UnknownTag { what: "bool", tag }),
        }
    }
    pub(crate) fn u32(&mut self) -> Result<u32, MessageError> {
        let r = self.take(4)?;
        Ok(u32::from_le_bytes(self.data[r].try_into().expect("4")))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, MessageError> {
        let r = self.take(8)?;
        Ok(u64::from_le_bytes(self.data[r].try_into().expect("8")))
    }
    pub(crate) fn raw(&mut self, what: &'static str, max: usize) -> Result<Bytes, MessageError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(MessageError::Limit { what, len: n, max });
        }
        let r = self.take(n)?;
        Ok(self.data.slice(r))
    }
    pub(crate) fn key(&mut self) -> Result<Bytes, MessageError> {
        self.raw("key", self.limits.max_key)
    }
    pub(crate) fn value(&mut self) -> Result<Bytes, MessageError> {
        self.raw("value", self.limits.max_value)
    }
    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, MessageError> {
        let b = self.raw(what, self.limits.max_string)?;
        String::from_utf8(b.to_vec()).map_err(|_| MessageError::Utf8(what))
    }
    /// Free text (error messages) may be longer than a name, but not unbounded.
    pub(crate) fn text(&mut self, what: &'static str) -> Result<String, MessageError> {
        let b = self.raw(what, 64 * 1024)?;
        String::from_utf8(b.to_vec()).map_err(|_| MessageError::Utf8(what))
    }
    pub(crate) fn count(&mut self, what: &'static str) -> Result<usize, MessageError> {
        let n = self.u32()? as usize;
        if n > self.limits.max_items {
            return Err(MessageError::Limit {
                what,
                len: n,
                max: self.limits.max_items,
            });
        }
        Ok(n)
    }
    pub(crate) fn opt<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, MessageError>,
    ) -> Result<Option<T>, MessageError> {
        if self.bool()? {
            Ok(Some(f(self)?))
        } else {
            Ok(None)
        }
    }
    pub(crate) fn opts(&mut self) -> Result<ReadOpts, MessageError> {
        let consistency = match self.u8()? {
            0 => Consistency::Stale,
            1 => Consistency::Default,
            2 => Consistency::Consistent,
            tag => {
                return Err(MessageError::UnknownTag {
                    what: "consistency",
                    tag,
                })
            }
        };
        Ok(ReadOpts {
            consistency,
            index: self.u64()?,
            wait_ms: self.u64()?,
        })
    }
    pub(crate) fn entry(&mut self) -> Result<Entry, MessageError> {
        Ok(Entry {
            key: self.key()?,
            value: self.value()?,
            flags: self.u64()?,
            create_index: self.u64()?,
            modify_index: self.u64()?,
            lock_index: self.u64()?,
            session: self.opt(|r| r.string("session"))?,
        })
    }
    pub(crate) fn meta(&mut self) -> Result<Meta, MessageError> {
        Ok(Meta {
            index: self.u64()?,
            known_leader: self.bool()?,
            last_contact_ms: self.u64()?,
        })
    }
    pub(crate) fn txn_op(&mut self) -> Result<TxnOp, MessageError> {
        Ok(match self.u8()? {
            1 => TxnOp::Set {
                key: self.key()?,
                value: self.value()?,
                flags: self.u64()?,
            },
            2 => TxnOp::Cas {
                key: self.key()?,
                value: self.value()?,
                flags: self.u64()?,
                index: self.u64()?,
            },
            3 => TxnOp::Get { key: self.key()? },
            4 => TxnOp::GetTree {
                prefix: self.key()?,
            },
            5 => TxnOp::CheckIndex {
                key: self.key()?,
                index: self.u64()?,
            },
            6 => TxnOp::CheckNotExists { key: self.key()? },
            7 => TxnOp::Delete { key: self.key()? },
            8 => TxnOp::DeleteCas {
                key: self.key()?,
                index: self.u64()?,
            },
            9 => TxnOp::DeleteTree {
                prefix: self.key()?,
            },
            tag => {
                return Err(MessageError::UnknownTag {
                    what: "txn op",
                    tag,
                })
            }
        })
    }
    pub(crate) fn end(&self) -> Result<(), MessageError> {
        if self.at != self.data.len() {
            return Err(MessageError::Trailing(self.data.len() - self.at));
        }
        Ok(())
    }
}
