//! The agent's own services and checks (`/v1/agent/services`, `/v1/agent/checks`,
//! `/v1/agent/service/...`, `/v1/agent/check/...`), maintenance mode, `join`, `leave` and
//! `force-leave`.
//! Answered by the agent that receives them, never forwarded. Writes answer 200 with an
//! empty body, as Consul's do.

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_net::rpc::catalog::{CatalogResult, Status};
use cairn_net::rpc::message::{AgentKind, Op, Response};
use serde::Deserialize;
use serde_json::Value;

use super::api::{self, allow, request, Call, Ctx, NeedsBody, Route};
use super::catalog::{self, segment};
use super::filter::Filter;
use super::json::{self, agent_service_json, check_json, to_value};
use super::query::Query;
use super::reply::Reply;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Render {
    /// `{id: AgentService}`, optionally filtered.
    Services(Option<Filter>),
    /// One service, 404 when this agent has none with this id.
    Service(String),
    /// `{id: HealthCheck}`, optionally filtered.
    Checks(Option<Filter>),
    /// A write: 200, empty body.
    Done,
}

/// Routes `/v1/agent/<rest>` for the paths of this module; `None` for others.
pub(crate) fn route(method: &str, rest: &str, q: &Query, ctx: &Ctx) -> Option<Route> {
    let r = route_inner(method, rest, q, ctx)?;
    Some(r.unwrap_or_else(Route::Reply))
}

fn sample_service() -> Value {
    to_value(agent_service_json(&Default::default(), ""))
}

fn route_inner(method: &str, rest: &str, q: &Query, ctx: &Ctx) -> Option<Result<Route, Reply>> {
    let pretty = q.pretty();
    // The agent answers about itself: no datacenter applies.
    let call = |op, render| {
        Ok(Route::Call(Call {
            request: request(String::new(), op),
            render: api::Render::Services(render),
            pretty,
        }))
    };
    let body = |kind| {
        allow(method, &["PUT"])?;
        Ok(Route::Body(NeedsBody::Agent(Pending { kind, pretty })))
    };
    // A read of the agent's own services or checks.
    let get = |kind, render: Result<Render, Reply>| {
        allow(method, &["GET"])?;
        call(Op::AgentLocal { kind }, render?)
    };
    let put = |op: Result<Op, Reply>| {
        allow(method, &["PUT"])?;
        call(op?, Render::Done)
    };
    let (head, arg) = match rest.split_once('/') {
        Some((h, a)) => (h, Some(a)),
        None => (rest, None),
    };
    Some(match (head, arg) {
        ("services", None) => get(
            AgentKind::Service,
            catalog::filter(q, sample_service).map(Render::Services),
        ),
        ("checks", None) => get(
            AgentKind::Check,
            catalog::filter(q, json::sample_check).map(Render::Checks),
        ),
        ("maintenance", None) => put(maintenance(None, q)),
        ("force-leave", Some(node)) => {
            put(segment(node, "node name", ctx).map(|node| Op::ForceLeave { node }))
        }
        ("leave", None) => put(Ok(Op::Leave)),
        ("join", Some(addr)) => put(join(addr, q, ctx)),
        ("service", Some("register")) => body(PendingKind::Register(AgentKind::Service)),
        ("check", Some("register")) => body(PendingKind::Register(AgentKind::Check)),
        ("service", Some(sub)) => {
            let (verb, id) = sub.split_once('/').unwrap_or(("", sub));
            match verb {
                "deregister" => put(
                    segment(id, "service id", ctx).map(|id| Op::AgentDeregister {
                        kind: AgentKind::Service,
                        id,
                    }),
                ),
                "maintenance" => {
                    put(segment(id, "service id", ctx).and_then(|id| maintenance(Some(id), q)))
                }
                "" => get(
                    AgentKind::Service,
                    segment(id, "service id", ctx).map(Render::Service),
                ),
                _ => return None,
            }
        }
        ("check", Some(sub)) => {
            let (verb, id) = sub.split_once('/')?;
            let id = match segment(id, "check id", ctx) {
                Ok(id) => id,
                Err(r) => return Some(Err(r)),
            };
            let status = match verb {
                "deregister" => {
                    return Some(put(Ok(Op::AgentDeregister {
                        kind: AgentKind::Check,
                        id,
                    })))
                }
                "update" => return Some(body(PendingKind::Update { id })),
                "pass" => Status::Passing,
                "warn" => Status::Warning,
                "fail" => Status::Critical,
                _ => return None,
            };
            put(Ok(Op::AgentCheckUpdate {
                id,
                status,
                output: q.get("note").unwrap_or("").to_string(),
            }))
        }
        _ => return None,
    })
}

/// `/v1/agent/join/<addr>`: the LAN pool only (this agent has no WAN pool).
fn join(addr: &str, q: &Query, ctx: &Ctx) -> Result<Op, Reply> {
    if q.bool_flag("wan")? {
        return Err(Reply::bad_request("this agent has no WAN gossip pool"));
    }
    Ok(Op::Join {
        addresses: vec![segment(addr, "address", ctx)?],
    })
}

/// `?enable` (required, a boolean) and `?reason`, as Consul reads them.
fn maintenance(service_id: Option<String>, q: &Query) -> Result<Op, Reply> {
    let enable = match q.get("enable") {
        None | Some("") => return Err(Reply::bad_request("Missing value for enable")),
        Some(_) => q
            .bool_flag("enable")
            .map_err(|_| Reply::bad_request("Invalid value for enable"))?,
    };
    Ok(Op::AgentMaintenance {
        service_id,
        enable,
        reason: q.get("reason").unwrap_or("").to_string(),
    })
}

#[derive(Debug)]
enum PendingKind {
    /// The body is the definition, passed on as it is.
    Register(AgentKind),
    /// The body is `{"Status": ..., "Output": ...}`.
    Update { id: String },
}

/// An agent write waiting for its body.
#[derive(Debug)]
pub(crate) struct Pending {
    kind: PendingKind,
    pretty: bool,
}

/// Keys folded to lower case (see `json::decode_go`).
#[derive(Deserialize, Default)]
#[serde(default)]
struct UpdateJson {
    status: Option<String>,
    output: Option<String>,
}

impl Pending {
    pub fn finish(self, body: Bytes, _ctx: &Ctx) -> Result<Call, Reply> {
        let op = match self.kind {
            PendingKind::Register(kind) => Op::AgentRegister {
                kind,
                definition: body,
            },
            PendingKind::Update { id } => {
                let u: UpdateJson = json::decode_go(&body)?;
                let s = u.status.unwrap_or_default();
                let status = s
                    .parse::<Status>()
                    .map_err(|_| Reply::bad_request(format!("Invalid check status: '{s}'")))?;
                Op::AgentCheckUpdate {
                    id,
                    status,
                    output: u.output.unwrap_or_default(),
                }
            }
        };
        Ok(Call {
            request: request(String::new(), op),
            render: api::Render::Services(Render::Done),
            pretty: self.pretty,
        })
    }
}

fn keep(filter: &Option<Filter>, v: &Value) -> bool {
    filter.as_ref().is_none_or(|f| f.matches(v))
}

pub(crate) fn render(r: &Render, resp: Response, pretty: bool, ctx: &Ctx) -> Reply {
    match (r, resp) {
        (Render::Done, Response::Bool(true) | Response::Done) => Reply::empty(200),
        (
            Render::Services(filter),
            Response::Catalog {
                result: CatalogResult::NodeServices(_, services),
                ..
            },
        ) => {
            let map: BTreeMap<&str, Value> = services
                .iter()
                .map(|s| {
                    (
                        s.id.as_str(),
                        to_value(agent_service_json(s, &ctx.datacenter)),
                    )
                })
                .filter(|(_, v)| keep(filter, v))
                .collect();
            Reply::json(200, &map, pretty)
        }
        (
            Render::Service(id),
            Response::Catalog {
                result: CatalogResult::NodeServices(_, services),
                ..
            },
        ) => match services.iter().find(|s| &s.id == id) {
            Some(s) => Reply::json(200, &agent_service_json(s, &ctx.datacenter), pretty),
            None => Reply::text(404, format!("unknown service ID: {id}")),
        },
        (
            Render::Checks(filter),
            Response::Catalog {
                result: CatalogResult::Checks(checks),
                ..
            },
        ) => {
            let map: BTreeMap<&str, Value> = checks
                .iter()
                .map(|c| (c.id.as_str(), to_value(check_json(c))))
                .filter(|(_, v)| keep(filter, v))
                .collect();
            Reply::json(200, &map, pretty)
        }
        (_, other) => api::unexpected(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_net::rpc::catalog::{Check, Node, Service};
    use cairn_net::rpc::message::Meta;

    fn op(method: &str, path: &str, q: Option<&str>) -> Result<Op, u16> {
        match api::route(method, path, q, &Ctx::for_tests()) {
            Route::Call(c) => Ok(c.request.op),
            Route::Reply(r) => Err(r.status),
            Route::Body(_) | Route::Metrics { .. } => Err(0),
        }
    }

    #[test]
    fn agent_paths_route_to_the_agent_api() {
        let svc = AgentKind::Service;
        let chk = AgentKind::Check;
        assert_eq!(
            op("GET", "/v1/agent/services", None),
            Ok(Op::AgentLocal { kind: svc })
        );
        assert_eq!(
            op("GET", "/v1/agent/checks", None),
            Ok(Op::AgentLocal { kind: chk })
        );
        assert_eq!(
            op("GET", "/v1/agent/service/web", None),
            Ok(Op::AgentLocal { kind: svc })
        );
        assert_eq!(
            op("PUT", "/v1/agent/service/deregister/web", None),
            Ok(Op::AgentDeregister {
                kind: svc,
                id: "web".into()
            })
        );
        assert_eq!(
            op("PUT", "/v1/agent/check/deregister/c%2F1", None),
            Ok(Op::AgentDeregister {
                kind: chk,
                id: "c/1".into()
            })
        );
        for (verb, status) in [
            ("pass", Status::Passing),
            ("warn", Status::Warning),
            ("fail", Status::Critical),
        ] {
            assert_eq!(
                op(
                    "PUT",
                    &format!("/v1/agent/check/{verb}/ttl"),
                    Some("note=hi")
                ),
                Ok(Op::AgentCheckUpdate {
                    id: "ttl".into(),
                    status,
                    output: "hi".into()
                })
            );
        }
        assert_eq!(
            op(
                "PUT",
                "/v1/agent/maintenance",
                Some("enable=true&reason=up")
            ),
            Ok(Op::AgentMaintenance {
                service_id: None,
                enable: true,
                reason: "up".into()
            })
        );
        assert_eq!(
            op(
                "PUT",
                "/v1/agent/service/maintenance/web",
                Some("enable=false")
            ),
            Ok(Op::AgentMaintenance {
                service_id: Some("web".into()),
                enable: false,
                reason: String::new()
            })
        );
        assert_eq!(
            op("PUT", "/v1/agent/force-leave/n2", None),
            Ok(Op::ForceLeave { node: "n2".into() })
        );
        // Bodies, refusals, and paths not served.
        assert_eq!(op("PUT", "/v1/agent/service/register", None), Err(0));
        assert_eq!(op("PUT", "/v1/agent/check/register", None), Err(0));
        assert_eq!(op("PUT", "/v1/agent/check/update/ttl", None), Err(0));
        assert_eq!(op("PUT", "/v1/agent/maintenance", None), Err(400));
        assert_eq!(
            op("PUT", "/v1/agent/maintenance", Some("enable=yes")),
            Err(400)
        );
        assert_eq!(op("GET", "/v1/agent/check/pass/ttl", None), Err(405));
        assert_eq!(op("PUT", "/v1/agent/services", None), Err(405));
        assert_eq!(op("PUT", "/v1/agent/leave", None), Ok(Op::Leave));
        assert_eq!(
            op("PUT", "/v1/agent/join/10.0.0.1%3A8301", None),
            Ok(Op::Join {
                addresses: vec!["10.0.0.1:8301".into()]
            })
        );
        assert_eq!(op("PUT", "/v1/agent/join/10.0.0.1", Some("wan")), Err(400));
        assert_eq!(op("GET", "/v1/agent/leave", None), Err(405));
        assert_eq!(op("PUT", "/v1/agent/check/nope/x", None), Err(404));
    }

    fn finish(path: &str, body: &'static str) -> Result<Op, u16> {
        let ctx = Ctx::for_tests();
        let Route::Body(p) = api::route("PUT", path, None, &ctx) else {
            panic!("{path}")
        };
        p.finish(Bytes::from_static(body.as_bytes()), &ctx)
            .map(|c| c.request.op)
            .map_err(|r| r.status)
    }

    #[test]
    fn registrations_pass_the_body_through_and_updates_parse_theirs() {
        let def = r#"{"Name": "web", "Port": 80}"#;
        assert_eq!(
            finish("/v1/agent/service/register", def),
            Ok(Op::AgentRegister {
                kind: AgentKind::Service,
                definition: Bytes::from_static(def.as_bytes())
            })
        );
        assert_eq!(
            finish(
                "/v1/agent/check/update/ttl",
                r#"{"Status": "warning", "Output": "slow"}"#
            ),
            Ok(Op::AgentCheckUpdate {
                id: "ttl".into(),
                status: Status::Warning,
                output: "slow".into()
            })
        );
        assert_eq!(
            finish("/v1/agent/check/update/ttl", r#"{"Status": "ok"}"#),
            Err(400)
        );
        assert_eq!(finish("/v1/agent/check/update/ttl", "nope"), Err(400));
    }

    #[test]
    fn the_agents_services_and_checks_render_as_maps_by_id() {
        let ctx = Ctx::for_tests();
        let services = Response::Catalog {
            result: CatalogResult::NodeServices(
                Some(Node::default()),
                vec![Service {
                    id: "web-1".into(),
                    name: "web".into(),
                    port: 80,
                    ..Service::default()
                }],
            ),
            meta: Meta::default(),
        };
        let r = render(&Render::Services(None), services.clone(), false, &ctx);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["web-1"]["Service"], "web");
        assert_eq!(v["web-1"]["Datacenter"], "dc1");
        assert!(v["web-1"].get("CreateIndex").is_none());
        let f = Filter::parse(r#"Service == "db""#, &sample_service()).unwrap();
        let r = render(&Render::Services(Some(f)), services.clone(), false, &ctx);
        assert_eq!(&r.body[..], b"{}");
        let r = render(
            &Render::Service("web-1".into()),
            services.clone(),
            false,
            &ctx,
        );
        assert_eq!(r.status, 200);
        assert_eq!(
            render(&Render::Service("x".into()), services, false, &ctx).status,
            404
        );
        let checks = Response::Catalog {
            result: CatalogResult::Checks(vec![Check {
                id: "c".into(),
                status: Status::Passing,
                ..Check::default()
            }]),
            meta: Meta::default(),
        };
        let v: Value =
            serde_json::from_slice(&render(&Render::Checks(None), checks, false, &ctx).body)
                .unwrap();
        assert_eq!(v["c"]["Status"], "passing");
        let r = render(&Render::Done, Response::Bool(true), false, &ctx);
        assert_eq!((r.status, r.body.len()), (200, 0));
    }
}
