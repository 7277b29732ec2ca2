//! `cairn`: the agent and its command-line tools.
//!
//! `cairn agent` runs a server (Raft on the segment log, the KV state machine, the binary
//! RPC protocol) alone or in a cluster; `cairn kv`, `cairn status` and `cairn operator`
//! talk to it; `cairn debug` inspects files and machines.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;
mod cli_catalog;
mod cli_lock;
mod debug;

#[derive(Parser, Debug)]
#[command(
    name = "cairn",
    version,
    about = "Cairn: service discovery and configuration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an agent: `--dev` (one throwaway server) or `--server` (a cluster member).
    Agent(Box<cli::AgentArgs>),
    /// Read and write the KV store through an agent.
    Kv {
        #[command(subcommand)]
        cmd: cli::KvCommand,
        #[command(flatten)]
        rpc: cli::RpcArgs,
    },
    /// Ask an agent about the cluster's servers.
    Status {
        #[command(subcommand)]
        cmd: cli::StatusCommand,
        #[command(flatten)]
        rpc: cli::RpcArgs,
    },
    /// Operate the cluster: the Raft configuration.
    Operator {
        #[command(subcommand)]
        cmd: cli::OperatorCommand,
        #[command(flatten)]
        rpc: cli::RpcArgs,
    },
    /// The service catalog: nodes, services and their instances.
    Catalog {
        #[command(subcommand)]
        cmd: cli_catalog::CatalogCommand,
        #[command(flatten)]
        rpc: cli::RpcArgs,
    },
    /// Health checks in the catalog: a service's, a node's, or those in a state.
    Health {
        #[command(subcommand)]
        cmd: cli_catalog::HealthCommand,
        #[command(flatten)]
        rpc: cli::RpcArgs,
    },
    /// This agent's services: register from a definition file, deregister, list.
    Services {
        #[command(subcommand)]
        cmd: cli_catalog::ServicesCommand,
        #[command(flatten)]
        rpc: cli::RpcArgs,
    },
    /// Maintenance mode for this agent's node or one of its services.
    Maint {
        #[arg(long)]
        enable: bool,
        #[arg(long)]
        disable: bool,
        /// A service id (default: the whole node).
        #[arg(long)]
        service: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        rpc: cli::RpcArgs,
    },
    /// Declare a failed agent left: the pool forgets it and the catalog deregisters it.
    ForceLeave {
        node: String,
        #[command(flatten)]
        rpc: cli::RpcArgs,
    },
    /// Run a command while holding a lock on PREFIX (the key PREFIX/.lock, acquired with
    /// a session of this agent's node; waits while another holder has it). The exit
    /// status is the command's; if the lock is lost the command gets SIGTERM.
    Lock {
        prefix: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        rpc: cli::RpcArgs,
    },
    /// Sessions (for locks: `cairn kv put --acquire ID`): create, list, info, renew, destroy.
    Session {
        #[command(subcommand)]
        cmd: cli_catalog::SessionCommand,
        #[command(flatten)]
        rpc: cli::RpcArgs,
    },
    /// The LAN gossip pool: every agent with its address, status and role.
    Members {
        #[arg(long, value_enum, default_value_t = cli::Format::Text)]
        format: cli::Format,
        #[command(flatten)]
        rpc: cli::RpcArgs,
    },
    /// The agent's gossip encryption keys: list them (default), or install, use (make
    /// primary) or remove one. Keys are per agent: to rotate, install the new key on every
    /// agent, use it on every agent, then remove the old one everywhere.
    Keyring {
        #[arg(long, conflicts_with_all = ["use_key", "remove"])]
        install: Option<String>,
        #[arg(long = "use", conflicts_with = "remove")]
        use_key: Option<String>,
        #[arg(long)]
        remove: Option<String>,
        #[command(flatten)]
        rpc: cli::RpcArgs,
    },
    /// Print a new gossip encryption key (32 random bytes, base64) for `--encrypt`.
    Keygen,
    /// Inspect Cairn's on-disk files and this machine.
    #[command(subcommand)]
    Debug(DebugCommand),
}

// The variants are named after the subcommands (`log-check`, `disk-check`, ...).
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand, Debug)]
enum DebugCommand {
    /// Check a Raft log directory without changing it: segments, index range, metadata and
    /// health. Exits 0 when the log would open cleanly, 1 when it is damaged.
    LogCheck {
        /// The log directory (e.g. DATA_DIR/raft/log).
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check a snapshot file: header, checksums and archive validation.
    SnapshotCheck {
        /// The snapshot file (`snap-*.snap`).
        file: PathBuf,
    },
    /// Check this machine's limits and kernel settings against what a Cairn agent needs
    /// (profiles to fix them are in tuning/). Exits 1 if a check fails.
    Preflight {
        /// Cores the agent will use.
        #[arg(long)]
        cores: Option<usize>,
    },
    /// Measure whether a disk is fast enough for a Cairn server's Raft log: the raw
    /// fdatasync floor, then durable appends through the segment log at several batch
    /// sizes. Writes only inside a fresh directory under --dir and removes it afterwards.
    DiskCheck {
        /// Directory on the disk to measure (a subdirectory is created and removed).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Durable appends measured per batch size.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
        samples: u32,
        /// Segment size in bytes for the log under test.
        #[arg(long, default_value_t = cairn_storage::DEFAULT_SEGMENT_SIZE)]
        segment_size: u64,
        /// Keep the log directory afterwards (and print where it is) for `log-check`.
        #[arg(long)]
        keep: bool,
    },
}

fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    // The matches are kept so the agent can tell flags given on the command line (which
    // override configuration files) from defaults (which do not).
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Agent(a) => match matches.subcommand_matches("agent") {
            Some(m) => cli::agent(*a, m),
            None => ExitCode::from(2),
        },
        Command::Kv { cmd, rpc } => cli::kv(cmd, &rpc),
        Command::Status { cmd, rpc } => cli::status(cmd, &rpc),
        Command::Operator { cmd, rpc } => cli::operator(cmd, &rpc),
        Command::Members { format, rpc } => cli::members(format, &rpc),
        Command::Catalog { cmd, rpc } => cli_catalog::catalog(cmd, &rpc),
        Command::Session { cmd, rpc } => cli_catalog::session(cmd, &rpc),
        Command::Lock {
            prefix,
            command,
            rpc,
        } => cli_lock::lock(&prefix, &command, &rpc),
        Command::ForceLeave { node, rpc } => cli_catalog::force_leave(&node, &rpc),
        Command::Services { cmd, rpc } => cli_catalog::services(cmd, &rpc),
        Command::Maint {
            enable,
            disable,
            service,
            reason,
            rpc,
        } => cli_catalog::maint(enable, disable, service, reason, &rpc),
        Command::Health { cmd, rpc } => cli_catalog::health(cmd, &rpc),
        Command::Keyring {
            install,
            use_key,
            remove,
            rpc,
        } => cli::keyring(install, use_key, remove, &rpc),
        Command::Keygen => {
            println!("{}", cairn::gossip::keygen());
            ExitCode::SUCCESS
        }
        Command::Debug(DebugCommand::LogCheck { dir, json }) => debug::log_check(&dir, json),
        Command::Debug(DebugCommand::SnapshotCheck { file }) => debug::snapshot_check(&file),
        Command::Debug(DebugCommand::Preflight { cores }) => debug::preflight(cores),
        Command::Debug(DebugCommand::DiskCheck {
            dir,
            samples,
            segment_size,
            keep,
        }) => debug::disk_check(&dir, samples as usize, segment_size, keep),
    }
}
