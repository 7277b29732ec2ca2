//! The binary form of catalog writes inside Raft log entries: a version byte, a tag
//! (1 register, 2 deregister), then the fields; strings as u32 length + UTF-8, maps as a
//! count of key/value pairs, optional strings behind a 0/1 byte. Malformed input is a
//! [`DecodeError`], never a panic.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::{Check, Registration, Service, Status, Weights};

const VERSION: u8 = 1;
/// Longest string field accepted on decode.
const MAX_STRING: usize = 64 * 1024;
/// Most items (tags, meta pairs, checks) in one list.
const MAX_ITEMS: usize = 4096;

/// A write to the catalog, as it travels through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogCommand {
    Register(Box<Registration>),
    /// Deregister the node, one of its services, or one of its checks.
    Deregister {
        node: String,
        service_id: Option<String>,
        check_id: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("catalog command ends early at byte {0}")]
    Truncated(usize),
    #[error("unsupported catalog command version {0}")]
    Version(u8),
    #[error("unknown {what} tag {tag}")]
    Tag { what: &'static str, tag: u8 },
    #[error("{what} of {len} exceeds the limit of {max}")]
    Limit {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("a string field is not UTF-8")]
    Utf8,
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

struct W(BytesMut);

impl W {
    fn str(&mut self, s: &str) {
        self.0.put_u32_le(s.len() as u32);
        self.0.put_slice(s.as_bytes());
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.0.put_u8(1);
                self.str(s);
            }
            None => self.0.put_u8(0),
        }
    }
    fn map(&mut self, m: &BTreeMap<String, String>) {
        self.0.put_u32_le(m.len() as u32);
        for (k, v) in m {
            self.str(k);
            self.str(v);
        }
    }
    fn status(&mut self, s: Status) {
        self.0.put_u8(match s {
            Status::Passing => 0,
            Status::Warning => 1,
            Status::Critical => 2,
        });
    }
}

impl CatalogCommand {
    pub fn encode(&self) -> Bytes {
        let mut w = W(BytesMut::with_capacity(128));
        w.0.put_u8(VERSION);
        match self {
            CatalogCommand::Register(r) => {
                w.0.put_u8(1);
                w.str(&r.node);
                w.str(&r.id);
                w.str(&r.address);
                w.str(&r.datacenter);
                w.map(&r.node_meta);
                match &r.service {
                    Some(s) => {
                        w.0.put_u8(1);
                        w.str(&s.id);
                        w.str(&s.name);
                        w.0.put_u32_le(s.tags.len() as u32);
                        for t in &s.tags {
                            w.str(t);
                        }
                        w.str(&s.address);
                        w.0.put_u16_le(s.port);
                        w.map(&s.meta);
                        w.0.put_u32_le(s.weights.passing);
                        w.0.put_u32_le(s.weights.warning);
                    }
                    None => w.0.put_u8(0),
                }
                w.0.put_u32_le(r.checks.len() as u32);
                for c in &r.checks {
                    w.str(&c.id);
                    w.str(&c.name);
                    w.status(c.status);
                    w.str(&c.output);
                    w.str(&c.service_id);
                    w.str(&c.kind);
                }
            }
            CatalogCommand::Deregister {
                node,
                service_id,
                check_id,
            } => {
                w.0.put_u8(2);
                w.str(node);
                w.opt(service_id.as_deref());
                w.opt(check_id.as_deref());
            }
        }
        w.0.freeze()
    }

    pub fn decode(data: &[u8]) -> Result<CatalogCommand, DecodeError> {
        let mut r = R { data, at: 0 };
        let v = r.u8()?;
        if v != VERSION {
            return Err(DecodeError::Version(v));
        }
        let cmd = match r.u8()? {
            1 => {
                let node = r.str()?;
                let id = r.str()?;
                let address = r.str()?;
                let datacenter = r.str()?;
                let node_meta = r.map()?;
                let service = match r.u8()? {
                    0 => None,
                    1 => {
                        let id = r.str()?;
                        let name = r.str()?;
                        let n = r.count("tags")?;
                        let mut tags = Vec::with_capacity(n);
                        for _ in 0..n {
                            tags.push(r.str()?);
                        }
                        Some(Service {
                            id,
                            name,
                            tags,
                            address: r.str()?,
                            port: r.u16()?,
                            meta: r.map()?,
                            weights: Weights {
                                passing: r.u32()?,
                                warning: r.u32()?,
                            },
                            create_index: 0,
                            modify_index: 0,
                        })
                    }
                    tag => {
                        return Err(DecodeError::Tag {
                            what: "service",
                            tag,
                        })
                    }
                };
                let n = r.count("checks")?;
                let mut checks = Vec::with_capacity(n);
                for _ in 0..n {
                    checks.push(Check {
                        id: r.str()?,
                        name: r.str()?,
                        status: match r.u8()? {
                            0 => Status::Passing,
                            1 => Status::Warning,
                            2 => Status::Critical,
                            tag => {
                                return Err(DecodeError::Tag {
                                    what: "status",
                                    tag,
                                })
                            }
                        },
                        output: r.str()?,
                        service_id: r.str()?,
                        kind: r.str()?,
                        node: String::new(),
                        service_name: String::new(),
                        create_index: 0,
                        modify_index: 0,
                    });
                }
                CatalogCommand::Register(Box::new(Registration {
                    node,
                    id,
                    address,
                    datacenter,
                    node_meta,
                    service,
                    checks,
                }))
            }
            2 => CatalogCommand::Deregister {
                node: r.str()?,
                service_id: r.opt()?,
                check_id: r.opt()?,
            },
            tag => {
                return Err(DecodeError::Tag {
                    what: "command",
                    tag,
                })
            }
        };
        if r.at != data.len() {
            return Err(DecodeError::Trailing(data.len() - r.at));
        }
        Ok(cmd)
    }
}

struct R<'a> {
    data: &'a [u8],
    at: usize,
}

impl R<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if n > self.data.len() - self.at {
            return Err(DecodeError::Truncated(self.at));
        }
        let s = &self.data[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > MAX_ITEMS {
            return Err(DecodeError::Limit {
                what,
                len: n,
                max: MAX_ITEMS,
            });
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        if n > MAX_STRING {
            return Err(DecodeError::Limit {
                what: "string",
                len: n,
                max: MAX_STRING,
            });
        }
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| DecodeError::Utf8)
    }
    fn opt(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            tag => Err(DecodeError::Tag {
                what: "option",
                tag,
            }),
        }
    }
    fn map(&mut self) -> Result<BTreeMap<String, String>, DecodeError> {
        let n = self.count("meta")?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = self.str()?;
            m.insert(k, self.str()?);
        }
        Ok(m)
    }
}

// ---- snapshot image -------------------------------------------------------------------
//
// The whole catalog inside a snapshot (`StateImage::catalog`): a version byte, then every
// node, service (with its node's name) and check with their indexes, then the table
// indexes and the per-service and per-node indexes. The name index is rebuilt on decode.
// Counts are bounded by the bytes left, not by `MAX_ITEMS` (a catalog may hold 10,000s).

const IMAGE_VERSION: u8 = 1;

impl W {
    fn u64(&mut self, v: u64) {
        self.0.put_u64_le(v);
    }
    fn node(&mut self, n: &super::Node) {
        self.str(&n.name);
        self.str(&n.id);
        self.str(&n.address);
        self.str(&n.datacenter);
        self.map(&n.meta);
        self.u64(n.create_index);
        self.u64(n.modify_index);
    }
    fn service(&mut self, s: &Service) {
        self.str(&s.id);
        self.str(&s.name);
        self.0.put_u32_le(s.tags.len() as u32);
        for t in &s.tags {
            self.str(t);
        }
        self.str(&s.address);
        self.0.put_u16_le(s.port);
        self.map(&s.meta);
        self.0.put_u32_le(s.weights.passing);
        self.0.put_u32_le(s.weights.warning);
        self.u64(s.create_index);
        self.u64(s.modify_index);
    }
    fn check(&mut self, c: &Check) {
        self.str(&c.id);
        self.str(&c.name);
        self.str(&c.node);
        self.status(c.status);
        self.str(&c.output);
        self.str(&c.service_id);
        self.str(&c.service_name);
        self.str(&c.kind);
        self.u64(c.create_index);
        self.u64(c.modify_index);
    }
    fn index_map(&mut self, m: &BTreeMap<String, u64>) {
        self.0.put_u32_le(m.len() as u32);
        for (k, v) in m {
            self.str(k);
            self.u64(*v);
        }
    }
}

impl R<'_> {
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    /// A count of items of at least `min` bytes each, bounded by the bytes left.
    fn image_count(&mut self, what: &'static str, min: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        let max = (self.data.len() - self.at) / min;
        if n > max {
            return Err(DecodeError::Limit { what, len: n, max });
        }
        Ok(n)
    }
    fn status(&mut self) -> Result<Status, DecodeError> {
        match self.u8()? {
            0 => Ok(Status::Passing),
            1 => Ok(Status::Warning),
            2 => Ok(Status::Critical),
            tag => Err(DecodeError::Tag {
                what: "status",
                tag,
            }),
        }
    }
    fn node(&mut self) -> Result<super::Node, DecodeError> {
        Ok(super::Node {
            name: self.str()?,
            id: self.str()?,
            address: self.str()?,
            datacenter: self.str()?,
            meta: self.map()?,
            create_index: self.u64()?,
            modify_index: self.u64()?,
        })
    }
    fn service(&mut self) -> Result<Service, DecodeError> {
        let id = self.str()?;
        let name = self.str()?;
        let n = self.count("tags")?;
        let mut tags = Vec::with_capacity(n);
        for _ in 0..n {
            tags.push(self.str()?);
        }
        Ok(Service {
            id,
            name,
            tags,
            address: self.str()?,
            port: self.u16()?,
            meta: self.map()?,
            weights: Weights {
                passing: self.u32()?,
                warning: self.u32()?,
            },
            create_index: self.u64()?,
            modify_index: self.u64()?,
        })
    }
    fn check(&mut self) -> Result<Check, DecodeError> {
        Ok(Check {
            id: self.str()?,
            name: self.str()?,
            node: self.str()?,
            status: self.status()?,
            output: self.str()?,
            service_id: self.str()?,
            service_name: self.str()?,
            kind: self.str()?,
            create_index: self.u64()?,
            modify_index: self.u64()?,
        })
    }
    fn index_map(&mut self) -> Result<BTreeMap<String, u64>, DecodeError> {
        let n = self.image_count("index map", 12)?;
        let mut m = BTreeMap::new();
        for _ in 0..n {
            let k = self.str()?;
            m.insert(k, self.u64()?);
        }
        Ok(m)
    }
}

impl super::Catalog {
    /// The catalog as a snapshot stores it.
    pub fn encode_image(&self) -> Vec<u8> {
        let mut w = W(BytesMut::with_capacity(256 + 256 * self.services.len()));
        w.0.put_u8(IMAGE_VERSION);
        w.0.put_u32_le(self.nodes.len() as u32);
        for n in self.nodes.values() {
            w.node(n);
        }
        w.0.put_u32_le(self.services.len() as u32);
        for ((node, _), s) in &self.services {
            w.str(node);
            w.service(s);
        }
        w.0.put_u32_le(self.checks.len() as u32);
        for c in self.checks.values() {
            w.check(c);
        }
        w.u64(self.nodes_index);
        w.u64(self.services_index);
        w.u64(self.checks_index);
        w.index_map(&self.service_index);
        w.index_map(&self.node_index);
        w.0.to_vec()
    }

    /// Rebuilds a catalog from [`Self::encode_image`]'s bytes (empty bytes: an empty
    /// catalog, as in snapshots taken before anything was registered).
    pub fn decode_image(data: &[u8]) -> Result<super::Catalog, DecodeError> {
        let mut cat = super::Catalog::default();
        if data.is_empty() {
            return Ok(cat);
        }
        let mut r = R { data, at: 0 };
        let v = r.u8()?;
        if v != IMAGE_VERSION {
            return Err(DecodeError::Version(v));
        }
        for _ in 0..r.image_count("nodes", 36)? {
            let n = r.node()?;
            cat.nodes.insert(n.name.clone(), n);
        }
        for _ in 0..r.image_count("services", 50)? {
            let node = r.str()?;
            let s = r.service()?;
            let key = (node, s.id.clone());
            cat.by_name
                .entry(s.name.clone())
                .or_default()
                .insert(key.clone());
            cat.services.insert(key, s);
        }
        for _ in 0..r.image_count("checks", 49)? {
            let c = r.check()?;
            cat.checks.insert((c.node.clone(), c.id.clone()), c);
        }
        cat.nodes_index = r.u64()?;
        cat.services_index = r.u64()?;
        cat.checks_index = r.u64()?;
        cat.service_index = r.index_map()?;
        cat.node_index = r.index_map()?;
        if r.at != data.len() {
            return Err(DecodeError::Trailing(data.len() - r.at));
        }
        Ok(cat)
    }
}
