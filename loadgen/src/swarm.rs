//! `loadgen swarm`: many lightweight gossip members in one process, joined to a real
//! cluster, killed and revived on a schedule, timing how fast the pool notices.
//!
//! Each member is a [`cairn_net::gossip::Gossip`] core with its own non-blocking UDP
//! socket on 127.0.0.1 (consecutive ports from `base_port`). A few worker threads each
//! own a share of the members: one poll(2) over the share's sockets, the share's timers
//! in one ordered set, every output drained straight after the input that caused it.
//! Datagrams are sealed and opened exactly as the agent's driver (`src/gossip/driver.rs`)
//! does, so a swarm joins an encrypted pool.
//!
//! The controller (the calling thread) kills a random member every `kill_every` (its
//! socket is closed: it stops answering, as a crashed agent does) and revives it
//! `down_for` later as a fresh core at incarnation 0 on the same address — what a
//! restarted agent is: it joins the seeds again, hears from their state that it is dead
//! and refutes with a higher incarnation. What is measured, from the swarm members' point
//! of view (the servers' view is `cairn members`):
//! - detection: from the kill until no live member (one running since before the kill)
//!   sees the victim alive or suspect;
//! - rejoin: from the revival until every live member (running since before the
//!   revival) sees the victim alive at the incarnation its new life has reached (after
//!   a refutation, the old life's "alive" does not count).
//!
//! Both are checked every [`CHECK_INTERVAL_MS`], which bounds their resolution. Seeds
//! that are swarm members are never killed: a revived member rejoins through them.
//!
//! Limits: every core holds the whole member table, so memory grows as N²; the
//! per-second view (suspects, failed) is sampled from up to [`VIEW_SAMPLE`] members.

use std::collections::BTreeSet;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_net::gossip::crypto::{self, Key, Keyring};
use cairn_net::gossip::{wire, Config, Gossip, Millis, NodeMeta, Output, Role, Status, Timer};
use cairn_net::rpc::cluster::{ClientOptions, ClusterClient};
use cairn_net::rpc::message::{Op, Request, Response};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustix::event::{PollFd, PollFlags};

/// How often the controller checks whether a kill or a revival has converged: the
/// resolution of the detection and rejoin figures.
pub const CHECK_INTERVAL_MS: u64 = 10;
/// Members whose view is counted for the per-second progress line and the initial
/// convergence check (checking all of them would cost N² lookups a second).
pub const VIEW_SAMPLE: usize = 64;
/// Longest a worker sleeps in poll(2): bounds how late a kill or revival command runs.
const POLL_MAX_MS: u64 = 5;
/// Datagrams read from one socket per wake-up, so one busy member cannot starve the
/// others of its thread.
const READS_PER_WAKE: usize = 64;
/// Longest time the initial joins are spread over (members start one after another so
/// the seeds do not answer N push-pulls in the same millisecond).
const JOIN_SPREAD_MAX_MS: u64 = 2_000;

/// How often the agent at `--server-rpc` is asked for its view of the pool.
const SERVER_CHECK_INTERVAL_MS: u64 = 100;

/// What to run. [`SwarmConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Gossip addresses to join (a server's `--serf-lan-port`, or a swarm member).
    pub join: Vec<SocketAddr>,
    pub nodes: usize,
    pub duration: Duration,
    /// Time between kills; `None`: no kills.
    pub kill_every: Option<Duration>,
    pub down_for: Duration,
    /// `lan` or `local` (see [`Config::profile`]).
    pub profile: String,
    pub seed: u64,
    /// Base64 gossip key (as `cairn keygen` prints and `cairn agent --encrypt` takes).
    pub encrypt: Option<String>,
    /// Member `i` binds 127.0.0.1:`base_port + i`.
    pub base_port: u16,
    /// Worker threads; `None`: one per 100 members, at most one per CPU.
    pub threads: Option<usize>,
    /// Print a progress line per second on stderr.
    pub progress: bool,
    /// A Cairn agent's RPC address: its view of the pool (`Op::Members`) is polled to
    /// measure detection from the servers' point of view too.
    pub server_rpc: Option<String>,
}

impl SwarmConfig {
    pub fn new(join: Vec<SocketAddr>, nodes: usize) -> SwarmConfig {
        SwarmConfig {
            join,
            nodes,
            duration: Duration::from_secs(60),
            kill_every: None,
            down_for: Duration::from_secs(10),
            profile: "lan".into(),
            seed: 1,
            encrypt: None,
            base_port: 20_000,
            threads: None,
            progress: true,
            server_rpc: None,
        }
    }
}

/// Why the swarm could not run. Nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("unknown gossip profile {0:?} (lan, local or wan)")]
    Profile(String),
    #[error("--nodes must be at least 1")]
    NoNodes,
    #[error("ports {first}..={last} do not fit below 32768 (pick a lower --base-port)")]
    Ports { first: u16, last: u32 },
    #[error("no --join address")]
    NoJoin,
    #[error("--encrypt: {0}")]
    Key(String),
    #[error("binding 127.0.0.1:{port}: {source} (pick another --base-port)")]
    Bind { port: u16, source: std::io::Error },
    #[error("gossip core: {0}")]
    Gossip(#[from] cairn_net::gossip::GossipError),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// One kill and what followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRecord {
    pub victim: SocketAddr,
    /// Milliseconds since the swarm started.
    pub killed_at_ms: Millis,
    /// `None`: some live member still saw it alive or suspect when it was revived or the
    /// run ended.
    pub detection_ms: Option<Millis>,
    pub revived_at_ms: Option<Millis>,
    /// `None`: some live member did not see it alive by the end (or it was not revived).
    pub rejoin_ms: Option<Millis>,
    /// From the kill until the agent at `--server-rpc` listed it failed (`None`: not
    /// before it was revived or the run ended, or no agent was asked).
    pub server_detection_ms: Option<Millis>,
}

/// Traffic and error counters over all members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    /// send_to failed (a full socket buffer counts here: the datagram is lost).
    pub send_errors: u64,
    pub recv_errors: u64,
    /// Datagrams that did not open (wrong key, encryption on one side only) or decode.
    pub refused: u64,
    /// A revived member could not bind its port again.
    pub rebind_errors: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.packets_sent += o.packets_sent;
        self.bytes_sent += o.bytes_sent;
        self.packets_received += o.packets_received;
        self.bytes_received += o.bytes_received;
        self.send_errors += o.send_errors;
        self.recv_errors += o.recv_errors;
        self.refused += o.refused;
        self.rebind_errors += o.rebind_errors;
    }

    pub fn errors(&self) -> u64 {
        self.send_errors + self.recv_errors + self.refused + self.rebind_errors
    }
}

/// The outcome of a run.
#[derive(Debug)]
pub struct Summary {
    pub nodes: usize,
    pub threads: usize,
    pub duration_s: f64,
    /// When the sampled members first saw every swarm member alive; kills start after.
    pub converged_ms: Option<Millis>,
    pub kills: Vec<KillRecord>,
    /// Detection times, microseconds (for [`crate::hgrm::write`]).
    pub detection: Histogram<u64>,
    /// Rejoin times, microseconds.
    pub rejoin: Histogram<u64>,
    /// Detection as the agent at `--server-rpc` saw it, microseconds.
    pub server_detection: Histogram<u64>,
    pub counters: Counters,
}

impl Summary {
    pub fn detected(&self) -> usize {
        self.kills
            .iter()
            .filter(|k| k.detection_ms.is_some())
            .count()
    }

    pub fn revivals(&self) -> usize {
        self.kills
            .iter()
            .filter(|k| k.revived_at_ms.is_some())
            .count()
    }

    pub fn rejoined(&self) -> usize {
        self.kills.iter().filter(|k| k.rejoin_ms.is_some()).count()
    }

    /// The JSON summary (`--json`): parameters, figures in milliseconds, rates per
    /// member per second.
    pub fn to_json(&self, cfg: &SwarmConfig) -> serde_json::Value {
        let ms = |h: &Histogram<u64>, q: f64| {
            if h.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::json!(h.value_at_quantile(q) as f64 / 1000.0)
            }
        };
        let max = |h: &Histogram<u64>| {
            if h.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::json!(h.max() as f64 / 1000.0)
            }
        };
        let per = |v: u64| v as f64 / self.nodes as f64 / self.duration_s.max(1e-9);
        let c = &self.counters;
        let mut v = serde_json::json!({
            "nodes": self.nodes,
            "threads": self.threads,
            "duration_s": self.duration_s,
            "join": cfg.join.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "profile": cfg.profile,
            "seed": cfg.seed,
            "encrypted": cfg.encrypt.is_some(),
            "base_port": cfg.base_port,
            "kill_every_s": cfg.kill_every.map(|d| d.as_secs_f64()),
            "down_for_s": cfg.down_for.as_secs_f64(),
            "check_interval_ms": CHECK_INTERVAL_MS,
            "converged_ms": self.converged_ms,
            "kills": self.kills.len(),
            "detected": self.detected(),
            "revivals": self.revivals(),
            "rejoined": self.rejoined(),
            "detection_p50_ms": ms(&self.detection, 0.5),
            "detection_p99_ms": ms(&self.detection, 0.99),
            "detection_max_ms": max(&self.detection),
            "rejoin_p50_ms": ms(&self.rejoin, 0.5),
            "rejoin_p99_ms": ms(&self.rejoin, 0.99),
            "rejoin_max_ms": max(&self.rejoin),
            "packets_sent_per_member_s": per(c.packets_sent),
            "bytes_sent_per_member_s": per(c.bytes_sent),
            "packets_received_per_member_s": per(c.packets_received),
            "bytes_received_per_member_s": per(c.bytes_received),
            "errors": c.errors(),
            "send_errors": c.send_errors,
            "recv_errors": c.recv_errors,
            "refused": c.refused,
            "rebind_errors": c.rebind_errors,
            "events": self.kills.iter().map(|k| serde_json::json!({
                "victim": k.victim.to_string(),
                "killed_at_ms": k.killed_at_ms,
                "detection_ms": k.detection_ms,
                "revived_at_ms": k.revived_at_ms,
                "rejoin_ms": k.rejoin_ms,
            })).collect::<Vec<_>>(),
        });
        // The servers' point of view (with --server-rpc).
        v["server_rpc"] = serde_json::json!(cfg.server_rpc);
        v["server_detected"] = serde_json::json!(self.server_detection.len());
        v["server_detection_p50_ms"] = ms(&self.server_detection, 0.5);
        v["server_detection_p99_ms"] = ms(&self.server_detection, 0.99);
        v["server_detection_max_ms"] = max(&self.server_detection);
        if let Some(events) = v["events"].as_array_mut() {
            for (e, k) in events.iter_mut().zip(&self.kills) {
                e["server_detection_ms"] = serde_json::json!(k.server_detection_ms);
            }
        }
        v
    }

    /// The end-of-run table.
    pub fn table(&self) -> String {
        let row = |name: &str, h: &Histogram<u64>, done: usize, of: usize| {
            if h.is_empty() {
                format!(
                    "{name:<10} {done:>4}/{of:<4} {:>10} {:>10} {:>10}\n",
                    "-", "-", "-"
                )
            } else {
                format!(
                    "{name:<10} {done:>4}/{of:<4} {:>10.0} {:>10.0} {:>10.0}\n",
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0,
                    h.max() as f64 / 1000.0
                )
            }
        };
        let c = &self.counters;
        let per = |v: u64| v as f64 / self.nodes as f64 / self.duration_s.max(1e-9);
        let mut s = format!(
            "swarm: {} members on {} threads, {:.1} s, converged {}\n",
            self.nodes,
            self.threads,
            self.duration_s,
            match self.converged_ms {
                Some(ms) => format!("after {:.2} s", ms as f64 / 1000.0),
                None => "never".into(),
            }
        );
        s += &format!(
            "{:<10} {:>9} {:>10} {:>10} {:>10}\n",
            "", "done", "p50 ms", "p99 ms", "max ms"
        );
        s += &row(
            "detection",
            &self.detection,
            self.detected(),
            self.kills.len(),
        );
        s += &row("rejoin", &self.rejoin, self.rejoined(), self.revivals());
        if !self.server_detection.is_empty()
            || self.kills.iter().any(|k| k.server_detection_ms.is_some())
        {
            s += &row(
                "server",
                &self.server_detection,
                self.server_detection.len() as usize,
                self.kills.len(),
            );
        }
        s += &format!(
            "per member per second: sent {:.1} pkts {:.0} B, received {:.1} pkts {:.0} B\n",
            per(c.packets_sent),
            per(c.bytes_sent),
            per(c.packets_received),
            per(c.bytes_received)
        );
        s += &format!(
            "errors: {} (send {}, recv {}, refused {}, rebind {})\n",
            c.errors(),
            c.send_errors,
            c.recv_errors,
            c.refused,
            c.rebind_errors
        );
        s
    }
}

enum Cmd {
    Kill(usize),
    Revive(usize),
}

/// One member as its worker holds it. The socket stays with the worker thread (poll(2)
/// runs without the lock); the core is here so the controller can read its view.
struct Slot {
    addr: SocketAddr,
    core: Option<Gossip>,
    /// Bumped on every kill: timers of an earlier life are ignored.
    life: u32,
    /// When the current core started (`None` while down or not yet started).
    running_since: Option<Millis>,
    /// When the last kill or revival took effect.
    changed_at: Millis,
}

/// A worker's share, behind one lock shared with the controller.
struct Shard {
    /// Local index `j` is global member `j * threads + worker`.
    slots: Vec<Slot>,
    cmds: Vec<Cmd>,
    counters: Counters,
}

struct Shared {
    shards: Vec<Mutex<Shard>>,
    stop: AtomicBool,
    started: Instant,
}

impl Shared {
    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }
}

fn locate(i: usize, threads: usize) -> (usize, usize) {
    (i % threads, i / threads)
}

/// Runs the swarm to the end of `cfg.duration` and returns what it measured.
pub fn run(cfg: &SwarmConfig) -> Result<Summary, SwarmError> {
    let profile =
        Config::profile(&cfg.profile).ok_or_else(|| SwarmError::Profile(cfg.profile.clone()))?;
    if cfg.nodes == 0 {
        return Err(SwarmError::NoNodes);
    }
    if cfg.join.is_empty() {
        return Err(SwarmError::NoJoin);
    }
    let last = cfg.base_port as u32 + cfg.nodes as u32 - 1;
    if cfg.base_port == 0 || last >= 32_768 {
        return Err(SwarmError::Ports {
            first: cfg.base_port,
            last,
        });
    }
    let keyring = match &cfg.encrypt {
        Some(k) => Some(Keyring::new(
            Key::from_base64(k).map_err(|e| SwarmError::Key(e.to_string()))?,
        )),
        None => None,
    };
    let threads = cfg
        .threads
        .unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            cfg.nodes.div_ceil(100).min(cpus)
        })
        .clamp(1, cfg.nodes);
    // Bind everything first: a port in use is an error before anything runs.
    let mut sockets: Vec<Vec<Option<UdpSocket>>> = (0..threads).map(|_| Vec::new()).collect();
    let mut shards: Vec<Shard> = (0..threads)
        .map(|_| Shard {
            slots: Vec::new(),
            cmds: Vec::new(),
            counters: Counters::default(),
        })
        .collect();
    let addrs: Vec<SocketAddr> = (0..cfg.nodes)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], cfg.base_port + i as u16)))
        .collect();
    for (i, addr) in addrs.iter().enumerate() {
        let s = bind(*addr)?;
        let (w, _) = locate(i, threads);
        sockets[w].push(Some(s));
        shards[w].slots.push(Slot {
            addr: *addr,
            core: None,
            life: 0,
            running_since: None,
            changed_at: 0,
        });
    }
    // Validate the profile and metadata once, before any thread starts.
    Gossip::new(profile.clone(), addrs[0], &meta(0), 0, 0)?;
    let shared = Arc::new(Shared {
        shards: shards.into_iter().map(Mutex::new).collect(),
        stop: AtomicBool::new(false),
        started: Instant::now(),
    });
    let spread = (JOIN_SPREAD_MAX_MS / cfg.nodes as u64).clamp(0, 5);
    let mut handles = Vec::new();
    for (w, socks) in sockets.into_iter().enumerate() {
        let worker = Worker {
            shared: shared.clone(),
            w,
            threads,
            sockets: socks,
            profile: profile.clone(),
            join: cfg.join.clone(),
            keyring: keyring.clone(),
            rng: StdRng::from_os_rng(),
            seed: cfg.seed,
            timers: BTreeSet::new(),
            spread_ms: spread,
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("swarm-{w}"))
                .spawn(move || worker.run())
                .expect("spawning a thread"),
        );
    }
    let summary = control(cfg, &shared, &addrs, threads);
    shared.stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let mut summary = summary;
    for s in &shared.shards {
        let s = s.lock().expect("no worker panics holding the lock");
        summary.counters.add(&s.counters);
    }
    Ok(summary)
}

fn meta(i: usize) -> NodeMeta {
    NodeMeta {
        name: format!("swarm-{i}"),
        role: Role::Client,
        datacenter: "dc1".into(),
        ..NodeMeta::default()
    }
}

fn bind(addr: SocketAddr) -> Result<UdpSocket, SwarmError> {
    let s = UdpSocket::bind(addr).map_err(|source| SwarmError::Bind {
        port: addr.port(),
        source,
    })?;
    s.set_nonblocking(true).map_err(|source| SwarmError::Bind {
        port: addr.port(),
        source,
    })?;
    Ok(s)
}

struct Worker {
    shared: Arc<Shared>,
    w: usize,
    threads: usize,
    /// Indexed like the shard's slots; `None` while the member is down.
    sockets: Vec<Option<UdpSocket>>,
    profile: Config,
    join: Vec<SocketAddr>,
    keyring: Option<Keyring>,
    /// Draws nonces (cryptographically secure, as the agent's driver's).
    rng: StdRng,
    seed: u64,
    /// (when, local index, life, timer). The core never cancels timers, so a set is all
    /// it takes; a timer of an earlier life is dropped when it fires.
    timers: BTreeSet<(Millis, usize, u32, Timer)>,
    spread_ms: u64,
}

impl Worker {
    fn global(&self, j: usize) -> usize {
        j * self.threads + self.w
    }

    fn run(mut self) {
        let max_datagram = self.profile.max_packet_bytes
            + if self.keyring.is_some() {
                crypto::OVERHEAD
            } else {
                0
            };
        let mut buf = vec![0u8; max_datagram + 1];
        let n = self.sockets.len();
        // Members start one after another (see JOIN_SPREAD_MAX_MS).
        let mut next_start = 0usize;
        while !self.shared.stop.load(Ordering::Relaxed) {
            let now = self.shared.now();
            let start_at = |j: usize, me: &Worker| me.global(j) as u64 * me.spread_ms;
            let mut wake = now + POLL_MAX_MS;
            if let Some((at, ..)) = self.timers.first() {
                wake = wake.min(*at);
            }
            if next_start < n {
                wake = wake.min(start_at(next_start, &self));
            }
            let mut fds = Vec::with_capacity(n);
            let mut which = Vec::with_capacity(n);
            for (j, s) in self.sockets.iter().enumerate() {
                if let Some(s) = s {
                    fds.push(PollFd::new(s, PollFlags::IN));
                    which.push(j);
                }
            }
            let wait = Duration::from_millis(wake.saturating_sub(now));
            let ts = rustix::event::Timespec {
                tv_sec: wait.as_secs() as i64,
                tv_nsec: i64::from(wait.subsec_nanos()),
            };
            let ready: Vec<usize> = match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) | Err(_) => Vec::new(),
                Ok(_) => fds
                    .iter()
                    .zip(&which)
                    .filter(|(f, _)| !f.revents().is_empty())
                    .map(|(_, j)| *j)
                    .collect(),
            };
            drop(fds);
            let shared = self.shared.clone();
            let mut guard = shared.shards[self.w]
                .lock()
                .expect("the controller never panics holding the lock");
            let shard = &mut *guard;
            let now = self.shared.now();
            for cmd in std::mem::take(&mut shard.cmds) {
                match cmd {
                    Cmd::Kill(j) => {
                        self.sockets[j] = None;
                        let slot = &mut shard.slots[j];
                        slot.core = None;
                        slot.life += 1;
                        slot.running_since = None;
                        slot.changed_at = now;
                    }
                    Cmd::Revive(j) => match bind(shard.slots[j].addr) {
                        Ok(s) => {
                            self.sockets[j] = Some(s);
                            self.start(shard, j, now);
                            shard.slots[j].changed_at = now;
                        }
                        Err(_) => shard.counters.rebind_errors += 1,
                    },
                }
            }
            while next_start < n && start_at(next_start, &self) <= now {
                if shard.slots[next_start].core.is_none() && self.sockets[next_start].is_some() {
                    self.start(shard, next_start, now);
                }
                next_start += 1;
            }
            for j in ready {
                for _ in 0..READS_PER_WAKE {
                    let Some(sock) = &self.sockets[j] else { break };
                    match sock.recv_from(&mut buf) {
                        Ok((len, from)) => {
                            shard.counters.packets_received += 1;
                            shard.counters.bytes_received += len as u64;
                            if len == buf.len() {
                                shard.counters.refused += 1;
                                continue;
                            }
                            let Some(plain) = open(self.keyring.as_ref(), &buf[..len]) else {
                                shard.counters.refused += 1;
                                continue;
                            };
                            let Some(core) = shard.slots[j].core.as_mut() else {
                                break;
                            };
                            if core.handle_packet(now, from, &plain).is_err() {
                                shard.counters.refused += 1;
                            }
                            self.flush(shard, j, now);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            shard.counters.recv_errors += 1;
                            break;
                        }
                    }
                }
            }
            while self.timers.first().is_some_and(|(at, ..)| *at <= now) {
                let (_, j, life, timer) = self.timers.pop_first().expect("checked above");
                if shard.slots[j].life != life {
                    continue;
                }
                if let Some(core) = shard.slots[j].core.as_mut() {
                    core.handle_timer(now, timer);
                    self.flush(shard, j, now);
                }
            }
        }
    }

    /// A fresh core for member `j` at incarnation 0 (as a restarted agent), joining the
    /// seeds.
    fn start(&mut self, shard: &mut Shard, j: usize, now: Millis) {
        let i = self.global(j);
        let slot = &mut shard.slots[j];
        let seed = self
            .seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add((i as u64) << 20 | slot.life as u64);
        let mut core = Gossip::new(self.profile.clone(), slot.addr, &meta(i), 0, seed)
            .expect("validated in run()");
        core.join(now, &self.join)
            .expect("a fresh core has not left");
        slot.core = Some(core);
        slot.running_since = Some(now);
        self.flush(shard, j, now);
    }

    /// Drains member `j`'s outputs: seals and sends datagrams, records timers.
    fn flush(&mut self, shard: &mut Shard, j: usize, now: Millis) {
        let life = shard.slots[j].life;
        let Some(core) = shard.slots[j].core.as_mut() else {
            return;
        };
        let Some(sock) = &self.sockets[j] else { return };
        for o in core.drain_outputs() {
            match o {
                Output::Send { to, bytes } => {
                    let sealed;
                    let datagram: &[u8] = match &self.keyring {
                        Some(ring) => {
                            sealed = ring.encrypt(&mut self.rng, &bytes);
                            &sealed
                        }
                        None => &bytes,
                    };
                    match sock.send_to(datagram, to) {
                        Ok(n) => {
                            shard.counters.packets_sent += 1;
                            shard.counters.bytes_sent += n as u64;
                        }
                        Err(_) => shard.counters.send_errors += 1,
                    }
                }
                Output::SetTimer { at, timer } => {
                    self.timers.insert((at.max(now), j, life, timer));
                }
                // The controller reads views straight from the cores.
                Output::Event(_) => {}
            }
        }
    }
}

/// Opens a datagram as the agent's driver does: sealed when a keyring is set, plain
/// otherwise, and either kind refused on the other side.
fn open(keyring: Option<&Keyring>, data: &[u8]) -> Option<Bytes> {
    match keyring {
        Some(ring) => {
            if data.starts_with(&wire::MAGIC) {
                return None;
            }
            ring.decrypt(data).ok().map(Bytes::from)
        }
        None => {
            if data.first() == Some(&crypto::VERSION) && data.len() >= crypto::OVERHEAD {
                return None;
            }
            Some(Bytes::copy_from_slice(data))
        }
    }
}

/// A kill or revival whose convergence is still being waited for.
struct Pending {
    record: usize,
    victim: usize,
    revival: bool,
    since: Millis,
}

/// The controller: starts kills and revivals, checks convergence, prints progress.
fn control(cfg: &SwarmConfig, shared: &Shared, addrs: &[SocketAddr], threads: usize) -> Summary {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let end = cfg.duration.as_millis() as Millis;
    let kill_every = cfg.kill_every.map(|d| (d.as_millis() as Millis).max(1));
    let down_for = cfg.down_for.as_millis() as Millis;
    let seeds: BTreeSet<usize> = addrs
        .iter()
        .enumerate()
        .filter(|(_, a)| cfg.join.contains(a))
        .map(|(i, _)| i)
        .collect();
    let mut kills: Vec<KillRecord> = Vec::new();
    let mut detection = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let mut rejoin = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let mut pending: Vec<Pending> = Vec::new();
    // (member, record) waiting for their revival time.
    let mut down: Vec<(usize, usize, Millis)> = Vec::new();
    // Commands sent but not yet applied by a worker: (member, record, revival, sent at).
    let mut issued: Vec<(usize, usize, bool, Millis)> = Vec::new();
    let mut converged_ms = None;
    let mut server_detection = Histogram::<u64>::new(3).expect("3 significant digits is valid");
    let mut server = cfg.server_rpc.as_ref().map(|a| {
        ClusterClient::new(
            std::slice::from_ref(a),
            ClientOptions {
                timeout: Duration::from_secs(2),
                ..ClientOptions::default()
            },
        )
    });
    let mut next_server_check = 0;
    let mut next_kill = None;
    let mut next_view = 1_000;
    let mut next_converge_check = 0;
    let lock = |w: usize| {
        shared.shards[w]
            .lock()
            .expect("no worker panics holding the lock")
    };
    let status = |i: usize, of: &SocketAddr| -> Option<Status> {
        let (w, j) = locate(i, threads);
        let s = lock(w);
        let slot = &s.slots[j];
        slot.core
            .as_ref()
            .map(|c| c.status_of(of).map_or(Status::Dead, |(st, _)| st))
    };
    loop {
        let now = shared.now();
        if now >= end {
            break;
        }
        // Commands the workers have applied start their clocks.
        issued.retain(|&(i, record, revival, _)| {
            let (w, j) = locate(i, threads);
            let s = lock(w);
            let slot = &s.slots[j];
            let applied = if revival {
                slot.running_since.is_some()
            } else {
                slot.core.is_none()
            };
            if applied {
                let at = slot.changed_at;
                if revival {
                    kills[record].revived_at_ms = Some(at);
                } else {
                    kills[record].killed_at_ms = at;
                    down.push((i, record, at + down_for));
                }
                pending.push(Pending {
                    record,
                    victim: i,
                    revival,
                    since: at,
                });
            }
            !applied
        });
        // Convergence of pending kills and revivals, over every live member.
        pending.retain(|p| {
            let victim = addrs[p.victim];
            // A revived member is seen alive once seen at its current incarnation: after
            // an undetected kill, the old life's "alive" must not count.
            let life_incarnation = if p.revival {
                let (w, j) = locate(p.victim, threads);
                lock(w).slots[j]
                    .core
                    .as_ref()
                    .map_or(0, |c| c.incarnation())
            } else {
                0
            };
            let mut done = true;
            'all: for w in 0..threads {
                let s = lock(w);
                for (j, slot) in s.slots.iter().enumerate() {
                    if j * threads + w == p.victim || slot.running_since.is_none_or(|t| t > p.since)
                    {
                        continue;
                    }
                    let core = slot.core.as_ref().expect("running members have a core");
                    let seen = core.status_of(&victim);
                    let ok = if p.revival {
                        seen.is_some_and(|(st, inc)| st == Status::Alive && inc >= life_incarnation)
                    } else {
                        !matches!(seen, Some((Status::Alive | Status::Suspect, _)))
                    };
                    if !ok {
                        done = false;
                        break 'all;
                    }
                }
            }
            if done {
                let took = now - p.since;
                if p.revival {
                    kills[p.record].rejoin_ms = Some(took);
                    let _ = rejoin.record(took.max(1) * 1000);
                } else {
                    kills[p.record].detection_ms = Some(took);
                    let _ = detection.record(took.max(1) * 1000);
                }
            }
            !done
        });
        // The servers' view: the agent at --server-rpc lists a killed member failed.
        if let Some(client) = server.as_mut() {
            let watching: Vec<usize> = kills
                .iter()
                .enumerate()
                .filter(|(_, k)| k.server_detection_ms.is_none() && k.revived_at_ms.is_none())
                .filter(|(r, _)| !issued.iter().any(|x| x.1 == *r && !x.2))
                .map(|(r, _)| r)
                .collect();
            if !watching.is_empty() && now >= next_server_check {
                next_server_check = now + SERVER_CHECK_INTERVAL_MS;
                let req = Request {
                    datacenter: String::new(),
                    token: String::new(),
                    op: Op::Members,
                };
                if let Ok(Response::Members(members)) = client.call(&req) {
                    for r in watching {
                        let victim = kills[r].victim.to_string();
                        let failed = members.iter().any(|m| {
                            m.address == victim && (m.status == "failed" || m.status == "left")
                        });
                        if failed {
                            let took = now.saturating_sub(kills[r].killed_at_ms);
                            kills[r].server_detection_ms = Some(took);
                            let _ = server_detection.record(took.max(1) * 1000);
                        }
                    }
                }
            }
        }
        // Revivals due. A kill not yet detected stays undetected.
        let mut i = 0;
        while i < down.len() {
            let (v, record, at) = down[i];
            if at <= now {
                pending.retain(|p| p.victim != v || p.revival);
                let (w, j) = locate(v, threads);
                lock(w).cmds.push(Cmd::Revive(j));
                issued.push((v, record, true, now));
                down.swap_remove(i);
            } else {
                i += 1;
            }
        }
        // The initial join: sampled members see every swarm member alive.
        if converged_ms.is_none() && now >= next_converge_check {
            next_converge_check = now + 100;
            let sample: Vec<usize> = (0..addrs.len()).take(VIEW_SAMPLE).collect();
            let all = sample.iter().all(|&o| {
                addrs
                    .iter()
                    .enumerate()
                    .all(|(i, a)| i == o || status(o, a) == Some(Status::Alive))
            });
            if all {
                converged_ms = Some(now);
                next_kill = kill_every.map(|k| now + k);
            }
        }
        // The next kill: a random running member that is not a seed and not being
        // watched.
        if let (Some(at), Some(every)) = (next_kill, kill_every) {
            if now >= at {
                next_kill = Some(at + every);
                let busy = |i: usize| {
                    seeds.contains(&i)
                        || pending.iter().any(|p| p.victim == i)
                        || issued.iter().any(|x| x.0 == i)
                        || down.iter().any(|x| x.0 == i)
                };
                let candidates: Vec<usize> = (0..addrs.len()).filter(|&i| !busy(i)).collect();
                if !candidates.is_empty() {
                    let v = candidates[rng.random_range(0..candidates.len())];
                    let (w, j) = locate(v, threads);
                    lock(w).cmds.push(Cmd::Kill(j));
                    kills.push(KillRecord {
                        victim: addrs[v],
                        killed_at_ms: now,
                        detection_ms: None,
                        revived_at_ms: None,
                        rejoin_ms: None,
                        server_detection_ms: None,
                    });
                    issued.push((v, kills.len() - 1, false, now));
                }
            }
        }
        if now >= next_view {
            next_view += 1_000;
            if cfg.progress {
                eprintln!("{}", view_line(shared, addrs, threads, now, &kills));
            }
        }
        std::thread::sleep(Duration::from_millis(CHECK_INTERVAL_MS));
    }
    Summary {
        nodes: addrs.len(),
        threads,
        duration_s: shared.started.elapsed().as_secs_f64(),
        converged_ms,
        kills,
        detection,
        rejoin,
        server_detection,
        counters: Counters::default(),
    }
}

/// The progress line: running members, and how many swarm members the sampled ones see
/// as suspect or failed.
fn view_line(
    shared: &Shared,
    addrs: &[SocketAddr],
    threads: usize,
    now: Millis,
    kills: &[KillRecord],
) -> String {
    let mut running = 0;
    let mut sampled = 0;
    let mut live_sum = 0usize;
    let mut suspects = BTreeSet::new();
    let mut failed = BTreeSet::new();
    for w in 0..threads {
        let s = shared.shards[w]
            .lock()
            .expect("no worker panics holding the lock");
        for slot in &s.slots {
            let Some(core) = &slot.core else { continue };
            running += 1;
            live_sum += core.num_live();
            if sampled < VIEW_SAMPLE {
                sampled += 1;
                for a in addrs {
                    match core.status_of(a).map(|(st, _)| st) {
                        Some(Status::Suspect) => {
                            suspects.insert(*a);
                        }
                        Some(Status::Dead) => {
                            failed.insert(*a);
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    let detected = kills.iter().filter(|k| k.detection_ms.is_some()).count();
    let rejoined = kills.iter().filter(|k| k.rejoin_ms.is_some()).count();
    format!(
        "{:>5.1}s  running {running}/{}  mean view {:.1}  suspects {}  failed {}  kills {} \
         detected {detected} rejoined {rejoined}",
        now as f64 / 1000.0,
        addrs.len(),
        live_sum as f64 / running.max(1) as f64,
        suspects.len(),
        failed.len(),
        kills.len(),
    )
}

/// Writes the detection distribution to `path` and the rejoin distribution beside it
/// (`NAME-rejoin.hgrm`), both readable by `loadgen compare`. Returns the paths written.
pub fn write_hgrm(
    summary: &Summary,
    path: &std::path::Path,
) -> Result<Vec<std::path::PathBuf>, SwarmError> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "swarm".into());
    let rejoin_path = path.with_file_name(format!("{stem}-rejoin.hgrm"));
    let mut out = Vec::new();
    for (p, h) in [(path, &summary.detection), (&rejoin_path, &summary.rejoin)] {
        std::fs::write(p, crate::hgrm::write(h, 5)).map_err(|source| SwarmError::Write {
            path: p.display().to_string(),
            source,
        })?;
        out.push(p.to_path_buf());
    }
    Ok(out)
}
