//! The pure core of the check runner: when each check runs, what its results mean, and
//! which changes are reported. No clock, thread, socket or global RNG: the caller passes
//! `now` (time since an epoch of its choosing) and the seed, and carries out the
//! [`Effect`]s — run a probe, report an event. The same inputs always give the same
//! effects, so tests drive it with simulated time.
//!
//! Rules, as in Consul's agent:
//! - A periodic check first runs at a random offset within its interval (so agents started
//!   together do not probe together), then every interval on that grid. A run still in
//!   progress when the next is due makes that run be skipped, never queued.
//! - `success_before_passing` / `failures_before_critical` consecutive results are needed
//!   to change to passing / to warning or critical; below the threshold the status and
//!   output stay as they were.
//! - A TTL check turns critical when its TTL passes without an update.
//! - A status change is reported at once. A change of output alone is reported at most
//!   once per `output_update_interval` per check (the latest output then).
//! - A check critical for its `deregister_critical_service_after` reports that its service
//!   should be deregistered, once per stretch of being critical.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::definition::{CheckDefinition, CheckKind, Probe};
use super::HealthError;
use crate::catalog::{Check, Status};

/// Outputs are cut to this many bytes (Consul's default `output_max_size`): outputs are
/// replicated through Raft and kept in every server's catalog.
pub const MAX_OUTPUT_BYTES: usize = 4096;

/// Consul's `check_update_interval`: output-only changes are reported at most this often
/// per check. Each report becomes a Raft write on the servers; with 10,000 agents of 5
/// checks whose output changes at every run (a timestamp in an HTTP body is common), 5
/// minutes bounds that to ≈170 writes/s for the whole cluster, where 30 s would make it
/// ≈1,700/s for information nobody acts on. Status changes are never delayed.
pub const DEFAULT_OUTPUT_UPDATE_INTERVAL: Duration = Duration::from_secs(300);

/// Consul's `MinInterval`: shorter probing intervals are raised to it, so a typo like
/// "10ms" cannot turn a check into a load test of the service.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleConfig {
    pub min_interval: Duration,
    pub output_update_interval: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            min_interval: DEFAULT_MIN_INTERVAL,
            output_update_interval: DEFAULT_OUTPUT_UPDATE_INTERVAL,
        }
    }
}

/// A check's current state, as reported and as [`Scheduler::statuses`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckState {
    pub id: String,
    pub name: String,
    pub notes: String,
    pub service_id: String,
    pub service_name: String,
    /// "ttl", "tcp", "http" or "script".
    pub kind: &'static str,
    pub status: Status,
    pub output: String,
}

impl CheckState {
    /// The catalog's record of this check on `node` (indexes zero: the catalog sets them).
    pub fn to_catalog(&self, node: &str) -> Check {
        Check {
            id: self.id.clone(),
            name: self.name.clone(),
            node: node.to_string(),
            status: self.status,
            output: self.output.clone(),
            service_id: self.service_id.clone(),
            service_name: self.service_name.clone(),
            kind: self.kind.to_string(),
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// What the agent is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckEvent {
    /// The status changed (the output may have too).
    StatusChanged(CheckState),
    /// Only the output changed (rate-limited, see the module doc).
    OutputChanged(CheckState),
    /// The check has been critical for its `deregister_critical_service_after`: the agent
    /// should deregister `service_id` (and with it its checks).
    DeregisterService {
        service_id: String,
        check: CheckState,
    },
}

impl CheckEvent {
    pub fn check(&self) -> &CheckState {
        match self {
            CheckEvent::StatusChanged(c) | CheckEvent::OutputChanged(c) => c,
            CheckEvent::DeregisterService { check, .. } => check,
        }
    }
}

/// A probe to run now; its result goes back through [`Scheduler::run_finished`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub check_id: String,
    /// Tells a result for this definition from one for an earlier definition under the
    /// same id (removed or replaced while the probe ran), which is dropped.
    pub generation: u64,
    pub probe: Probe,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Run(RunRequest),
    Event(CheckEvent),
}

pub struct Scheduler {
    config: ScheduleConfig,
    rng: StdRng,
    checks: BTreeMap<String, Entry>,
    next_generation: u64,
}

struct Entry {
    def: CheckDefinition,
    generation: u64,
    status: Status,
    output: String,
    /// Periodic checks: the probing interval (raised to the minimum), when the next run
    /// is due, and whether a run is in progress.
    interval: Duration,
    next_run: Option<Duration>,
    running: bool,
    /// TTL checks: when the TTL runs out; `None` once expired (until the next update).
    ttl_deadline: Option<Duration>,
    /// Consecutive results of each sort, for the thresholds.
    successes: u32,
    failures: u32,
    /// Since when the check is critical, and whether the deregistration was reported for
    /// this stretch.
    critical_since: Option<Duration>,
    deregister_reported: bool,
    /// What the agent last heard, and when: an output change waits for
    /// `last_output_report + output_update_interval`.
    reported_output: String,
    last_output_report: Option<Duration>,
    output_pending: bool,
}

impl Entry {
    fn state(&self) -> CheckState {
        CheckState {
            id: self.def.id.clone(),
            name: self.def.name.clone(),
            notes: self.def.notes.clone(),
            service_id: self.def.service_id.clone(),
            service_name: self.def.service_name.clone(),
            kind: self.def.kind.type_name(),
            status: self.status,
            output: self.output.clone(),
        }
    }

    fn output_flush_at(&self, config: &ScheduleConfig) -> Option<Duration> {
        self.output_pending.then(|| {
            self.last_output_report.unwrap_or(Duration::ZERO) + config.output_update_interval
        })
    }

    fn deregister_at(&self) -> Option<Duration> {
        match (
            self.critical_since,
            self.def.deregister_critical_service_after,
        ) {
            (Some(since), Some(after)) if !self.deregister_reported => Some(since + after),
            _ => None,
        }
    }

    /// Takes a new status and output, reporting as the module doc says.
    fn record(
        &mut self,
        now: Duration,
        status: Status,
        output: String,
        config: &ScheduleConfig,
        effects: &mut Vec<Effect>,
    ) {
        let output = cap_output(output);
        if status != self.status {
            if status == Status::Critical {
                self.critical_since = Some(now);
            } else {
                self.critical_since = None;
                self.deregister_reported = false;
            }
            self.status = status;
            self.output = output;
            self.reported_output = self.output.clone();
            self.last_output_report = Some(now);
            self.output_pending = false;
            effects.push(Effect::Event(CheckEvent::StatusChanged(self.state())));
        } else if output != self.output {
            self.output = output;
            if self.output == self.reported_output {
                self.output_pending = false;
            } else if self
                .last_output_report
                .is_none_or(|t| now >= t + config.output_update_interval)
            {
                self.report_output(now, effects);
            } else {
                self.output_pending = true;
            }
        }
    }

    fn report_output(&mut self, now: Duration, effects: &mut Vec<Effect>) {
        self.reported_output = self.output.clone();
        self.last_output_report = Some(now);
        self.output_pending = false;
        effects.push(Effect::Event(CheckEvent::OutputChanged(self.state())));
    }
}

/// Cuts `output` to [`MAX_OUTPUT_BYTES`] on a character boundary.
pub fn cap_output(mut output: String) -> String {
    if output.len() > MAX_OUTPUT_BYTES {
        let mut end = MAX_OUTPUT_BYTES;
        while !output.is_char_boundary(end) {
            end -= 1;
        }
        output.truncate(end);
    }
    output
}

/// The first `t >= now` on the grid `start + k * interval`.
fn next_on_grid(start: Duration, interval: Duration, now: Duration) -> Duration {
    if now < start {
        return start;
    }
    let elapsed = (now - start).as_nanos();
    let step = interval.as_nanos();
    let k = elapsed.div_ceil(step).max(1);
    start + Duration::from_nanos((k * step).min(u64::MAX as u128) as u64)
}

impl Scheduler {
    pub fn new(config: ScheduleConfig, seed: u64) -> Scheduler {
        assert!(
            !config.min_interval.is_zero(),
            "min_interval must be positive"
        );
        Scheduler {
            config,
            rng: StdRng::seed_from_u64(seed),
            checks: BTreeMap::new(),
            next_generation: 1,
        }
    }

    /// Adds a check, replacing any check with the same id (a result of the old one still
    /// running is then dropped). Its status is its initial status until the first result.
    pub fn add(&mut self, now: Duration, def: CheckDefinition) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let (interval, next_run, ttl_deadline) = match &def.kind {
            CheckKind::Ttl { ttl } => (Duration::ZERO, None, Some(now + *ttl)),
            CheckKind::Periodic { interval, .. } => {
                let interval = (*interval).max(self.config.min_interval);
                let offset = self.rng.random_range(0..interval.as_nanos() as u64);
                (interval, Some(now + Duration::from_nanos(offset)), None)
            }
        };
        let status = def.initial_status;
        let entry = Entry {
            generation,
            status,
            output: String::new(),
            interval,
            next_run,
            running: false,
            ttl_deadline,
            successes: 0,
            failures: 0,
            critical_since: (status == Status::Critical).then_some(now),
            deregister_reported: false,
            reported_output: String::new(),
            last_output_report: None,
            output_pending: false,
            def,
        };
        self.checks.insert(entry.def.id.clone(), entry);
    }

    /// Sets a TTL check's status as it was before a restart, with `remaining` of its TTL
    /// left. Reports nothing: the agent reads the restored state with `statuses`.
    pub fn ttl_restore(
        &mut self,
        now: Duration,
        id: &str,
        status: Status,
        output: String,
        remaining: Duration,
    ) -> Result<(), HealthError> {
        let entry = self.ttl_entry(id)?;
        entry.status = status;
        entry.output = cap_output(output);
        entry.reported_output = entry.output.clone();
        entry.ttl_deadline = Some(now + remaining);
        if status == Status::Critical {
            entry.critical_since.get_or_insert(now);
        } else {
            entry.critical_since = None;
        }
        Ok(())
    }

    /// Removes a check; false if there was none.
    pub fn remove(&mut self, id: &str) -> bool {
        self.checks.remove(id).is_some()
    }

    pub fn len(&self) -> usize {
        self.checks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    pub fn contains(&self, id: &str) -> bool {
        self.checks.contains_key(id)
    }

    pub fn definition(&self, id: &str) -> Option<&CheckDefinition> {
        self.checks.get(id).map(|e| &e.def)
    }

    /// Every check's state, by id.
    pub fn statuses(&self) -> Vec<CheckState> {
        self.checks.values().map(Entry::state).collect()
    }

    /// The earliest time at which [`poll`](Self::poll) has something to do, if any.
    pub fn next_due(&self) -> Option<Duration> {
        self.checks
            .values()
            .flat_map(|e| {
                [
                    e.next_run,
                    e.ttl_deadline,
                    e.output_flush_at(&self.config),
                    e.deregister_at(),
                ]
            })
            .flatten()
            .min()
    }

    /// Everything due at `now`: probes to start, TTL expiries, delayed output reports,
    /// deregistration requests. Visits every check (an agent runs hundreds, not millions).
    pub fn poll(&mut self, now: Duration) -> Vec<Effect> {
        let mut effects = Vec::new();
        let config = self.config;
        for entry in self.checks.values_mut() {
            if let Some(due) = entry.next_run.filter(|due| *due <= now) {
                entry.next_run = Some(next_on_grid(due, entry.interval, now));
                if !entry.running {
                    if let CheckKind::Periodic { probe, timeout, .. } = &entry.def.kind {
                        entry.running = true;
                        effects.push(Effect::Run(RunRequest {
                            check_id: entry.def.id.clone(),
                            generation: entry.generation,
                            probe: probe.clone(),
                            timeout: *timeout,
                        }));
                    }
                }
            }
            if entry.ttl_deadline.is_some_and(|d| d <= now) {
                entry.ttl_deadline = None;
                let output = format!(
                    "TTL expired (last output before timeout follows): {}",
                    entry.output
                );
                entry.record(now, Status::Critical, output, &config, &mut effects);
            }
            if entry.output_flush_at(&config).is_some_and(|t| t <= now) {
                entry.report_output(now, &mut effects);
            }
            if entry.deregister_at().is_some_and(|t| t <= now) {
                entry.deregister_reported = true;
                effects.push(Effect::Event(CheckEvent::DeregisterService {
                    service_id: entry.def.service_id.clone(),
                    check: entry.state(),
                }));
            }
        }
        effects
    }

    /// A probe's result. Dropped if the check was removed or replaced since it started.
    pub fn run_finished(
        &mut self,
        now: Duration,
        id: &str,
        generation: u64,
        status: Status,
        output: String,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let config = self.config;
        let Some(entry) = self
            .checks
            .get_mut(id)
            .filter(|e| e.generation == generation)
        else {
            return effects;
        };
        entry.running = false;
        let reached = if status == Status::Passing {
            entry.successes = entry.successes.saturating_add(1);
            entry.failures = 0;
            entry.successes >= entry.def.success_before_passing
        } else {
            entry.failures = entry.failures.saturating_add(1);
            entry.successes = 0;
            entry.failures >= entry.def.failures_before_critical
        };
        if reached {
            entry.record(now, status, output, &config, &mut effects);
        }
        effects
    }

    /// A probe that could not be started (the workers' queue was full): the check runs
    /// again at its next interval.
    pub fn run_dropped(&mut self, id: &str, generation: u64) {
        if let Some(entry) = self
            .checks
            .get_mut(id)
            .filter(|e| e.generation == generation)
        {
            entry.running = false;
        }
    }

    /// The application's report for a TTL check: the status takes effect at once and the
    /// TTL starts again.
    pub fn ttl_update(
        &mut self,
        now: Duration,
        id: &str,
        status: Status,
        output: String,
    ) -> Result<Vec<Effect>, HealthError> {
        let config = self.config;
        let entry = self.ttl_entry(id)?;
        let CheckKind::Ttl { ttl } = entry.def.kind else {
            unreachable!("ttl_entry returns TTL checks only")
        };
        entry.ttl_deadline = Some(now + ttl);
        let mut effects = Vec::new();
        entry.record(now, status, output, &config, &mut effects);
        Ok(effects)
    }

    fn ttl_entry(&mut self, id: &str) -> Result<&mut Entry, HealthError> {
        let entry = self
            .checks
            .get_mut(id)
            .ok_or_else(|| HealthError::UnknownCheck(id.to_string()))?;
        match entry.def.kind {
            CheckKind::Ttl { .. } => Ok(entry),
            _ => Err(HealthError::NotTtl(id.to_string())),
        }
    }
}

#[cfg(test)]
mod tests;
