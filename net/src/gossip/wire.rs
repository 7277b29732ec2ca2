//! The gossip datagram format.
//!
//! ```text
//! packet:   magic "CG" (2) | version (1) | message*          at most max_packet_bytes
//! message:  kind (1) | body length (2, LE) | body
//! address:  family 4 or 6 (1) | IP (4 or 16) | port (2, LE)
//!
//! kind body
//!    1 ping      seq u32
//!    2 ack       seq u32
//!    3 nack      seq u32
//!    4 ping-req  seq u32, target address
//!    5 alive     address, incarnation u32, meta length u16, meta
//!    6 suspect   address, incarnation u32, count u8 (1..=16), count suspecter addresses
//!    7 dead      address, incarnation u32, declaring member's address
//!    8 left      address, incarnation u32
//!    9 join      (empty: "send me your state")
//!   10 digest    reply u8 (0|1), bucket count u16, count x u64
//!
//! meta:     name (u8 length + UTF-8) | role u8 (0 client, 1 server) |
//!           datacenter (u8 length + UTF-8) | server RPC port u16 | protocol version u8 |
//!           tag count u8 | tags: key (u8 length + UTF-8), value (u8 length + UTF-8)
//! ```
//!
//! Several messages share a datagram (a compound packet): a probe carries broadcasts
//! piggybacked behind it. Every message is length-prefixed so a decoder never reads past
//! it. A datagram is decoded completely before any of it is applied: a malformed one is a
//! [`WireError`] and changes no state.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub const MAGIC: [u8; 2] = *b"CG";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 3;
/// Kind byte and body length in front of each message.
pub const MESSAGE_HEADER_LEN: usize = 3;
/// Most suspecters one suspect message names (the suspicion's own confirmations).
pub const MAX_SUSPECTERS: usize = 16;

const KIND_PING: u8 = 1;
const KIND_ACK: u8 = 2;
const KIND_NACK: u8 = 3;
const KIND_PING_REQ: u8 = 4;
const KIND_ALIVE: u8 = 5;
const KIND_SUSPECT: u8 = 6;
const KIND_DEAD: u8 = 7;
const KIND_LEFT: u8 = 8;
const KIND_JOIN: u8 = 9;
const KIND_DIGEST: u8 = 10;

/// Why a datagram was refused. The datagram is dropped whole and no state changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a Cairn gossip datagram (magic {0:02x?})")]
    BadMagic([u8; 2]),
    #[error("gossip protocol version {0} is not supported (this node speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("datagram of {len} bytes exceeds the limit of {max} bytes")]
    Oversize { len: usize, max: usize },
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("metadata of {len} bytes exceeds the limit of {max} bytes")]
    MetaTooLarge { len: usize, max: usize },
}

/// A member's role in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    #[default]
    Client,
    Server,
}

/// What a member tells the others about itself. Bounded by `Config::max_meta_bytes`
/// when encoded; each string by 255 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeMeta {
    /// The node name operators see (`cairn members`).
    pub name: String,
    pub role: Role,
    pub datacenter: String,
    /// Where a server answers RPCs (0 for clients).
    pub rpc_port: u16,
    /// The agent protocol version, so mixed-version clusters can be told apart.
    pub protocol_version: u8,
    /// Free-form labels (at most 255).
    pub tags: BTreeMap<String, String>,
}

impl NodeMeta {
    /// Encodes the metadata, or says which part does not fit the format.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::with_capacity(32);
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Appends the encoding to `out` (which a caller encoding many can reuse). On error
    /// `out` may hold part of it.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        put_str(out, &self.name, "node name")?;
        out.push(match self.role {
            Role::Client => 0,
            Role::Server => 1,
        });
        put_str(out, &self.datacenter, "datacenter")?;
        out.extend_from_slice(&self.rpc_port.to_le_bytes());
        out.push(self.protocol_version);
        let count = u8::try_from(self.tags.len()).map_err(|_| WireError::Malformed("tag count"))?;
        out.push(count);
        for (k, v) in &self.tags {
            put_str(out, k, "tag key")?;
            put_str(out, v, "tag value")?;
        }
        Ok(())
    }

    pub fn decode(mut b: &[u8]) -> Result<NodeMeta, WireError> {
        let name = get_str(&mut b, "node name")?;
        let role = match get_u8(&mut b, "role")? {
            0 => Role::Client,
            1 => Role::Server,
            _ => return Err(WireError::Malformed("role")),
        };
        let datacenter = get_str(&mut b, "datacenter")?;
        let rpc_port = get_u16(&mut b, "rpc port")?;
        let protocol_version = get_u8(&mut b, "protocol version")?;
        let count = get_u8(&mut b, "tag count")?;
        let mut tags = BTreeMap::new();
        for _ in 0..count {
            let k = get_str(&mut b, "tag key")?;
            let v = get_str(&mut b, "tag value")?;
            tags.insert(k, v);
        }
        if !b.is_empty() {
            return Err(WireError::Malformed("trailing bytes after metadata"));
        }
        Ok(NodeMeta {
            name,
            role,
            datacenter,
            rpc_port,
            protocol_version,
            tags,
        })
    }
}

fn put_str(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), WireError> {
    let len = u8::try_from(s.len()).map_err(|_| WireError::Malformed(what))?;
    out.push(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn get_u8(b: &mut &[u8], what: &'static str) -> Result<u8, WireError> {
    if b.is_empty() {
        return Err(WireError::Truncated(what));
    }
    Ok(b.get_u8())
}

fn get_u16(b: &mut &[u8], what: &'static str) -> Result<u16, WireError> {
    if b.len() < 2 {
        return Err(WireError::Truncated(what));
    }
    Ok(b.get_u16_le())
}

fn get_u32(b: &mut &[u8], what: &'static str) -> Result<u32, WireError> {
    if b.len() < 4 {
        return Err(WireError::Truncated(what));
    }
    Ok(b.get_u32_le())
}

fn get_str(b: &mut &[u8], what: &'static str) -> Result<String, WireError> {
    let len = get_u8(b, what)? as usize;
    if b.len() < len {
        return Err(WireError::Truncated(what));
    }
    let s = std::str::from_utf8(&b[..len]).map_err(|_| WireError::Malformed(what))?;
    let s = s.to_owned();
    b.advance(len);
    Ok(s)
}

fn get_addr(b: &mut &[u8], what: &'static str) -> Result<SocketAddr, WireError> {
    let ip = match get_u8(b, what)? {
        4 => {
            if b.len() < 4 {
                return Err(WireError::Truncated(what));
            }
            let mut o = [0u8; 4];
            b.copy_to_slice(&mut o);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        6 => {
            if b.len() < 16 {
                return Err(WireError::Truncated(what));
            }
            let mut o = [0u8; 16];
            b.copy_to_slice(&mut o);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(WireError::Malformed(what)),
    };
    let port = get_u16(b, what)?;
    Ok(SocketAddr::new(ip, port))
}

fn put_addr(out: &mut BytesMut, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16_le(a.port());
}

/// One gossip message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Are you alive? Answered by an ack with the same `seq`.
    Ping {
        seq: u32,
    },
    Ack {
        seq: u32,
    },
    /// Lifeguard: a ping-req helper could not reach the target. Its arrival proves the
    /// requester's own network works, so a missing nack counts against local health.
    Nack {
        seq: u32,
    },
    /// Please ping `target` for me; answer `seq` with an ack or a nack.
    PingReq {
        seq: u32,
        target: SocketAddr,
    },
    /// `addr` is alive at `incarnation`, with metadata `meta` (encoded [`NodeMeta`]).
    Alive {
        addr: SocketAddr,
        incarnation: u32,
        meta: Bytes,
    },
    /// `addr` is suspected at `incarnation` by each of `suspecters` (first: the
    /// original suspecter), all distinct.
    Suspect {
        addr: SocketAddr,
        incarnation: u32,
        suspecters: Vec<SocketAddr>,
    },
    /// `addr` is dead at `incarnation`, as declared by `from`.
    Dead {
        addr: SocketAddr,
        incarnation: u32,
        from: SocketAddr,
    },
    /// `addr` left the cluster gracefully at `incarnation`.
    Left {
        addr: SocketAddr,
        incarnation: u32,
    },
    /// Push-pull on join: the receiver answers with its whole state.
    Join,
    /// Anti-entropy digest: one hash per bucket of members. With `reply`, the receiver
    /// sends its own digest back so both sides repair.
    Digest {
        reply: bool,
        buckets: Vec<u64>,
    },
}

impl Message {
    /// Appends the message (kind, length, body) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u8(0);
        out.put_u16_le(0);
        let kind = match self {
            Message::Ping { seq } => {
                out.put_u32_le(*seq);
                KIND_PING
            }
            Message::Ack { seq } => {
                out.put_u32_le(*seq);
                KIND_ACK
            }
            Message::Nack { seq } => {
                out.put_u32_le(*seq);
                KIND_NACK
            }
            Message::PingReq { seq, target } => {
                out.put_u32_le(*seq);
                put_addr(out, target);
                KIND_PING_REQ
            }
            Message::Alive {
                addr,
                incarnation,
                meta,
            } => {
                put_addr(out, addr);
                out.put_u32_le(*incarnation);
                out.put_u16_le(u16::try_from(meta.len()).expect("meta is bounded by config"));
                out.put_slice(meta);
                KIND_ALIVE
            }
            Message::Suspect {
                addr,
                incarnation,
                suspecters,
            } => {
                put_addr(out, addr);
                out.put_u32_le(*incarnation);
                let n = suspecters.len().min(MAX_SUSPECTERS);
                assert!(n > 0, "a suspicion has a suspecter");
                out.put_u8(n as u8);
                for s in &suspecters[..n] {
                    put_addr(out, s);
                }
                KIND_SUSPECT
            }
            Message::Dead {
                addr,
                incarnation,
                from,
            } => {
                put_addr(out, addr);
                out.put_u32_le(*incarnation);
                put_addr(out, from);
                KIND_DEAD
            }
            Message::Left { addr, incarnation } => {
                put_addr(out, addr);
                out.put_u32_le(*incarnation);
                KIND_LEFT
            }
            Message::Join => KIND_JOIN,
            Message::Digest { reply, buckets } => {
                out.put_u8(u8::from(*reply));
                out.put_u16_le(u16::try_from(buckets.len()).expect("buckets are bounded"));
                for b in buckets {
                    out.put_u64_le(*b);
                }
                KIND_DIGEST
            }
        };
        let body_len = out.len() - start - MESSAGE_HEADER_LEN;
        out[start] = kind;
        let len = u16::try_from(body_len).expect("a message body fits a datagram");
        out[start + 1..start + 3].copy_from_slice(&len.to_le_bytes());
    }

    /// The message on its own, framed, ready to be copied into packets.
    pub fn encode_to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(32);
        self.encode(&mut b);
        b.freeze()
    }

    fn decode(kind: u8, body: Bytes, max_meta_bytes: usize) -> Result<Message, WireError> {
        let mut b: &[u8] = &body;
        let m = match kind {
            KIND_PING => Message::Ping {
                seq: get_u32(&mut b, "ping")?,
            },
            KIND_ACK => Message::Ack {
                seq: get_u32(&mut b, "ack")?,
            },
            KIND_NACK => Message::Nack {
                seq: get_u32(&mut b, "nack")?,
            },
            KIND_PING_REQ => Message::PingReq {
                seq: get_u32(&mut b, "ping-req")?,
                target: get_addr(&mut b, "ping-req target")?,
            },
            KIND_ALIVE => {
                let addr = get_addr(&mut b, "alive address")?;
                let incarnation = get_u32(&mut b, "alive incarnation")?;
                let len = get_u16(&mut b, "alive meta length")? as usize;
                if len > max_meta_bytes {
                    return Err(WireError::MetaTooLarge {
                        len,
                        max: max_meta_bytes,
                    });
                }
                if b.len() < len {
                    return Err(WireError::Truncated("alive meta"));
                }
                NodeMeta::decode(&b[..len])?;
                let off = body.len() - b.len();
                let meta = body.slice(off..off + len);
                b.advance(len);
                Message::Alive {
                    addr,
                    incarnation,
                    meta,
                }
            }
            KIND_SUSPECT => {
                let addr = get_addr(&mut b, "suspect address")?;
                let incarnation = get_u32(&mut b, "suspect incarnation")?;
                let n = get_u8(&mut b, "suspecter count")? as usize;
                if n == 0 || n > MAX_SUSPECTERS {
                    return Err(WireError::Malformed("suspecter count"));
                }
                let mut suspecters = Vec::with_capacity(n);
                for _ in 0..n {
                    let s = get_addr(&mut b, "suspecter")?;
                    if suspecters.contains(&s) {
                        return Err(WireError::Malformed("repeated suspecter"));
                    }
                    suspecters.push(s);
                }
                Message::Suspect {
                    addr,
                    incarnation,
                    suspecters,
                }
            }
            KIND_DEAD => Message::Dead {
                addr: get_addr(&mut b, "dead address")?,
                incarnation: get_u32(&mut b, "dead incarnation")?,
                from: get_addr(&mut b, "dead declarer")?,
            },
            KIND_LEFT => Message::Left {
                addr: get_addr(&mut b, "left address")?,
                incarnation: get_u32(&mut b, "left incarnation")?,
            },
            KIND_JOIN => Message::Join,
            KIND_DIGEST => {
                let reply = match get_u8(&mut b, "digest")? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Malformed("digest reply flag")),
                };
                let n = get_u16(&mut b, "digest bucket count")? as usize;
                if b.len() < n * 8 {
                    return Err(WireError::Truncated("digest buckets"));
                }
                let buckets = (0..n).map(|_| b.get_u64_le()).collect();
                Message::Digest { reply, buckets }
            }
            k => return Err(WireError::UnknownKind(k)),
        };
        if !b.is_empty() {
            return Err(WireError::Malformed("trailing bytes in message"));
        }
        Ok(m)
    }
}

/// Decodes a whole datagram. Nothing is returned unless every message in it is valid.
pub fn decode_packet(
    packet: &Bytes,
    max_packet_bytes: usize,
    max_meta_bytes: usize,
) -> Result<Vec<Message>, WireError> {
    if packet.len() > max_packet_bytes {
        return Err(WireError::Oversize {
            len: packet.len(),
            max: max_packet_bytes,
        });
    }
    if packet.len() < HEADER_LEN {
        // Even two bytes of a foreign protocol should read as foreign, not truncated.
        if packet.len() >= 2 && packet[..2] != MAGIC {
            return Err(WireError::BadMagic([packet[0], packet[1]]));
        }
        return Err(WireError::Truncated("header"));
    }
    if packet[..2] != MAGIC {
        return Err(WireError::BadMagic([packet[0], packet[1]]));
    }
    if packet[2] != VERSION {
        return Err(WireError::UnsupportedVersion(packet[2]));
    }
    let mut off = HEADER_LEN;
    let mut out = Vec::new();
    while off < packet.len() {
        if packet.len() - off < MESSAGE_HEADER_LEN {
            return Err(WireError::Truncated("message header"));
        }
        let kind = packet[off];
        let len = u16::from_le_bytes([packet[off + 1], packet[off + 2]]) as usize;
        off += MESSAGE_HEADER_LEN;
        if packet.len() - off < len {
            return Err(WireError::Truncated("message body"));
        }
        out.push(Message::decode(
            kind,
            packet.slice(off..off + len),
            max_meta_bytes,
        )?);
        off += len;
    }
    if out.is_empty() {
        return Err(WireError::Malformed("datagram without messages"));
    }
    Ok(out)
}

/// Builds one compound datagram, refusing whatever would push it past its size limit.
pub struct PacketBuilder {
    buf: BytesMut,
    max: usize,
    messages: usize,
}

impl PacketBuilder {
    pub fn new(max_packet_bytes: usize) -> PacketBuilder {
        let mut buf = BytesMut::with_capacity(max_packet_bytes.min(256));
        buf.put_slice(&MAGIC);
        buf.put_u8(VERSION);
        PacketBuilder {
            buf,
            max: max_packet_bytes,
            messages: 0,
        }
    }

    /// Appends `m` if it fits; says whether it did.
    pub fn push(&mut self, m: &Message) -> bool {
        let start = self.buf.len();
        m.encode(&mut self.buf);
        if self.buf.len() > self.max {
            self.buf.truncate(start);
            return false;
        }
        self.messages += 1;
        true
    }

    /// Appends an already framed message (from [`Message::encode_to_bytes`]) if it fits.
    pub fn push_encoded(&mut self, framed: &[u8]) -> bool {
        if self.buf.len() + framed.len() > self.max {
            return false;
        }
        self.buf.put_slice(framed);
        self.messages += 1;
        true
    }

    pub fn remaining(&self) -> usize {
        self.max - self.buf.len()
    }

    pub fn messages(&self) -> usize {
        self.messages
    }

    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}
