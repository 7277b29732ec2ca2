//! `/v1/kv/<key>`: GET (`recurse`, `keys`, `separator`, `raw`, blocking and consistency
//! options), PUT (`flags`, `cas`, `acquire`, `release`; the body is the value) and DELETE
//! (`recurse`, `cas`), answered as Consul does.

use base64::Engine;
use bytes::Bytes;
use cairn_net::rpc::message::{Consistency, Entry, Op, Response};
use serde::Serialize;

use super::api::{self, allow, request, Call, Ctx, NeedsBody, Route};
use super::query::Query;
use super::reply::Reply;

/// How a KV answer is rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Render {
    /// Entries as Consul's JSON list, or (`raw`) the first entry's value as it is.
    Entries { raw: bool, consistency: Consistency },
    /// Key names (`?keys`).
    Keys { consistency: Consistency },
    /// `true` or `false` (put, delete).
    Bool,
}

/// A PUT waiting for its body (the value).
#[derive(Debug)]
pub(crate) struct Put {
    key: Bytes,
    flags: u64,
    cas: Option<u64>,
    acquire: Option<String>,
    release: Option<String>,
    datacenter: String,
    pretty: bool,
}

impl Put {
    pub fn finish(self, value: Bytes, ctx: &Ctx) -> Result<Call, Reply> {
        if value.len() > ctx.limits.max_value {
            return Err(api::too_large(
                Some(value.len() as u64),
                ctx.limits.max_value,
            ));
        }
        Ok(Call {
            request: request(
                self.datacenter,
                Op::KvPut {
                    key: self.key,
                    value,
                    flags: self.flags,
                    cas: self.cas,
                    acquire: self.acquire,
                    release: self.release,
                },
            ),
            render: api::Render::Kv(Render::Bool),
            pretty: self.pretty,
        })
    }
}

/// Routes `/v1/kv/<raw_key>` (`raw_key` still percent-encoded, as in the path).
pub(crate) fn route(method: &str, raw_key: &str, q: &Query, ctx: &Ctx) -> Route {
    match route_inner(method, raw_key, q, ctx) {
        Ok(r) => r,
        Err(reply) => Route::Reply(reply),
    }
}

fn route_inner(method: &str, raw_key: &str, q: &Query, ctx: &Ctx) -> Result<Route, Reply> {
    allow(method, &["GET", "PUT", "DELETE"])?;
    // Go hands Consul the decoded path; keys are bytes, so any escape is kept as is.
    let key: Bytes = percent_encoding::percent_decode_str(raw_key)
        .collect::<Vec<u8>>()
        .into();
    if key.len() > ctx.limits.max_key {
        return Err(Reply::text(
            413,
            format!(
                "Key too large ({} > {} bytes)",
                key.len(),
                ctx.limits.max_key
            ),
        ));
    }
    let datacenter = q.datacenter(ctx);
    let pretty = q.pretty();
    let call = |op, render| {
        Route::Call(Call {
            request: request(datacenter.clone(), op),
            render: api::Render::Kv(render),
            pretty,
        })
    };
    Ok(match method {
        "GET" => {
            let opts = q.read_opts()?;
            let consistency = opts.consistency;
            if q.has("keys") {
                let separator = q
                    .get("separator")
                    .filter(|s| !s.is_empty())
                    .map(|s| Bytes::copy_from_slice(s.as_bytes()));
                if separator
                    .as_ref()
                    .is_some_and(|s| s.len() > ctx.limits.max_key)
                {
                    return Err(Reply::bad_request("Invalid separator: too long"));
                }
                call(
                    Op::KvList {
                        prefix: key,
                        keys_only: true,
                        separator,
                        opts,
                    },
                    Render::Keys { consistency },
                )
            } else {
                let raw = q.has("raw");
                let op = if q.has("recurse") {
                    Op::KvList {
                        prefix: key,
                        keys_only: false,
                        separator: None,
                        opts,
                    }
                } else {
                    Op::KvGet { key, opts }
                };
                call(op, Render::Entries { raw, consistency })
            }
        }
        "PUT" => {
            if key.is_empty() {
                return Err(Reply::bad_request("Missing key name"));
            }
            let session = |name: &str| -> Result<Option<String>, Reply> {
                match q.get(name) {
                    Some(s) if s.len() > ctx.limits.max_string => Err(Reply::bad_request(format!(
                        "Invalid {name}: session id too long"
                    ))),
                    Some(s) => Ok(Some(s.to_string())),
                    None => Ok(None),
                }
            };
            Route::Body(NeedsBody::KvPut(Put {
                key,
                flags: q.u64("flags")?.unwrap_or(0),
                cas: q.u64("cas")?,
                acquire: session("acquire")?,
                release: session("release")?,
                datacenter,
                pretty,
            }))
        }
        _ => {
            let recurse = q.has("recurse");
            if key.is_empty() && !recurse {
                return Err(Reply::bad_request("Missing key name"));
            }
            let cas = q.u64("cas")?;
            call(Op::KvDelete { key, recurse, cas }, Render::Bool)
        }
    })
}

/// One entry in Consul's JSON (`api.KVPair`): the value base64, `null` when empty.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct KvPair {
    lock_index: u64,
    key: String,
    flags: u64,
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    create_index: u64,
    modify_index: u64,
}

impl KvPair {
    pub fn of(e: &Entry) -> KvPair {
        KvPair {
            lock_index: e.lock_index,
            key: String::from_utf8_lossy(&e.key).into_owned(),
            flags: e.flags,
            value: (!e.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&e.value)),
            session: e.session.clone().filter(|s| !s.is_empty()),
            create_index: e.create_index,
            modify_index: e.modify_index,
        }
    }
}

pub(crate) fn render(r: &Render, resp: Response, pretty: bool) -> Reply {
    match (r, resp) {
        (Render::Entries { raw, consistency }, Response::Entries { entries, meta }) => {
            let reply = match entries.first() {
                // A missing key (or an empty prefix) is a bare 404 with the index.
                None => Reply::empty(404),
                // Raw values are served as text that browsers must not sniff (Consul's
                // fix for CVE-2020-25864).
                Some(e) if *raw => Reply {
                    status: 200,
                    headers: vec![
                        ("Content-Type", "text/plain".into()),
                        ("X-Content-Type-Options", "nosniff".into()),
                    ],
                    body: e.value.clone(),
                },
                Some(_) => {
                    let list: Vec<KvPair> = entries.iter().map(KvPair::of).collect();
                    Reply::json(200, &list, pretty)
                }
            };
            reply.with_meta(&meta, *consistency)
        }
        (Render::Keys { consistency }, Response::Keys { keys, meta }) => {
            let reply = if keys.is_empty() {
                Reply::empty(404)
            } else {
                let keys: Vec<std::borrow::Cow<str>> =
                    keys.iter().map(|k| String::from_utf8_lossy(k)).collect();
                Reply::json(200, &keys, pretty)
            };
            reply.with_meta(&meta, *consistency)
        }
        (Render::Bool, Response::Bool(ok)) => Reply::json(200, &ok, pretty),
        (_, other) => api::unexpected(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_net::rpc::message::{Meta, ReadOpts, Request};

    fn ctx() -> Ctx {
        Ctx::for_tests()
    }

    fn call(method: &str, path: &str, query: Option<&str>) -> Call {
        match api::route(method, path, query, &ctx()) {
            Route::Call(c) => c,
            other => panic!("{method} {path}?{query:?}: {other:?}"),
        }
    }

    fn reply(method: &str, path: &str, query: Option<&str>) -> Reply {
        match api::route(method, path, query, &ctx()) {
            Route::Reply(r) => r,
            other => panic!("{method} {path}?{query:?}: {other:?}"),
        }
    }

    fn op(c: &Call) -> &Op {
        &c.request.op
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn a_get_is_a_kv_get_with_the_decoded_key() {
        let c = call("GET", "/v1/kv/a%20b/c%2Fd", None);
        assert_eq!(
            op(&c),
            &Op::KvGet {
                key: b("a b/c/d"),
                opts: ReadOpts::default()
            }
        );
        assert_eq!(c.request.datacenter, "");
    }

    #[test]
    fn recurse_keys_and_separator_become_list_reads() {
        let c = call("GET", "/v1/kv/app/", Some("recurse&stale"));
        assert!(matches!(
            op(&c),
            Op::KvList { prefix, keys_only: false, separator: None, opts }
                if prefix == &b("app/") && opts.consistency == Consistency::Stale
        ));
        let c = call(
            "GET",
            "/v1/kv/app/",
            Some("keys&separator=/&index=5&wait=10s"),
        );
        assert_eq!(
            op(&c),
            &Op::KvList {
                prefix: b("app/"),
                keys_only: true,
                separator: Some(b("/")),
                opts: ReadOpts {
                    consistency: Consistency::Default,
                    index: 5,
                    wait_ms: 10_000
                }
            }
        );
        assert_eq!(
            c.render,
            api::Render::Kv(Render::Keys {
                consistency: Consistency::Default
            })
        );
    }

    #[test]
    fn another_datacenter_is_asked_for_by_name() {
        let c = call("GET", "/v1/kv/a", Some("dc=eu"));
        assert_eq!(c.request.datacenter, "eu");
    }

    #[test]
    fn a_put_needs_its_body_then_carries_flags_cas_and_sessions() {
        let ctx = ctx();
        let Route::Body(p) = api::route("PUT", "/v1/kv/a", Some("flags=3&cas=0&acquire=s1"), &ctx)
        else {
            panic!("a put reads its body");
        };
        assert_eq!(p.limit(&ctx), ctx.limits.max_value);
        let c = p
            .finish(b("v"), &ctx)
            .expect("a put with a small body is a call");
        assert_eq!(
            c.request,
            Request {
                datacenter: String::new(),
                token: String::new(),
                op: Op::KvPut {
                    key: b("a"),
                    value: b("v"),
                    flags: 3,
                    cas: Some(0),
                    acquire: Some("s1".into()),
                    release: None
                }
            }
        );
    }

    #[test]
    fn a_value_over_the_limit_is_413() {
        let ctx = ctx();
        let Route::Body(p) = api::route("PUT", "/v1/kv/a", None, &ctx) else {
            panic!()
        };
        let big = Bytes::from(vec![b'x'; ctx.limits.max_value + 1]);
        let r = p.finish(big, &ctx).expect_err("too large");
        assert_eq!(r.status, 413);
    }

    #[test]
    fn bad_parameters_and_missing_keys_are_400_before_anything_is_sent() {
        for (method, path, q) in [
            ("PUT", "/v1/kv/a", "cas=abc"),
            ("PUT", "/v1/kv/a", "flags=-1"),
            ("DELETE", "/v1/kv/a", "cas=x"),
            ("GET", "/v1/kv/a", "index=1&wait=xyz"),
            ("GET", "/v1/kv/a", "index=nope"),
            ("GET", "/v1/kv/a", "stale&consistent"),
            ("PUT", "/v1/kv/", ""),
            ("DELETE", "/v1/kv/", ""),
        ] {
            assert_eq!(
                reply(method, path, Some(q)).status,
                400,
                "{method} {path}?{q}"
            );
        }
        let long = format!("/v1/kv/{}", "k".repeat(ctx().limits.max_key + 1));
        assert_eq!(reply("GET", &long, None).status, 413);
    }

    #[test]
    fn deletes_carry_recurse_and_cas() {
        let c = call("DELETE", "/v1/kv/", Some("recurse"));
        assert_eq!(
            op(&c),
            &Op::KvDelete {
                key: b(""),
                recurse: true,
                cas: None
            }
        );
        let c = call("DELETE", "/v1/kv/a", Some("cas=9"));
        assert_eq!(
            op(&c),
            &Op::KvDelete {
                key: b("a"),
                recurse: false,
                cas: Some(9)
            }
        );
    }

    fn entry(key: &str, value: &str) -> Entry {
        Entry {
            key: b(key),
            value: b(value),
            flags: 4,
            create_index: 10,
            modify_index: 12,
            lock_index: 0,
            session: None,
        }
    }

    const META: Meta = Meta {
        index: 12,
        known_leader: true,
        last_contact_ms: 0,
    };

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn entries_render_as_consuls_json_with_the_index_header() {
        let r = render(
            &Render::Entries {
                raw: false,
                consistency: Consistency::Default,
            },
            Response::Entries {
                entries: vec![entry("a", "hello"), entry("b", "")],
                meta: META,
            },
            false,
        );
        assert_eq!(r.status, 200);
        assert_eq!(header(&r, "Content-Type"), Some("application/json"));
        assert_eq!(header(&r, "X-Consul-Index"), Some("12"));
        assert_eq!(header(&r, "X-Consul-KnownLeader"), Some("true"));
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"[{"LockIndex":0,"Key":"a","Flags":4,"Value":"aGVsbG8=","CreateIndex":10,"ModifyIndex":12},{"LockIndex":0,"Key":"b","Flags":4,"Value":null,"CreateIndex":10,"ModifyIndex":12}]"#
        );
    }

    #[test]
    fn a_held_lock_shows_its_session() {
        let mut e = entry("l", "x");
        e.session = Some("sess".into());
        e.lock_index = 1;
        let json = serde_json::to_value(KvPair::of(&e)).unwrap();
        assert_eq!(json["Session"], "sess");
        assert_eq!(json["LockIndex"], 1);
    }

    #[test]
    fn a_missing_key_is_a_bare_404_with_the_index() {
        let r = render(
            &Render::Entries {
                raw: false,
                consistency: Consistency::Stale,
            },
            Response::Entries {
                entries: vec![],
                meta: META,
            },
            false,
        );
        assert_eq!(r.status, 404);
        assert!(r.body.is_empty());
        assert_eq!(header(&r, "X-Consul-Index"), Some("12"));
        assert_eq!(header(&r, "X-Consul-Effective-Consistency"), Some("stale"));
        let r = render(
            &Render::Keys {
                consistency: Consistency::Default,
            },
            Response::Keys {
                keys: vec![],
                meta: META,
            },
            false,
        );
        assert_eq!(r.status, 404);
    }

    #[test]
    fn raw_is_the_value_itself_as_unsniffable_text() {
        let r = render(
            &Render::Entries {
                raw: true,
                consistency: Consistency::Default,
            },
            Response::Entries {
                entries: vec![entry("a", "<b>hi</b>")],
                meta: META,
            },
            false,
        );
        assert_eq!(&r.body[..], b"<b>hi</b>");
        assert_eq!(header(&r, "Content-Type"), Some("text/plain"));
        assert_eq!(header(&r, "X-Content-Type-Options"), Some("nosniff"));
    }

    #[test]
    fn keys_and_bools_render_as_json() {
        let r = render(
            &Render::Keys {
                consistency: Consistency::Default,
            },
            Response::Keys {
                keys: vec![b("a/"), b("b")],
                meta: META,
            },
            false,
        );
        assert_eq!(&r.body[..], br#"["a/","b"]"#);
        assert_eq!(
            &render(&Render::Bool, Response::Bool(true), false).body[..],
            b"true"
        );
        assert_eq!(
            &render(&Render::Bool, Response::Bool(false), false).body[..],
            b"false"
        );
    }
}
