//! What the HTTP API answers: a status, headers and a body, built by pure code and turned
//! into a hyper response only at the edge ([`Reply::into_response`]).

use bytes::Bytes;
use cairn_net::rpc::message::{Consistency, ErrorCode, Meta, RpcError};

/// One HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub status: u16,
    /// Header names in Consul's spelling (HTTP/1 headers are case-insensitive, but the
    /// tests and humans read them as Consul prints them).
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// JSON bodies, as Consul labels them.
pub(crate) const JSON: &str = "application/json";
/// Error texts and raw values.
pub(crate) const TEXT: &str = "text/plain; charset=utf-8";

impl Reply {
    /// A plain-text answer, as Consul gives for errors.
    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", TEXT.into())],
            body: Bytes::from(body.into()),
        }
    }

    /// A JSON answer; `pretty` is Consul's `?pretty` (Go's `MarshalIndent` with four
    /// spaces, and a final newline).
    pub fn json<T: serde::Serialize + ?Sized>(status: u16, value: &T, pretty: bool) -> Reply {
        let body = if pretty {
            let mut out = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            value.serialize(&mut ser).map(|()| {
                out.push(b'\n');
                out
            })
        } else {
            serde_json::to_vec(value)
        };
        // Serializing plain structs, strings and numbers cannot fail.
        let body = body.expect("JSON rendering of plain data");
        Reply {
            status,
            headers: vec![("Content-Type", JSON.into())],
            body: Bytes::from(body),
        }
    }

    /// A status with no body (Consul's 404 for a missing key).
    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn bad_request(why: impl Into<String>) -> Reply {
        Reply::text(400, why)
    }

    /// Go's `http.NotFound`, which Consul's router answers for an unknown path.
    pub fn not_found() -> Reply {
        Reply::text(404, "404 page not found\n")
    }

    /// Consul's 405: the method and, in `Allow`, what the path takes.
    pub fn method_not_allowed(method: &str, allow: &[&str]) -> Reply {
        let mut r = Reply::text(405, format!("method {method} not allowed"));
        r.headers.push(("Allow", allow.join(",")));
        r
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// Consul's query metadata headers on a read.
    pub fn with_meta(self, meta: &Meta, consistency: Consistency) -> Reply {
        self.header("X-Consul-Index", meta.index.to_string())
            .header("X-Consul-KnownLeader", meta.known_leader.to_string())
            .header("X-Consul-LastContact", meta.last_contact_ms.to_string())
            .header(
                "X-Consul-Effective-Consistency",
                match consistency {
                    Consistency::Stale => "stale",
                    Consistency::Default => "leader",
                    Consistency::Consistent => "consistent",
                },
            )
    }

    pub fn into_response(self) -> hyper::Response<http_body_util::Full<Bytes>> {
        let mut b = hyper::Response::builder().status(self.status);
        for (name, value) in self.headers {
            b = b.header(name, value);
        }
        // Every status and header name here is a constant of this module's callers, and
        // values are digits or text from the server without line breaks.
        b.body(http_body_util::Full::new(self.body))
            .unwrap_or_else(|e| {
                let mut r = hyper::Response::new(http_body_util::Full::new(Bytes::from(format!(
                    "rendering the answer failed: {e}"
                ))));
                *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                r
            })
    }
}

/// The HTTP answer to a typed RPC error, with Consul's status and, where Consul has a
/// fixed text, that text (clients such as consul-template match on it).
pub(crate) fn rpc_error(e: &RpcError) -> Reply {
    match e.code {
        // A follower or client agent only gives up on the leader after its retries.
        ErrorCode::NoLeader | ErrorCode::NotLeader => Reply::text(500, "No cluster leader"),
        ErrorCode::NoPathToDatacenter => Reply::text(500, "No path to datacenter"),
        ErrorCode::PermissionDenied => Reply::text(403, "Permission denied"),
        ErrorCode::KeyTooLarge | ErrorCode::ValueTooLarge | ErrorCode::TxnTooLarge => {
            Reply::text(413, e.message.clone())
        }
        ErrorCode::Invalid => Reply::text(400, e.message.clone()),
        ErrorCode::NotFound => Reply::text(404, e.message.clone()),
        // Consul answers a lock with an unknown session with a 500 ("invalid session").
        ErrorCode::InvalidSession => Reply::text(500, e.message.clone()),
        // Consul's RPC rate limit answers 429.
        ErrorCode::Overloaded => Reply::text(429, e.message.clone()),
        ErrorCode::Timeout
        | ErrorCode::Unavailable
        | ErrorCode::Internal
        | ErrorCode::WrongServer => Reply::text(500, e.message.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: ErrorCode) -> RpcError {
        RpcError {
            code,
            message: "why".into(),
            leader: None,
        }
    }

    #[test]
    fn rpc_errors_get_consuls_statuses_and_fixed_texts() {
        let r = rpc_error(&err(ErrorCode::NoLeader));
        assert_eq!((r.status, &r.body[..]), (500, &b"No cluster leader"[..]));
        let r = rpc_error(&err(ErrorCode::NoPathToDatacenter));
        assert_eq!(
            (r.status, &r.body[..]),
            (500, &b"No path to datacenter"[..])
        );
        assert_eq!(rpc_error(&err(ErrorCode::ValueTooLarge)).status, 413);
        assert_eq!(rpc_error(&err(ErrorCode::KeyTooLarge)).status, 413);
        assert_eq!(rpc_error(&err(ErrorCode::TxnTooLarge)).status, 413);
        assert_eq!(rpc_error(&err(ErrorCode::Invalid)).status, 400);
        assert_eq!(rpc_error(&err(ErrorCode::InvalidSession)).status, 500);
        assert_eq!(rpc_error(&err(ErrorCode::PermissionDenied)).status, 403);
        assert_eq!(rpc_error(&err(ErrorCode::Overloaded)).status, 429);
        assert_eq!(rpc_error(&err(ErrorCode::Unavailable)).status, 500);
    }

    #[test]
    fn query_meta_becomes_consuls_headers() {
        let meta = Meta {
            index: 42,
            known_leader: true,
            last_contact_ms: 7,
        };
        let r = Reply::empty(404).with_meta(&meta, Consistency::Default);
        assert_eq!(
            r.headers,
            vec![
                ("X-Consul-Index", "42".to_string()),
                ("X-Consul-KnownLeader", "true".to_string()),
                ("X-Consul-LastContact", "7".to_string()),
                ("X-Consul-Effective-Consistency", "leader".to_string()),
            ]
        );
    }

    #[test]
    fn pretty_json_is_indented_as_gos_marshal_indent() {
        let r = Reply::json(200, &serde_json::json!({"A": [1]}), true);
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            "{\n    \"A\": [\n        1\n    ]\n}\n"
        );
        assert_eq!(&Reply::json(200, &true, false).body[..], b"true");
    }

    #[test]
    fn method_not_allowed_names_the_allowed_methods() {
        let r = Reply::method_not_allowed("POST", &["GET", "PUT", "DELETE"]);
        assert_eq!(r.status, 405);
        assert!(r.headers.contains(&("Allow", "GET,PUT,DELETE".to_string())));
    }
}
