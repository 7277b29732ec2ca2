//! Scenarios on the simulator: what `loadgen gossip-sim` runs and reports.
//!
//! Every scenario starts the same way: a converged cluster (every member already knows
//! every other; for `mass-join`, all but the joiners), 5 virtual seconds for the random
//! start phases to settle, a steady-state window whose traffic is measured, and one
//! metadata update whose spread is timed. Then its own phase:
//!
//! - `steady`: nothing more (the steady window is `duration_s` long);
//! - `crash`: `crashes` members crash one after the other, 5 s apart, each timed until
//!   every live member marks it failed;
//! - `crash-wave`: `wave_fraction` of the members (1%) crash at the same instant;
//! - `partition`: `partition_fraction` of the members (20%) are cut off from the rest
//!   for `partition_s`, then the network heals and the time until every member counts
//!   every running member live again is measured;
//! - `mass-join`: `joiners_fraction` of the members (10%) join at the same instant, each
//!   through 3 random members, timed until every member counts all of them;
//! - `slow`: `slow_fraction` of the members (1%) stall again and again for up to
//!   `stall_max_ms` (2 s) over `duration_s`: no other member may be declared dead.
//!
//! Only safety is asserted anywhere (in tests); the figures are reported.

use super::core::GossipError;
use super::sim::{Sim, SimConfig, SimCounters, Traffic};
use super::wire::NodeMeta;
use super::Millis;
use rand::rngs::SmallRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use std::time::Instant;

/// Which scenario to run; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Steady,
    Crash,
    CrashWave,
    Partition,
    MassJoin,
    Slow,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Steady,
        Scenario::Crash,
        Scenario::CrashWave,
        Scenario::Partition,
        Scenario::MassJoin,
        Scenario::Slow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Crash => "crash",
            Scenario::CrashWave => "crash-wave",
            Scenario::Partition => "partition",
            Scenario::MassJoin => "mass-join",
            Scenario::Slow => "slow",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// A scenario and its parameters. [`ScenarioConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ScenarioConfig {
    pub scenario: Scenario,
    /// The cluster and network (nodes, seed, loss, latency, gossip profile).
    pub sim: SimConfig,
    /// Seconds of the measured steady window; for `steady` and `slow` the scenario's
    /// length.
    pub duration_s: u64,
    pub crashes: usize,
    pub wave_fraction: f64,
    pub partition_fraction: f64,
    pub partition_s: u64,
    pub joiners_fraction: f64,
    pub slow_fraction: f64,
    pub stall_max_ms: Millis,
    /// Longest wait for any one thing (a detection, an update, convergence).
    pub wait_s: u64,
}

impl ScenarioConfig {
    pub fn new(scenario: Scenario, nodes: usize, seed: u64) -> ScenarioConfig {
        let mut sim = SimConfig::new(nodes, seed);
        sim.converged_start = true;
        // Equal metadata is interned: what lets 10,000 full member tables fit in memory.
        sim.named_nodes = false;
        sim.loss = 0.01;
        ScenarioConfig {
            scenario,
            sim,
            duration_s: match scenario {
                Scenario::Steady | Scenario::Slow => 60,
                _ => 10,
            },
            crashes: 5,
            wave_fraction: 0.01,
            partition_fraction: 0.2,
            partition_s: 30,
            joiners_fraction: 0.1,
            slow_fraction: 0.01,
            stall_max_ms: 2_000,
            wait_s: 60,
        }
    }
}

/// What a scenario measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Per crashed member and live observer: ms from the crash until the observer
    /// marked it failed.
    pub detect_ms: Vec<Millis>,
    /// Observers that never marked a crashed member failed within `wait_s`.
    pub undetected: usize,
    /// Per live member: ms from the metadata update until it knew.
    pub disseminate_ms: Vec<Millis>,
    pub undisseminated: usize,
    pub counters: SimCounters,
    /// Traffic in the steady window.
    pub steady: Traffic,
    /// Traffic from the end of the steady window to the end of the run.
    pub phase: Traffic,
    /// Partition and mass join: ms from the heal (the joins) until every member counts
    /// every running member live; `None` if not within `wait_s`.
    pub converge_ms: Option<Millis>,
    /// Virtual time simulated.
    pub virtual_ms: Millis,
    /// Wall-clock seconds spent building the cluster and running it.
    pub build_s: f64,
    pub run_s: f64,
}

/// Runs `cfg`, telling `log` what happens as it goes.
pub fn run(cfg: &ScenarioConfig, log: &mut dyn FnMut(String)) -> Result<Report, GossipError> {
    let t_build = Instant::now();
    let n = cfg.sim.nodes;
    assert!(n >= 2, "a scenario needs at least 2 nodes");
    let mut sim_cfg = cfg.sim.clone();
    let joiners = if cfg.scenario == Scenario::MassJoin {
        ((n as f64 * cfg.joiners_fraction).round() as usize).clamp(1, n - 1)
    } else {
        0
    };
    sim_cfg.joiners = joiners;
    let mut sim = Sim::new(sim_cfg)?;
    let build_s = t_build.elapsed().as_secs_f64();
    log(format!("built {n} nodes in {build_s:.1} s wall"));
    let t_run = Instant::now();
    // The scenario's own choices (victims, groups, stalls) from a stream of their own.
    let mut rng = SmallRng::seed_from_u64(cfg.sim.seed ^ 0x5ce7_a710_0000_0001);
    let wait_ms = cfg.wait_s * 1_000;
    let first_joiner = n - joiners;

    sim.run_until(5_000);
    sim.reset_traffic();
    let mut stalls = Stalls::new(cfg, &mut rng, first_joiner);
    let steady_end = sim.now() + cfg.duration_s * 1_000;
    if cfg.scenario == Scenario::Slow {
        log(format!(
            "{} slow members stall again and again for up to {} ms",
            stalls.nodes.len(),
            cfg.stall_max_ms
        ));
        let mut next_report = sim.now() + 60_000;
        while sim.now() < steady_end {
            stalls.step(&mut sim, &mut rng);
            let next = (sim.now() + 100).min(steady_end);
            sim.run_until(next);
            if sim.now() >= next_report {
                // A long run must stay flat: what every core holds, summed.
                next_report += 60_000;
                let (f, queued, slots) = sim.footprint();
                let c = sim.counters();
                log(format!(
                    "  at {:.0} s: {} false deaths, {} deaths of stalled members; held \
                     over all nodes: {} members ({} tombstones), {} suspicions, {} \
                     broadcasts, probe lists {} (capacity {}), {} ping-reqs; {} events \
                     queued in {} slots",
                    sim.now() as f64 / 1000.0,
                    c.false_deaths,
                    c.stalled_deaths,
                    f.members,
                    f.tombstones,
                    f.suspicions,
                    f.broadcasts,
                    f.probe_list,
                    f.probe_list_capacity,
                    f.indirect,
                    queued,
                    slots
                ));
            }
        }
    } else {
        sim.run_until(steady_end);
    }
    let steady = sim.traffic();
    log(format!(
        "steady state over {:.0} s: {:.2} packets/s, {:.0} B/s per node (max {:.2}, {:.0})",
        steady.seconds,
        steady.packets_per_node_per_s,
        steady.bytes_per_node_per_s,
        steady.max_packets_per_node_per_s,
        steady.max_bytes_per_node_per_s
    ));
    sim.reset_traffic();

    // One metadata update from a member that is neither slow nor about to crash first.
    let updater = (0..first_joiner)
        .find(|i| !stalls.nodes.contains(i))
        .expect("some member is not slow");
    let meta = NodeMeta {
        name: "updated".into(),
        ..NodeMeta::default()
    };
    sim.update_meta(updater, &meta)?;
    let t0 = sim.now();
    sim.run_until_or(t0 + wait_ms, 50, |s| {
        s.dissemination_ms(updater).iter().all(Option::is_some)
    });
    let d = sim.dissemination_ms(updater);
    let undisseminated = d.iter().filter(|x| x.is_none()).count();
    let mut disseminate_ms: Vec<Millis> = d.into_iter().flatten().collect();
    disseminate_ms.sort_unstable();
    log(format!(
        "update: known by all but {undisseminated} after {:.2} s (p99.9 {:.2} s)",
        secs(disseminate_ms.last().copied()),
        secs(quantile(&disseminate_ms, 0.999))
    ));

    let mut detect_ms = Vec::new();
    let mut undetected = 0;
    let mut converge_ms = None;
    match cfg.scenario {
        Scenario::Steady | Scenario::Slow => {}
        Scenario::Crash => {
            for c in 0..cfg.crashes {
                let live: Vec<usize> = (0..n).filter(|i| sim.is_up(*i)).collect();
                if live.len() < 2 {
                    break;
                }
                let victim = live[rng.random_range(0..live.len())];
                sim.run_until(sim.now() + 5_000);
                sim.crash(victim);
                let t0 = sim.now();
                sim.run_until_or(t0 + wait_ms, 50, |s| s.crash_detected_by_all(victim));
                let (d, missing) = detections(&sim, &[victim]);
                log(format!(
                    "crash {c}: node {victim} marked failed by all but {missing} in {:.2} s \
                     (p50 {:.2} s)",
                    secs(d.last().copied()),
                    secs(quantile(&d, 0.5))
                ));
                detect_ms.extend(d);
                undetected += missing;
            }
        }
        Scenario::CrashWave => {
            let k = ((n as f64 * cfg.wave_fraction).round() as usize).clamp(1, n - 1);
            let victims: Vec<usize> = sample(&mut rng, n, k).into_iter().collect();
            sim.run_until(sim.now() + 5_000);
            for v in &victims {
                sim.crash(*v);
            }
            let t0 = sim.now();
            sim.run_until_or(t0 + wait_ms, 100, |s| {
                victims.iter().all(|v| s.crash_detected_by_all(*v))
            });
            let (d, missing) = detections(&sim, &victims);
            log(format!(
                "{k} members crashed at once: all marked failed by all but {missing} \
                 member-views in {:.2} s (p50 {:.2} s)",
                secs(d.last().copied()),
                secs(quantile(&d, 0.5))
            ));
            detect_ms = d;
            undetected = missing;
        }
        Scenario::Partition => {
            let k = ((n as f64 * cfg.partition_fraction).round() as usize).clamp(1, n - 1);
            let mut groups = vec![0u32; n];
            for i in sample(&mut rng, n, k) {
                groups[i] = 1;
            }
            sim.excuse_all(true);
            sim.partition(groups);
            log(format!("{k} members cut off for {} s", cfg.partition_s));
            sim.run_until(sim.now() + cfg.partition_s * 1_000);
            sim.heal();
            let t0 = sim.now();
            let ok = converge(&mut sim, t0 + wait_ms, log);
            converge_ms = ok.then(|| sim.now() - t0);
            log(format!(
                "healed: every member counts every other live again after {}",
                converge_ms.map_or("(not within the wait)".into(), |m| format!(
                    "{:.2} s",
                    m as f64 / 1000.0
                ))
            ));
            sim.excuse_all(false);
            // Then some time with counting on again: nobody may be declared dead.
            sim.run_until(sim.now() + 10_000);
        }
        Scenario::MassJoin => {
            let members: Vec<usize> = (0..first_joiner).collect();
            for j in first_joiner..n {
                let seeds: Vec<usize> = sample(&mut rng, members.len(), 3.min(members.len()))
                    .into_iter()
                    .map(|x| members[x])
                    .collect();
                sim.restart(j, &seeds)?;
            }
            log(format!(
                "{joiners} members join at once (3 random seeds each)"
            ));
            let t0 = sim.now();
            let ok = converge(&mut sim, t0 + wait_ms, log);
            converge_ms = ok.then(|| sim.now() - t0);
            log(format!(
                "every member counts all {n} live after {}",
                converge_ms.map_or("(not within the wait)".into(), |m| format!(
                    "{:.2} s",
                    m as f64 / 1000.0
                ))
            ));
        }
    }
    let phase = sim.traffic();
    if let Some((t, observer, subject)) = sim.false_death_log().first() {
        log(format!(
            "first false death: node {observer} declared node {subject} dead at {:.1} s \
             (replay with --seed {} to look closer)",
            *t as f64 / 1000.0,
            cfg.sim.seed
        ));
    }
    detect_ms.sort_unstable();
    Ok(Report {
        detect_ms,
        undetected,
        disseminate_ms,
        undisseminated,
        counters: sim.counters().clone(),
        steady,
        phase,
        converge_ms,
        virtual_ms: sim.now(),
        build_s,
        run_s: t_run.elapsed().as_secs_f64(),
    })
}

/// Runs until every member counts every running member live (or `until`), logging
/// the spread of the counts every 5 s; says whether they agreed.
fn converge(sim: &mut Sim, until: Millis, log: &mut dyn FnMut(String)) -> bool {
    let t0 = sim.now();
    loop {
        let step_end = (sim.now() + 5_000).min(until);
        if sim.run_until_or(step_end, 100, Sim::live_counts_agree) {
            return true;
        }
        let counts: Vec<usize> = (0..sim.len())
            .filter_map(|i| sim.core(i))
            .map(|c| c.num_live())
            .collect();
        log(format!(
            "  +{:.0} s: members count {}..{} live of {} running",
            (sim.now() - t0) as f64 / 1000.0,
            counts.iter().min().unwrap_or(&0),
            counts.iter().max().unwrap_or(&0),
            sim.live_count()
        ));
        if sim.now() >= until {
            return false;
        }
    }
}

/// Sorted detection times over `victims` and their observers, and how many observers
/// never detected.
fn detections(sim: &Sim, victims: &[usize]) -> (Vec<Millis>, usize) {
    let mut out = Vec::new();
    let mut missing = 0;
    for v in victims {
        for d in sim.detection_ms(*v) {
            match d {
                Some(ms) => out.push(ms),
                None => missing += 1,
            }
        }
    }
    out.sort_unstable();
    (out, missing)
}

/// The slow members of the `slow` scenario and when each stalls next.
struct Stalls {
    nodes: Vec<usize>,
    next: Vec<Millis>,
    max_ms: Millis,
}

impl Stalls {
    fn new(cfg: &ScenarioConfig, rng: &mut SmallRng, members: usize) -> Stalls {
        if cfg.scenario != Scenario::Slow {
            return Stalls {
                nodes: Vec::new(),
                next: Vec::new(),
                max_ms: 0,
            };
        }
        let k = ((members as f64 * cfg.slow_fraction).round() as usize).clamp(1, members - 1);
        let nodes: Vec<usize> = sample(rng, members, k).into_iter().collect();
        let next = nodes
            .iter()
            .map(|_| 5_000 + rng.random_range(0..5_000))
            .collect();
        Stalls {
            nodes,
            next,
            max_ms: cfg.stall_max_ms.max(1),
        }
    }

    /// Stalls every slow member whose time has come for 1/4 to all of `max_ms`, and
    /// schedules its next stall 2–8 s after this one ends.
    fn step(&mut self, sim: &mut Sim, rng: &mut SmallRng) {
        for k in 0..self.nodes.len() {
            if self.next[k] > sim.now() {
                continue;
            }
            let d = rng.random_range(self.max_ms / 4..=self.max_ms);
            sim.stall(self.nodes[k], d);
            self.next[k] = sim.now() + d + rng.random_range(2_000..8_000);
        }
    }
}

/// The `q`-quantile of sorted `values`.
pub fn quantile(sorted: &[Millis], q: f64) -> Option<Millis> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[idx.min(sorted.len() - 1)])
}

fn secs(ms: Option<Millis>) -> f64 {
    ms.map_or(f64::NAN, |m| m as f64 / 1000.0)
}
