//! The gossip driver over real UDP on loopback: several drivers in one process, each test
//! on its own glommio executor. They join and converge, detect a stopped member, see a
//! graceful leave as a leave, shrug off garbage datagrams (counting each by its reason),
//! and with encryption refuse a member with the wrong key while saying why.
//!
//! The timings use a fast profile (200 ms probes) so the file stays short; every wait is
//! bounded and fails with what it was waiting for. Times are printed, not asserted beyond
//! those bounds: timing goals belong to the simulator and benchmarks.

use cairn::gossip::{
    EventKind, GossipConfig, GossipEvent, GossipHandle, JoinError, Key, Keyring, NodeMeta, Profile,
    Role, StartError, Status,
};
use glommio::{LocalExecutorBuilder, Placement};
use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// Runs one test body on a fresh glommio executor thread.
fn run<F, Fut>(name: &str, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        // The minimum glommio accepts: several tests run at once under one
        // RLIMIT_MEMLOCK, and gossip datagrams are small.
        .io_memory(cairn::runtime::MIN_IO_MEMORY)
        .name(name)
        .spawn(body)
        .expect("starting an executor (RLIMIT_MEMLOCK too low?)")
        .join()
        .expect("the test body panicked");
}

/// Fast timings for loopback: probes every 200 ms answered within 100 ms, suspicion at
/// least 500 ms.
fn fast() -> Profile {
    Profile {
        probe_interval_ms: 200,
        probe_timeout_ms: 100,
        gossip_interval_ms: 50,
        suspicion_min_floor_ms: 500,
        sync_interval_ms: 2_000,
        ..Profile::local()
    }
}

fn meta(name: &str) -> NodeMeta {
    NodeMeta {
        name: name.to_string(),
        role: if name.ends_with('0') {
            Role::Server
        } else {
            Role::Client
        },
        datacenter: "dc1".to_string(),
        rpc_port: 8300,
        protocol_version: 1,
        tags: [("name-tag".to_string(), format!("tag-of-{name}"))].into(),
    }
}

fn start(name: &str, keyring: Option<Keyring>, join: &[SocketAddr]) -> GossipHandle {
    let mut cfg = GossipConfig::new("127.0.0.1:0".parse().unwrap(), fast(), meta(name));
    cfg.join = join.to_vec();
    cfg.keyring = keyring;
    cfg.leave_timeout = Duration::from_secs(2);
    GossipHandle::start(cfg).expect("starting a gossip driver")
}

/// `n` drivers: the first starts the pool, the others join it.
fn start_pool(n: usize, keyring: Option<&Keyring>) -> Vec<GossipHandle> {
    let first = start("node-0", keyring.cloned(), &[]);
    let seed = first.local_addr();
    let mut pool = vec![first];
    for i in 1..n {
        pool.push(start(&format!("node-{i}"), keyring.cloned(), &[seed]));
    }
    pool
}

fn status_of(h: &GossipHandle, addr: SocketAddr) -> Option<Status> {
    h.members()
        .into_iter()
        .find(|m| m.addr == addr)
        .map(|m| m.status)
}

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `limit`.
async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
}

/// Every driver sees every other alive, with its metadata.
fn converged(pool: &[GossipHandle]) -> bool {
    pool.iter().all(|h| {
        let members = h.members();
        members.len() == pool.len()
            && pool.iter().all(|other| {
                members.iter().any(|m| {
                    m.addr == other.local_addr()
                        && m.status == Status::Alive
                        && m.meta == other.members()[0].meta
                })
            })
    })
}

/// Like [`converged`], with `gone` still listed (as failed) by everyone.
fn converged_except(pool: &[GossipHandle], gone: SocketAddr) -> bool {
    pool.iter().all(|h| {
        let members = h.members();
        members.len() == pool.len() + 1
            && members.iter().all(|m| {
                if m.addr == gone {
                    m.status == Status::Dead
                } else {
                    m.status == Status::Alive && pool.iter().any(|o| o.local_addr() == m.addr)
                }
            })
    })
}

/// Waits until `pool[0]` has sent a few more datagrams.
async fn traffic_flows(pool: &[GossipHandle]) {
    let sent = pool[0].stats().datagrams_sent;
    wait_until(Duration::from_secs(5), "traffic flows", || {
        pool[0].stats().datagrams_sent > sent + 5
    })
    .await;
}

fn drain(rx: &mut broadcast::Receiver<GossipEvent>) -> Vec<GossipEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

#[test]
fn five_drivers_converge_share_a_metadata_update_and_mark_a_stopped_one_failed() {
    run("gossip-crash", || async {
        let mut pool = start_pool(5, None);
        let took = wait_until(Duration::from_secs(10), "5 drivers converge", || {
            converged(&pool)
        })
        .await;
        println!("5 drivers converged in {took:?}");
        // The local node lists itself first, with the metadata the others see.
        let me = &pool[2].members()[0];
        assert_eq!(me.addr, pool[2].local_addr());
        assert_eq!(me.name, "node-2");
        assert_eq!(me.meta.tags["name-tag"], "tag-of-node-2");

        // A metadata change reaches everyone, as an update event.
        let mut events = pool[1].subscribe();
        let mut changed = meta("node-0");
        changed.tags.insert("version".into(), "2".into());
        pool[0].update_meta(changed.clone()).await.unwrap();
        let node0 = pool[0].local_addr();
        wait_until(Duration::from_secs(5), "everyone sees the new tags", || {
            pool.iter().all(|h| {
                h.members()
                    .iter()
                    .any(|m| m.addr == node0 && m.meta == changed)
            })
        })
        .await;
        let updates: Vec<GossipEvent> = drain(&mut events)
            .into_iter()
            .filter(|e| e.kind == EventKind::Updated)
            .collect();
        assert_eq!(updates.len(), 1, "{updates:?}");
        assert_eq!(updates[0].member.addr, node0);
        assert_eq!(updates[0].member.meta.tags["version"], "2");

        let victim = pool.pop().unwrap();
        let victim_addr = victim.local_addr();
        drop(victim);
        let took = wait_until(
            Duration::from_secs(15),
            "every other driver marks the stopped one failed",
            || {
                pool.iter()
                    .all(|h| status_of(h, victim_addr) == Some(Status::Dead))
            },
        )
        .await;
        println!("a stopped driver was marked failed by all 4 others in {took:?}");
        let seen = drain(&mut events);
        let failed: Vec<&GossipEvent> = seen
            .iter()
            .filter(|e| e.member.addr == victim_addr && e.kind == EventKind::Failed)
            .collect();
        assert_eq!(failed.len(), 1, "one Failed event: {seen:?}");
        assert_eq!(failed[0].member.name, "node-4");
        assert_eq!(failed[0].member.status, Status::Dead);
        // The living stay alive in everyone's view (a probe delayed on a loaded machine
        // may make one a suspect for a moment; it refutes).
        wait_until(
            Duration::from_secs(5),
            "the 4 living see each other alive",
            || converged_except(&pool, victim_addr),
        )
        .await;
    });
}

#[test]
fn a_graceful_leave_shows_as_left_not_failed() {
    run("gossip-leave", || async {
        let pool = start_pool(4, None);
        wait_until(Duration::from_secs(10), "4 drivers converge", || {
            converged(&pool)
        })
        .await;
        let mut events = pool[0].subscribe();
        let leaver = &pool[3];
        let addr = leaver.local_addr();
        leaver.leave().await.unwrap();
        assert_eq!(leaver.members()[0].status, Status::Left);
        let took = wait_until(Duration::from_secs(5), "the others see it left", || {
            pool[..3]
                .iter()
                .all(|h| status_of(h, addr) == Some(Status::Left))
        })
        .await;
        println!("a leave reached every member in {took:?}");
        let mut pool = pool;
        drop(pool.pop());
        // Longer than a suspicion takes here (probe 200 ms, suspicion 0.5-3 s): a left
        // member is not probed, so it never turns failed.
        glommio::timer::sleep(Duration::from_secs(3)).await;
        for h in &pool {
            assert_eq!(status_of(h, addr), Some(Status::Left));
        }
        let seen = drain(&mut events);
        let left: Vec<&GossipEvent> = seen
            .iter()
            .filter(|e| e.member.addr == addr && e.kind == EventKind::Left)
            .collect();
        assert_eq!(left.len(), 1, "{seen:?}");
        assert_eq!(left[0].member.name, "node-3");
        assert_eq!(left[0].member.status, Status::Left);
        assert!(
            !seen.iter().any(|e| e.kind == EventKind::Failed),
            "nobody failed: {seen:?}"
        );
    });
}

#[test]
fn garbage_datagrams_are_dropped_counted_by_reason_and_do_not_disturb_membership() {
    run("gossip-garbage", || async {
        let pool = start_pool(3, None);
        wait_until(Duration::from_secs(10), "3 drivers converge", || {
            converged(&pool)
        })
        .await;
        let mut events = pool[0].subscribe();
        let target = pool[0].local_addr();
        let before = pool[0].stats();
        let addrs: Vec<SocketAddr> = pool[0].members().iter().map(|m| m.addr).collect();

        let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
        let send = |b: &[u8]| {
            attacker.send_to(b, target).unwrap();
        };
        // foreign: not our magic
        send(b"GET / HTTP/1.1\r\n\r\n");
        send(&[0xff; 64]);
        // unknown gossip version
        send(b"CG\x63\x01\x04\x00\x01\x00\x00\x00");
        // truncated: a ping whose body is cut, and an empty datagram
        send(b"CG\x01\x01\x04\x00\x01\x00");
        send(b"");
        // malformed: an unknown message kind
        send(b"CG\x01\xee\x00\x00");
        // oversize: far beyond the 1,400-byte limit
        let mut big = b"CG\x01".to_vec();
        big.resize(4_000, 0);
        send(&big);
        // encrypted while encryption is off here
        let sealed = Keyring::new(Key::from_bytes([7; 32])).encrypt_with_nonce([1; 12], b"CG\x01");
        send(&sealed);

        wait_until(Duration::from_secs(5), "8 datagrams are counted", || {
            pool[0].stats().dropped() - before.dropped() == 8
        })
        .await;
        let s = pool[0].stats();
        assert_eq!(s.dropped_foreign - before.dropped_foreign, 2);
        assert_eq!(
            s.dropped_unknown_version - before.dropped_unknown_version,
            1
        );
        assert_eq!(s.dropped_malformed - before.dropped_malformed, 3);
        assert_eq!(s.dropped_oversize - before.dropped_oversize, 1);
        assert_eq!(s.dropped_encrypted - before.dropped_encrypted, 1);
        let last = s.last_drop.expect("a drop was recorded");
        assert_eq!(last.from, attacker.local_addr().unwrap());
        assert!(last.reason.contains("encrypt"), "{}", last.reason);
        // The driver refuses the oversize and the sealed one itself; the core the other six.
        assert_eq!(s.core.packets_refused - before.core.packets_refused, 6);

        // A second of normal gossip later, nobody joined, failed, left or changed: the
        // same three members, all alive. (A probe delayed on a loaded machine may raise
        // a suspicion that is refuted; that is scheduling, not the garbage.)
        glommio::timer::sleep(Duration::from_secs(1)).await;
        wait_until(
            Duration::from_secs(5),
            "the 3 drivers are all alive",
            || converged(&pool),
        )
        .await;
        let members: Vec<SocketAddr> = pool[0].members().iter().map(|m| m.addr).collect();
        assert_eq!(members, addrs, "the attacker is no member");
        let changes: Vec<GossipEvent> = drain(&mut events)
            .into_iter()
            .filter(|e| !matches!(e.kind, EventKind::Suspect | EventKind::Alive))
            .collect();
        assert_eq!(changes, vec![]);
    });
}

#[test]
fn with_encryption_a_wrong_key_cannot_join_and_both_sides_say_why() {
    run("gossip-keys", || async {
        let right = Keyring::new(Key::from_bytes([1; 32]));
        let pool = start_pool(3, Some(&right));
        wait_until(
            Duration::from_secs(10),
            "3 encrypted drivers converge",
            || converged(&pool),
        )
        .await;

        // A driver with another key asks the pool to let it in while the pool, which
        // knows its address, contacts it.
        let wrong = start(
            "intruder",
            Some(Keyring::new(Key::from_bytes([2; 32]))),
            &[],
        );
        let wrong_addr = wrong.local_addr();
        let seed = pool[0].local_addr();
        let (joined, _) = futures_lite::future::zip(
            wrong.join_and_wait(&[seed], Duration::from_millis(1_500)),
            async {
                glommio::timer::sleep(Duration::from_millis(300)).await;
                pool[1].join(&[wrong_addr]).await.unwrap();
            },
        )
        .await;
        let err = joined.expect_err("a wrong key must not join");
        let JoinError::NoAnswer(why) = &err else {
            panic!("unexpected error {err}");
        };
        assert!(why.auth_failures >= 1, "{why:?}");
        let text = err.to_string();
        assert!(
            text.contains("failed authentication") && text.contains("different encryption key"),
            "{text}"
        );
        println!("the wrong-key driver says: {text}");
        assert_eq!(wrong.num_live(), 1);
        assert_eq!(wrong.members().len(), 1);

        // The seed counted its datagrams as failing authentication, naming the sender.
        let s = pool[0].stats();
        assert!(s.dropped_auth >= 1, "{s:?}");
        let last = s.last_drop.expect("a drop was recorded");
        assert_eq!(last.from, wrong_addr);
        assert!(last.reason.contains("no installed key"), "{}", last.reason);

        // A driver without encryption cannot join either, and is counted as such.
        let plain = start("plain", None, &[]);
        let err = plain
            .join_and_wait(&[seed], Duration::from_millis(600))
            .await
            .expect_err("an unencrypted driver must not join");
        assert!(err.to_string().contains("--encrypt"), "{err}");
        wait_until(
            Duration::from_secs(2),
            "the seed counts plain datagrams",
            || pool[0].stats().dropped_unencrypted >= 1,
        )
        .await;

        // Nobody in the pool ever saw either of them; a right-key driver joins fine.
        for h in &pool {
            assert_eq!(h.members().len(), 3);
            assert_eq!(status_of(h, wrong_addr), None);
            assert_eq!(status_of(h, plain.local_addr()), None);
        }
        let good = start("late", Some(right.clone()), &[]);
        let live = good
            .join_and_wait(&[seed], Duration::from_secs(5))
            .await
            .expect("the right key joins");
        assert!(live >= 2);
    });
}

#[test]
fn keys_rotate_across_a_running_pool_without_splitting_it() {
    run("gossip-rotate", || async {
        let (old, new) = (Key::from_bytes([3; 32]), Key::from_bytes([4; 32]));
        let pool = start_pool(3, Some(&Keyring::new(old.clone())));
        wait_until(Duration::from_secs(10), "3 drivers converge", || {
            converged(&pool)
        })
        .await;
        // Consul's procedure: install the new key everywhere, use it everywhere, remove
        // the old one everywhere, letting traffic flow between steps (datagrams sealed
        // with the old key may still be queued when a node switches).
        for h in &pool {
            assert_eq!(h.with_keyring(|k| k.install(new.clone())), Some(true));
        }
        traffic_flows(&pool).await;
        for h in &pool {
            h.with_keyring(|k| k.use_key(&new)).unwrap().unwrap();
        }
        traffic_flows(&pool).await;
        glommio::timer::sleep(Duration::from_millis(300)).await;
        for h in &pool {
            h.with_keyring(|k| k.remove(&old)).unwrap().unwrap();
            assert_eq!(h.with_keyring(|k| k.keys()), Some(vec![new.clone()]));
        }
        traffic_flows(&pool).await;
        traffic_flows(&pool).await;
        wait_until(Duration::from_secs(5), "the pool is whole", || {
            converged(&pool)
        })
        .await;
        let auth: u64 = pool.iter().map(|h| h.stats().dropped_auth).sum();
        assert_eq!(auth, 0, "nothing failed authentication during the rotation");

        // Only the new key gets in now.
        let seed = pool[0].local_addr();
        let stale = start("stale", Some(Keyring::new(old)), &[]);
        assert!(stale
            .join_and_wait(&[seed], Duration::from_millis(800))
            .await
            .is_err());
        let fresh = start("fresh", Some(Keyring::new(new)), &[]);
        fresh
            .join_and_wait(&[seed], Duration::from_secs(5))
            .await
            .expect("the new key joins");
    });
}

#[test]
fn a_second_driver_on_the_same_port_is_a_clear_error() {
    run("gossip-clash", || async {
        let first = start("first", None, &[]);
        let mut cfg = GossipConfig::new(first.local_addr(), fast(), meta("second"));
        cfg.leave_timeout = Duration::from_secs(1);
        let err = GossipHandle::start(cfg).err().expect("the port is taken");
        assert!(matches!(err, StartError::PortInUse { .. }), "{err:?}");
        assert!(err.to_string().contains("already in use"), "{err}");
    });
}
