//! The cluster client against scripted servers on loopback: leader hints are followed,
//! a refused connection moves on to the next server, reads are retried after a lost
//! answer and writes are not, pipelined answers come back in request order.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cairn_net::rpc::cluster::{ClientOptions, ClusterClient, ClusterError};
use cairn_net::rpc::frame::{encode, FrameDecoder, Kind};
use cairn_net::rpc::message::{ErrorCode, Limits, Op, ReadOpts, Request, Response, RpcError};

/// What a scripted server does with a request.
enum Act {
    Answer(Response),
    /// Close the connection without answering.
    Hang,
}

/// A server that answers every request with `script`, counting the requests it saw.
/// Answers to a batch are sent in reverse order.
fn server(script: impl Fn(&Request) -> Act + Send + 'static) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let dec = FrameDecoder::default();
            let mut data = BytesMut::new();
            let mut buf = [0u8; 4096];
            'conn: loop {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                data.extend_from_slice(&buf[..n]);
                let mut out = Vec::new();
                while let Ok(Some(f)) = dec.decode(&mut data) {
                    count.fetch_add(1, Ordering::SeqCst);
                    let req = Request::decode(&f.payload, &Limits::default()).unwrap();
                    match script(&req) {
                        Act::Answer(r) => out.push((f.id, r)),
                        Act::Hang => break 'conn,
                    }
                }
                let mut bytes = BytesMut::new();
                for (id, r) in out.into_iter().rev() {
                    let mut p = BytesMut::new();
                    r.encode(&mut p);
                    encode(&mut bytes, Kind::Response, id, &p);
                }
                if s.write_all(&bytes).is_err() {
                    break;
                }
            }
        }
    });
    (addr, seen)
}

fn dead_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn req(op: Op) -> Request {
    Request {
        datacenter: String::new(),
        token: String::new(),
        op,
    }
}

fn put() -> Request {
    req(Op::KvPut {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(b"v"),
        flags: 0,
        cas: Some(3),
        acquire: None,
        release: None,
    })
}

fn get() -> Request {
    req(Op::KvGet {
        key: Bytes::from_static(b"k"),
        opts: ReadOpts::default(),
    })
}

fn opts() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    }
}

#[test]
fn a_not_leader_answer_with_a_hint_sends_the_request_to_the_leader() {
    let (leader, leader_saw) = server(|_| Act::Answer(Response::Bool(true)));
    let hint = leader.clone();
    let (follower, follower_saw) = server(move |_| {
        Act::Answer(Response::Error(RpcError {
            code: ErrorCode::NotLeader,
            message: "not the leader".into(),
            leader: Some(hint.clone()),
        }))
    });
    let mut c = ClusterClient::new(&[follower], opts());
    assert_eq!(c.call(&put()).unwrap(), Response::Bool(true));
    assert_eq!(c.connected_to(), Some(leader.as_str()));
    assert_eq!(follower_saw.load(Ordering::SeqCst), 1);
    assert_eq!(leader_saw.load(Ordering::SeqCst), 1);
}

#[test]
fn a_refused_connection_moves_on_to_the_next_server() {
    let (up, _) = server(|_| Act::Answer(Response::Bool(true)));
    let mut c = ClusterClient::new(&[dead_addr(), up.clone()], opts());
    assert_eq!(c.call(&put()).unwrap(), Response::Bool(true));
    assert_eq!(c.connected_to(), Some(up.as_str()));
}

#[test]
fn when_no_server_accepts_the_error_says_so_at_once() {
    let mut c = ClusterClient::new(&[dead_addr(), dead_addr()], opts());
    match c.call(&get()) {
        // Waiting for the deadline would end in `Timeout`: `NoServer` means it gave up at
        // the first full round of refusals.
        Err(ClusterError::NoServer(why)) => assert!(why.contains("refused"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_write_whose_answer_is_lost_is_not_sent_again_but_a_read_is() {
    let (hangs, hang_saw) = server(|_| Act::Hang);
    let (answers, answer_saw) = server(|r| match r.op {
        Op::KvGet { .. } => Act::Answer(Response::Entries {
            entries: Vec::new(),
            meta: Default::default(),
        }),
        _ => Act::Answer(Response::Bool(true)),
    });
    let mut c = ClusterClient::new(&[hangs.clone(), answers.clone()], opts());
    match c.call(&put()) {
        Err(ClusterError::Unknown(why)) => assert!(why.contains(&hangs), "{why}"),
        other => panic!("a lost write must be reported as unknown, got {other:?}"),
    }
    assert_eq!(hang_saw.load(Ordering::SeqCst), 1);
    assert_eq!(
        answer_saw.load(Ordering::SeqCst),
        0,
        "the write was sent twice"
    );
    // A read after the same loss is simply asked again, of the next server.
    let mut c = ClusterClient::new(&[hangs, answers], opts());
    assert!(matches!(c.call(&get()), Ok(Response::Entries { .. })));
    assert_eq!(hang_saw.load(Ordering::SeqCst), 2);
    assert_eq!(answer_saw.load(Ordering::SeqCst), 1);
}

#[test]
fn no_leader_is_retried_until_the_deadline_and_then_returned() {
    let (s, saw) = server(|_| {
        Act::Answer(Response::Error(RpcError {
            code: ErrorCode::NoLeader,
            message: "no cluster leader".into(),
            leader: None,
        }))
    });
    let mut c = ClusterClient::new(
        &[s],
        ClientOptions {
            timeout: Duration::from_millis(400),
            ..ClientOptions::default()
        },
    );
    match c.call(&put()) {
        Ok(Response::Error(e)) => assert_eq!(e.code, ErrorCode::NoLeader),
        other => panic!("{other:?}"),
    }
    assert!(saw.load(Ordering::SeqCst) > 1, "it never retried");
}

#[test]
fn pipelined_answers_come_back_in_request_order() {
    let (s, saw) = server(|r| match &r.op {
        Op::KvPut { value, .. } => Act::Answer(Response::Bool(value.len() % 2 == 0)),
        _ => Act::Hang,
    });
    let reqs: Vec<Request> = (0..50)
        .map(|i| {
            req(Op::KvPut {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(vec![b'x'; i]),
                flags: 0,
                cas: None,
                acquire: None,
                release: None,
            })
        })
        .collect();
    let mut c = ClusterClient::new(&[s], opts());
    let answers = c.call_many(&reqs);
    assert_eq!(answers.len(), 50);
    for (i, a) in answers.into_iter().enumerate() {
        assert_eq!(a.unwrap(), Response::Bool(i % 2 == 0), "answer {i}");
    }
    assert_eq!(saw.load(Ordering::SeqCst), 50);
}
