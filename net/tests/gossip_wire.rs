//! The gossip datagram codec: every message round-trips, and nothing a peer (or an
//! attacker) can send makes the decoder panic: malformed, truncated, oversize, foreign
//! and unknown-version input is a typed error.

use bytes::Bytes;
use cairn_net::gossip::wire::{decode_packet, Message, PacketBuilder, HEADER_LEN};
use cairn_net::gossip::{NodeMeta, Role, WireError};
use proptest::prelude::*;
use std::net::SocketAddr;

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn meta() -> NodeMeta {
    NodeMeta {
        name: "web-1".into(),
        role: Role::Server,
        datacenter: "dc1".into(),
        rpc_port: 8300,
        protocol_version: 1,
        tags: [("rack".to_string(), "r1".to_string())].into(),
    }
}

fn all_messages() -> Vec<Message> {
    vec![
        Message::Ping { seq: 1 },
        Message::Ack { seq: u32::MAX },
        Message::Nack { seq: 7 },
        Message::PingReq {
            seq: 9,
            target: a("[fe80::1]:8301"),
        },
        Message::Alive {
            addr: a("10.0.0.1:8301"),
            incarnation: 3,
            meta: Bytes::from(meta().encode().unwrap()),
        },
        Message::Suspect {
            addr: a("10.0.0.2:8301"),
            incarnation: 4,
            suspecters: vec![a("10.0.0.3:8301"), a("10.0.0.4:8301")],
        },
        Message::Dead {
            addr: a("10.0.0.2:8301"),
            incarnation: 5,
            from: a("10.0.0.3:8301"),
        },
        Message::Left {
            addr: a("10.0.0.5:8301"),
            incarnation: 6,
        },
        Message::Join,
        Message::Digest {
            reply: true,
            buckets: vec![1, 2, u64::MAX],
        },
    ]
}

fn packet(msgs: &[Message]) -> Bytes {
    let mut p = PacketBuilder::new(1400);
    for m in msgs {
        assert!(p.push(m));
    }
    p.finish()
}

#[test]
fn every_message_kind_round_trips_in_one_compound_packet() {
    let msgs = all_messages();
    let b = packet(&msgs);
    assert_eq!(decode_packet(&b, 1400, 512).unwrap(), msgs);
}

#[test]
fn metadata_round_trips() {
    assert_eq!(NodeMeta::decode(&meta().encode().unwrap()).unwrap(), meta());
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let b = packet(&all_messages());
    for len in 0..b.len() {
        let cut = b.slice(..len);
        // A cut that falls exactly between two messages is a valid shorter packet.
        if let Ok(m) = decode_packet(&cut, 1400, 512) {
            assert!(all_messages().starts_with(&m), "cut at {len}");
        }
    }
    assert!(matches!(
        decode_packet(&b.slice(..HEADER_LEN + 2), 1400, 512),
        Err(WireError::Truncated(_))
    ));
}

#[test]
fn foreign_unknown_version_oversize_and_empty_datagrams_are_refused() {
    let good = packet(&[Message::Ping { seq: 1 }]);
    let mut v = good.to_vec();
    v[0] = b'X';
    assert_eq!(
        decode_packet(&Bytes::from(v), 1400, 512),
        Err(WireError::BadMagic([b'X', b'G']))
    );
    let mut v = good.to_vec();
    v[2] = 2;
    assert_eq!(
        decode_packet(&Bytes::from(v), 1400, 512),
        Err(WireError::UnsupportedVersion(2))
    );
    let big = Bytes::from(vec![0u8; 1401]);
    assert_eq!(
        decode_packet(&big, 1400, 512),
        Err(WireError::Oversize {
            len: 1401,
            max: 1400
        })
    );
    assert!(decode_packet(&good.slice(..HEADER_LEN), 1400, 512).is_err());
    let mut v = good.to_vec();
    v[HEADER_LEN] = 200;
    assert_eq!(
        decode_packet(&Bytes::from(v), 1400, 512),
        Err(WireError::UnknownKind(200))
    );
}

#[test]
fn oversize_metadata_in_an_alive_is_refused() {
    let b = packet(&[Message::Alive {
        addr: a("10.0.0.1:8301"),
        incarnation: 1,
        meta: Bytes::from(meta().encode().unwrap()),
    }]);
    assert!(matches!(
        decode_packet(&b, 1400, 8),
        Err(WireError::MetaTooLarge { max: 8, .. })
    ));
}

#[test]
fn a_builder_never_exceeds_its_limit() {
    let mut p = PacketBuilder::new(600);
    let mut n = 0;
    while p.push(&Message::Left {
        addr: a("10.0.0.5:8301"),
        incarnation: n,
    }) {
        n += 1;
    }
    let b = p.finish();
    assert!(b.len() <= 600);
    assert_eq!(decode_packet(&b, 600, 512).unwrap().len(), n as usize);
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
        let _ = decode_packet(&Bytes::from(bytes), 1400, 512);
    }

    #[test]
    fn corrupted_valid_packets_never_panic(flips in proptest::collection::vec((0usize..2000, any::<u8>()), 1..8)) {
        let mut v = packet(&all_messages()).to_vec();
        for (i, x) in flips {
            let i = i % v.len();
            v[i] = x;
        }
        let _ = decode_packet(&Bytes::from(v), 1400, 512);
    }
}
