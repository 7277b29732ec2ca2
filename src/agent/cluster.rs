//! Cluster formation: a new server finds its peers, and either bootstraps a new cluster
//! with them or joins the one they belong to. It runs only while this server has no Raft
//! state; a server that has a vote or a log never bootstraps again, so restarting a
//! server (or the whole cluster) can neither re-bootstrap nor fork it.
//!
//! Discovery: the servers come from the LAN gossip pool (members with the server role in
//! this datacenter, at the RPC port their metadata names); with gossip off
//! (`--serf-lan-port -1`), from `--retry-join` taken as server RPC addresses. Every
//! second the server says hello to each; a hello names the sender, so a server also
//! learns of the servers that reach it. Then:
//! - if any peer already belongs to a cluster, ask that cluster's leader to add this
//!   server (as a learner that catches up, then a voter);
//! - else, once at least `--bootstrap-expect` servers without state are known (this one
//!   included), the one with the lowest node id bootstraps with all of them, and the
//!   others receive the configuration from it through Raft. Only one server calls
//!   `initialize`, so two servers can never bootstrap different configurations from the
//!   same set of peers.
//!
//! A server that holds a Raft vote but no log and no membership (it granted a vote and
//! then restarted before any entry reached it) is initialized to openraft, which will not
//! bootstrap it: it keeps forming, but may only join a cluster through its leader, and
//! says so on stderr instead of waiting silently.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use cairn_net::rpc::message::{Op, Request, Response};

use super::server::{bootstrap_members, Server};
use crate::raft::wire::{self, Kind};

/// How often a forming server contacts its peers.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How long a hello answers for a peer: a server not heard from for longer is not
/// counted toward `--bootstrap-expect`.
const SEEN_FOR: Duration = Duration::from_secs(5);
/// How often the server says what it is waiting for.
const REPORT_EVERY: Duration = Duration::from_secs(10);

fn internal(kind: Kind, body: bytes::Bytes) -> Request {
    Request {
        datacenter: String::new(),
        token: String::new(),
        op: Op::Internal {
            kind: kind as u8,
            body,
        },
    }
}

/// What a forming server knows of one peer.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub addr: String,
    pub initialized: bool,
    pub leader: Option<(u64, String)>,
    pub at: Instant,
}

/// The gossip addresses in `--retry-join` (HOST or HOST:PORT, port 8301 by default).
pub(super) fn gossip_seeds(join: &[String]) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    for j in join {
        let with_port = if j
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            && !j.ends_with(']')
        {
            j.clone()
        } else {
            format!("{j}:{}", super::DEFAULT_SERF_LAN_PORT)
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{j}: {e}"))?
            .next()
            .ok_or_else(|| format!("{j} resolves to no address"))?;
        out.push(addr);
    }
    Ok(out)
}

/// The RPC addresses of the servers this one knows of: from the gossip pool (alive
/// servers of its datacenter), or, with gossip off, the `--retry-join` list.
fn candidates(s: &Server, rpc_join: Option<&[String]>) -> Vec<String> {
    if let Some(join) = rpc_join {
        return join.to_vec();
    }
    let Some(g) = &s.gossip else {
        return Vec::new();
    };
    let members = g.members();
    let dc = members.first().map(|m| m.meta.datacenter.clone());
    members
        .iter()
        .skip(1) // the local node comes first
        .filter(|m| {
            m.status == crate::gossip::Status::Alive
                && m.meta.role == crate::gossip::Role::Server
                && Some(&m.meta.datacenter) == dc.as_ref()
        })
        .map(|m| SocketAddr::new(m.addr.ip(), m.meta.rpc_port).to_string())
        .collect()
}

/// Where a server stands before it belongs to a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    /// No Raft state at all: it may bootstrap or join.
    Fresh,
    /// A vote (`term`, for `voted_for`) and nothing else: no log entry, no membership.
    /// openraft counts the vote as initialized and refuses to bootstrap it, so it can only
    /// be added to a cluster by that cluster's leader.
    VoteOnly { term: u64, voted_for: u64 },
    /// It has a log (or a snapshot) or a membership: it belongs to a cluster.
    Member,
}

pub(super) async fn standing(s: &Server) -> Result<Standing, String> {
    s.raft
        .with_raft_state(|st| {
            let membership = st.membership_state.effective().membership();
            if st.log_ids.last().is_some() || membership.nodes().next().is_some() {
                Standing::Member
            } else if st.vote_ref().leader_id.term != 0 {
                Standing::VoteOnly {
                    term: st.vote_ref().leader_id.term,
                    voted_for: st.vote_ref().leader_id.voted_for,
                }
            } else {
                Standing::Fresh
            }
        })
        .await
        .map_err(|e| e.to_string())
}

/// Runs until this server belongs to a cluster. `rpc_join`: with gossip off, the server
/// RPC addresses to contact; with gossip on, the servers come from the pool.
pub(super) async fn form(s: &Server, expect: u32, rpc_join: Option<&[String]>) {
    let mut last_report = Instant::now();
    let mut told_vote_only = false;
    loop {
        let vote_only = match standing(s).await {
            Ok(Standing::Member) => return,
            Ok(Standing::Fresh) => None,
            Ok(Standing::VoteOnly { term, voted_for }) => Some((term, voted_for)),
            Err(e) => {
                eprintln!("cairn: cluster formation stopped: raft: {e}");
                return;
            }
        };
        let vote_only_note = vote_only.map(|(term, voted_for)| {
            format!(
                "this server holds a Raft vote (term {term}, for server {voted_for}) but no log \
                 and no cluster membership: openraft counts it as initialized and will not \
                 bootstrap it, so it waits for a cluster's leader to add it (if server \
                 {voted_for} is in no running cluster, stop this server and empty its data \
                 directory)"
            )
        });
        if let Some(note) = vote_only_note.as_ref().filter(|_| !told_vote_only) {
            told_vote_only = true;
            eprintln!("cairn: {note}");
        }
        let me = wire::Hello {
            id: s.id,
            addr: s.addr.clone(),
            // As its answer to a hello says (openraft's `is_initialized`).
            initialized: vote_only.is_some(),
            leader: None,
        };
        let join = candidates(s, rpc_join);
        for addr in &join {
            if *addr == s.addr {
                continue;
            }
            let req = internal(Kind::Hello, wire::encode_hello(&me));
            if let Ok(Response::Internal(b)) = s.peers.call(addr, &req, RETRY_INTERVAL).await {
                if let Ok(h) = wire::decode_hello(&b) {
                    s.note_peer(&h);
                }
            }
        }
        let view: BTreeMap<u64, Seen> = s
            .seen_peers()
            .into_iter()
            .filter(|(_, p)| p.at.elapsed() < SEEN_FOR)
            .collect();
        // Join an existing cluster through its leader.
        if let Some((_, leader_addr)) = view
            .values()
            .filter(|p| p.initialized)
            .find_map(|p| p.leader.clone())
        {
            let req = internal(
                Kind::Join,
                wire::encode_join(&wire::Join {
                    id: s.id,
                    addr: s.addr.clone(),
                }),
            );
            match s
                .peers
                .call(&leader_addr, &req, Duration::from_secs(30))
                .await
            {
                Ok(Response::Internal(_)) => {
                    eprintln!("cairn: joined the cluster through its leader at {leader_addr}");
                }
                Ok(Response::Error(e)) => {
                    eprintln!(
                        "cairn: the leader at {leader_addr} refused to add this server: {}",
                        e.message
                    );
                }
                Ok(_) | Err(_) => {}
            }
        } else if expect > 0 && vote_only.is_none() {
            let mut servers: Vec<(u64, String)> = view
                .iter()
                .filter(|(_, p)| !p.initialized)
                .map(|(id, p)| (*id, p.addr.clone()))
                .collect();
            servers.push((s.id, s.addr.clone()));
            servers.sort();
            servers.dedup_by_key(|(id, _)| *id);
            if servers.len() >= expect as usize && servers[0].0 == s.id {
                let list: Vec<String> = servers.iter().map(|(id, a)| format!("{id}@{a}")).collect();
                match s.raft.initialize(bootstrap_members(&servers)).await {
                    Ok(()) => {
                        eprintln!(
                            "cairn: bootstrapped a cluster of {}: {}",
                            servers.len(),
                            list.join(", ")
                        );
                        return;
                    }
                    Err(e) => eprintln!("cairn: bootstrap: {e}"),
                }
            }
        }
        if last_report.elapsed() >= REPORT_EVERY {
            last_report = Instant::now();
            // Alone in the pool: say what the gossip driver refused, if anything (a wrong
            // or missing --encrypt key looks like silence otherwise).
            if let Some(g) = s.gossip.as_ref().filter(|g| g.num_live() <= 1) {
                if let Some(d) = g.stats().last_drop {
                    eprintln!(
                        "cairn: no other agent in the gossip pool yet; the last datagram \
                         refused came from {}: {} (is --encrypt the same on every agent?)",
                        d.from, d.reason
                    );
                }
            }
            // A peer with Raft state is not counted toward bootstrapping; one that knows no
            // leader either leaves nothing to join, so say which.
            let known: Vec<String> = view
                .iter()
                .map(|(id, p)| match (&p.initialized, &p.leader) {
                    (false, _) => format!("{id}@{}", p.addr),
                    (true, Some((l, _))) => format!("{id}@{} (in a cluster, leader {l})", p.addr),
                    (true, None) => format!("{id}@{} (has Raft state, knows no leader)", p.addr),
                })
                .collect();
            eprintln!(
                "cairn: waiting to form a cluster: expecting {expect} servers, know of {} other(s) [{}]{}",
                known.len(),
                known.join(", "),
                if join.is_empty() { "; none found yet (check --retry-join), waiting to be contacted" } else { "" }
            );
            if let Some(note) = &vote_only_note {
                eprintln!("cairn: {note}");
            }
        }
        glommio::timer::sleep(RETRY_INTERVAL).await;
    }
}

/// A lone server with nothing to wait for bootstraps at once (dev mode, or
/// `--bootstrap-expect 1` without peers).
pub(super) async fn bootstrap_alone(s: &Server) -> Result<(), String> {
    s.raft
        .initialize(bootstrap_members(&[(s.id, s.addr.clone())]))
        .await
        .map_err(|e| e.to_string())
}
