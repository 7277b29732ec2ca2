//! Routing: an HTTP request line (method, path, query) becomes a [`Route`]: an answer
//! right away (a 404, 405 or 400), an RPC [`Call`] with the way to render its answer, or
//! a request that first needs its body ([`NeedsBody`]). Pure code: no socket, no clock.
//!
//! An endpoint group is a module with a `route` function returning a [`Route`] and a
//! `render` function for its [`Render`] variant, plus one arm in [`route`] and one in
//! [`render`].

use bytes::Bytes;
use cairn_net::rpc::message::{Limits, Op, Request, Response};

use super::query::Query;
use super::reply::{rpc_error, Reply};
use super::{agent, catalog, health, kv, services, session, status, txn};

/// What rendering needs to know about this agent.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub limits: Limits,
    /// The local datacenter: `?dc` naming it is the same as no `?dc`.
    pub datacenter: String,
    pub node: String,
    pub server: bool,
}

impl Ctx {
    #[cfg(test)]
    pub fn for_tests() -> Ctx {
        Ctx {
            limits: Limits::default(),
            datacenter: "dc1".into(),
            node: "node1".into(),
            server: true,
        }
    }

    /// The most body any endpoint reads: a transaction of full-size values, base64
    /// encoded (4/3), plus room for the JSON around them. Larger bodies are refused with
    /// a 413 before they are read.
    pub fn max_body(&self) -> usize {
        self.limits.max_value / 3 * 4 + 4 + 64 * 1024
    }
}

/// What to do with a request.
#[derive(Debug)]
pub(crate) enum Route {
    /// Answer this; nothing is asked of the cluster.
    Reply(Reply),
    /// Ask the agent, then render its answer.
    Call(Call),
    /// Read the body (at most [`NeedsBody::limit`] bytes), then [`NeedsBody::finish`].
    Body(NeedsBody),
    /// Answer from the agent's own gauges (`/v1/agent/metrics`): nothing is asked of the
    /// cluster, but the driver must read them ([`agent::metrics`]).
    Metrics { pretty: bool },
}

/// One RPC and how to render its answer.
#[derive(Debug)]
pub(crate) struct Call {
    pub request: Request,
    pub render: Render,
    /// `?pretty`: indented JSON.
    pub pretty: bool,
}

/// How an RPC answer becomes HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Render {
    Kv(kv::Render),
    Txn,
    Status(status::Render),
    Agent(agent::Render),
    Catalog(catalog::Render),
    Health(health::Render),
    Session(session::Render),
    Services(services::Render),
}

/// A request that needs its body before it can be sent.
#[derive(Debug)]
pub(crate) enum NeedsBody {
    KvPut(kv::Put),
    Txn(txn::Pending),
    Catalog(catalog::Pending),
    Session(session::Pending),
    Agent(services::Pending),
}

impl NeedsBody {
    /// The largest body accepted; a larger one is answered by [`NeedsBody::too_large`].
    pub fn limit(&self, ctx: &Ctx) -> usize {
        match self {
            NeedsBody::KvPut(_) => ctx.limits.max_value,
            NeedsBody::Txn(_)
            | NeedsBody::Catalog(_)
            | NeedsBody::Session(_)
            | NeedsBody::Agent(_) => ctx.max_body(),
        }
    }

    /// The 413 for a body over [`NeedsBody::limit`] (`len`: its length, if announced).
    pub fn too_large(&self, len: Option<u64>, ctx: &Ctx) -> Reply {
        too_large(len, self.limit(ctx))
    }

    pub fn finish(self, body: Bytes, ctx: &Ctx) -> Result<Call, Reply> {
        match self {
            NeedsBody::KvPut(p) => p.finish(body, ctx),
            NeedsBody::Txn(p) => p.finish(&body, ctx),
            NeedsBody::Catalog(p) => p.finish(&body, ctx),
            NeedsBody::Session(p) => p.finish(&body, ctx),
            NeedsBody::Agent(p) => p.finish(body, ctx),
        }
    }
}

/// Consul's 413 for a body over the limit.
pub(crate) fn too_large(len: Option<u64>, max: usize) -> Reply {
    let got = match len {
        Some(n) => format!("({n} bytes) "),
        None => String::new(),
    };
    Reply::text(
        413,
        format!("Request body {got}too large, max size: {max} bytes"),
    )
}

/// A request for this datacenter (empty: the local one) and token.
pub(crate) fn request(datacenter: String, op: Op) -> Request {
    Request {
        datacenter,
        token: String::new(),
        op,
    }
}

/// Refuses a method the path does not take.
pub(crate) fn allow(method: &str, allowed: &[&str]) -> Result<(), Reply> {
    if allowed.contains(&method) {
        Ok(())
    } else {
        Err(Reply::method_not_allowed(method, allowed))
    }
}

/// The request's ACL token, looked up where Consul looks: `?token`, then the
/// `X-Consul-Token` header, then `Authorization: Bearer`. Empty: anonymous. It travels
/// in the RPC request; the servers do not enforce ACLs yet.
pub(crate) fn token(
    query: Option<&str>,
    x_consul_token: Option<&str>,
    authorization: Option<&str>,
    ctx: &Ctx,
) -> Result<String, Reply> {
    let q = Query::parse(query);
    let bearer = authorization.and_then(|a| {
        let (scheme, rest) = a.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    let token = q
        .get("token")
        .filter(|t| !t.is_empty())
        .or(x_consul_token.filter(|t| !t.is_empty()))
        .or(bearer)
        .unwrap_or("");
    if token.len() > ctx.limits.max_string {
        return Err(Reply::bad_request("Invalid token: too long"));
    }
    Ok(token.to_string())
}

/// Routes one request. `path` is as received (percent-encoded); `query` is the raw query
/// string.
pub(crate) fn route(method: &str, path: &str, query: Option<&str>, ctx: &Ctx) -> Route {
    let q = Query::parse(query);
    let Some(rest) = path.strip_prefix("/v1/") else {
        return Route::Reply(Reply::not_found());
    };
    if let Some(key) = rest.strip_prefix("kv/") {
        return kv::route(method, key, &q, ctx);
    }
    if let Some(r) = rest.strip_prefix("catalog/") {
        return catalog::route(method, r, &q, ctx);
    }
    if let Some(r) = rest.strip_prefix("health/") {
        return health::route(method, r, &q, ctx);
    }
    if let Some(r) = rest.strip_prefix("session/") {
        return session::route(method, r, &q, ctx);
    }
    if let Some(r) = rest.strip_prefix("agent/") {
        if let Some(route) = services::route(method, r, &q, ctx) {
            return route;
        }
    }
    match rest {
        "txn" => txn::route(method, &q, ctx),
        "status/leader" | "status/peers" | "operator/raft/configuration" => {
            status::route(method, rest, &q, ctx)
        }
        "agent/self" | "agent/members" => agent::route(method, rest, &q),
        "agent/metrics" => agent::route_metrics(method, &q),
        _ => Route::Reply(Reply::not_found()),
    }
}

/// Renders the agent's answer to a [`Call`].
pub(crate) fn render(render: &Render, resp: Response, pretty: bool, ctx: &Ctx) -> Reply {
    if let Response::Error(e) = &resp {
        // An agent endpoint may render a failed part of its answer itself.
        if !matches!(render, Render::Agent(agent::Render::SelfInfo)) {
            return rpc_error(e);
        }
    }
    match render {
        Render::Kv(r) => kv::render(r, resp, pretty),
        Render::Txn => txn::render(resp, pretty),
        Render::Status(r) => status::render(r, resp, pretty),
        Render::Agent(r) => agent::render(r, resp, pretty, ctx),
        Render::Catalog(r) => catalog::render(r, resp, pretty),
        Render::Health(r) => health::render(r, resp, pretty),
        Render::Session(r) => session::render(r, resp, pretty),
        Render::Services(r) => services::render(r, resp, pretty, ctx),
    }
}

/// The answer to an RPC answer of the wrong kind: a bug, said plainly.
pub(crate) fn unexpected(resp: &Response) -> Reply {
    Reply::text(500, format!("unexpected answer from the agent: {resp:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405() {
        let ctx = Ctx::for_tests();
        for path in ["/", "/v2/kv/a", "/v1/nope", "/v1/kv", "/v1/status/leaderx"] {
            match route("GET", path, None, &ctx) {
                Route::Reply(r) => assert_eq!(r.status, 404, "{path}"),
                other => panic!("{path}: {other:?}"),
            }
        }
        for (method, path) in [
            ("POST", "/v1/kv/a"),
            ("GET", "/v1/txn"),
            ("PUT", "/v1/status/leader"),
            ("DELETE", "/v1/agent/self"),
        ] {
            match route(method, path, None, &ctx) {
                Route::Reply(r) => assert_eq!(r.status, 405, "{method} {path}"),
                other => panic!("{method} {path}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_token_is_taken_from_the_query_then_the_header_then_a_bearer() {
        let ctx = Ctx::for_tests();
        let t = |q, h, a| token(q, h, a, &ctx).unwrap();
        assert_eq!(t(None, None, None), "");
        assert_eq!(t(Some("token=q"), Some("h"), Some("Bearer b")), "q");
        assert_eq!(t(None, Some("h"), Some("Bearer b")), "h");
        assert_eq!(t(None, None, Some("bearer b")), "b");
        assert_eq!(t(None, None, Some("Basic xyz")), "");
        let long = format!("token={}", "t".repeat(ctx.limits.max_string + 1));
        assert_eq!(
            token(Some(&long), None, None, &ctx).unwrap_err().status,
            400
        );
    }

    #[test]
    fn too_large_bodies_get_consuls_413() {
        let r = too_large(Some(600_000), 524_288);
        assert_eq!(r.status, 413);
        assert_eq!(
            &r.body[..],
            b"Request body (600000 bytes) too large, max size: 524288 bytes"
        );
    }
}
