//! Real `cairn agent --server` processes on loopback (or in network namespaces) for the
//! cluster tests: start, kill -9, restart, and a blocking RPC client per call.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn::client::RpcClient;
use cairn_net::rpc::message::{Consistency, Op, ReadOpts, Request, Response};

pub const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

pub fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port free at the moment (for a gossip listener).
pub fn free_udp_port(ip: &str) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn req(op: Op) -> Request {
    Request {
        datacenter: String::new(),
        token: String::new(),
        op,
    }
}

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// One server of a test cluster.
pub struct Server {
    pub ip: String,
    pub port: u16,
    /// Its LAN gossip port.
    pub serf_port: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
    /// Run inside this network namespace (`ip netns exec`), if any.
    pub netns: Option<String>,
    /// Its HTTP API address, if it has one on (`Cluster::start_with_http`).
    pub http: Option<String>,
    args: Vec<String>,
    child: Option<Child>,
}

impl Server {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, CAIRN]);
                c
            }
            None => Command::new(CAIRN),
        };
        cmd.args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .stdin(Stdio::null());
        self.child = Some(cmd.spawn().unwrap());
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the process to exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running server");
        self.spawn();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn client(&self, timeout: Duration) -> Option<RpcClient> {
        RpcClient::connect(&self.addr(), timeout).ok()
    }

    /// One request on a fresh connection; `None` if the server cannot be reached.
    pub fn call(&self, op: Op, timeout: Duration) -> Option<Response> {
        self.client(timeout)?.call(&req(op)).ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One server on 127.0.0.1 with gossip off that expects `expect` servers but is told of
/// none that answers (`--retry-join` names a port nothing listens on): it stays forming.
pub fn lone_server(root: &std::path::Path, expect: usize) -> Server {
    let ip = "127.0.0.1".to_string();
    let port = free_port(&ip);
    let nobody = format!("{ip}:{}", free_port(&ip));
    let dir = root.join("lone");
    let log = root.join("lone.log");
    let args: Vec<String> = [
        "agent",
        "--server",
        "--node",
        "lone",
        "--data-dir",
        dir.to_str().unwrap(),
        "--bind",
        &ip,
        "--server-port",
        &port.to_string(),
        "--serf-lan-port",
        "-1",
        "--http-port",
        "-1",
        "--dns-port",
        "-1",
        "--bootstrap-expect",
        &expect.to_string(),
        "--retry-join",
        &nobody,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut s = Server {
        ip,
        port,
        serf_port: 0,
        dir,
        log,
        netns: None,
        http: None,
        args,
        child: None,
    };
    s.spawn();
    s
}

/// A cluster of servers with their data directories under one temporary directory.
pub struct Cluster {
    pub servers: Vec<Server>,
    pub root: tempfile::TempDir,
}

impl Cluster {
    /// `n` servers on 127.0.0.1, each told about all the others, expecting `n`.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        let ips = vec!["127.0.0.1".to_string(); n];
        Cluster::start_on(&ips, None, extra)
    }

    /// `n` servers on 127.0.0.1 as [`Cluster::start`], each with its HTTP API on a free
    /// port (`Server::http`).
    pub fn start_with_http(n: usize, extra: &[&str]) -> Cluster {
        let ips = vec!["127.0.0.1".to_string(); n];
        Cluster::start_on_with(&ips, None, extra, true)
    }

    /// Servers at the given IPs (each in its namespace, if given).
    pub fn start_on(ips: &[String], netns: Option<&[String]>, extra: &[&str]) -> Cluster {
        Cluster::start_on_with(ips, netns, extra, false)
    }

    fn start_on_with(
        ips: &[String],
        netns: Option<&[String]>,
        extra: &[&str],
        http: bool,
    ) -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let n = ips.len();
        let ports: Vec<u16> = ips
            .iter()
            .map(|ip| if netns.is_some() { 8300 } else { free_port(ip) })
            .collect();
        // Servers find each other through the LAN gossip pool.
        let serf_ports: Vec<u16> = ips
            .iter()
            .map(|ip| {
                if netns.is_some() {
                    8301
                } else {
                    free_udp_port(ip)
                }
            })
            .collect();
        let join: Vec<String> = ips
            .iter()
            .zip(&serf_ports)
            .map(|(ip, p)| format!("{ip}:{p}"))
            .collect();
        let mut servers = Vec::new();
        for i in 0..n {
            let dir = root.path().join(format!("s{i}"));
            let log = root.path().join(format!("s{i}.log"));
            let http_port = if http { free_port(&ips[i]) as i32 } else { -1 };
            let mut args: Vec<String> = [
                "agent",
                "--server",
                "--node",
                &format!("s{i}"),
                "--data-dir",
                dir.to_str().unwrap(),
                "--bind",
                &ips[i],
                "--server-port",
                &ports[i].to_string(),
                "--serf-lan-port",
                &serf_ports[i].to_string(),
                // Many agents share the host: the HTTP API is tested on its own.
                "--http-port",
                &http_port.to_string(),
                "--dns-port",
                "-1",
                "--bootstrap-expect",
                &n.to_string(),
                "--retry-join",
                &join.join(","),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.extend(extra.iter().map(|s| s.to_string()));
            let mut s = Server {
                ip: ips[i].clone(),
                port: ports[i],
                serf_port: serf_ports[i],
                dir,
                log,
                netns: netns.map(|ns| ns[i].clone()),
                http: http.then(|| format!("{}:{http_port}", ips[i])),
                args,
                child: None,
            };
            s.spawn();
            servers.push(s);
        }
        let c = Cluster { servers, root };
        c.wait_for_leader(Duration::from_secs(30));
        c
    }

    /// Starts one more server on 127.0.0.1 that joins the running cluster through the
    /// gossip pool (no `--bootstrap-expect`: it must be added by the leader).
    pub fn add_server(&mut self) -> usize {
        self.add_agent(true)
    }

    /// Starts a client agent (no `--server`) on 127.0.0.1 that joins the pool.
    pub fn add_client(&mut self) -> usize {
        self.add_agent(false)
    }

    /// A client agent with extra arguments (e.g. `--config-dir`).
    pub fn add_client_with(&mut self, extra: &[&str]) -> usize {
        self.add_agent_args(false, extra)
    }

    fn add_agent(&mut self, server: bool) -> usize {
        self.add_agent_args(server, &[])
    }

    fn add_agent_args(&mut self, server: bool, extra: &[&str]) -> usize {
        let i = self.servers.len();
        let ip = "127.0.0.1".to_string();
        let (port, serf_port) = (free_port(&ip), free_udp_port(&ip));
        let join: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("{}:{}", s.ip, s.serf_port))
            .collect();
        let dir = self.root.path().join(format!("s{i}"));
        let log = self.root.path().join(format!("s{i}.log"));
        let mut args: Vec<String> = [
            "agent",
            "--node",
            &format!("{}{i}", if server { "s" } else { "c" }),
            "--data-dir",
            dir.to_str().unwrap(),
            "--bind",
            &ip,
            "--server-port",
            &port.to_string(),
            "--serf-lan-port",
            &serf_port.to_string(),
            "--http-port",
            "-1",
            "--dns-port",
            "-1",
            "--retry-join",
            &join.join(","),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if server {
            args.insert(1, "--server".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = Server {
            ip,
            port,
            serf_port,
            dir,
            log,
            netns: None,
            http: None,
            args,
            child: None,
        };
        s.spawn();
        self.servers.push(s);
        i
    }

    /// What every running server's log says, for failure messages.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("--- server {i} ({}):\n{}", s.addr(), s.log_text()))
            .collect()
    }

    /// The index of the server every running server names as leader, once they agree.
    pub fn wait_for_leader(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(i) = self.agreed_leader() {
                return i;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {limit:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn agreed_leader(&self) -> Option<usize> {
        let mut named = None;
        for s in self.servers.iter().filter(|s| s.running()) {
            let Some(Response::Leader(Some(addr))) =
                s.call(Op::StatusLeader, Duration::from_secs(2))
            else {
                return None;
            };
            if named.as_ref().is_some_and(|n| *n != addr) {
                return None;
            }
            named = Some(addr);
        }
        let named = named?;
        self.servers
            .iter()
            .position(|s| s.addr() == named && s.running())
    }

    /// A running server that is not `not`.
    pub fn other_than(&self, not: usize) -> usize {
        (0..self.servers.len())
            .find(|i| *i != not && self.servers[*i].running())
            .expect("another running server")
    }

    /// Waits until server `i` serves `key` = `value` from its own state (stale read).
    pub fn wait_stale_value(&self, i: usize, key: &str, value: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let got = get(&self.servers[i], key, Consistency::Stale);
            if got.as_deref() == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server {i} never served {key}={value} (last: {got:?})\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A get through `s`; `None` if absent or on any error.
pub fn get(s: &Server, key: &str, consistency: Consistency) -> Option<String> {
    match s.call(
        Op::KvGet {
            key: b(key),
            opts: ReadOpts {
                consistency,
                ..ReadOpts::default()
            },
        },
        Duration::from_secs(5),
    ) {
        Some(Response::Entries { entries, .. }) => entries
            .first()
            .map(|e| String::from_utf8_lossy(&e.value).into_owned()),
        _ => None,
    }
}

/// A put through a client; `Ok(true)` once acknowledged.
pub fn put(c: &mut RpcClient, key: &str, value: &str) -> Result<Response, String> {
    c.call(&req(Op::KvPut {
        key: b(key),
        value: b(value),
        flags: 0,
        cas: None,
        acquire: None,
        release: None,
    }))
    .map_err(|e| e.to_string())
}
