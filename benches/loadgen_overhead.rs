//! How much load loadgen itself can produce: `loadgen kv` against an echo target that
//! speaks Cairn's RPC frames and does nothing (every get is answered "absent" at once),
//! so the figures are loadgen's own ceiling and latency floor on this machine, to read
//! beside every figure it measures of a real server.
//!
//! `cargo bench --bench loadgen_overhead`

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use bytes::BytesMut;
use cairn_net::rpc::frame::{encode_with, FrameDecoder, Kind};
use cairn_net::rpc::message::{Consistency, Response};
use loadgen::kv::{run_on, KvRun};
use loadgen::workload::{KeyDist, Mix};

/// One thread per connection: read what came, answer every frame in it, write once.
fn echo(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let dec = FrameDecoder::default();
    let mut data = BytesMut::with_capacity(64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = BytesMut::with_capacity(64 * 1024);
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
        while let Ok(Some(f)) = dec.decode(&mut data) {
            encode_with(&mut out, Kind::Response, f.id, |b| empty.encode(b));
        }
        if s.write_all(&out).is_err() {
            return;
        }
        out.clear();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` (nextest) finds nothing to run here
    }
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || echo(s));
        }
    });
    println!("loadgen against an echo target on loopback (this machine, same cores)");
    println!(
        "{:<34} {:>10} {:>9} {:>9} {:>9} {:>14}",
        "connections x pipeline, threads", "ops/s", "p50 us", "p99 us", "p99.9 us", "loadgen cores"
    );
    for (connections, pipeline, threads) in
        [(64, 1, 1), (64, 1, 2), (16, 16, 1), (4, 16, 1), (1, 1, 1)]
    {
        let run = KvRun {
            servers: vec![addr.clone()],
            mix: Mix::Read,
            keys: 100_000,
            dist: KeyDist::Uniform,
            value_size: 256,
            connections,
            pipeline,
            rate: 0.0,
            duration: Duration::from_secs(5),
            warmup: Duration::from_secs(1),
            consistency: Consistency::Stale,
            seed: 1,
            timeout: Duration::from_secs(5),
        };
        let out = run_on(&run, threads, |_| {}).expect("run");
        let h = out.recorder.total();
        let ops = h.len() as f64 / out.measured.as_secs_f64();
        println!(
            "{:<34} {:>10.0} {:>9} {:>9} {:>9} {:>14.2}",
            format!("{connections} x {pipeline}, {threads}"),
            ops,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            out.cpu_cores_used
        );
    }
}
