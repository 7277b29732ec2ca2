//! `loadgen`: drives Cairn clusters and compares latency histograms.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loadgen::compare;

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Cairn's load generator and histogram tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Drive a Cairn cluster through the binary RPC protocol (or Redis, etcd, a Consul HTTP
    /// API, for baselines) and report latencies.
    Kv(KvArgs),
    /// Start local clusters of each size from the `cairn` binary, run the same workload
    /// against each, and write histograms, summaries and a comparison plot to one folder.
    Sweep(SweepArgs),
    /// Start a 3-member etcd and a Redis on loopback (installing them if missing), run
    /// the same workloads against them and Cairn, and print a table with ratios to Cairn.
    Baseline(BaselineArgs),
    /// Run N lightweight gossip members in this process, joined to a real cluster's LAN
    /// gossip; kill and revive them on a schedule and time detection and rejoin.
    Swarm(SwarmArgs),
    /// Simulate a gossip pool of N members in this process on virtual time (seeded,
    /// replayable with --seed) and report detection, dissemination, false alarms and
    /// traffic for one scenario.
    GossipSim(loadgen::gossip_sim::GossipSimArgs),
    /// Register N nodes x S services, time how fast blocking watchers of one service see
    /// a health change, measure `service NAME --passing` reads and the servers' memory.
    Catalog(loadgen::catalog::CatalogArgs),
    /// Plot the percentile spectra of several runs (.hgrm files from any source) into one
    /// picture, and print throughput and p50/p90/p99/p99.9/max side by side.
    Compare {
        /// `.hgrm` files; a `.json` summary beside one (same name) adds its throughput.
        #[arg(required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Output picture: `.svg` or `.png`.
        #[arg(long)]
        out: PathBuf,
        /// Labels for the runs, comma-separated, in the order of the files (default: the
        /// file names).
        #[arg(long, value_delimiter = ',')]
        labels: Vec<String>,
        /// Title of the plot.
        #[arg(long, default_value = "Latency by percentile")]
        title: String,
        /// TrueType font for the text (default: DejaVu Sans from the system).
        #[arg(long)]
        font: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct KvArgs {
    /// Server addresses, comma-separated; connections are spread over them. `HOST:PORT` or
    /// `cairn://HOST:PORT` is Cairn's binary RPC; baselines: `redis://HOST:PORT` (RESP),
    /// `etcd://HOST:PORT,HOST:PORT...` (v3 HTTP/JSON gateway), `consul+http://HOST:PORT`
    /// (Consul's HTTP KV API). An address without a scheme takes the one before it.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8300")]
    servers: Vec<String>,
    /// read | write | mixed:R/W | cas | list
    #[arg(long, default_value = "read")]
    workload: loadgen::workload::Mix,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    /// uniform | zipf:S
    #[arg(long, default_value = "uniform")]
    key_dist: loadgen::workload::KeyDist,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(0..=524_288))]
    value_size: u64,
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    connections: u64,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pipeline: u64,
    /// Worker threads, each driving its share of the connections over one poll(2)
    /// (default: one per CPU). With the server on the same machine, fewer leave it
    /// cores: on 2 cores against a loopback server, 1 thread gave the lower p99.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// Requests per second in total (open loop, latency from the intended send time);
    /// 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds to measure.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// stale | default | consistent
    #[arg(long, default_value = "default")]
    consistency: String,
    /// Write every key once before the run.
    #[arg(long)]
    preload: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give up on a request after this many milliseconds (counted as a timeout).
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// HdrHistogram interval log.
    #[arg(long)]
    hlog: Option<PathBuf>,
    /// Percentile distribution (.hgrm).
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// JSON summary.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct SweepArgs {
    /// Cluster sizes to compare (1 to 9 servers each). Connections are spread over every
    /// server of a cluster; followers forward writes and non-stale reads to the leader.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    sizes: Vec<u32>,
    /// Folder for the results (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
    /// The `cairn` binary (default: the one next to loadgen, else `cairn` on PATH).
    #[arg(long)]
    cairn: Option<PathBuf>,
    #[command(flatten)]
    kv: KvArgs,
}

#[derive(clap::Args, Debug)]
struct BaselineArgs {
    /// Folder for the results (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
    /// A running Cairn server's RPC address (e.g. `cairn agent --dev` at 127.0.0.1:8300).
    #[arg(long, conflicts_with = "start_cairn")]
    cairn: Option<String>,
    /// Start a one-server Cairn (durable, data in a temp dir) from the `cairn` binary.
    #[arg(long)]
    start_cairn: bool,
    /// The `cairn` binary for --start-cairn (default: the one next to loadgen, else
    /// `cairn` on PATH).
    #[arg(long)]
    cairn_bin: Option<PathBuf>,
    /// Systems to measure, in order: cairn, etcd, redis.
    #[arg(long, value_delimiter = ',', default_value = "cairn,etcd,redis")]
    systems: Vec<String>,
    /// Workloads, each `read|write|mixed:R/W` with an optional `@stale|@default|@consistent`
    /// for its reads (default: --consistency).
    #[arg(long, value_delimiter = ',', default_value = "read,write")]
    workloads: Vec<String>,
    /// stale | default | consistent (etcd: stale = serializable, else linearizable).
    #[arg(long, default_value = "default")]
    consistency: String,
    /// Members of the etcd cluster (on 127.0.0.11, .12, ...).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    etcd_members: u64,
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    keys: u64,
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=524_288))]
    value_size: u64,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    connections: u64,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pipeline: u64,
    /// Requests per second in total (open loop); 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds to measure each workload.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Give up on a request after this many milliseconds (counted as a timeout).
    #[arg(long, default_value_t = 5_000)]
    timeout_ms: u64,
    /// Do not apt-get install etcd-server / redis-server when missing.
    #[arg(long)]
    no_install: bool,
    /// Stop everything and fail after this many seconds in all.
    #[arg(long, default_value_t = 1_800, value_parser = clap::value_parser!(u64).range(1..))]
    max_runtime_s: u64,
}

fn baseline(a: BaselineArgs) -> ExitCode {
    use loadgen::baseline::{self, CairnSource, Workload};
    let usage = |e: String| {
        eprintln!("loadgen: baseline: {e}");
        ExitCode::from(2)
    };
    let consistency = match baseline::parse_consistency(&a.consistency) {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let workloads = match a
        .workloads
        .iter()
        .map(|w| Workload::parse(w, consistency))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(w) if !w.is_empty() => w,
        Ok(_) => return usage("no workloads".into()),
        Err(e) => return usage(e),
    };
    let valid = a.rate.is_finite()
        && a.rate >= 0.0
        && a.duration.is_finite()
        && a.duration > 0.0
        && a.warmup.is_finite()
        && a.warmup >= 0.0;
    if !valid {
        return usage("--rate and --warmup must be >= 0 and --duration > 0".into());
    }
    if let Some(s) = a
        .systems
        .iter()
        .find(|s| !["cairn", "etcd", "redis"].contains(&s.as_str()))
    {
        return usage(format!("unknown system {s:?}: use cairn, etcd or redis"));
    }
    let cairn = match (&a.cairn, a.start_cairn) {
        (Some(addr), _) => CairnSource::Running(addr.clone()),
        (None, true) => CairnSource::Start(a.cairn_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("cairn")))
                .filter(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from("cairn"))
        })),
        (None, false) => CairnSource::None,
    };
    let cfg = baseline::Config {
        out_dir: a.out_dir,
        cairn,
        systems: a.systems,
        workloads,
        etcd_members: a.etcd_members as usize,
        template: loadgen::kv::KvRun {
            servers: Vec::new(),
            mix: loadgen::workload::Mix::Read,
            keys: a.keys,
            dist: loadgen::workload::KeyDist::Uniform,
            value_size: a.value_size as usize,
            connections: a.connections as usize,
            pipeline: a.pipeline as usize,
            rate: a.rate,
            duration: std::time::Duration::from_secs_f64(a.duration),
            warmup: std::time::Duration::from_secs_f64(a.warmup),
            consistency,
            seed: a.seed,
            timeout: std::time::Duration::from_millis(a.timeout_ms),
        },
        install: !a.no_install,
        max_runtime: std::time::Duration::from_secs(a.max_runtime_s),
    };
    match baseline::run(&cfg) {
        Ok((_, text)) => {
            print!("{text}");
            println!("wrote {}", cfg.out_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: baseline: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A local agent started by `sweep`, stopped on drop.
struct LocalAgent(std::process::Child);

impl Drop for LocalAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `n` servers on loopback (fresh data directories under `dir`, free ports), each
/// told about all the others, and waits until they agree on a leader.
fn start_cluster(
    cairn: &std::path::Path,
    dir: &std::path::Path,
    n: u32,
) -> Result<(Vec<LocalAgent>, Vec<String>), String> {
    // Hold every probe listener until all ports are chosen, so no two servers get the
    // same one.
    let probes = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("finding free ports: {e}"))?;
    let addrs = probes
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("finding free ports: {e}"))?;
    // And a UDP port each for the LAN gossip pool, through which the servers find each
    // other.
    let udp = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("finding free UDP ports: {e}"))?;
    let serf_ports = udp
        .iter()
        .map(|s| s.local_addr().map(|a| a.port().to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("finding free UDP ports: {e}"))?;
    drop(probes);
    drop(udp);
    let join = serf_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut agents = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let port = addr.rsplit(':').next().unwrap_or_default();
        let data = dir.join(format!("server-{}", i + 1));
        let d = data.to_str().ok_or("data dir is not UTF-8")?;
        agents.push(LocalAgent(
            std::process::Command::new(cairn)
                .args(["agent", "--server", "--node", &format!("server-{}", i + 1)])
                .args(["--data-dir", d, "--server-port", port])
                .args([
                    "--serf-lan-port",
                    &serf_ports[i],
                    "--http-port",
                    "-1",
                    "--dns-port",
                    "-1",
                ])
                .args(["--bootstrap-expect", &n.to_string(), "--retry-join", &join])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::inherit())
                .spawn()
                .map_err(|e| format!("starting {}: {e}", cairn.display()))?,
        ));
    }
    let leader_of = |addr: &str| {
        std::process::Command::new(cairn)
            .args(["status", "leader", "--rpc-addr", addr])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let named: Vec<Option<String>> = addrs.iter().map(|a| leader_of(a)).collect();
        if named[0].is_some() && named.iter().all(|l| *l == named[0]) {
            return Ok((agents, addrs));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(format!(
        "the {n} servers at {join} did not agree on a leader within 60 s"
    ))
}

fn sweep(a: SweepArgs) -> ExitCode {
    if let Some(n) = a.sizes.iter().find(|n| !(1..=9).contains(*n)) {
        eprintln!("loadgen: sweep: a cluster of {n} servers: sizes go from 1 to 9");
        return ExitCode::from(2);
    }
    let cairn = a.cairn.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("cairn")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("cairn"))
    });
    if let Err(e) = std::fs::create_dir_all(&a.out_dir) {
        eprintln!("loadgen: sweep: creating {}: {e}", a.out_dir.display());
        return ExitCode::FAILURE;
    }
    let mut files = Vec::new();
    for n in &a.sizes {
        let dir = a.out_dir.join(format!("cluster-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        let (agents, addrs) = match start_cluster(&cairn, &dir, *n) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("loadgen: sweep: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("loadgen: sweep: {n} server(s) at {}", addrs.join(","));
        let mut k = a.kv.clone();
        k.servers = addrs;
        let stem = a.out_dir.join(format!("size-{n}"));
        k.hgrm = Some(stem.with_extension("hgrm"));
        k.json = Some(stem.with_extension("json"));
        k.hlog = Some(stem.with_extension("hlog"));
        let code = kv(k);
        drop(agents);
        if code != ExitCode::SUCCESS {
            return code;
        }
        files.push((stem.with_extension("hgrm"), format!("{n} server(s)")));
    }
    let out = a.out_dir.join("compare.svg");
    let result = (|| {
        compare::register_font(None)?;
        let runs = files
            .iter()
            .map(|(f, label)| compare::load(f, Some(label.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        compare::plot(&runs, &out, "Latency by cluster size")?;
        Ok::<_, compare::CompareError>(runs)
    })();
    match result {
        Ok(runs) => {
            print!("{}", compare::table(&runs));
            println!("wrote {}", a.out_dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: sweep: {e}");
            ExitCode::FAILURE
        }
    }
}

fn kv(a: KvArgs) -> ExitCode {
    use cairn_net::rpc::message::Consistency;
    let consistency = match a.consistency.as_str() {
        "stale" => Consistency::Stale,
        "default" => Consistency::Default,
        "consistent" => Consistency::Consistent,
        other => {
            eprintln!("loadgen: unknown consistency {other:?}: use stale, default or consistent");
            return ExitCode::from(2);
        }
    };
    let valid = a.rate.is_finite()
        && a.rate >= 0.0
        && a.duration.is_finite()
        && a.duration > 0.0
        && a.warmup.is_finite()
        && a.warmup >= 0.0;
    if !valid {
        eprintln!("loadgen: --rate and --warmup must be >= 0 and --duration > 0");
        return ExitCode::from(2);
    }
    let run = loadgen::kv::KvRun {
        servers: a.servers.clone(),
        mix: a.workload,
        keys: a.keys,
        dist: a.key_dist,
        value_size: a.value_size as usize,
        connections: a.connections as usize,
        pipeline: a.pipeline as usize,
        rate: a.rate,
        duration: std::time::Duration::from_secs_f64(a.duration),
        warmup: std::time::Duration::from_secs_f64(a.warmup),
        consistency,
        seed: a.seed,
        timeout: std::time::Duration::from_millis(a.timeout_ms),
    };
    if let Err(e) = loadgen::kv::targets_of(&run) {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    if a.preload {
        eprintln!("loadgen: preloading {} keys", a.keys);
        if let Err(e) = loadgen::kv::preload(&run) {
            eprintln!("loadgen: preload failed: {e}");
            return ExitCode::FAILURE;
        }
    }
    let threads = a
        .threads
        .map_or_else(loadgen::kv::default_threads, |n| n as usize);
    let out = match loadgen::kv::run_on(&run, threads, |p| eprintln!("{p}")) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let params = serde_json::json!({
        "servers": a.servers, "workload": format!("{:?}", a.workload), "keys": a.keys,
        "key_dist": format!("{:?}", a.key_dist), "value_size": a.value_size,
        "connections": a.connections, "pipeline": a.pipeline, "rate": a.rate,
        "duration_s": a.duration, "warmup_s": a.warmup, "consistency": a.consistency,
        "preload": a.preload, "seed": a.seed, "timeout_ms": a.timeout_ms,
        "threads": threads,
    });
    let mut summary = out.recorder.summary(out.measured, params);
    summary["loadgen_cpu_cores"] = serde_json::json!(out.cpu_cores_used);
    summary["loadgen_busy_share"] = serde_json::json!(out.busy_share);
    let h = out.recorder.total();
    println!(
        "ops/s      {:>12.0}",
        summary["ops_per_s"].as_f64().unwrap_or(0.0)
    );
    println!("ops        {:>12}", h.len());
    for (k, name) in [
        ("timeouts", "timeouts"),
        ("not_leader", "not leader"),
        ("cas_failed", "cas failed"),
        ("other_errors", "other errors"),
    ] {
        println!("{name:<11}{:>12}", summary[k]);
    }
    for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        println!("{label:<11}{:>9.3} ms", h.value_at_quantile(q) as f64 / 1e3);
    }
    println!("max        {:>9.3} ms", h.max() as f64 / 1e3);
    println!(
        "loadgen    {:>9.2} cores, busiest of {threads} threads busy {:.0}%",
        out.cpu_cores_used,
        out.busy_share * 100.0
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if out.cpu_cores_used > 0.9 * cores {
        println!(
            "note: loadgen used {:.1} of {cores} cores: it, not the server, may be the limit",
            out.cpu_cores_used
        );
    } else if out.busy_share > 0.9 {
        println!(
            "note: a loadgen thread was busy {:.0}% of the run (not waiting for the server): loadgen, not the server, may be the limit; try more --threads",
            out.busy_share * 100.0
        );
    }
    if a.rate > 0.0 {
        let achieved = summary["ops_per_s"].as_f64().unwrap_or(0.0);
        if achieved < 0.95 * a.rate {
            println!("note: achieved {achieved:.0} ops/s of the {} requested: the target rate was not sustained", a.rate);
        }
    }
    let write = |path: &Option<PathBuf>, bytes: Vec<u8>| -> bool {
        match path {
            Some(p) => match std::fs::write(p, bytes) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("loadgen: writing {}: {e}", p.display());
                    false
                }
            },
            None => true,
        }
    };
    let mut ok = write(&a.hgrm, loadgen::hgrm::write(h, 5).into_bytes());
    ok &= write(
        &a.json,
        serde_json::to_vec_pretty(&summary).unwrap_or_default(),
    );
    if a.hlog.is_some() {
        match out.recorder.interval_log(out.started) {
            Ok(b) => ok &= write(&a.hlog, b),
            Err(e) => {
                eprintln!("loadgen: interval log: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[derive(clap::Args, Debug)]
struct SwarmArgs {
    /// Gossip addresses to join, comma-separated (servers' --serf-lan-port, or a swarm
    /// member's own address to make it the seed).
    #[arg(long, value_delimiter = ',', required = true)]
    join: Vec<std::net::SocketAddr>,
    /// Members to run; member i binds 127.0.0.1:(base-port + i).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=30_000))]
    nodes: u64,
    /// Seconds to run in all.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Seconds between kills of a random member (0 = none); the first comes this long
    /// after the swarm has converged.
    #[arg(long, default_value_t = 0.0)]
    kill_every: f64,
    /// Seconds a killed member stays down before it restarts and rejoins.
    #[arg(long, default_value_t = 10.0)]
    down_for: f64,
    /// Gossip timings: lan | local (as the agent's --dev uses).
    #[arg(long, default_value = "lan")]
    profile: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The pool's base64 gossip key, if it uses --encrypt.
    #[arg(long)]
    encrypt: Option<String>,
    /// First UDP port (all ports must stay below 32768).
    #[arg(long, default_value_t = 20_000)]
    base_port: u16,
    /// Worker threads (default: one per 100 members, at most one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// Detection distribution (.hgrm); rejoin goes beside it as NAME-rejoin.hgrm.
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// JSON summary.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A Cairn agent's RPC address (HOST:PORT): its member list is polled to time
    /// detection from the servers' point of view as well.
    #[arg(long)]
    server_rpc: Option<String>,
}

fn swarm(a: SwarmArgs) -> ExitCode {
    use loadgen::swarm::{self, SwarmConfig};
    let secs = |name: &str, v: f64| {
        if v.is_finite() && v >= 0.0 {
            Ok(std::time::Duration::from_secs_f64(v))
        } else {
            Err(format!(
                "--{name} must be a number of seconds >= 0, not {v}"
            ))
        }
    };
    let parsed = (|| {
        let mut c = SwarmConfig::new(a.join.clone(), a.nodes as usize);
        c.duration = secs("duration", a.duration)?;
        c.kill_every = Some(secs("kill-every", a.kill_every)?).filter(|d| !d.is_zero());
        c.down_for = secs("down-for", a.down_for)?;
        c.profile = a.profile.clone();
        c.seed = a.seed;
        c.encrypt = a.encrypt.clone();
        c.base_port = a.base_port;
        c.threads = a.threads.map(|t| t as usize);
        c.server_rpc = a.server_rpc.clone();
        Ok::<_, String>(c)
    })();
    let cfg = match parsed {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: swarm: {e}");
            return ExitCode::from(2);
        }
    };
    let summary = match swarm::run(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("loadgen: swarm: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", summary.table());
    let mut ok = true;
    if let Some(p) = &a.hgrm {
        match swarm::write_hgrm(&summary, p) {
            Ok(paths) => {
                for p in paths {
                    println!("wrote {}", p.display());
                }
            }
            Err(e) => {
                eprintln!("loadgen: swarm: {e}");
                ok = false;
            }
        }
    }
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&summary.to_json(&cfg)).expect("plain JSON");
        match std::fs::write(p, text + "\n") {
            Ok(()) => println!("wrote {}", p.display()),
            Err(e) => {
                eprintln!("loadgen: swarm: writing {}: {e}", p.display());
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Kv(a) => kv(a),
        Command::Sweep(a) => sweep(a),
        Command::Baseline(a) => baseline(a),
        Command::Swarm(a) => swarm(a),
        Command::GossipSim(a) => match loadgen::gossip_sim::run(&a) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("loadgen: gossip-sim: {e}");
                ExitCode::from(2)
            }
        },
        Command::Catalog(a) => loadgen::catalog::main(a),
        Command::Compare {
            files,
            out,
            labels,
            title,
            font,
        } => {
            if !labels.is_empty() && labels.len() != files.len() {
                eprintln!(
                    "loadgen: {} labels for {} files: give one label per file",
                    labels.len(),
                    files.len()
                );
                return ExitCode::from(2);
            }
            let result = (|| {
                compare::register_font(font.as_deref())?;
                let mut runs = Vec::new();
                for (i, f) in files.iter().enumerate() {
                    runs.push(compare::load(f, labels.get(i).cloned())?);
                }
                compare::plot(&runs, &out, &title)?;
                Ok::<_, compare::CompareError>(runs)
            })();
            match result {
                Ok(runs) => {
                    print!("{}", compare::table(&runs));
                    println!("wrote {}", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadgen: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
