//! etcd v3 over its HTTP/JSON gateway (`/v3/kv/put`, `/v3/kv/range`, `/v3/kv/txn`), the
//! way a client without gRPC talks to it. Keys and values travel base64-encoded.
//!
//! Reads are linearizable unless the run asks for `stale`, which becomes
//! `serializable: true` (answered by the member itself, like Cairn's stale reads).
//! The request bodies and the reply parsers are pure functions.

use serde_json::Value;

use super::http::{self, base64};
use super::{Codec, Decoded, OpError};
use crate::measure::ErrorKind;
use crate::workload::{key_name, Op};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd: body is not JSON: {0}")]
    NotJson(String),
    #[error("etcd: unexpected reply shape: {0}")]
    Shape(String),
    #[error("etcd: {0}")]
    Server(String),
    #[error("etcd: {0}")]
    Base64(#[from] base64::DecodeError),
}

/// A key and its value from a range reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// `PUT key value`.
pub fn put_body(key: &[u8], value: &[u8]) -> String {
    put_body_encoded(key, &base64::encode(value))
}

fn put_body_encoded(key: &[u8], value_b64: &str) -> String {
    format!(
        r#"{{"key":"{}","value":"{value_b64}"}}"#,
        base64::encode(key)
    )
}

/// `GET key`; `serializable` answers from the member's own state without a quorum check.
pub fn range_body(key: &[u8], serializable: bool) -> String {
    format!(
        r#"{{"key":"{}","serializable":{serializable}}}"#,
        base64::encode(key)
    )
}

/// Keys under `prefix` (keys only).
pub fn prefix_body(prefix: &[u8], serializable: bool) -> String {
    format!(
        r#"{{"key":"{}","range_end":"{}","keys_only":true,"serializable":{serializable}}}"#,
        base64::encode(prefix),
        base64::encode(&prefix_end(prefix))
    )
}

/// The smallest key after every key that starts with `prefix` (etcd's `range_end`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte is 0xff: "\0" means "to the end of the keyspace".
    vec![0]
}

/// Put `key` only if it does not exist (create revision 0): Cairn's `cas` workload.
pub fn create_txn_body(key: &[u8], value: &[u8]) -> String {
    create_txn_body_encoded(key, &base64::encode(value))
}

fn create_txn_body_encoded(key: &[u8], value_b64: &str) -> String {
    let k = base64::encode(key);
    format!(
        r#"{{"compare":[{{"key":"{k}","target":"CREATE","result":"EQUAL","create_revision":"0"}}],"success":[{{"request_put":{{"key":"{k}","value":"{value_b64}"}}}}]}}"#
    )
}

fn json(body: &[u8]) -> Result<serde_json::Map<String, Value>, EtcdError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| EtcdError::NotJson(e.to_string()))?;
    let Value::Object(m) = v else {
        return Err(EtcdError::Shape("not an object".into()));
    };
    // The gateway reports a failed call as {"error": ..., "code": ..., "message": ...}.
    if let Some(e) = m.get("error").or_else(|| m.get("message")) {
        return Err(EtcdError::Server(e.as_str().unwrap_or("error").to_string()));
    }
    if !m.get("header").is_some_and(Value::is_object) {
        return Err(EtcdError::Shape("no header".into()));
    }
    Ok(m)
}

/// The key-values of a `/v3/kv/range` reply (none when the key is absent).
pub fn parse_range(body: &[u8]) -> Result<Vec<KeyValue>, EtcdError> {
    let m = json(body)?;
    let Some(kvs) = m.get("kvs") else {
        return Ok(Vec::new());
    };
    let Value::Array(kvs) = kvs else {
        return Err(EtcdError::Shape("kvs is not an array".into()));
    };
    let field = |kv: &Value, name: &str| -> Result<Vec<u8>, EtcdError> {
        match kv.get(name) {
            None => Ok(Vec::new()), // proto3 JSON omits empty values
            Some(Value::String(s)) => Ok(base64::decode(s)?),
            Some(_) => Err(EtcdError::Shape(format!("{name} is not a string"))),
        }
    };
    kvs.iter()
        .map(|kv| {
            Ok(KeyValue {
                key: field(kv, "key")?,
                value: field(kv, "value")?,
            })
        })
        .collect()
}

/// Checks a `/v3/kv/put` reply.
pub fn parse_put(body: &[u8]) -> Result<(), EtcdError> {
    json(body).map(|_| ())
}

/// Whether a `/v3/kv/txn` succeeded (its compare held).
pub fn parse_txn(body: &[u8]) -> Result<bool, EtcdError> {
    let m = json(body)?;
    match m.get("succeeded") {
        None => Ok(false), // proto3 JSON omits false
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(EtcdError::Shape("succeeded is not a bool".into())),
    }
}

/// An error reply's text: the gateway's `message`/`error`, else the status.
pub fn error_text(status: u16, body: &[u8]) -> String {
    match json(body) {
        Err(EtcdError::Server(m)) => format!("etcd: HTTP {status}: {m}"),
        _ => format!(
            "etcd: HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
    }
}

/// What a response means for the operation it answers.
pub fn outcome(op: Op, resp: &http::Response) -> Result<(), OpError> {
    let other = |e: EtcdError| OpError::new(ErrorKind::Other, e.to_string());
    if resp.status != 200 {
        let kind = if resp.status == 408 || resp.status == 504 {
            ErrorKind::Timeout
        } else {
            ErrorKind::Other
        };
        return Err(OpError::new(kind, error_text(resp.status, &resp.body)));
    }
    match op {
        Op::Read(_) | Op::List(_) => parse_range(&resp.body).map(|_| ()).map_err(other),
        Op::Write(_) => parse_put(&resp.body).map_err(other),
        Op::Cas(_) => match parse_txn(&resp.body).map_err(other)? {
            true => Ok(()),
            false => Err(OpError::new(ErrorKind::CasFailed, "the key exists".into())),
        },
    }
}

/// One connection's requests to an etcd member.
#[derive(Debug)]
pub struct EtcdCodec {
    host: String,
    value_b64: String,
    serializable: bool,
}

impl EtcdCodec {
    /// `host`: the member's `HOST:PORT` (for the Host header).
    pub fn new(host: &str, value: &[u8], serializable: bool) -> EtcdCodec {
        EtcdCodec {
            host: host.to_string(),
            value_b64: base64::encode(value),
            serializable,
        }
    }
}

impl Codec for EtcdCodec {
    fn encode(&mut self, op: Op, out: &mut Vec<u8>) {
        let (path, body) = match op {
            Op::Read(k) => (
                "/v3/kv/range",
                range_body(key_name(k).as_bytes(), self.serializable),
            ),
            Op::Write(k) => (
                "/v3/kv/put",
                put_body_encoded(key_name(k).as_bytes(), &self.value_b64),
            ),
            Op::Cas(k) => (
                "/v3/kv/txn",
                create_txn_body_encoded(key_name(k).as_bytes(), &self.value_b64),
            ),
            Op::List(k) => (
                "/v3/kv/range",
                prefix_body(super::list_prefix(k).as_bytes(), self.serializable),
            ),
        };
        http::encode_request(
            "POST",
            &self.host,
            path,
            Some("application/json"),
            body.as_bytes(),
            out,
        );
    }

    fn decode(&mut self, buf: &[u8], op: Op) -> Result<Option<Decoded>, String> {
        match http::parse_response(buf, false) {
            Ok(None) => Ok(None),
            Ok(Some((resp, consumed))) => Ok(Some(Decoded {
                consumed,
                result: outcome(op, &resp),
                close: resp.close,
            })),
            Err(e) => Err(format!("etcd: malformed HTTP response: {e}")),
        }
    }
}
