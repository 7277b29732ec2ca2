//! `/v1/txn`: Consul's JSON transaction (`[{"KV": {"Verb": "set", "Key": ..., "Value":
//! base64, ...}}, ...]`), answered 200 with `Results` or 409 with `Errors` when it rolled
//! back. Only KV operations exist here; of Consul's KV verbs, the session ones (`lock`,
//! `unlock`, `check-session`) have no [`TxnOp`] yet and are refused with a 400.

use base64::Engine;
use bytes::Bytes;
use cairn_net::rpc::message::{Op, Response, TxnOp};
use serde::{Deserialize, Serialize};

use super::api::{self, allow, request, Call, Ctx, NeedsBody, Route};
use super::kv::KvPair;
use super::query::Query;
use super::reply::Reply;

/// A transaction waiting for its body.
#[derive(Debug)]
pub(crate) struct Pending {
    datacenter: String,
    pretty: bool,
}

pub(crate) fn route(method: &str, q: &Query, ctx: &Ctx) -> Route {
    if let Err(r) = allow(method, &["PUT"]) {
        return Route::Reply(r);
    }
    Route::Body(NeedsBody::Txn(Pending {
        datacenter: q.datacenter(ctx),
        pretty: q.pretty(),
    }))
}

/// One operation as Consul's clients send it. Go decodes JSON field names
/// case-insensitively; the spellings seen in practice are Consul's and lower case.
#[derive(Deserialize)]
struct OpJson {
    #[serde(rename = "KV", alias = "kv", alias = "Kv")]
    kv: Option<KvOpJson>,
    #[serde(rename = "Node", alias = "node")]
    node: Option<serde_json::Value>,
    #[serde(rename = "Service", alias = "service")]
    service: Option<serde_json::Value>,
    #[serde(rename = "Check", alias = "check")]
    check: Option<serde_json::Value>,
    #[serde(rename = "Session", alias = "session")]
    session: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct KvOpJson {
    #[serde(rename = "Verb", alias = "verb")]
    verb: String,
    #[serde(rename = "Key", alias = "key", default)]
    key: String,
    #[serde(rename = "Value", alias = "value", default)]
    value: Option<String>,
    #[serde(rename = "Flags", alias = "flags", default)]
    flags: u64,
    #[serde(rename = "Index", alias = "index", default)]
    index: u64,
}

impl Pending {
    pub fn finish(self, body: &[u8], ctx: &Ctx) -> Result<Call, Reply> {
        Ok(Call {
            request: request(
                self.datacenter,
                Op::Txn {
                    ops: parse(body, ctx)?,
                },
            ),
            render: api::Render::Txn,
            pretty: self.pretty,
        })
    }
}

/// Consul's JSON operations as [`TxnOp`]s, with Consul's limits and texts.
fn parse(body: &[u8], ctx: &Ctx) -> Result<Vec<TxnOp>, Reply> {
    let ops: Vec<OpJson> = serde_json::from_slice(body)
        .map_err(|e| Reply::bad_request(format!("Failed to parse body: {e}")))?;
    if ops.len() > ctx.limits.max_txn_ops {
        return Err(Reply::text(
            413,
            format!(
                "Transaction contains too many operations ({} > {})",
                ops.len(),
                ctx.limits.max_txn_ops
            ),
        ));
    }
    ops.into_iter()
        .enumerate()
        .map(|(i, op)| {
            let Some(kv) = op.kv else {
                let what = if op.node.is_some() {
                    "Node"
                } else if op.service.is_some() {
                    "Service"
                } else if op.check.is_some() {
                    "Check"
                } else if op.session.is_some() {
                    "Session"
                } else {
                    return Err(Reply::bad_request(format!(
                        "Failed to parse body: operation {i} has no KV, Node, Service, Check or Session part"
                    )));
                };
                return Err(Reply::bad_request(format!(
                    "operation {i}: {what} operations are not supported yet, only KV"
                )));
            };
            kv_op(i, kv, ctx)
        })
        .collect()
}

fn kv_op(i: usize, kv: KvOpJson, ctx: &Ctx) -> Result<TxnOp, Reply> {
    let key = Bytes::from(kv.key.into_bytes());
    if key.len() > ctx.limits.max_key {
        return Err(Reply::text(
            413,
            format!(
                "Key of operation {i} is too large ({} > {} bytes)",
                key.len(),
                ctx.limits.max_key
            ),
        ));
    }
    let value = match kv.value.as_deref() {
        None | Some("") => Bytes::new(),
        Some(v) => Bytes::from(
            base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| {
                    Reply::bad_request(format!(
                        "Failed to parse body: the Value of operation {i} is not base64: {e}"
                    ))
                })?,
        ),
    };
    if value.len() > ctx.limits.max_value {
        return Err(Reply::text(
            413,
            format!(
                "Value for key {:?} is too large ({} > {} bytes)",
                String::from_utf8_lossy(&key),
                value.len(),
                ctx.limits.max_value
            ),
        ));
    }
    let (flags, index) = (kv.flags, kv.index);
    Ok(match kv.verb.as_str() {
        "set" => TxnOp::Set { key, value, flags },
        "cas" => TxnOp::Cas {
            key,
            value,
            flags,
            index,
        },
        "get" => TxnOp::Get { key },
        "get-tree" => TxnOp::GetTree { prefix: key },
        "check-index" => TxnOp::CheckIndex { key, index },
        "check-not-exists" => TxnOp::CheckNotExists { key },
        "delete" => TxnOp::Delete { key },
        "delete-tree" => TxnOp::DeleteTree { prefix: key },
        "delete-cas" => TxnOp::DeleteCas { key, index },
        "lock" | "unlock" | "check-session" => {
            return Err(Reply::bad_request(format!(
                "operation {i}: KV verb {:?} (sessions in transactions) is not supported yet",
                kv.verb
            )))
        }
        other => {
            return Err(Reply::bad_request(format!(
                "operation {i}: unknown KV verb {other:?}"
            )))
        }
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    /// `null` when empty, as Go renders a nil slice.
    results: Option<Vec<TxnResult>>,
    errors: Option<Vec<TxnError>>,
}

#[derive(Serialize)]
struct TxnResult {
    #[serde(rename = "KV")]
    kv: KvPair,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    op_index: u32,
    what: String,
}

pub(crate) fn render(resp: Response, pretty: bool) -> Reply {
    let Response::Txn {
        results, errors, ..
    } = resp
    else {
        return api::unexpected(&resp);
    };
    if errors.is_empty() {
        let results: Vec<TxnResult> = results
            .iter()
            .map(|e| TxnResult { kv: KvPair::of(e) })
            .collect();
        Reply::json(
            200,
            &TxnResponse {
                results: (!results.is_empty()).then_some(results),
                errors: None,
            },
            pretty,
        )
    } else {
        Reply::json(
            409,
            &TxnResponse {
                results: None,
                errors: Some(
                    errors
                        .into_iter()
                        .map(|(op_index, what)| TxnError { op_index, what })
                        .collect(),
                ),
            },
            pretty,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_net::rpc::message::Entry;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn finish(body: &str) -> Result<Call, Reply> {
        let ctx = Ctx::for_tests();
        let Route::Body(p) = api::route("PUT", "/v1/txn", None, &ctx) else {
            panic!("a transaction reads its body")
        };
        p.finish(Bytes::copy_from_slice(body.as_bytes()), &ctx)
    }

    fn ops(body: &str) -> Vec<TxnOp> {
        match finish(body) {
            Ok(Call {
                request:
                    cairn_net::rpc::message::Request {
                        op: Op::Txn { ops },
                        ..
                    },
                ..
            }) => ops,
            other => panic!("{body}: {other:?}"),
        }
    }

    fn refused(body: &str) -> Reply {
        match finish(body) {
            Err(r) => r,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn consuls_kv_verbs_map_onto_txn_ops() {
        let got = ops(r#"[
            {"KV": {"Verb": "set", "Key": "a", "Value": "aGk=", "Flags": 2}},
            {"KV": {"Verb": "cas", "Key": "a", "Value": "eA==", "Index": 5}},
            {"KV": {"Verb": "get", "Key": "a"}},
            {"KV": {"Verb": "get-tree", "Key": "p/"}},
            {"KV": {"Verb": "check-index", "Key": "a", "Index": 7}},
            {"KV": {"Verb": "check-not-exists", "Key": "n"}},
            {"KV": {"Verb": "delete", "Key": "a"}},
            {"KV": {"Verb": "delete-tree", "Key": "p/"}},
            {"kv": {"verb": "delete-cas", "key": "a", "index": 8}}
        ]"#);
        assert_eq!(
            got,
            vec![
                TxnOp::Set {
                    key: b("a"),
                    value: b("hi"),
                    flags: 2
                },
                TxnOp::Cas {
                    key: b("a"),
                    value: b("x"),
                    flags: 0,
                    index: 5
                },
                TxnOp::Get { key: b("a") },
                TxnOp::GetTree { prefix: b("p/") },
                TxnOp::CheckIndex {
                    key: b("a"),
                    index: 7
                },
                TxnOp::CheckNotExists { key: b("n") },
                TxnOp::Delete { key: b("a") },
                TxnOp::DeleteTree { prefix: b("p/") },
                TxnOp::DeleteCas {
                    key: b("a"),
                    index: 8
                },
            ]
        );
    }

    #[test]
    fn bad_transactions_are_refused_before_anything_is_sent() {
        for (body, status) in [
            ("not json", 400),
            (r#"{"KV": {}}"#, 400),
            (
                r#"[{"KV": {"Verb": "set", "Key": "a", "Value": "!!"}}]"#,
                400,
            ),
            (r#"[{"KV": {"Verb": "frob", "Key": "a"}}]"#, 400),
            (
                r#"[{"KV": {"Verb": "lock", "Key": "a", "Session": "s"}}]"#,
                400,
            ),
            (r#"[{"Node": {"Verb": "set"}}]"#, 400),
            (r#"[{}]"#, 400),
        ] {
            assert_eq!(refused(body).status, status, "{body}");
        }
        let many = format!(
            "[{}]",
            vec![r#"{"KV": {"Verb": "get", "Key": "a"}}"#; 129].join(",")
        );
        let r = refused(&many);
        assert_eq!(r.status, 413);
        assert_eq!(
            &r.body[..],
            b"Transaction contains too many operations (129 > 128)"
        );
    }

    #[test]
    fn a_committed_transaction_is_200_with_results() {
        let e = Entry {
            key: b("a"),
            value: Bytes::new(),
            flags: 0,
            create_index: 3,
            modify_index: 3,
            lock_index: 0,
            session: None,
        };
        let r = render(
            Response::Txn {
                results: vec![e],
                errors: vec![],
                index: 3,
            },
            false,
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"{"Results":[{"KV":{"LockIndex":0,"Key":"a","Flags":0,"Value":null,"CreateIndex":3,"ModifyIndex":3}}],"Errors":null}"#
        );
    }

    #[test]
    fn a_rolled_back_transaction_is_409_with_errors() {
        let r = render(
            Response::Txn {
                results: vec![],
                errors: vec![(1, "index mismatch".into())],
                index: 3,
            },
            false,
        );
        assert_eq!(r.status, 409);
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"{"Results":null,"Errors":[{"OpIndex":1,"What":"index mismatch"}]}"#
        );
    }
}
