//! `/v1/catalog/...`: register and deregister (PUT, Consul's JSON bodies), datacenters,
//! nodes, services, a service's instances (Consul's flattened `CatalogService`) and a
//! node's services. Also the read helpers the health, session and agent endpoints share
//! (path segments, `?filter`, blocking-read calls).

use std::collections::BTreeMap;

use cairn_net::rpc::catalog::{
    CatalogQuery, CatalogResult, Check, Instance, Node, Registration, Service, Status, Weights,
};
use cairn_net::rpc::message::{Consistency, Op, Response};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::api::{self, allow, request, Call, Ctx, NeedsBody, Route};
use super::filter::Filter;
use super::json::{
    decode_go, node_json, sample_node, service_json, to_value, weights, ServiceJson, WeightsJson,
};
use super::query::Query;
use super::reply::Reply;

/// How a read renders: its consistency (for the headers) and an optional `?filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Read {
    pub consistency: Consistency,
    pub filter: Option<Filter>,
}

impl Read {
    /// The read's answer: the JSON `items`, filtered, with Consul's query headers.
    pub fn list(
        &self,
        items: Vec<Value>,
        meta: &cairn_net::rpc::message::Meta,
        pretty: bool,
    ) -> Reply {
        let items = match &self.filter {
            Some(f) => f.apply(items),
            None => items,
        };
        Reply::json(200, &items, pretty).with_meta(meta, self.consistency)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Render {
    /// `true` (register, deregister).
    Bool,
    Nodes(Read),
    Services(Read),
    Service(Read),
    Node(Read),
}

// ---- Consul's JSON shapes (the shared ones are in `json`) ----------------------------

/// Consul's `CatalogService`: one instance flattened with its node.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CatalogServiceJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    node: &'a str,
    address: &'a str,
    datacenter: &'a str,
    node_meta: &'a BTreeMap<String, String>,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    service_address: &'a str,
    service_port: u16,
    service_meta: &'a BTreeMap<String, String>,
    service_weights: WeightsJson,
    service_enable_tag_override: bool,
    create_index: u64,
    modify_index: u64,
}

fn catalog_service_json(i: &Instance) -> CatalogServiceJson<'_> {
    let (n, s) = (&i.node, &i.service);
    CatalogServiceJson {
        id: &n.id,
        node: &n.name,
        address: &n.address,
        datacenter: &n.datacenter,
        node_meta: &n.meta,
        service_id: &s.id,
        service_name: &s.name,
        service_tags: &s.tags,
        service_address: &s.address,
        service_port: s.port,
        service_meta: &s.meta,
        service_weights: weights(&s.weights),
        service_enable_tag_override: false,
        create_index: s.create_index,
        modify_index: s.modify_index,
    }
}

fn sample_catalog_service() -> Value {
    to_value(catalog_service_json(&Instance {
        node: Node::default(),
        service: Service::default(),
        checks: vec![],
    }))
}

// ---- routing --------------------------------------------------------------------------

/// A path segment (a node, service, check or session name), percent-decoded.
pub(crate) fn segment(raw: &str, what: &str, ctx: &Ctx) -> Result<String, Reply> {
    let s = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Reply::bad_request(format!("Invalid {what}: not UTF-8")))?
        .into_owned();
    if s.is_empty() {
        return Err(Reply::bad_request(format!("Missing {what}")));
    }
    if s.len() > ctx.limits.max_string {
        return Err(Reply::bad_request(format!("Invalid {what}: too long")));
    }
    Ok(s)
}

/// `?filter`, checked against `sample`; a bad one is a 400 before anything is sent.
/// `?node-meta` is refused here: only the endpoints that read it use [`filter_with`].
pub(crate) fn filter(q: &Query, sample: impl FnOnce() -> Value) -> Result<Option<Filter>, Reply> {
    if q.has("node-meta") {
        return Err(Reply::bad_request(
            "?node-meta is not supported on this endpoint",
        ));
    }
    filter_with(q, sample, &[], &[])
}

/// `?filter` and, as conditions added to it, `?node-meta=key:value` (every pair must
/// match the node's meta at `node_meta`, a selector) and every `?tag` after the first
/// (the first goes to the server; each further one must be in the tags at `tags`), as
/// Consul reads repeated parameters.
pub(crate) fn filter_with(
    q: &Query,
    sample: impl FnOnce() -> Value,
    node_meta: &[&str],
    tags: &[&str],
) -> Result<Option<Filter>, Reply> {
    let path = |base: &[&str], key: Option<&str>| -> Vec<String> {
        base.iter()
            .copied()
            .chain(key)
            .map(str::to_string)
            .collect()
    };
    let mut conditions = Vec::new();
    for pair in q.all("node-meta") {
        let (k, v) = pair.split_once(':').unwrap_or((pair, ""));
        conditions.push(Filter::Match {
            selector: path(node_meta, Some(k)),
            op: super::filter::MatchOp::Equal,
            value: v.to_string(),
        });
    }
    for tag in q.all("tag").into_iter().skip(1) {
        conditions.push(Filter::Match {
            selector: path(tags, None),
            op: super::filter::MatchOp::In,
            value: tag.to_string(),
        });
    }
    let user = match q.get("filter") {
        None | Some("") => None,
        Some(f) => Some(Filter::parse(f, &sample()).map_err(|e| {
            Reply::bad_request(format!(
                "Failed to create boolean expression evaluator: {e}"
            ))
        })?),
    };
    Ok(conditions
        .into_iter()
        .chain(user)
        .reduce(|a, b| Filter::And(Box::new(a), Box::new(b))))
}

/// Refuses `?filter` on an endpoint that does not take one.
pub(crate) fn no_filter(q: &Query) -> Result<(), Reply> {
    if q.get("filter").is_some_and(|f| !f.is_empty()) {
        return Err(Reply::bad_request(
            "?filter is not supported on this endpoint",
        ));
    }
    Ok(())
}

/// A catalog read with `opts` from the query and this render.
pub(crate) fn read_call(
    q: &Query,
    ctx: &Ctx,
    query: CatalogQuery,
    filter: Option<Filter>,
    render: impl FnOnce(Read) -> api::Render,
) -> Result<Route, Reply> {
    let opts = q.read_opts()?;
    Ok(Route::Call(Call {
        request: request(q.datacenter(ctx), Op::CatalogRead { query, opts }),
        render: render(Read {
            consistency: opts.consistency,
            filter,
        }),
        pretty: q.pretty(),
    }))
}

/// Routes `/v1/catalog/<rest>`.
pub(crate) fn route(method: &str, rest: &str, q: &Query, ctx: &Ctx) -> Route {
    route_inner(method, rest, q, ctx).unwrap_or_else(Route::Reply)
}

fn route_inner(method: &str, rest: &str, q: &Query, ctx: &Ctx) -> Result<Route, Reply> {
    let r = |x| api::Render::Catalog(x);
    match rest {
        "register" | "deregister" => {
            allow(method, &["PUT"])?;
            return Ok(Route::Body(NeedsBody::Catalog(Pending {
                deregister: rest == "deregister",
                datacenter: q.datacenter(ctx),
                pretty: q.pretty(),
            })));
        }
        "datacenters" => {
            allow(method, &["GET"])?;
            return Ok(Route::Reply(Reply::json(
                200,
                &[&ctx.datacenter],
                q.pretty(),
            )));
        }
        _ => {}
    }
    allow(method, &["GET"])?;
    match rest {
        "nodes" => {
            let f = filter_with(q, sample_node, &["Meta"], &[])?;
            read_call(q, ctx, CatalogQuery::Nodes, f, |x| r(Render::Nodes(x)))
        }
        "services" => {
            no_filter(q)?;
            if q.has("node-meta") {
                return Err(Reply::bad_request(
                    "?node-meta is not supported on this endpoint",
                ));
            }
            read_call(q, ctx, CatalogQuery::Services, None, |x| {
                r(Render::Services(x))
            })
        }
        _ => {
            if let Some(name) = rest.strip_prefix("service/") {
                let name = segment(name, "service name", ctx)?;
                let f = filter_with(q, sample_catalog_service, &["NodeMeta"], &["ServiceTags"])?;
                let query = CatalogQuery::Service {
                    name,
                    tag: q.get("tag").map(str::to_string),
                    passing_only: false,
                };
                read_call(q, ctx, query, f, |x| r(Render::Service(x)))
            } else if let Some(node) = rest.strip_prefix("node/") {
                let node = segment(node, "node name", ctx)?;
                no_filter(q)?;
                read_call(q, ctx, CatalogQuery::NodeServices { node }, None, |x| {
                    r(Render::Node(x))
                })
            } else {
                Err(Reply::not_found())
            }
        }
    }
}

// ---- register and deregister bodies ------------------------------------------------------

/// Go decodes `null` as the zero value; so does this.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RegisterJson {
    #[serde(deserialize_with = "nullable")]
    datacenter: String,
    #[serde(deserialize_with = "nullable")]
    id: String,
    #[serde(deserialize_with = "nullable")]
    node: String,
    #[serde(deserialize_with = "nullable")]
    address: String,
    #[serde(deserialize_with = "nullable")]
    nodemeta: BTreeMap<String, String>,
    service: Option<ServiceIn>,
    check: Option<CheckIn>,
    #[serde(deserialize_with = "nullable")]
    checks: Vec<CheckIn>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ServiceIn {
    #[serde(deserialize_with = "nullable")]
    id: String,
    #[serde(deserialize_with = "nullable")]
    service: String,
    #[serde(deserialize_with = "nullable")]
    tags: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    address: String,
    #[serde(deserialize_with = "nullable")]
    meta: BTreeMap<String, String>,
    #[serde(deserialize_with = "nullable")]
    port: u16,
    weights: Option<WeightsIn>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WeightsIn {
    #[serde(deserialize_with = "nullable")]
    passing: u32,
    #[serde(deserialize_with = "nullable")]
    warning: u32,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CheckIn {
    #[serde(deserialize_with = "nullable")]
    node: String,
    #[serde(deserialize_with = "nullable")]
    checkid: String,
    #[serde(deserialize_with = "nullable")]
    name: String,
    #[serde(deserialize_with = "nullable")]
    status: String,
    #[serde(deserialize_with = "nullable")]
    output: String,
    #[serde(deserialize_with = "nullable")]
    serviceid: String,
    #[serde(rename = "type", deserialize_with = "nullable")]
    kind: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeregisterJson {
    #[serde(deserialize_with = "nullable")]
    datacenter: String,
    #[serde(deserialize_with = "nullable")]
    node: String,
    #[serde(deserialize_with = "nullable")]
    serviceid: String,
    #[serde(deserialize_with = "nullable")]
    checkid: String,
}

/// A register or deregister waiting for its body.
#[derive(Debug)]
pub(crate) struct Pending {
    deregister: bool,
    datacenter: String,
    pretty: bool,
}

/// The body's `Datacenter` wins over `?dc`, as in Consul; the local one is sent as empty.
fn body_datacenter(body_dc: &str, query_dc: String, ctx: &Ctx) -> String {
    if body_dc.is_empty() {
        query_dc
    } else if body_dc == ctx.datacenter {
        String::new()
    } else {
        body_dc.to_string()
    }
}

impl Pending {
    pub fn finish(self, body: &[u8], ctx: &Ctx) -> Result<Call, Reply> {
        let (datacenter, op) = if self.deregister {
            let d: DeregisterJson = decode_go(body)?;
            if d.node.is_empty() {
                return Err(Reply::bad_request("Missing node name"));
            }
            (
                body_datacenter(&d.datacenter, self.datacenter, ctx),
                Op::CatalogDeregister {
                    node: d.node,
                    service_id: Some(d.serviceid).filter(|s| !s.is_empty()),
                    check_id: Some(d.checkid).filter(|s| !s.is_empty()),
                },
            )
        } else {
            let r: RegisterJson = decode_go(body)?;
            let dc = body_datacenter(&r.datacenter, self.datacenter, ctx);
            (dc, Op::CatalogRegister(Box::new(registration(r)?)))
        };
        Ok(Call {
            request: request(datacenter, op),
            render: api::Render::Catalog(Render::Bool),
            pretty: self.pretty,
        })
    }
}

/// Consul's register request as a [`Registration`], with Consul's defaults (a check's id
/// is its name, its status critical, its node the registration's) and 400s.
fn registration(r: RegisterJson) -> Result<Registration, Reply> {
    if r.node.is_empty() {
        return Err(Reply::bad_request("Missing node name"));
    }
    if r.address.is_empty() {
        return Err(Reply::bad_request("Missing node address"));
    }
    let service = match r.service {
        None => None,
        Some(s) => {
            if s.service.is_empty() {
                return Err(Reply::bad_request("Missing service name"));
            }
            let w = s.weights.map_or_else(Weights::default, |w| Weights {
                passing: w.passing,
                warning: w.warning,
            });
            Some(Service {
                id: if s.id.is_empty() {
                    s.service.clone()
                } else {
                    s.id
                },
                name: s.service,
                tags: s.tags,
                address: s.address,
                port: s.port,
                meta: s.meta,
                weights: w,
                create_index: 0,
                modify_index: 0,
            })
        }
    };
    let mut checks = Vec::new();
    for c in r.check.into_iter().chain(r.checks) {
        let status = if c.status.is_empty() {
            Status::Critical
        } else {
            c.status.parse::<Status>().map_err(Reply::bad_request)?
        };
        let id = if c.checkid.is_empty() {
            c.name.clone()
        } else {
            c.checkid
        };
        if id.is_empty() {
            return Err(Reply::bad_request("Missing check ID or name"));
        }
        let service_name = match &service {
            Some(s) if s.id == c.serviceid => s.name.clone(),
            _ => String::new(),
        };
        checks.push(Check {
            id,
            name: c.name,
            node: if c.node.is_empty() {
                r.node.clone()
            } else {
                c.node
            },
            status,
            output: c.output,
            service_id: c.serviceid,
            service_name,
            kind: c.kind,
            create_index: 0,
            modify_index: 0,
        });
    }
    Ok(Registration {
        node: r.node,
        id: r.id,
        address: r.address,
        datacenter: String::new(),
        node_meta: r.nodemeta,
        service,
        checks,
    })
}

// ---- rendering ------------------------------------------------------------------------

pub(crate) fn render(r: &Render, resp: Response, pretty: bool) -> Reply {
    let (read, result, meta) = match (r, resp) {
        (Render::Bool, Response::Bool(b)) => return Reply::json(200, &b, pretty),
        (Render::Bool, other) => return api::unexpected(&other),
        (
            Render::Nodes(read)
            | Render::Services(read)
            | Render::Service(read)
            | Render::Node(read),
            Response::Catalog { result, meta },
        ) => (read, result, meta),
        (_, other) => return api::unexpected(&other),
    };
    match (r, result) {
        (Render::Nodes(_), CatalogResult::Nodes(nodes)) => read.list(
            nodes.iter().map(|n| to_value(node_json(n))).collect(),
            &meta,
            pretty,
        ),
        (Render::Services(_), CatalogResult::Services(services)) => {
            let map: BTreeMap<&str, &[String]> = services
                .iter()
                .map(|(name, tags)| (name.as_str(), tags.as_slice()))
                .collect();
            Reply::json(200, &map, pretty).with_meta(&meta, read.consistency)
        }
        (Render::Service(_), CatalogResult::Instances(instances)) => read.list(
            instances
                .iter()
                .map(|i| to_value(catalog_service_json(i)))
                .collect(),
            &meta,
            pretty,
        ),
        (Render::Node(_), CatalogResult::NodeServices(node, services)) => {
            let Some(node) = node else {
                // Consul answers an unknown node with `null` and a 404.
                return Reply::json(404, &Value::Null, pretty).with_meta(&meta, read.consistency);
            };
            let services: BTreeMap<&str, ServiceJson> = services
                .iter()
                .map(|s| (s.id.as_str(), service_json(s)))
                .collect();
            Reply::json(
                200,
                &serde_json::json!({
                    "Node": to_value(node_json(&node)),
                    "Services": to_value(services),
                }),
                pretty,
            )
            .with_meta(&meta, read.consistency)
        }
        (_, other) => api::unexpected(&Response::Catalog {
            result: other,
            meta,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_net::rpc::message::Meta;

    fn call(method: &str, path: &str) -> Result<Call, Reply> {
        let ctx = Ctx::for_tests();
        let (p, q) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        match api::route(method, p, q, &ctx) {
            Route::Call(c) => Ok(c),
            Route::Reply(r) => Err(r),
            Route::Body(_) => panic!("{path} wants a body"),
            Route::Metrics { .. } => panic!("{path} is the metrics"),
        }
    }

    fn register(body: &str) -> Result<Registration, Reply> {
        let ctx = Ctx::for_tests();
        let Route::Body(pending) = api::route("PUT", "/v1/catalog/register", None, &ctx) else {
            panic!("register takes a body")
        };
        let c = pending.finish(bytes::Bytes::copy_from_slice(body.as_bytes()), &ctx)?;
        match c.request.op {
            Op::CatalogRegister(r) => Ok(*r),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_registration_takes_consuls_body_and_defaults() {
        let r = register(
            r#"{"Node": "n1", "Address": "10.0.0.1", "NodeMeta": {"rack": "a"},
                "Service": {"Service": "web", "Tags": ["v1"], "Port": 80, "Weights": null},
                "Check": {"Name": "alive", "ServiceID": "web"},
                "Checks": [{"CheckID": "disk", "Name": "disk", "Status": "warning", "Output": "80%"}],
                "TaggedAddresses": {"wan": "1.2.3.4"}}"#,
        )
        .unwrap();
        assert_eq!((r.node.as_str(), r.address.as_str()), ("n1", "10.0.0.1"));
        assert_eq!(r.node_meta.get("rack").map(String::as_str), Some("a"));
        let s = r.service.unwrap();
        assert_eq!((s.id.as_str(), s.name.as_str(), s.port), ("web", "web", 80));
        assert_eq!(s.weights, Weights::default());
        assert_eq!(r.checks.len(), 2);
        // A check's id defaults to its name, its status to critical, its node to the
        // registration's.
        let c = &r.checks[0];
        assert_eq!(
            (c.id.as_str(), c.status, c.node.as_str()),
            ("alive", Status::Critical, "n1")
        );
        assert_eq!(
            (c.service_id.as_str(), c.service_name.as_str()),
            ("web", "web")
        );
        assert_eq!(
            (r.checks[1].status, r.checks[1].output.as_str()),
            (Status::Warning, "80%")
        );
    }

    #[test]
    fn field_names_match_in_any_case_but_map_keys_are_kept() {
        let r = register(
            r#"{"node": "n1", "ADDRESS": "a", "nodemeta": {"Rack": "x"},
                "service": {"service": "web", "meta": {"Env": "prod"}},
                "checks": [{"checkid": "c", "serviceid": "web", "status": "passing"}]}"#,
        )
        .unwrap();
        assert_eq!((r.node.as_str(), r.address.as_str()), ("n1", "a"));
        assert!(r.node_meta.contains_key("Rack"));
        assert!(r.service.unwrap().meta.contains_key("Env"));
        assert_eq!(
            (r.checks[0].id.as_str(), r.checks[0].service_id.as_str()),
            ("c", "web")
        );
    }

    #[test]
    fn bad_registrations_are_400_before_anything_is_sent() {
        for (body, why) in [
            (r#"{"Address": "a"}"#, "Missing node name"),
            (r#"{"Node": "n"}"#, "Missing node address"),
            (
                r#"{"Node": "n", "Address": "a", "Service": {"Port": 1}}"#,
                "Missing service name",
            ),
            (
                r#"{"Node": "n", "Address": "a", "Check": {"Name": "c", "Status": "ok"}}"#,
                "unknown check status",
            ),
            (
                r#"{"Node": "n", "Address": "a", "Service": {"Service": "s", "Port": 70000}}"#,
                "Request decode failed",
            ),
            ("[1]", "Request decode failed"),
        ] {
            let r = register(body).unwrap_err();
            assert_eq!(r.status, 400, "{body}");
            assert!(
                String::from_utf8_lossy(&r.body).contains(why),
                "{body}: {:?}",
                r.body
            );
        }
    }

    #[test]
    fn a_deregistration_names_the_node_and_optionally_a_service_or_check() {
        let ctx = Ctx::for_tests();
        let finish = |body: &'static str| {
            let Route::Body(p) = api::route("PUT", "/v1/catalog/deregister", None, &ctx) else {
                panic!()
            };
            p.finish(bytes::Bytes::from_static(body.as_bytes()), &ctx)
        };
        let c = finish(r#"{"Node": "n1", "ServiceID": "web", "Datacenter": "dc1"}"#).unwrap();
        assert_eq!(c.request.datacenter, "");
        assert_eq!(
            c.request.op,
            Op::CatalogDeregister {
                node: "n1".into(),
                service_id: Some("web".into()),
                check_id: None
            }
        );
        assert_eq!(
            finish(r#"{"Node": "n1", "Datacenter": "eu"}"#)
                .unwrap()
                .request
                .datacenter,
            "eu"
        );
        assert_eq!(finish("{}").unwrap_err().status, 400);
    }

    #[test]
    fn catalog_reads_route_to_their_queries_with_blocking_options() {
        let c = call(
            "GET",
            "/v1/catalog/service/my%20web?tag=v1&index=5&wait=10s&stale",
        )
        .unwrap();
        match c.request.op {
            Op::CatalogRead { query, opts } => {
                assert_eq!(
                    query,
                    CatalogQuery::Service {
                        name: "my web".into(),
                        tag: Some("v1".into()),
                        passing_only: false
                    }
                );
                assert_eq!(
                    (opts.index, opts.wait_ms, opts.consistency),
                    (5, 10_000, Consistency::Stale)
                );
            }
            other => panic!("{other:?}"),
        }
        for (path, query) in [
            ("/v1/catalog/nodes", CatalogQuery::Nodes),
            ("/v1/catalog/services", CatalogQuery::Services),
            (
                "/v1/catalog/node/n1",
                CatalogQuery::NodeServices { node: "n1".into() },
            ),
        ] {
            match call("GET", path).unwrap().request.op {
                Op::CatalogRead { query: q, .. } => assert_eq!(q, query, "{path}"),
                other => panic!("{other:?}"),
            }
        }
        let r = call("GET", "/v1/catalog/datacenters").unwrap_err();
        assert_eq!((r.status, &r.body[..]), (200, &br#"["dc1"]"#[..]));
        assert_eq!(call("POST", "/v1/catalog/nodes").unwrap_err().status, 405);
        assert_eq!(call("GET", "/v1/catalog/register").unwrap_err().status, 405);
        assert_eq!(call("GET", "/v1/catalog/nope").unwrap_err().status, 404);
        assert_eq!(call("GET", "/v1/catalog/service/").unwrap_err().status, 400);
        assert_eq!(
            call("GET", "/v1/catalog/nodes?index=x").unwrap_err().status,
            400
        );
        let r = call("GET", "/v1/catalog/nodes?filter=Nope%20%3D%3D%20x").unwrap_err();
        assert_eq!(r.status, 400);
        assert_eq!(
            call("GET", "/v1/catalog/services?filter=a")
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn node_meta_and_further_tags_become_filter_conditions() {
        let c = call(
            "GET",
            "/v1/catalog/service/web?tag=a&tag=b&node-meta=rack:r1",
        )
        .unwrap();
        match &c.request.op {
            Op::CatalogRead {
                query: CatalogQuery::Service { tag, .. },
                ..
            } => assert_eq!(tag.as_deref(), Some("a")),
            other => panic!("{other:?}"),
        }
        let api::Render::Catalog(Render::Service(read)) = &c.render else {
            panic!("{:?}", c.render)
        };
        let f = read.filter.as_ref().unwrap();
        let mut both = instance("n", &["a", "b"]);
        both.node.meta.insert("rack".into(), "r1".into());
        let mut one_tag = both.clone();
        one_tag.service.tags.pop();
        let mut other_rack = both.clone();
        other_rack.node.meta.insert("rack".into(), "r2".into());
        let v = |i: &Instance| to_value(catalog_service_json(i));
        assert!(f.matches(&v(&both)));
        assert!(!f.matches(&v(&one_tag)));
        assert!(!f.matches(&v(&other_rack)));
        assert_eq!(
            call("GET", "/v1/catalog/services?node-meta=a:b")
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            call("GET", "/v1/health/state/any?node-meta=a:b")
                .unwrap_err()
                .status,
            400
        );
    }

    fn instance(node: &str, tags: &[&str]) -> Instance {
        Instance {
            node: Node {
                name: node.into(),
                address: "10.0.0.1".into(),
                datacenter: "dc1".into(),
                create_index: 3,
                modify_index: 3,
                ..Node::default()
            },
            service: Service {
                id: "web-1".into(),
                name: "web".into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                port: 80,
                create_index: 4,
                modify_index: 5,
                ..Service::default()
            },
            checks: vec![],
        }
    }

    #[test]
    fn a_services_instances_render_flattened_and_filtered() {
        let meta = Meta {
            index: 9,
            known_leader: true,
            last_contact_ms: 0,
        };
        let read = Read {
            consistency: Consistency::Default,
            filter: Some(
                Filter::parse(r#""v1" in ServiceTags"#, &sample_catalog_service()).unwrap(),
            ),
        };
        let r = render(
            &Render::Service(read),
            Response::Catalog {
                result: CatalogResult::Instances(vec![instance("a", &["v1"]), instance("b", &[])]),
                meta,
            },
            false,
        );
        assert_eq!(r.status, 200);
        assert!(r.headers.contains(&("X-Consul-Index", "9".to_string())));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "ID": "", "Node": "a", "Address": "10.0.0.1", "Datacenter": "dc1", "NodeMeta": {},
                "ServiceID": "web-1", "ServiceName": "web", "ServiceTags": ["v1"],
                "ServiceAddress": "", "ServicePort": 80, "ServiceMeta": {},
                "ServiceWeights": {"Passing": 1, "Warning": 1},
                "ServiceEnableTagOverride": false, "CreateIndex": 4, "ModifyIndex": 5
            }])
        );
    }

    #[test]
    fn a_node_renders_with_its_services_by_id_and_an_unknown_one_is_404_null() {
        let read = Read {
            consistency: Consistency::Default,
            filter: None,
        };
        let i = instance("a", &[]);
        let r = render(
            &Render::Node(read.clone()),
            Response::Catalog {
                result: CatalogResult::NodeServices(Some(i.node.clone()), vec![i.service.clone()]),
                meta: Meta::default(),
            },
            false,
        );
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["Node"]["Node"], "a");
        assert_eq!(v["Services"]["web-1"]["Service"], "web");
        assert_eq!(v["Services"]["web-1"]["ModifyIndex"], 5);
        let r = render(
            &Render::Node(read.clone()),
            Response::Catalog {
                result: CatalogResult::NodeServices(None, vec![]),
                meta: Meta::default(),
            },
            false,
        );
        assert_eq!((r.status, &r.body[..]), (404, &b"null"[..]));
        let r = render(
            &Render::Services(read),
            Response::Catalog {
                result: CatalogResult::Services(vec![
                    ("web".into(), vec!["v1".into()]),
                    ("db".into(), vec![]),
                ]),
                meta: Meta::default(),
            },
            false,
        );
        assert_eq!(&r.body[..], br#"{"db":[],"web":["v1"]}"#);
    }
}
