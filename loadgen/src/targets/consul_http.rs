//! Consul's HTTP KV API (`/v1/kv/<key>`): what existing Consul tooling speaks, served by
//! a real Consul and by Cairn's HTTP API.
//!
//! read = `GET /v1/kv/<key>` (a 404 is a miss, not an error), write = `PUT`, cas =
//! `PUT ?cas=0` (only if absent), list = `GET /v1/kv/<prefix>?keys`. The consistency of
//! the run becomes `?stale` or `?consistent`, as in Consul. Parsers are pure functions.

use cairn_net::rpc::message::Consistency;
use serde_json::Value;

use super::http::{self, base64};
use super::{Codec, Decoded, OpError};
use crate::measure::ErrorKind;
use crate::workload::{key_name, Op};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsulError {
    #[error("consul: body is not JSON: {0}")]
    NotJson(String),
    #[error("consul: unexpected reply shape: {0}")]
    Shape(String),
    #[error("consul: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// The path and query of a request for `op`.
pub fn request_target(op: Op, consistency: Consistency) -> String {
    let read_query = match consistency {
        Consistency::Stale => "stale",
        Consistency::Consistent => "consistent",
        Consistency::Default => "",
    };
    match op {
        Op::Read(k) if read_query.is_empty() => format!("/v1/kv/{}", key_name(k)),
        Op::Read(k) => format!("/v1/kv/{}?{read_query}", key_name(k)),
        Op::Write(k) => format!("/v1/kv/{}", key_name(k)),
        Op::Cas(k) => format!("/v1/kv/{}?cas=0", key_name(k)),
        Op::List(k) if read_query.is_empty() => format!("/v1/kv/{}?keys", super::list_prefix(k)),
        Op::List(k) => format!("/v1/kv/{}?keys&{read_query}", super::list_prefix(k)),
    }
}

/// The value of a `GET /v1/kv/<key>` reply (`None` for a key with a null value).
pub fn parse_get(body: &[u8]) -> Result<Option<Vec<u8>>, ConsulError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ConsulError::NotJson(e.to_string()))?;
    let entry = v
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_object)
        .ok_or_else(|| ConsulError::Shape("not an array of entries".into()))?;
    match entry.get("Value") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(base64::decode(s)?)),
        Some(_) => Err(ConsulError::Shape("Value is not a string".into())),
    }
}

/// The keys of a `GET /v1/kv/<prefix>?keys` reply.
pub fn parse_keys(body: &[u8]) -> Result<Vec<String>, ConsulError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ConsulError::NotJson(e.to_string()))?;
    v.as_array()
        .ok_or_else(|| ConsulError::Shape("not an array of keys".into()))?
        .iter()
        .map(|k| {
            k.as_str()
                .map(str::to_string)
                .ok_or_else(|| ConsulError::Shape("a key is not a string".into()))
        })
        .collect()
}

/// The `true`/`false` body of a `PUT`.
pub fn parse_put(body: &[u8]) -> Result<bool, ConsulError> {
    match body.trim_ascii() {
        b"true" => Ok(true),
        b"false" => Ok(false),
        other => Err(ConsulError::Shape(format!(
            "PUT answered {:?}, not true or false",
            String::from_utf8_lossy(&other[..other.len().min(100)])
        ))),
    }
}

/// What a response means for the operation it answers.
pub fn outcome(op: Op, resp: &http::Response) -> Result<(), OpError> {
    let other = |e: ConsulError| OpError::new(ErrorKind::Other, e.to_string());
    let reads = matches!(op, Op::Read(_) | Op::List(_));
    if resp.status == 404 && reads {
        return Ok(()); // a miss is an answer
    }
    if resp.status != 200 {
        let text = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)]).into_owned();
        let kind = if resp.status == 408 || resp.status == 504 {
            ErrorKind::Timeout
        } else {
            ErrorKind::Other
        };
        return Err(OpError::new(
            kind,
            format!("consul: HTTP {}: {}", resp.status, text.trim()),
        ));
    }
    match op {
        Op::Read(_) => parse_get(&resp.body).map(|_| ()).map_err(other),
        Op::List(_) => parse_keys(&resp.body).map(|_| ()).map_err(other),
        Op::Write(_) => match parse_put(&resp.body).map_err(other)? {
            true => Ok(()),
            false => Err(OpError::new(
                ErrorKind::Other,
                "consul: a plain PUT answered false".into(),
            )),
        },
        Op::Cas(_) => match parse_put(&resp.body).map_err(other)? {
            true => Ok(()),
            false => Err(OpError::new(ErrorKind::CasFailed, "the key exists".into())),
        },
    }
}

/// One connection's requests to a Consul-compatible HTTP API.
#[derive(Debug)]
pub struct ConsulCodec {
    host: String,
    value: Vec<u8>,
    consistency: Consistency,
}

impl ConsulCodec {
    pub fn new(host: &str, value: &[u8], consistency: Consistency) -> ConsulCodec {
        ConsulCodec {
            host: host.to_string(),
            value: value.to_vec(),
            consistency,
        }
    }
}

impl Codec for ConsulCodec {
    fn encode(&mut self, op: Op, out: &mut Vec<u8>) {
        let target = request_target(op, self.consistency);
        match op {
            Op::Read(_) | Op::List(_) => {
                http::encode_request("GET", &self.host, &target, None, b"", out)
            }
            Op::Write(_) | Op::Cas(_) => {
                http::encode_request("PUT", &self.host, &target, None, &self.value, out)
            }
        }
    }

    fn decode(&mut self, buf: &[u8], op: Op) -> Result<Option<Decoded>, String> {
        match http::parse_response(buf, false) {
            Ok(None) => Ok(None),
            Ok(Some((resp, consumed))) => Ok(Some(Decoded {
                consumed,
                result: outcome(op, &resp),
                close: resp.close,
            })),
            Err(e) => Err(format!("consul: malformed HTTP response: {e}")),
        }
    }
}
