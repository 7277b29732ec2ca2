//! Consul's JSON: the shapes of nodes, services, checks and service instances that the
//! catalog, health and agent endpoints share, and request bodies decoded as Go decodes
//! them.

use std::collections::BTreeMap;

use cairn_net::rpc::catalog::{Check, Instance, Node, Service, Weights};
use serde::Serialize;
use serde_json::Value;

use super::reply::Reply;

/// Consul's `Node`. `TaggedAddresses` has no source here and is left out.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct NodeJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    node: &'a str,
    address: &'a str,
    datacenter: &'a str,
    meta: &'a BTreeMap<String, String>,
    create_index: u64,
    modify_index: u64,
}

pub(crate) fn node_json(n: &Node) -> NodeJson<'_> {
    NodeJson {
        id: &n.id,
        node: &n.name,
        address: &n.address,
        datacenter: &n.datacenter,
        meta: &n.meta,
        create_index: n.create_index,
        modify_index: n.modify_index,
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct WeightsJson {
    passing: u32,
    warning: u32,
}

pub(crate) fn weights(w: &Weights) -> WeightsJson {
    WeightsJson {
        passing: w.passing,
        warning: w.warning,
    }
}

/// Consul's `NodeService` / `AgentService`. Cairn has no tag override, so
/// `EnableTagOverride` is always false; `Datacenter` only where Consul shows it (the
/// agent endpoints).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ServiceJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    service: &'a str,
    tags: &'a [String],
    address: &'a str,
    meta: &'a BTreeMap<String, String>,
    port: u16,
    weights: WeightsJson,
    enable_tag_override: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    datacenter: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    create_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    modify_index: Option<u64>,
}

/// A service as the catalog shows it (with its indexes).
pub(crate) fn service_json(s: &Service) -> ServiceJson<'_> {
    ServiceJson {
        id: &s.id,
        service: &s.name,
        tags: &s.tags,
        address: &s.address,
        meta: &s.meta,
        port: s.port,
        weights: weights(&s.weights),
        enable_tag_override: false,
        datacenter: None,
        create_index: Some(s.create_index),
        modify_index: Some(s.modify_index),
    }
}

/// A service as the agent shows it (no indexes, its datacenter).
pub(crate) fn agent_service_json<'a>(s: &'a Service, datacenter: &'a str) -> ServiceJson<'a> {
    ServiceJson {
        datacenter: Some(datacenter),
        create_index: None,
        modify_index: None,
        ..service_json(s)
    }
}

/// Consul's `HealthCheck`. `Notes`, `ServiceTags` and `Definition` have no source here
/// and are left out.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CheckJson<'a> {
    node: &'a str,
    #[serde(rename = "CheckID")]
    check_id: &'a str,
    name: &'a str,
    status: &'static str,
    output: &'a str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    #[serde(rename = "Type")]
    kind: &'a str,
    create_index: u64,
    modify_index: u64,
}

pub(crate) fn check_json(c: &Check) -> CheckJson<'_> {
    CheckJson {
        node: &c.node,
        check_id: &c.id,
        name: &c.name,
        status: c.status.as_str(),
        output: &c.output,
        service_id: &c.service_id,
        service_name: &c.service_name,
        kind: &c.kind,
        create_index: c.create_index,
        modify_index: c.modify_index,
    }
}

pub(crate) fn to_value<T: Serialize>(v: T) -> Value {
    // Plain structs of strings, numbers and string maps always serialize.
    serde_json::to_value(v).expect("JSON of plain data")
}

/// One item of each kind, as a filter's selectors are checked against: lists of objects
/// hold one element, maps are empty.
pub(crate) fn sample_node() -> Value {
    to_value(node_json(&Node::default()))
}
pub(crate) fn sample_check() -> Value {
    to_value(check_json(&Check::default()))
}
pub(crate) fn sample_instance() -> Value {
    instance_json(&Instance {
        node: Node::default(),
        service: Service::default(),
        checks: vec![Check::default()],
    })
}
/// Consul's `ServiceEntry` (`/v1/health/service`): `{Node, Service, Checks}`.
pub(crate) fn instance_json(i: &Instance) -> Value {
    serde_json::json!({
        "Node": to_value(node_json(&i.node)),
        "Service": to_value(service_json(&i.service)),
        "Checks": i.checks.iter().map(|c| to_value(check_json(c))).collect::<Vec<_>>(),
    })
}

/// Map-valued fields: their keys are data, not field names, and are kept as sent.
const FREE_KEYS: &[&str] = &["meta", "nodemeta", "taggedaddresses"];

/// Go's `encoding/json` matches field names case-insensitively, and Consul's clients rely
/// on it (py-consul sends `{"name": ..., "lockdelay": ...}`): every key is lower-cased
/// before decoding, except inside map-valued fields. The structs decoded this way name
/// their fields in lower case. An empty body is the zero value, as in Consul.
pub(crate) fn decode_go<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let fail = |e: serde_json::Error| Reply::bad_request(format!("Request decode failed: {e}"));
    let mut v: Value = serde_json::from_slice(body).map_err(fail)?;
    fold_keys(&mut v);
    serde_json::from_value(v).map_err(fail)
}

fn fold_keys(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, mut val) in std::mem::take(m) {
                let k = k.to_ascii_lowercase();
                if !FREE_KEYS.contains(&k.as_str()) {
                    fold_keys(&mut val);
                }
                m.insert(k, val);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(fold_keys),
        _ => {}
    }
}
