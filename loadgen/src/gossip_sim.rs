//! `loadgen gossip-sim`: runs a scenario of `cairn_net::gossip::scenario` on the seeded
//! simulator (N copies of the gossip core in this process, on virtual time) and reports
//! it as text, as JSON (`--json`) and as an `.hgrm` of detection times (`--hgrm`) that
//! `loadgen compare` plots beside swarm and real-cluster runs.
//!
//! It prints its seed and every parameter first, as a command line that replays the run
//! exactly.

use std::fmt::Write as _;
use std::path::PathBuf;

use cairn_net::gossip::scenario::{self, quantile, Report, Scenario, ScenarioConfig};
use cairn_net::gossip::Config;
use hdrhistogram::Histogram;

/// Flags of `loadgen gossip-sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct GossipSimArgs {
    /// steady, crash, crash-wave, partition, mass-join or slow.
    #[arg(long, default_value = "crash")]
    pub scenario: String,
    #[arg(long, default_value_t = 10_000)]
    pub nodes: usize,
    /// Seed of everything random in the run (default: from the clock, and printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Probability that any one datagram is lost.
    #[arg(long, default_value_t = 0.01)]
    pub loss: f64,
    /// One-way latency: this minimum plus an exponential tail of mean --latency-mean-ms.
    #[arg(long, default_value_t = 1)]
    pub latency_min_ms: u64,
    #[arg(long, default_value_t = 1.0)]
    pub latency_mean_ms: f64,
    /// Gossip profile: lan, wan or local.
    #[arg(long, default_value = "lan")]
    pub profile: String,
    /// Override one gossip parameter, e.g. `--set probe_interval_ms=500` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<String>,
    /// Seconds of the measured steady window (the whole scenario for steady and slow;
    /// default 60 for those, 10 for the others).
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// crash: members crashed one after the other.
    #[arg(long, default_value_t = 5)]
    pub crashes: usize,
    /// crash-wave: fraction of the members crashing at once.
    #[arg(long, default_value_t = 0.01)]
    pub wave_fraction: f64,
    /// partition: fraction of the members cut off.
    #[arg(long, default_value_t = 0.2)]
    pub partition_fraction: f64,
    #[arg(long, default_value_t = 30)]
    pub partition_s: u64,
    /// mass-join: fraction of the members joining at once.
    #[arg(long, default_value_t = 0.1)]
    pub joiners_fraction: f64,
    /// slow: fraction of the members that stall again and again.
    #[arg(long, default_value_t = 0.01)]
    pub slow_fraction: f64,
    /// slow: longest stall.
    #[arg(long, default_value_t = 2_000)]
    pub stall_max_ms: u64,
    /// Longest wait for any one detection, update or convergence.
    #[arg(long, default_value_t = 60)]
    pub wait_s: u64,
    /// Write a JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the detection times (per crashed member and observer) as an `.hgrm` here.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
}

/// Builds the scenario from the flags, or says which flag is wrong.
pub fn config(a: &GossipSimArgs) -> Result<ScenarioConfig, String> {
    let scenario = Scenario::parse(&a.scenario).ok_or_else(|| {
        let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
        format!(
            "unknown scenario {:?} (one of {})",
            a.scenario,
            names.join(", ")
        )
    })?;
    if a.nodes < 2 {
        return Err("--nodes must be at least 2".into());
    }
    if !(0.0..1.0).contains(&a.loss) {
        return Err(format!("--loss must be in [0, 1), not {}", a.loss));
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mut gossip = Config::profile(&a.profile)
        .ok_or_else(|| format!("unknown profile {:?} (lan, wan or local)", a.profile))?;
    for s in &a.set {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| format!("--set {s:?}: expected NAME=VALUE"))?;
        gossip.set(k.trim(), v.trim())?;
    }
    gossip.validate().map_err(|e| e.to_string())?;
    let mut c = ScenarioConfig::new(scenario, a.nodes, seed);
    c.sim.loss = a.loss;
    c.sim.latency_min_ms = a.latency_min_ms;
    c.sim.latency_mean_ms = a.latency_mean_ms;
    c.sim.gossip = gossip;
    if let Some(d) = a.duration_s {
        c.duration_s = d;
    }
    c.crashes = a.crashes;
    c.wave_fraction = a.wave_fraction;
    c.partition_fraction = a.partition_fraction;
    c.partition_s = a.partition_s;
    c.joiners_fraction = a.joiners_fraction;
    c.slow_fraction = a.slow_fraction;
    c.stall_max_ms = a.stall_max_ms;
    c.wait_s = a.wait_s;
    Ok(c)
}

/// The command line that replays `c` (every parameter, the seed included).
pub fn command_line(a: &GossipSimArgs, c: &ScenarioConfig) -> String {
    let mut s = format!(
        "loadgen gossip-sim --scenario {} --nodes {} --seed {} --loss {} --latency-min-ms {} \
         --latency-mean-ms {} --profile {} --duration-s {} --wait-s {}",
        c.scenario.name(),
        c.sim.nodes,
        c.sim.seed,
        c.sim.loss,
        c.sim.latency_min_ms,
        c.sim.latency_mean_ms,
        a.profile,
        c.duration_s,
        c.wait_s
    );
    match c.scenario {
        Scenario::Crash => {
            let _ = write!(s, " --crashes {}", c.crashes);
        }
        Scenario::CrashWave => {
            let _ = write!(s, " --wave-fraction {}", c.wave_fraction);
        }
        Scenario::Partition => {
            let _ = write!(
                s,
                " --partition-fraction {} --partition-s {}",
                c.partition_fraction, c.partition_s
            );
        }
        Scenario::MassJoin => {
            let _ = write!(s, " --joiners-fraction {}", c.joiners_fraction);
        }
        Scenario::Slow => {
            let _ = write!(
                s,
                " --slow-fraction {} --stall-max-ms {}",
                c.slow_fraction, c.stall_max_ms
            );
        }
        Scenario::Steady => {}
    }
    for set in &a.set {
        let _ = write!(s, " --set {set}");
    }
    s
}

fn secs(ms: Option<u64>) -> Option<f64> {
    ms.map(|m| m as f64 / 1000.0)
}

fn peak_rss_mib() -> Option<f64> {
    rss_mib("VmHWM:")
}

/// A `/proc/self/status` memory line (`VmRSS:` now, `VmHWM:` the peak) in MiB.
fn rss_mib(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The JSON report: the fields issue 4 names, and the rest of what was measured.
pub fn json(c: &ScenarioConfig, r: &Report) -> serde_json::Value {
    let d = &r.detect_ms;
    let u = &r.disseminate_ms;
    serde_json::json!({
        "scenario": c.scenario.name(),
        "nodes": c.sim.nodes,
        "loss": c.sim.loss,
        "seed": c.sim.seed,
        "latency_min_ms": c.sim.latency_min_ms,
        "latency_mean_ms": c.sim.latency_mean_ms,
        "gossip": format!("{:?}", c.sim.gossip),
        "detect_p50_s": secs(quantile(d, 0.5)),
        "detect_p99_s": secs(quantile(d, 0.99)),
        "detect_p999_s": secs(quantile(d, 0.999)),
        "detect_max_s": secs(d.last().copied()),
        "detect_samples": d.len(),
        "undetected": r.undetected,
        "disseminate_p50_s": secs(quantile(u, 0.5)),
        "disseminate_p999_s": secs(quantile(u, 0.999)),
        "disseminate_max_s": secs(u.last().copied()),
        "undisseminated": r.undisseminated,
        "false_suspicions": r.counters.false_suspicions,
        "false_deaths": r.counters.false_deaths,
        "stalled_suspicions": r.counters.stalled_suspicions,
        "stalled_deaths": r.counters.stalled_deaths,
        "packets_per_node_per_s": r.steady.packets_per_node_per_s,
        "packets_per_node_per_s_max": r.steady.max_packets_per_node_per_s,
        "bytes_per_node_per_s": r.steady.bytes_per_node_per_s,
        "bytes_per_node_per_s_max": r.steady.max_bytes_per_node_per_s,
        "phase_packets_per_node_per_s": r.phase.packets_per_node_per_s,
        "phase_packets_per_node_per_s_max": r.phase.max_packets_per_node_per_s,
        "phase_bytes_per_node_per_s": r.phase.bytes_per_node_per_s,
        "phase_bytes_per_node_per_s_max": r.phase.max_bytes_per_node_per_s,
        "converge_s": secs(r.converge_ms),
        "datagrams_lost": r.counters.lost,
        "datagrams_refused": r.counters.refused,
        "virtual_s": r.virtual_ms as f64 / 1000.0,
        "build_s": r.build_s,
        "wall_s": r.run_s,
        "peak_rss_mib": peak_rss_mib(),
    })
}

/// The detection times as `.hgrm` text (recorded in µs, written in ms).
pub fn hgrm(r: &Report) -> Result<String, String> {
    let mut h =
        Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(|e| e.to_string())?;
    for ms in &r.detect_ms {
        h.record((*ms * 1_000).max(1)).map_err(|e| e.to_string())?;
    }
    Ok(crate::hgrm::write(&h, 5))
}

/// Runs the command: prints, writes the files, and says whether everything held (no
/// false death, every crash detected, every update delivered, refused datagrams none).
pub fn run(a: &GossipSimArgs) -> Result<bool, String> {
    let c = config(a)?;
    println!("{}", command_line(a, &c));
    println!("gossip: {:?}", c.sim.gossip);
    let t0 = std::time::Instant::now();
    let r = scenario::run(&c, &mut |line| {
        // Progress lines of long runs get the wall time and RSS beside them.
        if line.starts_with("  at ") {
            println!(
                "{line}; wall {:.0} s, RSS {} MiB",
                t0.elapsed().as_secs_f64(),
                rss_mib("VmRSS:").map_or("?".into(), |m| format!("{m:.0}"))
            );
        } else {
            println!("{line}");
        }
    })
    .map_err(|e| e.to_string())?;
    let j = json(&c, &r);
    let f = |k: &str| j[k].as_f64().map_or("-".into(), |v| format!("{v:.2}"));
    if !r.detect_ms.is_empty() {
        println!(
            "detection (per crashed member and observer, {} samples): p50 {} s, p99 {} s, \
             p99.9 {} s, max {} s; {} never",
            r.detect_ms.len(),
            f("detect_p50_s"),
            f("detect_p99_s"),
            f("detect_p999_s"),
            f("detect_max_s"),
            r.undetected
        );
    }
    println!(
        "update: p50 {} s, p99.9 {} s, max {} s; {} never",
        f("disseminate_p50_s"),
        f("disseminate_p999_s"),
        f("disseminate_max_s"),
        r.undisseminated
    );
    println!(
        "false suspicions {}, false deaths {}; about stalled members: {} suspicions, {} \
         deaths; datagrams lost {}, refused {}",
        r.counters.false_suspicions,
        r.counters.false_deaths,
        r.counters.stalled_suspicions,
        r.counters.stalled_deaths,
        r.counters.lost,
        r.counters.refused
    );
    println!(
        "traffic after the steady window: {:.2} packets/s, {:.0} B/s per node (max {:.2}, \
         {:.0})",
        r.phase.packets_per_node_per_s,
        r.phase.bytes_per_node_per_s,
        r.phase.max_packets_per_node_per_s,
        r.phase.max_bytes_per_node_per_s
    );
    println!(
        "virtual {:.0} s in {:.1} s wall (plus {:.1} s building); peak RSS {} MiB",
        r.virtual_ms as f64 / 1000.0,
        r.run_s,
        r.build_s,
        peak_rss_mib().map_or("?".into(), |m| format!("{m:.0}"))
    );
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&j).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &a.hgrm {
        if r.detect_ms.is_empty() {
            eprintln!(
                "loadgen: gossip-sim: the {} scenario crashes nobody: {} holds no detection \
                 times",
                c.scenario.name(),
                path.display()
            );
        }
        std::fs::write(path, hgrm(&r)?).map_err(|e| format!("{}: {e}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(r.counters.false_deaths == 0
        && r.undetected == 0
        && r.undisseminated == 0
        && r.counters.refused == 0)
}
