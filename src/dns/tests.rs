//! The DNS interface's answers, through [`answer`] with a catalog held in memory
//! ([`CatalogView`]): every query is a packet in and a packet out, as on the wire.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::rc::Rc;

use futures_lite::future::block_on;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use proptest::prelude::*;

use super::answer::{MAX_TCP_BYTES, MAX_UDP_BYTES, PLAIN_UDP_BYTES};
use super::*;
use crate::catalog::{Catalog, Check, Registration, Service, Status};

const ID: u16 = 0xbeef;
const SERIAL: u32 = 1_700_000_000;

fn check(id: &str, service_id: &str, status: Status) -> Check {
    Check {
        id: id.into(),
        name: id.into(),
        node: String::new(),
        status,
        output: String::new(),
        service_id: service_id.into(),
        service_name: String::new(),
        kind: "ttl".into(),
        create_index: 0,
        modify_index: 0,
    }
}

struct Svc<'a> {
    name: &'a str,
    tags: &'a [&'a str],
    port: u16,
    address: &'a str,
}

fn register(c: &mut Catalog, node: &str, addr: &str, svc: Option<Svc>, checks: Vec<Check>) {
    let index = c.nodes().1 + 1;
    c.register(
        index,
        &Registration {
            node: node.into(),
            address: addr.into(),
            datacenter: "dc1".into(),
            service: svc.map(|s| Service {
                name: s.name.into(),
                tags: s.tags.iter().map(|t| t.to_string()).collect(),
                port: s.port,
                address: s.address.into(),
                ..Service::default()
            }),
            checks,
            ..Registration::default()
        },
    )
    .unwrap();
}

fn svc<'a>(name: &'a str, tags: &'a [&'a str], port: u16) -> Option<Svc<'a>> {
    Some(Svc {
        name,
        tags,
        port,
        address: "",
    })
}

/// The catalog every test reads:
/// - `web` on web1 (passing, v1), web2 (warning, v2), web3 (its own check critical, v1)
///   and web4 (a critical node-level check);
/// - `db` on an IPv6 node; `api` with its own address; `broken` only critical;
/// - a node with a mixed-case name and one addressed by hostname.
fn fixture() -> CatalogView {
    let mut c = Catalog::default();
    let web = |tags| svc("web", tags, 80);
    register(
        &mut c,
        "web1",
        "10.0.0.1",
        web(&["v1", "primary"]),
        vec![check("c1", "web", Status::Passing)],
    );
    register(
        &mut c,
        "web2",
        "10.0.0.2",
        svc("web", &["v2"], 8080),
        vec![check("c2", "web", Status::Warning)],
    );
    register(
        &mut c,
        "web3",
        "10.0.0.3",
        web(&["v1"]),
        vec![check("c3", "web", Status::Critical)],
    );
    register(
        &mut c,
        "web4",
        "10.0.0.4",
        web(&["v1"]),
        vec![check("serf", "", Status::Critical)],
    );
    register(&mut c, "db1", "fd00::1", svc("db", &[], 5432), vec![]);
    register(
        &mut c,
        "api1",
        "10.0.1.1",
        Some(Svc {
            name: "api",
            tags: &[],
            port: 9000,
            address: "10.9.9.9",
        }),
        vec![],
    );
    register(
        &mut c,
        "bad1",
        "10.0.2.1",
        svc("broken", &[], 1),
        vec![check("b", "broken", Status::Critical)],
    );
    register(&mut c, "MixedCase", "10.0.3.1", None, vec![]);
    register(&mut c, "ext1", "ext.example.com", None, vec![]);
    CatalogView {
        datacenter: "dc1".into(),
        catalog: Rc::new(RefCell::new(c)),
    }
}

/// A view with `n` passing instances of service `many`, one per node.
fn many(n: usize) -> CatalogView {
    let mut c = Catalog::default();
    for i in 0..n {
        let addr = format!("10.1.{}.{}", i / 250, i % 250 + 1);
        register(
            &mut c,
            &format!("node-{i:03}"),
            &addr,
            svc("many", &[], 7000 + i as u16),
            vec![],
        );
    }
    CatalogView {
        datacenter: "dc1".into(),
        catalog: Rc::new(RefCell::new(c)),
    }
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::new(ID, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

fn with_edns(mut m: Message, payload: u16) -> Message {
    let mut e = Edns::new();
    e.set_max_payload(payload);
    m.set_edns(e);
    m
}

fn ask_raw<V: DnsView>(
    view: &V,
    cfg: &DnsConfig,
    packet: &[u8],
    t: Transport,
    seed: u64,
) -> Option<Vec<u8>> {
    block_on(answer(view, cfg, packet, t, SERIAL, seed)).map(|r| {
        let m = Message::from_vec(&r.bytes).expect("a well-formed response");
        assert_eq!(u16::from(m.metadata.response_code), u16::from(r.code));
        assert_eq!(m.metadata.truncation, r.truncated);
        r.bytes
    })
}

fn ask_with<V: DnsView>(view: &V, cfg: &DnsConfig, q: &Message, t: Transport) -> Message {
    let bytes = ask_raw(view, cfg, &q.to_vec().unwrap(), t, 7).expect("an answer");
    Message::from_vec(&bytes).expect("a well-formed response")
}

fn ask(view: &CatalogView, name: &str, qtype: RecordType) -> Message {
    ask_with(
        view,
        &DnsConfig::default(),
        &query(name, qtype),
        Transport::Udp,
    )
}

fn ips(records: &[Record]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A negative answer: the code, no answers, the zone's SOA in AUTHORITY.
fn assert_negative(r: &Message, code: ResponseCode) {
    assert_eq!(r.metadata.response_code, code, "{r:?}");
    assert!(r.answers.is_empty(), "{r:?}");
    assert_eq!(r.authorities.len(), 1, "{r:?}");
    let RData::SOA(soa) = &r.authorities[0].data else {
        panic!("not an SOA: {r:?}")
    };
    assert_eq!(r.authorities[0].name, Name::from_ascii("consul.").unwrap());
    assert_eq!(soa.serial, SERIAL);
    assert_eq!(soa.mname, Name::from_ascii("ns.consul.").unwrap());
    assert!(r.metadata.authoritative);
}

#[test]
fn a_node_lookup_answers_its_address_with_ttl_0() {
    let r = ask(&fixture(), "web1.node.consul.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.metadata.id, ID);
    assert_eq!(r.metadata.message_type, MessageType::Response);
    assert!(r.metadata.authoritative && r.metadata.recursion_desired);
    assert!(!r.metadata.recursion_available && !r.metadata.truncation);
    assert_eq!(r.queries, query("web1.node.consul.", RecordType::A).queries);
    assert_eq!(ips(&r.answers), vec![ip("10.0.0.1")]);
    assert_eq!(r.answers[0].ttl, 0);
    assert_eq!(
        r.answers[0].name,
        Name::from_ascii("web1.node.consul.").unwrap()
    );
}

#[test]
fn a_node_lookup_in_this_datacenter_answers_and_in_another_is_nxdomain() {
    let v = fixture();
    assert_eq!(
        ips(&ask(&v, "web1.node.dc1.consul.", RecordType::A).answers),
        vec![ip("10.0.0.1")]
    );
    assert_negative(
        &ask(&v, "web1.node.dc2.consul.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn an_unknown_node_is_nxdomain_with_the_soa() {
    assert_negative(
        &ask(&fixture(), "nope.node.consul.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn a_name_that_exists_without_records_of_the_type_is_noerror_with_the_soa() {
    let v = fixture();
    assert_negative(
        &ask(&v, "web1.node.consul.", RecordType::AAAA),
        ResponseCode::NoError,
    );
    assert_negative(
        &ask(&v, "web.service.consul.", RecordType::TXT),
        ResponseCode::NoError,
    );
    assert_negative(
        &ask(&v, "db.service.consul.", RecordType::A),
        ResponseCode::NoError,
    );
    assert_eq!(
        ips(&ask(&v, "db1.node.consul.", RecordType::AAAA).answers),
        vec![ip("fd00::1")]
    );
    assert_eq!(
        ips(&ask(&v, "db.service.consul.", RecordType::AAAA).answers),
        vec![ip("fd00::1")]
    );
}

#[test]
fn a_node_addressed_by_hostname_is_a_cname_for_every_type() {
    for qtype in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::ANY,
    ] {
        let r = ask(&fixture(), "ext1.node.consul.", qtype);
        assert_eq!(r.answers.len(), 1, "{qtype}");
        let RData::CNAME(c) = &r.answers[0].data else {
            panic!("{r:?}")
        };
        assert_eq!(c.0, Name::from_ascii("ext.example.com.").unwrap());
    }
}

#[test]
fn a_node_txt_lookup_answers_its_metadata() {
    let v = fixture();
    let index = v.catalog.borrow().nodes().1 + 1;
    v.catalog
        .borrow_mut()
        .register(
            index,
            &Registration {
                node: "meta1".into(),
                address: "10.0.4.1".into(),
                datacenter: "dc1".into(),
                node_meta: BTreeMap::from([
                    ("rack".into(), "r1".into()),
                    ("rfc1035-spf".into(), "v=spf1 -all".into()),
                    ("long".into(), "x".repeat(300)),
                ]),
                ..Registration::default()
            },
        )
        .unwrap();
    let txt = |qtype| {
        let r = ask(&v, "meta1.node.consul.", qtype);
        r.answers
            .iter()
            .filter_map(|a| match &a.data {
                RData::TXT(t) => Some(t.to_string()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(txt(RecordType::TXT), ["rack=r1", "v=spf1 -all"]);
    assert_eq!(txt(RecordType::ANY), ["rack=r1", "v=spf1 -all"]);
    assert!(txt(RecordType::A).is_empty());
    assert_negative(
        &ask(&v, "web1.node.consul.", RecordType::TXT),
        ResponseCode::NoError,
    );
}

#[test]
fn a_service_lookup_answers_passing_and_warning_instances_never_critical_ones() {
    let v = fixture();
    let r = ask_with(
        &v,
        &DnsConfig {
            udp_answer_limit: 10,
            ..DnsConfig::default()
        },
        &query("web.service.consul.", RecordType::A),
        Transport::Udp,
    );
    // web3 (critical service check) and web4 (critical node check) are gone.
    assert_eq!(ips(&r.answers), vec![ip("10.0.0.1"), ip("10.0.0.2")]);
    let only = DnsConfig {
        only_passing: true,
        ..DnsConfig::default()
    };
    let r = ask_with(
        &v,
        &only,
        &query("web.service.consul.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(ips(&r.answers), vec![ip("10.0.0.1")]);
}

#[test]
fn an_instance_disappears_when_its_check_fails() {
    let v = fixture();
    assert_eq!(
        ips(&ask(&v, "v2.web.service.consul.", RecordType::A).answers),
        vec![ip("10.0.0.2")]
    );
    register(
        &mut v.catalog.borrow_mut(),
        "web2",
        "10.0.0.2",
        svc("web", &["v2"], 8080),
        vec![check("c2", "web", Status::Critical)],
    );
    assert_negative(
        &ask(&v, "v2.web.service.consul.", RecordType::A),
        ResponseCode::NXDomain,
    );
    assert_eq!(
        ips(&ask(&v, "web.service.consul.", RecordType::A).answers),
        vec![ip("10.0.0.1")]
    );
}

#[test]
fn a_service_whose_instances_all_fail_is_nxdomain() {
    let v = fixture();
    assert_negative(
        &ask(&v, "broken.service.consul.", RecordType::A),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &ask(&v, "broken.service.consul.", RecordType::SRV),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &ask(&v, "nope.service.consul.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn a_tag_narrows_a_service_lookup() {
    let v = fixture();
    assert_eq!(
        ips(&ask(&v, "v1.web.service.consul.", RecordType::A).answers),
        vec![ip("10.0.0.1")]
    );
    assert_eq!(
        ips(&ask(&v, "primary.web.service.dc1.consul.", RecordType::A).answers),
        vec![ip("10.0.0.1")]
    );
    assert_negative(
        &ask(&v, "v3.web.service.consul.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

fn srv_of(r: &Message) -> Vec<(u16, u16, u16, String)> {
    let mut out: Vec<_> = r
        .answers
        .iter()
        .map(|a| match &a.data {
            RData::SRV(s) => (s.priority, s.weight, s.port, s.target.to_ascii()),
            other => panic!("not SRV: {other:?}"),
        })
        .collect();
    out.sort();
    out
}

#[test]
fn srv_answers_carry_port_and_node_target_with_its_address_in_additional() {
    let r = ask(&fixture(), "web.service.consul.", RecordType::SRV);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        srv_of(&r),
        vec![
            (1, 1, 80, "web1.node.dc1.consul.".to_string()),
            (1, 1, 8080, "web2.node.dc1.consul.".to_string()),
        ]
    );
    let mut extra: Vec<(String, IpAddr)> = r
        .additionals
        .iter()
        .map(|a| (a.name.to_ascii(), ips(std::slice::from_ref(a))[0]))
        .collect();
    extra.sort();
    assert_eq!(
        extra,
        vec![
            ("web1.node.dc1.consul.".to_string(), ip("10.0.0.1")),
            ("web2.node.dc1.consul.".to_string(), ip("10.0.0.2")),
        ]
    );
}

#[test]
fn rfc_2782_names_are_service_lookups_with_tcp_meaning_any_tag() {
    let v = fixture();
    let plain = srv_of(&ask(&v, "web.service.consul.", RecordType::SRV));
    assert_eq!(
        srv_of(&ask(&v, "_web._tcp.service.consul.", RecordType::SRV)),
        plain
    );
    assert_eq!(
        srv_of(&ask(&v, "_web._tcp.service.dc1.consul.", RecordType::SRV)),
        plain
    );
    let v1 = srv_of(&ask(&v, "_web._v1.service.consul.", RecordType::SRV));
    assert_eq!(v1, vec![(1, 1, 80, "web1.node.dc1.consul.".to_string())]);
}

#[test]
fn a_service_address_is_answered_instead_of_its_nodes() {
    let v = fixture();
    assert_eq!(
        ips(&ask(&v, "api.service.consul.", RecordType::A).answers),
        vec![ip("10.9.9.9")]
    );
    let r = ask(&v, "api.service.consul.", RecordType::SRV);
    assert_eq!(
        srv_of(&r),
        vec![(1, 1, 9000, "api1.node.dc1.consul.".to_string())]
    );
    assert_eq!(ips(&r.additionals), vec![ip("10.9.9.9")]);
}

#[test]
fn lookups_are_case_insensitive_and_answer_the_name_as_asked() {
    let v = fixture();
    let r = ask(&v, "WEB1.Node.DC1.CONSUL.", RecordType::A);
    assert_eq!(ips(&r.answers), vec![ip("10.0.0.1")]);
    assert!(r.answers[0]
        .name
        .eq_case(&Name::from_ascii("WEB1.Node.DC1.CONSUL.").unwrap()));
    assert_eq!(
        ips(&ask(&v, "mixedcase.node.consul.", RecordType::A).answers),
        vec![ip("10.0.3.1")]
    );
    assert_eq!(
        ips(&ask(&v, "V1.WEB.SERVICE.CONSUL.", RecordType::A).answers),
        vec![ip("10.0.0.1")]
    );
    assert_eq!(
        srv_of(&ask(&v, "_WEB._TCP.SERVICE.CONSUL.", RecordType::SRV)).len(),
        2
    );
}

#[test]
fn names_outside_the_domain_are_refused_without_an_soa() {
    let r = ask(&fixture(), "example.com.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(r.answers.is_empty() && r.authorities.is_empty());
    assert!(!r.metadata.authoritative);
}

#[test]
fn names_under_the_domain_of_no_known_form_are_nxdomain() {
    let v = fixture();
    assert_negative(
        &ask(&v, "web.query.consul.", RecordType::A),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &ask(&v, "node.consul.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn the_apex_answers_its_soa() {
    let r = ask(&fixture(), "consul.", RecordType::SOA);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(matches!(r.answers[0].data, RData::SOA(_)));
    assert_negative(
        &ask(&fixture(), "consul.", RecordType::A),
        ResponseCode::NoError,
    );
}

#[test]
fn a_configured_domain_replaces_consul() {
    let cfg = DnsConfig {
        domain: "cairn.".into(),
        ..DnsConfig::default()
    };
    let v = fixture();
    let r = ask_with(
        &v,
        &cfg,
        &query("web1.node.cairn.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(ips(&r.answers), vec![ip("10.0.0.1")]);
    let r = ask_with(
        &v,
        &cfg,
        &query("web.service.cairn.", RecordType::SRV),
        Transport::Udp,
    );
    assert!(srv_of(&r).iter().all(|s| s.3.ends_with(".node.dc1.cairn.")));
    let r = ask_with(
        &v,
        &cfg,
        &query("web1.node.consul.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn ttls_come_from_node_ttl_and_the_service_ttl_map() {
    let cfg = DnsConfig {
        node_ttl_s: 30,
        service_ttl_s: BTreeMap::from([("web".into(), 60), ("ap*".into(), 20), ("*".into(), 5)]),
        ..DnsConfig::default()
    };
    let v = fixture();
    let ttl = |name, t| ask_with(&v, &cfg, &query(name, t), Transport::Udp).answers[0].ttl;
    assert_eq!(ttl("web1.node.consul.", RecordType::A), 30);
    assert_eq!(ttl("web.service.consul.", RecordType::A), 60);
    assert_eq!(ttl("api.service.consul.", RecordType::A), 20);
    assert_eq!(ttl("db.service.consul.", RecordType::AAAA), 5);
    let r = ask_with(
        &v,
        &cfg,
        &query("web.service.consul.", RecordType::SRV),
        Transport::Udp,
    );
    assert!(r.additionals.iter().all(|a| a.ttl == 60));
}

#[test]
fn the_service_ttl_map_prefers_exact_then_longest_prefix_then_star() {
    let cfg = DnsConfig {
        service_ttl_s: BTreeMap::from([
            ("my-*".into(), 1),
            ("my-service-*".into(), 2),
            ("my-service-x".into(), 3),
        ]),
        ..DnsConfig::default()
    };
    assert_eq!(cfg.service_ttl("my-service-x"), 3);
    assert_eq!(cfg.service_ttl("MY-SERVICE-X"), 3);
    assert_eq!(cfg.service_ttl("my-service-y"), 2);
    assert_eq!(cfg.service_ttl("my-other"), 1);
    assert_eq!(cfg.service_ttl("other"), 0);
}

#[test]
fn answers_are_shuffled_by_the_seed_given() {
    let v = many(20);
    let cfg = DnsConfig::default();
    let q = query("many.service.consul.", RecordType::A)
        .to_vec()
        .unwrap();
    let order = |seed| {
        let r = Message::from_vec(&ask_raw(&v, &cfg, &q, Transport::Tcp, seed).unwrap()).unwrap();
        r.answers
            .iter()
            .map(|a| ips(std::slice::from_ref(a))[0])
            .collect::<Vec<_>>()
    };
    assert_eq!(order(1), order(1), "one seed, one order");
    let orders: std::collections::BTreeSet<_> = (0..8).map(order).collect();
    assert!(orders.len() > 1, "eight seeds gave one order");
}

#[test]
fn plain_udp_answers_at_most_udp_answer_limit_records_without_tc() {
    let v = many(100);
    let r = ask(&v, "many.service.consul.", RecordType::A);
    assert_eq!(r.answers.len(), 3);
    assert!(!r.metadata.truncation);
}

#[test]
fn udp_responses_are_cut_to_512_bytes_or_the_edns_buffer_and_say_so() {
    let v = many(100);
    let cfg = DnsConfig {
        udp_answer_limit: 1000,
        ..DnsConfig::default()
    };
    for (q, limit) in [
        (
            query("many.service.consul.", RecordType::A),
            PLAIN_UDP_BYTES,
        ),
        (
            with_edns(query("many.service.consul.", RecordType::A), 1232),
            1232,
        ),
        (
            with_edns(query("many.service.consul.", RecordType::SRV), 1232),
            1232,
        ),
        (
            with_edns(query("many.service.consul.", RecordType::SRV), 65000),
            MAX_UDP_BYTES,
        ),
    ] {
        let bytes = ask_raw(&v, &cfg, &q.to_vec().unwrap(), Transport::Udp, 3).unwrap();
        assert!(bytes.len() <= limit, "{} > {limit}", bytes.len());
        let r = Message::from_vec(&bytes).unwrap();
        assert!(
            r.metadata.truncation,
            "100 records do not fit {limit} bytes"
        );
        assert!(!r.answers.is_empty() && r.answers.len() < 100);
        // Filled to within one record of the limit (an SRV and its A are < 80 bytes).
        assert!(bytes.len() + 80 > limit, "{} bytes of {limit}", bytes.len());
        assert_eq!(r.edns.is_some(), q.edns.is_some());
        // Every SRV kept has its target's address, and no address lacks its SRV.
        let targets: Vec<Name> = r
            .answers
            .iter()
            .filter_map(|a| match &a.data {
                RData::SRV(s) => Some(s.target.clone()),
                _ => None,
            })
            .collect();
        let extra: Vec<Name> = r.additionals.iter().map(|a| a.name.clone()).collect();
        assert_eq!(targets, extra);
    }
}

#[test]
fn tcp_responses_are_not_truncated() {
    let v = many(100);
    for qtype in [RecordType::A, RecordType::SRV] {
        let r = ask_with(
            &v,
            &DnsConfig::default(),
            &query("many.service.consul.", qtype),
            Transport::Tcp,
        );
        assert_eq!(r.answers.len(), 100);
        assert!(!r.metadata.truncation);
    }
    let r = ask_with(
        &v,
        &DnsConfig::default(),
        &query("many.service.consul.", RecordType::SRV),
        Transport::Tcp,
    );
    assert_eq!(r.additionals.len(), 100);
}

#[test]
fn tcp_responses_are_cut_at_64_kib() {
    let v = many(2000);
    let q = query("many.service.consul.", RecordType::SRV)
        .to_vec()
        .unwrap();
    let bytes = ask_raw(&v, &DnsConfig::default(), &q, Transport::Tcp, 1).unwrap();
    assert!(bytes.len() <= MAX_TCP_BYTES);
    let r = Message::from_vec(&bytes).unwrap();
    assert!(r.metadata.truncation && r.answers.len() < 2000 && r.answers.len() > 500);
    // The cut is Cairn's, not the encoder's: each SRV kept with its target's address.
    assert_eq!(r.additionals.len(), r.answers.len());
}

#[test]
fn a_query_cut_short_is_formerr_with_its_id() {
    let full = query("web1.node.consul.", RecordType::A).to_vec().unwrap();
    let r = ask_raw(
        &fixture(),
        &DnsConfig::default(),
        &full[..full.len() - 3],
        Transport::Udp,
        0,
    )
    .unwrap();
    let r = Message::from_vec(&r).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(r.metadata.id, ID);
    assert!(r.queries.is_empty());
}

#[test]
fn a_query_without_exactly_one_question_is_formerr() {
    let v = fixture();
    let mut two = query("web1.node.consul.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("web2.node.consul.").unwrap(),
        RecordType::A,
    ));
    let none = Message::new(ID, MessageType::Query, OpCode::Query);
    for q in [two, none] {
        let r = ask_with(&v, &DnsConfig::default(), &q, Transport::Udp);
        assert_eq!(r.metadata.response_code, ResponseCode::FormErr);
        assert!(r.answers.is_empty());
    }
}

#[test]
fn opcodes_other_than_query_are_notimp() {
    for op in [OpCode::Notify, OpCode::Status, OpCode::Update] {
        let mut q = query("web1.node.consul.", RecordType::A);
        q.metadata.op_code = op;
        let r = ask_with(&fixture(), &DnsConfig::default(), &q, Transport::Udp);
        assert_eq!(r.metadata.response_code, ResponseCode::NotImp, "{op:?}");
        assert_eq!(r.metadata.op_code, op);
    }
}

#[test]
fn classes_other_than_in_are_refused() {
    let mut q = Message::new(ID, MessageType::Query, OpCode::Query);
    let mut question = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
    question.set_query_class(DNSClass::CH);
    q.add_query(question);
    let r = ask_with(&fixture(), &DnsConfig::default(), &q, Transport::Udp);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn runts_and_responses_get_no_answer() {
    let v = fixture();
    let cfg = DnsConfig::default();
    assert_eq!(ask_raw(&v, &cfg, &[], Transport::Udp, 0), None);
    assert_eq!(
        ask_raw(&v, &cfg, &[0x12, 0x34, 0, 0], Transport::Udp, 0),
        None
    );
    let mut resp = query("web1.node.consul.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    assert_eq!(
        ask_raw(&v, &cfg, &resp.to_vec().unwrap(), Transport::Udp, 0),
        None
    );
}

#[test]
fn edns_is_answered_with_edns_and_unknown_versions_with_badvers() {
    let v = fixture();
    let r = ask_with(
        &v,
        &DnsConfig::default(),
        &with_edns(query("web1.node.consul.", RecordType::A), 1232),
        Transport::Udp,
    );
    assert_eq!(
        r.edns.as_ref().map(|e| e.max_payload()),
        Some(MAX_UDP_BYTES as u16)
    );
    assert_eq!(ips(&r.answers), vec![ip("10.0.0.1")]);
    let mut q = with_edns(query("web1.node.consul.", RecordType::A), 1232);
    q.edns.as_mut().unwrap().set_version(1);
    let r = ask_with(&v, &DnsConfig::default(), &q, Transport::Udp);
    // 16 is BADVERS in an OPT record (and BADSIG in TSIG, which hickory decodes it as).
    assert_eq!(u16::from(r.metadata.response_code), 16);
    assert_eq!(r.edns.as_ref().map(Edns::version), Some(0));
}

/// A view whose catalog cannot be read.
struct Unreachable;

impl DnsView for Unreachable {
    fn datacenter(&self) -> &str {
        "dc1"
    }
    async fn node(&self, _: &str, _: bool) -> Result<Option<Node>, DnsError> {
        Err(DnsError::Unavailable("no leader".into()))
    }
    async fn instances(
        &self,
        _: &str,
        _: Option<&str>,
        _: bool,
    ) -> Result<Vec<Instance>, DnsError> {
        Err(DnsError::Unavailable("no leader".into()))
    }
}

#[test]
fn an_unreadable_catalog_is_servfail() {
    let r = ask_with(
        &Unreachable,
        &DnsConfig::default(),
        &query("web.service.consul.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert!(r.answers.is_empty());
}

/// Valid queries for the fuzzers to mutate.
fn seeds() -> Vec<Vec<u8>> {
    [
        query("web.service.consul.", RecordType::SRV),
        with_edns(
            query("_web._tcp.service.dc1.consul.", RecordType::SRV),
            4096,
        ),
        query("web1.node.consul.", RecordType::A),
        with_edns(query("v1.web.service.consul.", RecordType::ANY), 600),
        query("consul.", RecordType::SOA),
    ]
    .iter()
    .map(|m| m.to_vec().unwrap())
    .collect()
}

/// What any answer to any packet must be: nothing, or a response that decodes, with
/// the query's id, within the transport's size.
fn check_any_answer(packet: &[u8], t: Transport) -> Result<(), TestCaseError> {
    let v = fixture();
    let Some(bytes) = ask_raw(&v, &DnsConfig::default(), packet, t, 9) else {
        return Ok(());
    };
    let limit = if t == Transport::Udp {
        MAX_UDP_BYTES
    } else {
        MAX_TCP_BYTES
    };
    prop_assert!(bytes.len() <= limit);
    let r = Message::from_vec(&bytes).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    prop_assert_eq!(r.metadata.message_type, MessageType::Response);
    prop_assert_eq!(&bytes[..2], &packet[..2]);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        packet in prop::collection::vec(any::<u8>(), 0..600),
        tcp in any::<bool>(),
    ) {
        check_any_answer(&packet, if tcp { Transport::Tcp } else { Transport::Udp })?;
    }

    #[test]
    fn mutated_queries_never_panic(
        which in 0usize..5,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        do_cut in any::<bool>(),
    ) {
        let mut packet = seeds()[which].clone();
        for (at, byte) in flips {
            let i = at.index(packet.len());
            packet[i] = byte;
        }
        if do_cut {
            packet.truncate(cut.index(packet.len() + 1));
        }
        check_any_answer(&packet, Transport::Udp)?;
    }
}

#[test]
fn the_default_config_is_valid_and_unusable_ones_say_why() {
    assert_eq!(DnsConfig::default().validate(), Ok(()));
    for bad in [
        DnsConfig {
            domain: ".".into(),
            ..DnsConfig::default()
        },
        DnsConfig {
            domain: "a..b.".into(),
            ..DnsConfig::default()
        },
        DnsConfig {
            udp_answer_limit: 0,
            ..DnsConfig::default()
        },
        DnsConfig {
            max_tcp_connections: 0,
            ..DnsConfig::default()
        },
        DnsConfig {
            tcp_idle_timeout: std::time::Duration::ZERO,
            ..DnsConfig::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

#[test]
fn two_instances_on_one_node_are_two_srv_records_and_one_address_record() {
    let v = fixture();
    for (id, port) in [("cache-a", 6379), ("cache-b", 6380)] {
        let index = v.catalog.borrow().nodes().1 + 1;
        v.catalog
            .borrow_mut()
            .register(
                index,
                &Registration {
                    node: "web1".into(),
                    address: "10.0.0.1".into(),
                    datacenter: "dc1".into(),
                    service: Some(Service {
                        id: id.into(),
                        name: "cache".into(),
                        port,
                        ..Service::default()
                    }),
                    ..Registration::default()
                },
            )
            .unwrap();
    }
    let r = ask(&v, "cache.service.consul.", RecordType::SRV);
    let target = "web1.node.dc1.consul.".to_string();
    assert_eq!(
        srv_of(&r),
        vec![(1, 1, 6379, target.clone()), (1, 1, 6380, target)]
    );
    assert_eq!(ips(&r.additionals), vec![ip("10.0.0.1")]);
    let r = ask(&v, "cache.service.consul.", RecordType::A);
    assert_eq!(ips(&r.answers), vec![ip("10.0.0.1")]);
}

#[test]
fn any_is_answered_with_the_address_records() {
    let v = fixture();
    assert_eq!(
        ips(&ask(&v, "web1.node.consul.", RecordType::ANY).answers),
        vec![ip("10.0.0.1")]
    );
    assert_eq!(
        ips(&ask(&v, "db1.node.consul.", RecordType::ANY).answers),
        vec![ip("fd00::1")]
    );
    let r = ask(&v, "web.service.consul.", RecordType::ANY);
    assert_eq!(ips(&r.answers), vec![ip("10.0.0.1"), ip("10.0.0.2")]);
    assert!(r.answers.iter().all(|a| a.record_type() == RecordType::A));
}

#[test]
fn the_catalog_view_keeps_the_dns_view_contract() {
    let mut c = Catalog::default();
    for (i, reg) in super::contract::registrations().iter().enumerate() {
        c.register(i as u64 + 1, reg).unwrap();
    }
    let view = CatalogView {
        datacenter: "dc1".into(),
        catalog: Rc::new(RefCell::new(c)),
    };
    assert_eq!(block_on(super::contract::check(&view)), Ok(()));
}

#[test]
fn the_contract_check_catches_a_view_that_filters_by_health() {
    /// Wrong: drops critical instances, which the DNS layer must see to decide itself.
    struct PassingOnly(CatalogView);
    impl DnsView for PassingOnly {
        fn datacenter(&self) -> &str {
            self.0.datacenter()
        }
        async fn node(&self, name: &str, stale: bool) -> Result<Option<Node>, DnsError> {
            self.0.node(name, stale).await
        }
        async fn instances(
            &self,
            service: &str,
            tag: Option<&str>,
            stale: bool,
        ) -> Result<Vec<Instance>, DnsError> {
            let all = self.0.instances(service, tag, stale).await?;
            Ok(all
                .into_iter()
                .filter(|i| i.status() == Status::Passing)
                .collect())
        }
    }
    let mut c = Catalog::default();
    for (i, reg) in super::contract::registrations().iter().enumerate() {
        c.register(i as u64 + 1, reg).unwrap();
    }
    let view = PassingOnly(CatalogView {
        datacenter: "dc1".into(),
        catalog: Rc::new(RefCell::new(c)),
    });
    let err = block_on(super::contract::check(&view)).unwrap_err();
    assert!(err.contains("critical included"), "{err}");
}
