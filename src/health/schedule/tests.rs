use super::*;
use crate::health::definition::parse_check;

fn check(json: &str) -> CheckDefinition {
    parse_check("test", json.as_bytes()).unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn config() -> ScheduleConfig {
    ScheduleConfig {
        min_interval: ms(1),
        output_update_interval: secs(30),
    }
}

fn runs(effects: &[Effect]) -> Vec<(String, u64)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Run(r) => Some((r.check_id.clone(), r.generation)),
            Effect::Event(_) => None,
        })
        .collect()
}

/// (kind of event, check id, status, output) for each event.
fn events(effects: &[Effect]) -> Vec<(&'static str, String, Status, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event(ev) => {
                let kind = match ev {
                    CheckEvent::StatusChanged(_) => "status",
                    CheckEvent::OutputChanged(_) => "output",
                    CheckEvent::DeregisterService { .. } => "deregister",
                };
                let c = ev.check();
                Some((kind, c.id.clone(), c.status, c.output.clone()))
            }
            Effect::Run(_) => None,
        })
        .collect()
}

fn event(
    kind: &'static str,
    id: &str,
    status: Status,
    output: &str,
) -> (&'static str, String, Status, String) {
    (kind, id.to_string(), status, output.to_string())
}

/// Polls at `now` and returns the one probe started, finishing it at once with `result`.
fn run_once(s: &mut Scheduler, now: Duration, result: (Status, &str)) -> Vec<Effect> {
    let started = runs(&s.poll(now));
    assert_eq!(started.len(), 1, "one probe due at {now:?}");
    let (id, generation) = &started[0];
    s.run_finished(now, id, *generation, result.0, result.1.to_string())
}

#[test]
fn first_runs_are_spread_over_the_interval_then_keep_their_offset() {
    let mut s = Scheduler::new(config(), 7);
    for i in 0..1000 {
        s.add(
            Duration::ZERO,
            check(&format!(
                r#"{{"name": "c{i}", "tcp": "h:1", "interval": "10s"}}"#
            )),
        );
    }
    // Drive the scheduler from deadline to deadline through the first interval (each poll
    // starts at least one probe, so at most 1000 polls): every check runs exactly once.
    let mut first_run: BTreeMap<String, Duration> = BTreeMap::new();
    let mut per_second = [0u32; 10];
    for _ in 0..1000 {
        let now = s.next_due().unwrap();
        if now >= secs(10) {
            break;
        }
        for (id, generation) in runs(&s.poll(now)) {
            assert!(
                first_run.insert(id.clone(), now).is_none(),
                "{id} ran twice"
            );
            per_second[now.as_secs() as usize] += 1;
            s.run_finished(now, &id, generation, Status::Passing, String::new());
        }
    }
    assert_eq!(first_run.len(), 1000);
    // 100 expected per second; a fixed seed makes this exact, the bounds say "spread".
    for (second, n) in per_second.iter().enumerate() {
        assert!(
            (50..=150).contains(n),
            "second {second}: {n} first runs: {per_second:?}"
        );
    }
    // The next interval repeats each check's offset.
    let mut second_runs = 0;
    for _ in 0..1000 {
        let now = s.next_due().unwrap();
        if now >= secs(20) {
            break;
        }
        for (id, generation) in runs(&s.poll(now)) {
            assert_eq!(now, first_run[&id] + secs(10), "{id}");
            second_runs += 1;
            s.run_finished(now, &id, generation, Status::Passing, String::new());
        }
    }
    assert_eq!(second_runs, 1000);
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    let schedule = |seed| {
        let mut s = Scheduler::new(config(), seed);
        for i in 0..20 {
            s.add(
                Duration::ZERO,
                check(&format!(
                    r#"{{"name": "c{i}", "tcp": "h:1", "interval": "1m"}}"#
                )),
            );
        }
        (0..600)
            .flat_map(|t| runs(&s.poll(ms(t * 100))).into_iter().map(move |r| (t, r)))
            .collect::<Vec<_>>()
    };
    assert_eq!(schedule(1), schedule(1));
    assert_ne!(schedule(1), schedule(2));
}

#[test]
fn a_run_still_in_progress_makes_the_next_one_be_skipped_not_queued() {
    let mut s = Scheduler::new(config(), 1);
    s.add(
        Duration::ZERO,
        check(r#"{"name": "slow", "tcp": "h:1", "interval": "1s"}"#),
    );
    let first = s.next_due().unwrap();
    assert!(first < secs(1));
    let started = runs(&s.poll(first));
    assert_eq!(started.len(), 1);
    // Due again one and two intervals later, but the probe has not finished.
    assert_eq!(s.next_due(), Some(first + secs(1)));
    assert!(runs(&s.poll(first + secs(1))).is_empty());
    assert!(runs(&s.poll(first + secs(2))).is_empty());
    s.run_finished(
        first + ms(2500),
        "slow",
        started[0].1,
        Status::Passing,
        "ok".into(),
    );
    // The grid is kept: the next run is at first + 3 s.
    assert_eq!(s.next_due(), Some(first + secs(3)));
    assert_eq!(runs(&s.poll(first + secs(3))).len(), 1);
}

#[test]
fn a_late_poll_runs_once_and_goes_back_to_the_grid() {
    let mut s = Scheduler::new(config(), 3);
    s.add(
        Duration::ZERO,
        check(r#"{"name": "c", "tcp": "h:1", "interval": "1s"}"#),
    );
    let first = s.next_due().unwrap();
    let started = runs(&s.poll(first + ms(3500)));
    assert_eq!(started.len(), 1, "missed runs are not made up");
    assert_eq!(s.next_due(), Some(first + secs(4)));
}

#[test]
fn intervals_below_the_minimum_are_raised_to_it() {
    let mut s = Scheduler::new(
        ScheduleConfig {
            min_interval: secs(1),
            ..config()
        },
        1,
    );
    s.add(
        Duration::ZERO,
        check(r#"{"name": "c", "tcp": "h:1", "interval": "10ms"}"#),
    );
    let first = s.next_due().unwrap();
    run_once(&mut s, first, (Status::Passing, ""));
    assert_eq!(s.next_due(), Some(first + secs(1)));
}

#[test]
fn a_result_changing_the_status_is_reported_at_once() {
    let mut s = Scheduler::new(config(), 1);
    s.add(
        Duration::ZERO,
        check(r#"{"name": "c", "tcp": "h:1", "interval": "1s"}"#),
    );
    assert_eq!(
        s.statuses()[0].status,
        Status::Critical,
        "Consul's initial status"
    );
    let t = s.next_due().unwrap();
    let effects = run_once(&mut s, t, (Status::Passing, "up"));
    assert_eq!(
        events(&effects),
        [event("status", "c", Status::Passing, "up")]
    );
    // Same status, same output: nothing.
    assert!(run_once(&mut s, t + secs(1), (Status::Passing, "up")).is_empty());
    let effects = run_once(&mut s, t + secs(2), (Status::Warning, "slow"));
    assert_eq!(
        events(&effects),
        [event("status", "c", Status::Warning, "slow")]
    );
    let state = &s.statuses()[0];
    assert_eq!((state.kind, state.status), ("tcp", Status::Warning));
    let catalog = state.to_catalog("node-1");
    assert_eq!(
        (
            catalog.node.as_str(),
            catalog.output.as_str(),
            catalog.kind.as_str()
        ),
        ("node-1", "slow", "tcp")
    );
}

#[test]
fn output_only_changes_are_reported_at_most_once_per_update_interval() {
    let mut s = Scheduler::new(config(), 1);
    s.add(
        Duration::ZERO,
        check(r#"{"name": "c", "tcp": "h:1", "interval": "1s", "status": "passing"}"#),
    );
    let t = s.next_due().unwrap();
    // The first output change is reported at once.
    let effects = run_once(&mut s, t, (Status::Passing, "v1"));
    assert_eq!(
        events(&effects),
        [event("output", "c", Status::Passing, "v1")]
    );
    // Later ones within 30 s wait; the latest is reported when the 30 s are up.
    assert!(run_once(&mut s, t + secs(1), (Status::Passing, "v2")).is_empty());
    assert!(run_once(&mut s, t + secs(2), (Status::Passing, "v3")).is_empty());
    assert_eq!(
        s.statuses()[0].output,
        "v3",
        "statuses() shows the latest at once"
    );
    assert_eq!(
        s.next_due(),
        Some(t + secs(3)),
        "the next run comes before the report"
    );
    for k in 3..30 {
        let effects = run_once(&mut s, t + secs(k), (Status::Passing, "v3"));
        assert!(effects.is_empty(), "{k}: {effects:?}");
    }
    let effects = s.poll(t + secs(30));
    assert_eq!(
        events(&effects),
        [event("output", "c", Status::Passing, "v3")]
    );
    let (id, generation) = runs(&effects).pop().expect("the run due at the same time");
    s.run_finished(t + secs(30), &id, generation, Status::Passing, "v3".into());
    // An output that changes and changes back before its report is never reported.
    assert!(run_once(&mut s, t + secs(31), (Status::Passing, "v4")).is_empty());
    assert!(run_once(&mut s, t + secs(32), (Status::Passing, "v3")).is_empty());
    for k in 33..70 {
        let effects = run_once(&mut s, t + secs(k), (Status::Passing, "v3"));
        assert!(events(&effects).is_empty(), "{k}: {effects:?}");
    }
    // A status change goes out at once even within the 30 s, and restarts them.
    let effects = run_once(&mut s, t + secs(70), (Status::Passing, "v5"));
    assert_eq!(
        events(&effects),
        [event("output", "c", Status::Passing, "v5")]
    );
    let effects = run_once(&mut s, t + secs(71), (Status::Critical, "down"));
    assert_eq!(
        events(&effects),
        [event("status", "c", Status::Critical, "down")]
    );
    assert!(run_once(&mut s, t + secs(72), (Status::Critical, "down!")).is_empty());
}

#[test]
fn thresholds_need_consecutive_results_and_hold_status_and_output_until_reached() {
    let mut s = Scheduler::new(config(), 1);
    s.add(
        Duration::ZERO,
        check(
            r#"{"name": "c", "tcp": "h:1", "interval": "1s",
        "success_before_passing": 3, "failures_before_critical": 2}"#,
        ),
    );
    let t = s.next_due().unwrap();
    assert!(run_once(&mut s, t, (Status::Passing, "ok")).is_empty());
    assert!(run_once(&mut s, t + secs(1), (Status::Passing, "ok")).is_empty());
    // A failure resets the successes (and is itself below its threshold).
    assert!(run_once(&mut s, t + secs(2), (Status::Critical, "blip")).is_empty());
    assert!(run_once(&mut s, t + secs(3), (Status::Passing, "ok")).is_empty());
    assert!(run_once(&mut s, t + secs(4), (Status::Passing, "ok")).is_empty());
    assert_eq!(
        (s.statuses()[0].status, s.statuses()[0].output.as_str()),
        (Status::Critical, "")
    );
    let effects = run_once(&mut s, t + secs(5), (Status::Passing, "ok"));
    assert_eq!(
        events(&effects),
        [event("status", "c", Status::Passing, "ok")]
    );
    // Warning counts as a failure too.
    assert!(run_once(&mut s, t + secs(6), (Status::Warning, "slow")).is_empty());
    let effects = run_once(&mut s, t + secs(7), (Status::Critical, "down"));
    assert_eq!(
        events(&effects),
        [event("status", "c", Status::Critical, "down")]
    );
}

#[test]
fn a_ttl_check_turns_critical_when_its_ttl_runs_out_without_an_update() {
    let mut s = Scheduler::new(config(), 1);
    s.add(Duration::ZERO, check(r#"{"name": "app", "ttl": "10s"}"#));
    assert_eq!(s.next_due(), Some(secs(10)));
    let effects = s
        .ttl_update(secs(4), "app", Status::Passing, "fine".into())
        .unwrap();
    assert_eq!(
        events(&effects),
        [event("status", "app", Status::Passing, "fine")]
    );
    assert_eq!(s.next_due(), Some(secs(14)), "each update restarts the TTL");
    assert!(s.poll(secs(13)).is_empty());
    let effects = s.poll(secs(14));
    assert_eq!(
        effects,
        [Effect::Event(CheckEvent::StatusChanged(CheckState {
            id: "app".into(),
            name: "app".into(),
            notes: String::new(),
            service_id: String::new(),
            service_name: String::new(),
            kind: "ttl",
            status: Status::Critical,
            output: "TTL expired (last output before timeout follows): fine".into(),
        }))]
    );
    assert_eq!(s.next_due(), None, "nothing more until the next update");
    let effects = s
        .ttl_update(secs(20), "app", Status::Warning, "back".into())
        .unwrap();
    assert_eq!(
        events(&effects),
        [event("status", "app", Status::Warning, "back")]
    );
}

#[test]
fn ttl_updates_are_refused_for_unknown_and_probed_checks() {
    let mut s = Scheduler::new(config(), 1);
    s.add(
        Duration::ZERO,
        check(r#"{"name": "c", "tcp": "h:1", "interval": "1s"}"#),
    );
    assert!(matches!(
        s.ttl_update(secs(1), "nope", Status::Passing, String::new()),
        Err(HealthError::UnknownCheck(id)) if id == "nope"
    ));
    assert!(matches!(
        s.ttl_update(secs(1), "c", Status::Passing, String::new()),
        Err(HealthError::NotTtl(id)) if id == "c"
    ));
}

#[test]
fn a_restored_ttl_state_holds_for_the_rest_of_its_ttl() {
    let mut s = Scheduler::new(config(), 1);
    s.add(secs(100), check(r#"{"name": "app", "ttl": "1m"}"#));
    s.ttl_restore(secs(100), "app", Status::Passing, "saved".into(), secs(5))
        .unwrap();
    assert_eq!(
        (s.statuses()[0].status, s.statuses()[0].output.as_str()),
        (Status::Passing, "saved")
    );
    assert_eq!(s.next_due(), Some(secs(105)));
    let effects = s.poll(secs(105));
    assert_eq!(events(&effects)[0].2, Status::Critical);
}

#[test]
fn a_service_check_critical_for_its_deregister_time_asks_once_per_critical_stretch() {
    let mut s = Scheduler::new(config(), 1);
    s.add(
        Duration::ZERO,
        check(
            r#"{"name": "c", "service_id": "web", "ttl": "1h",
        "deregister_critical_service_after": "1m"}"#,
        ),
    );
    // Critical from the start (its initial status): the minute counts from registration.
    assert_eq!(s.next_due(), Some(secs(60)));
    assert!(s.poll(secs(59)).is_empty());
    let effects = s.poll(secs(60));
    assert!(matches!(
        effects.as_slice(),
        [Effect::Event(CheckEvent::DeregisterService { service_id, check })]
            if service_id == "web" && check.id == "c"
    ));
    assert!(s.poll(secs(120)).is_empty(), "reported once");
    // Passing ends the stretch; a new one counts from its own start.
    s.ttl_update(secs(200), "c", Status::Passing, String::new())
        .unwrap();
    s.ttl_update(secs(210), "c", Status::Critical, String::new())
        .unwrap();
    assert_eq!(s.next_due(), Some(secs(270)));
    // Warning is not critical: no deregistration.
    s.ttl_update(secs(260), "c", Status::Warning, String::new())
        .unwrap();
    assert!(events(&s.poll(secs(300))).is_empty());
}

#[test]
fn a_result_for_a_removed_or_replaced_check_is_dropped() {
    let mut s = Scheduler::new(config(), 1);
    let def = check(r#"{"name": "c", "tcp": "h:1", "interval": "1s"}"#);
    s.add(Duration::ZERO, def.clone());
    let t = s.next_due().unwrap();
    let started = runs(&s.poll(t));
    s.add(t, def);
    assert!(s
        .run_finished(t, "c", started[0].1, Status::Passing, "old".into())
        .is_empty());
    assert_eq!(s.statuses()[0].status, Status::Critical);
    assert!(s.remove("c"));
    assert!(!s.remove("c"));
    assert!(s
        .run_finished(t, "c", started[0].1 + 1, Status::Passing, "x".into())
        .is_empty());
    assert_eq!(s.next_due(), None);
}

#[test]
fn a_dropped_run_lets_the_check_run_at_its_next_interval() {
    let mut s = Scheduler::new(config(), 1);
    s.add(
        Duration::ZERO,
        check(r#"{"name": "c", "tcp": "h:1", "interval": "1s"}"#),
    );
    let t = s.next_due().unwrap();
    let started = runs(&s.poll(t));
    s.run_dropped("c", started[0].1);
    assert_eq!(runs(&s.poll(t + secs(1))).len(), 1);
}

#[test]
fn outputs_are_capped_at_4_kib_on_a_character_boundary() {
    let mut s = Scheduler::new(config(), 1);
    s.add(Duration::ZERO, check(r#"{"name": "app", "ttl": "10s"}"#));
    let long = "é".repeat(3000);
    s.ttl_update(secs(1), "app", Status::Passing, long).unwrap();
    let output = &s.statuses()[0].output;
    assert!(output.len() <= MAX_OUTPUT_BYTES && output.len() >= MAX_OUTPUT_BYTES - 1);
    assert!(output.chars().all(|c| c == 'é'));
}

/// One step of the random walk below: let `advance_ms` pass, then either update TTL check
/// `check` or answer the probes the poll started with `results`.
#[derive(Debug, Clone)]
struct Step {
    advance_ms: u64,
    ttl_update: Option<(usize, u8, u8)>,
    result: (u8, u8),
}

fn status_of(n: u8) -> Status {
    [Status::Passing, Status::Warning, Status::Critical][n as usize % 3]
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn step() -> impl Strategy<Value = Step> {
        (
            0u64..5_000,
            proptest::option::of((0usize..2, 0u8..3, 0u8..3)),
            (0u8..3, 0u8..3),
        )
            .prop_map(|(advance_ms, ttl_update, result)| Step {
                advance_ms,
                ttl_update,
                result,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// An agent that starts from `statuses()` and applies every status and output event
        /// ends with the runner's state once the output interval has passed: no change is
        /// lost by the rate limit, the thresholds or TTL expiry.
        #[test]
        fn the_events_carry_every_change_to_the_agent(
            seed in any::<u64>(),
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let mut s = Scheduler::new(config(), seed);
            for def in [
                r#"{"name": "ttl-0", "ttl": "3s"}"#,
                r#"{"name": "ttl-1", "ttl": "7s", "status": "passing"}"#,
                r#"{"name": "tcp", "tcp": "h:1", "interval": "1s"}"#,
                r#"{"name": "http", "http": "http://h/", "interval": "2s",
                    "success_before_passing": 2, "failures_before_critical": 3}"#,
            ] {
                s.add(Duration::ZERO, check(def));
            }
            let mut agent: BTreeMap<String, (Status, String)> = s
                .statuses()
                .into_iter()
                .map(|c| (c.id, (c.status, c.output)))
                .collect();
            let apply = |effects: Vec<Effect>, agent: &mut BTreeMap<String, (Status, String)>| {
                for effect in effects {
                    if let Effect::Event(CheckEvent::StatusChanged(c) | CheckEvent::OutputChanged(c)) = effect {
                        agent.insert(c.id, (c.status, c.output));
                    }
                }
            };
            let outputs = ["", "a", "b"];
            let mut now = Duration::ZERO;
            for step in steps {
                now += ms(step.advance_ms);
                let effects = s.poll(now);
                let started = runs(&effects);
                apply(effects, &mut agent);
                for (id, generation) in started {
                    let (status, output) = step.result;
                    let effects = s.run_finished(now, &id, generation, status_of(status), outputs[output as usize].into());
                    apply(effects, &mut agent);
                }
                if let Some((check, status, output)) = step.ttl_update {
                    let effects = s
                        .ttl_update(now, &format!("ttl-{check}"), status_of(status), outputs[output as usize].into())
                        .unwrap();
                    apply(effects, &mut agent);
                }
            }
            // Past every TTL, then past the output interval: whatever was pending is out.
            for later in [secs(10), secs(10) + config().output_update_interval] {
                let effects = s.poll(now + later);
                apply(effects, &mut agent);
            }
            let runner: BTreeMap<String, (Status, String)> = s
                .statuses()
                .into_iter()
                .map(|c| (c.id, (c.status, c.output)))
                .collect();
            prop_assert_eq!(agent, runner);
        }
    }
}
