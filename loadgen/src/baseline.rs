//! `loadgen baseline`: Cairn beside the systems users would otherwise pick, measured by the
//! same client with the same histograms on the same machine.
//!
//! It installs etcd and Redis from Debian if they are missing, starts each system on
//! loopback only while it is measured (a 3-member etcd on 127.0.0.11-13, durable: every
//! write is fsynced by a quorum, as Cairn's are; one Redis with persistence off, an
//! in-memory reference and not a durable one), preloads the keys, runs the same workloads
//! against each, and writes per run an `.hgrm`, `.hlog` and `.json`, a `compare.svg`, and
//! a table with ratios to Cairn (`baseline.md`).
//!
//! Everything it starts is killed when it returns, on error too, and, through
//! `setpriv --pdeathsig`, if loadgen itself dies. A watchdog bounds the whole run.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cairn_net::rpc::message::Consistency;

use crate::compare;
use crate::kv::{self, KvRun};
use crate::workload::Mix;

/// One workload of the comparison: a mix and the consistency of its reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// As given (`read`, `read@stale`, `write`, `mixed:9/1`); names the output files.
    pub spec: String,
    pub mix: Mix,
    pub consistency: Consistency,
}

impl Workload {
    /// `MIX[@stale|default|consistent]`; without `@`, `default_consistency`.
    pub fn parse(spec: &str, default_consistency: Consistency) -> Result<Workload, String> {
        let (mix, consistency) = match spec.split_once('@') {
            None => (spec, default_consistency),
            Some((m, c)) => (m, parse_consistency(c)?),
        };
        let mix: Mix = mix.parse().map_err(|e| format!("{e}"))?;
        if matches!(mix, Mix::Cas | Mix::List) {
            return Err(format!(
                "baseline workload {spec:?}: use read, write or mixed:R/W (every target runs those)"
            ));
        }
        Ok(Workload {
            spec: spec.to_string(),
            mix,
            consistency,
        })
    }

    /// A file-name-safe form of the spec.
    pub fn slug(&self) -> String {
        self.spec
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    }

    fn reads(&self) -> bool {
        !matches!(self.mix, Mix::Write)
    }
}

pub fn parse_consistency(s: &str) -> Result<Consistency, String> {
    match s {
        "stale" => Ok(Consistency::Stale),
        "default" => Ok(Consistency::Default),
        "consistent" => Ok(Consistency::Consistent),
        other => Err(format!(
            "unknown consistency {other:?}: use stale, default or consistent"
        )),
    }
}

/// Where Cairn comes from.
#[derive(Debug, Clone)]
pub enum CairnSource {
    /// Not measured: the table has no ratios.
    None,
    /// A running agent's RPC address.
    Running(String),
    /// Start a one-server agent from this `cairn` binary, data in the run's temp dir.
    Start(PathBuf),
}

/// Everything a baseline run needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub out_dir: PathBuf,
    pub cairn: CairnSource,
    /// Which systems, in order: `cairn`, `etcd`, `redis`.
    pub systems: Vec<String>,
    pub workloads: Vec<Workload>,
    pub etcd_members: usize,
    /// The load of each run (`servers`, `mix` and `consistency` are set per run).
    pub template: KvRun,
    /// `apt-get install` what is missing.
    pub install: bool,
    /// The whole run, installs included, ends by then: everything started is killed.
    pub max_runtime: Duration,
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Row {
    pub system: String,
    pub workload: String,
    pub ops_per_s: f64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// loadgen's own CPU use over the run, in cores: near the machine's count, the client
    /// and not the server may be the limit.
    pub loadgen_cores: f64,
    pub hgrm: PathBuf,
}

/// Processes started by the baseline: killed (and the temp dir removed) on drop, or by
/// the watchdog.
#[derive(Clone)]
struct Supervisor {
    inner: Arc<Mutex<SupervisorState>>,
}

struct SupervisorState {
    children: Vec<(String, Child)>,
    temp: PathBuf,
}

impl Supervisor {
    fn new() -> Result<Supervisor, String> {
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let temp =
            std::env::temp_dir().join(format!("loadgen-baseline-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&temp).map_err(|e| format!("creating {}: {e}", temp.display()))?;
        Ok(Supervisor {
            inner: Arc::new(Mutex::new(SupervisorState {
                children: Vec::new(),
                temp,
            })),
        })
    }

    fn temp(&self) -> PathBuf {
        self.lock().temp.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SupervisorState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts `program args`, output to `<temp>/<name>.log`. Under `setpriv --pdeathsig
    /// KILL` when setpriv exists, so the child dies with loadgen even on SIGKILL.
    fn spawn(&self, name: &str, program: &str, args: &[String]) -> Result<(), String> {
        let log_path = self.temp().join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let err = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = if on_path("setpriv") {
            let mut c = Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--", program]);
            c
        } else {
            Command::new(program)
        };
        let child = cmd
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {program}: {e}"))?;
        self.lock().children.push((name.to_string(), child));
        Ok(())
    }

    /// Fails if a process started under `name` has exited, quoting its log.
    fn check_alive(&self, name: &str) -> Result<(), String> {
        let mut st = self.lock();
        let temp = st.temp.clone();
        for (n, c) in st.children.iter_mut().filter(|(n, _)| n == name) {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!(
                    "{n} exited ({status}); its log:\n{}",
                    log_tail(&temp.join(format!("{n}.log")))
                ));
            }
        }
        Ok(())
    }

    /// Kills and reaps everything started so far.
    fn stop_all(&self) {
        let mut st = self.lock();
        for (_, c) in st.children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        st.children.clear();
    }

    fn finish(&self) {
        self.stop_all();
        let temp = self.temp();
        let _ = std::fs::remove_dir_all(temp);
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(bin).is_file()))
}

/// A port nothing listens on at `ip` now.
fn free_port(ip: IpAddr) -> Result<u16, String> {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port on {ip}: {e}"))
}

/// Installs the Debian packages of the missing binaries.
fn ensure_installed(systems: &[String], install: bool) -> Result<(), String> {
    let wanted = [
        ("etcd", "etcd", "etcd-server"),
        ("redis", "redis-server", "redis-server"),
    ];
    let missing: Vec<(&str, &str)> = wanted
        .iter()
        .filter(|(s, bin, _)| systems.iter().any(|x| x == s) && !on_path(bin))
        .map(|(_, bin, pkg)| (*bin, *pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let pkgs: Vec<&str> = missing.iter().map(|m| m.1).collect();
    if !install {
        return Err(format!(
            "missing {}: install {} (or drop --no-install)",
            missing.iter().map(|m| m.0).collect::<Vec<_>>().join(", "),
            pkgs.join(" ")
        ));
    }
    eprintln!("loadgen: baseline: installing {}", pkgs.join(" "));
    let script = format!(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}",
        pkgs.join(" ")
    );
    let ok = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("running apt-get: {e}"))?
        .success();
    if !ok || missing.iter().any(|(bin, _)| !on_path(bin)) {
        return Err(format!("apt-get could not install {}", pkgs.join(" ")));
    }
    Ok(())
}

/// Waits until every server of `servers` answers a read, or the deadline.
fn wait_ready(
    sup: &Supervisor,
    name: &str,
    servers: &[String],
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        sup.check_alive(name)?;
        match kv::probe(servers, Consistency::Default, Duration::from_secs(2)) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "{name} did not answer within {} s: {last}",
        within.as_secs()
    ))
}

/// Starts an etcd cluster of `members` on 127.0.0.11, .12, ...; returns its `--servers`.
fn start_etcd(sup: &Supervisor, members: usize) -> Result<Vec<String>, String> {
    let mut nodes = Vec::new();
    for i in 0..members {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11 + i as u8));
        nodes.push((format!("m{}", i + 1), ip, free_port(ip)?, free_port(ip)?));
    }
    let cluster = nodes
        .iter()
        .map(|(n, ip, _, peer)| format!("{n}=http://{ip}:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let temp = sup.temp();
    for (name, ip, client, peer) in &nodes {
        let dir = temp.join(format!("etcd-{name}"));
        let args: Vec<String> = [
            "--name",
            name,
            "--data-dir",
            dir.to_str().ok_or("temp dir is not UTF-8")?,
            "--listen-client-urls",
            &format!("http://{ip}:{client}"),
            "--advertise-client-urls",
            &format!("http://{ip}:{client}"),
            "--listen-peer-urls",
            &format!("http://{ip}:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://{ip}:{peer}"),
            "--initial-cluster",
            &cluster,
            "--initial-cluster-token",
            "loadgen-baseline",
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        sup.spawn("etcd", "etcd", &args)?;
    }
    let servers: Vec<String> = nodes
        .iter()
        .map(|(_, ip, client, _)| format!("etcd://{ip}:{client}"))
        .collect();
    wait_ready(sup, "etcd", &servers, Duration::from_secs(60))?;
    Ok(servers)
}

fn start_redis(sup: &Supervisor) -> Result<Vec<String>, String> {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = free_port(ip)?;
    let dir = sup.temp().join("redis");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let args: Vec<String> = [
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        // In memory only: no RDB snapshots, no append-only file.
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir.to_str().ok_or("temp dir is not UTF-8")?,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sup.spawn("redis", "redis-server", &args)?;
    let servers = vec![format!("redis://127.0.0.1:{port}")];
    wait_ready(sup, "redis", &servers, Duration::from_secs(20))?;
    Ok(servers)
}

fn start_cairn(sup: &Supervisor, bin: &Path) -> Result<Vec<String>, String> {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let port = free_port(ip)?;
    let dir = sup.temp().join("cairn");
    let args: Vec<String> = [
        "agent",
        "--server",
        "--bootstrap-expect",
        "1",
        "--data-dir",
        dir.to_str().ok_or("temp dir is not UTF-8")?,
        "--server-port",
        &port.to_string(),
        "--serf-lan-port",
        "0",
        "--http-port",
        "-1",
        "--dns-port",
        "-1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let program = bin.to_str().ok_or("cairn binary path is not UTF-8")?;
    sup.spawn("cairn", program, &args)?;
    let servers = vec![format!("127.0.0.1:{port}")];
    wait_ready(sup, "cairn", &servers, Duration::from_secs(30))?;
    Ok(servers)
}

/// Runs one workload against `servers`, writes its files, returns its row.
fn measure(cfg: &Config, system: &str, servers: &[String], w: &Workload) -> Result<Row, String> {
    let mut run = cfg.template.clone();
    run.servers = servers.to_vec();
    run.mix = w.mix;
    run.consistency = w.consistency;
    let tag = format!("{system} {}", w.spec);
    let out = kv::run(&run, |p| eprintln!("[{tag}] {p}"))?;
    let params = serde_json::json!({
        "system": system, "servers": run.servers, "workload": w.spec,
        "keys": run.keys, "key_dist": format!("{:?}", run.dist), "value_size": run.value_size,
        "connections": run.connections, "pipeline": run.pipeline, "rate": run.rate,
        "duration_s": run.duration.as_secs_f64(), "warmup_s": run.warmup.as_secs_f64(),
        "consistency": format!("{:?}", run.consistency).to_lowercase(), "preload": w.reads(),
        "seed": run.seed, "timeout_ms": run.timeout.as_millis() as u64,
    });
    let mut summary = out.recorder.summary(out.measured, params);
    summary["loadgen_cpu_cores"] = serde_json::json!(out.cpu_cores_used);
    let stem = cfg.out_dir.join(format!("{system}-{}", w.slug()));
    let h = out.recorder.total();
    let write = |ext: &str, bytes: Vec<u8>| {
        let p = stem.with_extension(ext);
        std::fs::write(&p, bytes).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    write("hgrm", crate::hgrm::write(h, 5).into_bytes())?;
    write(
        "json",
        serde_json::to_vec_pretty(&summary).map_err(|e| e.to_string())?,
    )?;
    let hlog = out
        .recorder
        .interval_log(out.started)
        .map_err(|e| format!("interval log: {e}"))?;
    write("hlog", hlog)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if out.cpu_cores_used > 0.9 * cores {
        eprintln!(
            "[{tag}] note: loadgen used {:.1} of {cores} cores: it may be the limit",
            out.cpu_cores_used
        );
    }
    Ok(Row {
        system: system.to_string(),
        workload: w.spec.clone(),
        ops_per_s: summary["ops_per_s"].as_f64().unwrap_or(0.0),
        errors: out.recorder.error_total(),
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        loadgen_cores: out.cpu_cores_used,
        hgrm: stem.with_extension("hgrm"),
    })
}

/// The table: one line per run, with throughput and p99 as ratios to Cairn's run of the
/// same workload ("-" without one).
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | system | ops/s | p50 ms | p99 ms | p99.9 ms | errors | loadgen cores | ops/s ÷ Cairn | p99 ÷ Cairn |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |us: u64| format!("{:.3}", us as f64 / 1e3);
    for r in rows {
        let cairn = rows
            .iter()
            .find(|c| c.system == "cairn" && c.workload == r.workload);
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}×", a / b)
            } else {
                "-".to_string()
            }
        };
        let (ops_ratio, p99_ratio) = match cairn {
            Some(c) => (
                ratio(r.ops_per_s, c.ops_per_s),
                ratio(r.p99_us as f64, c.p99_us as f64),
            ),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {:.1} | {} | {} |",
            r.workload,
            r.system,
            r.ops_per_s,
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.p999_us),
            r.errors,
            r.loadgen_cores,
            ops_ratio,
            p99_ratio
        );
    }
    out
}

/// What the machine and the systems are, for the record beside the table.
pub fn machine_note() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or("?".to_string(), |kb| format!("{:.0}", kb / 1024.0 / 1024.0));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let version = |bin: &str| {
        Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "not installed".into())
    };
    // Other work on the machine skews every figure: say how busy it was.
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into());
    format!(
        "machine: {cores} cores ({cpu}), {mem_gib} GiB, load average {load} at the end; {}; {}",
        version("etcd"),
        version("redis-server")
    )
}

/// Runs the baseline; returns the rows and the table (also written to `baseline.md`).
pub fn run(cfg: &Config) -> Result<(Vec<Row>, String), String> {
    std::fs::create_dir_all(&cfg.out_dir)
        .map_err(|e| format!("creating {}: {e}", cfg.out_dir.display()))?;
    let sup = Supervisor::new()?;
    // The watchdog: past the limit, kill everything started and exit.
    {
        let sup = sup.clone();
        let limit = cfg.max_runtime;
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            eprintln!(
                "loadgen: baseline: still running after {} s (--max-runtime-s): stopping everything it started",
                limit.as_secs()
            );
            sup.finish();
            std::process::exit(3);
        });
    }
    let result = run_all(cfg, &sup);
    sup.finish();
    result
}

fn run_all(cfg: &Config, sup: &Supervisor) -> Result<(Vec<Row>, String), String> {
    ensure_installed(&cfg.systems, cfg.install)?;
    let mut rows = Vec::new();
    for system in &cfg.systems {
        let servers = match (system.as_str(), &cfg.cairn) {
            ("cairn", CairnSource::None) => {
                eprintln!("loadgen: baseline: no --cairn ADDR or --start-cairn: Cairn is left out and the table has no ratios");
                continue;
            }
            ("cairn", CairnSource::Running(addr)) => {
                let servers = vec![addr.clone()];
                kv::probe(&servers, Consistency::Default, Duration::from_secs(5))
                    .map_err(|e| format!("Cairn at {addr}: {e}"))?;
                servers
            }
            ("cairn", CairnSource::Start(bin)) => start_cairn(sup, bin)?,
            ("etcd", _) => start_etcd(sup, cfg.etcd_members)?,
            ("redis", _) => start_redis(sup)?,
            (other, _) => {
                return Err(format!(
                    "unknown system {other:?}: use cairn, etcd or redis"
                ))
            }
        };
        eprintln!("loadgen: baseline: {system} at {}", servers.join(","));
        if cfg.workloads.iter().any(Workload::reads) {
            eprintln!(
                "loadgen: baseline: {system}: preloading {} keys",
                cfg.template.keys
            );
            let mut p = cfg.template.clone();
            p.servers = servers.clone();
            kv::preload(&p).map_err(|e| format!("{system}: {e}"))?;
        }
        for w in &cfg.workloads {
            rows.push(measure(cfg, system, &servers, w)?);
        }
        // Stop it before the next system runs: each is measured on an otherwise idle
        // machine.
        sup.stop_all();
    }
    if rows.is_empty() {
        return Err("nothing was measured".into());
    }
    compare::register_font(None).map_err(|e| e.to_string())?;
    let load =
        |r: &Row, label: String| compare::load(&r.hgrm, Some(label)).map_err(|e| e.to_string());
    let all = rows
        .iter()
        .map(|r| load(r, format!("{} {}", r.system, r.workload)))
        .collect::<Result<Vec<_>, _>>()?;
    compare::plot(
        &all,
        &cfg.out_dir.join("compare.svg"),
        "Cairn and baselines",
    )
    .map_err(|e| e.to_string())?;
    for w in &cfg.workloads {
        let runs = rows
            .iter()
            .filter(|r| r.workload == w.spec)
            .map(|r| load(r, r.system.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let out = cfg.out_dir.join(format!("compare-{}.svg", w.slug()));
        compare::plot(&runs, &out, &format!("{} — Cairn and baselines", w.spec))
            .map_err(|e| e.to_string())?;
    }
    let t = &cfg.template;
    let mut text = format!(
        "{}\nload: {} connections, pipeline {}, {} keys, {}-byte values, {} s measured after {} s warmup, {}; cairn: {}; etcd: {} members, durable; redis: in memory, no persistence\n\n",
        machine_note(),
        t.connections,
        t.pipeline,
        t.keys,
        t.value_size,
        t.duration.as_secs_f64(),
        t.warmup.as_secs_f64(),
        if t.rate > 0.0 {
            format!("open loop at {} ops/s", t.rate)
        } else {
            "closed loop".to_string()
        },
        match &cfg.cairn {
            CairnSource::None => "not measured".to_string(),
            CairnSource::Running(addr) => format!("the server at {addr}"),
            CairnSource::Start(_) => "one server started here, durable".to_string(),
        },
        cfg.etcd_members,
    );
    text.push_str(&table(&rows));
    let md = cfg.out_dir.join("baseline.md");
    std::fs::write(&md, &text).map_err(|e| format!("writing {}: {e}", md.display()))?;
    Ok((rows, text))
}
