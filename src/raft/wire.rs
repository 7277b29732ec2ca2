//! The binary form of server-to-server messages: openraft's RPCs and cluster formation.
//!
//! They travel inside [`Op::Internal`](cairn_net::rpc::message::Op::Internal) requests on
//! the server port, `kind` naming the message (see [`Kind`]). Encoding is little-endian,
//! hand-written like the rest of the protocol: a vote is `term u64, voted_for u64,
//! committed u8`; a log id is `term u64, index u64`; an optional value has a 0/1 byte
//! before it; an entry is its log id and its payload as the segment log stores it
//! ([`encode_payload`]). Decoding checks every length against the bytes left, so a
//! damaged or hostile message is an error, never a panic.
//!
//! The body of each of openraft's RPCs (see [`Kind::is_raft`]) starts with the node id of
//! the server it is meant for, `target u64` ([`address`], [`split_target`]): a server
//! refuses one meant for another id, so a leader that still sends to an address now
//! taken by a different server (say one restarted with a fresh data directory) cannot
//! leave its vote or log there.

use bytes::{BufMut, Bytes, BytesMut};
use openraft::impls::leader_id_std::LeaderId;
use openraft::impls::EntryPayload;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    VoteRequest, VoteResponse,
};
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::StoredMembership;

use super::types::{decode_payload, encode_payload, Entry, RaftLogId, TypeConfig, Vote};

/// Which message an internal request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    AppendEntries = 1,
    Vote = 2,
    /// A piece of a snapshot file; the last piece is followed by [`Kind::InstallSnapshot`].
    SnapshotChunk = 3,
    InstallSnapshot = 4,
    TransferLeader = 5,
    /// "Who are you?": a server's id, address and whether it belongs to a cluster yet.
    Hello = 6,
    /// "Add me": a server that found an existing cluster asks its leader to add it.
    Join = 7,
    PreVote = 8,
    /// A client request a follower forwards to the leader (the body is the request as
    /// encoded on the wire). The leader answers it itself or says it is not the leader;
    /// it never forwards again, so a request cannot bounce between servers.
    Forward = 9,
}

impl Kind {
    pub fn from_u8(k: u8) -> Option<Kind> {
        Some(match k {
            1 => Kind::AppendEntries,
            2 => Kind::Vote,
            3 => Kind::SnapshotChunk,
            4 => Kind::InstallSnapshot,
            5 => Kind::TransferLeader,
            6 => Kind::Hello,
            7 => Kind::Join,
            8 => Kind::PreVote,
            9 => Kind::Forward,
            _ => return None,
        })
    }

    /// One of openraft's RPCs, whose body names its target server ([`address`]).
    pub fn is_raft(self) -> bool {
        matches!(
            self,
            Kind::AppendEntries
                | Kind::Vote
                | Kind::PreVote
                | Kind::SnapshotChunk
                | Kind::InstallSnapshot
                | Kind::TransferLeader
        )
    }
}

/// A server's answer to [`Kind::Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub id: u64,
    /// Its server RPC address.
    pub addr: String,
    /// It has a Raft log or vote: it belongs to a cluster and must never bootstrap again.
    pub initialized: bool,
    /// The leader it knows of, with the leader's address.
    pub leader: Option<(u64, String)>,
}

/// A [`Kind::Join`] request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub id: u64,
    pub addr: String,
}

/// One piece of a snapshot file in flight to a follower.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// The sender's snapshot id: pieces of different transfers never mix.
    pub snapshot_id: String,
    pub offset: u64,
    pub total: u64,
    pub data: Bytes,
}

/// The end of a snapshot transfer: install what was received.
#[derive(Debug, Clone)]
pub struct InstallSnapshot {
    pub vote: Vote,
    pub snapshot_id: String,
    pub meta: SnapshotMetaOf<TypeConfig>,
}

#[derive(Debug, thiserror::Error)]
#[error("bad server message: {0}")]
pub struct WireError(pub String);

fn bad(why: impl Into<String>) -> WireError {
    WireError(why.into())
}

// ---- writer ---------------------------------------------------------------------------

struct W(BytesMut);

impl W {
    fn new() -> W {
        W(BytesMut::with_capacity(64))
    }
    fn u8(&mut self, v: u8) {
        self.0.put_u8(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.put_u64_le(v);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0
            .put_u32_le(u32::try_from(b.len()).expect("server messages stay far below 4 GiB"));
        self.0.put_slice(b);
    }
    fn vote(&mut self, v: &Vote) {
        self.u64(v.leader_id.term);
        self.u64(v.leader_id.voted_for);
        self.u8(v.committed as u8);
    }
    fn log_id(&mut self, id: &Option<RaftLogId>) {
        match id {
            Some(id) => {
                self.u8(1);
                self.u64(id.leader_id.term);
                self.u64(id.index);
            }
            None => self.u8(0),
        }
    }
    fn done(self) -> Bytes {
        self.0.freeze()
    }
}

// ---- reader ---------------------------------------------------------------------------

struct R<'a> {
    data: &'a Bytes,
    at: usize,
}

impl<'a> R<'a> {
    fn new(data: &'a Bytes) -> R<'a> {
        R { data, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, WireError> {
        if n > self.data.len() - self.at {
            return Err(bad(format!("message ends early at byte {}", self.at)));
        }
        let r = self.at..self.at + n;
        self.at += n;
        Ok(r)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        let r = self.take(1)?;
        Ok(self.data[r.start])
    }
    fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            t => Err(bad(format!("bad bool {t}"))),
        }
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let r = self.take(4)?;
        Ok(u32::from_le_bytes(self.data[r].try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let r = self.take(8)?;
        Ok(u64::from_le_bytes(self.data[r].try_into().expect("8")))
    }
    fn bytes(&mut self) -> Result<Bytes, WireError> {
        let n = self.u32()? as usize;
        let r = self.take(n)?;
        Ok(self.data.slice(r))
    }
    fn string(&mut self) -> Result<String, WireError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| bad("string is not UTF-8"))
    }
    fn vote(&mut self) -> Result<Vote, WireError> {
        let term = self.u64()?;
        let voted_for = self.u64()?;
        let committed = self.bool()?;
        Ok(Vote {
            leader_id: LeaderId { term, voted_for },
            committed,
        })
    }
    fn log_id(&mut self) -> Result<Option<RaftLogId>, WireError> {
        Ok(match self.bool()? {
            true => {
                let term = self.u64()?;
                Some(RaftLogId::new_term_index(term, self.u64()?))
            }
            false => None,
        })
    }
    fn end(&self) -> Result<(), WireError> {
        match self.data.len() - self.at {
            0 => Ok(()),
            n => Err(bad(format!("{n} trailing bytes"))),
        }
    }
}

// ---- messages -------------------------------------------------------------------------

/// A Raft RPC's body for the server with node id `target`: the id, then the message.
pub fn address(target: u64, message: &[u8]) -> Bytes {
    let mut w = W(BytesMut::with_capacity(8 + message.len()));
    w.u64(target);
    w.0.put_slice(message);
    w.done()
}

/// The node id a Raft RPC's body is meant for, and the message after it.
pub fn split_target(b: &Bytes) -> Result<(u64, Bytes), WireError> {
    let mut r = R::new(b);
    let target = r.u64()?;
    Ok((target, b.slice(r.at..)))
}

/// Encodes an append request whose entry payloads are already encoded (the network
/// encodes them once, to split a batch under the frame limit by their sizes).
pub fn encode_append_parts(
    vote: &Vote,
    prev_log_id: &Option<RaftLogId>,
    leader_commit: &Option<RaftLogId>,
    entries: &[(RaftLogId, Bytes)],
) -> Bytes {
    let mut w = W::new();
    w.vote(vote);
    w.log_id(prev_log_id);
    w.log_id(leader_commit);
    w.0.put_u32_le(entries.len() as u32);
    for (id, payload) in entries {
        w.log_id(&Some(*id));
        w.bytes(payload);
    }
    w.done()
}

pub fn encode_append(req: &AppendEntriesRequest<TypeConfig>) -> Bytes {
    let parts: Vec<(RaftLogId, Bytes)> = req
        .entries
        .iter()
        .map(|e| (e.log_id, encode_payload(&e.payload)))
        .collect();
    encode_append_parts(&req.vote, &req.prev_log_id, &req.leader_commit, &parts)
}

pub fn decode_append(b: &Bytes) -> Result<AppendEntriesRequest<TypeConfig>, WireError> {
    let mut r = R::new(b);
    let vote = r.vote()?;
    let prev_log_id = r.log_id()?;
    let leader_commit = r.log_id()?;
    let n = r.u32()? as usize;
    // Every entry takes at least 21 bytes: a count beyond that is a lie.
    if n > (b.len() - r.at) / 21 {
        return Err(bad(format!("{n} entries cannot fit in the message")));
    }
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let log_id = r.log_id()?.ok_or_else(|| bad("entry without a log id"))?;
        let payload = decode_payload(&r.bytes()?).map_err(|e| bad(e.to_string()))?;
        entries.push(Entry { log_id, payload });
    }
    r.end()?;
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id,
        entries,
        leader_commit,
    })
}

pub fn encode_append_response(resp: &AppendEntriesResponse<TypeConfig>) -> Bytes {
    let mut w = W::new();
    match resp {
        AppendEntriesResponse::Success => w.u8(1),
        AppendEntriesResponse::PartialSuccess(id) => {
            w.u8(2);
            w.log_id(id);
        }
        AppendEntriesResponse::Conflict => w.u8(3),
        AppendEntriesResponse::HigherVote(v) => {
            w.u8(4);
            w.vote(v);
        }
    }
    w.done()
}

pub fn decode_append_response(b: &Bytes) -> Result<AppendEntriesResponse<TypeConfig>, WireError> {
    let mut r = R::new(b);
    let resp = match r.u8()? {
        1 => AppendEntriesResponse::Success,
        2 => AppendEntriesResponse::PartialSuccess(r.log_id()?),
        3 => AppendEntriesResponse::Conflict,
        4 => AppendEntriesResponse::HigherVote(r.vote()?),
        t => return Err(bad(format!("unknown append response {t}"))),
    };
    r.end()?;
    Ok(resp)
}

pub fn encode_vote(req: &VoteRequest<TypeConfig>) -> Bytes {
    let mut w = W::new();
    w.vote(&req.vote);
    w.log_id(&req.last_log_id);
    w.u8(req.leadership_transfer as u8);
    w.done()
}

pub fn decode_vote(b: &Bytes) -> Result<VoteRequest<TypeConfig>, WireError> {
    let mut r = R::new(b);
    let vote = r.vote()?;
    let last_log_id = r.log_id()?;
    let leadership_transfer = r.bool()?;
    r.end()?;
    let mut req = VoteRequest::new(vote, last_log_id);
    req.leadership_transfer = leadership_transfer;
    Ok(req)
}

pub fn encode_vote_response(resp: &VoteResponse<TypeConfig>) -> Bytes {
    let mut w = W::new();
    w.vote(&resp.vote);
    w.u8(resp.vote_granted as u8);
    w.log_id(&resp.last_log_id);
    w.done()
}

pub fn decode_vote_response(b: &Bytes) -> Result<VoteResponse<TypeConfig>, WireError> {
    let mut r = R::new(b);
    let vote = r.vote()?;
    let granted = r.bool()?;
    let last_log_id = r.log_id()?;
    r.end()?;
    Ok(VoteResponse::new(vote, last_log_id, granted))
}

pub fn encode_chunk(c: &SnapshotChunk) -> Bytes {
    let mut w = W::new();
    w.bytes(c.snapshot_id.as_bytes());
    w.u64(c.offset);
    w.u64(c.total);
    w.bytes(&c.data);
    w.done()
}

pub fn decode_chunk(b: &Bytes) -> Result<SnapshotChunk, WireError> {
    let mut r = R::new(b);
    let c = SnapshotChunk {
        snapshot_id: r.string()?,
        offset: r.u64()?,
        total: r.u64()?,
        data: r.bytes()?,
    };
    r.end()?;
    Ok(c)
}

pub fn encode_install(m: &InstallSnapshot) -> Bytes {
    let mut w = W::new();
    w.vote(&m.vote);
    w.bytes(m.snapshot_id.as_bytes());
    w.log_id(&m.meta.last_log_id);
    w.log_id(m.meta.last_membership.log_id());
    w.bytes(&encode_payload(&EntryPayload::Membership(
        m.meta.last_membership.membership().clone(),
    )));
    w.done()
}

pub fn decode_install(b: &Bytes) -> Result<InstallSnapshot, WireError> {
    let mut r = R::new(b);
    let vote = r.vote()?;
    let snapshot_id = r.string()?;
    let last_log_id = r.log_id()?;
    let membership_log_id = r.log_id()?;
    let membership = match decode_payload(&r.bytes()?).map_err(|e| bad(e.to_string()))? {
        EntryPayload::Membership(m) => m,
        _ => return Err(bad("snapshot membership is not a membership")),
    };
    r.end()?;
    Ok(InstallSnapshot {
        vote,
        snapshot_id,
        meta: SnapshotMetaOf::<TypeConfig> {
            last_log_id,
            last_membership: StoredMembership::new(membership_log_id, membership),
        },
    })
}

pub fn encode_snapshot_response(resp: &SnapshotResponse<TypeConfig>) -> Bytes {
    let mut w = W::new();
    w.vote(&resp.vote);
    w.done()
}

pub fn decode_snapshot_response(b: &Bytes) -> Result<SnapshotResponse<TypeConfig>, WireError> {
    let mut r = R::new(b);
    let vote = r.vote()?;
    r.end()?;
    Ok(SnapshotResponse::new(vote))
}

pub fn encode_transfer(req: &TransferLeaderRequest<TypeConfig>) -> Bytes {
    let mut w = W::new();
    w.vote(req.from_leader());
    w.u64(*req.to_node_id());
    w.log_id(&req.last_log_id().copied());
    w.done()
}

pub fn decode_transfer(b: &Bytes) -> Result<TransferLeaderRequest<TypeConfig>, WireError> {
    let mut r = R::new(b);
    let from = r.vote()?;
    let to = r.u64()?;
    let last = r.log_id()?;
    r.end()?;
    Ok(TransferLeaderRequest::new(from, to, last))
}

pub fn encode_hello(h: &Hello) -> Bytes {
    let mut w = W::new();
    w.u64(h.id);
    w.bytes(h.addr.as_bytes());
    w.u8(h.initialized as u8);
    match &h.leader {
        Some((id, addr)) => {
            w.u8(1);
            w.u64(*id);
            w.bytes(addr.as_bytes());
        }
        None => w.u8(0),
    }
    w.done()
}

pub fn decode_hello(b: &Bytes) -> Result<Hello, WireError> {
    let mut r = R::new(b);
    let id = r.u64()?;
    let addr = r.string()?;
    let initialized = r.bool()?;
    let leader = match r.bool()? {
        true => Some((r.u64()?, r.string()?)),
        false => None,
    };
    r.end()?;
    Ok(Hello {
        id,
        addr,
        initialized,
        leader,
    })
}

pub fn encode_join(j: &Join) -> Bytes {
    let mut w = W::new();
    w.u64(j.id);
    w.bytes(j.addr.as_bytes());
    w.done()
}

pub fn decode_join(b: &Bytes) -> Result<Join, WireError> {
    let mut r = R::new(b);
    let j = Join {
        id: r.u64()?,
        addr: r.string()?,
    };
    r.end()?;
    Ok(j)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::impls::BasicNode;
    use openraft::Membership;

    use super::*;
    use crate::kv::KvCommand;
    use crate::raft::types::{Command, Proposal};

    fn vote() -> Vote {
        Vote {
            leader_id: LeaderId {
                term: 7,
                voted_for: 3,
            },
            committed: true,
        }
    }

    fn membership() -> Membership<u64, BasicNode> {
        let nodes = BTreeMap::from([
            (1, BasicNode::new("127.0.0.1:1")),
            (2, BasicNode::new("127.0.0.1:2")),
        ]);
        Membership::new(vec![BTreeSet::from([1, 2])], nodes).expect("membership")
    }

    #[test]
    fn an_append_request_survives_the_wire() {
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: vote(),
            prev_log_id: Some(RaftLogId::new_term_index(6, 10)),
            entries: vec![
                Entry {
                    log_id: RaftLogId::new_term_index(7, 11),
                    payload: EntryPayload::Normal(Proposal::new(Command::Kv(KvCommand::Set {
                        key: Bytes::from_static(b"k"),
                        value: Bytes::from_static(b"v"),
                        flags: 9,
                    }))),
                },
                Entry {
                    log_id: RaftLogId::new_term_index(7, 12),
                    payload: EntryPayload::Membership(membership()),
                },
                Entry {
                    log_id: RaftLogId::new_term_index(7, 13),
                    payload: EntryPayload::Blank,
                },
            ],
            leader_commit: Some(RaftLogId::new_term_index(6, 9)),
        };
        let back = decode_append(&encode_append(&req)).expect("decode");
        assert_eq!(back.vote, req.vote);
        assert_eq!(back.prev_log_id, req.prev_log_id);
        assert_eq!(back.leader_commit, req.leader_commit);
        assert_eq!(back.entries, req.entries);
    }

    #[test]
    fn every_truncation_of_every_message_is_an_error_not_a_panic() {
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: vote(),
            prev_log_id: None,
            entries: vec![Entry {
                log_id: RaftLogId::new_term_index(1, 1),
                payload: EntryPayload::Membership(membership()),
            }],
            leader_commit: None,
        };
        type Check = fn(&Bytes) -> bool;
        let msgs: [(Bytes, Check); 4] = [
            (encode_append(&req), |b| decode_append(b).is_err()),
            (encode_vote(&VoteRequest::new(vote(), None)), |b| {
                decode_vote(b).is_err()
            }),
            (
                encode_hello(&Hello {
                    id: 1,
                    addr: "a".into(),
                    initialized: true,
                    leader: Some((2, "b".into())),
                }),
                |b| decode_hello(b).is_err(),
            ),
            (
                encode_install(&InstallSnapshot {
                    vote: vote(),
                    snapshot_id: "s".into(),
                    meta: SnapshotMetaOf::<TypeConfig> {
                        last_log_id: Some(RaftLogId::new_term_index(1, 5)),
                        last_membership: StoredMembership::new(
                            Some(RaftLogId::new_term_index(1, 1)),
                            membership(),
                        ),
                    },
                }),
                |b| decode_install(b).is_err(),
            ),
        ];
        for (m, fails) in msgs {
            for cut in 0..m.len() {
                assert!(fails(&m.slice(..cut)), "a message cut at {cut} decoded");
            }
            let mut longer = m.to_vec();
            longer.push(0);
            assert!(fails(&Bytes::from(longer)), "trailing bytes were accepted");
            // The same message addressed to a server: cut in the id or in the message.
            let a = address(9, &m);
            for cut in 0..a.len() {
                match split_target(&a.slice(..cut)) {
                    Err(_) => assert!(cut < 8, "a whole id was refused (cut at {cut})"),
                    Ok((target, rest)) => {
                        assert_eq!(target, 9);
                        assert!(fails(&rest), "an addressed message cut at {cut} decoded");
                    }
                }
            }
        }
    }

    #[test]
    fn responses_and_formation_messages_survive_the_wire() {
        for r in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(RaftLogId::new_term_index(2, 3))),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(vote()),
        ] {
            assert_eq!(
                decode_append_response(&encode_append_response(&r)).expect("decode"),
                r
            );
        }
        let v =
            VoteResponse::<TypeConfig>::new(vote(), Some(RaftLogId::new_term_index(1, 2)), true);
        assert_eq!(
            decode_vote_response(&encode_vote_response(&v)).expect("v"),
            v
        );
        let h = Hello {
            id: 5,
            addr: "127.0.0.1:8300".into(),
            initialized: false,
            leader: None,
        };
        assert_eq!(decode_hello(&encode_hello(&h)).expect("h"), h);
        let j = Join {
            id: 9,
            addr: "x".into(),
        };
        assert_eq!(decode_join(&encode_join(&j)).expect("j"), j);
        let c = SnapshotChunk {
            snapshot_id: "id".into(),
            offset: 4,
            total: 10,
            data: Bytes::from_static(b"abc"),
        };
        assert_eq!(decode_chunk(&encode_chunk(&c)).expect("c"), c);
    }

    #[test]
    fn an_addressed_message_names_its_target_before_the_message() {
        let m = encode_vote(&VoteRequest::new(vote(), None));
        let a = address(0x0102_0304_0506_0708, &m);
        assert_eq!(&a[..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        let (target, rest) = split_target(&a).expect("split");
        assert_eq!(target, 0x0102_0304_0506_0708);
        assert_eq!(rest, m);
        assert_eq!(decode_vote(&rest).expect("vote").vote, vote());
        assert!(split_target(&Bytes::new()).is_err());
        let kinds: Vec<Kind> = (0..=255).filter_map(Kind::from_u8).collect();
        assert_eq!(kinds.len(), 9);
        let raft: Vec<Kind> = kinds.into_iter().filter(|k| k.is_raft()).collect();
        assert_eq!(
            raft,
            [
                Kind::AppendEntries,
                Kind::Vote,
                Kind::SnapshotChunk,
                Kind::InstallSnapshot,
                Kind::TransferLeader,
                Kind::PreVote
            ]
        );
    }
}
