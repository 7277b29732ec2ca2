//! `/v1/session/...`: create (PUT, Consul's body), destroy, renew, info, node, list, with
//! Consul's session JSON (`LockDelay` in nanoseconds, `TTL` as a Go duration string).

use cairn_net::rpc::catalog::{SessionBehavior, SessionInfo, SessionQuery};
use cairn_net::rpc::message::{Op, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::api::{self, allow, request, Call, Ctx, NeedsBody, Route};
use super::catalog::{no_filter, segment, Read};
use super::json::decode_go;
use super::query::{parse_go_duration, Query};
use super::reply::Reply;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Render {
    /// `{"ID": ...}` of the created session.
    Created,
    /// `true`.
    Destroyed,
    /// The renewed session, as a one-element list.
    Renewed,
    /// A read's sessions.
    List(Read),
}

/// Consul's default lock delay.
const DEFAULT_LOCK_DELAY_MS: u64 = 15_000;
/// Consul's `lockDelayMinThreshold`: a numeric `LockDelay` below this is in seconds,
/// otherwise in nanoseconds.
const LOCK_DELAY_SECONDS_BELOW: f64 = 1000.0;

/// Routes `/v1/session/<rest>`.
pub(crate) fn route(method: &str, rest: &str, q: &Query, ctx: &Ctx) -> Route {
    route_inner(method, rest, q, ctx).unwrap_or_else(Route::Reply)
}

fn route_inner(method: &str, rest: &str, q: &Query, ctx: &Ctx) -> Result<Route, Reply> {
    let (verb, arg) = rest.split_once('/').unwrap_or((rest, ""));
    let datacenter = q.datacenter(ctx);
    let pretty = q.pretty();
    let call = |op, render| {
        Route::Call(Call {
            request: request(datacenter.clone(), op),
            render: api::Render::Session(render),
            pretty,
        })
    };
    let id = || segment(arg, "session id", ctx);
    match (verb, arg.is_empty()) {
        ("create", true) => {
            allow(method, &["PUT"])?;
            Ok(Route::Body(NeedsBody::Session(Pending {
                datacenter: datacenter.clone(),
                node: ctx.node.clone(),
                pretty,
            })))
        }
        ("destroy", false) => {
            allow(method, &["PUT"])?;
            Ok(call(Op::SessionDestroy { id: id()? }, Render::Destroyed))
        }
        ("renew", false) => {
            allow(method, &["PUT"])?;
            Ok(call(Op::SessionRenew { id: id()? }, Render::Renewed))
        }
        ("info" | "node", false) | ("list", true) => {
            allow(method, &["GET"])?;
            no_filter(q)?;
            let query = match verb {
                "info" => SessionQuery::Info { id: id()? },
                "node" => SessionQuery::Node {
                    node: segment(arg, "node name", ctx)?,
                },
                _ => SessionQuery::List,
            };
            let opts = q.read_opts()?;
            Ok(call(
                Op::SessionRead { query, opts },
                Render::List(Read {
                    consistency: opts.consistency,
                    filter: None,
                }),
            ))
        }
        _ => Err(Reply::not_found()),
    }
}

/// A session create waiting for its (optional) body.
#[derive(Debug)]
pub(crate) struct Pending {
    datacenter: String,
    /// This agent's node: a session's node when the body names none.
    node: String,
    pretty: bool,
}

/// Consul's create body, keys folded to lower case (see `json::decode_go`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateJson {
    name: Option<String>,
    node: Option<String>,
    lockdelay: Option<Value>,
    behavior: Option<String>,
    ttl: Option<String>,
    nodechecks: Option<Vec<String>>,
    /// Consul's older name for node checks.
    checks: Option<Vec<String>>,
    servicechecks: Option<Vec<Value>>,
}

impl Pending {
    pub fn finish(self, body: &[u8], _ctx: &Ctx) -> Result<Call, Reply> {
        let c: CreateJson = decode_go(body)?;
        let info = session_info(c, self.node)?;
        Ok(Call {
            request: request(self.datacenter, Op::SessionCreate(info)),
            render: api::Render::Session(Render::Created),
            pretty: self.pretty,
        })
    }
}

/// Consul's create request with Consul's defaults: this agent's node, a 15 s lock delay,
/// `release`, and `serfHealth` as the node check when no checks are named.
fn session_info(c: CreateJson, agent_node: String) -> Result<SessionInfo, Reply> {
    let lock_delay_ms = match c.lockdelay {
        None | Some(Value::Null) => DEFAULT_LOCK_DELAY_MS,
        Some(Value::String(s)) => parse_go_duration(&s)
            .ok_or_else(|| {
                Reply::bad_request(format!("Request decode failed: invalid LockDelay {s:?}"))
            })?
            .as_millis() as u64,
        Some(Value::Number(n)) => {
            let n = n.as_f64().filter(|n| *n >= 0.0).ok_or_else(|| {
                Reply::bad_request("Request decode failed: LockDelay must not be negative")
            })?;
            if n < LOCK_DELAY_SECONDS_BELOW {
                (n * 1000.0) as u64
            } else {
                (n / 1_000_000.0) as u64
            }
        }
        Some(other) => {
            return Err(Reply::bad_request(format!(
                "Request decode failed: invalid LockDelay {other}"
            )))
        }
    };
    let ttl_ms = match c.ttl.as_deref() {
        None | Some("") => 0,
        Some(t) => parse_go_duration(t)
            .ok_or_else(|| Reply::bad_request(format!("Request decode failed: invalid TTL {t:?}")))?
            .as_millis() as u64,
    };
    let behavior = match c.behavior.as_deref() {
        None | Some("" | "release") => SessionBehavior::Release,
        Some("delete") => SessionBehavior::Delete,
        Some(b) => {
            return Err(Reply::bad_request(format!(
                "Invalid Behavior setting '{b}'"
            )))
        }
    };
    // Consul's ServiceChecks: [{"ID": "...", "Namespace": "..."}] (namespaces are an
    // enterprise feature: an empty one is accepted, others are refused).
    let mut service_checks = Vec::new();
    for sc in c.servicechecks.into_iter().flatten() {
        let field = |k: &str| {
            sc.as_object().and_then(|o| {
                o.iter()
                    .find(|(key, _)| key.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v)
            })
        };
        let Some(Value::String(id)) = field("ID") else {
            return Err(Reply::bad_request(
                "Request decode failed: a ServiceChecks entry needs an \"ID\"",
            ));
        };
        if field("Namespace").is_some_and(|n| {
            !matches!(n, Value::String(s) if s.is_empty() || s == "default") && !n.is_null()
        }) {
            return Err(Reply::bad_request("Namespaces are not supported"));
        }
        service_checks.push(id.clone());
    }
    let node_checks = match (c.nodechecks, c.checks) {
        (None, None) => vec!["serfHealth".to_string()],
        (a, b) => {
            let mut v: Vec<String> = a.into_iter().chain(b).flatten().collect();
            v.sort();
            v.dedup();
            v
        }
    };
    Ok(SessionInfo {
        id: String::new(),
        name: c.name.unwrap_or_default(),
        node: c.node.filter(|n| !n.is_empty()).unwrap_or(agent_node),
        behavior,
        ttl_ms,
        lock_delay_ms,
        node_checks,
        service_checks,
        create_index: 0,
    })
}

/// Go's `time.Duration.String()` for whole milliseconds: "30s", "1m30s", "1h0m0s",
/// "1.5s", "500ms", "0s".
pub(crate) fn go_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let secs = if frac == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{}s", format!("{frac:03}").trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

/// Consul's session JSON. Sessions never change once created, so `ModifyIndex` is the
/// `CreateIndex`, as in Consul.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SessionJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    name: &'a str,
    node: &'a str,
    /// Nanoseconds, as Go's `time.Duration` encodes.
    lock_delay: u64,
    behavior: &'static str,
    #[serde(rename = "TTL")]
    ttl: String,
    node_checks: &'a [String],
    service_checks: Option<Vec<ServiceCheckJson<'a>>>,
    create_index: u64,
    modify_index: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceCheckJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    namespace: &'static str,
}

fn session_json(s: &SessionInfo) -> SessionJson<'_> {
    SessionJson {
        id: &s.id,
        name: &s.name,
        node: &s.node,
        lock_delay: s.lock_delay_ms * 1_000_000,
        behavior: match s.behavior {
            SessionBehavior::Release => "release",
            SessionBehavior::Delete => "delete",
        },
        ttl: if s.ttl_ms == 0 {
            String::new()
        } else {
            go_duration(s.ttl_ms)
        },
        node_checks: &s.node_checks,
        service_checks: (!s.service_checks.is_empty()).then(|| {
            s.service_checks
                .iter()
                .map(|id| ServiceCheckJson { id, namespace: "" })
                .collect()
        }),
        create_index: s.create_index,
        modify_index: s.create_index,
    }
}

pub(crate) fn render(r: &Render, resp: Response, pretty: bool) -> Reply {
    match (r, resp) {
        (Render::Destroyed, Response::Bool(b)) => Reply::json(200, &b, pretty),
        (Render::Created, Response::Sessions { sessions, .. }) if !sessions.is_empty() => {
            Reply::json(200, &serde_json::json!({"ID": sessions[0].id}), pretty)
        }
        (Render::Renewed, Response::Sessions { sessions, .. }) => {
            let list: Vec<SessionJson> = sessions.iter().map(session_json).collect();
            Reply::json(200, &list, pretty)
        }
        (Render::List(read), Response::Sessions { sessions, meta }) => {
            let list: Vec<SessionJson> = sessions.iter().map(session_json).collect();
            Reply::json(200, &list, pretty).with_meta(&meta, read.consistency)
        }
        (_, other) => api::unexpected(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_net::rpc::message::Meta;

    fn create(body: &str) -> Result<SessionInfo, Reply> {
        let ctx = Ctx::for_tests();
        let Route::Body(p) = api::route("PUT", "/v1/session/create", None, &ctx) else {
            panic!("create takes a body")
        };
        match p
            .finish(bytes::Bytes::copy_from_slice(body.as_bytes()), &ctx)?
            .request
            .op
        {
            Op::SessionCreate(info) => Ok(info),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_create_gets_consuls_defaults() {
        for body in ["", "{}"] {
            let s = create(body).unwrap();
            assert_eq!(s.node, "node1", "the agent's own node");
            assert_eq!(
                (s.lock_delay_ms, s.ttl_ms, s.behavior),
                (15_000, 0, SessionBehavior::Release)
            );
            assert_eq!(s.node_checks, ["serfHealth"]);
        }
        let s = create(r#"{"Name": "l", "Node": "n2", "TTL": "30s", "LockDelay": "1m", "Behavior": "delete", "NodeChecks": []}"#)
            .unwrap();
        assert_eq!((s.name.as_str(), s.node.as_str()), ("l", "n2"));
        assert_eq!(
            (s.ttl_ms, s.lock_delay_ms, s.behavior),
            (30_000, 60_000, SessionBehavior::Delete)
        );
        assert!(s.node_checks.is_empty());
        // A number below 1000 is seconds, otherwise nanoseconds (Consul's FixupLockDelay).
        assert_eq!(create(r#"{"LockDelay": 5}"#).unwrap().lock_delay_ms, 5_000);
        assert_eq!(
            create(r#"{"LockDelay": 2000000000}"#)
                .unwrap()
                .lock_delay_ms,
            2_000
        );
        assert_eq!(
            create(r#"{"Checks": ["serfHealth"]}"#).unwrap().node_checks,
            ["serfHealth"]
        );
    }

    #[test]
    fn bad_creates_are_400() {
        for body in [
            r#"{"Behavior": "keep"}"#,
            r#"{"TTL": "10"}"#,
            r#"{"LockDelay": "soon"}"#,
            r#"{"LockDelay": -1}"#,
            r#"{"ServiceChecks": [{"Namespace": "x"}]}"#,
            r#"{"ServiceChecks": [{"ID": "web", "Namespace": "team-a"}]}"#,
            "[",
        ] {
            assert_eq!(create(body).unwrap_err().status, 400, "{body}");
        }
    }

    #[test]
    fn session_paths_route_to_their_ops() {
        let ctx = Ctx::for_tests();
        let op = |m, p| match api::route(m, p, None, &ctx) {
            Route::Call(c) => Ok(c.request.op),
            Route::Reply(r) => Err(r.status),
            Route::Body(_) | Route::Metrics { .. } => panic!("{p}"),
        };
        assert_eq!(
            op("PUT", "/v1/session/destroy/abc"),
            Ok(Op::SessionDestroy { id: "abc".into() })
        );
        assert_eq!(
            op("PUT", "/v1/session/renew/abc"),
            Ok(Op::SessionRenew { id: "abc".into() })
        );
        assert!(matches!(
            op("GET", "/v1/session/info/abc"),
            Ok(Op::SessionRead {
                query: SessionQuery::Info { .. },
                ..
            })
        ));
        assert!(matches!(
            op("GET", "/v1/session/node/n1"),
            Ok(Op::SessionRead {
                query: SessionQuery::Node { .. },
                ..
            })
        ));
        assert!(matches!(
            op("GET", "/v1/session/list"),
            Ok(Op::SessionRead {
                query: SessionQuery::List,
                ..
            })
        ));
        assert_eq!(op("GET", "/v1/session/destroy/abc"), Err(405));
        assert_eq!(op("PUT", "/v1/session/info/abc"), Err(405));
        assert_eq!(op("PUT", "/v1/session/destroy/"), Err(404));
        assert_eq!(op("GET", "/v1/session/list/x"), Err(404));
    }

    #[test]
    fn durations_print_as_gos() {
        for (ms, s) in [
            (0, "0s"),
            (500, "500ms"),
            (1_500, "1.5s"),
            (30_000, "30s"),
            (90_000, "1m30s"),
            (3_600_000, "1h0m0s"),
            (86_400_000, "24h0m0s"),
        ] {
            assert_eq!(go_duration(ms), s);
        }
    }

    #[test]
    fn sessions_render_as_consuls_json() {
        let s = SessionInfo {
            id: "abc".into(),
            name: "lock".into(),
            node: "n1".into(),
            behavior: SessionBehavior::Release,
            ttl_ms: 30_000,
            lock_delay_ms: 15_000,
            node_checks: vec!["serfHealth".into()],
            service_checks: Vec::new(),
            create_index: 7,
        };
        let r = render(
            &Render::List(Read {
                consistency: cairn_net::rpc::message::Consistency::Default,
                filter: None,
            }),
            Response::Sessions {
                sessions: vec![s.clone()],
                meta: Meta::default(),
            },
            false,
        );
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"[{"ID":"abc","Name":"lock","Node":"n1","LockDelay":15000000000,"Behavior":"release","TTL":"30s","NodeChecks":["serfHealth"],"ServiceChecks":null,"CreateIndex":7,"ModifyIndex":7}]"#
        );
        let r = render(
            &Render::Created,
            Response::Sessions {
                sessions: vec![s],
                meta: Meta::default(),
            },
            false,
        );
        assert_eq!(&r.body[..], br#"{"ID":"abc"}"#);
    }
}
