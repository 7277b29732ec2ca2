//! RPC frames: the unit on a TCP connection.
//!
//! ```text
//! offset size field
//!      0    2 magic "CR"
//!      2    1 protocol version (1)
//!      3    1 kind: 0 request, 1 response, 2 cancel
//!      4    4 flags (reserved, 0)
//!      8    8 request id (a response carries its request's id)
//!     16    4 payload length
//!     20    4 crc32 of bytes 0..20 and the payload
//!     24    - payload
//! ```
//!
//! Many requests may be in flight on one connection; responses come back in any order and
//! are matched by id. A cancel frame (client to server, no payload: its length is 0) says
//! the client no longer waits for the answer to request `id`: the server drops that
//! request if it is a blocking read still waiting, and ignores the cancel otherwise (an
//! unknown or finished id, a write already under way). Its answer may still come and is
//! then ignored by the client. An agent from before cancel frames refuses kind 2 as any
//! unknown kind ([`FrameError::Kind`]: an error frame and a close of that connection). The decoder rejects an oversize frame from its header, before
//! buffering the payload, and hands payloads out as `Bytes` split off the read buffer (no
//! copy).

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const MAGIC: [u8; 2] = *b"CR";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;
/// Default largest payload: room for a 512 KiB value and a transaction's overhead, small
/// enough that a hostile peer cannot make a server buffer much per connection.
pub const DEFAULT_MAX_PAYLOAD: usize = 2 * 1024 * 1024;
/// Largest answer a client accepts from a server (see [`FrameDecoder::for_responses`]):
/// catalog reads of a 10,000-node datacenter (every check in it: about 16 MB) and KV
/// prefix reads are far larger than any request, and a client trusts the server it asked.
pub const MAX_RESPONSE_PAYLOAD: usize = 128 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
    /// The client stopped waiting for request `id`; no payload.
    Cancel,
}

impl Kind {
    fn byte(self) -> u8 {
        match self {
            Kind::Request => 0,
            Kind::Response => 1,
            Kind::Cancel => 2,
        }
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub id: u64,
    pub payload: Bytes,
}

/// Why bytes on a connection are not a frame. Every variant ends the connection: after
/// any of them the byte stream cannot be trusted to be in step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a Cairn RPC stream (bad magic {0:02x?})")]
    BadMagic([u8; 2]),
    #[error("peer speaks RPC protocol version {0}, this agent speaks {VERSION}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame checksum mismatch (request id {id})")]
    Checksum { id: u64 },
    #[error("cancel frame with a payload of {len} bytes (a cancel has none)")]
    CancelPayload { len: usize },
}

fn crc(header: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header[..20]);
    h.update(payload);
    h.finalize()
}

/// Appends a cancel frame for request `id` to `out` (a header, no payload).
pub fn encode_cancel(out: &mut BytesMut, id: u64) {
    encode(out, Kind::Cancel, id, &[]);
}

/// Appends a frame to `out`.
pub fn encode(out: &mut BytesMut, kind: Kind, id: u64, payload: &[u8]) {
    let start = out.len();
    out.reserve(HEADER_LEN + payload.len());
    out.put_slice(&MAGIC);
    out.put_u8(VERSION);
    out.put_u8(kind.byte());
    out.put_u32_le(0);
    out.put_u64_le(id);
    out.put_u32_le(u32::try_from(payload.len()).expect("payloads are limited far below 4 GiB"));
    let c = crc(&out[start..start + 20], payload);
    out.put_u32_le(c);
    out.put_slice(payload);
}

/// Appends a frame whose payload `write` produces straight into `out`, so the payload is
/// not built in a buffer of its own and copied (the header is written first and its length
/// and checksum filled in afterwards).
pub fn encode_with(out: &mut BytesMut, kind: Kind, id: u64, write: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_slice(&MAGIC);
    out.put_u8(VERSION);
    out.put_u8(kind.byte());
    out.put_u32_le(0);
    out.put_u64_le(id);
    out.put_u64_le(0); // length and crc, filled in below
    write(out);
    let len = out.len() - start - HEADER_LEN;
    let len32 = u32::try_from(len).expect("payloads are limited far below 4 GiB");
    out[start + 16..start + 20].copy_from_slice(&len32.to_le_bytes());
    let c = crc(&out[start..start + 20], &out[start + HEADER_LEN..]);
    out[start + 20..start + 24].copy_from_slice(&c.to_le_bytes());
}

/// Splits frames off a connection's read buffer.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_payload: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl FrameDecoder {
    /// The decoder a client reads a server's answers with: up to
    /// [`MAX_RESPONSE_PAYLOAD`] (a server reads requests with the default, 2 MiB).
    pub fn for_responses() -> FrameDecoder {
        FrameDecoder::new(MAX_RESPONSE_PAYLOAD)
    }
}

impl FrameDecoder {
    pub fn new(max_payload: usize) -> FrameDecoder {
        FrameDecoder { max_payload }
    }

    /// The next complete frame in `buf`, removed from it; `Ok(None)` if more bytes are
    /// needed. On error the connection must be closed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < HEADER_LEN {
            // Check what we have early, so garbage is refused without waiting for more.
            if buf.len() >= 2 && buf[..2] != MAGIC {
                return Err(FrameError::BadMagic([buf[0], buf[1]]));
            }
            return Ok(None);
        }
        let h = &buf[..HEADER_LEN];
        if h[..2] != MAGIC {
            return Err(FrameError::BadMagic([h[0], h[1]]));
        }
        if h[2] != VERSION {
            return Err(FrameError::Version(h[2]));
        }
        let kind = match h[3] {
            0 => Kind::Request,
            1 => Kind::Response,
            2 => Kind::Cancel,
            k => return Err(FrameError::Kind(k)),
        };
        let id = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes")) as usize;
        if kind == Kind::Cancel && len != 0 {
            return Err(FrameError::CancelPayload { len });
        }
        if len > self.max_payload {
            return Err(FrameError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        if buf.len() < HEADER_LEN + len {
            buf.reserve(HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        let want = u32::from_le_bytes(h[20..24].try_into().expect("4 bytes"));
        if crc(h, &buf[HEADER_LEN..HEADER_LEN + len]) != want {
            return Err(FrameError::Checksum { id });
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        Ok(Some(Frame { kind, id, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn frames_survive_any_split_of_the_stream(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..8),
            cuts in prop::collection::vec(1usize..64, 1..40),
        ) {
            let kind = |i: usize| [Kind::Request, Kind::Response, Kind::Cancel][i % 3];
            let mut wire = BytesMut::new();
            for (i, p) in payloads.iter().enumerate() {
                if kind(i) == Kind::Cancel {
                    encode_cancel(&mut wire, i as u64 * 7);
                } else {
                    encode(&mut wire, kind(i), i as u64 * 7, p);
                }
            }
            let wire = wire.freeze();
            let dec = FrameDecoder::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut at = 0;
            let mut cut = cuts.iter().cycle();
            while at < wire.len() {
                let n = (*cut.next().unwrap()).min(wire.len() - at);
                buf.extend_from_slice(&wire[at..at + n]);
                at += n;
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got.len(), payloads.len());
            for (i, f) in got.iter().enumerate() {
                prop_assert_eq!(f.id, i as u64 * 7);
                prop_assert_eq!(f.kind, kind(i));
                let want: &[u8] = if kind(i) == Kind::Cancel { &[] } else { &payloads[i] };
                prop_assert_eq!(&f.payload[..], want);
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = FrameDecoder::default().decode(&mut buf);
        }
    }

    fn one() -> BytesMut {
        let mut b = BytesMut::new();
        encode(&mut b, Kind::Request, 42, b"hello");
        b
    }

    #[test]
    fn a_frame_written_in_place_equals_one_written_from_a_buffer() {
        let mut a = BytesMut::new();
        encode(&mut a, Kind::Response, 9, b"payload bytes");
        let mut b = BytesMut::from(&b"already here"[..]);
        encode_with(&mut b, Kind::Response, 9, |out| {
            out.put_slice(b"payload bytes")
        });
        assert_eq!(&b[12..], &a[..]);
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused() {
        for i in 0..one().len() {
            let mut b = one();
            b[i] ^= 0x01;
            let r = FrameDecoder::default().decode(&mut b);
            assert!(r.is_err() || matches!(r, Ok(None)), "byte {i}: {r:?}");
            if (4..8).contains(&i) {
                // The reserved flags are covered by the checksum too.
                assert!(r.is_err(), "byte {i}");
            }
        }
    }

    #[test]
    fn an_oversize_frame_is_refused_from_its_header() {
        let mut b = BytesMut::new();
        encode(&mut b, Kind::Request, 1, &[0u8; 100]);
        let mut head = BytesMut::from(&b[..HEADER_LEN]);
        assert_eq!(
            FrameDecoder::new(99).decode(&mut head),
            Err(FrameError::TooLarge { len: 100, max: 99 })
        );
    }

    #[test]
    fn foreign_and_future_streams_get_clear_errors() {
        let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
        assert_eq!(
            FrameDecoder::default().decode(&mut http),
            Err(FrameError::BadMagic(*b"GE"))
        );
        let mut b = one();
        b[2] = 9;
        assert_eq!(
            FrameDecoder::default().decode(&mut b),
            Err(FrameError::Version(9))
        );
    }

    #[test]
    fn a_cancel_frame_is_a_bare_header_naming_its_request() {
        let mut b = BytesMut::new();
        encode_cancel(&mut b, 77);
        assert_eq!(b.len(), HEADER_LEN);
        assert_eq!(b[3], 2);
        let f = FrameDecoder::default().decode(&mut b).unwrap().unwrap();
        assert_eq!((f.kind, f.id, f.payload.len()), (Kind::Cancel, 77, 0));
        assert!(b.is_empty());
    }

    #[test]
    fn a_cancel_frame_with_a_payload_is_refused_from_its_header() {
        let mut b = BytesMut::new();
        encode(&mut b, Kind::Cancel, 5, b"x");
        let mut head = BytesMut::from(&b[..HEADER_LEN]);
        assert_eq!(
            FrameDecoder::default().decode(&mut head),
            Err(FrameError::CancelPayload { len: 1 })
        );
    }

    #[test]
    fn an_unknown_kind_is_a_clear_error_not_a_frame() {
        // What an agent from before cancel frames says to kind 2, and this one to kind 3.
        let mut b = one();
        b[3] = 3;
        assert_eq!(
            FrameDecoder::default().decode(&mut b),
            Err(FrameError::Kind(3))
        );
    }

    #[test]
    fn payloads_are_split_off_the_read_buffer_without_copying() {
        let mut b = one();
        let base = b.as_ptr() as usize;
        let f = FrameDecoder::default().decode(&mut b).unwrap().unwrap();
        assert_eq!(f.payload.as_ptr() as usize, base + HEADER_LEN);
    }
}
