//! `cairn agent`, `cairn kv ...`, `cairn status ...`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use cairn::agent::{AgentConfig, RaftTuning, DEFAULT_SERVER_PORT};
use cairn::client::RpcClient;
use cairn_net::rpc::message::{Consistency, Limits, Op, ReadOpts, Request, Response};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Run one server with no configuration: state in a temporary directory, loopback,
    /// default ports.
    #[arg(long, conflicts_with_all = ["server", "data_dir"])]
    pub dev: bool,
    /// Run as a server (the only mode so far; client agents come with the catalog).
    #[arg(long)]
    pub server: bool,
    /// Servers to wait for before bootstrapping a new cluster (3 or 5 in production).
    /// Without it a server never bootstraps: it joins the cluster its --retry-join
    /// addresses belong to. A server that has Raft state never bootstraps again.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub bootstrap_expect: Option<u32>,
    /// A server's RPC address (HOST:PORT) to contact to form or join the cluster;
    /// repeat it or separate addresses with commas. Retried every second until this
    /// server belongs to a cluster. (Gossip will take discovery over; the flag stays.)
    #[arg(long = "retry-join", alias = "join", value_delimiter = ',')]
    pub retry_join: Vec<String>,
    /// Leader heartbeat interval in milliseconds.
    #[arg(long, default_value_t = RaftTuning::default().heartbeat_ms, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub raft_heartbeat_ms: u64,
    /// Election timeout in milliseconds (randomized up to twice this); must exceed the
    /// heartbeat interval.
    #[arg(long, default_value_t = RaftTuning::default().election_timeout_ms, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub raft_election_timeout_ms: u64,
    /// Snapshot after this many applied entries (Consul's raft_snapshot_threshold).
    #[arg(long, default_value_t = RaftTuning::default().snapshot_threshold, value_parser = clap::value_parser!(u64).range(1..))]
    pub raft_snapshot_threshold: u64,
    /// Entries kept behind a snapshot for lagging followers (Consul's raft_trailing_logs).
    #[arg(long, default_value_t = RaftTuning::default().trailing_logs)]
    pub raft_trailing_logs: u64,
    /// Largest value in bytes (at most Consul's 512 KiB).
    #[arg(long, default_value_t = Limits::default().max_value, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=524_288))]
    pub max_value_size: usize,
    /// Largest key in bytes (at most 8 KiB).
    #[arg(long, default_value_t = Limits::default().max_key, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=8192))]
    pub max_key_size: usize,
    /// Most operations in one transaction (at most Consul's 128).
    #[arg(long, default_value_t = Limits::default().max_txn_ops, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=128))]
    pub max_txn_ops: usize,
    /// Where the server keeps its Raft log and snapshots.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Node name (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: IpAddr,
    /// Server RPC port.
    #[arg(long, default_value_t = DEFAULT_SERVER_PORT)]
    pub server_port: u16,
}

pub fn agent(a: AgentArgs) -> ExitCode {
    if !a.dev && !a.server {
        eprintln!(
            "cairn: agent: give --dev (one throwaway server) or --server --data-dir DIR; \
             client mode is not built yet"
        );
        return ExitCode::from(2);
    }
    if a.raft_election_timeout_ms <= a.raft_heartbeat_ms {
        eprintln!(
            "cairn: agent: --raft-election-timeout-ms ({}) must exceed --raft-heartbeat-ms ({})",
            a.raft_election_timeout_ms, a.raft_heartbeat_ms
        );
        return ExitCode::from(2);
    }
    let bootstrap_expect = match (a.dev, a.bootstrap_expect) {
        (true, _) => 1,
        (false, Some(n)) => n,
        (false, None) if a.retry_join.is_empty() => {
            eprintln!(
                "cairn: agent: a server needs --bootstrap-expect N (to form a new cluster) or \
                 --retry-join ADDR (to join an existing one)"
            );
            return ExitCode::from(2);
        }
        (false, None) => 0,
    };
    let (data_dir, ephemeral) = match (&a.data_dir, a.dev) {
        (Some(d), _) => (d.clone(), false),
        (None, true) => (
            std::env::temp_dir().join(format!("cairn-dev-{}", std::process::id())),
            true,
        ),
        (None, false) => {
            eprintln!("cairn: agent: --server needs --data-dir DIR");
            return ExitCode::from(2);
        }
    };
    let node = a.node.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "cairn".into())
    });
    let cfg = AgentConfig {
        node,
        data_dir: data_dir.clone(),
        bind: a.bind,
        server_port: a.server_port,
        ephemeral,
        bootstrap_expect,
        retry_join: a.retry_join.clone(),
        raft: RaftTuning {
            heartbeat_ms: a.raft_heartbeat_ms,
            election_timeout_ms: a.raft_election_timeout_ms,
            snapshot_threshold: a.raft_snapshot_threshold,
            trailing_logs: a.raft_trailing_logs,
        },
        limits: Limits {
            max_key: a.max_key_size,
            max_value: a.max_value_size,
            max_txn_ops: a.max_txn_ops,
            ..Limits::default()
        },
    };
    // Everything acknowledged is already durable: on SIGINT/SIGTERM leave at once, and
    // remove dev mode's temporary state.
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        let dir = data_dir.clone();
        std::thread::spawn(move || {
            if signals.forever().next().is_some() {
                eprintln!("cairn: shutting down");
                if ephemeral {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                std::process::exit(0);
            }
        });
    }
    let result = cairn::agent::serve(cfg, |c, id| {
        println!(
            "cairn: agent running: node {} (raft id {id}), server RPC on {}, data in {}{}",
            c.node,
            c.rpc_addr(),
            c.data_dir.display(),
            if c.ephemeral { " (temporary)" } else { "" }
        );
    });
    if ephemeral {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: agent: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct RpcArgs {
    /// The agent's server RPC address.
    #[arg(long, default_value = "127.0.0.1:8300", global = true)]
    pub rpc_addr: String,
    /// Give up on a request after this many milliseconds.
    #[arg(long, default_value_t = 10_000, global = true)]
    pub timeout_ms: u64,
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Print a key's value.
    Get {
        key: String,
        /// Read through a quorum-confirmed read index.
        #[arg(long, conflicts_with = "stale")]
        consistent: bool,
        /// Read the server's local state without asking the leader.
        #[arg(long)]
        stale: bool,
        /// Print every key under KEY as key:value.
        #[arg(long)]
        recurse: bool,
    },
    /// Write a key.
    Put {
        key: String,
        value: String,
        #[arg(long, default_value_t = 0)]
        flags: u64,
        /// Only write if the key's ModifyIndex equals this (0: only if absent).
        #[arg(long)]
        cas: Option<u64>,
    },
    /// Delete a key (or every key under it with --recurse).
    Delete {
        key: String,
        #[arg(long)]
        recurse: bool,
        #[arg(long)]
        cas: Option<u64>,
    },
    /// List keys under a prefix.
    Keys {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long)]
        separator: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum StatusCommand {
    /// The leader's RPC address.
    Leader,
    /// The servers' RPC addresses.
    Peers,
}

fn call(rpc: &RpcArgs, op: Op) -> Result<Response, ExitCode> {
    let mut c =
        RpcClient::connect(&rpc.rpc_addr, Duration::from_millis(rpc.timeout_ms)).map_err(|e| {
            eprintln!("Error! {e}");
            ExitCode::FAILURE
        })?;
    let req = Request {
        datacenter: String::new(),
        token: String::new(),
        op,
    };
    match c.call(&req) {
        Ok(Response::Error(e)) => {
            eprintln!("Error! {}", e.message);
            Err(ExitCode::FAILURE)
        }
        Ok(r) => Ok(r),
        Err(e) => {
            eprintln!("Error! {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn kv(cmd: KvCommand, rpc: &RpcArgs) -> ExitCode {
    let run = || -> Result<ExitCode, ExitCode> {
        match cmd {
            KvCommand::Get {
                key,
                consistent,
                stale,
                recurse,
            } => {
                let consistency = if consistent {
                    Consistency::Consistent
                } else if stale {
                    Consistency::Stale
                } else {
                    Consistency::Default
                };
                let opts = ReadOpts {
                    consistency,
                    ..ReadOpts::default()
                };
                let op = if recurse {
                    Op::KvList {
                        prefix: b(&key),
                        keys_only: false,
                        separator: None,
                        opts,
                    }
                } else {
                    Op::KvGet { key: b(&key), opts }
                };
                match call(rpc, op)? {
                    Response::Entries { entries, .. } if entries.is_empty() && !recurse => {
                        eprintln!("Error! No key exists at: {key}");
                        Ok(ExitCode::FAILURE)
                    }
                    Response::Entries { entries, .. } => {
                        for e in entries {
                            let v = String::from_utf8_lossy(&e.value);
                            if recurse {
                                println!("{}:{v}", String::from_utf8_lossy(&e.key));
                            } else {
                                println!("{v}");
                            }
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    other => Err(unexpected(other)),
                }
            }
            KvCommand::Put {
                key,
                value,
                flags,
                cas,
            } => {
                let op = Op::KvPut {
                    key: b(&key),
                    value: b(&value),
                    flags,
                    cas,
                    acquire: None,
                    release: None,
                };
                match call(rpc, op)? {
                    Response::Bool(true) => {
                        println!("Success! Data written to: {key}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Response::Bool(false) => {
                        eprintln!("Error! Did not write to {key}: CAS failed");
                        Ok(ExitCode::FAILURE)
                    }
                    other => Err(unexpected(other)),
                }
            }
            KvCommand::Delete { key, recurse, cas } => {
                let op = Op::KvDelete {
                    key: b(&key),
                    recurse,
                    cas,
                };
                match call(rpc, op)? {
                    Response::Bool(true) => {
                        println!("Success! Deleted key: {key}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Response::Bool(false) => {
                        eprintln!("Error! Did not delete key {key}: CAS failed");
                        Ok(ExitCode::FAILURE)
                    }
                    other => Err(unexpected(other)),
                }
            }
            KvCommand::Keys { prefix, separator } => {
                let op = Op::KvList {
                    prefix: b(&prefix),
                    keys_only: true,
                    separator: separator.as_deref().map(b),
                    opts: ReadOpts::default(),
                };
                match call(rpc, op)? {
                    Response::Keys { keys, .. } => {
                        for k in keys {
                            println!("{}", String::from_utf8_lossy(&k));
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    other => Err(unexpected(other)),
                }
            }
        }
    };
    run().unwrap_or_else(|code| code)
}

pub fn status(cmd: StatusCommand, rpc: &RpcArgs) -> ExitCode {
    let op = match cmd {
        StatusCommand::Leader => Op::StatusLeader,
        StatusCommand::Peers => Op::StatusPeers,
    };
    match call(rpc, op) {
        Ok(Response::Leader(Some(l))) => {
            println!("{l}");
            ExitCode::SUCCESS
        }
        Ok(Response::Leader(None)) => {
            eprintln!("Error! No cluster leader");
            ExitCode::FAILURE
        }
        Ok(Response::Peers(p)) => {
            for a in p {
                println!("{a}");
            }
            ExitCode::SUCCESS
        }
        Ok(other) => unexpected(other),
        Err(code) => code,
    }
}

fn unexpected(r: Response) -> ExitCode {
    eprintln!("Error! unexpected response from the agent: {r:?}");
    ExitCode::FAILURE
}
