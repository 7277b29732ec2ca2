//! `/v1/agent/self` (minimal: `Config` with `Datacenter`, `NodeName`, `Server`; `Member`)
//! and `/v1/agent/members`, both from the agent's own view of the LAN gossip pool;
//! `/v1/agent/metrics`, the agent's own gauges in go-metrics' JSON (Consul's shape).
//! The agent's services and checks (`/v1/agent/service/...`) are in `services`.

use std::collections::BTreeMap;

use cairn_net::rpc::message::{MemberInfo, Op, Response};
use serde::Serialize;

use super::api::{self, allow, request, Call, Ctx, Route};
use super::query::Query;
use super::reply::{rpc_error, Reply};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Render {
    SelfInfo,
    Members,
}

pub(crate) fn route(method: &str, path: &str, q: &Query) -> Route {
    if let Err(r) = allow(method, &["GET"]) {
        return Route::Reply(r);
    }
    let render = if path == "agent/self" {
        Render::SelfInfo
    } else {
        if q.has("wan") {
            return Route::Reply(Reply::bad_request(
                "this agent has no WAN gossip pool (?wan is not supported yet)",
            ));
        }
        Render::Members
    };
    // The agent answers about itself: no datacenter applies.
    Route::Call(Call {
        request: request(String::new(), Op::Members),
        render: api::Render::Agent(render),
        pretty: q.pretty(),
    })
}

/// `/v1/agent/metrics`: JSON only (Consul's `?format=prometheus` needs its Prometheus
/// sink, which Cairn does not have).
pub(crate) fn route_metrics(method: &str, q: &Query) -> Route {
    if let Err(r) = allow(method, &["GET"]) {
        return Route::Reply(r);
    }
    if q.get("format") == Some("prometheus") {
        // Consul's answer when its Prometheus sink is off.
        return Route::Reply(Reply::text(415, "Prometheus is not enabled"));
    }
    Route::Metrics { pretty: q.pretty() }
}

/// go-metrics' `MetricsSummary`, as Consul's `/v1/agent/metrics` answers it. Only gauges
/// are kept; the other lists are there, empty, for clients that read them.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct MetricsSummary {
    timestamp: String,
    gauges: Vec<Gauge>,
    points: [(); 0],
    counters: [(); 0],
    samples: [(); 0],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Gauge {
    name: &'static str,
    value: f64,
    labels: BTreeMap<String, String>,
}

/// The answer to `/v1/agent/metrics`: `parked_reads` is [`Handler::parked_reads`] (a
/// client agent has none), `now_s` the Unix time in seconds.
///
/// Gauges: `cairn.kv.parked_reads`, the blocking KV reads parked on this agent's shard
/// cores now (a prefix read parks one on every core); Consul's nearest is
/// `consul.rpc.queries_blocking`.
///
/// [`Handler::parked_reads`]: crate::agent::Handler::parked_reads
pub(crate) fn metrics(parked_reads: Option<usize>, now_s: u64, pretty: bool) -> Reply {
    let gauges = parked_reads
        .map(|n| Gauge {
            name: "cairn.kv.parked_reads",
            value: n as f64,
            labels: BTreeMap::new(),
        })
        .into_iter()
        .collect();
    Reply::json(
        200,
        &MetricsSummary {
            timestamp: go_utc(now_s),
            gauges,
            points: [],
            counters: [],
            samples: [],
        },
        pretty,
    )
}

/// A Unix time as Go's `time.Time.String()` prints it in UTC, as go-metrics stamps its
/// summaries: `2023-11-14 22:13:20 +0000 UTC`.
fn go_utc(unix_s: u64) -> String {
    let (days, rem) = (unix_s / 86_400, unix_s % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000 UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// A member as Consul's `/v1/agent/members` shows it (serf's member). The memberlist
/// protocol and delegate versions have no counterpart here and are left out.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Member {
    name: String,
    addr: String,
    port: u16,
    tags: BTreeMap<String, String>,
    /// serf's MemberStatus: 1 alive, 2 leaving, 3 left, 4 failed.
    status: u8,
}

fn member(m: &MemberInfo) -> Member {
    let (addr, port) = match m.address.parse::<std::net::SocketAddr>() {
        Ok(a) => (a.ip().to_string(), a.port()),
        Err(_) => (m.address.clone(), 0),
    };
    let mut tags: BTreeMap<String, String> = m.tags.iter().cloned().collect();
    // Consul's role tag says "consul" for a server and "node" for a client agent.
    tags.insert(
        "role".into(),
        if m.role == "server" { "consul" } else { "node" }.into(),
    );
    tags.insert("dc".into(), m.datacenter.clone());
    Member {
        name: m.name.clone(),
        addr,
        port,
        tags,
        // A suspect member is still alive to serf until it is declared failed.
        status: match m.status.as_str() {
            "alive" | "suspect" => 1,
            "leaving" => 2,
            "left" => 3,
            "failed" => 4,
            _ => 0,
        },
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SelfConfig<'a> {
    datacenter: &'a str,
    node_name: &'a str,
    server: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AgentSelf<'a> {
    config: SelfConfig<'a>,
    /// `null` when the agent runs without gossip (`--serf-lan-port -1`).
    member: Option<Member>,
}

pub(crate) fn render(r: &Render, resp: Response, pretty: bool, ctx: &Ctx) -> Reply {
    match (r, resp) {
        (Render::Members, Response::Members(ms)) => {
            let list: Vec<Member> = ms.iter().map(member).collect();
            Reply::json(200, &list, pretty)
        }
        (Render::Members, Response::Error(e)) => rpc_error(&e),
        (Render::SelfInfo, resp) => {
            let me = match &resp {
                Response::Members(ms) => ms.iter().find(|m| m.name == ctx.node).map(member),
                _ => None,
            };
            Reply::json(
                200,
                &AgentSelf {
                    config: SelfConfig {
                        datacenter: &ctx.datacenter,
                        node_name: &ctx.node,
                        server: ctx.server,
                    },
                    member: me,
                },
                pretty,
            )
        }
        (_, other) => api::unexpected(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_net::rpc::message::{ErrorCode, RpcError};

    fn info(name: &str, status: &str, role: &str) -> MemberInfo {
        MemberInfo {
            name: name.into(),
            address: "127.0.0.1:8301".into(),
            status: status.into(),
            role: role.into(),
            datacenter: "dc1".into(),
            tags: vec![],
        }
    }

    #[test]
    fn members_render_as_serf_members() {
        let r = render(
            &Render::Members,
            Response::Members(vec![
                info("a", "alive", "server"),
                info("b", "failed", "client"),
            ]),
            false,
            &Ctx::for_tests(),
        );
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"[{"Name":"a","Addr":"127.0.0.1","Port":8301,"Tags":{"dc":"dc1","role":"consul"},"Status":1},{"Name":"b","Addr":"127.0.0.1","Port":8301,"Tags":{"dc":"dc1","role":"node"},"Status":4}]"#
        );
    }

    #[test]
    fn metrics_are_go_metrics_json_with_the_parked_reads_gauge() {
        let r = metrics(Some(3), 1_700_000_000, false);
        assert_eq!(r.status, 200);
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"{"Timestamp":"2023-11-14 22:13:20 +0000 UTC","Gauges":[{"Name":"cairn.kv.parked_reads","Value":3.0,"Labels":{}}],"Points":[],"Counters":[],"Samples":[]}"#
        );
        // A client agent parks nothing itself: no gauge.
        let v: serde_json::Value = serde_json::from_slice(&metrics(None, 0, false).body).unwrap();
        assert_eq!(v["Timestamp"], "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(v["Gauges"], serde_json::json!([]));
    }

    #[test]
    fn go_utc_follows_the_calendar() {
        assert_eq!(go_utc(951_782_400), "2000-02-29 00:00:00 +0000 UTC");
        assert_eq!(go_utc(4_107_542_399), "2100-02-28 23:59:59 +0000 UTC");
        assert_eq!(go_utc(4_107_542_400), "2100-03-01 00:00:00 +0000 UTC");
    }

    #[test]
    fn metrics_take_get_only_and_no_prometheus() {
        let q = Query::parse(None);
        assert!(matches!(
            route_metrics("GET", &q),
            Route::Metrics { pretty: false }
        ));
        let Route::Reply(r) = route_metrics("PUT", &q) else {
            panic!()
        };
        assert_eq!(r.status, 405);
        let Route::Reply(r) = route_metrics("GET", &Query::parse(Some("format=prometheus"))) else {
            panic!()
        };
        assert_eq!(r.status, 415);
    }

    #[test]
    fn self_names_this_agent_and_its_member() {
        let ctx = Ctx::for_tests();
        let r = render(
            &Render::SelfInfo,
            Response::Members(vec![
                info("other", "alive", "server"),
                info("node1", "alive", "server"),
            ]),
            false,
            &ctx,
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["Config"]["Datacenter"], "dc1");
        assert_eq!(v["Config"]["NodeName"], "node1");
        assert_eq!(v["Config"]["Server"], true);
        assert_eq!(v["Member"]["Name"], "node1");
        // Without gossip there is no member to show, but the agent still describes itself.
        let r = api::render(
            &api::Render::Agent(Render::SelfInfo),
            Response::Error(RpcError {
                code: ErrorCode::Invalid,
                message: "no gossip".into(),
                leader: None,
            }),
            false,
            &ctx,
        );
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["Member"].is_null());
    }
}
