//! Open loop against a server that stalls: the requests that were due while it stalled
//! are charged the time they waited (coordinated omission corrected), and the run keeps
//! its rate; a closed loop, by contrast, sees one slow request.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use cairn_net::rpc::frame::{encode_with, FrameDecoder, Kind};
use cairn_net::rpc::message::{Consistency, Response};
use loadgen::kv::{run_on, KvRun};
use loadgen::workload::{KeyDist, Mix};

/// A fake Cairn server that answers at once, except that before its 50th answer it
/// stops for `stall`.
fn stalling_server(stall: Duration) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve(s, stall));
        }
    });
    addr
}

fn serve(mut s: TcpStream, stall: Duration) {
    let dec = FrameDecoder::default();
    let mut data = BytesMut::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut answered = 0u64;
    let empty = Response::Entries {
        entries: Vec::new(),
        meta: Default::default(),
    };
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        data.extend_from_slice(&buf[..n]);
        let mut out = BytesMut::new();
        while let Ok(Some(f)) = dec.decode(&mut data) {
            answered += 1;
            if answered == 50 {
                std::thread::sleep(stall);
            }
            encode_with(&mut out, Kind::Response, f.id, |b| empty.encode(b));
        }
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

fn run(addr: &str, rate: f64, pipeline: usize) -> KvRun {
    KvRun {
        servers: vec![addr.to_string()],
        mix: Mix::Read,
        keys: 100,
        dist: KeyDist::Uniform,
        value_size: 16,
        connections: 1,
        pipeline,
        rate,
        duration: Duration::from_secs(3),
        warmup: Duration::ZERO,
        consistency: Consistency::Stale,
        seed: 1,
        timeout: Duration::from_secs(5),
    }
}

#[test]
fn an_open_loop_charges_a_stall_to_every_request_that_was_due_during_it() {
    let addr = stalling_server(Duration::from_millis(600));
    // 100 requests a second: about 60 fall due during the 600 ms stall.
    let out = run_on(&run(&addr, 100.0, 128), 1, |_| {}).unwrap();
    let h = out.recorder.total();
    let slow = h.count_between(300_000, u64::MAX);
    eprintln!(
        "{} requests, {} of them at 300 ms or more, max {} us",
        h.len(),
        slow,
        h.max()
    );
    // The rate held: the stall did not stop the schedule (3 s at 100/s).
    assert!(h.len() >= 240, "only {} requests in 3 s at 100/s", h.len());
    // Those due in the first half of the stall waited at least 300 ms each.
    assert!(slow >= 20, "only {slow} requests were charged the stall");
    assert!(h.max() >= 550_000, "the longest wait was {} us", h.max());
}

#[test]
fn a_closed_loop_sees_the_same_stall_as_one_slow_request() {
    let addr = stalling_server(Duration::from_millis(600));
    let out = run_on(&run(&addr, 0.0, 1), 1, |_| {}).unwrap();
    let h = out.recorder.total();
    let slow = h.count_between(300_000, u64::MAX);
    assert_eq!(slow, 1, "a closed loop waits instead of sending");
}
