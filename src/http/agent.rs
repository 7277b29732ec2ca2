//! `/v1/agent/self` (minimal: `Config` with `Datacenter`, `NodeName`, `Server`; `Member`)
//! and `/v1/agent/members`, both from the agent's own view of the LAN gossip pool.
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
