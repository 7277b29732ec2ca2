//! `/v1/health/...`: a node's checks, a service's checks, the checks in a state, and a
//! service's instances with their node and checks (`passing`, `tag`), as Consul's
//! `HealthCheck` and `ServiceEntry` JSON.

use cairn_net::rpc::catalog::{CatalogQuery, CatalogResult, Status};
use cairn_net::rpc::message::Response;

use super::api::{self, allow, Ctx, Route};
use super::catalog::{self, read_call, segment, Read};
use super::json::{self, check_json, instance_json, to_value};
use super::query::Query;
use super::reply::Reply;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Render {
    Checks(Read),
    Instances(Read),
}

/// Routes `/v1/health/<rest>`.
pub(crate) fn route(method: &str, rest: &str, q: &Query, ctx: &Ctx) -> Route {
    route_inner(method, rest, q, ctx).unwrap_or_else(Route::Reply)
}

fn route_inner(method: &str, rest: &str, q: &Query, ctx: &Ctx) -> Result<Route, Reply> {
    let Some((kind, arg)) = rest.split_once('/') else {
        return Err(Reply::not_found());
    };
    if !matches!(kind, "node" | "checks" | "service" | "state") {
        return Err(Reply::not_found());
    }
    allow(method, &["GET"])?;
    let checks = |x| api::Render::Health(Render::Checks(x));
    match kind {
        "node" => {
            let node = segment(arg, "node name", ctx)?;
            let f = catalog::filter(q, json::sample_check)?;
            read_call(q, ctx, CatalogQuery::NodeChecks { node }, f, checks)
        }
        "checks" => {
            let name = segment(arg, "service name", ctx)?;
            let f = catalog::filter(q, json::sample_check)?;
            read_call(q, ctx, CatalogQuery::ServiceChecks { name }, f, checks)
        }
        "state" => {
            let state = match arg {
                "any" => None,
                s => Some(
                    s.parse::<Status>()
                        .map_err(|_| Reply::bad_request("Invalid check state"))?,
                ),
            };
            let f = catalog::filter(q, json::sample_check)?;
            read_call(q, ctx, CatalogQuery::ChecksInState { state }, f, checks)
        }
        _ => {
            let name = segment(arg, "service name", ctx)?;
            let f = catalog::filter_with(
                q,
                json::sample_instance,
                &["Node", "Meta"],
                &["Service", "Tags"],
            )?;
            let query = CatalogQuery::Service {
                name,
                tag: q.get("tag").map(str::to_string),
                passing_only: q.bool_flag("passing")?,
            };
            read_call(q, ctx, query, f, |x| {
                api::Render::Health(Render::Instances(x))
            })
        }
    }
}

pub(crate) fn render(r: &Render, resp: Response, pretty: bool) -> Reply {
    match (r, resp) {
        (
            Render::Checks(read),
            Response::Catalog {
                result: CatalogResult::Checks(checks),
                meta,
            },
        ) => read.list(
            checks.iter().map(|c| to_value(check_json(c))).collect(),
            &meta,
            pretty,
        ),
        (
            Render::Instances(read),
            Response::Catalog {
                result: CatalogResult::Instances(instances),
                meta,
            },
        ) => read.list(instances.iter().map(instance_json).collect(), &meta, pretty),
        (_, other) => api::unexpected(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_net::rpc::catalog::{Check, Instance, Node, Service};
    use cairn_net::rpc::message::{Meta, Op};

    fn op(path: &str, query: Option<&str>) -> Result<Op, u16> {
        match api::route("GET", path, query, &Ctx::for_tests()) {
            Route::Call(c) => Ok(c.request.op),
            Route::Reply(r) => Err(r.status),
            Route::Body(_) | Route::Metrics { .. } => panic!("{path}"),
        }
    }

    fn query(path: &str, q: Option<&str>) -> CatalogQuery {
        match op(path, q) {
            Ok(Op::CatalogRead { query, .. }) => query,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn health_paths_route_to_their_queries() {
        assert_eq!(
            query("/v1/health/node/n1", None),
            CatalogQuery::NodeChecks { node: "n1".into() }
        );
        assert_eq!(
            query("/v1/health/checks/web", None),
            CatalogQuery::ServiceChecks { name: "web".into() }
        );
        assert_eq!(
            query("/v1/health/state/any", None),
            CatalogQuery::ChecksInState { state: None }
        );
        assert_eq!(
            query("/v1/health/state/warning", None),
            CatalogQuery::ChecksInState {
                state: Some(Status::Warning)
            }
        );
        assert_eq!(op("/v1/health/state/maintenance", None), Err(400));
        for (q, passing_only) in [
            (None, false),
            (Some("passing"), true),
            (Some("passing=1"), true),
            (Some("passing=false"), false),
        ] {
            assert_eq!(
                query("/v1/health/service/web", q),
                CatalogQuery::Service {
                    name: "web".into(),
                    tag: None,
                    passing_only
                },
                "{q:?}"
            );
        }
        assert_eq!(
            op("/v1/health/service/web", Some("passing=maybe")),
            Err(400)
        );
        assert_eq!(op("/v1/health/nope/x", None), Err(404));
        assert_eq!(op("/v1/health/service", None), Err(404));
        assert_eq!(
            op(
                "/v1/health/service/web",
                Some("filter=Checks.Nope%20is%20empty")
            ),
            Err(400)
        );
    }

    #[test]
    fn instances_render_as_service_entries_and_filter_through_their_checks() {
        let check = |id: &str, status| Check {
            id: id.into(),
            node: "n1".into(),
            status,
            service_id: "web".into(),
            ..Check::default()
        };
        let inst = |checks| Instance {
            node: Node {
                name: "n1".into(),
                ..Node::default()
            },
            service: Service {
                id: "web".into(),
                name: "web".into(),
                ..Service::default()
            },
            checks,
        };
        let Route::Call(c) = api::route(
            "GET",
            "/v1/health/service/web",
            Some("filter=Checks.Status%20%3D%3D%20critical"),
            &Ctx::for_tests(),
        ) else {
            panic!()
        };
        let r = api::render(
            &c.render,
            Response::Catalog {
                result: CatalogResult::Instances(vec![
                    inst(vec![check("a", Status::Passing)]),
                    inst(vec![
                        check("a", Status::Passing),
                        check("b", Status::Critical),
                    ]),
                ]),
                meta: Meta::default(),
            },
            false,
            &Ctx::for_tests(),
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["Node"]["Node"], "n1");
        assert_eq!(list[0]["Service"]["ID"], "web");
        assert_eq!(list[0]["Checks"][1]["CheckID"], "b");
        assert_eq!(list[0]["Checks"][1]["Status"], "critical");
    }
}
