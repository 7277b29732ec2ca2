//! The agent in server mode: `cairn agent --dev` (one throwaway server), or
//! `cairn agent --server --data-dir DIR --bootstrap-expect N --retry-join ADDR ...`.
//!
//! One glommio executor runs the Raft group (log on the segment store, KV state machine,
//! snapshots) and serves the binary RPC protocol on the server port, which also carries
//! the Raft traffic between servers. Every write goes through Raft and is acknowledged
//! only once a quorum has it durable and the leader applied it. A follower forwards what
//! only the leader may answer.
//!
//! - `server`: the request loop, consistency, forwarding, server-to-server messages.
//! - `cluster`: forming a cluster or joining one (`--bootstrap-expect`, `--retry-join`).
//! - `peer`: multiplexed connections to other servers.
//!
//! Not yet: the thread-per-core shard runtime behind the state machine, client mode.

mod client;
mod cluster;
mod config_file;
mod dns;
mod local;
pub mod peer;
mod server;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub use client::serve_client;
pub use config_file::FileConfig;
pub use dns::{DnsSettings, DEFAULT_DNS_PORT};
pub use server::serve;
pub(crate) use server::{probe_port, Handler};

/// Default server RPC port, as Consul's.
pub const DEFAULT_SERVER_PORT: u16 = 8300;

/// What the agent needs to start.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    /// The datacenter this agent belongs to (`dc1` by default, as Consul's).
    pub datacenter: String,
    /// A server (Raft voter, holds the state) or a client agent (forwards to servers).
    pub server: bool,
    pub data_dir: PathBuf,
    pub bind: IpAddr,
    pub server_port: u16,
    /// Remove `data_dir` on exit (dev mode's temporary state).
    pub ephemeral: bool,
    /// Servers to wait for before bootstrapping a new cluster; 0: never bootstrap, only
    /// join an existing cluster.
    pub bootstrap_expect: u32,
    /// Where to find the cluster: LAN gossip addresses (HOST[:PORT], port 8301 by
    /// default) when gossip is on; server RPC addresses when it is off.
    pub retry_join: Vec<String>,
    /// Service and check definitions from configuration files, loaded at start.
    pub definitions: crate::health::definition::Definitions,
    /// Allow script checks (off by default: they run programs as the agent's user).
    pub enable_script_checks: bool,
    /// The LAN gossip pool; `None` when disabled (`--serf-lan-port -1`).
    pub gossip: Option<GossipSettings>,
    pub raft: RaftTuning,
    /// Executors (one per core): each owns a KV shard and accepts connections; core 0 also
    /// runs Raft. Servers only; client agents use one.
    pub cores: usize,
    /// Request limits (key, value and transaction sizes).
    pub limits: cairn_net::rpc::message::Limits,
    /// How long an idle executor spins before it parks in the kernel: spinning answers
    /// the next request without a wake-up (cross-core p50 70 -> 7 us in the shard
    /// benchmark) but burns a core, so 0 is better when servers share cores.
    pub spin_before_park: std::time::Duration,
    /// The Consul-compatible HTTP API; `None` when disabled (`--http-port -1`).
    pub http: Option<crate::http::HttpSettings>,
    /// The DNS interface; `None` when disabled (`--dns-port -1`).
    pub dns: Option<DnsSettings>,
}

/// Set (by the signal handler, or by `Op::Leave`) to ask the agent to leave: it tells the gossip pool it is
/// leaving, then sets [`LEFT`]. Everything acknowledged is already durable, so the
/// process may exit at any moment after; the handler waits a little for [`LEFT`].
pub static LEAVE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Set once the agent has left the gossip pool (or has none).
pub static LEFT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Default LAN gossip port, as Consul's.
pub const DEFAULT_SERF_LAN_PORT: u16 = 8301;

/// How the agent takes part in the LAN gossip pool.
#[derive(Debug, Clone)]
pub struct GossipSettings {
    /// UDP port; 0 lets the kernel choose (tests).
    pub port: u16,
    pub datacenter: String,
    /// `--encrypt`: the gossip key, base64.
    pub encrypt: Option<String>,
    /// Dev mode uses the fast `local` profile; servers on a LAN the `lan` one.
    pub local_profile: bool,
}

/// Raft timing and log retention.
#[derive(Debug, Clone, Copy)]
pub struct RaftTuning {
    /// How often the leader heartbeats followers.
    pub heartbeat_ms: u64,
    /// A follower that hears nothing for between this and twice this starts an election.
    pub election_timeout_ms: u64,
    /// Take a snapshot after at least this many entries were applied since the last one
    /// (and as many log bytes as the last snapshot had: `raft::store::SnapshotPace`).
    pub snapshot_threshold: u64,
    /// Entries kept in the log behind a snapshot, so a briefly lagging follower catches
    /// up from the log instead of receiving the whole snapshot.
    pub trailing_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        // Consul's LAN defaults are a 1 s heartbeat and election timeout scaled by
        // raft_multiplier 5 for slow clouds; bare-metal servers on a LAN can afford a 100
        // ms heartbeat, so a failed leader is replaced in about a second.
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_ms: 500,
            snapshot_threshold: 16_384,
            trailing_logs: 10_240,
        }
    }
}

impl AgentConfig {
    pub fn rpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.server_port)
    }
}

/// Why the agent stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    #[error("server port {addr} is already in use (is another agent running?): {source}")]
    PortInUse {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP port {addr} is already in use (is another agent running? choose another with --http-port, or -1 to turn the HTTP API off): {source}")]
    HttpPortInUse {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("{0}")]
    Config(String),
    #[error("gossip: {0}")]
    Gossip(String),
}
