//! Simulator scenarios with fixed seeds: the safety and liveness properties of SWIM and
//! Lifeguard on small clusters. Each prints its seed and parameters so a failure can be
//! replayed exactly (`SimConfig::new(nodes, seed)` with the printed fields).
//!
//! Time bounds here are generous multiples of the protocol's own timeouts: they catch a
//! detector that never fires or a refutation that never arrives, not a slow machine
//! (virtual time does not depend on the machine).

use cairn_net::gossip::sim::{quantile, Sim, SimConfig};
use cairn_net::gossip::{Config, MemberEvent, NodeMeta, Status};

fn sim(cfg: SimConfig) -> Sim {
    println!(
        "seed={} nodes={} loss={} latency={}+exp({})ms converged_start={}",
        cfg.seed, cfg.nodes, cfg.loss, cfg.latency_min_ms, cfg.latency_mean_ms, cfg.converged_start
    );
    Sim::new(cfg).expect("valid config")
}

fn seconds(ms: Option<u64>) -> f64 {
    ms.map_or(f64::NAN, |m| m as f64 / 1000.0)
}

#[test]
fn small_clusters_converge_after_join() {
    for (nodes, seed) in [(5, 1), (20, 2), (50, 3)] {
        let mut s = sim(SimConfig::new(nodes, seed));
        let ok = s.run_until_or(30_000, 100, Sim::converged);
        println!("nodes={nodes} converged={ok} at {} ms", s.now());
        assert!(ok, "seed {seed}: {nodes} nodes did not converge in 30 s");
        assert_eq!(s.counters().false_suspicions, 0);
        assert_eq!(s.counters().false_deaths, 0);
        assert_eq!(s.counters().refused, 0);
    }
}

#[test]
fn a_crashed_node_is_detected_by_every_member() {
    let cfg = Config::lan();
    let nodes = 32;
    let mut s = sim(SimConfig {
        converged_start: true,
        ..SimConfig::new(nodes, 11)
    });
    s.run_until(10_000);
    s.crash(7);
    // Someone probes it within about a probe interval; one period later it is suspect,
    // and the suspicion runs out within its maximum.
    let (_, max) = cfg.suspicion_timeouts_ms(nodes);
    let bound = 10_000 + 3 * cfg.probe_interval_ms + max + 2_000;
    let ok = s.run_until_or(bound, 50, |s| s.crash_detected_by_all(7));
    let mut d: Vec<u64> = s.detection_ms(7).into_iter().flatten().collect();
    println!(
        "detected by {}/{} members: p50 {:.1} s, max {:.1} s (bound {:.1} s)",
        d.len(),
        nodes - 1,
        seconds(quantile(&mut d, 0.5)),
        seconds(quantile(&mut d, 1.0)),
        (bound - 10_000) as f64 / 1000.0
    );
    assert!(
        ok,
        "not every member marked the crashed node failed in time"
    );
    assert_eq!(s.counters().false_deaths, 0);
    for i in (0..nodes).filter(|i| *i != 7) {
        assert_eq!(
            s.core(i).unwrap().status_of(&s.addr(7)).unwrap().0,
            Status::Dead
        );
    }
}

#[test]
fn packet_loss_of_8_percent_declares_no_live_node_failed() {
    let nodes = 50;
    let mut s = sim(SimConfig {
        loss: 0.08,
        converged_start: true,
        ..SimConfig::new(nodes, 21)
    });
    s.run_until(300_000);
    let c = s.counters().clone();
    let stats: Vec<_> = (0..nodes).map(|i| s.core(i).unwrap().stats()).collect();
    let probes: u64 = stats.iter().map(|x| x.probes).sum();
    let failed: u64 = stats.iter().map(|x| x.probe_failures).sum();
    println!(
        "300 s at 8% loss: {} datagrams lost, {probes} probes, {failed} failed, \
         {} false suspicions, {} false deaths",
        c.lost, c.false_suspicions, c.false_deaths
    );
    assert!(c.lost > 1_000, "the network did drop datagrams");
    assert_eq!(c.false_deaths, 0, "{:?}", s.false_death_log());
    assert!(s.converged());
}

#[test]
fn a_suspected_live_node_refutes_and_stays_alive() {
    let nodes = 20;
    let mut s = sim(SimConfig {
        converged_start: true,
        record_events: true,
        ..SimConfig::new(nodes, 31)
    });
    s.run_until(5_000);
    // Stalled for 900 ms, five times: probes of it fail and it is suspected, but the
    // suspicion's minimum (the lan profile's 1 s floor) gives it time to refute once it
    // runs again. (Longer stalls: the next test.)
    for k in 0..5 {
        s.run_until(5_000 + k * 10_000);
        s.stall(3, 900);
    }
    s.run_until(80_000);
    let target = s.addr(3);
    let suspected = s
        .events()
        .iter()
        .filter(|(_, _, e)| matches!(e, MemberEvent::Suspect { addr, .. } if *addr == target))
        .count();
    let refuted = s
        .events()
        .iter()
        .filter(|(_, _, e)| matches!(e, MemberEvent::Alive { addr, .. } if *addr == target))
        .count();
    let failed = s
        .events()
        .iter()
        .filter(|(_, _, e)| matches!(e, MemberEvent::Failed { addr, .. } if *addr == target))
        .count();
    println!("suspect events {suspected}, alive (refuted) events {refuted}, failed {failed}");
    assert!(suspected > 0, "the stall should have caused a suspicion");
    assert!(refuted > 0, "the suspect should have refuted");
    assert_eq!(failed, 0);
    assert!(
        s.core(3).unwrap().incarnation() > 0,
        "refuting bumps the incarnation"
    );
    assert!(s.core(3).unwrap().stats().refutations > 0);
    assert!(s.converged());
}

/// The lan profile detects a crash within ~2.5 s, so a member stalled for 2 s can be
/// declared dead before it wakes (it cannot be told from a crashed one). What must hold:
/// it comes back as soon as it runs again, and nobody else is declared dead because of
/// it (Lifeguard: the stalled node's own probes, late, must not accuse others).
#[test]
fn a_member_stalled_for_2_s_returns_and_no_other_member_is_declared_dead() {
    let nodes = 200;
    let mut s = sim(SimConfig {
        converged_start: true,
        loss: 0.01,
        ..SimConfig::new(nodes, 32)
    });
    s.run_until(5_000);
    for k in 0..5 {
        s.run_until(5_000 + k * 10_000);
        for v in [3, 50, 120] {
            s.stall(v, 2_000);
        }
    }
    s.run_until(70_000);
    let c = s.counters();
    println!(
        "stalled members: {} suspicion and {} failed events",
        c.stalled_suspicions, c.stalled_deaths
    );
    assert_eq!(c.false_deaths, 0, "{:?}", s.false_death_log());
    for v in [3, 50, 120] {
        for i in 0..nodes {
            if i != v {
                let status = s.core(i).unwrap().status_of(&s.addr(v)).map(|x| x.0);
                assert_eq!(status, Some(Status::Alive), "node {i} about {v}");
            }
        }
    }
    assert!(s.converged());
}

#[test]
fn a_graceful_leave_is_seen_as_left_not_failed() {
    let nodes = 20;
    let mut s = sim(SimConfig {
        converged_start: true,
        record_events: true,
        ..SimConfig::new(nodes, 41)
    });
    s.run_until(5_000);
    s.leave(5).unwrap();
    let addr5 = s.addr(5);
    let seen_left = |s: &Sim| {
        (0..nodes)
            .filter(|i| *i != 5)
            .all(|i| s.core(i).unwrap().status_of(&addr5).unwrap().0 == Status::Left)
    };
    let ok = s.run_until_or(15_000, 50, seen_left);
    println!("left seen by all at {} ms", s.now());
    assert!(ok);
    // The process goes away after leaving; nobody may turn "left" into "failed".
    s.crash(5);
    s.run_until(60_000);
    assert!(seen_left(&s));
    assert!(!s
        .events()
        .iter()
        .any(|(_, _, e)| matches!(e, MemberEvent::Failed { addr, .. } if *addr == addr5)));
}

#[test]
fn a_dead_node_that_restarts_rejoins_with_a_higher_incarnation() {
    let nodes = 16;
    let mut s = sim(SimConfig {
        converged_start: true,
        ..SimConfig::new(nodes, 51)
    });
    s.run_until(5_000);
    s.crash(9);
    assert!(s.run_until_or(40_000, 100, |s| s.crash_detected_by_all(9)));
    // A new process starts at incarnation 0; the others hold it dead at 0, so it must
    // learn that and outbid it.
    s.restart(9, &[0]).unwrap();
    let ok = s.run_until_or(s.now() + 30_000, 100, Sim::converged);
    println!("converged after restart: {ok} at {} ms", s.now());
    assert!(ok);
    assert!(s.core(9).unwrap().incarnation() > 0);
    assert_eq!(s.counters().false_deaths, 0);
}

#[test]
fn tombstones_are_reclaimed() {
    let nodes = 10;
    let mut gossip = Config::lan();
    gossip.tombstone_timeout_ms = 20_000;
    gossip.reclaim_interval_ms = 5_000;
    let mut s = sim(SimConfig {
        converged_start: true,
        gossip,
        ..SimConfig::new(nodes, 61)
    });
    s.run_until(5_000);
    s.crash(4);
    assert!(s.run_until_or(40_000, 100, |s| s.crash_detected_by_all(4)));
    let a = s.addr(4);
    assert_eq!(s.core(0).unwrap().status_of(&a).unwrap().0, Status::Dead);
    s.run_until(s.now() + 30_000);
    for i in (0..nodes).filter(|i| *i != 4) {
        assert_eq!(
            s.core(i).unwrap().status_of(&a),
            None,
            "node {i} still holds it"
        );
    }
}

#[test]
fn a_healed_partition_converges() {
    let nodes = 20;
    let mut s = sim(SimConfig {
        converged_start: true,
        ..SimConfig::new(nodes, 71)
    });
    s.run_until(5_000);
    s.partition((0..nodes).map(|i| u32::from(i < 4)).collect());
    s.run_until(40_000);
    let minority = s.addr(0);
    assert_eq!(
        s.core(10).unwrap().status_of(&minority).unwrap().0,
        Status::Dead,
        "the majority should have declared the minority dead"
    );
    s.heal();
    let ok = s.run_until_or(400_000, 500, Sim::converged);
    println!("healed partition converged: {ok} at {} ms", s.now());
    assert!(ok);
}

#[test]
fn a_metadata_update_reaches_every_member() {
    let nodes = 30;
    let mut s = sim(SimConfig {
        converged_start: true,
        ..SimConfig::new(nodes, 81)
    });
    s.run_until(5_000);
    let mut meta = s.core(2).unwrap().members().next().unwrap().meta;
    meta.tags.insert("rack".into(), "r7".into());
    meta.name = "node-2".into();
    s.update_meta(2, &meta).unwrap();
    let ok = s.run_until_or(15_000, 20, |s| {
        s.dissemination_ms(2).iter().all(Option::is_some)
    });
    let mut d: Vec<u64> = s.dissemination_ms(2).into_iter().flatten().collect();
    println!(
        "update known by all after {:.2} s",
        seconds(quantile(&mut d, 1.0))
    );
    assert!(ok);
    let seen = s
        .core(0)
        .unwrap()
        .members()
        .find(|m| m.addr == s.addr(2))
        .unwrap();
    assert_eq!(seen.meta, meta);
}

#[test]
fn a_1000_node_cluster_detects_a_crash() {
    let nodes = 1_000;
    let mut s = sim(SimConfig {
        converged_start: true,
        named_nodes: false,
        loss: 0.01,
        ..SimConfig::new(nodes, 91)
    });
    s.run_until(5_000);
    s.reset_traffic();
    s.run_until(10_000);
    let t = s.traffic();
    s.crash(123);
    let ok = s.run_until_or(60_000, 100, |s| s.crash_detected_by_all(123));
    let mut d: Vec<u64> = s.detection_ms(123).into_iter().flatten().collect();
    println!(
        "1000 nodes, 1% loss: detected by {}/{} p50 {:.1} s p99 {:.1} s max {:.1} s; \
         steady state {:.2} packets/s {:.0} B/s per node; false deaths {}",
        d.len(),
        nodes - 1,
        seconds(quantile(&mut d, 0.5)),
        seconds(quantile(&mut d, 0.99)),
        seconds(quantile(&mut d, 1.0)),
        t.packets_per_node_per_s,
        t.bytes_per_node_per_s,
        s.counters().false_deaths
    );
    assert!(ok, "the crash was not detected by every member within 50 s");
    assert_eq!(s.counters().false_deaths, 0);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let run = || {
        let mut s = Sim::new(SimConfig {
            loss: 0.05,
            ..SimConfig::new(12, 99)
        })
        .unwrap();
        s.run_until(8_000);
        s.crash(3);
        s.run_until(30_000);
        (
            s.counters().clone(),
            s.detection_ms(3),
            s.traffic().bytes_per_node_per_s,
        )
    };
    assert_eq!(run(), run());
}

#[test]
fn no_member_is_lost_to_dropped_join_datagrams() {
    // Joins at 10% loss: some state datagrams and announcements are lost; gossip and the
    // digest exchange must still bring everyone together.
    let mut s = sim(SimConfig {
        loss: 0.10,
        ..SimConfig::new(30, 7)
    });
    let ok = s.run_until_or(300_000, 500, Sim::converged);
    println!("converged={ok} at {} ms", s.now());
    assert!(ok);
    let _ = NodeMeta::default();
}
