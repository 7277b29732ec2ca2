//! End to end through one `cairn agent --dev` on loopback: durable writes through Raft and
//! reads, from C client threads each with its own connection, one request in flight each
//! (closed loop). Run with `cargo bench --bench agent`. Prints a table.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn::client::RpcClient;
use cairn_net::rpc::message::{Op, ReadOpts, Request, Response};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

fn main() {
    let bin = std::env::var("CAIRN_BIN")
        .unwrap_or_else(|_| format!("{}/target/release/cairn", env!("CARGO_MANIFEST_DIR")));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut agent = Command::new(&bin)
        .args(["agent", "--dev", "--server-port", &port.to_string()])
        .args([
            "--serf-lan-port",
            "0",
            "--http-port",
            "-1",
            "--dns-port",
            "-1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ready = false;
    while Instant::now() < deadline {
        if let Ok(mut c) = RpcClient::connect(&addr, Duration::from_secs(2)) {
            let req = Request {
                datacenter: String::new(),
                token: String::new(),
                op: Op::StatusLeader,
            };
            if matches!(c.call(&req), Ok(Response::Leader(Some(_)))) {
                ready = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready, "agent did not start");
    println!("== cairn agent --dev on loopback; closed loop, 1 request in flight per connection");
    for (what, clients, per) in [
        ("put", 1usize, 2000usize),
        ("put", 16, 500),
        ("get", 1, 20000),
        ("get", 16, 5000),
    ] {
        let t = Instant::now();
        let lats: Vec<Vec<Duration>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..clients)
                .map(|c| {
                    let addr = addr.clone();
                    s.spawn(move || {
                        let mut cl = RpcClient::connect(&addr, Duration::from_secs(10)).unwrap();
                        let mut lat = Vec::with_capacity(per);
                        for i in 0..per {
                            let key = Bytes::from(format!("bench/{c}/{}", i % 1000));
                            let op = if what == "put" {
                                Op::KvPut {
                                    key,
                                    value: Bytes::from_static(&[7u8; 128]),
                                    flags: 0,
                                    cas: None,
                                    acquire: None,
                                    release: None,
                                }
                            } else {
                                Op::KvGet {
                                    key,
                                    opts: ReadOpts::default(),
                                }
                            };
                            let req = Request {
                                datacenter: String::new(),
                                token: String::new(),
                                op,
                            };
                            let t = Instant::now();
                            let r = cl.call(&req).unwrap();
                            lat.push(t.elapsed());
                            assert!(!matches!(r, Response::Error(_)), "{r:?}");
                        }
                        lat
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let secs = t.elapsed().as_secs_f64();
        let mut all: Vec<Duration> = lats.into_iter().flatten().collect();
        let n = all.len();
        println!(
            "{what:>3}, {clients:>2} connections: {:>8.0} ops/s  p50 {:>7.0} us  p99 {:>7.0} us",
            n as f64 / secs,
            pct(&mut all, 0.5),
            pct(&mut all, 0.99)
        );
    }
    let _ = agent.kill();
    let _ = agent.wait();
}
