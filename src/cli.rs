//! `cairn agent`, `cairn kv ...`, `cairn status ...`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use cairn::agent::{AgentConfig, FileConfig, GossipSettings, RaftTuning, DEFAULT_SERVER_PORT};
use cairn::health::definition::Definitions;
use cairn_net::rpc::cluster::{ClientOptions, ClusterClient};
use cairn_net::rpc::message::{Consistency, Limits, Op, ReadOpts, Request, Response};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Run one server with no configuration: state in a temporary directory, loopback,
    /// default ports.
    #[arg(long, conflicts_with_all = ["server", "data_dir", "bootstrap_expect", "retry_join"])]
    pub dev: bool,
    /// Run as a server (a Raft voter holding the state). Without it (and without
    /// --dev) the agent is a client: a gossip member that sends requests to servers.
    #[arg(long)]
    pub server: bool,
    /// Servers to wait for before bootstrapping a new cluster (3 or 5 in production).
    /// Without it a server never bootstraps: it joins the cluster its --retry-join
    /// addresses belong to. A server that has Raft state never bootstraps again.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub bootstrap_expect: Option<u32>,
    /// An agent's LAN gossip address (HOST or HOST:PORT, port 8301 by default) to join
    /// the pool through; repeat it or separate addresses with commas. Asked again until
    /// one answers; the servers of the cluster are then found in the pool. With
    /// `--serf-lan-port -1` (no gossip) these are server RPC addresses instead.
    #[arg(long = "retry-join", alias = "join", value_delimiter = ',')]
    pub retry_join: Vec<String>,
    /// LAN gossip port (UDP); 0 picks a free one; -1 turns gossip off.
    #[arg(long, default_value_t = cairn::agent::DEFAULT_SERF_LAN_PORT as i32, value_parser = clap::value_parser!(i32).range(-1..=65535), allow_negative_numbers = true)]
    pub serf_lan_port: i32,
    /// Gossip encryption key (32 bytes, base64; `cairn keygen` makes one). Every agent of
    /// the pool needs the same key.
    #[arg(long)]
    pub encrypt: Option<String>,
    /// The datacenter this agent belongs to.
    #[arg(long, default_value = "dc1")]
    pub datacenter: String,
    /// Leader heartbeat interval in milliseconds.
    #[arg(long, default_value_t = RaftTuning::default().heartbeat_ms, value_parser = clap::value_parser!(u64).range(10..=10_000))]
    pub raft_heartbeat_ms: u64,
    /// Election timeout in milliseconds (randomized up to twice this); must exceed the
    /// heartbeat interval.
    #[arg(long, default_value_t = RaftTuning::default().election_timeout_ms, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub raft_election_timeout_ms: u64,
    /// Snapshot after at least this many applied entries (Consul's raft_snapshot_threshold),
    /// and once the log written since the last snapshot is as large as that snapshot.
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
    /// Cores a server uses (one executor each, pinned when more than one): each owns a
    /// shard of the KV store and accepts connections; core 0 also runs Raft and every
    /// request other than a stale read. Default 1: on the 2-core machine it was measured on,
    /// with clients and servers sharing the cores, a second core made writes slower
    /// (README, "Cores"); give the cores a dedicated server has.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub cores: u16,
    /// Microseconds an idle core spins before sleeping in the kernel: lower latency when
    /// the server has its cores to itself; set 0 when servers share cores (a test box).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub spin_before_park_us: u64,
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
    /// A Consul-style JSON configuration file: agent settings (datacenter, node_name,
    /// data_dir, server, bootstrap_expect, bind_addr, client_addr, retry_join, ports,
    /// enable_script_checks, encrypt) and service and check definitions. Repeatable;
    /// later files override earlier ones; flags override files.
    #[arg(long)]
    pub config_file: Vec<PathBuf>,
    /// A directory of such files (`*.json`, read in name order). Repeatable.
    #[arg(long)]
    pub config_dir: Vec<PathBuf>,
    /// Allow script checks (`args`): they run programs as the agent's user, so they are
    /// off unless asked for, as in Consul.
    #[arg(long)]
    pub enable_script_checks: bool,
    /// Port of the Consul-compatible HTTP API; -1 turns it off.
    #[arg(long, default_value_t = cairn::http::DEFAULT_HTTP_PORT as i32, value_parser = clap::value_parser!(i32).range(-1..=65535), allow_negative_numbers = true)]
    pub http_port: i32,
    /// Port of the DNS interface (UDP and TCP); -1 turns it off.
    #[arg(long, default_value_t = cairn::agent::DEFAULT_DNS_PORT as i32, value_parser = clap::value_parser!(i32).range(-1..=65535), allow_negative_numbers = true)]
    pub dns_port: i32,
    /// Address the HTTP API and DNS listen on (Consul's client address).
    #[arg(long = "client", default_value = "127.0.0.1")]
    pub client_addr: IpAddr,
    /// Most HTTP connections open at once; more are closed on accept.
    #[arg(long, default_value_t = cairn::http::DEFAULT_MAX_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub http_max_connections: usize,
    /// Milliseconds a client may take to send a request's headers (or its body), and
    /// that an idle keep-alive connection stays open; slower clients are cut off.
    #[arg(long, default_value_t = cairn::http::DEFAULT_HEADER_READ_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub http_read_timeout_ms: u64,
}

/// Dev mode keeps its state in `TMPDIR/cairn-dev-<pid>` and removes it on exit.
const DEV_DIR_PREFIX: &str = "cairn-dev-";

/// Removes the state of dev agents that did not exit cleanly (kill -9, a crash): every
/// `cairn-dev-<pid>` directory whose process is gone. Each holds preallocated log
/// segments (64 MiB), so leaving them would fill the temporary directory over time. A
/// directory whose pid is alive is left alone (a running dev agent, or a reused pid).
fn remove_stale_dev_dirs(tmp: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DEV_DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new("/proc").join(pid.to_string()).exists();
        if !alive && e.path().join("node-id").exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Applies configuration files under the command line: a setting from a file is used
/// unless the flag was given on the command line.
fn apply_files(a: &mut AgentArgs, m: &clap::ArgMatches) -> Result<Definitions, String> {
    let f = FileConfig::load(&a.config_file, &a.config_dir)?;
    let given = |id: &str| {
        matches!(
            m.value_source(id),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        )
    };
    if a.dev && (f.data_dir.is_some() || f.bootstrap_expect.is_some() || !f.retry_join.is_empty()) {
        return Err(
            "--dev runs one throwaway server: data_dir, bootstrap_expect and retry_join in              configuration files cannot be used with it"
                .into(),
        );
    }
    if let Some(v) = f.datacenter.filter(|_| !given("datacenter")) {
        a.datacenter = v;
    }
    if a.node.is_none() {
        a.node = f.node_name;
    }
    if a.data_dir.is_none() {
        a.data_dir = f.data_dir;
    }
    if !a.server && !a.dev {
        a.server = f.server.unwrap_or(false);
    }
    if a.bootstrap_expect.is_none() {
        a.bootstrap_expect = f.bootstrap_expect;
    }
    if let Some(v) = f.bind_addr.filter(|_| !given("bind")) {
        a.bind = v;
    }
    if let Some(v) = f.client_addr.filter(|_| !given("client_addr")) {
        a.client_addr = v;
    }
    if a.retry_join.is_empty() {
        a.retry_join = f.retry_join;
    }
    if let Some(v) = f
        .enable_script_checks
        .filter(|_| !given("enable_script_checks"))
    {
        a.enable_script_checks = v;
    }
    if a.encrypt.is_none() {
        a.encrypt = f.encrypt;
    }
    if let Some(v) = f.ports.http.filter(|_| !given("http_port")) {
        a.http_port = v;
    }
    if let Some(v) = f.ports.dns.filter(|_| !given("dns_port")) {
        a.dns_port = v;
    }
    if let Some(v) = f.ports.serf_lan.filter(|_| !given("serf_lan_port")) {
        a.serf_lan_port = v;
    }
    if let Some(v) = f.ports.server.filter(|_| !given("server_port")) {
        a.server_port = v as u16;
    }
    Ok(f.definitions)
}

pub fn agent(mut a: AgentArgs, m: &clap::ArgMatches) -> ExitCode {
    let definitions = match apply_files(&mut a, m) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cairn: agent: {e}");
            return ExitCode::from(2);
        }
    };
    let server = a.dev || a.server;
    if !server && a.bootstrap_expect.is_some() {
        eprintln!("cairn: agent: --bootstrap-expect is for servers: add --server");
        return ExitCode::from(2);
    }
    if a.raft_election_timeout_ms <= a.raft_heartbeat_ms {
        eprintln!(
            "cairn: agent: --raft-election-timeout-ms ({}) must exceed --raft-heartbeat-ms ({})",
            a.raft_election_timeout_ms, a.raft_heartbeat_ms
        );
        return ExitCode::from(2);
    }
    let (data_dir, ephemeral) = match (&a.data_dir, a.dev) {
        (Some(d), _) => (d.clone(), false),
        (None, true) => {
            remove_stale_dev_dirs(&std::env::temp_dir());
            (
                std::env::temp_dir().join(format!("{DEV_DIR_PREFIX}{}", std::process::id())),
                true,
            )
        }
        (None, false) if a.server => {
            eprintln!("cairn: agent: --server needs --data-dir DIR");
            return ExitCode::from(2);
        }
        (None, false) => {
            eprintln!(
                "cairn: agent: a client agent needs --data-dir DIR and --retry-join ADDR \
                 (or give --dev for one throwaway server, --server for a cluster member)"
            );
            return ExitCode::from(2);
        }
    };
    let bootstrap_expect = match (a.dev, a.bootstrap_expect) {
        (true, _) => 1,
        (false, Some(n)) => n,
        (false, None) if !server => 0,
        (false, None) if a.retry_join.is_empty() => {
            eprintln!(
                "cairn: agent: a server needs --bootstrap-expect N (to form a new cluster) or \
                 --retry-join ADDR (to join an existing one)"
            );
            return ExitCode::from(2);
        }
        (false, None) => 0,
    };
    if a.dns_port == 0 {
        eprintln!("cairn: agent: --dns-port must be a port number (or -1 to turn DNS off)");
        return ExitCode::from(2);
    }
    if a.http_port == 0 {
        eprintln!(
            "cairn: agent: --http-port must be a port number (or -1 to turn the HTTP API off)"
        );
        return ExitCode::from(2);
    }
    let node = a.node.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "cairn".into())
    });
    let cfg = AgentConfig {
        server,
        node,
        datacenter: a.datacenter.clone(),
        cores: usize::from(a.cores),
        definitions,
        enable_script_checks: a.enable_script_checks,
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
        spin_before_park: Duration::from_micros(a.spin_before_park_us),
        gossip: (a.serf_lan_port >= 0).then(|| GossipSettings {
            port: a.serf_lan_port as u16,
            datacenter: a.datacenter.clone(),
            encrypt: a.encrypt.clone(),
            local_profile: a.dev,
        }),
        http: (a.http_port > 0).then(|| cairn::http::HttpSettings {
            addr: std::net::SocketAddr::new(a.client_addr, a.http_port as u16),
            max_connections: a.http_max_connections,
            header_read_timeout: Duration::from_millis(a.http_read_timeout_ms),
        }),
        dns: (a.dns_port > 0).then(|| cairn::agent::DnsSettings {
            addr: std::net::SocketAddr::new(a.client_addr, a.dns_port as u16),
            config: cairn::dns::DnsConfig::default(),
        }),
        limits: Limits {
            max_key: a.max_key_size,
            max_value: a.max_value_size,
            max_txn_ops: a.max_txn_ops,
            ..Limits::default()
        },
    };
    // Everything acknowledged is already durable: on SIGINT/SIGTERM, or when asked over
    // the API (`/v1/agent/leave` sets LEAVE), tell the gossip pool this agent leaves
    // (waiting at most 3 s for that), remove dev mode's temporary state, and exit. A
    // server stays in the Raft configuration, as Consul's do.
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        let dir = data_dir.clone();
        std::thread::spawn(move || {
            use std::sync::atomic::Ordering;
            while !cairn::agent::LEAVE.load(Ordering::SeqCst) {
                if signals.pending().next().is_some() {
                    cairn::agent::LEAVE.store(true, Ordering::SeqCst);
                } else {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            eprintln!("cairn: leaving");
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            while !cairn::agent::LEFT.load(Ordering::SeqCst) && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Time for the answer to an API leave to go out.
            std::thread::sleep(Duration::from_millis(100));
            if ephemeral {
                let _ = std::fs::remove_dir_all(&dir);
            }
            std::process::exit(0);
        });
    }
    if !server {
        let result = cairn::agent::serve_client(cfg, |c| {
            println!(
                "cairn: client agent running: node {}, RPC for this node on {}{}",
                c.node,
                c.rpc_addr(),
                http_note(c)
            );
        });
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cairn: agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let result = cairn::agent::serve(cfg, |c, id| {
        println!(
            "cairn: agent running: node {} (raft id {id}), server RPC on {}{}, data in {}{}",
            c.node,
            c.rpc_addr(),
            http_note(c),
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

/// Where the HTTP API listens, for the agent's start-up line.
fn http_note(c: &AgentConfig) -> String {
    let http = match &c.http {
        Some(h) => format!(", HTTP API on {}", h.addr),
        None => String::new(),
    };
    match &c.dns {
        Some(d) => format!("{http}, DNS on {}", d.addr),
        None => http,
    }
}

#[derive(Args, Debug, Clone)]
pub struct RpcArgs {
    /// The agent's server RPC address; several, comma-separated, are tried in order until
    /// one accepts the connection.
    #[arg(
        long,
        env = "CAIRN_RPC_ADDR",
        default_value = "127.0.0.1:8300",
        global = true
    )]
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
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Write a key.
    Put {
        key: String,
        value: String,
        #[arg(long, default_value_t = 0)]
        flags: u64,
        /// Only write if the key's ModifyIndex equals this (0: only if absent).
        #[arg(long, conflicts_with_all = ["acquire", "release"])]
        cas: Option<u64>,
        /// Write and lock the key for this session (fails if another session holds it).
        #[arg(long, conflicts_with = "release")]
        acquire: Option<String>,
        /// Write and unlock the key, if this session holds it.
        #[arg(long)]
        release: Option<String>,
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
    /// List the entries under a prefix (with --keys: only their keys, rolled up at
    /// --separator).
    List {
        #[arg(default_value = "")]
        prefix: String,
        #[arg(long)]
        keys: bool,
        #[arg(long, requires = "keys")]
        separator: Option<String>,
        #[arg(long, conflicts_with = "stale")]
        consistent: bool,
        #[arg(long)]
        stale: bool,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// How a read prints its result.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// The Raft configuration.
    #[command(subcommand)]
    Raft(OperatorRaft),
}

#[derive(Subcommand, Debug)]
pub enum OperatorRaft {
    /// Every server in the Raft configuration: node id, address, role, leader.
    ListPeers {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Remove a server (by its Raft node id, from list-peers) from the configuration.
    RemovePeer { id: u64 },
    /// Add a server as a voter: it catches up as a learner first.
    AddVoter { id: u64, address: String },
    /// Hand leadership to another voter (any, if no id is given).
    TransferLeader { id: Option<u64> },
}

#[derive(Subcommand, Debug)]
pub enum StatusCommand {
    /// The leader's RPC address.
    Leader {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// The servers' RPC addresses.
    Peers {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// A cluster client for the `--rpc-addr` addresses (comma-separated), giving up on a
/// request after `timeout`.
pub(crate) fn cluster_client(rpc: &RpcArgs, timeout: Duration) -> Result<ClusterClient, ExitCode> {
    let servers: Vec<String> = rpc
        .rpc_addr
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if servers.is_empty() {
        eprintln!("Error! --rpc-addr names no address");
        return Err(ExitCode::from(2));
    }
    Ok(ClusterClient::new(
        &servers,
        ClientOptions {
            timeout,
            ..ClientOptions::default()
        },
    ))
}

/// One request through the cluster client: it tries each `--rpc-addr` address until
/// one accepts, follows leader hints, and retries only what is safe.
pub(crate) fn call(rpc: &RpcArgs, op: Op) -> Result<Response, ExitCode> {
    let mut c = cluster_client(rpc, Duration::from_millis(rpc.timeout_ms))?;
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

/// `--consistent` / `--stale` (clap keeps them exclusive); neither: the leader's lease.
pub(crate) fn consistency(consistent: bool, stale: bool) -> Consistency {
    if consistent {
        Consistency::Consistent
    } else if stale {
        Consistency::Stale
    } else {
        Consistency::Default
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
                format,
            } => {
                let consistency = consistency(consistent, stale);
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
                    Response::Entries { entries, .. } if format == Format::Json => {
                        let v: Vec<_> = entries.iter().map(entry_json).collect();
                        if recurse {
                            print_json(&serde_json::Value::Array(v));
                        } else {
                            print_json(&v[0]);
                        }
                        Ok(ExitCode::SUCCESS)
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
                acquire,
                release,
            } => {
                let why = if acquire.is_some() {
                    "the lock is held by another session"
                } else if release.is_some() {
                    "the session does not hold the lock"
                } else {
                    "CAS failed"
                };
                let op = Op::KvPut {
                    key: b(&key),
                    value: b(&value),
                    flags,
                    cas,
                    acquire,
                    release,
                };
                match call(rpc, op)? {
                    Response::Bool(true) => {
                        println!("Success! Data written to: {key}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Response::Bool(false) => {
                        eprintln!("Error! Did not write to {key}: {why}");
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
            KvCommand::List {
                prefix,
                keys,
                separator,
                consistent,
                stale,
                format,
            } => {
                let consistency = consistency(consistent, stale);
                let op = Op::KvList {
                    prefix: b(&prefix),
                    keys_only: keys,
                    separator: separator.as_deref().map(b),
                    opts: ReadOpts {
                        consistency,
                        ..ReadOpts::default()
                    },
                };
                match (call(rpc, op)?, format) {
                    (Response::Keys { keys, .. }, Format::Json) => {
                        let v = keys
                            .iter()
                            .map(|k| serde_json::Value::String(String::from_utf8_lossy(k).into()))
                            .collect();
                        print_json(&serde_json::Value::Array(v));
                    }
                    (Response::Keys { keys, .. }, Format::Text) => {
                        for k in keys {
                            println!("{}", String::from_utf8_lossy(&k));
                        }
                    }
                    (Response::Entries { entries, .. }, Format::Json) => {
                        print_json(&serde_json::Value::Array(
                            entries.iter().map(entry_json).collect(),
                        ));
                    }
                    (Response::Entries { entries, .. }, Format::Text) => {
                        for e in entries {
                            println!(
                                "{}:{}",
                                String::from_utf8_lossy(&e.key),
                                String::from_utf8_lossy(&e.value)
                            );
                        }
                    }
                    (other, _) => return Err(unexpected(other)),
                }
                Ok(ExitCode::SUCCESS)
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

/// `cairn keyring`: the agent's gossip keys.
pub fn keyring(
    install: Option<String>,
    use_key: Option<String>,
    remove: Option<String>,
    rpc: &RpcArgs,
) -> ExitCode {
    use cairn_net::rpc::message::KeyringAction;
    let (action, key) = match (install, use_key, remove) {
        (Some(k), None, None) => (KeyringAction::Install, Some(k)),
        (None, Some(k), None) => (KeyringAction::Use, Some(k)),
        (None, None, Some(k)) => (KeyringAction::Remove, Some(k)),
        _ => (KeyringAction::List, None),
    };
    match call(rpc, Op::Keyring { action, key }) {
        Ok(Response::Keyring(keys)) => {
            for (i, k) in keys.iter().enumerate() {
                println!("{k}{}", if i == 0 { "  (primary)" } else { "" });
            }
            ExitCode::SUCCESS
        }
        Ok(other) => unexpected(other),
        Err(code) => code,
    }
}

/// `cairn members`: the LAN gossip pool as the agent sees it.
pub fn members(format: Format, rpc: &RpcArgs) -> ExitCode {
    match call(rpc, Op::Members) {
        Ok(Response::Members(mut members)) => {
            members.sort_by(|a, b| a.name.cmp(&b.name));
            if format == Format::Json {
                let v = members
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "Name": m.name,
                            "Addr": m.address,
                            "Status": m.status,
                            "Role": m.role,
                            "Datacenter": m.datacenter,
                            "Tags": m.tags.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                        })
                    })
                    .collect();
                print_json(&serde_json::Value::Array(v));
            } else {
                println!(
                    "{:<20} {:<22} {:<8} {:<7} {:<6} Tags",
                    "Node", "Address", "Status", "Type", "DC"
                );
                for m in members {
                    let tags: Vec<String> =
                        m.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!(
                        "{:<20} {:<22} {:<8} {:<7} {:<6} {}",
                        m.name,
                        m.address,
                        m.status,
                        m.role,
                        m.datacenter,
                        tags.join(",")
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Ok(other) => unexpected(other),
        Err(code) => code,
    }
}

pub fn status(cmd: StatusCommand, rpc: &RpcArgs) -> ExitCode {
    let (op, format) = match cmd {
        StatusCommand::Leader { format } => (Op::StatusLeader, format),
        StatusCommand::Peers { format } => (Op::StatusPeers, format),
    };
    match call(rpc, op) {
        // As Consul's /v1/status/leader and /v1/status/peers answer.
        Ok(Response::Leader(l)) if format == Format::Json => {
            print_json(&serde_json::Value::String(l.unwrap_or_default()));
            ExitCode::SUCCESS
        }
        Ok(Response::Peers(p)) if format == Format::Json => {
            print_json(&serde_json::json!(p));
            ExitCode::SUCCESS
        }
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

/// An entry as Consul's API shows it (the value as text here, not base64: this is a
/// terminal).
fn entry_json(e: &cairn_net::rpc::message::Entry) -> serde_json::Value {
    serde_json::json!({
        "Key": String::from_utf8_lossy(&e.key),
        "Value": String::from_utf8_lossy(&e.value),
        "Flags": e.flags,
        "CreateIndex": e.create_index,
        "ModifyIndex": e.modify_index,
        "LockIndex": e.lock_index,
        "Session": e.session,
    })
}

pub(crate) fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    );
}

pub fn operator(cmd: OperatorCommand, rpc: &RpcArgs) -> ExitCode {
    let OperatorCommand::Raft(cmd) = cmd;
    let run = || -> Result<ExitCode, ExitCode> {
        match cmd {
            OperatorRaft::ListPeers { format } => match call(rpc, Op::RaftConfiguration)? {
                Response::Servers(servers) => {
                    if format == Format::Json {
                        let v = servers
                            .iter()
                            .map(|s| {
                                serde_json::json!({
                                    "ID": s.id.to_string(),
                                    "Address": s.address,
                                    "Leader": s.leader,
                                    "Voter": s.voter,
                                })
                            })
                            .collect();
                        print_json(&serde_json::Value::Array(v));
                    } else {
                        println!("{:<22} {:<24} {:<10} Voter", "ID", "Address", "State");
                        for s in servers {
                            let state = if s.leader { "leader" } else { "follower" };
                            println!("{:<22} {:<24} {:<10} {}", s.id, s.address, state, s.voter);
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(unexpected(other)),
            },
            OperatorRaft::RemovePeer { id } => match call(rpc, Op::RaftRemovePeer { id })? {
                Response::Done => {
                    println!("Removed peer with id {id}");
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(unexpected(other)),
            },
            OperatorRaft::AddVoter { id, address } => {
                match call(
                    rpc,
                    Op::RaftAddVoter {
                        id,
                        address: address.clone(),
                    },
                )? {
                    Response::Done => {
                        println!("Added voter {id} at {address}");
                        Ok(ExitCode::SUCCESS)
                    }
                    other => Err(unexpected(other)),
                }
            }
            OperatorRaft::TransferLeader { id } => {
                match call(rpc, Op::RaftTransferLeader { to: id })? {
                    Response::Done => {
                        println!("Leadership transfer started");
                        Ok(ExitCode::SUCCESS)
                    }
                    other => Err(unexpected(other)),
                }
            }
        }
    };
    run().unwrap_or_else(|code| code)
}

pub(crate) fn unexpected(r: Response) -> ExitCode {
    eprintln!("Error! unexpected response from the agent: {r:?}");
    ExitCode::FAILURE
}
