//! `/v1/health/...`: a node's checks, a service's checks, the checks in a state, and a
//! service's instances with their node and checks (`passing`, `tag`), as Consul's
//! `HealthCheck` and `ServiceEntry` JSON.

use cairn_net::rpc::catalog::{CatalogQuery, CatalogResult, Status};
use cairn_net::rpc::message::Response;

use super::api::{self, allow, Ctx, Route};
use super::catalog::{self, check_json, instance_json, read_call, segment, to_value, Read};
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
            let f = catalog::filter(q, catalog::sample_check)?;
            read_call(q, ctx, CatalogQuery::NodeChecks { node }, f, checks)
        }
        "checks" => {
            let name = segment(arg, "service name", ctx)?;
            let f = catalog::filter(q, catalog::sample_check)?;
            read_call(q, ctx, CatalogQuery::ServiceChecks { name }, f, checks)
        }
        "state" => {
            let state = match arg {
                "any" => None,
                s => Some(s.parse::<Status>().map_err(|_| Reply::bad_request("Invalid check state"))?),
            };
            let f = catalog::filter(q, catalog::sample_check)?;
            read_call(q, ctx, CatalogQuery::ChecksInState { state }, f, checks)
        }
        _ => {
            let name = segment(arg, "service name", ctx)?;
            let f = catalog::filter(q, catalog::sample_instance)?;
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
        (Render::Checks(read), Response::Catalog {
            result: CatalogResult::Checks(checks),
            meta,
        }) => read.list(checks.iter().map(|c| to_value(check_json(c))).collect(), &meta, pretty),
        (Render::Instances(read), Response::Catalog {
            result: CatalogResult::Instances(instances),
            meta,
        }) => read.list(instances.iter().map(instance_json).collect(), &meta, pretty),
        (_, other) => api::unexpected(&other),
    }
}
