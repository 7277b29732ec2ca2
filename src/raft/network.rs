//! The Raft network for a one-server cluster: there is nobody to talk to.
//!
//! A single voter elects itself and commits alone, so openraft never sends an RPC; if it
//! ever tries (someone added a voter), every call fails as unreachable with a message that
//! says why. The server-to-server network comes with multi-server clusters (issue 3).

use std::future::Future;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{OptionalSend, RaftNetworkV2};

use super::store::SnapshotData;
use super::types::TypeConfig;

#[derive(Debug, thiserror::Error)]
#[error("server {0} is unreachable: this agent runs a one-server cluster (multi-server Raft networking is not built yet)")]
struct NoNetwork(u64);

/// Creates [`NoPeer`] clients.
#[derive(Debug, Clone, Default)]
pub struct SingleServer;

/// A client for a peer that cannot be reached.
#[derive(Debug)]
pub struct NoPeer(u64);

impl RaftNetworkFactory<TypeConfig> for SingleServer {
    type Network = NoPeer;

    async fn new_client(&mut self, target: u64, _node: &openraft::impls::BasicNode) -> NoPeer {
        NoPeer(target)
    }
}

impl RaftNetworkV2<TypeConfig> for NoPeer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoNetwork(self.0))))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoNetwork(self.0))))
    }

    async fn full_snapshot(
        &mut self,
        _vote: VoteOf<TypeConfig>,
        _snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Network(NetworkError::new(&NoNetwork(
            self.0,
        ))))
    }
}
