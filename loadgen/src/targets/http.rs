//! Just enough HTTP/1.1 for a keep-alive, pipelined client: requests written by hand,
//! responses parsed from a byte buffer (status, `Content-Length` or chunked body,
//! `Connection: close`).
//!
//! Pure: no socket here. Oversized or malformed responses are errors, never panics.

/// The longest status line plus headers accepted.
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// The largest body accepted.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// One parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server will close the connection after this response.
    pub close: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("response head over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("bad status line {0:?}")]
    StatusLine(String),
    #[error("bad header line {0:?}")]
    Header(String),
    #[error("bad Content-Length {0:?}")]
    ContentLength(String),
    #[error("bad chunk size line {0:?}")]
    ChunkSize(String),
    #[error("body over {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("a chunk not followed by CRLF")]
    ChunkEnd,
    #[error("a response with neither Content-Length nor chunked encoding (read-until-close is not supported)")]
    NoLength,
    #[error("unsupported transfer encoding {0:?}")]
    TransferEncoding(String),
}

/// Appends a request to `out`. `body` is sent with a `Content-Length`; `content_type`
/// is added when given.
pub fn encode_request(
    method: &str,
    host: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(ct) = content_type {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(ct.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned()
}

/// Parses one response from the front of `buf`: `Ok(None)` while incomplete, else the
/// response and the bytes it took. Interim `1xx` responses are skipped (counted in the
/// bytes taken). `head_only`: the response to a `HEAD` request (no body).
pub fn parse_response(buf: &[u8], head_only: bool) -> Result<Option<(Response, usize)>, HttpError> {
    let mut start = 0;
    loop {
        let Some(head_end) = buf[start..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| start + i)
        else {
            if buf.len() - start > MAX_HEAD_BYTES {
                return Err(HttpError::HeadTooLarge);
            }
            return Ok(None);
        };
        if head_end - start > MAX_HEAD_BYTES {
            return Err(HttpError::HeadTooLarge);
        }
        let head = &buf[start..head_end];
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let status_line = lines.next().unwrap_or_default();
        let status = parse_status(status_line)?;
        let http10 = status_line.starts_with(b"HTTP/1.0");
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut close = http10;
        for l in lines {
            let colon = l
                .iter()
                .position(|&b| b == b':')
                .ok_or_else(|| HttpError::Header(lossy(l)))?;
            let name = &l[..colon];
            let value = std::str::from_utf8(&l[colon + 1..])
                .map_err(|_| HttpError::Header(lossy(l)))?
                .trim();
            if name.eq_ignore_ascii_case(b"content-length") {
                let n: usize = value
                    .parse()
                    .map_err(|_| HttpError::ContentLength(value.to_string()))?;
                if length.is_some_and(|m| m != n) {
                    return Err(HttpError::ContentLength(value.to_string()));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                if value.eq_ignore_ascii_case("chunked") {
                    chunked = true;
                } else if !value.eq_ignore_ascii_case("identity") {
                    return Err(HttpError::TransferEncoding(value.to_string()));
                }
            } else if name.eq_ignore_ascii_case(b"connection") {
                let v = value.to_ascii_lowercase();
                if v.split(',').any(|t| t.trim() == "close") {
                    close = true;
                } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                    close = false;
                }
            }
        }
        let body_start = head_end + 4;
        if (100..200).contains(&status) {
            start = body_start;
            continue;
        }
        if head_only || status == 204 || status == 304 {
            return Ok(Some((
                Response {
                    status,
                    body: Vec::new(),
                    close,
                },
                body_start,
            )));
        }
        if chunked {
            return Ok(parse_chunked(buf, body_start)?.map(|(body, end)| {
                (
                    Response {
                        status,
                        body,
                        close,
                    },
                    end,
                )
            }));
        }
        let Some(n) = length else {
            return Err(HttpError::NoLength);
        };
        if n > MAX_BODY_BYTES {
            return Err(HttpError::BodyTooLarge);
        }
        if buf.len() < body_start + n {
            return Ok(None);
        }
        return Ok(Some((
            Response {
                status,
                body: buf[body_start..body_start + n].to_vec(),
                close,
            },
            body_start + n,
        )));
    }
}

fn parse_status(line: &[u8]) -> Result<u16, HttpError> {
    let bad = || HttpError::StatusLine(lossy(line));
    if !line.starts_with(b"HTTP/1.") {
        return Err(bad());
    }
    let code = line.get(9..12).ok_or_else(bad)?;
    if line.get(8) != Some(&b' ') || line.get(12).is_some_and(|&b| b != b' ') {
        return Err(bad());
    }
    std::str::from_utf8(code)
        .ok()
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)
}

fn parse_chunked(buf: &[u8], mut at: usize) -> Result<Option<(Vec<u8>, usize)>, HttpError> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find_crlf(buf, at) else {
            if buf.len() - at > 1024 {
                return Err(HttpError::ChunkSize(lossy(&buf[at..])));
            }
            return Ok(None);
        };
        let line = &buf[at..eol];
        // Chunk extensions (";name=value") are allowed and ignored.
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size_text)
            .ok()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .and_then(|s| usize::from_str_radix(s, 16).ok())
            .ok_or_else(|| HttpError::ChunkSize(lossy(line)))?;
        at = eol + 2;
        if size == 0 {
            // Trailers, each ending in CRLF, then an empty line.
            loop {
                let Some(eol) = find_crlf(buf, at) else {
                    return Ok(None);
                };
                let empty = eol == at;
                at = eol + 2;
                if empty {
                    return Ok(Some((body, at)));
                }
            }
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(HttpError::BodyTooLarge);
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(HttpError::ChunkEnd);
        }
        at += size + 2;
    }
}

/// Standard base64 (RFC 4648, with padding), as etcd's JSON gateway and Consul's KV API
/// carry keys and values. Written out here to keep the dependency list short.
pub mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(input: &[u8]) -> String {
        let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("invalid base64 at byte {0}")]
    pub struct DecodeError(pub usize);

    pub fn decode(input: &str) -> Result<Vec<u8>, DecodeError> {
        let bytes = input.as_bytes();
        if bytes.len() % 4 != 0 {
            return Err(DecodeError(bytes.len()));
        }
        let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
        for (q, quad) in bytes.chunks(4).enumerate() {
            let last = q == bytes.len() / 4 - 1;
            let mut n = 0u32;
            let mut pad = 0;
            for (i, &c) in quad.iter().enumerate() {
                let v = match c {
                    b'A'..=b'Z' => c - b'A',
                    b'a'..=b'z' => c - b'a' + 26,
                    b'0'..=b'9' => c - b'0' + 52,
                    b'+' => 62,
                    b'/' => 63,
                    // Padding only at the end of the last quad.
                    b'=' if last && i >= 2 && (i == 3 || quad[3] == b'=') => {
                        pad += 1;
                        0
                    }
                    _ => return Err(DecodeError(q * 4 + i)),
                };
                if pad > 0 && c != b'=' {
                    return Err(DecodeError(q * 4 + i));
                }
                n = (n << 6) | u32::from(v);
            }
            let b = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&b[..3 - pad]);
        }
        Ok(out)
    }
}
