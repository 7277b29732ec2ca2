//! Blocking reads whose clients hang up, on a real dev agent: the reads are dropped at
//! once, on the RPC port (one core or several) and on the HTTP API, seen through the
//! agent's `cairn.kv.parked_reads` gauge (`/v1/agent/metrics`) falling back to zero long
//! before their 5-minute waits; and a client that stops sending still gets the answers
//! to the writes it sent. In a 3-server cluster, the same for blocking reads forwarded to
//! the leader by a follower or by a client agent (through a follower or not): the
//! forwarder's cancel frames drop them on the leader. A blocking read that is answered by a change or by its wait
//! running out is tested in `agent.rs` and `http.rs`. Every loop is bounded in count and
//! time; nothing asserts on timing beyond generous deadlines.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use cairn::client::RpcClient;
use cairn_net::rpc::frame::{encode, FrameDecoder, Kind};
use cairn_net::rpc::message::{Consistency, Limits, Op, ReadOpts, Response};
use support::{b, free_port, req, Cluster, CAIRN};

/// How many hung-up clients each test leaves behind.
const CLIENTS: usize = 200;
/// The blocking reads' wait: far longer than any deadline here, so only their clients'
/// hang-up can end them within the test.
const WAIT_MS: u64 = 300_000;
/// How long the agent may take to drop the reads of clients that hung up.
const RELEASE_DEADLINE: Duration = Duration::from_secs(10);

/// A dev agent with its RPC and HTTP ports, killed when dropped.
struct Agent {
    child: Child,
    rpc: String,
    http: String,
    log: std::path::PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn client(&self) -> RpcClient {
        RpcClient::connect(&self.rpc, Duration::from_secs(10)).unwrap()
    }

    fn parked_reads(&self) -> Option<u64> {
        parked_reads(&self.http)
    }

    /// Polls the gauge (every 50 ms, at most `limit`) until it is `want`.
    fn wait_parked(&self, want: u64, limit: Duration, what: &str) {
        let deadline = Instant::now() + limit;
        loop {
            let now = self.parked_reads();
            if now == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: cairn.kv.parked_reads is {now:?}, not {want}, after {limit:?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `cairn agent --dev` on free ports with `extra` flags; waits (bounded) until it has a
/// leader and its metrics answer.
fn dev(extra: &[&str]) -> Agent {
    let (rpc, http) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let log = std::env::temp_dir().join(format!(
        "cairn-blocking-test-{rpc}-{}.log",
        std::process::id()
    ));
    let child = Command::new(CAIRN)
        .args(["agent", "--dev", "--serf-lan-port", "0", "--dns-port", "-1"])
        .args(["--server-port", &rpc.to_string()])
        .args(["--http-port", &http.to_string()])
        // Do not spin idle cores: the tests share the machine.
        .args(["--spin-before-park-us", "0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let agent = Agent {
        child,
        rpc: format!("127.0.0.1:{rpc}"),
        http: format!("127.0.0.1:{http}"),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = RpcClient::connect(&agent.rpc, Duration::from_secs(2))
            .ok()
            .and_then(|mut c| c.call(&req(Op::StatusLeader)).ok());
        if matches!(leader, Some(Response::Leader(Some(_)))) && agent.parked_reads().is_some() {
            return agent;
        }
        assert!(
            Instant::now() < deadline,
            "the dev agent never came up: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `cairn.kv.parked_reads` gauge of the agent with this HTTP address, if its metrics
/// endpoint answers.
fn parked_reads(http: &str) -> Option<u64> {
    let body = http_get(http, "/v1/agent/metrics").ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["Gauges"]
        .as_array()?
        .iter()
        .find(|g| g["Name"] == "cairn.kv.parked_reads")?["Value"]
        .as_f64()
        .map(|n| n as u64)
}

/// A GET on a fresh connection; the body, once the agent closes it (at most 10 s).
fn http_get(addr: &str, path: &str) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(std::io::ErrorKind::InvalidData)?;
    Ok(out.split_off(end + 4))
}

fn frame_of(op: Op, id: u64) -> Vec<u8> {
    let mut payload = BytesMut::new();
    req(op).encode(&mut payload);
    let mut out = BytesMut::new();
    encode(&mut out, Kind::Request, id, &payload);
    out.to_vec()
}

fn opts(index: u64, consistency: Consistency) -> ReadOpts {
    ReadOpts {
        consistency,
        index,
        wait_ms: WAIT_MS,
    }
}

/// Writes `key` and returns the index of the write.
fn put(agent: &Agent, key: &str) -> u64 {
    let mut c = agent.client();
    assert!(matches!(
        support::put(&mut c, key, "v"),
        Ok(Response::Bool(true))
    ));
    match c.call(&req(Op::KvGet {
        key: b(key),
        opts: ReadOpts::default(),
    })) {
        Ok(Response::Entries { meta, .. }) => meta.index,
        other => panic!("reading back {key}: {other:?}"),
    }
}

/// Opens [`CLIENTS`] connections that each send one blocking read (gets of one key,
/// lists and key listings of its prefix; stale and default reads alternating, so on
/// several cores some are answered by the connection's own core and some by core 0),
/// waits until every read is parked, hangs them all up, and waits until the agent has
/// dropped every one. `cores`: a prefix read parks one watch on every core.
fn hang_up_parked_rpc_reads(agent: &Agent, cores: u64) {
    let index = put(agent, "watched/key");
    let mut parked = 0;
    let mut conns = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let consistency = if i % 2 == 0 {
            Consistency::Stale
        } else {
            Consistency::Default
        };
        let opts = opts(index, consistency);
        let (op, watches) = match i % 4 {
            0 | 1 => (
                Op::KvGet {
                    key: b("watched/key"),
                    opts,
                },
                1,
            ),
            2 => (
                Op::KvList {
                    prefix: b("watched/"),
                    keys_only: false,
                    separator: None,
                    opts,
                },
                cores,
            ),
            _ => (
                Op::KvList {
                    prefix: b("watched/"),
                    keys_only: true,
                    separator: Some(b("/")),
                    opts,
                },
                cores,
            ),
        };
        let mut s = TcpStream::connect(&agent.rpc).unwrap();
        s.write_all(&frame_of(op, 1)).unwrap();
        conns.push(s);
        parked += watches;
    }
    agent.wait_parked(
        parked,
        Duration::from_secs(30),
        "the blocking reads never all parked",
    );
    drop(conns);
    agent.wait_parked(
        0,
        RELEASE_DEADLINE,
        "the blocking reads of clients that hung up stayed parked",
    );
    // A write still wakes the blocking read of a client that stayed.
    let mut c = agent.client();
    let writer = {
        let (rpc, http) = (agent.rpc.clone(), agent.http.clone());
        std::thread::spawn(move || {
            // Once the read below is parked (at most 200 looks, 50 ms apart).
            for _ in 0..200 {
                if parked_reads(&http).is_some_and(|n| n > 0) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut c = RpcClient::connect(&rpc, Duration::from_secs(10)).unwrap();
            support::put(&mut c, "watched/key", "v2").unwrap();
        })
    };
    let got = c.call(&req(Op::KvGet {
        key: b("watched/key"),
        opts: opts(index, Consistency::Default),
    }));
    writer.join().unwrap();
    match got {
        Ok(Response::Entries { entries, meta }) => {
            assert_eq!(entries[0].value.as_ref(), b"v2");
            assert!(meta.index > index);
        }
        other => panic!("the blocking read of a client that stayed: {other:?}"),
    }
}

#[test]
fn blocking_reads_of_rpc_clients_that_hang_up_are_dropped_at_once() {
    let agent = dev(&[]);
    hang_up_parked_rpc_reads(&agent, 1);
}

#[test]
fn blocking_reads_of_rpc_clients_that_hang_up_are_dropped_on_every_core() {
    let agent = dev(&["--cores", "2"]);
    hang_up_parked_rpc_reads(&agent, 2);
}

#[test]
fn a_client_that_hangs_up_with_every_slot_holding_a_parked_read_is_noticed() {
    // The agent stops reading a connection's requests at 1,024 in flight (ARCHITECTURE,
    // "Limits"), but not its hang-up.
    const SLOTS: usize = 1024;
    let agent = dev(&[]);
    let index = put(&agent, "watched/key");
    let mut sent = Vec::new();
    for id in 0..SLOTS as u64 {
        sent.extend(frame_of(
            Op::KvGet {
                key: b("watched/key"),
                opts: opts(index, Consistency::Stale),
            },
            id,
        ));
    }
    let mut s = TcpStream::connect(&agent.rpc).unwrap();
    s.write_all(&sent).unwrap();
    agent.wait_parked(
        SLOTS as u64,
        Duration::from_secs(30),
        "the blocking reads never all parked",
    );
    drop(s);
    agent.wait_parked(
        0,
        RELEASE_DEADLINE,
        "the blocking reads of a client that hung up at its in-flight limit stayed parked",
    );
}

#[test]
fn blocking_gets_of_http_clients_that_hang_up_are_dropped_at_once() {
    let agent = dev(&[]);
    let index = put(&agent, "watched/key");
    let mut conns = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut s = TcpStream::connect(&agent.http).unwrap();
        write!(
            s,
            "GET /v1/kv/watched/key?index={index}&wait=5m HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        .unwrap();
        conns.push(s);
    }
    agent.wait_parked(
        CLIENTS as u64,
        Duration::from_secs(30),
        "the blocking GETs never all parked",
    );
    drop(conns);
    agent.wait_parked(
        0,
        RELEASE_DEADLINE,
        "the blocking GETs of clients that hung up stayed parked",
    );
}

#[test]
fn a_client_that_stops_sending_gets_its_writes_answered_and_its_blocking_reads_dropped() {
    let agent = dev(&[]);
    let index = put(&agent, "watched/key");
    let mut s = TcpStream::connect(&agent.rpc).unwrap();
    let mut sent = frame_of(
        Op::KvGet {
            key: b("watched/key"),
            opts: opts(index, Consistency::Default),
        },
        1,
    );
    sent.extend(frame_of(
        Op::KvPut {
            key: b("written"),
            value: b("yes"),
            flags: 0,
            cas: None,
            acquire: None,
            release: None,
        },
        2,
    ));
    s.write_all(&sent).unwrap();
    // Stop sending, keep reading: the put's answer comes, the get is dropped unanswered,
    // and the agent closes the connection.
    s.shutdown(Shutdown::Write).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let closed = s.read_to_end(&mut got).is_ok();
    assert!(
        closed,
        "the agent kept the connection open after the client stopped sending \
         (its blocking read still parked?)"
    );
    let mut buf = BytesMut::from(&got[..]);
    let decoder = FrameDecoder::for_responses();
    let mut answers = Vec::new();
    while let Some(f) = decoder.decode(&mut buf).unwrap() {
        answers.push((
            f.id,
            Response::decode(&f.payload, &Limits::default()).unwrap(),
        ));
    }
    assert_eq!(answers, vec![(2, Response::Bool(true))]);
    let mut c = agent.client();
    match c.call(&req(Op::KvGet {
        key: b("written"),
        opts: ReadOpts::default(),
    })) {
        Ok(Response::Entries { entries, .. }) => assert_eq!(entries[0].value.as_ref(), b"yes"),
        other => panic!("the put was not applied: {other:?}"),
    }
    assert_eq!(agent.parked_reads(), Some(0));
}

#[test]
fn a_cancel_frame_drops_its_blocking_read_and_nothing_else() {
    let agent = dev(&[]);
    let index = put(&agent, "watched/key");
    let get = Op::KvGet {
        key: b("watched/key"),
        opts: opts(index, Consistency::Default),
    };
    let mut s = TcpStream::connect(&agent.rpc).unwrap();
    let mut sent = frame_of(get.clone(), 1);
    sent.extend(frame_of(get, 2));
    s.write_all(&sent).unwrap();
    agent.wait_parked(
        2,
        Duration::from_secs(30),
        "the blocking reads never parked",
    );
    // Cancel read 1, an id never sent, and a write's id (the write runs to its end).
    let mut cancels = BytesMut::new();
    cairn_net::rpc::frame::encode_cancel(&mut cancels, 1);
    cairn_net::rpc::frame::encode_cancel(&mut cancels, 99);
    let mut sent = cancels.to_vec();
    sent.extend(frame_of(
        Op::KvPut {
            key: b("other/key"),
            value: b("yes"),
            flags: 0,
            cas: None,
            acquire: None,
            release: None,
        },
        3,
    ));
    cairn_net::rpc::frame::encode_cancel(&mut cancels, 3);
    sent.extend_from_slice(&cancels[2 * cairn_net::rpc::frame::HEADER_LEN..]);
    s.write_all(&sent).unwrap();
    agent.wait_parked(
        1,
        RELEASE_DEADLINE,
        "the cancelled blocking read stayed parked",
    );
    // The connection is still usable: a write wakes read 2, the put is answered, and
    // read 1 never is.
    let mut c = agent.client();
    support::put(&mut c, "watched/key", "v2").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let decoder = FrameDecoder::for_responses();
    let mut buf = BytesMut::new();
    let mut answers = Vec::new();
    let mut chunk = [0u8; 4096];
    while answers.len() < 2 {
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "the agent closed the connection; answers: {answers:?}"
        );
        buf.extend_from_slice(&chunk[..n]);
        while let Some(f) = decoder.decode(&mut buf).unwrap() {
            let resp = Response::decode(&f.payload, &Limits::default()).unwrap();
            answers.push((
                f.id,
                matches!(resp, Response::Bool(true) | Response::Entries { .. }),
            ));
        }
    }
    answers.sort();
    assert_eq!(answers, vec![(2, true), (3, true)]);
    assert_eq!(agent.parked_reads(), Some(0));
}

/// The `cairn.kv.parked_reads` gauges of every server of `c` with its HTTP API on, summed
/// (`None` while one does not answer).
fn cluster_parked(c: &Cluster) -> Option<u64> {
    c.servers
        .iter()
        .filter_map(|s| s.http.as_deref())
        .map(parked_reads)
        .sum()
}

/// Polls [`cluster_parked`] (every 50 ms, at most `limit`) until it is `want`.
fn wait_cluster_parked(c: &Cluster, want: u64, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let now = cluster_parked(c);
        if now == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: cairn.kv.parked_reads summed over the servers is {now:?}, not {want}, \
             after {limit:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends [`CLIENTS`] blocking gets (default consistency: they run on the leader) on
/// connections of their own to the agent at `rpc`, which forwards them, waits until all
/// are parked on the servers, hangs them all up, and waits until the servers dropped every
/// one; then a write through `rpc` still wakes the blocking read of a client that stayed.
fn hang_up_forwarded_reads(c: &Cluster, leader: usize, rpc: &str) {
    let mut w = c.servers[leader].client(Duration::from_secs(10)).unwrap();
    assert!(matches!(
        support::put(&mut w, "forwarded/key", "v"),
        Ok(Response::Bool(true))
    ));
    let index = match w.call(&req(Op::KvGet {
        key: b("forwarded/key"),
        opts: ReadOpts::default(),
    })) {
        Ok(Response::Entries { meta, .. }) => meta.index,
        other => panic!("reading back forwarded/key: {other:?}"),
    };
    let get = Op::KvGet {
        key: b("forwarded/key"),
        opts: opts(index, Consistency::Default),
    };
    let mut conns = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let mut s = TcpStream::connect(rpc).unwrap();
        s.write_all(&frame_of(get.clone(), 1)).unwrap();
        conns.push(s);
    }
    wait_cluster_parked(
        c,
        CLIENTS as u64,
        Duration::from_secs(30),
        "the forwarded blocking reads never all parked",
    );
    let on_leader = parked_reads(c.servers[leader].http.as_deref().unwrap());
    assert_eq!(on_leader, Some(CLIENTS as u64), "parked off the leader");
    drop(conns);
    wait_cluster_parked(
        c,
        0,
        RELEASE_DEADLINE,
        "the forwarded blocking reads of clients that hung up stayed parked on the leader",
    );
    // Forwarding still works, and a write wakes a forwarded read whose client stayed.
    let mut stay = RpcClient::connect(rpc, Duration::from_secs(30)).unwrap();
    let writer = {
        let (rpc, http) = (rpc.to_string(), c.servers[leader].http.clone().unwrap());
        std::thread::spawn(move || {
            // Once the read below is parked (at most 200 looks, 50 ms apart).
            for _ in 0..200 {
                if parked_reads(&http).is_some_and(|n| n > 0) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let mut c = RpcClient::connect(&rpc, Duration::from_secs(10)).unwrap();
            support::put(&mut c, "forwarded/key", "v2").unwrap();
        })
    };
    let got = stay.call(&req(get));
    writer.join().unwrap();
    match got {
        Ok(Response::Entries { entries, meta }) => {
            assert_eq!(entries[0].value.as_ref(), b"v2");
            assert!(meta.index > index);
        }
        other => panic!("the forwarded blocking read of a client that stayed: {other:?}"),
    }
    assert_eq!(cluster_parked(c), Some(0));
}

#[test]
fn blocking_reads_a_follower_forwarded_are_dropped_on_the_leader_when_their_clients_hang_up() {
    let c = Cluster::start_with_http(3, &["--spin-before-park-us", "0"]);
    let leader = c.wait_for_leader(Duration::from_secs(30));
    let follower = c.other_than(leader);
    hang_up_forwarded_reads(&c, leader, &c.servers[follower].addr());
}

#[test]
fn blocking_reads_a_client_agent_forwarded_are_dropped_on_the_servers_when_their_clients_hang_up() {
    let mut c = Cluster::start_with_http(3, &["--spin-before-park-us", "0"]);
    let leader = c.wait_for_leader(Duration::from_secs(30));
    let agent = c.add_client_with(&["--spin-before-park-us", "0"]);
    let rpc = c.servers[agent].addr();
    // Until the client agent knows the servers from the gossip pool (at most 30 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader_seen = RpcClient::connect(&rpc, Duration::from_secs(2))
            .ok()
            .and_then(|mut c| c.call(&req(Op::StatusLeader)).ok());
        if matches!(leader_seen, Some(Response::Leader(Some(_)))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the client agent never reached a server: {}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    hang_up_forwarded_reads(&c, leader, &rpc);
}
