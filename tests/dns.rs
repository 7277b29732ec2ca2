//! The DNS interface over real sockets: the glommio server in-process on a loopback port,
//! over a catalog held in memory, asked by `dig` (installed with apt-get when missing)
//! and by raw UDP and TCP clients sending garbage, pipelined queries and nothing at all.
//!
//! Every wait is bounded (dig's own timeouts, socket read timeouts); no time is asserted.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn::catalog::{Catalog, Check, Registration, Service, Status};
use cairn::dns::{CatalogView, DnsConfig, DnsServer, DnsStats};
use glommio::{LocalExecutorBuilder, Placement};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use rand::{Rng, SeedableRng};

/// Bound on every client read: a server that stopped answering fails the test instead of
/// hanging it.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

fn register(c: &mut Catalog, node: &str, addr: &str, service: &str, port: u16, status: Status) {
    let index = c.nodes().1 + 1;
    c.register(
        index,
        &Registration {
            node: node.into(),
            address: addr.into(),
            datacenter: "dc1".into(),
            service: Some(Service {
                name: service.into(),
                tags: vec!["v1".into()],
                port,
                ..Service::default()
            }),
            checks: vec![Check {
                id: format!("{service}-check"),
                name: "check".into(),
                node: node.into(),
                status,
                output: String::new(),
                service_id: service.into(),
                service_name: service.into(),
                kind: "ttl".into(),
                create_index: 0,
                modify_index: 0,
            }],
            ..Registration::default()
        },
    )
    .unwrap();
}

/// `web` on web1 and web2 (web3's check is critical), and 100 instances of `many`.
fn catalog() -> Catalog {
    let mut c = Catalog::default();
    register(&mut c, "web1", "10.0.0.1", "web", 80, Status::Passing);
    register(&mut c, "web2", "10.0.0.2", "web", 8080, Status::Warning);
    register(&mut c, "web3", "10.0.0.3", "web", 80, Status::Critical);
    for i in 0..100u16 {
        let addr = format!("10.1.0.{}", i + 1);
        register(
            &mut c,
            &format!("many-{i}"),
            &addr,
            "many",
            7000 + i,
            Status::Passing,
        );
    }
    c
}

/// A DNS server on its own executor thread.
struct Running {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: glommio::ExecutorJoinHandle<DnsStats>,
}

impl Running {
    fn start(name: &str, cfg: DnsConfig) -> Running {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = LocalExecutorBuilder::new(Placement::Unbound)
            .io_memory(cairn::runtime::MIN_IO_MEMORY)
            .name(name)
            .spawn(move || async move {
                let view = Rc::new(CatalogView {
                    datacenter: "dc1".into(),
                    catalog: Rc::new(RefCell::new(catalog())),
                });
                let server = DnsServer::bind("127.0.0.1:0".parse().unwrap()).expect("binding");
                let stats = server.stats();
                tx.send(server.local_addr()).unwrap();
                let until_stopped = async {
                    while !stopped.load(Ordering::SeqCst) {
                        glommio::timer::sleep(Duration::from_millis(20)).await;
                    }
                };
                let serve = async { server.serve(view, cfg).await.expect("a valid config") };
                futures_lite::future::or(serve, until_stopped).await;
                stats.get()
            })
            .expect("starting an executor (RLIMIT_MEMLOCK too low?)");
        let addr = rx.recv_timeout(CLIENT_TIMEOUT).expect("the server bound");
        Running { addr, stop, thread }
    }

    /// Stops the server and returns its counters.
    fn stop(self) -> DnsStats {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the server thread")
    }
}

/// `dig`, installing dnsutils with apt-get if it is missing. `None` (said loudly) only if
/// it cannot be installed.
fn dig_available() -> bool {
    let present = || Command::new("dig").arg("-v").output().is_ok();
    if present() {
        return true;
    }
    eprintln!("dig is missing: installing dnsutils with apt-get");
    let install = || {
        Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "-o",
                "DPkg::Lock::Timeout=300",
                "dnsutils",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get")
            .args(["update", "-qq", "-o", "DPkg::Lock::Timeout=300"])
            .status();
        install();
    }
    if present() {
        return true;
    }
    eprintln!(
        "SKIPPED: dig is missing and `apt-get install dnsutils` failed; the dig checks did not run"
    );
    false
}

/// Runs dig against the server; returns its output.
fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+time=3", "+tries=2"])
        .args(args)
        .output()
        .expect("running dig");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "dig {args:?} failed: {text}");
    text
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

#[test]
fn dig_resolves_nodes_and_services_over_udp_and_tcp() {
    if !dig_available() {
        return;
    }
    let server = Running::start("dns-dig", DnsConfig::default());
    let a = server.addr;

    assert_eq!(
        sorted_lines(&dig(a, &["+short", "web1.node.consul", "A"])),
        ["10.0.0.1"]
    );
    assert_eq!(
        sorted_lines(&dig(a, &["+short", "WEB1.node.DC1.consul", "A"])),
        ["10.0.0.1"]
    );
    // web3 is critical: gone; web2 is warning: answered.
    assert_eq!(
        sorted_lines(&dig(a, &["+short", "web.service.consul", "A"])),
        ["10.0.0.1", "10.0.0.2"]
    );
    let srv = [
        "1 1 80 web1.node.dc1.consul.",
        "1 1 8080 web2.node.dc1.consul.",
    ];
    assert_eq!(
        sorted_lines(&dig(a, &["+short", "web.service.consul", "SRV"])),
        srv
    );
    assert_eq!(
        sorted_lines(&dig(a, &["+short", "_web._tcp.service.consul", "SRV"])),
        srv
    );
    assert_eq!(
        sorted_lines(&dig(a, &["+short", "+tcp", "v1.web.service.consul", "SRV"])),
        srv
    );
    let extra = dig(a, &["+noall", "+additional", "web.service.consul", "SRV"]);
    assert!(
        extra.contains("web1.node.dc1.consul.") && extra.contains("10.0.0.1"),
        "{extra}"
    );

    let nx = dig(a, &["nope.node.consul", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains("AUTHORITY: 1") && nx.contains("SOA"), "{nx}");
    let nx = dig(a, &["web1.node.dc2.consul", "A"]);
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    let nodata = dig(a, &["web1.node.consul", "AAAA"]);
    assert!(
        nodata.contains("status: NOERROR") && nodata.contains("ANSWER: 0"),
        "{nodata}"
    );
    let refused = dig(a, &["example.com", "A"]);
    assert!(refused.contains("status: REFUSED"), "{refused}");

    // 100 instances: plain UDP gets udp_answer_limit of them, EDNS0 UDP as many as fit
    // with TC set, TCP all of them.
    assert_eq!(
        sorted_lines(&dig(a, &["+short", "+noedns", "many.service.consul"])).len(),
        3
    );
    let cut = dig(
        a,
        &["+ignore", "+bufsize=1232", "many.service.consul", "SRV"],
    );
    assert!(cut.contains(" tc"), "no TC flag: {cut}");
    assert_eq!(
        sorted_lines(&dig(a, &["+short", "+tcp", "many.service.consul"])).len(),
        100
    );
    // Without +ignore, dig retries a truncated answer over TCP by itself.
    assert_eq!(
        sorted_lines(&dig(a, &["+short", "many.service.consul", "SRV"])).len(),
        100
    );

    let stats = server.stop();
    assert!(
        stats.udp_answered > 0 && stats.tcp_answered > 0,
        "{stats:?}"
    );
    assert!(
        stats.truncated >= 2,
        "two EDNS0 answers were cut: {stats:?}"
    );
    assert_eq!(stats.servfail, 0, "{stats:?}");
}

fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

/// Sends a query and returns the response with its id, skipping late answers to
/// earlier packets (at most 1,000 of them). Like a resolver, it asks again when no answer
/// comes (UDP may drop the datagram, and the server drops queries when it is busy): up to
/// 5 times, waiting the socket's read timeout each time.
fn udp_ask(sock: &UdpSocket, to: SocketAddr, packet: &[u8]) -> Message {
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let mut buf = [0u8; 4096];
    for _attempt in 0..5 {
        sock.send_to(packet, to).unwrap();
        for _ in 0..1000 {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                break;
            };
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                return Message::from_vec(&buf[..n]).expect("a well-formed response");
            }
        }
    }
    panic!("no answer with id {id} after 5 attempts")
}

#[test]
fn a_repeated_query_is_answered_from_the_cache_still_shuffled() {
    let server = Running::start("dns-cache", DnsConfig::default());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(CLIENT_TIMEOUT / 5)).unwrap();
    // 100 passing instances, 3 answers per plain UDP response: which 3, and in which
    // order, must still vary from query to query once the answer is cached.
    let mut seen = std::collections::HashSet::new();
    for id in 0..64u16 {
        let r = udp_ask(
            &sock,
            server.addr,
            &query(id, "many.service.consul.", RecordType::SRV),
        );
        assert_eq!(r.metadata.id, id);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 3, "{r:?}");
        assert_eq!(r.additionals.len(), 3, "{r:?}");
        let ports: Vec<u16> = r
            .answers
            .iter()
            .map(|a| match &a.data {
                RData::SRV(srv) => srv.port,
                other => panic!("{other:?}"),
            })
            .collect();
        seen.insert(ports);
    }
    // 64 draws from 16 cached shuffles (each a random 3 of 100): one alone would mean
    // the cache froze the order.
    assert!(seen.len() > 1, "{seen:?}");
    let stats = server.stop();
    assert_eq!(stats.udp_answered, 64, "{stats:?}");
}

fn tcp_read(stream: &mut TcpStream) -> Option<Message> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(Message::from_vec(&body).expect("a well-formed response"))
}

fn framed(packet: &[u8]) -> Vec<u8> {
    let mut out = (packet.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(packet);
    out
}

#[test]
fn garbage_does_not_stop_the_server_and_tcp_serves_pipelined_queries() {
    let cfg = DnsConfig {
        tcp_idle_timeout: Duration::from_secs(2),
        ..DnsConfig::default()
    };
    let server = Running::start("dns-garbage", cfg);
    let a = server.addr;
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(CLIENT_TIMEOUT / 5)).unwrap();

    // Garbage of every length, runts, a response, a query cut short.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x0d15ea5e);
    for len in 0..300 {
        let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        sock.send_to(&junk, a).unwrap();
    }
    let valid = query(7, "web1.node.consul.", RecordType::A);
    sock.send_to(&valid[..valid.len() - 2], a).unwrap();
    // The server still answers (skipping the FORMERRs some garbage drew).
    let r = udp_ask(&sock, a, &query(42, "web1.node.consul.", RecordType::A));
    assert_eq!(
        (r.metadata.id, r.metadata.response_code),
        (42, ResponseCode::NoError)
    );
    assert!(matches!(r.answers[0].data, RData::A(_)));

    // TCP: two queries and a garbage message in one write, answered in order; the
    // garbage (not a query) gets no answer and the connection stays usable.
    let mut c1 = TcpStream::connect(a).unwrap();
    c1.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    let mut batch = framed(&query(1, "web.service.consul.", RecordType::SRV));
    batch.extend(framed(&[0xff; 5]));
    batch.extend(framed(&query(2, "nope.node.consul.", RecordType::A)));
    c1.write_all(&batch).unwrap();
    let r1 = tcp_read(&mut c1).expect("first answer");
    assert_eq!((r1.metadata.id, r1.answers.len()), (1, 2));
    let r2 = tcp_read(&mut c1).expect("second answer");
    assert_eq!(
        (r2.metadata.id, r2.metadata.response_code),
        (2, ResponseCode::NXDomain)
    );

    // A connection that sends nothing is closed after the idle timeout.
    let mut idle = TcpStream::connect(a).unwrap();
    idle.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    assert!(
        tcp_read(&mut idle).is_none(),
        "the idle connection was not closed"
    );
    drop(idle);
    drop(c1);

    // UDP still answers after all of it.
    let r = udp_ask(&sock, a, &query(43, "web.service.consul.", RecordType::A));
    assert_eq!(r.metadata.id, 43);
    let stats = server.stop();
    eprintln!("{stats:?}");
    assert!(stats.udp_dropped_garbage > 0, "{stats:?}");
    assert!(stats.tcp_dropped_garbage >= 1, "{stats:?}");
    assert!(
        stats.tcp_closed_early >= 1,
        "the idle connection: {stats:?}"
    );
}

#[test]
fn tcp_connections_past_the_cap_are_closed_on_accept() {
    let cfg = DnsConfig {
        max_tcp_connections: 2,
        // Far longer than the test: the held connections stay open.
        tcp_idle_timeout: Duration::from_secs(120),
        ..DnsConfig::default()
    };
    let server = Running::start("dns-cap", cfg);
    // Each held connection is proven accepted by an answer, so two are open.
    let mut held = Vec::new();
    for id in 10..12 {
        let mut c = TcpStream::connect(server.addr).unwrap();
        c.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        c.write_all(&framed(&query(id, "web1.node.consul.", RecordType::A)))
            .unwrap();
        assert_eq!(tcp_read(&mut c).expect("an answer").metadata.id, id);
        held.push(c);
    }
    let mut third = TcpStream::connect(server.addr).unwrap();
    third.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    // The write may fail if the close came first; either way no answer comes.
    let _ = third.write_all(&framed(&query(99, "web1.node.consul.", RecordType::A)));
    assert!(
        tcp_read(&mut third).is_none(),
        "a third connection was served"
    );
    // A held one still works.
    held[0]
        .write_all(&framed(&query(13, "web1.node.consul.", RecordType::A)))
        .unwrap();
    assert_eq!(tcp_read(&mut held[0]).expect("an answer").metadata.id, 13);
    drop(held);
    let stats = server.stop();
    assert_eq!((stats.tcp_accepted, stats.tcp_refused), (2, 1), "{stats:?}");
}

#[test]
fn a_second_server_on_the_port_is_an_error_not_a_split() {
    let server = Running::start("dns-first", DnsConfig::default());
    let addr = server.addr;
    let second = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(cairn::runtime::MIN_IO_MEMORY)
        .name("dns-second")
        .spawn(move || async move { DnsServer::bind(addr).err().map(|e| e.to_string()) })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(second, Some(format!("DNS port {addr} is already in use")));
    server.stop();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `cairn agent --dev` with `--dns-port`: services from its `--config-dir` are
/// answered by dig once their checks pass, and drop out when a check fails.
#[test]
fn a_dev_agent_answers_dig_from_its_catalog_and_drops_a_failing_instance() {
    if !dig_available() {
        return;
    }
    let cfg = tempfile::tempdir().unwrap();
    std::fs::write(
        cfg.path().join("svc.json"),
        r#"{"services": [
            {"name": "web", "tags": ["v1"], "port": 8080,
             "check": {"id": "web-ttl", "ttl": "60s", "status": "passing"}},
            {"name": "api", "port": 9090,
             "check": {"id": "api-ttl", "ttl": "60s"}}
        ]}"#,
    )
    .unwrap();
    let (rpc, dns) = (free_port(), free_port());
    let log = cfg.path().join("agent.log");
    // Killed on drop, so a failed assertion does not leave the agent running.
    struct Agent(std::process::Child);
    impl Drop for Agent {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "agent",
            "--dev",
            "--node",
            "dnsnode",
            "--serf-lan-port",
            "0",
        ])
        .args(["--http-port", "-1", "--server-port", &rpc.to_string()])
        .args(["--dns-port", &dns.to_string()])
        .args(["--config-dir", cfg.path().to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let agent = Agent(child);
    let addr: SocketAddr = format!("127.0.0.1:{dns}").parse().unwrap();
    let short = |name: &str, t: &str| dig(addr, &["+short", name, t]);
    // Wait (bounded) until anti-entropy registered web with its passing check.
    let mut web = String::new();
    for _ in 0..100 {
        // Until the agent is up, dig fails to connect: try again.
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &dns.to_string(), "+time=1", "+tries=1"])
            .args(["+short", "web.service.consul", "A"])
            .output()
            .expect("running dig");
        web = String::from_utf8_lossy(&out.stdout).into_owned();
        if web.trim() == "127.0.0.1" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(web.trim(), "127.0.0.1", "{}", logs());
    assert_eq!(short("dnsnode.node.consul", "A").trim(), "127.0.0.1");
    assert_eq!(short("v1.web.service.consul", "A").trim(), "127.0.0.1");
    assert_eq!(
        short("_web._v1.service.consul", "SRV").trim(),
        "1 1 8080 dnsnode.node.dc1.consul."
    );
    // The same query again and again (only the id differs), as a load tool sends it:
    // from the second on it is answered from the server's answer cache.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let ask_web = |id: u16| {
        udp_ask(
            &sock,
            addr,
            &query(id, "web.service.consul.", RecordType::SRV),
        )
    };
    for id in 1..=20u16 {
        let r = ask_web(id);
        assert_eq!(r.metadata.id, id);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1, "{r:?}");
    }
    // api's check starts critical: no answer, NXDOMAIN.
    let api = dig(addr, &["api.service.consul", "A"]);
    assert!(api.contains("status: NXDOMAIN"), "{api}");
    // web's TTL check fails: it disappears from answers.
    let mut c = cairn::client::RpcClient::connect(&format!("127.0.0.1:{rpc}"), CLIENT_TIMEOUT)
        .expect("connect");
    let r = c
        .call(&cairn_net::rpc::message::Request {
            datacenter: String::new(),
            token: String::new(),
            op: cairn_net::rpc::message::Op::AgentCheckUpdate {
                id: "web-ttl".into(),
                status: Status::Critical,
                output: "down".into(),
            },
        })
        .unwrap();
    assert_eq!(r, cairn_net::rpc::message::Response::Bool(true));
    let mut gone = false;
    for _ in 0..100 {
        if dig(addr, &["web.service.consul", "A"]).contains("status: NXDOMAIN") {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The cached query sees the failure as soon as a stale read does (dig's queries
    // carry a fresh cookie each, so they never come from the cache).
    let r = ask_web(21);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{r:?}");
    drop(agent);
    assert!(
        gone,
        "web still answered after its check failed\n{}",
        logs()
    );
}
