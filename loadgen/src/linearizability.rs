//! Linearizability checking for key-value histories.
//!
//! A history is what clients saw: each operation with the time it was called, the time
//! its answer came back, and the answer. The history is linearizable if every operation
//! can be given one instant between its call and its return such that, taken in that
//! order, the answers are those of a single-copy register per key (Herlihy & Wing 1990).
//!
//! How it is checked:
//! - Keys are independent registers, so each key is checked on its own (linearizability
//!   is local, Herlihy & Wing §3.3; Horn & Kroening 2015 call the split
//!   *P-compositionality*). This is what keeps the search small.
//! - Per key, the search of Wing & Gong (1993): walk a doubly linked list of call and
//!   return events in time order; at a call, try to *linearize* the operation (apply it
//!   to the model register and *lift* its call and return out of the list); at a return
//!   whose operation is not yet linearized, undo the last choice (*unlift*) and try the
//!   next candidate. Lowe's memoization (2017) caches every (set of linearized
//!   operations, register state) reached, so no configuration is explored twice. This is
//!   the structure of Porcupine's `checkSingle` (github.com/anishathalye/porcupine).
//! - An operation with no answer (timeout, lost connection) is *indeterminate*: it may
//!   or may not have taken effect, at any time after its call. As in Porcupine its return
//!   time is infinity; "never took effect" is the same as "took effect after everything
//!   else". A read with no answer constrains nothing and is dropped.
//! - The search is bounded: [`CheckOptions::max_steps_per_key`] and an optional
//!   deadline turn a search that would run for hours into [`CheckResult::Unknown`].
//!
//! CAS compares by *value* (`Cas { expect, new }` swaps iff the register holds
//! `expect`). Cairn's CAS compares the ModifyIndex, which a model cannot predict (it is
//! the Raft index of the last write). A harness that writes a unique value per key maps
//! one to the other: "CAS at the index I read with value `v`" is `Cas { expect: Some(v) }`.
//!
//! What this module leaves to others: driving a cluster (the harness calls
//! [`Recorder::begin`] before sending and [`Recorder::end`] with the answer), and
//! multi-key operations (transactions, `list`), which this model does not have.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Debug, Write as _};
use std::fs::File;
use std::hash::Hash;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{json, Map, Value as Json};

/// An operation's position in its [`History`] (and in its [`Recorder`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

/// What a client asked of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op<V> {
    Get,
    Put {
        value: V,
    },
    Delete,
    /// Swap in `new` iff the key holds `expect` (`None`: iff the key is absent).
    Cas {
        expect: Option<V>,
        new: V,
    },
}

/// What the client got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome<V> {
    /// A `Put` or `Delete` was acknowledged.
    Ok,
    /// A `Get` answered with this value; `None`: the key was absent.
    Read(Option<V>),
    /// A `Cas` answered; `true`: it swapped.
    Cas(bool),
    /// No answer (timeout, connection lost): a write may or may not have taken effect,
    /// at any time after its call. For a `Get` the operation is ignored.
    Indeterminate,
}

/// One operation as a client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<V> {
    /// Who issued it. Only used in explanations: real-time order comes from the times.
    pub client: u64,
    pub key: String,
    pub op: Op<V>,
    /// Nanoseconds from a common origin, taken before the request was sent.
    pub call_ns: u64,
    /// Taken after the answer arrived (for `Indeterminate`: when the client gave up;
    /// the checker treats it as infinity).
    pub return_ns: u64,
    pub outcome: Outcome<V>,
}

impl<V> Operation<V> {
    /// The outcome fits the kind of operation and the return is not before the call.
    pub fn is_well_formed(&self) -> bool {
        let fits = matches!(
            (&self.op, &self.outcome),
            (_, Outcome::Indeterminate)
                | (Op::Get, Outcome::Read(_))
                | (Op::Put { .. } | Op::Delete, Outcome::Ok)
                | (Op::Cas { .. }, Outcome::Cas(_))
        );
        fits && self.call_ns <= self.return_ns
    }
}

/// A history: operations on any number of keys, in any order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History<V> {
    ops: Vec<Operation<V>>,
}

impl<V> Default for History<V> {
    fn default() -> Self {
        History { ops: Vec::new() }
    }
}

impl<V> History<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Panics if the operation is not well formed (a bug in the harness).
    pub fn from_ops(ops: Vec<Operation<V>>) -> Self {
        let mut history = History::new();
        for op in ops {
            history.push(op);
        }
        history
    }

    /// Panics if the operation is not well formed (a bug in the harness).
    pub fn push(&mut self, op: Operation<V>) -> OpId {
        assert!(
            op.is_well_formed(),
            "operation {} (client {}, key {:?}, {}..{} ns) has an outcome that does not fit \
             its kind, or returns before its call",
            self.ops.len(),
            op.client,
            op.key,
            op.call_ns,
            op.return_ns
        );
        self.ops.push(op);
        OpId(self.ops.len() - 1)
    }

    pub fn ops(&self) -> &[Operation<V>] {
        &self.ops
    }

    pub fn ops_mut(&mut self) -> &mut [Operation<V>] {
        &mut self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl<V: Eq + Hash + Debug> History<V> {
    /// See [`check`].
    pub fn check(&self, options: &CheckOptions) -> CheckResult {
        check(&self.ops, options)
    }
}

/// Bounds on the search.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Search steps (one per event visited) allowed for each key before it is reported
    /// unknown. Each step adds at most one cache entry of `ops_on_key / 8` bytes, so this
    /// also bounds memory.
    pub max_steps_per_key: u64,
    /// Give up (unknown) once this instant has passed; checked every 1024 steps.
    pub deadline: Option<Instant>,
}

impl Default for CheckOptions {
    /// 2^23 steps per key. A linearizable key of ~5000 operations from 10 concurrent
    /// clients, 5% of them indeterminate writes, needs up to ~4M steps: 0.4-1.2 s in
    /// release and ~220 MB on a shared 2-core AMD EPYC VM (`cargo test --release -p
    /// loadgen --test linearizability long_single_key -- --nocapture`).
    fn default() -> Self {
        CheckOptions {
            max_steps_per_key: 1 << 23,
            deadline: None,
        }
    }
}

/// The verdict on a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every key is linearizable.
    Ok,
    /// A key is not linearizable. When several are, the first in key order.
    Illegal(Violation),
    /// No key is known to be illegal, but the budget ran out on these keys (key order).
    Unknown { keys: Vec<String> },
}

impl CheckResult {
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }

    pub fn is_illegal(&self) -> bool {
        matches!(self, CheckResult::Illegal(_))
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, CheckResult::Unknown { .. })
    }
}

/// Why a key is not linearizable: the deepest point the search reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    /// The longest linearizable prefix found, in linearization order.
    pub linearized: Vec<OpId>,
    /// The operation that could not be placed: it returned before any order of the
    /// remaining operations let it take effect.
    pub stuck: OpId,
    /// For a human: the tail of the prefix with the register after each operation, the
    /// stuck operation, and why each operation that could go next cannot.
    pub explanation: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.explanation)
    }
}

/// Checks every key of `ops` (see the module doc). Panics if an operation is not well
/// formed.
pub fn check<V: Eq + Hash + Debug>(ops: &[Operation<V>], options: &CheckOptions) -> CheckResult {
    let mut by_key: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, op) in ops.iter().enumerate() {
        assert!(op.is_well_formed(), "operation {index} is not well formed");
        by_key.entry(op.key.as_str()).or_default().push(index);
    }
    let mut keys: Vec<&str> = by_key.keys().copied().collect();
    keys.sort_unstable();

    let mut unknown = Vec::new();
    for key in keys {
        let prepared = prepare_key(ops, &by_key[key]);
        match search(&prepared.entries, options) {
            Search::Ok => {}
            Search::Unknown => unknown.push(key.to_string()),
            Search::Illegal { prefix, stuck } => {
                return CheckResult::Illegal(explain(key, ops, &prepared, &prefix, stuck));
            }
        }
    }
    if unknown.is_empty() {
        CheckResult::Ok
    } else {
        CheckResult::Unknown { keys: unknown }
    }
}

// ---------------------------------------------------------------------------------------
// Per-key preparation: values interned to small integers so the register state is `Copy`.

/// A register state: `None` absent, `Some(i)` the `i`-th distinct value of the key, or
/// [`UNOBSERVED`].
type State = Option<u32>;

/// Some value written by an indeterminate write that nobody observes (see
/// [`Entry::unobserved`]): no read returns it and no CAS expects it.
const UNOBSERVED: State = Some(u32::MAX);

#[derive(Clone, Copy, Debug)]
enum Step {
    /// A `Get` that answered.
    Read(State),
    /// A `Put` (`Some`) or `Delete` (`None`), acknowledged or indeterminate: both always
    /// succeed in the model, the indeterminate one at any time after its call.
    Write(State),
    /// `swapped: None` for indeterminate: swaps iff the register holds `expect`.
    Cas {
        expect: State,
        new: u32,
        swapped: Option<bool>,
    },
}

impl Step {
    /// The register after this step from `state`, or `None` if the answer is impossible.
    fn apply(self, state: State) -> Option<State> {
        match self {
            Step::Read(seen) => (seen == state).then_some(state),
            Step::Write(new) => Some(new),
            Step::Cas {
                expect,
                new,
                swapped,
            } => match (swapped, state == expect) {
                (Some(true), true) | (None, true) => Some(Some(new)),
                (Some(false), false) | (None, false) => Some(state),
                (Some(true), false) | (Some(false), true) => None,
            },
        }
    }
}

struct Entry {
    id: OpId,
    step: Step,
    /// An indeterminate `Put` or `Delete` whose value no operation returning after its
    /// call observes. Its step writes [`UNOBSERVED`]. Two such writes that have both been
    /// called are interchangeable from then on: each can go anywhere later, and nothing
    /// after either tells their values apart. So at any point of the search, a completion
    /// that places one of them can place the first of them in the list instead. Placing
    /// one while the register already holds `UNOBSERVED` changes nothing, so it might as
    /// well go at the end.
    unobserved: bool,
    call_ns: u64,
    /// `u64::MAX` for indeterminate operations.
    return_ns: u64,
}

struct PreparedKey<'a, V> {
    entries: Vec<Entry>,
    /// Interned value `i` is `values[i]`.
    values: Vec<&'a V>,
    /// Indeterminate writes of a value nobody observed, left out of the search.
    set_aside: usize,
    /// Reads that never answered.
    dropped_reads: usize,
}

/// Drops unanswered reads, sets aside indeterminate writes that cannot matter, and
/// interns values.
///
/// An indeterminate write of `w` (a `Put`, a `Delete` writing absent, or a `Cas`
/// swapping in `w`) can be dropped without changing the verdict if no operation that
/// returns after its call observes `w` (reads `w`, or is a CAS expecting `w`) or is a
/// refused CAS. In any linearization containing it, the operations between it and the
/// next write return after its call, so none of them depends on the register holding
/// `w` (none reads `w`, none is a refused CAS that a different value would explain),
/// except indeterminate CASes that did nothing there and can move to the end. Setting these aside matters after a partition, when many writes
/// time out without taking effect; each one left in would double the search.
fn prepare_key<'a, V: Eq + Hash>(ops: &'a [Operation<V>], ids: &[usize]) -> PreparedKey<'a, V> {
    // For each value, the latest return of an operation observing it; and the latest
    // return of a refused CAS. Only an operation returning after a write's call can sit
    // after it in a linearization.
    let mut observed_until: HashMap<Option<&V>, u64> = HashMap::new();
    let mut failed_cas_until: Option<u64> = None;
    for &index in ids {
        let operation = &ops[index];
        let until = match operation.outcome {
            Outcome::Indeterminate => u64::MAX,
            _ => operation.return_ns,
        };
        let seen = match (&operation.op, &operation.outcome) {
            (Op::Get, Outcome::Read(seen)) => Some(seen.as_ref()),
            (Op::Cas { expect, .. }, outcome) => {
                if *outcome == Outcome::Cas(false) {
                    failed_cas_until = failed_cas_until.max(Some(until));
                }
                Some(expect.as_ref())
            }
            _ => None,
        };
        if let Some(seen) = seen {
            let latest = observed_until.entry(seen).or_insert(until);
            *latest = (*latest).max(until);
        }
    }
    let observed_after = |written: Option<&V>, call_ns: u64| {
        observed_until
            .get(&written)
            .is_some_and(|&until| until >= call_ns)
    };
    let refused_cas_after = |call_ns: u64| failed_cas_until.is_some_and(|until| until >= call_ns);

    let mut interned: HashMap<&V, u32> = HashMap::new();
    let mut values: Vec<&V> = Vec::new();
    let mut intern = |value: Option<&'a V>| -> State {
        let value = value?;
        Some(*interned.entry(value).or_insert_with(|| {
            values.push(value);
            u32::try_from(values.len() - 1)
                .ok()
                .filter(|&i| Some(i) != UNOBSERVED)
                .expect("fewer than 2^32 - 1 values per key")
        }))
    };

    let mut entries = Vec::with_capacity(ids.len());
    let (mut set_aside, mut dropped_reads) = (0, 0);
    for &index in ids {
        let operation = &ops[index];
        let indeterminate = operation.outcome == Outcome::Indeterminate;
        let written = match &operation.op {
            Op::Get => None,
            Op::Put { value } => Some(Some(value)),
            Op::Delete => Some(None),
            Op::Cas { new, .. } => Some(Some(new)),
        };
        if indeterminate {
            match written {
                None => {
                    dropped_reads += 1;
                    continue;
                }
                Some(w)
                    if !observed_after(w, operation.call_ns)
                        && !refused_cas_after(operation.call_ns) =>
                {
                    set_aside += 1;
                    continue;
                }
                Some(_) => {}
            }
        }
        let unobserved = indeterminate
            && matches!(operation.op, Op::Put { .. } | Op::Delete)
            && written.is_some_and(|w| !observed_after(w, operation.call_ns));
        let step = match (&operation.op, &operation.outcome) {
            _ if unobserved => Step::Write(UNOBSERVED),
            (Op::Get, Outcome::Read(seen)) => Step::Read(intern(seen.as_ref())),
            (Op::Put { value }, _) => Step::Write(intern(Some(value))),
            (Op::Delete, _) => Step::Write(None),
            (Op::Cas { expect, new }, outcome) => Step::Cas {
                expect: intern(expect.as_ref()),
                new: intern(Some(new)).expect("a written value interns to Some"),
                swapped: match outcome {
                    Outcome::Cas(swapped) => Some(*swapped),
                    _ => None,
                },
            },
            (Op::Get, _) => unreachable!("well formed, and unanswered reads were dropped"),
        };
        entries.push(Entry {
            id: OpId(index),
            step,
            unobserved,
            call_ns: operation.call_ns,
            return_ns: if indeterminate {
                u64::MAX
            } else {
                operation.return_ns
            },
        });
    }
    PreparedKey {
        entries,
        values,
        set_aside,
        dropped_reads,
    }
}

// ---------------------------------------------------------------------------------------
// The search (Wing & Gong with Lowe's cache), over one key.

const NIL: u32 = u32::MAX;

struct Node {
    prev: u32,
    next: u32,
    /// Index into the key's entries.
    entry: u32,
    /// For a call event, its return event's node; `NIL` for a return event.
    matching: u32,
}

/// The set of linearized entries with an incrementally kept hash (Zobrist: XOR of a
/// pseudo-random word per member), so the cache never rehashes the whole set.
struct Linearized {
    words: Box<[u64]>,
    hash: u64,
}

impl Linearized {
    fn new(len: usize) -> Self {
        Linearized {
            words: vec![0; len.div_ceil(64)].into_boxed_slice(),
            hash: 0,
        }
    }

    fn toggle(&mut self, entry: u32) {
        self.words[entry as usize / 64] ^= 1 << (entry % 64);
        self.hash ^= mix(u64::from(entry));
    }
}

/// The hash of a configuration; entries are below 2^31, so the state's word (top bit
/// set) never equals an entry's.
fn cache_hash(linearized: &Linearized, state: State) -> u64 {
    let state_word = (1 << 63) | state.map_or(0, |v| u64::from(v) + 1);
    linearized.hash ^ mix(state_word)
}

/// SplitMix64's finalizer.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A configuration the search reached: the linearized set's words and the register.
type CachedConfiguration = (Box<[u64]>, State);

enum Search {
    Ok,
    /// Entry indices: the longest linearizable prefix found, and the entry whose return
    /// ended it.
    Illegal {
        prefix: Vec<u32>,
        stuck: u32,
    },
    Unknown,
}

fn search(entries: &[Entry], options: &CheckOptions) -> Search {
    let count = u32::try_from(entries.len()).expect("fewer than 2^31 operations per key");
    assert!(count < NIL / 2, "fewer than 2^31 operations per key");

    // Events in time order; at equal times calls first, so operations that touch are
    // concurrent (the lenient reading: clocks of a few ns cannot order them).
    let mut events: Vec<(u64, bool, u32)> = Vec::with_capacity(2 * entries.len());
    for (i, entry) in (0..count).zip(entries) {
        events.push((entry.call_ns, false, i));
        events.push((entry.return_ns, true, i));
    }
    events.sort_unstable();

    // Node 0 is the head sentinel; event k is node k + 1.
    let mut nodes: Vec<Node> = Vec::with_capacity(events.len() + 1);
    nodes.push(Node {
        prev: NIL,
        next: if events.is_empty() { NIL } else { 1 },
        entry: NIL,
        matching: NIL,
    });
    let mut call_node = vec![NIL; entries.len()];
    let mut return_node = vec![NIL; entries.len()];
    for (k, &(_, is_return, entry)) in events.iter().enumerate() {
        let node = k as u32 + 1;
        if is_return {
            return_node[entry as usize] = node;
        } else {
            call_node[entry as usize] = node;
        }
        nodes.push(Node {
            prev: node - 1,
            next: if k + 1 == events.len() { NIL } else { node + 1 },
            entry,
            matching: NIL,
        });
    }
    for (&call, &ret) in call_node.iter().zip(&return_node) {
        nodes[call as usize].matching = ret;
    }

    let mut linearized = Linearized::new(entries.len());
    // Lowe's cache: configurations already reached. Reaching one again cannot lead
    // anywhere new. Bucketed by hash so a lookup clones nothing.
    let mut cache: HashMap<u64, Vec<CachedConfiguration>> = HashMap::new();
    // Linearized calls, in order, with the register before each and `unobserved_tried`
    // at that point of the scan.
    let mut calls: Vec<(u32, State, bool)> = Vec::new();
    // The candidates at a point of the search are the calls before the first return in
    // the list. Unobserved writes are interchangeable there (see `Entry::unobserved`):
    // only the first one in the list is tried, and only if it changes the register.
    let mut unobserved_tried = false;
    let mut state: State = None;
    let mut longest: Option<(Vec<u32>, u32)> = None;
    let mut node = nodes[0].next;
    let mut steps: u64 = 0;

    while nodes[0].next != NIL {
        if steps >= options.max_steps_per_key {
            return Search::Unknown;
        }
        if steps % 1024 == 0 && options.deadline.is_some_and(|d| Instant::now() >= d) {
            return Search::Unknown;
        }
        steps += 1;

        // The list always ends with a return event, so the walk never runs off its end.
        let current = &nodes[node as usize];
        let entry = current.entry;
        if current.matching != NIL {
            let next = current.next;
            if entries[entry as usize].unobserved {
                if unobserved_tried || state == UNOBSERVED {
                    node = next;
                    continue;
                }
                unobserved_tried = true;
            }
            if let Some(after) = entries[entry as usize].step.apply(state) {
                linearized.toggle(entry);
                let bucket = cache.entry(cache_hash(&linearized, after)).or_default();
                let seen = bucket
                    .iter()
                    .any(|(words, s)| *s == after && *words == linearized.words);
                if !seen {
                    bucket.push((linearized.words.clone(), after));
                    calls.push((node, state, unobserved_tried));
                    state = after;
                    lift(&mut nodes, node);
                    node = nodes[0].next;
                    unobserved_tried = false;
                    continue;
                }
                linearized.toggle(entry);
            }
            node = next;
        } else {
            // `entry` returned without being linearized: undo the last choice.
            if longest
                .as_ref()
                .is_none_or(|(prefix, _)| calls.len() > prefix.len())
            {
                let prefix = calls
                    .iter()
                    .map(|&(n, _, _)| nodes[n as usize].entry)
                    .collect();
                longest = Some((prefix, entry));
            }
            let Some((call, before, tried)) = calls.pop() else {
                let (prefix, stuck) = longest.expect("recorded just above");
                return Search::Illegal { prefix, stuck };
            };
            state = before;
            linearized.toggle(nodes[call as usize].entry);
            unlift(&mut nodes, call);
            node = nodes[call as usize].next;
            unobserved_tried = tried;
        }
    }
    Search::Ok
}

/// Takes a call event and its return event out of the list.
fn lift(nodes: &mut [Node], call: u32) {
    let ret = nodes[call as usize].matching;
    for n in [call, ret] {
        let (prev, next) = (nodes[n as usize].prev, nodes[n as usize].next);
        nodes[prev as usize].next = next;
        if next != NIL {
            nodes[next as usize].prev = prev;
        }
    }
}

/// Puts back what [`lift`] took out, in reverse order.
fn unlift(nodes: &mut [Node], call: u32) {
    let ret = nodes[call as usize].matching;
    for n in [ret, call] {
        let (prev, next) = (nodes[n as usize].prev, nodes[n as usize].next);
        nodes[prev as usize].next = n;
        if next != NIL {
            nodes[next as usize].prev = n;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Explanations.

/// How many operations of the prefix, and of the candidates, an explanation lists.
const EXPLAIN_PREFIX_TAIL: usize = 20;
const EXPLAIN_CANDIDATES: usize = 20;

fn explain<V: Debug>(
    key: &str,
    ops: &[Operation<V>],
    prepared: &PreparedKey<'_, V>,
    prefix: &[u32],
    stuck: u32,
) -> Violation {
    let entries = &prepared.entries;
    let show_state = |state: State| match state {
        None => "absent".to_string(),
        UNOBSERVED => "(a value nobody observes)".to_string(),
        Some(i) => format!("{:?}", prepared.values[i as usize]),
    };

    let mut text = String::new();
    let _ = writeln!(
        text,
        "key {key:?} is not linearizable ({} operations checked; {} unanswered reads \
         dropped, {} indeterminate writes nobody observed set aside).",
        entries.len(),
        prepared.dropped_reads,
        prepared.set_aside
    );
    let _ = writeln!(
        text,
        "Longest linearizable prefix found: {} operations, in linearization order, with \
         the register after each:",
        prefix.len()
    );
    let mut state: State = None;
    let mut states = Vec::with_capacity(prefix.len());
    for &e in prefix {
        state = entries[e as usize]
            .step
            .apply(state)
            .expect("the prefix was linearized by the search");
        states.push(state);
    }
    let skip = prefix.len().saturating_sub(EXPLAIN_PREFIX_TAIL);
    if skip > 0 {
        let _ = writeln!(text, "  ... {skip} earlier operations");
    }
    for (&e, &after) in prefix.iter().zip(&states).skip(skip) {
        let op = &ops[entries[e as usize].id.0];
        let _ = writeln!(
            text,
            "  {}  => {}",
            describe(entries[e as usize].id, op),
            show_state(after)
        );
    }

    let stuck_entry = &entries[stuck as usize];
    let _ = writeln!(
        text,
        "No order lets this operation take effect before it returned at {}:\n  {}",
        show_ns(stuck_entry.return_ns),
        describe(stuck_entry.id, &ops[stuck_entry.id.0])
    );
    let _ = writeln!(
        text,
        "From register {}, the operations that could go next (called by then, not yet \
         linearized):",
        show_state(state)
    );
    let in_prefix: HashSet<u32> = prefix.iter().copied().collect();
    let candidates: Vec<u32> = (0..entries.len() as u32)
        .filter(|e| !in_prefix.contains(e) && entries[*e as usize].call_ns <= stuck_entry.return_ns)
        .collect();
    for &e in candidates.iter().take(EXPLAIN_CANDIDATES) {
        let entry = &entries[e as usize];
        let why = match entry.step.apply(state) {
            None => match entry.step {
                Step::Read(seen) => format!(
                    "reads {} but the register holds {}",
                    show_state(seen),
                    show_state(state)
                ),
                Step::Cas {
                    expect, swapped, ..
                } => format!(
                    "{} expecting {} but the register holds {}",
                    if swapped == Some(true) {
                        "swapped"
                    } else {
                        "did not swap"
                    },
                    show_state(expect),
                    show_state(state)
                ),
                Step::Write(_) => unreachable!("a write always applies"),
            },
            Some(_) => "could take effect here, but then no order of the rest works".to_string(),
        };
        let _ = writeln!(text, "  {}: {why}", describe(entry.id, &ops[entry.id.0]));
    }
    if candidates.len() > EXPLAIN_CANDIDATES {
        let _ = writeln!(text, "  ... {} more", candidates.len() - EXPLAIN_CANDIDATES);
    }

    Violation {
        key: key.to_string(),
        linearized: prefix.iter().map(|&e| entries[e as usize].id).collect(),
        stuck: stuck_entry.id,
        explanation: text,
    }
}

/// `#12 client 3 [1.200us..1.500us] put 7 -> ok`
fn describe<V: Debug>(id: OpId, op: &Operation<V>) -> String {
    let what = match &op.op {
        Op::Get => "get".to_string(),
        Op::Put { value } => format!("put {value:?}"),
        Op::Delete => "delete".to_string(),
        Op::Cas { expect, new } => format!("cas {expect:?} -> {new:?}"),
    };
    let (until, answer) = match &op.outcome {
        Outcome::Indeterminate => (
            "never".to_string(),
            format!("indeterminate (gave up at {})", show_ns(op.return_ns)),
        ),
        Outcome::Ok => (show_ns(op.return_ns), "ok".to_string()),
        Outcome::Read(value) => (show_ns(op.return_ns), format!("{value:?}")),
        Outcome::Cas(true) => (show_ns(op.return_ns), "swapped".to_string()),
        Outcome::Cas(false) => (show_ns(op.return_ns), "not swapped".to_string()),
    };
    format!(
        "#{} client {} [{}..{}] {what} -> {answer}",
        id.0,
        op.client,
        show_ns(op.call_ns),
        until
    )
}

fn show_ns(ns: u64) -> String {
    if ns == u64::MAX {
        "never".to_string()
    } else {
        format!("{}.{:03}us", ns / 1000, ns % 1000)
    }
}

// ---------------------------------------------------------------------------------------
// Recording.

/// Records a history from many threads: `begin` before sending a request, `end` with the
/// answer. Clones share one history and one time origin.
///
/// A mutex around a vector: this is test tooling, and the lock is held for a push.
pub struct Recorder<V> {
    origin: Instant,
    slots: Arc<Mutex<Vec<Slot<V>>>>,
}

struct Slot<V> {
    client: u64,
    key: String,
    op: Op<V>,
    call_ns: u64,
    /// `None` until `end`; an operation never ended is indeterminate.
    returned: Option<(u64, Outcome<V>)>,
}

impl<V> Clone for Recorder<V> {
    fn clone(&self) -> Self {
        Recorder {
            origin: self.origin,
            slots: Arc::clone(&self.slots),
        }
    }
}

impl<V: Clone> Default for Recorder<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Clone> Recorder<V> {
    pub fn new() -> Self {
        Self::with_origin(Instant::now())
    }

    /// Times are nanoseconds since `origin`, which must not be later than any `begin`.
    pub fn with_origin(origin: Instant) -> Self {
        Recorder {
            origin,
            slots: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn origin(&self) -> Instant {
        self.origin
    }

    /// Call just before sending the request.
    pub fn begin(&self, client: u64, key: impl Into<String>, op: Op<V>) -> OpId {
        let call_ns = self.now_ns();
        let mut slots = self.lock();
        slots.push(Slot {
            client,
            key: key.into(),
            op,
            call_ns,
            returned: None,
        });
        OpId(slots.len() - 1)
    }

    /// Call as soon as the answer arrives, or with `Outcome::Indeterminate` on a timeout.
    /// Panics if `id` was already ended or the outcome does not fit the operation.
    pub fn end(&self, id: OpId, outcome: Outcome<V>) {
        let return_ns = self.now_ns();
        let mut slots = self.lock();
        let slot = &mut slots[id.0];
        assert!(slot.returned.is_none(), "operation {} ended twice", id.0);
        let fits = matches!(
            (&slot.op, &outcome),
            (_, Outcome::Indeterminate)
                | (Op::Get, Outcome::Read(_))
                | (Op::Put { .. } | Op::Delete, Outcome::Ok)
                | (Op::Cas { .. }, Outcome::Cas(_))
        );
        assert!(
            fits,
            "operation {} ended with an outcome of another kind",
            id.0
        );
        slot.returned = Some((return_ns, outcome));
    }

    /// The history so far; operations not yet ended are indeterminate.
    pub fn history(&self) -> History<V> {
        let now_ns = self.now_ns();
        let slots = self.lock();
        let ops = slots
            .iter()
            .map(|slot| {
                let (return_ns, outcome) = slot
                    .returned
                    .clone()
                    .unwrap_or((now_ns.max(slot.call_ns), Outcome::Indeterminate));
                Operation {
                    client: slot.client,
                    key: slot.key.clone(),
                    op: slot.op.clone(),
                    call_ns: slot.call_ns,
                    return_ns,
                    outcome,
                }
            })
            .collect();
        History::from_ops(ops)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// A thread that panicked while holding the lock left the vector consistent (every
    /// critical section is one push or one assignment), so a poisoned lock is still used.
    fn lock(&self) -> MutexGuard<'_, Vec<Slot<V>>> {
        self.slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

// ---------------------------------------------------------------------------------------
// JSON lines.

/// A value that can be written to and read from a JSON-lines history.
pub trait HistoryValue: Sized {
    /// Must not be `null` (it stands for an absent key).
    fn to_json(&self) -> Json;
    fn from_json(json: &Json) -> Option<Self>;
}

impl HistoryValue for u64 {
    fn to_json(&self) -> Json {
        Json::from(*self)
    }
    fn from_json(json: &Json) -> Option<Self> {
        json.as_u64()
    }
}

impl HistoryValue for i64 {
    fn to_json(&self) -> Json {
        Json::from(*self)
    }
    fn from_json(json: &Json) -> Option<Self> {
        json.as_i64()
    }
}

impl HistoryValue for String {
    fn to_json(&self) -> Json {
        Json::from(self.as_str())
    }
    fn from_json(json: &Json) -> Option<Self> {
        json.as_str().map(str::to_string)
    }
}

/// Written as an array of byte values.
impl HistoryValue for Vec<u8> {
    fn to_json(&self) -> Json {
        Json::from(self.as_slice())
    }
    fn from_json(json: &Json) -> Option<Self> {
        json.as_array()?
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect()
    }
}

/// Written as an array of byte values.
impl HistoryValue for bytes::Bytes {
    fn to_json(&self) -> Json {
        Json::from(self.as_ref())
    }
    fn from_json(json: &Json) -> Option<Self> {
        Vec::<u8>::from_json(json).map(bytes::Bytes::from)
    }
}

/// Reading a JSON-lines history failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("reading the history: {0}")]
    Io(#[from] io::Error),
    #[error("history line {line}: {reason}")]
    Parse { line: usize, reason: String },
}

impl<V: HistoryValue> History<V> {
    /// One JSON object per line, in history order, e.g.
    /// `{"client":1,"key":"a","op":"cas","expect":3,"new":4,"call_ns":10,"return_ns":25,"outcome":"cas","swapped":true}`.
    /// `op` is `get`, `put` (with `value`), `delete` or `cas`; `outcome` is `ok`,
    /// `read` (with `read`, `null` for absent), `cas` (with `swapped`) or `indeterminate`.
    pub fn write_jsonl(&self, path: impl AsRef<Path>) -> io::Result<()> {
        let mut out = BufWriter::new(File::create(path)?);
        for op in &self.ops {
            serde_json::to_writer(&mut out, &op_to_json(op))?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()
    }

    /// Reads what [`History::write_jsonl`] wrote. Blank lines are skipped.
    pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Self, HistoryError> {
        let mut history = History::new();
        for (index, line) in BufReader::new(File::open(path)?).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let parse_error = |reason: String| HistoryError::Parse {
                line: index + 1,
                reason,
            };
            let json: Json = serde_json::from_str(&line).map_err(|e| parse_error(e.to_string()))?;
            let op = op_from_json(&json).map_err(parse_error)?;
            if !op.is_well_formed() {
                return Err(parse_error(
                    "outcome does not fit the operation, or return before call".to_string(),
                ));
            }
            history.push(op);
        }
        Ok(history)
    }
}

fn option_to_json<V: HistoryValue>(value: &Option<V>) -> Json {
    value.as_ref().map_or(Json::Null, V::to_json)
}

fn op_to_json<V: HistoryValue>(op: &Operation<V>) -> Json {
    let mut object = Map::new();
    object.insert("client".into(), json!(op.client));
    object.insert("key".into(), json!(op.key));
    match &op.op {
        Op::Get => {
            object.insert("op".into(), json!("get"));
        }
        Op::Put { value } => {
            object.insert("op".into(), json!("put"));
            object.insert("value".into(), value.to_json());
        }
        Op::Delete => {
            object.insert("op".into(), json!("delete"));
        }
        Op::Cas { expect, new } => {
            object.insert("op".into(), json!("cas"));
            object.insert("expect".into(), option_to_json(expect));
            object.insert("new".into(), new.to_json());
        }
    }
    object.insert("call_ns".into(), json!(op.call_ns));
    object.insert("return_ns".into(), json!(op.return_ns));
    match &op.outcome {
        Outcome::Ok => {
            object.insert("outcome".into(), json!("ok"));
        }
        Outcome::Read(value) => {
            object.insert("outcome".into(), json!("read"));
            object.insert("read".into(), option_to_json(value));
        }
        Outcome::Cas(swapped) => {
            object.insert("outcome".into(), json!("cas"));
            object.insert("swapped".into(), json!(swapped));
        }
        Outcome::Indeterminate => {
            object.insert("outcome".into(), json!("indeterminate"));
        }
    }
    Json::Object(object)
}

fn op_from_json<V: HistoryValue>(json: &Json) -> Result<Operation<V>, String> {
    let field = |name: &str| json.get(name).ok_or_else(|| format!("missing {name:?}"));
    let u64_field = |name: &str| {
        field(name)?
            .as_u64()
            .ok_or_else(|| format!("{name:?} is not a u64"))
    };
    let str_field = |name: &str| {
        field(name)?
            .as_str()
            .ok_or_else(|| format!("{name:?} is not a string"))
    };
    let value =
        |name: &str| V::from_json(field(name)?).ok_or_else(|| format!("{name:?} is not a value"));
    let optional = |name: &str| match field(name)? {
        Json::Null => Ok(None),
        other => V::from_json(other)
            .map(Some)
            .ok_or_else(|| format!("{name:?} is not a value or null")),
    };
    let op = match str_field("op")? {
        "get" => Op::Get,
        "put" => Op::Put {
            value: value("value")?,
        },
        "delete" => Op::Delete,
        "cas" => Op::Cas {
            expect: optional("expect")?,
            new: value("new")?,
        },
        other => return Err(format!("unknown op {other:?}")),
    };
    let outcome = match str_field("outcome")? {
        "ok" => Outcome::Ok,
        "read" => Outcome::Read(optional("read")?),
        "cas" => Outcome::Cas(
            field("swapped")?
                .as_bool()
                .ok_or("\"swapped\" is not a bool")?,
        ),
        "indeterminate" => Outcome::Indeterminate,
        other => return Err(format!("unknown outcome {other:?}")),
    };
    Ok(Operation {
        client: u64_field("client")?,
        key: str_field("key")?.to_string(),
        op,
        call_ns: u64_field("call_ns")?,
        return_ns: u64_field("return_ns")?,
        outcome,
    })
}
