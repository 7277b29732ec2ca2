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
