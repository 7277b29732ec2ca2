//! Every `loadgen gossip-sim` scenario at a few hundred nodes with a fixed seed: the
//! safety properties hold (no live, never-stalled member declared dead; every crash
//! detected by every live member; every update delivered; no datagram refused) and the
//! pool converges after a mass join. Timing figures are the scenarios' business
//! (README), not these tests'.

use cairn_net::gossip::scenario::{run, Scenario, ScenarioConfig};

fn check(scenario: Scenario, loss: f64) {
    let mut cfg = ScenarioConfig::new(scenario, 300, 11);
    cfg.sim.loss = loss;
    cfg.duration_s = 20;
    cfg.crashes = 3;
    cfg.wave_fraction = 0.02;
    cfg.partition_s = 15;
    cfg.slow_fraction = 0.03;
    cfg.wait_s = 120;
    println!(
        "scenario {} nodes {} seed {} loss {}",
        scenario.name(),
        cfg.sim.nodes,
        cfg.sim.seed,
        loss
    );
    let r = run(&cfg, &mut |line| println!("{line}")).unwrap();
    assert_eq!(r.counters.false_deaths, 0, "{:?}", r.counters);
    assert_eq!(r.counters.refused, 0);
    assert_eq!(r.undetected, 0);
    assert_eq!(r.undisseminated, 0);
    // After a mass join, and after a healed partition (reconnect pings to members held
    // dead, retold suspicions, a resync after a refutation: ARCHITECTURE.md), every
    // member counts every running member live again within `wait_s` of virtual time.
    // False deaths are counted from then on (see `scenario`).
    if matches!(scenario, Scenario::MassJoin | Scenario::Partition) {
        assert!(r.converge_ms.is_some(), "the pool did not converge");
    }
    if matches!(scenario, Scenario::Crash | Scenario::CrashWave) {
        assert!(!r.detect_ms.is_empty());
    }
}

#[test]
fn steady_state_at_5_percent_loss_declares_nobody_dead() {
    check(Scenario::Steady, 0.05);
}

#[test]
fn every_crash_is_detected_by_every_member() {
    check(Scenario::Crash, 0.01);
}

#[test]
fn a_wave_of_crashes_is_detected_by_every_member() {
    check(Scenario::CrashWave, 0.01);
}

#[test]
fn a_healed_partition_converges() {
    check(Scenario::Partition, 0.01);
}

#[test]
fn a_healed_partition_converges_at_5_percent_loss() {
    check(Scenario::Partition, 0.05);
}

#[test]
fn a_mass_join_converges() {
    check(Scenario::MassJoin, 0.01);
}

#[test]
fn members_stalling_for_up_to_2_s_get_nobody_else_declared_dead_at_5_percent_loss() {
    check(Scenario::Slow, 0.05);
}

/// A mass join, timed: the members that were there before a joiner are news to nobody,
/// so no broadcast carries them to it; the seeds' answers to its join do (none resent),
/// then the catch-up digest rounds that follow a join (`Gossip::join`). At 5% loss some
/// joiner of 50 loses a datagram's worth of those answers on every seed; without the
/// catch-up only anti-entropy every 30 s found them, and with these seeds the pool had
/// not converged 20 s after the joins (12 s asserted here). Now it does in 2-3 s
/// (virtual time).
#[test]
fn a_mass_join_converges_within_seconds_at_5_percent_loss() {
    for seed in [1, 5] {
        let mut cfg = ScenarioConfig::new(Scenario::MassJoin, 500, seed);
        cfg.sim.loss = 0.05;
        cfg.duration_s = 5;
        cfg.wait_s = 12;
        println!("scenario mass-join nodes 500 seed {seed} loss 0.05");
        let r = run(&cfg, &mut |line| println!("{line}")).unwrap();
        assert_eq!(r.counters.false_deaths, 0, "{:?}", r.counters);
        assert_eq!(r.counters.refused, 0);
        assert!(
            r.converge_ms.is_some(),
            "seed {seed}: not every member counts every member live within {} s of the joins",
            cfg.wait_s
        );
    }
}
