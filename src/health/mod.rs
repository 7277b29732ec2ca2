//! The agent's health checks: Consul's service and check definitions, and the runner that
//! probes services and keeps each check's status.
//!
//! - [`definition`]: parses and validates JSON definition files (`{"service": ...}`,
//!   `{"checks": [...]}`, snake_case or CamelCase keys, Go durations) and `load_dir`.
//! - [`schedule`]: the pure core — when each check runs, TTL expiry, thresholds, which
//!   changes are reported — driven with time and a seed passed in.
//! - [`runner`]: [`CheckRunner`], the thin driver: a scheduler thread and a small pool of
//!   probe threads (checks do blocking IO, so never on a glommio executor), TTL state
//!   persisted under the data directory, events on a channel a glommio task can await.
//! - [`probe`]: the TCP, HTTP and script probes themselves.
//!
//! Left to others: registering services and checks in the catalog and pushing the events
//! to the servers (anti-entropy), and the agent HTTP API that calls `ttl_update`.

pub mod definition;
mod duration;
pub mod probe;
pub mod runner;
pub mod schedule;

pub use definition::{
    load_dir, load_file, parse_check, parse_file, parse_service, CheckDefinition, CheckKind,
    DefinitionError, Definitions, HttpProbe, Probe, ServiceDefinition,
};
pub use duration::parse_go_duration;
pub use runner::{CheckRunner, RunnerOptions};
pub use schedule::{CheckEvent, CheckState};

/// Why a runner operation was refused. Unless the variant says otherwise, nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("no check {0:?}")]
    UnknownCheck(String),
    #[error("check {0:?} is not a TTL check: only TTL checks take status updates")]
    NotTtl(String),
    #[error("check {0:?} runs a script, and script checks are not enabled on this agent")]
    ScriptChecksDisabled(String),
    /// The status changed in memory (and was reported) but could not be saved, so it
    /// would not survive a restart.
    #[error("check {id:?}: status updated but not saved to {path}: {error}")]
    StateNotSaved {
        id: String,
        path: String,
        error: std::io::Error,
    },
    #[error("the agent already runs its maximum of {0} checks")]
    TooManyChecks(usize),
    #[error("cannot create the check state directory {path}: {error}")]
    StateDir { path: String, error: std::io::Error },
    #[error("cannot start a check runner thread: {0}")]
    Thread(std::io::Error),
}
