//! A minimal RESP2 codec (Redis): commands out as arrays of bulk strings, replies in.
//!
//! Pure: bytes in, values out. Only what `GET`/`SET` need is here, but every RESP2 reply
//! type parses, so an unexpected reply is reported as what it is instead of as garbage.
//! A malformed or oversized reply is an error, never a panic.

use super::{Codec, Decoded, OpError};
use crate::measure::ErrorKind;
use crate::workload::{key_name, Op};

/// The largest bulk string or array accepted (Redis's own proto-max-bulk-len is 512 MiB;
/// loadgen never reads anything near that, so a larger length means a broken stream).
pub const MAX_BULK_BYTES: usize = 64 << 20;
/// The longest status/error/integer line accepted.
pub const MAX_LINE_BYTES: usize = 64 << 10;
/// Nesting depth of arrays accepted.
pub const MAX_DEPTH: usize = 8;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo` or the nil bulk string `$-1`.
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n...` or the nil array `*-1`.
    Array(Option<Vec<Reply>>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("unknown reply type byte 0x{0:02x}")]
    UnknownType(u8),
    #[error("bad length or integer {0:?}")]
    BadNumber(String),
    #[error("a line of over {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("a bulk string or array of {0} elements or bytes, over the limit")]
    TooLarge(i64),
    #[error("arrays nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("a bulk string not followed by CRLF")]
    MissingCrlf,
    #[error("a status or error line that is not UTF-8")]
    NotUtf8,
}

/// Appends a command (an array of bulk strings) to `out`.
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the front of `buf`: `Ok(None)` while it is incomplete, else the
/// reply and how many bytes it took.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, RespError> {
    parse_at(buf, 0, 0)
}

/// Finds the CRLF-terminated line starting at `at`; returns it and the index after CRLF.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = &buf[at..];
    let window = &rest[..rest.len().min(MAX_LINE_BYTES + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&rest[..i], at + i + 2))),
        None if rest.len() > MAX_LINE_BYTES + 1 => Err(RespError::LineTooLong),
        None => Ok(None),
    }
}

fn number(text: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| RespError::BadNumber(String::from_utf8_lossy(text).into_owned()))
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::TooDeep);
    }
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    if !b"+-:$*".contains(&kind) {
        return Err(RespError::UnknownType(kind));
    }
    let Some((text, next)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    let utf8 = |t: &[u8]| {
        std::str::from_utf8(t)
            .map(str::to_string)
            .map_err(|_| RespError::NotUtf8)
    };
    match kind {
        b'+' => Ok(Some((Reply::Simple(utf8(text)?), next))),
        b'-' => Ok(Some((Reply::Error(utf8(text)?), next))),
        b':' => Ok(Some((Reply::Integer(number(text)?), next))),
        b'$' => {
            let n = number(text)?;
            if n == -1 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            if n < 0 || n as u64 > MAX_BULK_BYTES as u64 {
                return Err(RespError::TooLarge(n));
            }
            let end = next + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RespError::MissingCrlf);
            }
            Ok(Some((Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)))
        }
        _ => {
            let n = number(text)?;
            if n == -1 {
                return Ok(Some((Reply::Array(None), next)));
            }
            // Each element takes at least 3 bytes, so this also bounds the allocation.
            if n < 0 || n as u64 > (MAX_BULK_BYTES / 3) as u64 {
                return Err(RespError::TooLarge(n));
            }
            let mut items = Vec::with_capacity((n as usize).min(1024));
            let mut at = next;
            for _ in 0..n {
                match parse_at(buf, at, depth + 1)? {
                    Some((r, after)) => {
                        items.push(r);
                        at = after;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
    }
}

/// What a reply means for the operation it answers.
pub fn outcome(op: Op, reply: &Reply) -> Result<(), OpError> {
    match (op, reply) {
        (_, Reply::Error(e)) => Err(OpError::new(ErrorKind::Other, format!("redis: {e}"))),
        // A miss is an answer, as it is for Cairn.
        (Op::Read(_), Reply::Bulk(_)) => Ok(()),
        (Op::Write(_) | Op::Cas(_), Reply::Simple(s)) if s == "OK" => Ok(()),
        // SET NX on a key that exists.
        (Op::Cas(_), Reply::Bulk(None)) => Err(OpError::new(
            ErrorKind::CasFailed,
            "the key exists".to_string(),
        )),
        (op, r) => Err(OpError::new(
            ErrorKind::Other,
            format!("redis: unexpected reply {r:?} to {op:?}"),
        )),
    }
}

/// Redis over RESP2: read = `GET`, write = `SET`, cas = `SET NX` (set only if absent, the
/// same check-and-set Cairn's cas workload sends). Lists have no ordered keyspace in
/// Redis and are refused before a run starts.
#[derive(Debug)]
pub struct RedisCodec {
    value: Vec<u8>,
}

impl RedisCodec {
    pub fn new(value: &[u8]) -> RedisCodec {
        RedisCodec {
            value: value.to_vec(),
        }
    }
}

impl Codec for RedisCodec {
    fn encode(&mut self, op: Op, out: &mut Vec<u8>) {
        match op {
            Op::Read(k) => encode_command(&[b"GET", key_name(k).as_bytes()], out),
            Op::Write(k) => encode_command(&[b"SET", key_name(k).as_bytes(), &self.value], out),
            Op::Cas(k) => {
                encode_command(&[b"SET", key_name(k).as_bytes(), &self.value, b"NX"], out)
            }
            Op::List(_) => unreachable!("list workloads are refused for redis before a run"),
        }
    }

    fn decode(&mut self, buf: &[u8], op: Op) -> Result<Option<Decoded>, String> {
        match parse_reply(buf) {
            Ok(None) => Ok(None),
            Ok(Some((reply, consumed))) => Ok(Some(Decoded {
                consumed,
                result: outcome(op, &reply),
                close: false,
            })),
            Err(e) => Err(format!("redis: malformed reply: {e}")),
        }
    }
}
