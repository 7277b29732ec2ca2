//! A large gossip simulation: detection latency, dissemination and bandwidth.
//!
//! ```text
//! cargo run --release -p cairn-net --example gossip_sim -- --nodes 10000 --seed 1
//!     [--loss 0.01] [--crashes 5] [--profile lan] [--latency-min-ms 1]
//!     [--latency-mean-ms 1] [--steady-s 10] [--suspicion-mult M] [--named]
//!     [--hgrm FILE]   (per-member detection times as an .hgrm for `loadgen compare`)
//! ```
//!
//! Starts a converged cluster (every member already knows every other), runs
//! `--steady-s` seconds to measure steady-state traffic, spreads one metadata update,
//! then crashes `--crashes` random members one after the other, each time waiting until
//! every live member has marked it failed (or 60 s). Prints the seed and every parameter
//! first: the same command replays the same run.

use cairn_net::gossip::sim::{quantile, Sim, SimConfig};
use cairn_net::gossip::{Config, NodeMeta};
use std::time::Instant;

struct Args {
    nodes: usize,
    seed: u64,
    loss: f64,
    crashes: usize,
    profile: String,
    latency_min_ms: u64,
    latency_mean_ms: f64,
    steady_s: u64,
    named: bool,
    suspicion_mult: Option<u32>,
    hgrm: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        nodes: 1_000,
        seed: 1,
        loss: 0.01,
        crashes: 5,
        profile: "lan".into(),
        latency_min_ms: 1,
        latency_mean_ms: 1.0,
        steady_s: 10,
        named: false,
        suspicion_mult: None,
        hgrm: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--named" {
            a.named = true;
            continue;
        }
        let v = it.next().ok_or(format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("bad value {v:?} for {flag}: {e}");
        match flag.as_str() {
            "--nodes" => a.nodes = v.parse().map_err(|e| bad(&e))?,
            "--seed" => a.seed = v.parse().map_err(|e| bad(&e))?,
            "--loss" => a.loss = v.parse().map_err(|e| bad(&e))?,
            "--crashes" => a.crashes = v.parse().map_err(|e| bad(&e))?,
            "--profile" => a.profile = v.clone(),
            "--latency-min-ms" => a.latency_min_ms = v.parse().map_err(|e| bad(&e))?,
            "--latency-mean-ms" => a.latency_mean_ms = v.parse().map_err(|e| bad(&e))?,
            "--suspicion-mult" => a.suspicion_mult = Some(v.parse().map_err(|e| bad(&e))?),
            "--steady-s" => a.steady_s = v.parse().map_err(|e| bad(&e))?,
            "--hgrm" => a.hgrm = Some(v.clone()),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn secs(ms: Option<u64>) -> f64 {
    ms.map_or(f64::NAN, |m| m as f64 / 1000.0)
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gossip_sim: {e}");
            std::process::exit(2);
        }
    };
    let Some(mut gossip) = Config::profile(&args.profile) else {
        eprintln!("gossip_sim: unknown profile {:?}", args.profile);
        std::process::exit(2);
    };
    println!(
        "gossip_sim --nodes {} --seed {} --loss {} --crashes {} --profile {} \
         --latency-min-ms {} --latency-mean-ms {} --steady-s {}{}",
        args.nodes,
        args.seed,
        args.loss,
        args.crashes,
        args.profile,
        args.latency_min_ms,
        args.latency_mean_ms,
        args.steady_s,
        if args.named { " --named" } else { "" }
    );
    if let Some(m) = args.suspicion_mult {
        gossip.suspicion_mult = m;
    }
    println!("profile: {gossip:?}");
    let wall = Instant::now();
    let cfg = SimConfig {
        loss: args.loss,
        latency_min_ms: args.latency_min_ms,
        latency_mean_ms: args.latency_mean_ms,
        gossip,
        converged_start: true,
        named_nodes: args.named,
        record_events: false,
        ..SimConfig::new(args.nodes, args.seed)
    };
    let mut sim = Sim::new(cfg).expect("valid configuration");
    println!(
        "built {} converged nodes in {:.1} s wall",
        args.nodes,
        wall.elapsed().as_secs_f64()
    );
    let sim_wall = Instant::now();

    // Steady state: the first seconds are the random start phases settling.
    sim.run_until(5_000);
    sim.reset_traffic();
    sim.run_until(5_000 + args.steady_s * 1_000);
    let t = sim.traffic();
    println!(
        "steady state over {:.0} s: {:.2} packets/s and {:.0} B/s sent per node (max {:.2} \
         packets/s, {:.0} B/s; payload bytes, no UDP/IP headers)",
        t.seconds,
        t.packets_per_node_per_s,
        t.bytes_per_node_per_s,
        t.max_packets_per_node_per_s,
        t.max_bytes_per_node_per_s
    );

    // One metadata update.
    let updater = 1 % args.nodes;
    let meta = NodeMeta {
        name: "updated".into(),
        ..NodeMeta::default()
    };
    sim.update_meta(updater, &meta).expect("small metadata");
    let start = sim.now();
    sim.run_until_or(start + 30_000, 50, |s| {
        s.dissemination_ms(updater).iter().all(Option::is_some)
    });
    let d = sim.dissemination_ms(updater);
    let missing = d.iter().filter(|x| x.is_none()).count();
    let mut d: Vec<u64> = d.into_iter().flatten().collect();
    println!(
        "update dissemination: p50 {:.2} s, p99 {:.2} s, p99.9 {:.2} s, max {:.2} s ({} never)",
        secs(quantile(&mut d, 0.5)),
        secs(quantile(&mut d, 0.99)),
        secs(quantile(&mut d, 0.999)),
        secs(quantile(&mut d, 1.0)),
        missing
    );

    // Crashes, one after the other.
    let mut all: Vec<u64> = Vec::new();
    let mut per_crash_max: Vec<u64> = Vec::new();
    let mut undetected = 0;
    let mut victim = (args.seed as usize).wrapping_mul(7919) % args.nodes;
    sim.reset_traffic();
    for c in 0..args.crashes {
        while !sim.is_up(victim) {
            victim = (victim + 7919) % args.nodes;
        }
        sim.run_until(sim.now() + 5_000);
        sim.crash(victim);
        let t0 = sim.now();
        let ok = sim.run_until_or(t0 + 60_000, 50, |s| s.crash_detected_by_all(victim));
        let d = sim.detection_ms(victim);
        undetected += d.iter().filter(|x| x.is_none()).count();
        let mut d: Vec<u64> = d.into_iter().flatten().collect();
        let max = quantile(&mut d, 1.0);
        println!(
            "crash {c}: node {victim} detected by {}/{} members, p50 {:.2} s, max {:.2} s{}",
            d.len(),
            sim.len() - 1 - c,
            secs(quantile(&mut d, 0.5)),
            secs(max),
            if ok { "" } else { " (NOT ALL within 60 s)" }
        );
        per_crash_max.extend(max);
        all.extend(d);
        victim = (victim + 7919) % args.nodes;
    }
    let t = sim.traffic();
    println!(
        "detection over {} crashes (per member): p50 {:.2} s, p99 {:.2} s, p99.9 {:.2} s, \
         max {:.2} s; until every member knew: worst {:.2} s; {} member-views never detected",
        args.crashes,
        secs(quantile(&mut all, 0.5)),
        secs(quantile(&mut all, 0.99)),
        secs(quantile(&mut all, 0.999)),
        secs(quantile(&mut all, 1.0)),
        secs(quantile(&mut per_crash_max, 1.0)),
        undetected
    );
    println!(
        "traffic during the crash phase: {:.2} packets/s, {:.0} B/s per node (max {:.2}, {:.0})",
        t.packets_per_node_per_s,
        t.bytes_per_node_per_s,
        t.max_packets_per_node_per_s,
        t.max_bytes_per_node_per_s
    );
    if let Some(path) = &args.hgrm {
        match std::fs::write(path, hgrm(&mut all)) {
            Ok(()) => println!("wrote the detection distribution to {path}"),
            Err(e) => eprintln!("gossip_sim: writing {path}: {e}"),
        }
    }
    let c = sim.counters();
    println!(
        "false suspicions {}, false deaths {}, datagrams lost {}, refused {}",
        c.false_suspicions, c.false_deaths, c.lost, c.refused
    );
    println!(
        "virtual {:.0} s in {:.1} s wall (plus {:.1} s building); peak RSS {:.0} MiB",
        sim.now() as f64 / 1000.0,
        sim_wall.elapsed().as_secs_f64(),
        wall.elapsed().as_secs_f64() - sim_wall.elapsed().as_secs_f64(),
        rss_mib().unwrap_or(f64::NAN)
    );
}

/// Detection times (ms) as HdrHistogram's percentile distribution text (`.hgrm`), one
/// row per distinct time: what `loadgen compare` and HdrHistogram's plotter read.
fn hgrm(times: &mut [u64]) -> String {
    times.sort_unstable();
    let n = times.len() as f64;
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for (i, t) in times.iter().enumerate() {
        if i + 1 < times.len() && times[i + 1] == *t {
            continue;
        }
        let p = (i + 1) as f64 / n;
        let inv = if p < 1.0 {
            format!("{:.2}", 1.0 / (1.0 - p))
        } else {
            "inf".into()
        };
        out += &format!("{:12.3} {:14.12} {:10} {:>14}\n", *t as f64, p, i + 1, inv);
    }
    let mean = times.iter().sum::<u64>() as f64 / n.max(1.0);
    out += &format!(
        "#[Mean = {mean:.3}, StdDeviation = 0.000]\n#[Max = {:.3}, Total count = {}]\n",
        times.last().copied().unwrap_or(0) as f64,
        times.len()
    );
    out
}
