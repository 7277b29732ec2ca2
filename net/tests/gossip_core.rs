//! The gossip core's exact outputs for given inputs (SWIM and Lifeguard by section).

use bytes::Bytes;
use cairn_net::gossip::wire::{decode_packet, Message, PacketBuilder};
use cairn_net::gossip::{
    Config, Gossip, GossipError, MemberEvent, NodeMeta, Output, Status, Timer,
};
use std::net::SocketAddr;

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i], 8301))
}

fn meta(i: u8) -> NodeMeta {
    NodeMeta {
        name: format!("n{i}"),
        ..NodeMeta::default()
    }
}

fn packet(msgs: &[Message]) -> Bytes {
    let mut p = PacketBuilder::new(1400);
    for m in msgs {
        assert!(p.push(m));
    }
    p.finish()
}

fn send(to: SocketAddr, msgs: &[Message]) -> Output {
    Output::Send {
        to,
        bytes: packet(msgs),
    }
}

/// Node 1 knowing nodes 2..=n, without timers running.
fn node_with_members(n: u8) -> Gossip {
    let mut g = Gossip::new(Config::lan(), addr(1), &meta(1), 0, 42).unwrap();
    g.restore(0, (2..=n).map(|i| (addr(i), 0, meta(i))))
        .unwrap();
    g
}

fn outputs(g: &mut Gossip) -> Vec<Output> {
    g.drain_outputs().collect()
}

fn decode(o: &Output) -> (SocketAddr, Vec<Message>) {
    match o {
        Output::Send { to, bytes } => (*to, decode_packet(bytes, 1400, 512).unwrap()),
        other => panic!("not a send: {other:?}"),
    }
}

#[test]
fn swim_3_1_a_ping_is_answered_by_an_ack_with_its_seq() {
    let mut g = node_with_members(3);
    g.handle_packet(0, addr(2), &packet(&[Message::Ping { seq: 5 }]))
        .unwrap();
    assert_eq!(
        outputs(&mut g),
        vec![send(addr(2), &[Message::Ack { seq: 5 }])]
    );
}

#[test]
fn swim_3_1_probe_timeout_sends_ping_reqs_and_lifeguard_nacks_set_the_suspicion() {
    let mut g = node_with_members(5);
    let cfg = Config::lan();
    let (timeout_ms, interval_ms) = (cfg.probe_timeout_ms, cfg.probe_interval_ms);
    g.join(0, &[]).unwrap();
    let start = outputs(&mut g);
    let probe_at = start
        .iter()
        .find_map(|o| match o {
            Output::SetTimer {
                at,
                timer: Timer::Probe,
            } => Some(*at),
            _ => None,
        })
        .expect("join starts probing");
    assert!(
        probe_at < interval_ms,
        "the first probe comes within one interval"
    );

    // The probe: a ping, its timeout, the end of its period and the next probe.
    g.handle_timer(probe_at, Timer::Probe);
    let out = outputs(&mut g);
    let (target, msgs) = decode(&out[0]);
    assert_eq!(msgs, vec![Message::Ping { seq: 1 }]);
    assert_eq!(
        out[1..],
        [
            Output::SetTimer {
                at: probe_at + timeout_ms / 2,
                timer: Timer::ProbeRetry { seq: 1 }
            },
            Output::SetTimer {
                at: probe_at + timeout_ms,
                timer: Timer::ProbeTimeout { seq: 1 }
            },
            Output::SetTimer {
                at: probe_at + interval_ms,
                timer: Timer::ProbeDeadline { seq: 1 }
            },
            Output::SetTimer {
                at: probe_at + interval_ms,
                timer: Timer::Probe
            },
        ]
    );

    // No ack halfway to the timeout: the ping is sent once more.
    g.handle_timer(probe_at + timeout_ms / 2, Timer::ProbeRetry { seq: 1 });
    assert_eq!(
        outputs(&mut g),
        vec![send(target, &[Message::Ping { seq: 1 }])]
    );

    // No ack in time: a third ping, and k = 3 others are asked to ping it.
    g.handle_timer(probe_at + timeout_ms, Timer::ProbeTimeout { seq: 1 });
    let out = outputs(&mut g);
    assert_eq!(out.len(), 4);
    assert_eq!(out[0], send(target, &[Message::Ping { seq: 1 }]));
    let mut helpers = Vec::new();
    for o in &out[1..] {
        let (to, msgs) = decode(o);
        assert_eq!(msgs, vec![Message::PingReq { seq: 1, target }]);
        helpers.push(to);
    }
    let mut others: Vec<SocketAddr> = (2..=5).map(addr).filter(|a| *a != target).collect();
    helpers.sort();
    others.sort();
    assert_eq!(helpers, others);

    // Two helpers nack; the third says nothing.
    for h in &helpers[..2] {
        g.handle_packet(
            probe_at + interval_ms - 10,
            *h,
            &packet(&[Message::Nack { seq: 1 }]),
        )
        .unwrap();
    }
    assert_eq!(outputs(&mut g), vec![]);
    g.handle_timer(probe_at + interval_ms, Timer::ProbeDeadline { seq: 1 });
    let out = outputs(&mut g);
    // Suspecters: us and the two nackers, i.e. two confirmations of K = 3.
    let timeout = cfg.suspicion_timeout_ms(5, 2, 3);
    let suspicion = Message::Suspect {
        addr: target,
        incarnation: 0,
        suspecters: vec![addr(1), helpers[0], helpers[1]],
    };
    assert_eq!(
        out,
        vec![
            Output::Event(MemberEvent::Suspect {
                addr: target,
                incarnation: 0
            }),
            Output::SetTimer {
                at: probe_at + interval_ms + timeout,
                timer: Timer::Suspicion { addr: target }
            },
            // Told straight to the suspect so it can refute (buddy system).
            send(target, &[suspicion]),
        ]
    );
    // Lifeguard §4.3: one missing nack raised the local health multiplier.
    assert_eq!(g.health_multiplier(), 2);

    // The timer runs out without a refutation: dead.
    g.handle_timer(
        probe_at + interval_ms + timeout,
        Timer::Suspicion { addr: target },
    );
    assert_eq!(
        outputs(&mut g),
        vec![Output::Event(MemberEvent::Failed {
            addr: target,
            incarnation: 0
        })]
    );
    assert_eq!(g.status_of(&target), Some((Status::Dead, 0)));
}

#[test]
fn swim_4_2_a_suspicion_about_us_is_refuted_with_a_higher_incarnation() {
    let mut g = node_with_members(3);
    let suspicion = Message::Suspect {
        addr: addr(1),
        incarnation: 0,
        suspecters: vec![addr(2)],
    };
    g.handle_packet(0, addr(2), &packet(&[suspicion])).unwrap();
    // Being suspected means some could not reach us: we ask for a resync a little later.
    assert_eq!(
        outputs(&mut g),
        vec![Output::SetTimer {
            at: Config::lan().resync_delay_ms,
            timer: Timer::Resync
        }]
    );
    assert_eq!(g.incarnation(), 1);
    // The refutation rides on the next datagram we send.
    g.handle_packet(1, addr(3), &packet(&[Message::Ping { seq: 9 }]))
        .unwrap();
    let alive = Message::Alive {
        addr: addr(1),
        incarnation: 1,
        meta: Bytes::from(meta(1).encode().unwrap()),
    };
    assert_eq!(
        outputs(&mut g),
        vec![send(addr(3), &[Message::Ack { seq: 9 }, alive])]
    );
    assert_eq!(g.stats().refutations, 1);
}

#[test]
fn lifeguard_4_4_a_ping_to_a_suspect_carries_the_suspicion() {
    let mut g = node_with_members(3);
    let suspicion = Message::Suspect {
        addr: addr(2),
        incarnation: 0,
        suspecters: vec![addr(3)],
    };
    g.handle_packet(0, addr(3), &packet(std::slice::from_ref(&suspicion)))
        .unwrap();
    outputs(&mut g);
    // addr(2) pings us (it is alive after all): our ack carries the suspicion about it.
    g.handle_packet(1, addr(2), &packet(&[Message::Ping { seq: 4 }]))
        .unwrap();
    assert_eq!(
        outputs(&mut g),
        vec![send(addr(2), &[Message::Ack { seq: 4 }, suspicion])]
    );
}

#[test]
fn swim_3_1_a_ping_req_helper_relays_the_ack_or_answers_with_a_nack() {
    let mut g = node_with_members(4);
    g.handle_packet(
        0,
        addr(2),
        &packet(&[Message::PingReq {
            seq: 77,
            target: addr(3),
        }]),
    )
    .unwrap();
    // The nack must reach the requester before its probe period ends: 80% of the
    // shorter of the probe timeout and what is left of the period after it.
    let cfg = Config::lan();
    let wait = cfg
        .probe_timeout_ms
        .min(cfg.probe_interval_ms - cfg.probe_timeout_ms)
        * 8
        / 10;
    assert_eq!(
        outputs(&mut g),
        vec![
            send(addr(3), &[Message::Ping { seq: 1 }]),
            // Halfway, a second ping (probe_retry): a nack then means two lost round
            // trips, not one.
            Output::SetTimer {
                at: wait / 2,
                timer: Timer::IndirectRetry { seq: 1 }
            },
            Output::SetTimer {
                at: wait,
                timer: Timer::IndirectTimeout { seq: 1 }
            },
        ]
    );
    g.handle_timer(wait / 2, Timer::IndirectRetry { seq: 1 });
    assert_eq!(
        outputs(&mut g),
        vec![send(addr(3), &[Message::Ping { seq: 1 }])]
    );
    g.handle_packet(wait / 2 + 1, addr(3), &packet(&[Message::Ack { seq: 1 }]))
        .unwrap();
    assert_eq!(
        outputs(&mut g),
        vec![send(addr(2), &[Message::Ack { seq: 77 }])]
    );
    // The relayed probe is finished: its retry and timeout do nothing.
    g.handle_timer(wait / 2, Timer::IndirectRetry { seq: 1 });
    g.handle_timer(wait, Timer::IndirectTimeout { seq: 1 });
    assert_eq!(outputs(&mut g), vec![]);

    // The same for a target that stays silent: a nack.
    g.handle_packet(
        500,
        addr(2),
        &packet(&[Message::PingReq {
            seq: 78,
            target: addr(4),
        }]),
    )
    .unwrap();
    outputs(&mut g);
    g.handle_timer(500 + wait, Timer::IndirectTimeout { seq: 2 });
    assert_eq!(
        outputs(&mut g),
        vec![send(addr(2), &[Message::Nack { seq: 78 }])]
    );
}

#[test]
fn lifeguard_4_2_confirmations_bring_the_suspicion_timeout_forward() {
    let mut g = node_with_members(10);
    let cfg = Config::lan();
    let suspect = |by: Vec<SocketAddr>| {
        packet(&[Message::Suspect {
            addr: addr(5),
            incarnation: 0,
            suspecters: by,
        }])
    };
    g.handle_packet(0, addr(2), &suspect(vec![addr(2)]))
        .unwrap();
    let first = outputs(&mut g);
    assert_eq!(
        first[1],
        Output::SetTimer {
            at: cfg.suspicion_timeout_ms(10, 0, 3),
            timer: Timer::Suspicion { addr: addr(5) }
        }
    );
    // The same suspecter again: not a confirmation, nothing happens.
    g.handle_packet(100, addr(2), &suspect(vec![addr(2)]))
        .unwrap();
    assert_eq!(outputs(&mut g), vec![]);
    // Two new suspecters: the deadline moves forward (measured from the start).
    g.handle_packet(200, addr(3), &suspect(vec![addr(3), addr(4)]))
        .unwrap();
    assert_eq!(
        outputs(&mut g),
        vec![Output::SetTimer {
            at: cfg.suspicion_timeout_ms(10, 2, 3),
            timer: Timer::Suspicion { addr: addr(5) }
        }]
    );
    assert!(cfg.suspicion_timeout_ms(10, 2, 3) < cfg.suspicion_timeout_ms(10, 0, 3));
    // The stale first timer fires: not yet due, so it is re-armed, not obeyed.
    g.handle_timer(
        cfg.suspicion_timeout_ms(10, 2, 3) - 1,
        Timer::Suspicion { addr: addr(5) },
    );
    assert_eq!(g.status_of(&addr(5)), Some((Status::Suspect, 0)));
}

#[test]
fn lifeguard_suspicion_timeout_shrinks_from_max_to_min() {
    let cfg = Config::lan();
    for n in [10, 64, 1_000, 10_000] {
        let (min, max) = cfg.suspicion_timeouts_ms(n);
        assert_eq!(cfg.suspicion_timeout_ms(n, 0, 3), max);
        assert_eq!(cfg.suspicion_timeout_ms(n, 3, 3), min);
        assert_eq!(cfg.suspicion_timeout_ms(n, 9, 3), min);
        let t: Vec<u64> = (0..=3).map(|c| cfg.suspicion_timeout_ms(n, c, 3)).collect();
        assert!(t.windows(2).all(|w| w[0] > w[1]), "{t:?}");
    }
    // The minimum grows with log(N): refutations need more gossip rounds to spread.
    assert!(cfg.suspicion_timeouts_ms(10_000).0 > cfg.suspicion_timeouts_ms(64).0);
}

#[test]
fn swim_4_2_newer_incarnations_win_and_older_news_is_ignored() {
    let mut g = node_with_members(3);
    let m2 = Bytes::from(meta(2).encode().unwrap());
    g.handle_packet(
        0,
        addr(3),
        &packet(&[Message::Suspect {
            addr: addr(2),
            incarnation: 0,
            suspecters: vec![addr(3)],
        }]),
    )
    .unwrap();
    outputs(&mut g);
    g.handle_packet(
        1,
        addr(2),
        &packet(&[Message::Alive {
            addr: addr(2),
            incarnation: 1,
            meta: m2.clone(),
        }]),
    )
    .unwrap();
    assert_eq!(
        outputs(&mut g),
        vec![Output::Event(MemberEvent::Alive {
            addr: addr(2),
            incarnation: 1
        })]
    );
    // A suspicion of the older incarnation is old news.
    g.handle_packet(
        2,
        addr(3),
        &packet(&[Message::Suspect {
            addr: addr(2),
            incarnation: 0,
            suspecters: vec![addr(3)],
        }]),
    )
    .unwrap();
    assert_eq!(outputs(&mut g), vec![]);
    assert_eq!(g.status_of(&addr(2)), Some((Status::Alive, 1)));
}

#[test]
fn left_outranks_dead_at_the_same_incarnation_but_not_the_reverse() {
    let mut g = node_with_members(4);
    let dead = |i| Message::Dead {
        addr: addr(i),
        incarnation: 0,
        from: addr(4),
    };
    let left = |i| Message::Left {
        addr: addr(i),
        incarnation: 0,
    };
    g.handle_packet(0, addr(4), &packet(&[dead(2), left(2)]))
        .unwrap();
    g.handle_packet(0, addr(4), &packet(&[left(3), dead(3)]))
        .unwrap();
    assert_eq!(
        outputs(&mut g),
        vec![
            Output::Event(MemberEvent::Failed {
                addr: addr(2),
                incarnation: 0
            }),
            Output::Event(MemberEvent::Left {
                addr: addr(2),
                incarnation: 0
            }),
            Output::Event(MemberEvent::Left {
                addr: addr(3),
                incarnation: 0
            }),
        ]
    );
}

#[test]
fn news_of_an_unknown_member_joins_it_and_dead_news_of_one_is_ignored() {
    let mut g = node_with_members(2);
    g.handle_packet(
        0,
        addr(2),
        &packet(&[
            Message::Dead {
                addr: addr(8),
                incarnation: 3,
                from: addr(2),
            },
            Message::Alive {
                addr: addr(9),
                incarnation: 2,
                meta: Bytes::from(meta(9).encode().unwrap()),
            },
        ]),
    )
    .unwrap();
    assert_eq!(
        outputs(&mut g),
        vec![Output::Event(MemberEvent::Joined {
            addr: addr(9),
            incarnation: 2,
            meta: meta(9)
        })]
    );
    assert_eq!(g.status_of(&addr(8)), None);
}

#[test]
fn a_malformed_datagram_is_refused_whole_and_changes_nothing() {
    let mut g = node_with_members(3);
    let mut bytes = packet(&[
        Message::Left {
            addr: addr(2),
            incarnation: 0,
        },
        Message::Ping { seq: 1 },
    ])
    .to_vec();
    bytes.truncate(bytes.len() - 1);
    assert!(g.handle_packet(0, addr(2), &Bytes::from(bytes)).is_err());
    assert_eq!(outputs(&mut g), vec![]);
    // The valid first message was not applied either.
    assert_eq!(g.status_of(&addr(2)), Some((Status::Alive, 0)));
    assert_eq!(g.stats().packets_refused, 1);
    assert!(g
        .handle_packet(0, addr(2), &Bytes::from_static(b"GET / HTTP/1.1\r\n"))
        .is_err());
    assert_eq!(g.stats().packets_refused, 2);
}

#[test]
fn oversize_metadata_is_refused_and_nothing_changes() {
    let mut g = node_with_members(2);
    let mut m = meta(1);
    for i in 0..40 {
        m.tags.insert(format!("key-{i:02}"), "v".repeat(20));
    }
    assert!(matches!(
        g.update_meta(0, &m),
        Err(GossipError::MetaTooLarge { max: 512, .. })
    ));
    assert_eq!(g.incarnation(), 0);
    assert!(Gossip::new(Config::lan(), addr(1), &m, 0, 1).is_err());
}

#[test]
fn leaving_broadcasts_left_at_once_and_stops_probing() {
    let mut g = node_with_members(3);
    g.join(0, &[]).unwrap();
    outputs(&mut g);
    g.leave(10).unwrap();
    let out = outputs(&mut g);
    let left = Message::Left {
        addr: addr(1),
        incarnation: 0,
    };
    assert!(!out.is_empty());
    for o in &out {
        assert_eq!(decode(o).1, vec![left.clone()]);
    }
    g.handle_timer(1_000, Timer::Probe);
    assert_eq!(outputs(&mut g), vec![]);
    assert_eq!(g.leave(20), Err(GossipError::Left));
    assert_eq!(g.join(20, &[addr(2)]), Err(GossipError::Left));
}

#[test]
fn a_join_announces_us_and_the_seed_answers_with_its_state() {
    let mut seed = node_with_members(3);
    let mut joiner = Gossip::new(Config::lan(), addr(9), &meta(9), 0, 5).unwrap();
    assert_eq!(joiner.join(0, &[addr(1)]).unwrap(), 1);
    let out = outputs(&mut joiner);
    let req = out
        .iter()
        .find_map(|o| match o {
            Output::Send { to, bytes } if *to == addr(1) => Some(bytes.clone()),
            _ => None,
        })
        .unwrap();
    seed.handle_packet(1, addr(9), &req).unwrap();
    let mut learned = Vec::new();
    for o in outputs(&mut seed) {
        if let Output::Send { to, bytes } = o {
            assert_eq!(to, addr(9));
            joiner.handle_packet(2, addr(1), &bytes).unwrap();
        }
    }
    for o in outputs(&mut joiner) {
        if let Output::Event(MemberEvent::Joined { addr, .. }) = o {
            learned.push(addr);
        }
    }
    learned.sort();
    assert_eq!(learned, vec![addr(1), addr(2), addr(3)]);
    assert_eq!(seed.status_of(&addr(9)), Some((Status::Alive, 0)));
}

#[test]
fn profiles_are_valid_and_named() {
    for name in ["lan", "wan", "local"] {
        Config::profile(name).unwrap().validate().unwrap();
    }
    assert!(Config::profile("lan2").is_none());
    let c = Config::lan();
    assert_eq!(c.retransmit_limit(9), 4);
    assert_eq!(c.retransmit_limit(10_000), 4 * 5);
}

#[test]
fn force_leave_turns_a_failed_member_left_and_refuses_live_or_unknown_ones() {
    let mut g = node_with_members(4);
    let dead = Message::Dead {
        addr: addr(2),
        incarnation: 0,
        from: addr(4),
    };
    g.handle_packet(0, addr(4), &packet(&[dead])).unwrap();
    let _ = outputs(&mut g);
    assert!(matches!(
        g.force_leave(1, addr(3)),
        Err(GossipError::NotFailed(_, "alive"))
    ));
    assert!(matches!(
        g.force_leave(1, addr(9)),
        Err(GossipError::UnknownMember(_))
    ));
    g.force_leave(1, addr(2)).unwrap();
    assert_eq!(g.status_of(&addr(2)), Some((Status::Left, 0)));
    assert!(outputs(&mut g).contains(&Output::Event(MemberEvent::Left {
        addr: addr(2),
        incarnation: 0
    })));
    // Forcing it again changes nothing.
    g.force_leave(2, addr(2)).unwrap();
    assert_eq!(outputs(&mut g), vec![]);
}

fn dead_notice(about: u8, incarnation: u32, from: u8) -> Message {
    Message::Dead {
        addr: addr(about),
        incarnation,
        from: addr(from),
    }
}

/// Node 1 knowing nodes 2..=n, holding node `dead` dead at incarnation 0.
fn node_holding_dead(n: u8, dead: u8, cfg: Config) -> Gossip {
    let mut g = Gossip::new(cfg, addr(1), &meta(1), 0, 42).unwrap();
    g.restore(0, (2..=n).map(|i| (addr(i), 0, meta(i))))
        .unwrap();
    g.handle_packet(0, addr(2), &packet(&[dead_notice(dead, 0, 2)]))
        .unwrap();
    assert_eq!(g.status_of(&addr(dead)), Some((Status::Dead, 0)));
    outputs(&mut g);
    g
}

#[test]
fn a_reconnect_ping_to_a_member_held_dead_tells_it_so_first() {
    // A reconnect interval this short makes the reconnect certain at every probe.
    let cfg = Config {
        reconnect_interval_ms: 1,
        ..Config::lan()
    };
    let mut g = node_holding_dead(3, 3, cfg);
    g.handle_timer(1_000, Timer::Probe);
    let sends: Vec<(SocketAddr, Vec<Message>)> = outputs(&mut g)
        .iter()
        .filter(|o| matches!(o, Output::Send { .. }))
        .map(decode)
        .collect();
    // The probe goes to the only live member; the reconnect ping to the dead one.
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0].0, addr(2));
    assert_eq!(sends[0].1[0], Message::Ping { seq: 1 });
    assert_eq!(sends[1].0, addr(3));
    assert_eq!(
        sends[1].1[..2],
        [dead_notice(3, 0, 1), Message::Ping { seq: 2 }]
    );
}

#[test]
fn a_member_told_it_is_dead_refutes_before_it_acks_and_says_whom_it_holds_dead() {
    // Node 1 holds node 3 dead; node 3 (alive) sends it a reconnect ping saying that it
    // holds node 1 dead.
    let mut g = node_holding_dead(3, 3, Config::lan());
    g.handle_packet(
        5,
        addr(3),
        &packet(&[dead_notice(1, 0, 3), Message::Ping { seq: 7 }]),
    )
    .unwrap();
    assert_eq!(g.incarnation(), 1);
    let out = outputs(&mut g);
    assert_eq!(
        out[0],
        Output::SetTimer {
            at: 5 + Config::lan().resync_delay_ms,
            timer: Timer::Resync
        }
    );
    let (to, msgs) = decode(&out[1]);
    assert_eq!(to, addr(3));
    let alive = Message::Alive {
        addr: addr(1),
        incarnation: 1,
        meta: Bytes::from(meta(1).encode().unwrap()),
    };
    // The ack, what we hold about the pinger, and our refutation as the freshest news.
    assert_eq!(
        msgs[..3],
        [Message::Ack { seq: 7 }, dead_notice(3, 0, 1), alive]
    );
}

#[test]
fn a_member_held_dead_that_talks_to_us_is_told_and_answers_with_who_it_is_now() {
    let mut g = node_holding_dead(3, 3, Config::lan());
    // Gossip from node 3 that does not revive it: it is told we hold it dead.
    g.handle_packet(5, addr(3), &packet(&[dead_notice(9, 0, 3)]))
        .unwrap();
    let out = outputs(&mut g);
    let (to, msgs) = decode(&out[0]);
    assert_eq!((to, &msgs[0]), (addr(3), &dead_notice(3, 0, 1)));

    // The other way round: we are at incarnation 2, and node 2 itself tells us it holds
    // us dead at 1 (our refutation never reached it): we answer it directly.
    let mut g = Gossip::new(Config::lan(), addr(1), &meta(1), 2, 42).unwrap();
    g.restore(0, [(addr(2), 0, meta(2))]).unwrap();
    g.handle_packet(5, addr(2), &packet(&[dead_notice(1, 1, 2)]))
        .unwrap();
    assert_eq!(g.incarnation(), 2, "nothing to refute");
    let out = outputs(&mut g);
    let (to, msgs) = decode(&out[0]);
    let alive = Message::Alive {
        addr: addr(1),
        incarnation: 2,
        meta: Bytes::from(meta(1).encode().unwrap()),
    };
    assert_eq!((to, &msgs[0]), (addr(2), &alive));
}

#[test]
fn a_resync_asks_one_member_for_its_whole_state() {
    let mut g = node_with_members(2);
    g.handle_timer(10, Timer::Resync);
    let alive = Message::Alive {
        addr: addr(1),
        incarnation: 0,
        meta: Bytes::from(meta(1).encode().unwrap()),
    };
    assert_eq!(
        outputs(&mut g),
        vec![send(addr(2), &[alive, Message::Join])]
    );
}

#[test]
fn ring_probes_go_to_one_successor_until_it_dies_then_to_the_next() {
    let cfg = Config {
        ring_probe_every: 1,
        ..Config::lan()
    };
    let mut g = Gossip::new(cfg, addr(1), &meta(1), 0, 42).unwrap();
    g.restore(0, (2..=6).map(|i| (addr(i), 0, meta(i))))
        .unwrap();
    // Each probe is acked, so nobody becomes suspect.
    let probe = |g: &mut Gossip, at: u64| -> SocketAddr {
        g.handle_timer(at, Timer::Probe);
        let (to, msgs) = outputs(g)
            .iter()
            .filter(|o| matches!(o, Output::Send { .. }))
            .map(decode)
            .next()
            .expect("a probe");
        let Message::Ping { seq } = msgs[0] else {
            panic!("not a ping: {msgs:?}")
        };
        g.handle_packet(at + 1, to, &packet(&[Message::Ack { seq }]))
            .unwrap();
        outputs(g);
        to
    };
    let succ = probe(&mut g, 1_000);
    for k in 1..5 {
        assert_eq!(probe(&mut g, 1_000 + k * 500), succ);
    }
    g.handle_packet(4_000, addr(99), &packet(&[dead_notice_of(succ)]))
        .unwrap();
    let next = probe(&mut g, 5_000);
    assert_ne!(next, succ);
    assert_eq!(probe(&mut g, 5_500), next);
}

fn dead_notice_of(a: SocketAddr) -> Message {
    Message::Dead {
        addr: a,
        incarnation: 0,
        from: addr(99),
    }
}

/// After a join, the joiner checks what its seeds told it against a random member's
/// digest every `join_catch_up_interval_ms`, and stops after three rounds in a row that
/// taught it no member it did not know (the members already there are news to nobody:
/// nothing else repairs a lost datagram of the seeds' answers but anti-entropy).
#[test]
fn a_joiner_exchanges_digests_until_three_rounds_teach_it_nothing() {
    let cfg = Config::lan();
    let mut g = Gossip::new(cfg.clone(), addr(1), &meta(1), 0, 42).unwrap();
    g.join(0, &[addr(2)]).unwrap();
    let first = cfg.join_catch_up_delay_ms;
    assert!(outputs(&mut g).contains(&Output::SetTimer {
        at: first,
        timer: Timer::CatchUp
    }));
    let alive = |i: u8| Message::Alive {
        addr: addr(i),
        incarnation: 0,
        meta: Bytes::from(meta(i).encode().unwrap()),
    };
    // The seed's answer.
    g.handle_packet(1, addr(2), &packet(&[alive(2), alive(3), alive(4)]))
        .unwrap();
    outputs(&mut g);
    let mut t = first;
    let mut rounds = Vec::new();
    for round in 0..10 {
        g.handle_timer(t, Timer::CatchUp);
        let out = outputs(&mut g);
        let digest = out.iter().any(|o| {
            matches!(o, Output::Send { .. })
                && decode(o)
                    .1
                    .iter()
                    .any(|m| matches!(m, Message::Digest { reply: true, .. }))
        });
        let next = out.contains(&Output::SetTimer {
            at: t + cfg.join_catch_up_interval_ms,
            timer: Timer::CatchUp,
        });
        rounds.push((digest, next));
        if !next {
            break;
        }
        if round == 0 {
            // The first round's repair teaches us a member we did not know.
            g.handle_packet(t + 2, addr(3), &packet(&[alive(5)]))
                .unwrap();
            outputs(&mut g);
        }
        t += cfg.join_catch_up_interval_ms;
    }
    // Round 0, round 1 (round 0 taught something), rounds 2 and 3 (nothing new yet),
    // then the third round in a row that taught nothing ends it.
    assert_eq!(
        rounds,
        vec![
            (true, true),
            (true, true),
            (true, true),
            (true, true),
            (false, false)
        ]
    );
    assert_eq!(g.num_live(), 5);
}
