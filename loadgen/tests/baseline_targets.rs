//! The baseline targets: the RESP and HTTP/JSON codecs as pure functions (malformed
//! replies are errors, never panics), the in-order session on top of them, and a real
//! `redis-server` driven by `loadgen kv` for a second.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_net::rpc::message::Consistency;
use loadgen::kv::{preload, run, KvRun};
use loadgen::measure::ErrorKind;
use loadgen::targets::http::{self, base64, HttpError};
use loadgen::targets::resp::{self, Reply, RespError};
use loadgen::targets::{
    consul_http, etcd, parse_servers, Fifo, Kind, SendError, Session, TargetError,
};
use loadgen::workload::{KeyDist, Mix, Op};

// ---- addresses ----------------------------------------------------------------------

#[test]
fn servers_without_a_scheme_are_cairn_and_later_ones_inherit_the_scheme_before_them() {
    let s = |v: &[&str]| parse_servers(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    let t = s(&["127.0.0.1:8300"]).unwrap();
    assert_eq!(t.kind, Kind::Cairn);
    assert_eq!(t.addrs, ["127.0.0.1:8300"]);
    let t = s(&[
        "etcd://127.0.0.11:2379",
        "127.0.0.12:2379",
        "etcd://127.0.0.13:2379/",
    ])
    .unwrap();
    assert_eq!(t.kind, Kind::Etcd);
    assert_eq!(
        t.addrs,
        ["127.0.0.11:2379", "127.0.0.12:2379", "127.0.0.13:2379"]
    );
    assert_eq!(s(&["consul+http://h:8500"]).unwrap().kind, Kind::ConsulHttp);
    assert_eq!(s(&["cairn://h:8300"]).unwrap().kind, Kind::Cairn);
    assert!(matches!(
        s(&["redis://a:1", "etcd://b:2"]),
        Err(TargetError::Mixed { .. })
    ));
    assert!(matches!(
        s(&["memcached://a:1"]),
        Err(TargetError::Scheme(_))
    ));
    assert!(matches!(
        s(&["redis://nohost"]),
        Err(TargetError::Address(_))
    ));
    assert!(matches!(
        s(&["redis://a:99999"]),
        Err(TargetError::Address(_))
    ));
    assert_eq!(s(&[]), Err(TargetError::Empty));
}

#[test]
fn redis_refuses_the_list_workload_with_the_reason() {
    let e = Kind::Redis.supports(Mix::List).unwrap_err().to_string();
    assert!(e.contains("list") && e.contains("Redis"), "{e}");
    assert!(Kind::Redis.supports(Mix::Cas).is_ok());
    assert!(Kind::Etcd.supports(Mix::List).is_ok());
}

// ---- RESP ---------------------------------------------------------------------------

#[test]
fn resp_commands_are_arrays_of_bulk_strings() {
    let mut out = Vec::new();
    resp::encode_command(&[b"SET", b"k", b"v\r\n"], &mut out);
    assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n");
}

#[test]
fn resp_parses_every_reply_type_and_says_how_many_bytes_it_took() {
    let cases: &[(&[u8], Reply)] = &[
        (b"+OK\r\n", Reply::Simple("OK".into())),
        (b"-ERR wrong\r\n", Reply::Error("ERR wrong".into())),
        (b":-42\r\n", Reply::Integer(-42)),
        (b"$3\r\nfoo\r\n", Reply::Bulk(Some(b"foo".to_vec()))),
        (b"$0\r\n\r\n", Reply::Bulk(Some(Vec::new()))),
        (b"$-1\r\n", Reply::Bulk(None)),
        (b"*-1\r\n", Reply::Array(None)),
        (
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"a".to_vec())),
                Reply::Array(Some(vec![Reply::Integer(1)])),
            ])),
        ),
    ];
    for (bytes, want) in cases {
        let mut buf = bytes.to_vec();
        buf.extend_from_slice(b"+NEXT\r\n");
        let (got, used) = resp::parse_reply(&buf).unwrap().unwrap();
        assert_eq!(&got, want);
        assert_eq!(used, bytes.len());
    }
}

#[test]
fn an_incomplete_resp_reply_asks_for_more_at_every_cut() {
    let full: &[u8] = b"*2\r\n$5\r\nhello\r\n+OK\r\n";
    for cut in 0..full.len() {
        assert_eq!(resp::parse_reply(&full[..cut]), Ok(None), "cut at {cut}");
    }
    assert!(resp::parse_reply(full).unwrap().is_some());
}

#[test]
fn malformed_resp_replies_are_errors_not_panics() {
    assert_eq!(
        resp::parse_reply(b"?what\r\n"),
        Err(RespError::UnknownType(b'?'))
    );
    assert!(matches!(
        resp::parse_reply(b"$abc\r\n"),
        Err(RespError::BadNumber(_))
    ));
    assert!(matches!(
        resp::parse_reply(b":12x\r\n"),
        Err(RespError::BadNumber(_))
    ));
    assert_eq!(resp::parse_reply(b"$-5\r\n"), Err(RespError::TooLarge(-5)));
    assert_eq!(
        resp::parse_reply(b"$999999999999\r\n"),
        Err(RespError::TooLarge(999_999_999_999))
    );
    assert_eq!(
        resp::parse_reply(b"$3\r\nfooXY"),
        Err(RespError::MissingCrlf)
    );
    assert_eq!(resp::parse_reply(b"+\xff\xfe\r\n"), Err(RespError::NotUtf8));
    let deep = "*1\r\n".repeat(resp::MAX_DEPTH + 2) + ":1\r\n";
    assert_eq!(resp::parse_reply(deep.as_bytes()), Err(RespError::TooDeep));
    let long = vec![b'+'; resp::MAX_LINE_BYTES + 10];
    assert_eq!(resp::parse_reply(&long), Err(RespError::LineTooLong));
    // Arbitrary bytes never panic.
    let mut x = 0x9e37_79b9u32;
    for _ in 0..20_000 {
        let len = (x % 24) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                b"+-:$*\r\n0123-9ab"[(x % 15) as usize]
            })
            .collect();
        let _ = resp::parse_reply(&bytes);
    }
}

#[test]
fn redis_replies_map_to_outcomes_by_operation() {
    let ok = Reply::Simple("OK".into());
    assert_eq!(resp::outcome(Op::Write(1), &ok), Ok(()));
    assert_eq!(resp::outcome(Op::Read(1), &Reply::Bulk(None)), Ok(()));
    assert_eq!(
        resp::outcome(Op::Cas(1), &Reply::Bulk(None))
            .unwrap_err()
            .kind,
        ErrorKind::CasFailed
    );
    let e = resp::outcome(Op::Write(1), &Reply::Error("OOM".into())).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Other);
    assert!(e.detail.contains("OOM"));
    assert!(resp::outcome(Op::Read(1), &Reply::Integer(3)).is_err());
}

// ---- HTTP ---------------------------------------------------------------------------

#[test]
fn http_requests_carry_host_type_and_length() {
    let mut out = Vec::new();
    http::encode_request(
        "POST",
        "127.0.0.1:2379",
        "/v3/kv/put",
        Some("application/json"),
        b"{}",
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1:2379\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    );
}

#[test]
fn http_responses_parse_with_length_chunked_close_and_interim() {
    let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
    let mut buf = r.to_vec();
    buf.extend_from_slice(b"HTTP/1.1 404");
    let (resp, used) = http::parse_response(&buf, false).unwrap().unwrap();
    assert_eq!(
        (resp.status, resp.body.as_slice(), resp.close),
        (200, &b"hello"[..], false)
    );
    assert_eq!(used, r.len());

    let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nConnection: close\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: 1\r\n\r\n";
    let (resp, used) = http::parse_response(chunked, false).unwrap().unwrap();
    assert_eq!(resp.body, b"abcde");
    assert!(resp.close);
    assert_eq!(used, chunked.len());
    for cut in 0..chunked.len() {
        assert_eq!(
            http::parse_response(&chunked[..cut], false),
            Ok(None),
            "cut {cut}"
        );
    }

    let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 204 No Content\r\n\r\n";
    let (resp, used) = http::parse_response(interim, false).unwrap().unwrap();
    assert_eq!((resp.status, resp.close, used), (204, true, interim.len()));
}

#[test]
fn malformed_http_responses_are_errors_not_panics() {
    let p = |b: &[u8]| http::parse_response(b, false);
    assert!(matches!(
        p(b"SMTP 220 hi\r\n\r\n"),
        Err(HttpError::StatusLine(_))
    ));
    assert!(matches!(
        p(b"HTTP/1.1 2x0 OK\r\n\r\n"),
        Err(HttpError::StatusLine(_))
    ));
    assert!(matches!(
        p(b"HTTP/1.1\r\n\r\n"),
        Err(HttpError::StatusLine(_))
    ));
    assert!(matches!(
        p(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"),
        Err(HttpError::Header(_))
    ));
    assert!(matches!(
        p(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"),
        Err(HttpError::ContentLength(_))
    ));
    assert!(matches!(
        p(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
        Err(HttpError::ContentLength(_))
    ));
    assert_eq!(
        p(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n"),
        Err(HttpError::BodyTooLarge)
    );
    assert_eq!(p(b"HTTP/1.1 200 OK\r\n\r\n"), Err(HttpError::NoLength));
    assert!(matches!(
        p(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"),
        Err(HttpError::TransferEncoding(_))
    ));
    assert!(matches!(
        p(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        Err(HttpError::ChunkSize(_))
    ));
    assert_eq!(
        p(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY"),
        Err(HttpError::ChunkEnd)
    );
    let huge = vec![b'a'; http::MAX_HEAD_BYTES + 10];
    assert_eq!(p(&huge), Err(HttpError::HeadTooLarge));
}

#[test]
fn base64_round_trips_and_rejects_bad_input() {
    for (plain, coded) in [
        (&b""[..], ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"loadgen/000000000042", "bG9hZGdlbi8wMDAwMDAwMDAwNDI="),
        (&[0xff, 0xfe, 0x00][..], "//4A"),
    ] {
        assert_eq!(base64::encode(plain), coded);
        assert_eq!(base64::decode(coded).unwrap(), plain);
    }
    for bad in ["Zm9", "Zm9v!A==", "Z===", "=Zm9", "Zg==Zm9v", "Zm=v"] {
        assert!(base64::decode(bad).is_err(), "{bad}");
    }
}

// ---- etcd JSON ----------------------------------------------------------------------

#[test]
fn etcd_request_bodies_are_the_gateways_json_with_base64() {
    assert_eq!(
        etcd::put_body(b"foo", b"bar"),
        r#"{"key":"Zm9v","value":"YmFy"}"#
    );
    assert_eq!(
        etcd::range_body(b"foo", true),
        r#"{"key":"Zm9v","serializable":true}"#
    );
    assert_eq!(
        etcd::range_body(b"foo", false),
        r#"{"key":"Zm9v","serializable":false}"#
    );
    // "foo" .. "fop": every key that starts with foo.
    assert_eq!(
        etcd::prefix_body(b"foo", false),
        r#"{"key":"Zm9v","range_end":"Zm9w","keys_only":true,"serializable":false}"#
    );
    assert_eq!(etcd::prefix_end(b"a\xff"), b"b");
    assert_eq!(etcd::prefix_end(b"\xff\xff"), b"\0");
    let txn: serde_json::Value = serde_json::from_str(&etcd::create_txn_body(b"k", b"v")).unwrap();
    assert_eq!(txn["compare"][0]["create_revision"], "0");
    assert_eq!(txn["success"][0]["request_put"]["value"], "dg==");
}

#[test]
fn etcd_replies_parse_and_errors_are_reported_not_panicked() {
    let found = br#"{"header":{"cluster_id":"1","revision":"7"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"7","version":"3","value":"YmFy"}],"count":"1"}"#;
    let kvs = etcd::parse_range(found).unwrap();
    assert_eq!(
        kvs,
        [etcd::KeyValue {
            key: b"foo".to_vec(),
            value: b"bar".to_vec()
        }]
    );
    assert_eq!(
        etcd::parse_range(br#"{"header":{"revision":"7"}}"#),
        Ok(vec![])
    );
    assert_eq!(etcd::parse_put(br#"{"header":{"revision":"8"}}"#), Ok(()));
    assert_eq!(
        etcd::parse_txn(br#"{"header":{},"succeeded":true}"#),
        Ok(true)
    );
    assert_eq!(etcd::parse_txn(br#"{"header":{}}"#), Ok(false));

    assert!(matches!(
        etcd::parse_range(b"not json"),
        Err(etcd::EtcdError::NotJson(_))
    ));
    assert!(matches!(
        etcd::parse_range(b"[1]"),
        Err(etcd::EtcdError::Shape(_))
    ));
    assert!(matches!(
        etcd::parse_put(br#"{"kvs":[]}"#),
        Err(etcd::EtcdError::Shape(_))
    ));
    assert!(matches!(
        etcd::parse_range(br#"{"header":{},"kvs":{"key":"x"}}"#),
        Err(etcd::EtcdError::Shape(_))
    ));
    assert!(matches!(
        etcd::parse_range(br#"{"header":{},"kvs":[{"key":"!!!!"}]}"#),
        Err(etcd::EtcdError::Base64(_))
    ));
    let gateway_error = br#"{"error":"etcdserver: request timed out","code":14,"message":"etcdserver: request timed out"}"#;
    assert_eq!(
        etcd::parse_put(gateway_error),
        Err(etcd::EtcdError::Server(
            "etcdserver: request timed out".into()
        ))
    );
    let resp = http::Response {
        status: 503,
        body: gateway_error.to_vec(),
        close: false,
    };
    let e = etcd::outcome(Op::Write(1), &resp).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Other);
    assert!(
        e.detail.contains("503") && e.detail.contains("timed out"),
        "{}",
        e.detail
    );
    let failed_txn = http::Response {
        status: 200,
        body: br#"{"header":{}}"#.to_vec(),
        close: false,
    };
    assert_eq!(
        etcd::outcome(Op::Cas(1), &failed_txn).unwrap_err().kind,
        ErrorKind::CasFailed
    );
}

// ---- Consul HTTP --------------------------------------------------------------------

#[test]
fn consul_requests_follow_the_kv_api_and_the_runs_consistency() {
    assert_eq!(
        consul_http::request_target(Op::Read(42), Consistency::Default),
        "/v1/kv/loadgen/000000000042"
    );
    assert_eq!(
        consul_http::request_target(Op::Read(42), Consistency::Stale),
        "/v1/kv/loadgen/000000000042?stale"
    );
    assert_eq!(
        consul_http::request_target(Op::Cas(1), Consistency::Consistent),
        "/v1/kv/loadgen/000000000001?cas=0"
    );
    assert_eq!(
        consul_http::request_target(Op::List(4321), Consistency::Consistent),
        "/v1/kv/loadgen/000000004?keys&consistent"
    );
}

#[test]
fn consul_replies_parse_and_a_miss_is_not_an_error() {
    let body =
        br#"[{"LockIndex":0,"Key":"k","Flags":0,"Value":"YmFy","CreateIndex":5,"ModifyIndex":9}]"#;
    assert_eq!(consul_http::parse_get(body), Ok(Some(b"bar".to_vec())));
    assert_eq!(
        consul_http::parse_get(br#"[{"Key":"k","Value":null}]"#),
        Ok(None)
    );
    assert!(consul_http::parse_get(b"{}").is_err());
    assert!(consul_http::parse_get(br#"[{"Value":7}]"#).is_err());
    assert!(consul_http::parse_get(b"<html>").is_err());
    assert_eq!(
        consul_http::parse_keys(br#"["a","b"]"#),
        Ok(vec!["a".into(), "b".into()])
    );
    assert!(consul_http::parse_keys(br#"["a",1]"#).is_err());
    assert_eq!(consul_http::parse_put(b"true\n"), Ok(true));
    assert_eq!(consul_http::parse_put(b"false"), Ok(false));
    assert!(consul_http::parse_put(b"maybe").is_err());

    let r = |status, body: &[u8]| http::Response {
        status,
        body: body.to_vec(),
        close: false,
    };
    assert_eq!(consul_http::outcome(Op::Read(1), &r(404, b"")), Ok(()));
    assert_eq!(
        consul_http::outcome(Op::Write(1), &r(404, b""))
            .unwrap_err()
            .kind,
        ErrorKind::Other
    );
    assert_eq!(
        consul_http::outcome(Op::Cas(1), &r(200, b"false"))
            .unwrap_err()
            .kind,
        ErrorKind::CasFailed
    );
    let e = consul_http::outcome(Op::Read(1), &r(500, b"No cluster leader")).unwrap_err();
    assert!(e.detail.contains("No cluster leader"), "{}", e.detail);
}

// ---- the in-order session -----------------------------------------------------------

fn redis_session(depth: usize) -> Fifo<resp::RedisCodec> {
    Fifo::new(resp::RedisCodec::new(b"v"), depth)
}

#[test]
fn in_order_replies_complete_the_oldest_request_even_when_split_across_reads() {
    let mut s = redis_session(3);
    let far = Instant::now() + Duration::from_secs(60);
    let a = s.send(Op::Write(1), far).unwrap();
    let b = s.send(Op::Read(1), far).unwrap();
    let c = s.send(Op::Cas(1), far).unwrap();
    assert_eq!(s.send(Op::Read(2), far), Err(SendError::Full));
    let out = s.take_outgoing();
    assert!(out.starts_with(b"*3\r\n$3\r\nSET\r\n"));
    let replies = b"+OK\r\n$1\r\nv\r\n$-1\r\n";
    let mut done = Vec::new();
    for byte in replies.chunks(1) {
        done.extend(s.receive(byte));
    }
    let ids: Vec<u64> = done.iter().map(|d| d.id).collect();
    assert_eq!(ids, [a, b, c]);
    assert!(done[0].result.is_ok() && done[1].result.is_ok());
    assert_eq!(
        done[2].result.as_ref().unwrap_err().kind,
        ErrorKind::CasFailed
    );
    assert_eq!(s.in_flight(), 0);
    assert!(!s.failed());
}

#[test]
fn a_late_reply_fails_the_connection_as_timeouts_and_garbage_fails_it_as_errors() {
    let mut s = redis_session(4);
    let now = Instant::now();
    s.send(Op::Read(1), now + Duration::from_millis(5)).unwrap();
    s.send(Op::Read(2), now + Duration::from_millis(6)).unwrap();
    assert!(s.expire(now).is_empty());
    let done = s.expire(now + Duration::from_millis(5));
    assert_eq!(done.len(), 2);
    assert!(done
        .iter()
        .all(|d| d.result.as_ref().unwrap_err().kind == ErrorKind::Timeout));
    assert!(s.failed());
    assert!(matches!(
        s.send(Op::Read(3), now),
        Err(SendError::Failed(_))
    ));

    let mut s = redis_session(4);
    s.send(Op::Read(1), now + Duration::from_secs(9)).unwrap();
    let done = s.receive(b"?garbage\r\n");
    assert_eq!(done.len(), 1);
    assert!(done[0]
        .result
        .as_ref()
        .unwrap_err()
        .detail
        .contains("malformed"));
    assert!(s.failed());

    // A reply with no request outstanding is a broken stream too.
    let mut s = redis_session(4);
    assert!(s.receive(b"+OK\r\n").is_empty());
    assert!(s.failed());
}

#[test]
fn an_http_reply_with_connection_close_ends_the_session_after_it() {
    let mut s = Fifo::new(etcd::EtcdCodec::new("h:1", b"v", false), 2);
    let far = Instant::now() + Duration::from_secs(60);
    let a = s.send(Op::Write(1), far).unwrap();
    let b = s.send(Op::Write(2), far).unwrap();
    let body = br#"{"header":{"revision":"2"}}"#;
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        String::from_utf8_lossy(body)
    );
    let done = s.receive(reply.as_bytes());
    assert_eq!(done.len(), 2);
    assert_eq!((done[0].id, done[0].result.is_ok()), (a, true));
    assert_eq!((done[1].id, done[1].result.is_err()), (b, true));
    assert!(s.failed());
}

// ---- a real redis-server ------------------------------------------------------------

struct Server(std::process::Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn on_path(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `bin` from Debian package `pkg`, installed if missing; `None` (with the reason
/// printed) when it cannot be had, e.g. on a machine without network.
fn installed(bin: &str, pkg: &str) -> Option<()> {
    if on_path(bin) {
        return Some(());
    }
    eprintln!("{bin} is missing: installing {pkg} with apt-get");
    let script = format!(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {pkg}"
    );
    let ok = Command::new("sh")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok && on_path(bin) {
        return Some(());
    }
    eprintln!("SKIPPED: {bin} is not installed and apt-get could not install {pkg} (no network?)");
    None
}

fn redis_server_binary() -> Option<()> {
    installed("redis-server", "redis-server")
}

fn start_redis() -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let server = Server(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, addr)
}

fn redis_run(addr: &str, mix: Mix, pipeline: usize) -> KvRun {
    KvRun {
        servers: vec![format!("redis://{addr}")],
        mix,
        keys: 1000,
        dist: KeyDist::Uniform,
        value_size: 256,
        connections: 4,
        pipeline,
        rate: 0.0,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(100),
        consistency: Consistency::Default,
        seed: 3,
        timeout: Duration::from_secs(5),
    }
}

#[test]
fn loadgen_reads_and_writes_a_real_redis_for_a_second_without_errors() {
    let Some(()) = redis_server_binary() else {
        return;
    };
    let (_server, addr) = start_redis();
    let write = redis_run(&addr, Mix::Write, 1);
    let out = run(&write, |_| {}).unwrap();
    assert!(
        out.recorder.total().len() > 100,
        "{} writes",
        out.recorder.total().len()
    );
    assert_eq!(out.recorder.error_total(), 0);

    let read = redis_run(&addr, Mix::Read, 8);
    preload(&read).unwrap();
    let out = run(&read, |_| {}).unwrap();
    assert!(
        out.recorder.total().len() > 100,
        "{} reads",
        out.recorder.total().len()
    );
    assert_eq!(out.recorder.error_total(), 0);

    // Every key holds the preloaded 256-byte value: ask Redis itself.
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    use std::io::{Read, Write};
    let mut cmd = Vec::new();
    resp::encode_command(&[b"STRLEN", b"loadgen/000000000999"], &mut cmd);
    resp::encode_command(&[b"DBSIZE"], &mut cmd);
    c.write_all(&cmd).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    let replies = loop {
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "redis closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        if let Some((a, used)) = resp::parse_reply(&buf).unwrap() {
            if let Some((b, _)) = resp::parse_reply(&buf[used..]).unwrap() {
                break (a, b);
            }
        }
    };
    assert_eq!(replies, (Reply::Integer(256), Reply::Integer(1000)));
}

#[test]
fn a_cas_run_against_redis_counts_refusals_apart_and_a_list_run_is_refused() {
    let Some(()) = redis_server_binary() else {
        return;
    };
    let (_server, addr) = start_redis();
    let mut cas = redis_run(&addr, Mix::Cas, 4);
    cas.keys = 50;
    cas.duration = Duration::from_millis(500);
    let out = run(&cas, |_| {}).unwrap();
    // At most one SET NX per key can succeed; the rest are refusals, not failures.
    assert!(out.recorder.errors(ErrorKind::CasFailed) > 100);
    assert_eq!(out.recorder.errors(ErrorKind::Other), 0);
    let e = run(&redis_run(&addr, Mix::List, 1), |_| {}).err().unwrap();
    assert!(e.contains("list"), "{e}");
}

#[test]
fn a_target_that_is_down_is_a_clear_error_not_a_hang() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: nothing listens there
    for scheme in ["redis", "etcd", "consul+http"] {
        let mut p = redis_run(&format!("127.0.0.1:{port}"), Mix::Read, 1);
        p.servers = vec![format!("{scheme}://127.0.0.1:{port}")];
        let e = run(&p, |_| {}).err().unwrap();
        assert!(e.contains("connect to 127.0.0.1"), "{e}");
        assert!(preload(&p).unwrap_err().contains("connect to"));
    }
}

// ---- loadgen baseline ---------------------------------------------------------------

fn row(system: &str, workload: &str, ops: f64, p99_us: u64) -> loadgen::baseline::Row {
    loadgen::baseline::Row {
        system: system.into(),
        workload: workload.into(),
        ops_per_s: ops,
        errors: 0,
        p50_us: p99_us / 2,
        p99_us,
        p999_us: p99_us * 2,
        loadgen_cores: 0.5,
        hgrm: std::path::PathBuf::new(),
    }
}

#[test]
fn the_baseline_table_divides_by_cairns_run_of_the_same_workload() {
    let rows = [
        row("cairn", "read", 40_000.0, 2_000),
        row("etcd", "read", 10_000.0, 8_000),
        row("etcd", "write", 5_000.0, 20_000),
    ];
    let t = loadgen::baseline::table(&rows);
    let line = |s: &str| t.lines().find(|l| l.starts_with(s)).unwrap().to_string();
    assert!(
        line("| read | etcd |").ends_with("| 0.25× | 4.00× |"),
        "{t}"
    );
    assert!(
        line("| read | cairn |").ends_with("| 1.00× | 1.00× |"),
        "{t}"
    );
    // No Cairn run of the write workload: no ratio rather than a wrong one.
    assert!(line("| write | etcd |").ends_with("| - | - |"), "{t}");
    assert!(
        line("| read | etcd |").contains("| 10000 | 4.000 | 8.000 | 16.000 | 0 | 0.5 |"),
        "{t}"
    );
}

#[test]
fn baseline_workloads_take_a_consistency_and_refuse_cas_and_list() {
    use loadgen::baseline::Workload;
    let w = Workload::parse("read@stale", Consistency::Default).unwrap();
    assert_eq!((w.mix, w.consistency), (Mix::Read, Consistency::Stale));
    assert_eq!(w.slug(), "read-stale");
    let w = Workload::parse("mixed:9/1", Consistency::Consistent).unwrap();
    assert_eq!(w.consistency, Consistency::Consistent);
    assert_eq!(w.slug(), "mixed-9-1");
    assert!(Workload::parse("cas", Consistency::Default).is_err());
    assert!(Workload::parse("list", Consistency::Default).is_err());
    assert!(Workload::parse("read@sometimes", Consistency::Default).is_err());
}

#[test]
fn loadgen_baseline_against_redis_writes_its_files_and_stops_what_it_started() {
    let Some(()) = redis_server_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "baseline",
            "--systems",
            "redis",
            "--workloads",
            "read,write",
        ])
        .args(["--keys", "500", "--connections", "4", "--duration", "1"])
        .args(["--warmup", "0.2", "--no-install", "--max-runtime-s", "120"])
        .arg("--out-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("| read | redis |"), "{stdout}");
    for f in [
        "redis-read.hgrm",
        "redis-write.json",
        "redis-write.hlog",
        "compare.svg",
        "baseline.md",
    ] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("redis-read.json")).unwrap())
            .unwrap();
    assert!(summary["ops"].as_u64().unwrap() > 0);
    assert_eq!(summary["errors"], 0);
    // The redis-server it started is gone: its port no longer accepts connections.
    let server = summary["params"]["servers"][0].as_str().unwrap();
    let addr = server.strip_prefix("redis://").unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "{addr} still listens"
    );
}

// ---- a real etcd member -------------------------------------------------------------

#[test]
fn loadgen_drives_a_real_etcd_member_through_its_json_gateway() {
    let Some(()) = installed("etcd", "etcd-server") else {
        return;
    };
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (client, peer) = (free(), free());
    let dir = tempfile::tempdir().unwrap();
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    let _etcd = Server(
        Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("t={p}")])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let servers = vec![format!("etcd://127.0.0.1:{client}")];
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = loadgen::kv::probe(&servers, Consistency::Default, Duration::from_secs(1)) {
        assert!(Instant::now() < deadline, "etcd did not answer: {e}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut p = redis_run("unused:1", Mix::Read, 2);
    p.servers = servers;
    p.keys = 300;
    p.connections = 2;
    p.duration = Duration::from_millis(700);
    preload(&p).unwrap();
    for (mix, consistency) in [
        (Mix::Read, Consistency::Stale),
        (Mix::Read, Consistency::Consistent),
        (Mix::Write, Consistency::Default),
        (Mix::List, Consistency::Stale),
    ] {
        p.mix = mix;
        p.consistency = consistency;
        let out = run(&p, |_| {}).unwrap();
        assert!(!out.recorder.total().is_empty(), "{mix:?}: no operations");
        assert_eq!(out.recorder.error_total(), 0, "{mix:?}");
    }
    // Only-if-absent on preloaded keys: every one is refused, and counted as such.
    p.mix = Mix::Cas;
    let out = run(&p, |_| {}).unwrap();
    assert!(out.recorder.errors(ErrorKind::CasFailed) > 0);
    assert_eq!(out.recorder.errors(ErrorKind::Other), 0);
    assert!(out.recorder.total().is_empty());
}
