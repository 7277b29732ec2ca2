//! The Raft network: openraft's RPCs to other servers, as [`Op::Internal`] requests on
//! their server port (the same port clients use, as in Consul), over the shared peer
//! connections of [`Peers`].
//!
//! Frames are limited in size (2 MiB), so an append batch is split into several requests
//! by the encoded size of its entries, each one's `prev_log_id` the last entry of the one
//! before; a snapshot travels in 1 MiB chunks and is installed by a final message.
//!
//! Every request names its target's node id ([`wire::address`]); a server that finds
//! another id refuses it ([`ErrorCode::WrongServer`]), which is reported to openraft as
//! an unreachable target, as if nothing answered at the address.

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use cairn_net::rpc::message::{ErrorCode, Op, Request, Response};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{OptionalSend, RaftNetworkV2};

use super::store::SnapshotData;
use super::types::{encode_payload, RaftLogId, TypeConfig};
use super::wire::{self, Kind};
use crate::agent::peer::{PeerError, Peers};

/// Most payload bytes of entries in one append request: under the 2 MiB frame limit with
/// room for the headers, and large enough for one 512 KiB value.
const MAX_APPEND_BYTES: usize = 1024 * 1024;
/// Snapshot bytes per chunk.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

/// Creates a [`PeerClient`] for each target server.
#[derive(Clone)]
pub struct Network {
    peers: Rc<Peers>,
}

impl Network {
    pub fn new(peers: Rc<Peers>) -> Network {
        Network { peers }
    }
}

/// openraft's client for one target server.
pub struct PeerClient {
    target: u64,
    addr: String,
    peers: Rc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &openraft::impls::BasicNode) -> PeerClient {
        PeerClient {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

fn internal(kind: Kind, body: Bytes) -> Request {
    Request {
        datacenter: String::new(),
        token: String::new(),
        op: Op::Internal {
            kind: kind as u8,
            body,
        },
    }
}

impl PeerClient {
    async fn call(
        &self,
        kind: Kind,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RPCError<TypeConfig>> {
        let body = wire::address(self.target, &body);
        match self
            .peers
            .call(&self.addr, &internal(kind, body), timeout)
            .await
        {
            Ok(Response::Internal(b)) => Ok(b),
            // Another server answers at the address: to openraft, the target is not
            // reachable there (it backs off and tries again later).
            Ok(Response::Error(e)) if e.code == ErrorCode::WrongServer => {
                Err(RPCError::Unreachable(Unreachable::new(&Failure(format!(
                    "server {} is not at {}: {}",
                    self.target, self.addr, e.message
                )))))
            }
            Ok(Response::Error(e)) => Err(RPCError::Network(NetworkError::new(&Failure(format!(
                "server {} ({}) answered {:?}: {}",
                self.target, self.addr, e.code, e.message
            ))))),
            Ok(other) => Err(RPCError::Network(NetworkError::new(&Failure(format!(
                "server {} ({}) answered with an unexpected {other:?}",
                self.target, self.addr
            ))))),
            Err(e @ PeerError::Connect { .. }) => Err(RPCError::Unreachable(Unreachable::new(
                &Failure(e.to_string()),
            ))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&Failure(
                e.to_string(),
            )))),
        }
    }
}

fn decode_err(e: wire::WireError) -> RPCError<TypeConfig> {
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let parts: Vec<(RaftLogId, Bytes)> = rpc
            .entries
            .iter()
            .map(|e| (e.log_id, encode_payload(&e.payload)))
            .collect();
        let mut prev = rpc.prev_log_id;
        let mut rest = &parts[..];
        loop {
            // At least one entry per request, however large (one value fits the frame).
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len() && (n == 0 || bytes + rest[n].1.len() <= MAX_APPEND_BYTES) {
                bytes += rest[n].1.len();
                n += 1;
            }
            let (now, later) = rest.split_at(n);
            // A follower commits at most up to the last entry it holds from this leader.
            let commit = match now.last() {
                Some((last, _)) if !later.is_empty() => rpc.leader_commit.min(Some(*last)),
                _ => rpc.leader_commit,
            };
            let body = wire::encode_append_parts(&rpc.vote, &prev, &commit, now);
            let resp = self
                .call(Kind::AppendEntries, body, option.hard_ttl())
                .await?;
            let resp = wire::decode_append_response(&resp).map_err(decode_err)?;
            if later.is_empty() || !resp.is_success() {
                return Ok(resp);
            }
            prev = now.last().map(|(id, _)| *id);
            rest = later;
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let resp = self
            .call(Kind::Vote, wire::encode_vote(&rpc), option.hard_ttl())
            .await?;
        wire::decode_vote_response(&resp).map_err(decode_err)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let resp = self
            .call(Kind::PreVote, wire::encode_vote(&rpc), option.hard_ttl())
            .await?;
        wire::decode_vote_response(&resp).map_err(decode_err)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = snapshot.snapshot.clone();
        let snapshot_id = format!(
            "{}-{}",
            snapshot.meta.last_log_id.map_or(0, |l| l.index),
            data.len()
        );
        let send = async {
            let total = data.len() as u64;
            let mut offset = 0usize;
            // An empty snapshot still sends one (empty) chunk so the receiver starts anew.
            loop {
                let end = (offset + SNAPSHOT_CHUNK).min(data.len());
                let chunk = wire::SnapshotChunk {
                    snapshot_id: snapshot_id.clone(),
                    offset: offset as u64,
                    total,
                    data: data.slice(offset..end),
                };
                self.call(
                    Kind::SnapshotChunk,
                    wire::encode_chunk(&chunk),
                    option.hard_ttl(),
                )
                .await?;
                offset = end;
                if offset >= data.len() {
                    break;
                }
            }
            let install = wire::InstallSnapshot {
                vote,
                snapshot_id: snapshot_id.clone(),
                meta: snapshot.meta.clone(),
            };
            // Installing a large snapshot takes longer than a heartbeat.
            let resp = self
                .call(
                    Kind::InstallSnapshot,
                    wire::encode_install(&install),
                    option.hard_ttl().max(Duration::from_secs(30)),
                )
                .await?;
            wire::decode_snapshot_response(&resp).map_err(decode_err)
        };
        let cancelled = async {
            let closed = cancel.await;
            Err(RPCError::Network(NetworkError::new(&Failure(format!(
                "snapshot transfer cancelled: {closed}"
            )))))
        };
        futures_lite::future::or(send, cancelled)
            .await
            .map_err(|e| match e {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                RPCError::Timeout(t) => StreamingError::Timeout(t),
                RPCError::Network(n) => StreamingError::Network(n),
                RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
            })
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let resp = self
            .call(
                Kind::TransferLeader,
                wire::encode_transfer(&req),
                option.hard_ttl(),
            )
            .await?;
        // The target says whether it accepted; a refusal is not a network failure, but
        // openraft's refusal type is not ours to build, so it is reported as one.
        match resp.first() {
            Some(0) => Ok(Ok(())),
            _ => Err(RPCError::Network(NetworkError::new(&Failure(format!(
                "server {} refused the leadership transfer: {}",
                self.target,
                String::from_utf8_lossy(resp.get(1..).unwrap_or_default())
            ))))),
        }
    }
}
