//! The binary form of catalog writes inside Raft log entries, and of the whole catalog
//! inside a snapshot. Both are made of the RPC protocol's catalog items
//! (`cairn_net::rpc::catalog::{ItemWriter, ItemReader}`), so the log, the snapshot and the
//! wire share one codec. Malformed input is a [`DecodeError`], never a panic.
//!
//! Log entry: a version byte, a tag (1 register: a registration; 2 deregister: node,
//! optional service id, optional check id).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use cairn_net::rpc::catalog::{ItemReader, ItemWriter};
use cairn_net::rpc::message::Limits;

use super::Registration;

/// Why a log entry or a snapshot image does not decode.
pub use cairn_net::rpc::message::MessageError as DecodeError;

const VERSION: u8 = 2;

/// What the log and the snapshot accept: the wire's limits, except for names (written by
/// any interface, not only the RPC decoder) and list lengths (a catalog holds 10,000s).
fn limits() -> Limits {
    Limits {
        max_string: 64 * 1024,
        max_items: usize::MAX,
        ..Limits::default()
    }
}

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

fn version(r: &mut ItemReader, expect: u8, what: &'static str) -> Result<(), DecodeError> {
    match r.u8()? {
        v if v == expect => Ok(()),
        tag => Err(DecodeError::UnknownTag { what, tag }),
    }
}

impl CatalogCommand {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(128);
        let mut w = ItemWriter::new(&mut out);
        w.u8(VERSION);
        match self {
            CatalogCommand::Register(r) => {
                w.u8(1);
                w.registration(r);
            }
            CatalogCommand::Deregister {
                node,
                service_id,
                check_id,
            } => {
                w.u8(2);
                w.string(node);
                w.opt_string(service_id.as_deref());
                w.opt_string(check_id.as_deref());
            }
        }
        out.freeze()
    }

    pub fn decode(data: &Bytes) -> Result<CatalogCommand, DecodeError> {
        let limits = limits();
        let mut r = ItemReader::new(data, &limits);
        version(&mut r, VERSION, "catalog command version")?;
        let cmd = match r.u8()? {
            1 => CatalogCommand::Register(Box::new(r.registration()?)),
            2 => CatalogCommand::Deregister {
                node: r.string("node name")?,
                service_id: r.opt_string("service id")?,
                check_id: r.opt_string("check id")?,
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "catalog command",
                    tag,
                })
            }
        };
        r.end()?;
        Ok(cmd)
    }
}

// ---- snapshot image -------------------------------------------------------------------
//
// The whole catalog inside a snapshot (`StateImage::catalog`): a version byte, then every
// node, service (with its node's name) and check with their indexes, then the table
// indexes and the per-service and per-node indexes. The name index is rebuilt on decode.

const IMAGE_VERSION: u8 = 2;

fn put_index_map(w: &mut ItemWriter, m: &BTreeMap<String, u64>) {
    w.count(m.len());
    for (k, v) in m {
        w.string(k);
        w.u64(*v);
    }
}

fn get_index_map(r: &mut ItemReader) -> Result<BTreeMap<String, u64>, DecodeError> {
    let mut m = BTreeMap::new();
    for _ in 0..r.count("index map")? {
        let k = r.string("index map key")?;
        m.insert(k, r.u64()?);
    }
    Ok(m)
}

impl super::Catalog {
    /// The catalog as a snapshot stores it.
    pub fn encode_image(&self) -> Vec<u8> {
        let mut out = BytesMut::with_capacity(256 + 256 * self.services.len());
        let mut w = ItemWriter::new(&mut out);
        w.u8(IMAGE_VERSION);
        w.count(self.nodes.len());
        for n in self.nodes.values() {
            w.node(n);
        }
        w.count(self.services.len());
        for ((node, _), s) in &self.services {
            w.string(node);
            w.service(s);
        }
        w.count(self.checks.len());
        for c in self.checks.values() {
            w.check(c);
        }
        w.u64(self.nodes_index);
        w.u64(self.services_index);
        w.u64(self.checks_index);
        put_index_map(&mut w, &self.service_index);
        put_index_map(&mut w, &self.node_index);
        out.to_vec()
    }

    /// Rebuilds a catalog from [`Self::encode_image`]'s bytes (empty bytes: an empty
    /// catalog, as in snapshots taken before anything was registered).
    pub fn decode_image(data: &[u8]) -> Result<super::Catalog, DecodeError> {
        let mut cat = super::Catalog::default();
        if data.is_empty() {
            return Ok(cat);
        }
        let data = Bytes::copy_from_slice(data);
        let limits = limits();
        let mut r = ItemReader::new(&data, &limits);
        version(&mut r, IMAGE_VERSION, "catalog image version")?;
        for _ in 0..r.count("nodes")? {
            let n = r.node()?;
            cat.nodes.insert(n.name.clone(), n);
        }
        for _ in 0..r.count("services")? {
            let node = r.string("node name")?;
            let s = r.service()?;
            let key = (node, s.id.clone());
            cat.by_name
                .entry(s.name.clone())
                .or_default()
                .insert(key.clone());
            cat.services.insert(key, s);
        }
        for _ in 0..r.count("checks")? {
            let c = r.check()?;
            cat.checks.insert((c.node.clone(), c.id.clone()), c);
        }
        cat.nodes_index = r.u64()?;
        cat.services_index = r.u64()?;
        cat.checks_index = r.u64()?;
        cat.service_index = get_index_map(&mut r)?;
        cat.node_index = get_index_map(&mut r)?;
        r.end()?;
        Ok(cat)
    }
}
