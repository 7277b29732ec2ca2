//! Cairn's openraft type configuration and the binary form of its log entries.
//!
//! The committed leader id is the term alone (`leader_id_std`): a segment-log record
//! carries term and index, and everything else of an entry goes into its payload:
//!
//! ```text
//! byte 0   payload version (1)
//! byte 1   kind: 0 blank, 1 a KV command (kv::codec), 2 membership,
//!          3 a catalog command (catalog::codec)
//! membership: u32 config count, each: u32 voter count + u64 ids;
//!             u32 node count, each: u64 id + u32 length + address bytes
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use openraft::impls::leader_id_std::LeaderId;
use openraft::impls::{BasicNode, EntryPayload};
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::Membership;

use super::rt::GlommioRuntime;
use crate::catalog::{CatalogCommand, CatalogError};
use crate::kv::{KvCommand, KvOutcome};

/// A write proposed to Raft: to the KV store (with sessions) or to the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Kv(KvCommand),
    Catalog(CatalogCommand),
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Kv(c) => write!(f, "{c:?}"),
            Command::Catalog(c) => write!(f, "{c:?}"),
        }
    }
}

/// A [`Command`] with its log payload, encoded once: the leader appends the same bytes
/// to its log and sends them to every follower, and a follower keeps the bytes it
/// received (before, an entry was encoded again for the log and for each follower, each
/// time into a buffer grown by reallocation).
#[derive(Clone, PartialEq, Eq)]
pub struct Proposal {
    cmd: Command,
    /// [`encode_payload`]'s bytes for this command.
    payload: Bytes,
}

impl Proposal {
    pub fn new(cmd: Command) -> Proposal {
        let payload = match &cmd {
            Command::Kv(c) => {
                let mut b = BytesMut::with_capacity(2 + c.encoded_len_hint());
                b.put_u8(PAYLOAD_VERSION);
                b.put_u8(1);
                c.encode_into(&mut b);
                b.freeze()
            }
            Command::Catalog(c) => {
                let c = c.encode();
                let mut b = BytesMut::with_capacity(2 + c.len());
                b.put_u8(PAYLOAD_VERSION);
                b.put_u8(3);
                b.put_slice(&c);
                b.freeze()
            }
        };
        Proposal { cmd, payload }
    }

    pub fn command(&self) -> &Command {
        &self.cmd
    }

    pub fn into_command(self) -> Command {
        self.cmd
    }

    /// The size of the entry's payload in the log.
    pub fn encoded_len(&self) -> usize {
        self.payload.len()
    }
}

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.cmd, f)
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.cmd, f)
    }
}

/// What applying a [`Command`] returned (blank and membership entries return `None`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Outcome {
    #[default]
    None,
    Kv(KvOutcome),
    /// The catalog refused the write (nothing changed) or applied it.
    Catalog(Result<(), CatalogError>),
}

openraft::declare_raft_types!(
    /// Cairn's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = Outcome,
        NodeId = u64,
        Node = BasicNode,
        Term = u64,
        LeaderId = LeaderId<u64, u64>,
        AsyncRuntime = GlommioRuntime,
);

pub type Entry = EntryOf<TypeConfig>;
pub type RaftLogId = LogIdOf<TypeConfig>;
pub type Vote = VoteOf<TypeConfig>;

const PAYLOAD_VERSION: u8 = 1;

/// Encodes an entry's payload for the segment log.
pub fn encode_payload(p: &EntryPayload<Proposal, u64, BasicNode>) -> Bytes {
    let mut b = BytesMut::with_capacity(32);
    b.put_u8(PAYLOAD_VERSION);
    match p {
        EntryPayload::Blank => b.put_u8(0),
        // Encoded when it was made (no copy).
        EntryPayload::Normal(p) => return p.payload.clone(),
        EntryPayload::Membership(m) => {
            b.put_u8(2);
            let configs = m.get_joint_config();
            b.put_u32_le(configs.len() as u32);
            for c in configs {
                b.put_u32_le(c.len() as u32);
                for id in c {
                    b.put_u64_le(*id);
                }
            }
            let nodes: Vec<(&u64, &BasicNode)> = m.nodes().collect();
            b.put_u32_le(nodes.len() as u32);
            for (id, n) in nodes {
                b.put_u64_le(*id);
                b.put_u32_le(n.addr.len() as u32);
                b.put_slice(n.addr.as_bytes());
            }
        }
    }
    b.freeze()
}

fn bad(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

/// A decoded command with the bytes it came from, kept for the log (a follower stores
/// what it received as it was).
fn normal(cmd: Command, data: &Bytes) -> EntryPayload<Proposal, u64, BasicNode> {
    EntryPayload::Normal(Proposal {
        cmd,
        payload: data.clone(),
    })
}

/// Decodes a payload written by [`encode_payload`].
pub fn decode_payload(data: &Bytes) -> std::io::Result<EntryPayload<Proposal, u64, BasicNode>> {
    if data.len() < 2 || data[0] != PAYLOAD_VERSION {
        return Err(bad("raft entry payload: unknown version or too short"));
    }
    match data[1] {
        0 => Ok(EntryPayload::Blank),
        1 => KvCommand::decode(&data.slice(2..))
            .map(|c| normal(Command::Kv(c), data))
            .map_err(|e| bad(format!("raft entry payload: {e}"))),
        3 => CatalogCommand::decode(&data.slice(2..))
            .map(|c| normal(Command::Catalog(c), data))
            .map_err(|e| bad(format!("raft entry payload: {e}"))),
        2 => {
            let mut at = 2usize;
            let mut take = |n: usize| -> std::io::Result<&[u8]> {
                if data.len() - at < n {
                    return Err(bad("raft membership payload ends early"));
                }
                let s = &data[at..at + n];
                at += n;
                Ok(s)
            };
            let u32_ = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4"));
            let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8"));
            let nconf = u32_(take(4)?) as usize;
            if nconf > 16 {
                return Err(bad("raft membership payload: too many configs"));
            }
            let mut configs = Vec::with_capacity(nconf);
            for _ in 0..nconf {
                let n = u32_(take(4)?) as usize;
                if n > 1024 {
                    return Err(bad("raft membership payload: too many voters"));
                }
                let mut set = BTreeSet::new();
                for _ in 0..n {
                    set.insert(u64_(take(8)?));
                }
                configs.push(set);
            }
            let nnodes = u32_(take(4)?) as usize;
            if nnodes > 4096 {
                return Err(bad("raft membership payload: too many nodes"));
            }
            let mut nodes = BTreeMap::new();
            for _ in 0..nnodes {
                let id = u64_(take(8)?);
                let len = u32_(take(4)?) as usize;
                let addr = String::from_utf8(take(len)?.to_vec())
                    .map_err(|_| bad("raft membership payload: address is not UTF-8"))?;
                nodes.insert(id, BasicNode { addr });
            }
            Membership::new(configs, nodes)
                .map(EntryPayload::Membership)
                .map_err(|e| bad(format!("raft membership payload: {e}")))
        }
        k => Err(bad(format!("raft entry payload: unknown kind {k}"))),
    }
}
