//! The agent in server mode, for a one-server cluster: `cairn agent --dev`, or
//! `cairn agent --server --bootstrap-expect 1 --data-dir DIR`.
//!
//! One glommio executor runs the Raft group (log on the segment store, KV state machine,
//! snapshots) and serves the binary RPC protocol on the server port. Every write goes
//! through Raft and is acknowledged only once it is durable and applied. Multi-server
//! clusters (the Raft network, `--retry-join`), the thread-per-core shard runtime behind
//! the state machine, and client mode come with the rest of issue 3.

mod server;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub use server::serve;

/// Default server RPC port, as Consul's.
pub const DEFAULT_SERVER_PORT: u16 = 8300;

/// What the agent needs to start.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub node: String,
    pub data_dir: PathBuf,
    pub bind: IpAddr,
    pub server_port: u16,
    /// Remove `data_dir` on exit (dev mode's temporary state).
    pub ephemeral: bool,
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
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
}
