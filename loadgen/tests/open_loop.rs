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

#[test]
fn the_interval_log_parses_back_with_the_hdrhistogram_crate_and_adds_up_to_the_run() {
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    use hdrhistogram::serialization::Deserializer;
    let addr = stalling_server(Duration::from_millis(1));
    let mut r = run(&addr, 0.0, 4);
    r.duration = Duration::from_millis(2500);
    let out = run_on(&r, 1, |_| {}).unwrap();
    let log = out
        .recorder
        .interval_log(std::time::SystemTime::now())
        .unwrap();
    let mut total = 0u64;
    let mut intervals = 0;
    let mut de = Deserializer::new();
    for entry in IntervalLogIterator::new(&log) {
        if let LogEntry::Interval(h) = entry.expect("a valid interval log") {
            let bytes = base64_decode(h.encoded_histogram());
            let hist: hdrhistogram::Histogram<u64> =
                de.deserialize(&mut &bytes[..]).expect("a V2 histogram");
            total += hist.len();
            intervals += 1;
        }
    }
    assert!(intervals >= 2, "{intervals} intervals in 2.5 s");
    assert_eq!(total, out.recorder.total().len());
}

/// Standard base64 (the interval log's encoding), enough for the test.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|c| u32::from(val(*c))).collect();
        let n = v.iter().fold(0u32, |acc, x| (acc << 6) | x) << (6 * (4 - v.len()));
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..v.len()]);
    }
    out
}
