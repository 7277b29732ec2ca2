//! The binary form of a [`KvCommand`] inside a Raft log entry.
//!
//! ```text
//! byte 0      format version (1)
//! byte 1      command tag: 1 set, 2 cas, 3 delete, 4 delete-cas, 5 delete-tree, 6 txn,
//!             7 reap-tombstones, 8 session-create, 9 session-destroy, 10 acquire,
//!             11 release
//! then        the command's fields in order; integers u64 little-endian, byte strings as
//!             u32 little-endian length + bytes; a txn is u32 op count + ops, each op a tag
//!             (1 set, 2 cas, 3 get, 4 get-tree, 5 check-index, 6 check-not-exists,
//!             7 delete, 8 delete-cas, 9 delete-tree) + fields
//! ```
//!
//! Decoding takes `Bytes` and hands out slices of it: keys and values are not copied.
//! Any malformed input is a [`DecodeError`], never a panic; limits are checked again on
//! decode so a corrupted or foreign entry cannot allocate without bound.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Behavior, KvCommand, Session, TxnOp, MAX_TXN_OPS};

const VERSION: u8 = 1;

/// Why a log entry is not a valid KV command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("entry ends early (needed {needed} more bytes at offset {at})")]
    Truncated { at: usize, needed: usize },
    #[error("unsupported command format version {0}")]
    Version(u8),
    #[error("unknown {what} tag {tag}")]
    UnknownTag { what: &'static str, tag: u8 },
    #[error("{0} trailing bytes after the command")]
    Trailing(usize),
    #[error("transaction of {0} operations exceeds the limit")]
    TooManyOps(u32),
    #[error("a session field is not UTF-8")]
    Utf8,
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("keys and values are limited far below 4 GiB");
    buf.put_u32_le(len);
    buf.put_slice(b);
}

impl KvCommand {
    /// Encodes the command for the Raft log.
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len_hint());
        self.encode_into(&mut buf);
        buf.freeze()
    }

    /// About the size of [`KvCommand::encode`]'s bytes (at least that for single-key
    /// writes), so the buffer is allocated once instead of grown.
    pub fn encoded_len_hint(&self) -> usize {
        let data = match self {
            KvCommand::Set { key, value, .. }
            | KvCommand::Cas { key, value, .. }
            | KvCommand::Acquire { key, value, .. }
            | KvCommand::Release { key, value, .. } => key.len() + value.len(),
            KvCommand::Delete { key } | KvCommand::DeleteCas { key, .. } => key.len(),
            KvCommand::DeleteTree { prefix } => prefix.len(),
            KvCommand::Txn { ops } => ops.len() * 64,
            KvCommand::ReapTombstones { .. }
            | KvCommand::SessionCreate { .. }
            | KvCommand::SessionDestroy { .. } => 0,
        };
        // Tags, lengths, flags, indexes and session ids.
        96 + data
    }

    /// Appends the encoding of [`KvCommand::encode`] to `buf`.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        buf.put_u8(VERSION);
        match self {
            KvCommand::Set { key, value, flags } => {
                buf.put_u8(1);
                put_bytes(buf, key);
                put_bytes(buf, value);
                buf.put_u64_le(*flags);
            }
            KvCommand::Cas {
                key,
                value,
                flags,
                index,
            } => {
                buf.put_u8(2);
                put_bytes(buf, key);
                put_bytes(buf, value);
                buf.put_u64_le(*flags);
                buf.put_u64_le(*index);
            }
            KvCommand::Delete { key } => {
                buf.put_u8(3);
                put_bytes(buf, key);
            }
            KvCommand::DeleteCas { key, index } => {
                buf.put_u8(4);
                put_bytes(buf, key);
                buf.put_u64_le(*index);
            }
            KvCommand::DeleteTree { prefix } => {
                buf.put_u8(5);
                put_bytes(buf, prefix);
            }
            KvCommand::Txn { ops } => {
                buf.put_u8(6);
                buf.put_u32_le(ops.len() as u32);
                for op in ops {
                    encode_op(buf, op);
                }
            }
            KvCommand::ReapTombstones { up_to } => {
                buf.put_u8(7);
                buf.put_u64_le(*up_to);
            }
            KvCommand::SessionCreate { session } => {
                // Tag 12: tag 8's fields, then the bound checks (tag 8 had none).
                buf.put_u8(12);
                put_bytes(buf, session.id.as_bytes());
                put_bytes(buf, session.name.as_bytes());
                put_bytes(buf, session.node.as_bytes());
                buf.put_u8(match session.behavior {
                    Behavior::Release => 0,
                    Behavior::Delete => 1,
                });
                buf.put_u64_le(session.ttl_ms);
                buf.put_u64_le(session.lock_delay_ms);
                buf.put_u64_le(session.create_index);
                for list in [&session.node_checks, &session.service_checks] {
                    buf.put_u32_le(list.len() as u32);
                    for c in list {
                        put_bytes(buf, c.as_bytes());
                    }
                }
            }
            KvCommand::SessionDestroy { id, now_ms } => {
                buf.put_u8(9);
                put_bytes(buf, id.as_bytes());
                buf.put_u64_le(*now_ms);
            }
            KvCommand::Acquire {
                key,
                value,
                flags,
                session,
                now_ms,
            } => {
                buf.put_u8(10);
                put_bytes(buf, key);
                put_bytes(buf, value);
                buf.put_u64_le(*flags);
                put_bytes(buf, session.as_bytes());
                buf.put_u64_le(*now_ms);
            }
            KvCommand::Release {
                key,
                value,
                flags,
                session,
            } => {
                buf.put_u8(11);
                put_bytes(buf, key);
                put_bytes(buf, value);
                buf.put_u64_le(*flags);
                put_bytes(buf, session.as_bytes());
            }
        }
    }

    /// Decodes a command; keys and values are slices of `data`.
    pub fn decode(data: &Bytes) -> Result<KvCommand, DecodeError> {
        let mut r = Reader { data, at: 0 };
        let v = r.u8()?;
        if v != VERSION {
            return Err(DecodeError::Version(v));
        }
        let cmd = match r.u8()? {
            1 => KvCommand::Set {
                key: r.bytes()?,
                value: r.bytes()?,
                flags: r.u64()?,
            },
            2 => KvCommand::Cas {
                key: r.bytes()?,
                value: r.bytes()?,
                flags: r.u64()?,
                index: r.u64()?,
            },
            3 => KvCommand::Delete { key: r.bytes()? },
            4 => KvCommand::DeleteCas {
                key: r.bytes()?,
                index: r.u64()?,
            },
            5 => KvCommand::DeleteTree { prefix: r.bytes()? },
            6 => {
                let n = r.u32()?;
                if n as usize > MAX_TXN_OPS {
                    return Err(DecodeError::TooManyOps(n));
                }
                let mut ops = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    ops.push(decode_op(&mut r)?);
                }
                KvCommand::Txn { ops }
            }
            7 => KvCommand::ReapTombstones { up_to: r.u64()? },
            tag @ (8 | 12) => KvCommand::SessionCreate {
                session: Session {
                    id: r.string()?,
                    name: r.string()?,
                    node: r.string()?,
                    behavior: match r.u8()? {
                        0 => Behavior::Release,
                        1 => Behavior::Delete,
                        tag => {
                            return Err(DecodeError::UnknownTag {
                                what: "session behavior",
                                tag,
                            })
                        }
                    },
                    ttl_ms: r.u64()?,
                    lock_delay_ms: r.u64()?,
                    create_index: r.u64()?,
                    node_checks: if tag == 12 {
                        r.strings()?
                    } else {
                        vec!["serfHealth".to_string()]
                    },
                    service_checks: if tag == 12 { r.strings()? } else { Vec::new() },
                },
            },
            9 => KvCommand::SessionDestroy {
                id: r.string()?,
                now_ms: r.u64()?,
            },
            10 => KvCommand::Acquire {
                key: r.bytes()?,
                value: r.bytes()?,
                flags: r.u64()?,
                session: r.string()?,
                now_ms: r.u64()?,
            },
            11 => KvCommand::Release {
                key: r.bytes()?,
                value: r.bytes()?,
                flags: r.u64()?,
                session: r.string()?,
            },
            tag => {
                return Err(DecodeError::UnknownTag {
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

fn encode_op(buf: &mut BytesMut, op: &TxnOp) {
    match op {
        TxnOp::Set { key, value, flags } => {
            buf.put_u8(1);
            put_bytes(buf, key);
            put_bytes(buf, value);
            buf.put_u64_le(*flags);
        }
        TxnOp::Cas {
            key,
            value,
            flags,
            index,
        } => {
            buf.put_u8(2);
            put_bytes(buf, key);
            put_bytes(buf, value);
            buf.put_u64_le(*flags);
            buf.put_u64_le(*index);
        }
        TxnOp::Get { key } => {
            buf.put_u8(3);
            put_bytes(buf, key);
        }
        TxnOp::GetTree { prefix } => {
            buf.put_u8(4);
            put_bytes(buf, prefix);
        }
        TxnOp::CheckIndex { key, index } => {
            buf.put_u8(5);
            put_bytes(buf, key);
            buf.put_u64_le(*index);
        }
        TxnOp::CheckNotExists { key } => {
            buf.put_u8(6);
            put_bytes(buf, key);
        }
        TxnOp::Delete { key } => {
            buf.put_u8(7);
            put_bytes(buf, key);
        }
        TxnOp::DeleteCas { key, index } => {
            buf.put_u8(8);
            put_bytes(buf, key);
            buf.put_u64_le(*index);
        }
        TxnOp::DeleteTree { prefix } => {
            buf.put_u8(9);
            put_bytes(buf, prefix);
        }
    }
}

fn decode_op(r: &mut Reader<'_>) -> Result<TxnOp, DecodeError> {
    Ok(match r.u8()? {
        1 => TxnOp::Set {
            key: r.bytes()?,
            value: r.bytes()?,
            flags: r.u64()?,
        },
        2 => TxnOp::Cas {
            key: r.bytes()?,
            value: r.bytes()?,
            flags: r.u64()?,
            index: r.u64()?,
        },
        3 => TxnOp::Get { key: r.bytes()? },
        4 => TxnOp::GetTree { prefix: r.bytes()? },
        5 => TxnOp::CheckIndex {
            key: r.bytes()?,
            index: r.u64()?,
        },
        6 => TxnOp::CheckNotExists { key: r.bytes()? },
        7 => TxnOp::Delete { key: r.bytes()? },
        8 => TxnOp::DeleteCas {
            key: r.bytes()?,
            index: r.u64()?,
        },
        9 => TxnOp::DeleteTree { prefix: r.bytes()? },
        tag => {
            return Err(DecodeError::UnknownTag {
                what: "txn op",
                tag,
            })
        }
    })
}

struct Reader<'a> {
    data: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<std::ops::Range<usize>, DecodeError> {
        let left = self.data.len() - self.at;
        if n > left {
            return Err(DecodeError::Truncated {
                at: self.at,
                needed: n - left,
            });
        }
        let r = self.at..self.at + n;
        self.at += n;
        Ok(r)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        let r = self.take(1)?;
        Ok(self.data[r.start])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let r = self.take(4)?;
        Ok(u32::from_le_bytes(
            self.data[r].try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let r = self.take(8)?;
        Ok(u64::from_le_bytes(
            self.data[r].try_into().expect("8 bytes"),
        ))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::Utf8)
    }

    /// A list of strings: a u32 count, then each (a count beyond what the bytes left
    /// could hold is refused before anything is allocated).
    fn strings(&mut self) -> Result<Vec<String>, DecodeError> {
        let n = self.u32()? as usize;
        let left = self.data.len() - self.at;
        if n > left / 4 {
            return Err(DecodeError::Truncated {
                at: self.at,
                needed: n * 4,
            });
        }
        (0..n).map(|_| self.string()).collect()
    }

    fn bytes(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32()? as usize;
        let r = self.take(n)?;
        Ok(self.data.slice(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session create written before sessions named their checks (tag 8) is read as
    /// bound to `serfHealth`, Consul's default then and now.
    #[test]
    fn a_session_create_from_before_bound_checks_reads_as_bound_to_serf_health() {
        let mut b = BytesMut::new();
        b.put_u8(VERSION);
        b.put_u8(8);
        for s in ["id-1", "name", "node-1"] {
            put_bytes(&mut b, s.as_bytes());
        }
        b.put_u8(1);
        b.put_u64_le(10_000);
        b.put_u64_le(15_000);
        b.put_u64_le(0);
        match KvCommand::decode(&b.freeze()).unwrap() {
            KvCommand::SessionCreate { session } => {
                assert_eq!(session.node_checks, vec!["serfHealth".to_string()]);
                assert!(session.service_checks.is_empty());
                assert_eq!(session.behavior, Behavior::Delete);
            }
            other => panic!("{other:?}"),
        }
    }
}
