//! Query packet → response packet. Pure apart from awaiting the [`DnsView`]: no socket,
//! no clock (the SOA serial comes in), no global RNG (the shuffle seed comes in).
//!
//! Split in four so each step can be tested on its own, [`answer`] chaining them:
//! [`decode`] (packet → a [`Request`], or an answer that needs no catalog, or nothing),
//! [`resolve`] (the catalog reads a request needs), [`render`] (request + what was read →
//! the full response), [`fit`] (the response cut to its transport's size).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::op::{
    Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::lookup::{self, Lookup, NameError};
use super::{DnsConfig, DnsError, DnsView};
use crate::catalog::{Instance, Node, Status};

/// The plain-DNS UDP payload limit (RFC 1035 §4.2.1).
pub const PLAIN_UDP_BYTES: usize = 512;
/// Largest UDP response sent whatever a client's EDNS0 buffer says, and the buffer size
/// Cairn advertises: 4096 is what most resolvers offer, and answers beyond it are better
/// fetched over TCP than fragmented.
pub const MAX_UDP_BYTES: usize = 4096;
/// The smallest answer record: an A record whose name is a 2-byte compression pointer
/// (2 + type 2 + class 2 + TTL 4 + length 2 + address 4).
const MIN_ANSWER_BYTES: usize = 16;
/// A DNS message over TCP carries a 16-bit length.
pub const MAX_TCP_BYTES: usize = u16::MAX as usize;

/// How the response travels, which decides how large it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// A query that needs the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub metadata: Metadata,
    pub query: Query,
    /// The query's EDNS0 record, if it had one (the response then carries one too).
    pub edns: Option<Edns>,
    pub lookup: Lookup,
}

/// What [`decode`] makes of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Not answered: too short for a header, or itself a response (answering responses
    /// would let two servers bounce packets forever).
    Drop,
    /// Answered without the catalog: errors, names outside the domain, names of no
    /// known form, other datacenters, the apex.
    Reply(Message),
    Lookup(Request),
}

/// What the catalog said for a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Node(Option<Node>),
    Instances(Vec<Instance>),
}

/// A response ready to send, with what the driver counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub bytes: Vec<u8>,
    pub code: ResponseCode,
    /// Records were dropped to fit the transport (TC is set).
    pub truncated: bool,
}

/// Answers one query packet: `None` means send nothing. `soa_serial` is the SOA's
/// serial (Consul uses the current Unix time); `shuffle_seed` orders the answers.
pub async fn answer<V: DnsView>(
    view: &V,
    cfg: &DnsConfig,
    packet: &[u8],
    transport: Transport,
    soa_serial: u32,
    shuffle_seed: u64,
) -> Option<Response> {
    match decode(packet, cfg, view.datacenter(), soa_serial) {
        Decoded::Drop => None,
        // Header, question and at most an SOA: these fit any transport as they are.
        Decoded::Reply(m) => finish(m, transport, None, cfg),
        Decoded::Lookup(req) => {
            let found = resolve(view, cfg, &req.lookup).await;
            respond(
                &req,
                found.as_ref(),
                cfg,
                transport,
                soa_serial,
                shuffle_seed,
            )
        }
    }
}

/// The response to a request, from what the catalog said (or that it could not be
/// read: SERVFAIL): [`render`], [`fit`] and encoded. The driver calls it again with the
/// same `found` and another seed to build another shuffle of a cached answer.
pub fn respond(
    req: &Request,
    found: Result<&Found, &DnsError>,
    cfg: &DnsConfig,
    transport: Transport,
    soa_serial: u32,
    shuffle_seed: u64,
) -> Option<Response> {
    let m = match found {
        Ok(found) => render(req, found, cfg, soa_serial, shuffle_seed),
        Err(DnsError::Unavailable(_)) => {
            let mut m = reply_to(&req.metadata, Some(&req.query), req.edns.is_some());
            m.metadata.response_code = ResponseCode::ServFail;
            m
        }
    };
    finish(m, transport, req.edns.as_ref().map(Edns::max_payload), cfg)
}

/// Cuts `reply` to its transport ([`fit`]) and encodes it; `None` if it does not
/// encode.
pub fn finish(
    reply: Message,
    transport: Transport,
    edns_payload: Option<u16>,
    cfg: &DnsConfig,
) -> Option<Response> {
    let reply = fit(reply, transport, edns_payload, cfg.udp_answer_limit);
    // Encoding fails only for messages no query can produce (over 65,535 records).
    let bytes = reply.to_vec().ok()?;
    Some(Response {
        bytes,
        code: reply.metadata.response_code,
        truncated: reply.metadata.truncation,
    })
}

/// The catalog reads a lookup needs.
pub async fn resolve<V: DnsView>(
    view: &V,
    cfg: &DnsConfig,
    lookup: &Lookup,
) -> Result<Found, DnsError> {
    match lookup {
        // `decode` answers the apex itself; nothing to read.
        Lookup::Apex => Ok(Found::Node(None)),
        Lookup::Node { name } => Ok(Found::Node(view.node(name, cfg.allow_stale).await?)),
        Lookup::Service { name, tag } => Ok(Found::Instances(
            view.instances(name, tag.as_deref(), cfg.allow_stale)
                .await?,
        )),
    }
}

/// Decodes a query packet and answers what needs no catalog read.
pub fn decode(packet: &[u8], cfg: &DnsConfig, datacenter: &str, soa_serial: u32) -> Decoded {
    let msg = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => {
            // Unreadable past the header: say FORMERR if the header at least is a
            // query's (RFC 1035 §4.1.1), so the client learns at once.
            return match Header::read(&mut BinDecoder::new(packet)) {
                Ok(h) if h.metadata.message_type == MessageType::Query => {
                    let mut m = reply_to(&h.metadata, None, false);
                    m.metadata.response_code = ResponseCode::FormErr;
                    Decoded::Reply(m)
                }
                _ => Decoded::Drop,
            };
        }
    };
    if msg.metadata.message_type != MessageType::Query {
        return Decoded::Drop;
    }
    let has_edns = msg.edns.is_some();
    let first = (msg.queries.len() == 1).then(|| &msg.queries[0]);
    let mut reply = reply_to(&msg.metadata, first, has_edns);
    if msg.metadata.op_code != OpCode::Query {
        reply.metadata.response_code = ResponseCode::NotImp;
        return Decoded::Reply(reply);
    }
    if msg.edns.as_ref().is_some_and(|e| e.version() > 0) {
        // RFC 6891 §6.1.3: only version 0 exists.
        reply.metadata.response_code = ResponseCode::BADVERS;
        return Decoded::Reply(reply);
    }
    let Some(query) = first else {
        reply.metadata.response_code = ResponseCode::FormErr;
        return Decoded::Reply(reply);
    };
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        // Cairn holds no data in other classes (CHAOS `version.bind` and the like).
        reply.metadata.response_code = ResponseCode::Refused;
        return Decoded::Reply(reply);
    }
    let Ok(domain) = Name::from_ascii(&cfg.domain) else {
        reply.metadata.response_code = ResponseCode::ServFail;
        return Decoded::Reply(reply);
    };
    let parsed = match lookup::parse(query.name(), &domain) {
        Ok(p) => p,
        Err(NameError::OutsideDomain) => {
            reply.metadata.response_code = ResponseCode::Refused;
            return Decoded::Reply(reply);
        }
        Err(NameError::NoSuchName) => {
            return Decoded::Reply(negative(reply, ResponseCode::NXDomain, cfg, soa_serial));
        }
    };
    // One datacenter until federation: any other one does not exist from here.
    if parsed
        .datacenter
        .as_deref()
        .is_some_and(|dc| !dc.eq_ignore_ascii_case(datacenter))
    {
        return Decoded::Reply(negative(reply, ResponseCode::NXDomain, cfg, soa_serial));
    }
    if parsed.lookup == Lookup::Apex {
        reply.metadata.authoritative = true;
        if matches!(query.query_type(), RecordType::SOA | RecordType::ANY) {
            reply.answers.push(soa(cfg, &domain, soa_serial));
            return Decoded::Reply(reply);
        }
        return Decoded::Reply(negative(reply, ResponseCode::NoError, cfg, soa_serial));
    }
    Decoded::Lookup(Request {
        metadata: msg.metadata,
        query: query.clone(),
        edns: msg.edns,
        lookup: parsed.lookup,
    })
}

/// One answer record and the ADDITIONAL records that go with it (an SRV target's
/// address): they are kept or dropped together when a response is cut to size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    answer: Record,
    additional: Vec<Record>,
}

/// Renders the response to a request from what the catalog said. Answers are shuffled
/// with `shuffle_seed`; nothing is cut to size yet (see [`fit`]).
pub fn render(
    req: &Request,
    found: &Found,
    cfg: &DnsConfig,
    soa_serial: u32,
    shuffle_seed: u64,
) -> Message {
    let mut reply = reply_to(&req.metadata, Some(&req.query), req.edns.is_some());
    reply.metadata.authoritative = true;
    let qname = req.query.name();
    let qtype = req.query.query_type();
    let entries = match found {
        Found::Node(None) => return negative(reply, ResponseCode::NXDomain, cfg, soa_serial),
        Found::Node(Some(node)) => node_records(qname, node, qtype, cfg.node_ttl_s)
            .into_iter()
            .map(|answer| Entry {
                answer,
                additional: Vec::new(),
            })
            .collect(),
        Found::Instances(all) => {
            let mut healthy: Vec<&Instance> = all
                .iter()
                .filter(|i| match i.status() {
                    Status::Passing => true,
                    Status::Warning => !cfg.only_passing,
                    Status::Critical => false,
                })
                .collect();
            if healthy.is_empty() {
                // As Consul: a service with no healthy instance does not exist.
                return negative(reply, ResponseCode::NXDomain, cfg, soa_serial);
            }
            healthy.shuffle(&mut SmallRng::seed_from_u64(shuffle_seed));
            let ttl = match &req.lookup {
                Lookup::Service { name, .. } => cfg.service_ttl(name),
                Lookup::Node { .. } | Lookup::Apex => cfg.node_ttl_s,
            };
            service_entries(&healthy, qname, qtype, ttl, cfg)
        }
    };
    if entries.is_empty() {
        // The name exists, with no record of this type (AAAA of an IPv4 node, TXT).
        return negative(reply, ResponseCode::NoError, cfg, soa_serial);
    }
    join_entries(&mut reply, &entries);
    reply
}

fn service_entries(
    instances: &[&Instance],
    qname: &Name,
    qtype: RecordType,
    ttl: u32,
    cfg: &DnsConfig,
) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut addresses = HashSet::new();
    for inst in instances {
        let addr = if inst.service.address.is_empty() {
            &inst.node.address
        } else {
            &inst.service.address
        };
        if qtype == RecordType::SRV {
            let weight = match inst.status() {
                Status::Warning => inst.service.weights.warning,
                _ => inst.service.weights.passing,
            };
            let weight = u16::try_from(weight).unwrap_or(u16::MAX);
            let (target, additional) = match addr.parse::<IpAddr>() {
                Ok(ip) => {
                    let Some(target) = node_target(&inst.node, cfg) else {
                        continue; // a node name that makes no DNS name
                    };
                    let rdata = match ip {
                        IpAddr::V4(v4) => RData::A(A(v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                    };
                    let additional = Record::from_rdata(target.clone(), ttl, rdata);
                    (target, vec![additional])
                }
                // A hostname is its own target, resolved by the client.
                Err(_) => match Name::from_ascii(addr) {
                    Ok(mut n) => {
                        n.set_fqdn(true);
                        (n, Vec::new())
                    }
                    Err(_) => continue,
                },
            };
            let srv = SRV::new(1, weight, inst.service.port, target);
            out.push(Entry {
                answer: Record::from_rdata(qname.clone(), ttl, RData::SRV(srv)),
                additional,
            });
        } else {
            // Address records only: a CNAME cannot share a name with other records, so
            // an instance addressed by hostname has no answer here (use SRV).
            let Ok(ip) = addr.parse::<IpAddr>() else {
                continue;
            };
            let Some(answer) = ip_record(qname, ip, qtype, ttl) else {
                continue;
            };
            // Two instances at one address are one answer.
            if addresses.insert(ip) {
                out.push(Entry {
                    answer,
                    additional: Vec::new(),
                });
            }
        }
    }
    out
}

/// `<node>.node.<dc>.<domain>`, the SRV target naming an instance's node.
fn node_target(node: &Node, cfg: &DnsConfig) -> Option<Name> {
    let dc = if node.datacenter.is_empty() {
        None
    } else {
        Some(node.datacenter.as_str())
    };
    let name = match dc {
        Some(dc) => format!("{}.node.{dc}.{}", node.name, cfg.domain),
        None => format!("{}.node.{}", node.name, cfg.domain),
    };
    Name::from_ascii(name).ok()
}

/// The records answering `qtype` at `qname` for node `node`:
/// - an IP address: its A or AAAA record, and for TXT (and ANY) one record per node
///   metadata entry, `key=value`, or the bare value for `rfc1035-` keys (as Consul;
///   entries longer than a TXT string's 255 bytes are left out);
/// - a hostname: a CNAME to it, whatever the type (RFC 1034 §3.6.2: a name with a CNAME
///   has no other data).
fn node_records(qname: &Name, node: &Node, qtype: RecordType, ttl: u32) -> Vec<Record> {
    let Ok(ip) = node.address.parse::<IpAddr>() else {
        let Ok(mut target) = Name::from_ascii(&node.address) else {
            return Vec::new();
        };
        target.set_fqdn(true);
        let cname = RData::CNAME(CNAME(target));
        return vec![Record::from_rdata(qname.clone(), ttl, cname)];
    };
    let mut out: Vec<Record> = ip_record(qname, ip, qtype, ttl).into_iter().collect();
    if matches!(qtype, RecordType::TXT | RecordType::ANY) {
        for (k, v) in &node.meta {
            // As Consul: `rfc1035-` keys carry a record's text verbatim.
            let text = match k.strip_prefix("rfc1035-") {
                Some(_) => v.clone(),
                None => format!("{k}={v}"),
            };
            if text.len() <= 255 {
                let txt = RData::TXT(TXT::new(vec![text]));
                out.push(Record::from_rdata(qname.clone(), ttl, txt));
            }
        }
    }
    out
}

fn ip_record(qname: &Name, ip: IpAddr, qtype: RecordType, ttl: u32) -> Option<Record> {
    let rdata = match (ip, qtype) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return None,
    };
    Some(Record::from_rdata(qname.clone(), ttl, rdata))
}

/// A response to `req`: same id and opcode, RD copied, no recursion available (Cairn
/// does not recurse), the question echoed, EDNS0 answered with EDNS0 (RFC 6891 §6.1.1).
fn reply_to(req: &Metadata, query: Option<&Query>, edns: bool) -> Message {
    let mut m = Message::response(req.id, req.op_code);
    m.metadata = Metadata::response_from_request(req);
    if let Some(q) = query {
        m.queries.push(q.clone());
    }
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(MAX_UDP_BYTES as u16);
        m.edns = Some(e);
    }
    m
}

/// A negative answer: `code` (NXDOMAIN, or NOERROR for "no records of that type") with
/// the zone's SOA in AUTHORITY, so resolvers may cache it (RFC 2308).
fn negative(mut m: Message, code: ResponseCode, cfg: &DnsConfig, soa_serial: u32) -> Message {
    m.metadata.authoritative = true;
    m.metadata.response_code = code;
    m.answers.clear();
    m.additionals.clear();
    if let Ok(domain) = Name::from_ascii(&cfg.domain) {
        m.authorities = vec![soa(cfg, &domain, soa_serial)];
    }
    m
}

/// The zone's SOA. Refresh, retry and expire are Consul's; Cairn has no secondaries to
/// use them.
fn soa(cfg: &DnsConfig, domain: &Name, serial: u32) -> Record {
    let mname = domain
        .prepend_label("ns")
        .unwrap_or_else(|_| domain.clone());
    let rname = domain
        .prepend_label("hostmaster")
        .unwrap_or_else(|_| domain.clone());
    let soa = SOA::new(mname, rname, serial, 3600, 600, 86400, cfg.soa_min_ttl_s);
    Record::from_rdata(domain.clone(), cfg.soa_min_ttl_s, RData::SOA(soa))
}

/// Cuts `reply` to fit its transport and returns the message to send:
/// - UDP without EDNS0: at most `udp_answer_limit` answers (a random subset, as they
///   were shuffled; no TC), then 512 bytes.
/// - UDP with EDNS0: the client's buffer size (`edns_payload`), capped at
///   [`MAX_UDP_BYTES`].
/// - TCP: 65,535 bytes.
///
/// Answers are dropped from the end, each with its ADDITIONAL record, until the message
/// fits; TC is set when any were dropped for size, telling the client to ask over TCP.
pub fn fit(
    mut reply: Message,
    transport: Transport,
    edns_payload: Option<u16>,
    udp_answer_limit: usize,
) -> Message {
    let limit = match transport {
        Transport::Tcp => MAX_TCP_BYTES,
        Transport::Udp => match edns_payload {
            Some(p) => (p as usize).clamp(PLAIN_UDP_BYTES, MAX_UDP_BYTES),
            None => PLAIN_UDP_BYTES,
        },
    };
    let entries = split_entries(&mut reply);
    let mut wanted = entries.len();
    if transport == Transport::Udp && limit == PLAIN_UDP_BYTES {
        wanted = wanted.min(udp_answer_limit.max(1));
    }
    // No answer record encodes in fewer bytes than a compressed A record, so more than
    // `limit / MIN_ANSWER_BYTES` never fit: never encode them (bounds the work for a
    // service of many thousand instances).
    let mut keep = wanted.min(limit / MIN_ANSWER_BYTES);
    let size = |k: usize, m: &Message| {
        let mut t = m.clone();
        join_entries(&mut t, &entries[..k]);
        encoded_len(&t)
    };
    if size(keep, &reply) > limit {
        // The largest prefix that fits: sizes grow with the prefix, so bisect.
        let (mut lo, mut hi) = (0, keep);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if size(mid, &reply) <= limit {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        keep = lo;
        if size(keep, &reply) > limit {
            // Header and question alone too large: no query can cause this (names are
            // at most 255 bytes), but the promise to fit holds regardless.
            reply.authorities.clear();
            reply.additionals.clear();
        }
    }
    if keep < wanted {
        reply.metadata.truncation = true;
    }
    join_entries(&mut reply, &entries[..keep]);
    reply
}

/// The encoded size of `m`, or `usize::MAX` if it does not encode whole: hickory's
/// encoder stops at 65,535 bytes and silently leaves out the records past it, which
/// counts here as not fitting so that the cut is [`fit`]'s (answers with their
/// ADDITIONAL records), not an arbitrary one.
fn encoded_len(m: &Message) -> usize {
    let Ok(b) = m.to_vec() else {
        return usize::MAX;
    };
    let count = |at: usize| usize::from(u16::from_be_bytes([b[at], b[at + 1]]));
    // Answers, authorities and additionals (plus OPT) all written?
    let whole = b.len() >= 12
        && count(6) == m.answers.len()
        && count(8) == m.authorities.len()
        && count(10) >= m.additionals.len();
    if whole {
        b.len()
    } else {
        usize::MAX
    }
}

/// Takes the answers out of `m`, each with the ADDITIONAL records naming its target.
fn split_entries(m: &mut Message) -> Vec<Entry> {
    let mut by_name: HashMap<Name, Vec<Record>> = HashMap::new();
    for a in std::mem::take(&mut m.additionals) {
        by_name.entry(a.name.clone()).or_default().push(a);
    }
    std::mem::take(&mut m.answers)
        .into_iter()
        .map(|answer| {
            let additional = match &answer.data {
                RData::SRV(srv) => by_name.get(&srv.target).cloned().unwrap_or_default(),
                _ => Vec::new(),
            };
            Entry { answer, additional }
        })
        .collect()
}

/// Puts `entries` into `m`'s ANSWER and ADDITIONAL sections, each additional record
/// once however many SRV records name its target.
fn join_entries(m: &mut Message, entries: &[Entry]) {
    m.answers.clear();
    m.additionals.clear();
    let mut seen = HashSet::new();
    for e in entries {
        m.answers.push(e.answer.clone());
        for a in &e.additional {
            if seen.insert((a.name.clone(), a.data.clone())) {
                m.additionals.push(a.clone());
            }
        }
    }
}
