//! Gossip parameters and the `lan`, `wan` and `local` profiles.
//!
//! Every field is public so a driver can override any of them from flags; the profiles
//! are starting points whose reasons are given field by field on [`Config::lan`]. Times
//! are milliseconds. Where a default is "from memberlist" it is the value Consul has run
//! with for years; where Cairn departs from it the reason is given.
//!
//! The logarithms of the formulas below come from the `libm` crate (musl's, in Rust)
//! or are computed on integers, not from `f64::ln`/`log10`, which call the C library's
//! libm: with no libm function left, the `cairn` binary does not load libm.so, whose
//! pages were 0.6 MiB of every agent's RSS (ARCHITECTURE.md, "Client agents").

/// Tunables of one gossip pool. See [`Config::lan`] for each default and its reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Time between two probes started by this node (SWIM's protocol period T').
    pub probe_interval_ms: u64,
    /// How long the direct ping may go unanswered before ping-reqs are sent.
    pub probe_timeout_ms: u64,
    /// k: members asked to ping a silent target on our behalf (SWIM §3.1).
    pub indirect_checks: usize,
    /// Resend the direct ping when it times out, alongside the ping-reqs, and have each
    /// ping-req helper resend its ping halfway through its wait. Stands in for
    /// memberlist's TCP fallback ping: a second try on an independent packet squares a
    /// path's loss rate at the cost of one packet per failed ping. For helpers it is
    /// what makes a nack strong evidence: at 5% loss one ping round trip fails 9.75% of
    /// the time, two 0.95%, so three nacks about a live member become 1,000 times rarer.
    pub probe_retry: bool,
    /// Every `ring_probe_every`-th probe goes to this node's successor on a ring of
    /// members ordered by a hash of their address, instead of the next member of the
    /// shuffled round-robin list; 0 never.
    pub ring_probe_every: u32,
    /// Upper bound of Lifeguard's local health multiplier: a node that misses acks and
    /// nacks stretches its probe interval and timeouts by up to this factor.
    pub awareness_max_multiplier: u32,
    /// Time between two rounds of pushing queued broadcasts to random members. Rounds
    /// with nothing to say send nothing.
    pub gossip_interval_ms: u64,
    /// Members each gossip round sends to.
    pub gossip_fanout: usize,
    /// A broadcast is sent `retransmit_mult * ceil(log10(N + 1))` times by each node
    /// that queues it (memberlist's formula).
    pub retransmit_mult: u32,
    /// The suspicion timeout's minimum is `suspicion_mult * log10(N + 1) *
    /// gossip_interval_ms`, floored at `suspicion_min_floor_ms`.
    pub suspicion_mult: u32,
    /// Floor of the suspicion timeout's minimum, whatever the cluster size.
    pub suspicion_min_floor_ms: u64,
    /// The suspicion timeout starts at `suspicion_max_timeout_mult` times its minimum.
    pub suspicion_max_timeout_mult: u32,
    /// K: independent confirmations after which the suspicion timeout reaches its
    /// minimum (Lifeguard §4.2).
    pub suspicion_confirmations: usize,
    /// Largest datagram built or accepted, headers included.
    pub max_packet_bytes: usize,
    /// Most broadcasts waiting to be piggybacked; beyond it the most-sent are dropped.
    pub broadcast_queue_max: usize,
    /// Largest encoded per-node metadata.
    pub max_meta_bytes: usize,
    /// Most members (live and tombstones) kept; news of more is ignored and counted.
    pub max_members: usize,
    /// Most ping-reqs served at once as a helper; more are ignored (the requester
    /// counts them as missing nacks, which is what an overloaded helper should cause).
    pub max_indirect_pending: usize,
    /// Most seeds contacted by one `join`.
    pub max_join_seeds: usize,
    /// Time between two digest exchanges with a random member (anti-entropy).
    pub sync_interval_ms: u64,
    /// Buckets in an anti-entropy digest (each an 8-byte hash of its members).
    pub sync_digest_buckets: usize,
    /// Most mismatched buckets repaired per digest exchange.
    pub sync_max_buckets: usize,
    /// Every `sync_reconnect_every`-th digest goes to a dead member instead of a live
    /// one, so that both sides of a healed partition find each other again.
    pub sync_reconnect_every: u32,
    /// Each dead member is sent a reconnect ping by some member about once per this
    /// interval, cluster-wide: every probe period a node sends one with probability
    /// `probe_interval * dead / (reconnect_interval * live)`. The ping carries the
    /// sender's view that the target is dead, so a target that is in fact running (a
    /// healed partition, a node that woke from a stall) refutes at once and its ack
    /// carries the refutation back. 0 turns it off.
    pub reconnect_interval_ms: u64,
    /// A node that refutes a suspicion or death of itself asks one random member for its
    /// full state this long afterwards, at most once per `sync_interval_ms`: whoever
    /// suspected it could not reach it, so news spread while others held it suspect or
    /// dead may never have reached it. 0 turns it off.
    pub resync_delay_ms: u64,
    /// How long after a `join` the joiner starts its catch-up digest exchanges (see
    /// `Gossip::join`), and the time between two of them. A delay of 0 turns them off.
    pub join_catch_up_delay_ms: u64,
    pub join_catch_up_interval_ms: u64,
    /// How long dead and left members are remembered (so old news about them is
    /// recognised as old) before they are dropped.
    pub tombstone_timeout_ms: u64,
    /// Time between two sweeps for expired tombstones.
    pub reclaim_interval_ms: u64,
}

impl Config {
    /// A datacenter LAN: sub-millisecond round trips, thousands of members.
    pub fn lan() -> Config {
        Config {
            // Half memberlist's 1 s. The time until someone first probes a crashed node is
            // exponential with this mean whatever N is (N members each probe 1 of N-1 per
            // interval), and it is the one part of detection no tuning of suspicion can
            // shorten: at 1 s a crash was first probed up to 2-3 s late in the simulator.
            // Two probes per second cost 4 datagrams/s per node in steady state (a ping and
            // the ack for someone else's, twice), under the 5/s budget: 4.10 packets/s and
            // 58 B/s at 10,000 nodes and 1% loss, 4.58 and 63 B/s at 5% loss (`loadgen
            // gossip-sim --scenario steady`; retries as under `probe_retry`).
            probe_interval_ms: 500,
            // A LAN round trip is under 1 ms: 200 ms only expires on loss or a stalled
            // peer, and leaves 300 ms of the period for the retry and the helpers. A GC
            // pause that misses it costs a suspicion, which the node refutes on waking.
            probe_timeout_ms: 200,
            // SWIM's and memberlist's k = 3: with 5% loss a helper path (4 datagrams)
            // fails 18.5% of the time, three of them 0.6%.
            indirect_checks: 3,
            // The retries now come in two steps: a second ping halfway to the timeout
            // (at 5% loss it alone saves 90% of the first pings that fail), then at the
            // timeout a third ping with the ping-reqs. Sending the ping-reqs with the
            // first retry, as before, cost 13 datagrams for each of the 9.75% of probes
            // whose first round trip failed: 2.5 of the 10.1 datagrams/s per node in
            // steady state at 5% loss. The third direct ping is one datagram for 1% of
            // probes and makes a probe of a live member ten times less likely to fail.
            probe_retry: true,
            // SWIM's shuffled round-robin gives every member about one probe per probe
            // period from somewhere, but as a Poisson count: a crashed member waits an
            // exponential time (mean a quarter period here) for its first probe, and in a
            // wave of 100 crashes the unluckiest waits 2.3 s. Half the probes go instead to
            // the ring successor (each member is then probed by its predecessor every
            // second period, plus the random half), which bounds that wait by one
            // second whatever N. The successor is cached and recomputed (one pass over
            // the table) only when it stops being live, so it costs nothing per probe.
            // Same packet count: it only changes whom the probes go to.
            ring_probe_every: 2,
            // memberlist's: up to 8x slower probing when this node is the sick one.
            awareness_max_multiplier: 8,
            // Half memberlist's 200 ms, with its 3 members per round: news reaches 10,000
            // members in about 7 rounds. At 200 ms an update reached 99.9% of 10,000 in
            // 1.01 s (the goal is 1 s) and the last member in 1.17 s; at 100 ms in 0.50 s
            // and 0.65 s. Rounds with nothing to say send nothing, so steady state does
            // not pay for it; churn does (up to 30 datagrams/s per node while news
            // flows, against 15 at 200 ms).
            gossip_interval_ms: 100,
            gossip_fanout: 3,
            // memberlist's 4: about 20 sends per node per broadcast at 10,000 members.
            retransmit_mult: 4,
            // Cairn departs from memberlist here. memberlist scales the suspicion
            // timeout with the probe interval (4 * log10(N) * 1 s = 16 s at 10,000). What
            // the timeout must cover is the time a refutation needs to reach everyone,
            // which is log(N) gossip rounds: 3 * log10(N+1) * 100 ms = 1.2 s at 10,000.
            // A live suspect hears of its suspicion within a round trip (the suspecter
            // tells it directly) and its refutation spreads as fast as the suspicion did.
            // The minimum is only reached with 3 confirmations, i.e. when three helpers
            // each failed two pings (`probe_retry`): for a live member at 5% loss that
            // is about 6e-9 per probe, a few times an hour at 10,000 nodes, and even
            // then the refutation usually wins. Measured at 10,000 nodes, 5% loss: mult
            // 4 gave detection p99.9 4.05 s (1% loss), 3 gave 2.6 s; no false death
            // with either.
            suspicion_mult: 3,
            // A floor for small clusters, where log10(N) rounds are very few. Cairn
            // gives up memberlist's tolerance of long pauses here: a member stalled for
            // 1-2 s may be declared dead before it wakes (it refutes and is back within
            // a second of waking). Detection within 4 s cannot tell a 2 s stall from a
            // crash; what must hold, and does, is that no *other* member is declared
            // dead because one is stalled (`loadgen gossip-sim --scenario slow`).
            suspicion_min_floor_ms: 1_000,
            // memberlist's: a lone suspicion waits 6x the minimum; independent
            // confirmations bring it down to the minimum.
            suspicion_max_timeout_mult: 6,
            // The helpers that nacked a failed probe (3 of them) count as confirmations,
            // so a crash seen from four vantage points goes straight to the minimum.
            suspicion_confirmations: 3,
            // Under a 1,500-byte Ethernet MTU with room for IP/UDP and encryption
            // headers: a datagram is never fragmented.
            max_packet_bytes: 1_400,
            // Enough for a 1% crash wave at 10,000 members (100 deaths plus their
            // suspicions and refutations); older, most-sent news goes first when full.
            broadcast_queue_max: 4_096,
            // memberlist's MetaMaxSize: a member's entry with meta still fits a datagram.
            max_meta_bytes: 512,
            // Room for the 10,000-node target with churn and tombstones, bounded so a
            // flood of forged joins cannot grow memory without end.
            max_members: 65_536,
            max_indirect_pending: 256,
            max_join_seeds: 16,
            // A digest is one ~530-byte datagram each way, so every 30 s costs ~35 B/s
            // per node whatever N is; lost broadcasts are rare, so repairs can be slow.
            sync_interval_ms: 30_000,
            // 64 buckets x 8 bytes fit one datagram; at 10,000 members a bucket holds
            // ~156 members, about 4 datagrams to repair.
            sync_digest_buckets: 64,
            sync_max_buckets: 4,
            sync_reconnect_every: 4,
            // A healed partition must reconverge without waiting for anti-entropy: each
            // side holds the other dead, and nobody probes dead members. A reconnect ping
            // to a member held dead makes a running one refute, and every member revived
            // this way becomes a bridge that revives the rest by probing (see `core`).
            // The rate is per dead member, not per node (Serf's reconnect scales the same
            // way): each dead member costs the whole cluster one datagram per 10 s
            // whatever N is, e.g. 10 datagrams/s over 10,000 nodes for 100 crashed
            // members kept as tombstones for an hour; a 20% partition of 300 nodes gets
            // about 30 reconnect attempts per second across the cut.
            reconnect_interval_ms: 10_000,
            // After a healed partition every member refutes its death within seconds, and
            // those refutations spread while many members still hold many others dead,
            // i.e. do not gossip to them: a scattered few views stay stale (dead at an
            // old incarnation) and nothing repairs them but a rare digest. A full state
            // from one member, once the refutations have spread (a few seconds), repairs
            // them. At 10,000 members it is ~215 datagrams, paid only by a node that was
            // declared dead, at most once per sync interval.
            resync_delay_ms: 3_000,
            // The members already in the pool are news to nobody, so a joiner learns them
            // only from its seeds' answers (~N/55 datagrams each, none resent): a datagram
            // lost from every answer, or a seed that never got the join, left ~55 members
            // unknown to it until anti-entropy (4 buckets per 30 s) found them, and a
            // mass join of 1,000 into 9,000 at 1% loss had not converged after 60 s.
            // After a join the joiner exchanges digests with a random member every
            // 200 ms for as long as the rounds teach it members it did not know. 1 s
            // leaves the answers time to arrive (milliseconds on a LAN) and the first
            // rounds of joiners' news to spread; 200 ms is a few round trips, so the
            // repair of one round is in before the next compares. Measured (`loadgen
            // gossip-sim --scenario mass-join`, 1,000 nodes, 5% loss, seeds 1, 2, 4, 5,
            // 6, 8): converged in 1.9-3.9 s; starting at 3 s, 3.5-5.3 s; every 500 ms
            // from 3 s, 4.1-10.7 s. About 3 rounds per joiner (a digest each way) and a
            // few repair datagrams, against the ~3 x N/55 of the join itself.
            join_catch_up_delay_ms: 1_000,
            join_catch_up_interval_ms: 200,
            // An hour: long enough for a partition to heal and for slow news of a dead
            // member to be recognised as old; tombstones cost ~100 bytes each.
            tombstone_timeout_ms: 3_600_000,
            reclaim_interval_ms: 60_000,
        }
    }

    /// Between datacenters: round trips of tens to hundreds of milliseconds, a few
    /// servers per datacenter (memberlist's WAN timings).
    pub fn wan() -> Config {
        Config {
            probe_interval_ms: 5_000,
            probe_timeout_ms: 3_000,
            gossip_interval_ms: 500,
            gossip_fanout: 4,
            suspicion_mult: 6,
            suspicion_min_floor_ms: 6_000,
            sync_interval_ms: 60_000,
            ..Config::lan()
        }
    }

    /// One machine (tests, `--dev`): loopback never drops, so detect fast.
    pub fn local() -> Config {
        Config {
            probe_interval_ms: 1_000,
            probe_timeout_ms: 200,
            gossip_interval_ms: 100,
            suspicion_mult: 4,
            suspicion_min_floor_ms: 1_000,
            sync_interval_ms: 15_000,
            tombstone_timeout_ms: 60_000,
            reclaim_interval_ms: 10_000,
            ..Config::lan()
        }
    }

    /// The profile named `lan`, `wan` or `local`.
    pub fn profile(name: &str) -> Option<Config> {
        match name {
            "lan" => Some(Config::lan()),
            "wan" => Some(Config::wan()),
            "local" => Some(Config::local()),
            _ => None,
        }
    }

    /// Times each node resends a broadcast in a cluster of `n` members:
    /// `retransmit_mult * ceil(log10(n + 1))`, at least `retransmit_mult`.
    pub fn retransmit_limit(&self, n: usize) -> u32 {
        let scale = ceil_log10(n as u64 + 1).max(1);
        self.retransmit_mult * scale
    }

    /// (minimum, maximum) suspicion timeout in a cluster of `n` members.
    pub fn suspicion_timeouts_ms(&self, n: usize) -> (u64, u64) {
        let scale = libm::log10(n as f64 + 1.0).max(1.0);
        let min = (self.suspicion_mult as f64 * scale * self.gossip_interval_ms as f64) as u64;
        let min = min.max(self.suspicion_min_floor_ms);
        (min, min * self.suspicion_max_timeout_mult.max(1) as u64)
    }

    /// Lifeguard's suspicion timeout after `confirmations` independent confirmations out
    /// of `expected`: `max - (max - min) * log(c + 1) / log(K + 1)`, never below `min`.
    pub fn suspicion_timeout_ms(&self, n: usize, confirmations: usize, expected: usize) -> u64 {
        let (min, max) = self.suspicion_timeouts_ms(n);
        if expected == 0 {
            return min;
        }
        let frac = libm::log((confirmations as f64) + 1.0) / libm::log((expected as f64) + 1.0);
        let t = max as f64 - (max - min) as f64 * frac;
        (t.floor() as u64).max(min)
    }

    /// Sets the field named `name` (as in the struct, e.g. `probe_interval_ms`) from
    /// text: how tools and flags override any parameter of a profile. Says which name or
    /// value it refused; nothing changes then. Call [`Config::validate`] afterwards.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        fn p<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String>
        where
            T::Err: std::fmt::Display,
        {
            v.parse()
                .map_err(|e| format!("bad value {v:?} for {name}: {e}"))
        }
        match name {
            "probe_interval_ms" => self.probe_interval_ms = p(name, value)?,
            "probe_timeout_ms" => self.probe_timeout_ms = p(name, value)?,
            "indirect_checks" => self.indirect_checks = p(name, value)?,
            "probe_retry" => self.probe_retry = p(name, value)?,
            "ring_probe_every" => self.ring_probe_every = p(name, value)?,
            "awareness_max_multiplier" => self.awareness_max_multiplier = p(name, value)?,
            "gossip_interval_ms" => self.gossip_interval_ms = p(name, value)?,
            "gossip_fanout" => self.gossip_fanout = p(name, value)?,
            "retransmit_mult" => self.retransmit_mult = p(name, value)?,
            "suspicion_mult" => self.suspicion_mult = p(name, value)?,
            "suspicion_min_floor_ms" => self.suspicion_min_floor_ms = p(name, value)?,
            "suspicion_max_timeout_mult" => self.suspicion_max_timeout_mult = p(name, value)?,
            "suspicion_confirmations" => self.suspicion_confirmations = p(name, value)?,
            "max_packet_bytes" => self.max_packet_bytes = p(name, value)?,
            "broadcast_queue_max" => self.broadcast_queue_max = p(name, value)?,
            "max_meta_bytes" => self.max_meta_bytes = p(name, value)?,
            "max_members" => self.max_members = p(name, value)?,
            "max_indirect_pending" => self.max_indirect_pending = p(name, value)?,
            "max_join_seeds" => self.max_join_seeds = p(name, value)?,
            "sync_interval_ms" => self.sync_interval_ms = p(name, value)?,
            "sync_digest_buckets" => self.sync_digest_buckets = p(name, value)?,
            "sync_max_buckets" => self.sync_max_buckets = p(name, value)?,
            "sync_reconnect_every" => self.sync_reconnect_every = p(name, value)?,
            "reconnect_interval_ms" => self.reconnect_interval_ms = p(name, value)?,
            "resync_delay_ms" => self.resync_delay_ms = p(name, value)?,
            "join_catch_up_delay_ms" => self.join_catch_up_delay_ms = p(name, value)?,
            "join_catch_up_interval_ms" => self.join_catch_up_interval_ms = p(name, value)?,
            "tombstone_timeout_ms" => self.tombstone_timeout_ms = p(name, value)?,
            "reclaim_interval_ms" => self.reclaim_interval_ms = p(name, value)?,
            _ => return Err(format!("no gossip parameter named {name:?}")),
        }
        Ok(())
    }

    /// Checks that the parameters can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_packet_bytes < 512 || self.max_packet_bytes > 65_507 {
            return Err(ConfigError::PacketSize(self.max_packet_bytes));
        }
        if self.probe_timeout_ms == 0 || self.probe_timeout_ms >= self.probe_interval_ms {
            return Err(ConfigError::ProbeTimeout {
                timeout_ms: self.probe_timeout_ms,
                interval_ms: self.probe_interval_ms,
            });
        }
        if self.gossip_interval_ms == 0
            || self.sync_interval_ms == 0
            || (self.join_catch_up_delay_ms > 0 && self.join_catch_up_interval_ms == 0)
        {
            return Err(ConfigError::ZeroInterval);
        }
        // A digest must fit a datagram: 8 bytes per bucket plus headers.
        if self.sync_digest_buckets == 0
            || self.sync_digest_buckets * 8 + 16 > self.max_packet_bytes
        {
            return Err(ConfigError::DigestBuckets(self.sync_digest_buckets));
        }
        // A member entry with full metadata must fit a datagram.
        if self.max_meta_bytes + 64 > self.max_packet_bytes {
            return Err(ConfigError::MetaSize(self.max_meta_bytes));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Config {
        Config::lan()
    }
}

/// `ceil(log10(m))` for `m >= 1`, exactly: the least `k` with `10^k >= m`.
fn ceil_log10(m: u64) -> u32 {
    let mut k = 0;
    let mut power: u64 = 1;
    while power < m {
        power = power.saturating_mul(10);
        k += 1;
    }
    k
}

/// Why a [`Config`] was refused. Nothing was built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("max_packet_bytes {0} is outside 512..=65507")]
    PacketSize(usize),
    #[error(
        "probe_timeout_ms {timeout_ms} must be above 0 and below probe_interval_ms {interval_ms}"
    )]
    ProbeTimeout { timeout_ms: u64, interval_ms: u64 },
    #[error("gossip, sync and join catch-up intervals must be above 0")]
    ZeroInterval,
    #[error("a digest of {0} buckets does not fit a datagram")]
    DigestBuckets(usize),
    #[error("max_meta_bytes {0} leaves no room in a datagram for the member entry")]
    MetaSize(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The formulas give what they gave with the C library's `log10`/`log` (std's
    /// `f64` methods, linked in tests), for every profile and pool size up to 200,000
    /// and every confirmation count up to 12 of up to 12 expected.
    #[test]
    fn formulas_match_the_c_librarys_logarithms() {
        for cfg in [Config::lan(), Config::wan(), Config::local()] {
            for n in 0..200_000usize {
                let x = n as f64 + 1.0;
                let scale = x.log10().ceil().max(1.0) as u32;
                assert_eq!(
                    cfg.retransmit_limit(n),
                    cfg.retransmit_mult * scale,
                    "n={n}"
                );
                let scale = x.log10().max(1.0);
                let min =
                    (cfg.suspicion_mult as f64 * scale * cfg.gossip_interval_ms as f64) as u64;
                let min = min.max(cfg.suspicion_min_floor_ms);
                let max = min * cfg.suspicion_max_timeout_mult.max(1) as u64;
                assert_eq!(cfg.suspicion_timeouts_ms(n), (min, max), "n={n}");
                if n % 997 != 0 {
                    continue;
                }
                for expected in 1..=12usize {
                    for c in 0..=12usize {
                        let frac = ((c as f64) + 1.0).ln() / ((expected as f64) + 1.0).ln();
                        let t = ((max as f64 - (max - min) as f64 * frac).floor() as u64).max(min);
                        assert_eq!(
                            cfg.suspicion_timeout_ms(n, c, expected),
                            t,
                            "{n} {c} {expected}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn ceil_log10_is_exact_at_and_around_powers_of_ten() {
        assert_eq!(ceil_log10(1), 0);
        let mut power: u64 = 1;
        for k in 0..=19u32 {
            assert_eq!(ceil_log10(power), k, "10^{k}");
            if power > 1 {
                assert_eq!(ceil_log10(power - 1), k, "10^{k} - 1");
            }
            assert_eq!(ceil_log10(power + 1), k + 1, "10^{k} + 1");
            power = power.saturating_mul(10);
        }
        assert_eq!(ceil_log10(u64::MAX), 20);
    }
}
