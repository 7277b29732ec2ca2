//! [`CheckRunner`]: the thin driver around the pure [`Scheduler`].
//!
//! ```text
//!   add / remove / ttl_update / statuses ──┐
//!                                          ▼
//!   scheduler thread ── poll(now) ──▶ Mutex<Core{Scheduler, Outbox}> ──▶ events (flume,
//!        │  Run effects (bounded queue)           ▲                   bounded) ──▶ agent
//!        ▼                                        │ run_finished          (glommio task:
//!   probe threads (RunnerOptions::workers) ───────┘                      recv_async)
//! ```
//!
//! Probes block (connect, HTTP, a script), so they run on a small bounded pool of std
//! threads, never on a glommio executor. The scheduler thread sleeps on a condvar until
//! the scheduler's next deadline or until something changes. A probe that cannot be queued
//! (every thread busy and the queue full) is skipped until its next interval.
//!
//! The threads start with the first check that needs them: the scheduler thread with the
//! first check of any kind, the probe threads with the first check that probes (a TTL
//! check only needs its deadline watched). Most client agents have no checks, and five
//! idle threads cost each of them its stacks, a malloc arena each, and the pages of code
//! that start them (two HTTP clients with TLS set up per probe thread).
//!
//! Events never block the runner: they go to a bounded channel, and when it is full they
//! wait in an outbox that keeps at most one status/output event and one deregistration
//! event per check (a newer event for a check replaces the waiting one, carrying the latest
//! state), so memory stays bounded by the number of checks even if the agent stops reading.
//!
//! TTL checks' states are saved in `state_dir/checks/`, one JSON file per check written to a
//! temporary file and renamed over the old one, so an agent restart keeps an update until
//! its TTL runs out. Not fsynced: the state only has to survive a restart of the agent, and
//! after a machine crash a missing or torn file just means the check starts critical, which
//! is safe; an fsync per TTL update would cost a disk flush on the caller's thread.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::definition::{CheckDefinition, CheckKind, Probe};
use super::probe::{self, HttpClients, ProbeContext};
use super::schedule::{
    cap_output, CheckEvent, CheckState, Effect, RunRequest, ScheduleConfig, Scheduler,
};
use super::HealthError;
use crate::catalog::Status;

/// How a runner runs its checks.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Script checks run arbitrary programs as the agent's user: off unless the operator
    /// asks (Consul's `enable_script_checks`). When off, adding one is an error.
    pub enable_script_checks: bool,
    /// The agent's data directory; TTL states go in its `checks/` folder. `None`: TTL
    /// states are not kept across restarts.
    pub state_dir: Option<PathBuf>,
    /// Seeds the first-run offsets (a seed per agent, e.g. from its node id, spreads
    /// agents; a fixed seed makes a test replayable).
    pub seed: u64,
    /// Probe threads: the most checks probing at once. Default 4.
    pub workers: usize,
    /// Probes waiting for a thread, at most. Default 64.
    pub queue_capacity: usize,
    /// Events waiting in the channel before the outbox coalesces them. Default 1,024.
    pub event_capacity: usize,
    /// Checks at most (each poll visits every check). Default 4,096.
    pub max_checks: usize,
    pub schedule: ScheduleConfig,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            enable_script_checks: false,
            state_dir: None,
            seed: 0,
            workers: 4,
            queue_capacity: 64,
            event_capacity: 1024,
            max_checks: 4096,
            schedule: ScheduleConfig::default(),
        }
    }
}

/// Runs an agent's checks on its own threads; dropping it stops them.
pub struct CheckRunner {
    shared: Arc<Shared>,
    /// Started on demand; see the module doc.
    threads: Mutex<Threads>,
}

/// The runner's threads, and until they start, the ends of the job queue they will own.
struct Threads {
    /// Probe threads to start with the first check that probes.
    workers_wanted: usize,
    /// The job queue's only sender, until the scheduler thread takes it.
    jobs_tx: Option<flume::Sender<RunRequest>>,
    /// Kept to hand a clone to each probe thread.
    jobs_rx: flume::Receiver<RunRequest>,
    scheduler: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

struct Shared {
    core: Mutex<Core>,
    /// Wakes the scheduler thread: a check added or updated, a result in, or stop.
    wake: Condvar,
    /// The scheduler's time is time since this instant.
    epoch: Instant,
    /// Set on drop; probe threads and running scripts look at it.
    stop: AtomicBool,
    enable_script_checks: bool,
    max_checks: usize,
    /// `state_dir/checks`.
    checks_dir: Option<PathBuf>,
}

struct Core {
    scheduler: Scheduler,
    outbox: Outbox,
}

impl Shared {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock is a bug in this module; the state may be
        // half-updated, so don't carry on with it.
        self.core
            .lock()
            .expect("check runner state poisoned by a panic")
    }
}

impl CheckRunner {
    /// Adds `defs`, starting the threads they need. Refused (and nothing started) if a
    /// definition is a script check and script checks are not enabled, or the state
    /// directory cannot be created.
    pub fn start(
        defs: impl IntoIterator<Item = CheckDefinition>,
        options: RunnerOptions,
    ) -> Result<(CheckRunner, flume::Receiver<CheckEvent>), HealthError> {
        assert!(
            options.workers > 0,
            "a runner needs at least one probe thread"
        );
        let defs: Vec<CheckDefinition> = defs.into_iter().collect();
        for def in &defs {
            refuse_disabled_script(def, options.enable_script_checks)?;
        }
        let checks_dir = options.state_dir.as_ref().map(|d| d.join("checks"));
        if let Some(dir) = &checks_dir {
            std::fs::create_dir_all(dir).map_err(|error| HealthError::StateDir {
                path: dir.display().to_string(),
                error,
            })?;
        }
        let (events_tx, events_rx) = flume::bounded(options.event_capacity.max(1));
        let (jobs_tx, jobs_rx) = flume::bounded::<RunRequest>(options.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                scheduler: Scheduler::new(options.schedule, options.seed),
                outbox: Outbox::new(events_tx),
            }),
            wake: Condvar::new(),
            epoch: Instant::now(),
            stop: AtomicBool::new(false),
            enable_script_checks: options.enable_script_checks,
            max_checks: options.max_checks,
            checks_dir,
        });
        let runner = CheckRunner {
            shared,
            threads: Mutex::new(Threads {
                workers_wanted: options.workers,
                jobs_tx: Some(jobs_tx),
                jobs_rx,
                scheduler: None,
                workers: Vec::new(),
            }),
        };
        // From here on, an error drops `runner`, which stops the threads started so far.
        for def in defs {
            runner.add(def)?;
        }
        Ok((runner, events_rx))
    }

    /// Starts the scheduler thread, and the probe threads if `def` probes, unless they
    /// run already.
    fn start_threads_for(&self, def: &CheckDefinition) -> Result<(), HealthError> {
        let mut threads = self
            .threads
            .lock()
            .expect("check runner threads poisoned by a panic");
        if matches!(def.kind, CheckKind::Periodic { .. }) {
            for i in threads.workers.len()..threads.workers_wanted {
                let shared = self.shared.clone();
                let jobs = threads.jobs_rx.clone();
                let handle = std::thread::Builder::new()
                    .name(format!("cairn-check-{i}"))
                    .spawn(move || probe_thread(&shared, &jobs))
                    .map_err(HealthError::Thread)?;
                threads.workers.push(handle);
            }
        }
        if threads.scheduler.is_none() {
            let shared = self.shared.clone();
            let jobs_tx = threads
                .jobs_tx
                .clone()
                .expect("the sender is kept until the scheduler thread starts");
            let handle = std::thread::Builder::new()
                .name("cairn-check-scheduler".into())
                .spawn(move || scheduler_thread(&shared, jobs_tx))
                .map_err(HealthError::Thread)?;
            threads.scheduler = Some(handle);
            // The scheduler thread's is now the only sender (see `scheduler_thread`).
            threads.jobs_tx = None;
        }
        Ok(())
    }

    /// Adds a check, or replaces the one with its id (its state starts again from the new
    /// definition's initial status; a TTL check's saved state, if still within its TTL,
    /// is restored). Refused if it is a script check and scripts are not enabled, or if
    /// the runner already has `max_checks` others.
    pub fn add(&self, def: CheckDefinition) -> Result<(), HealthError> {
        refuse_disabled_script(&def, self.shared.enable_script_checks)?;
        self.start_threads_for(&def)?;
        let saved = match (&def.kind, &self.shared.checks_dir) {
            (CheckKind::Ttl { .. }, Some(dir)) => load_ttl_state(dir, &def.id),
            _ => None,
        };
        let mut core = self.shared.lock();
        if !core.scheduler.contains(&def.id) && core.scheduler.len() >= self.shared.max_checks {
            return Err(HealthError::TooManyChecks(self.shared.max_checks));
        }
        let now = self.shared.now();
        let id = def.id.clone();
        core.scheduler.add(now, def);
        if let Some((status, output, remaining)) = saved {
            core.scheduler
                .ttl_restore(now, &id, status, output, remaining)
                .expect("just added as a TTL check");
        }
        drop(core);
        self.shared.wake.notify_all();
        Ok(())
    }

    /// Removes a check (and its saved TTL state); false if there was none. A probe of it
    /// still running finishes and its result is dropped.
    pub fn remove(&self, id: &str) -> bool {
        let removed = self.shared.lock().scheduler.remove(id);
        if let Some(dir) = &self.shared.checks_dir {
            let _ = std::fs::remove_file(dir.join(state_file_name(id)));
        }
        self.shared.wake.notify_all();
        removed
    }

    /// A TTL check's report from its application: the status holds for another TTL. A
    /// change is reported on the event channel; the state is saved (see
    /// [`HealthError::StateNotSaved`] for a failed save). Cheap enough for a glommio task:
    /// a lock and a small file write.
    pub fn ttl_update(&self, id: &str, status: Status, output: &str) -> Result<(), HealthError> {
        let mut core = self.shared.lock();
        let now = self.shared.now();
        let effects = core
            .scheduler
            .ttl_update(now, id, status, output.to_string())?;
        let Some(CheckKind::Ttl { ttl }) = core.scheduler.definition(id).map(|d| &d.kind) else {
            unreachable!("ttl_update succeeded, so {id} is a TTL check")
        };
        let ttl = *ttl;
        for effect in effects {
            if let Effect::Event(event) = effect {
                core.outbox.push(event);
            }
        }
        // Saved under the lock, so concurrent updates of one check land in order.
        let saved = match &self.shared.checks_dir {
            Some(dir) => save_ttl_state(dir, id, status, output, ttl),
            None => Ok(()),
        };
        drop(core);
        self.shared.wake.notify_all();
        saved.map_err(|(path, error)| HealthError::StateNotSaved {
            id: id.to_string(),
            path,
            error,
        })
    }

    /// `ttl_update` with passing, as Consul's `/v1/agent/check/pass/:id?note=`.
    pub fn ttl_pass(&self, id: &str, note: &str) -> Result<(), HealthError> {
        self.ttl_update(id, Status::Passing, note)
    }

    /// `ttl_update` with warning, as Consul's `/v1/agent/check/warn/:id?note=`.
    pub fn ttl_warn(&self, id: &str, note: &str) -> Result<(), HealthError> {
        self.ttl_update(id, Status::Warning, note)
    }

    /// `ttl_update` with critical, as Consul's `/v1/agent/check/fail/:id?note=`.
    pub fn ttl_fail(&self, id: &str, note: &str) -> Result<(), HealthError> {
        self.ttl_update(id, Status::Critical, note)
    }

    /// Every check's current state, by id.
    pub fn statuses(&self) -> Vec<CheckState> {
        self.shared.lock().scheduler.statuses()
    }
}

impl Drop for CheckRunner {
    /// Stops the scheduler thread and joins it; tells running scripts to die. A TCP or
    /// HTTP probe in progress is not interrupted: its thread is waited for up to 1 s and
    /// then left to finish on its own (within the probe's timeout), its result dropped.
    fn drop(&mut self) {
        {
            // Set under the lock: the scheduler thread checks the flag and starts waiting
            // under it, so the wake-up below cannot fall between the two.
            let _core = self.shared.core.lock();
            self.shared.stop.store(true, Ordering::Relaxed);
        }
        self.shared.wake.notify_all();
        let threads = self
            .threads
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Without a scheduler thread the runner holds the only sender: close the queue.
        threads.jobs_tx = None;
        if let Some(handle) = threads.scheduler.take() {
            let _ = handle.join();
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline && threads.workers.iter().any(|w| !w.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        for worker in threads.workers.drain(..) {
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
    }
}

fn refuse_disabled_script(def: &CheckDefinition, enabled: bool) -> Result<(), HealthError> {
    match &def.kind {
        CheckKind::Periodic {
            probe: Probe::Script { .. },
            ..
        } if !enabled => Err(HealthError::ScriptChecksDisabled(def.id.clone())),
        _ => Ok(()),
    }
}

/// Polls the scheduler, hands probes to the threads, and sleeps until the next deadline.
/// Owns the job queue's only sender: when it returns, idle probe threads see the queue
/// closed and exit.
fn scheduler_thread(shared: &Shared, jobs: flume::Sender<RunRequest>) {
    let mut core = shared.lock();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = shared.now();
        for effect in core.scheduler.poll(now) {
            match effect {
                Effect::Run(request) => {
                    if let Err(flume::TrySendError::Full(request)) = jobs.try_send(request) {
                        core.scheduler
                            .run_dropped(&request.check_id, request.generation);
                    }
                }
                Effect::Event(event) => core.outbox.push(event),
            }
        }
        core.outbox.flush();
        let mut wait = match core.scheduler.next_due() {
            Some(due) => due.saturating_sub(shared.now()),
            None => Duration::from_secs(3600),
        };
        if core.outbox.has_waiting() {
            // The agent is behind; try again soon.
            wait = wait.min(Duration::from_millis(50));
        }
        core = shared
            .wake
            .wait_timeout(core, wait)
            .expect("check runner state poisoned by a panic")
            .0;
    }
}

fn probe_thread(shared: &Shared, jobs: &flume::Receiver<RunRequest>) {
    let http = HttpClients::new();
    let cx = ProbeContext {
        http: &http,
        stop: &shared.stop,
    };
    while let Ok(request) = jobs.recv() {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let (status, output) = probe::run(&request.probe, request.timeout, &cx);
        if shared.stop.load(Ordering::Relaxed) {
            // The runner is gone: nobody should hear of this result.
            return;
        }
        let mut core = shared.lock();
        let now = shared.now();
        let effects =
            core.scheduler
                .run_finished(now, &request.check_id, request.generation, status, output);
        for effect in effects {
            if let Effect::Event(event) = effect {
                core.outbox.push(event);
            }
        }
        core.outbox.flush();
        drop(core);
        // The result may have moved a deadline (a delayed output report).
        shared.wake.notify_all();
    }
}

/// Events on their way to the agent; see the module doc.
struct Outbox {
    tx: flume::Sender<CheckEvent>,
    /// Events that did not fit in the channel, keyed by (check id, is a deregistration).
    waiting: BTreeMap<(String, bool), CheckEvent>,
}

impl Outbox {
    fn new(tx: flume::Sender<CheckEvent>) -> Outbox {
        Outbox {
            tx,
            waiting: BTreeMap::new(),
        }
    }

    fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    fn push(&mut self, event: CheckEvent) {
        if self.waiting.is_empty() {
            match self.tx.try_send(event) {
                Ok(()) | Err(flume::TrySendError::Disconnected(_)) => return,
                Err(flume::TrySendError::Full(event)) => return self.wait(event),
            }
        }
        // Behind others already waiting: keep the order by waiting too.
        self.wait(event)
    }

    fn wait(&mut self, event: CheckEvent) {
        let key = (
            event.check().id.clone(),
            matches!(event, CheckEvent::DeregisterService { .. }),
        );
        let event = match (self.waiting.remove(&key), event) {
            // A status change still unheard stays a status change, with the latest state.
            (Some(CheckEvent::StatusChanged(_)), CheckEvent::OutputChanged(latest)) => {
                CheckEvent::StatusChanged(latest)
            }
            (_, event) => event,
        };
        self.waiting.insert(key, event);
    }

    fn flush(&mut self) {
        while let Some(entry) = self.waiting.first_entry() {
            let event = entry.remove();
            match self.tx.try_send(event) {
                Ok(()) => {}
                Err(flume::TrySendError::Disconnected(_)) => {
                    self.waiting.clear();
                    return;
                }
                Err(flume::TrySendError::Full(event)) => {
                    let key = (
                        event.check().id.clone(),
                        matches!(event, CheckEvent::DeregisterService { .. }),
                    );
                    self.waiting.insert(key, event);
                    return;
                }
            }
        }
    }
}

/// A TTL check's saved state.
#[derive(Serialize, Deserialize)]
struct TtlStateFile {
    /// Checked on load: file names are a cut-down id plus a hash.
    check_id: String,
    status: String,
    output: String,
    /// Wall-clock time (ms since the Unix epoch) when the TTL runs out: the monotonic
    /// clock does not survive a restart.
    expires_unix_ms: u64,
}

/// `<up to 64 safe characters of the id>-<FNV-1a of the whole id>.json`: readable in a
/// listing, valid on any file system whatever the id holds, and at most 86 bytes.
fn state_file_name(id: &str) -> String {
    let readable: String = id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{readable}-{hash:016x}.json")
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn save_ttl_state(
    dir: &Path,
    id: &str,
    status: Status,
    output: &str,
    ttl: Duration,
) -> Result<(), (String, std::io::Error)> {
    let path = dir.join(state_file_name(id));
    let state = TtlStateFile {
        check_id: id.to_string(),
        status: status.as_str().to_string(),
        output: cap_output(output.to_string()),
        expires_unix_ms: unix_ms(SystemTime::now() + ttl),
    };
    let json = serde_json::to_vec(&state).expect("a string-only struct serializes");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| (path.display().to_string(), e))
}

/// The saved state of TTL check `id` and how much of its TTL is left, if there is a
/// readable file for it and its TTL has not run out. An expired or unreadable file is
/// removed: the check starts from its initial status, as Consul's does.
fn load_ttl_state(dir: &Path, id: &str) -> Option<(Status, String, Duration)> {
    let path = dir.join(state_file_name(id));
    let bytes = std::fs::read(&path).ok()?;
    let parsed = serde_json::from_slice::<TtlStateFile>(&bytes)
        .ok()
        .filter(|s| s.check_id == id)
        .and_then(|s| {
            let status: Status = s.status.parse().ok()?;
            let remaining = s.expires_unix_ms.checked_sub(unix_ms(SystemTime::now()))?;
            (remaining > 0).then(|| (status, s.output, Duration::from_millis(remaining)))
        });
    if parsed.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, status: Status, output: &str) -> CheckState {
        CheckState {
            id: id.into(),
            name: id.into(),
            notes: String::new(),
            service_id: "web".into(),
            service_name: "web".into(),
            kind: "tcp",
            status,
            output: output.into(),
        }
    }

    #[test]
    fn a_full_channel_keeps_one_waiting_event_per_check_with_its_latest_state_in_order() {
        let (tx, rx) = flume::bounded(1);
        let mut outbox = Outbox::new(tx);
        outbox.push(CheckEvent::OutputChanged(state("a", Status::Passing, "1")));
        // The channel is full from here on.
        outbox.push(CheckEvent::StatusChanged(state(
            "b",
            Status::Critical,
            "down",
        )));
        outbox.push(CheckEvent::OutputChanged(state(
            "b",
            Status::Critical,
            "down!",
        )));
        outbox.push(CheckEvent::DeregisterService {
            service_id: "web".into(),
            check: state("b", Status::Critical, "down!"),
        });
        outbox.push(CheckEvent::OutputChanged(state("a", Status::Passing, "2")));
        outbox.push(CheckEvent::OutputChanged(state("a", Status::Passing, "3")));
        assert_eq!(
            outbox.waiting.len(),
            3,
            "a's output, b's status, b's deregistration"
        );
        let mut received = vec![rx.try_recv().unwrap()];
        for _ in 0..10 {
            outbox.flush();
            if let Ok(event) = rx.try_recv() {
                received.push(event);
            }
        }
        assert!(!outbox.has_waiting());
        assert_eq!(
            received,
            [
                CheckEvent::OutputChanged(state("a", Status::Passing, "1")),
                CheckEvent::OutputChanged(state("a", Status::Passing, "3")),
                // Still a status change, with the newer output.
                CheckEvent::StatusChanged(state("b", Status::Critical, "down!")),
                CheckEvent::DeregisterService {
                    service_id: "web".into(),
                    check: state("b", Status::Critical, "down!"),
                },
            ]
        );
        // A new event goes straight to the channel again.
        outbox.push(CheckEvent::OutputChanged(state("a", Status::Passing, "4")));
        assert!(!outbox.has_waiting());
        drop(rx);
        outbox.push(CheckEvent::OutputChanged(state("a", Status::Passing, "5")));
        assert!(
            !outbox.has_waiting(),
            "no agent listening: dropped, not kept"
        );
    }

    #[test]
    fn threads_start_with_the_first_check_that_needs_them() {
        let threads = |runner: &CheckRunner| {
            let t = runner.threads.lock().unwrap();
            (t.scheduler.is_some(), t.workers.len())
        };
        let (runner, _events) = CheckRunner::start([], RunnerOptions::default()).unwrap();
        assert_eq!(threads(&runner), (false, 0), "no check, no thread");
        let ttl = crate::health::parse_check("test", br#"{"name": "t", "ttl": "1h"}"#).unwrap();
        runner.add(ttl).unwrap();
        assert_eq!(threads(&runner), (true, 0), "a TTL check probes nothing");
        let tcp = crate::health::parse_check(
            "test",
            br#"{"name": "c", "tcp": "127.0.0.1:1", "interval": "1h", "timeout": "1s"}"#,
        )
        .unwrap();
        let workers = RunnerOptions::default().workers;
        runner.add(tcp.clone()).unwrap();
        assert_eq!(threads(&runner), (true, workers));
        runner.add(tcp).unwrap();
        assert_eq!(threads(&runner), (true, workers), "started once");
        drop(runner);

        // A runner dropped before any check closes its queue and joins nothing.
        let (runner, events) = CheckRunner::start([], RunnerOptions::default()).unwrap();
        drop(runner);
        assert!(
            events.recv().is_err(),
            "the event channel closes with the runner"
        );
    }

    #[test]
    fn state_file_names_are_safe_distinct_and_bounded() {
        let a = state_file_name("service:web:1");
        assert!(
            a.starts_with("service_web_1-") && a.ends_with(".json"),
            "{a}"
        );
        assert_ne!(a, state_file_name("service_web_1"));
        let long = state_file_name(&"/".repeat(256));
        assert!(long.len() <= 86 && !long.contains('/'), "{long}");
    }

    #[test]
    fn a_saved_ttl_state_loads_until_it_expires_and_a_foreign_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        save_ttl_state(
            dir.path(),
            "t",
            Status::Warning,
            "slow",
            Duration::from_secs(60),
        )
        .unwrap();
        let (status, output, left) = load_ttl_state(dir.path(), "t").unwrap();
        assert_eq!((status, output.as_str()), (Status::Warning, "slow"));
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(1));

        save_ttl_state(dir.path(), "gone", Status::Passing, "", Duration::ZERO).unwrap();
        assert!(load_ttl_state(dir.path(), "gone").is_none());
        assert!(
            !dir.path().join(state_file_name("gone")).exists(),
            "expired file removed"
        );

        std::fs::write(dir.path().join(state_file_name("x")), "{torn").unwrap();
        assert!(load_ttl_state(dir.path(), "x").is_none());
    }
}
