//! Bad input on the RPC port of a real agent: damaged frames, oversize frames, limits,
//! half-open connections, Raft requests meant for another server. Each gets a typed error
//! or a clean close of that connection only; the agent keeps serving everyone else and
//! loses nothing acknowledged.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cairn::client::RpcClient;
use cairn::raft::types::{RaftLogId, TypeConfig, Vote as RaftVote};
use cairn::raft::wire;
use cairn_net::rpc::frame::{encode, FrameDecoder, Kind};
use cairn_net::rpc::message::{ErrorCode, Limits, Op, ReadOpts, Response, TxnOp};
use openraft::impls::leader_id_std::LeaderId;
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use support::{b, free_port, req, CAIRN};

struct Dev {
    child: Child,
    addr: String,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dev(extra: &[&str]) -> Dev {
    let port = free_port("127.0.0.1");
    let child = Command::new(CAIRN)
        .args(["agent", "--dev", "--server-port", &port.to_string()])
        .args([
            "--serf-lan-port",
            "0",
            "--http-port",
            "-1",
            "--dns-port",
            "-1",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let d = Dev {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = RpcClient::connect(&d.addr, Duration::from_secs(2)) {
            if let Ok(Response::Leader(Some(_))) = c.call(&req(Op::StatusLeader)) {
                return d;
            }
        }
        assert!(Instant::now() < deadline, "dev agent never came up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn frame_of(op: Op, id: u64) -> Vec<u8> {
    let mut payload = BytesMut::new();
    req(op).encode(&mut payload);
    let mut out = BytesMut::new();
    encode(&mut out, Kind::Request, id, &payload);
    out.to_vec()
}

/// Sends raw bytes and reads whatever comes back until the agent closes or 5 s pass.
fn exchange(addr: &str, bytes: &[u8]) -> (Vec<Response>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let closed = s.read_to_end(&mut buf).is_ok();
    let mut data = BytesMut::from(&buf[..]);
    let dec = FrameDecoder::default();
    let mut out = Vec::new();
    while let Ok(Some(f)) = dec.decode(&mut data) {
        out.push(Response::decode(&f.payload, &Limits::default()).unwrap());
    }
    (out, closed)
}

fn error_of(r: &Response) -> (ErrorCode, String) {
    match r {
        Response::Error(e) => (e.code, e.message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn still_serves(d: &Dev) {
    let mut c = RpcClient::connect(&d.addr, Duration::from_secs(5)).unwrap();
    match c.call(&req(Op::KvGet {
        key: b("acked"),
        opts: ReadOpts::default(),
    })) {
        Ok(Response::Entries { entries, .. }) => {
            assert_eq!(entries.len(), 1, "an acknowledged write is gone");
            assert_eq!(&entries[0].value[..], b"yes");
        }
        other => panic!("the agent stopped serving: {other:?}"),
    }
}

fn put_acked(d: &Dev) {
    let mut c = RpcClient::connect(&d.addr, Duration::from_secs(5)).unwrap();
    let r = c.call(&req(Op::KvPut {
        key: b("acked"),
        value: b("yes"),
        flags: 0,
        cas: None,
        acquire: None,
        release: None,
    }));
    assert!(matches!(r, Ok(Response::Bool(true))), "{r:?}");
}

#[test]
fn damaged_frames_get_an_error_and_a_close_and_nothing_else_is_disturbed() {
    let d = dev(&[]);
    put_acked(&d);
    let good = frame_of(
        Op::KvPut {
            key: b("acked"),
            value: b("overwritten"),
            flags: 0,
            cas: None,
            acquire: None,
            release: None,
        },
        7,
    );
    // A flipped payload byte: the checksum fails.
    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0x40;
    // Another protocol, another version, an impossible length.
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    let mut bad_version = good.clone();
    bad_version[2] = 99;
    let mut oversize = good[..24].to_vec();
    oversize[16..20].copy_from_slice(&(64u32 << 20).to_le_bytes());
    for (what, bytes, needle) in [
        ("crc", bad_crc, "checksum"),
        ("magic", bad_magic, "magic"),
        ("version", bad_version, "version"),
        ("length", oversize, "exceeds the limit"),
    ] {
        let (resps, closed) = exchange(&d.addr, &bytes);
        assert!(closed, "{what}: the connection was not closed");
        assert_eq!(resps.len(), 1, "{what}: {resps:?}");
        let (code, msg) = error_of(&resps[0]);
        assert_eq!(code, ErrorCode::Invalid, "{what}");
        assert!(msg.contains(needle), "{what}: {msg}");
    }
    // Nothing of those frames was applied.
    still_serves(&d);
}

#[test]
fn a_half_open_connection_does_not_stall_other_clients() {
    let d = dev(&[]);
    put_acked(&d);
    // Half a header, then silence; and a whole header whose payload never comes.
    let frame = frame_of(Op::StatusLeader, 1);
    let mut a = TcpStream::connect(&d.addr).unwrap();
    a.write_all(&frame[..10]).unwrap();
    let mut big = frame_of(
        Op::KvPut {
            key: b("k"),
            value: Bytes::from(vec![b'x'; 100_000]),
            flags: 0,
            cas: None,
            acquire: None,
            release: None,
        },
        2,
    );
    big.truncate(1000);
    let mut c2 = TcpStream::connect(&d.addr).unwrap();
    c2.write_all(&big).unwrap();
    for _ in 0..20 {
        still_serves(&d);
    }
    drop(a);
    drop(c2);
    still_serves(&d);
}

#[test]
fn requests_over_the_limits_get_typed_errors_and_change_nothing() {
    let d = dev(&["--max-value-size", "1024"]);
    put_acked(&d);
    let mut c = RpcClient::connect(&d.addr, Duration::from_secs(5)).unwrap();
    let put = |key: Bytes, value: Bytes| {
        req(Op::KvPut {
            key,
            value,
            flags: 0,
            cas: None,
            acquire: None,
            release: None,
        })
    };
    let r = c.call(&put(b("v"), Bytes::from(vec![b'x'; 1025]))).unwrap();
    assert_eq!(error_of(&r).0, ErrorCode::ValueTooLarge, "{r:?}");
    let r = c.call(&put(b("v"), Bytes::from(vec![b'x'; 1024]))).unwrap();
    assert_eq!(r, Response::Bool(true));
    let r = c
        .call(&put(Bytes::from(vec![b'k'; 8 * 1024 + 1]), b("x")))
        .unwrap();
    assert_eq!(error_of(&r).0, ErrorCode::KeyTooLarge, "{r:?}");
    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::Set {
            key: b(&format!("t{i}")),
            value: b("x"),
            flags: 0,
        })
        .collect();
    let r = c.call(&req(Op::Txn { ops })).unwrap();
    assert_eq!(error_of(&r).0, ErrorCode::TxnTooLarge, "{r:?}");
    // None of the refused transaction's keys exist.
    let r = c
        .call(&req(Op::KvGet {
            key: b("t0"),
            opts: ReadOpts::default(),
        }))
        .unwrap();
    assert!(
        matches!(r, Response::Entries { ref entries, .. } if entries.is_empty()),
        "{r:?}"
    );
    // An unknown request kind is refused on its own; the connection stays usable.
    let mut unknown = BytesMut::new();
    unknown.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 200]);
    let mut framed = BytesMut::new();
    encode(&mut framed, Kind::Request, 3, &unknown);
    let mut tail = frame_of(Op::StatusLeader, 4);
    let mut both = framed.to_vec();
    both.append(&mut tail);
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&both).unwrap();
    let dec = FrameDecoder::default();
    let mut data = BytesMut::new();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < 2 {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after an unknown request kind");
        data.extend_from_slice(&buf[..n]);
        while let Ok(Some(f)) = dec.decode(&mut data) {
            got.push((
                f.id,
                Response::decode(&f.payload, &Limits::default()).unwrap(),
            ));
        }
    }
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(error_of(&got[0].1).0, ErrorCode::Invalid);
    assert!(matches!(got[1].1, Response::Leader(Some(_))), "{got:?}");
    still_serves(&d);
}

#[test]
fn pipelined_requests_are_answered_as_they_finish_not_in_order() {
    let d = dev(&[]);
    put_acked(&d);
    let index = match RpcClient::connect(&d.addr, Duration::from_secs(5))
        .unwrap()
        .call(&req(Op::KvGet {
            key: b("acked"),
            opts: ReadOpts::default(),
        }))
        .unwrap()
    {
        Response::Entries { meta, .. } => meta.index,
        other => panic!("{other:?}"),
    };
    // A blocking read that waits (up to 30 s) for the key to change, then a write of
    // another key on the same connection: the write is answered while the read waits.
    let put = |key: &str, id| {
        frame_of(
            Op::KvPut {
                key: b(key),
                value: b("yes"),
                flags: 0,
                cas: None,
                acquire: None,
                release: None,
            },
            id,
        )
    };
    let mut bytes = frame_of(
        Op::KvGet {
            key: b("acked"),
            opts: ReadOpts {
                index,
                wait_ms: 30_000,
                ..ReadOpts::default()
            },
        },
        1,
    );
    bytes.extend(put("other", 2));
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&bytes).unwrap();
    let dec = FrameDecoder::default();
    let mut data = BytesMut::new();
    let mut order = Vec::new();
    let mut buf = [0u8; 4096];
    let mut sent_third = false;
    while order.len() < 3 {
        if order == [2] && !sent_third {
            // Now a write of the watched key ends the wait.
            s.write_all(&put("acked", 3)).unwrap();
            sent_third = true;
        }
        let n = s.read(&mut buf).expect("the answers within 20 s");
        assert!(n > 0);
        data.extend_from_slice(&buf[..n]);
        while let Ok(Some(f)) = dec.decode(&mut data) {
            order.push(f.id);
        }
    }
    assert_eq!(
        order[0], 2,
        "the blocked read held up a later request: {order:?}"
    );
    order.sort();
    assert_eq!(order, vec![1, 2, 3]);
}

/// A client that pipelines many stale gets of a large value and reads nothing until it
/// has sent them all: the socket fills up, the read loop's own sends stop part-way, and
/// the writer finishes them. Every answer arrives whole, once, with its own id, and other
/// clients are served meanwhile.
#[test]
fn a_client_that_reads_late_gets_every_pipelined_answer_whole() {
    let d = dev(&[]);
    put_acked(&d);
    let big = vec![b'v'; 256 * 1024];
    let mut c = RpcClient::connect(&d.addr, Duration::from_secs(5)).unwrap();
    let r = c.call(&req(Op::KvPut {
        key: b("big"),
        value: Bytes::from(big.clone()),
        flags: 0,
        cas: None,
        acquire: None,
        release: None,
    }));
    assert!(matches!(r, Ok(Response::Bool(true))), "{r:?}");
    const N: u64 = 200; // 50 MiB of answers: far more than the socket buffers hold
    let mut bytes = Vec::new();
    for id in 1..=N {
        bytes.extend(frame_of(
            Op::KvGet {
                key: b("big"),
                opts: ReadOpts {
                    consistency: cairn_net::rpc::message::Consistency::Stale,
                    ..ReadOpts::default()
                },
            },
            id,
        ));
    }
    let mut s = TcpStream::connect(&d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&bytes).unwrap();
    // The answers pile up unread while another client is served.
    std::thread::sleep(Duration::from_millis(300));
    still_serves(&d);
    let dec = FrameDecoder::default();
    let mut data = BytesMut::new();
    let mut seen = vec![false; N as usize + 1];
    let mut buf = vec![0u8; 1 << 16];
    let mut answers = 0;
    while answers < N {
        let n = s.read(&mut buf).expect("every answer within 20 s");
        assert!(n > 0, "closed after {answers} answers");
        data.extend_from_slice(&buf[..n]);
        while let Some(f) = dec.decode(&mut data).expect("whole frames") {
            assert!(!seen[f.id as usize], "answer {} came twice", f.id);
            seen[f.id as usize] = true;
            match Response::decode(&f.payload, &Limits::default()).unwrap() {
                Response::Entries { entries, .. } => {
                    assert_eq!(entries.len(), 1);
                    assert!(entries[0].value[..] == big[..], "a damaged value");
                }
                other => panic!("{other:?}"),
            }
            answers += 1;
        }
    }
    assert!(data.is_empty(), "bytes after the last answer");
}

/// One internal (server-to-server) request on a fresh connection.
fn internal(d: &Dev, kind: wire::Kind, body: Bytes) -> Response {
    let mut c = RpcClient::connect(&d.addr, Duration::from_secs(5)).unwrap();
    c.call(&req(Op::Internal {
        kind: kind as u8,
        body,
    }))
    .unwrap()
}

/// The vote a server holds, read from its answer to a vote request that can only be
/// refused (term 0 is below any vote an elected server holds).
fn held_vote(d: &Dev, id: u64) -> RaftVote {
    let probe = VoteRequest::<TypeConfig>::new(vote(0, id, false), None);
    match internal(
        d,
        wire::Kind::Vote,
        wire::address(id, &wire::encode_vote(&probe)),
    ) {
        Response::Internal(b) => {
            let resp = wire::decode_vote_response(&b).unwrap();
            assert!(!resp.vote_granted, "a vote at term 0 was granted");
            resp.vote
        }
        other => panic!("no vote answer: {other:?}"),
    }
}

fn vote(term: u64, voted_for: u64, committed: bool) -> RaftVote {
    RaftVote {
        leader_id: LeaderId { term, voted_for },
        committed,
    }
}

#[test]
fn a_raft_request_for_another_node_id_is_refused_and_leaves_the_vote_alone() {
    let d = dev(&[]);
    put_acked(&d);
    let Ok(Response::Servers(servers)) = RpcClient::connect(&d.addr, Duration::from_secs(5))
        .unwrap()
        .call(&req(Op::RaftConfiguration))
    else {
        panic!("no configuration");
    };
    let me = servers[0].id;
    let before = held_vote(&d, me);
    // A leader of another cluster, at a far higher term with a longer log: were these
    // requests taken, this server would grant the vote and follow that leader.
    let stranger = me.wrapping_add(0x5eed);
    let far = Some(RaftLogId::new_term_index(999, 1_000_000));
    let mut grantable = VoteRequest::<TypeConfig>::new(vote(1000, stranger, false), far);
    grantable.leadership_transfer = true;
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: vote(1000, stranger, true),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    };
    let transfer = TransferLeaderRequest::<TypeConfig>::new(vote(1000, stranger, true), me, far);
    for (kind, body) in [
        (wire::Kind::Vote, wire::encode_vote(&grantable)),
        (wire::Kind::PreVote, wire::encode_vote(&grantable)),
        (wire::Kind::AppendEntries, wire::encode_append(&append)),
        (wire::Kind::TransferLeader, wire::encode_transfer(&transfer)),
    ] {
        let (code, message) = error_of(&internal(&d, kind, wire::address(stranger, &body)));
        assert_eq!(code, ErrorCode::WrongServer, "{kind:?}: {message}");
        for part in [
            stranger.to_string(),
            me.to_string(),
            d.addr.clone(),
            "now belongs to a different server".to_string(),
        ] {
            assert!(
                message.contains(&part),
                "{kind:?}: {message:?} lacks {part:?}"
            );
        }
    }
    // A body too short to name its target is a bad request, not a refusal.
    let (code, _) = error_of(&internal(&d, wire::Kind::Vote, Bytes::from_static(&[1, 2])));
    assert_eq!(code, ErrorCode::Invalid);
    // Nothing reached Raft: the same vote, the same leader, every write still there.
    assert_eq!(held_vote(&d, me), before);
    match internal(&d, wire::Kind::Hello, Bytes::new()) {
        Response::Internal(b) => {
            let h = wire::decode_hello(&b).unwrap();
            assert_eq!(h.id, me);
            assert_eq!(h.leader.map(|(id, _)| id), Some(me));
        }
        other => panic!("no hello: {other:?}"),
    }
    still_serves(&d);
}
