//! `/v1/status/leader`, `/v1/status/peers` and `/v1/operator/raft/configuration`.

use cairn_net::rpc::message::{Op, RaftServer, Response};
use serde::Serialize;

use super::api::{self, allow, request, Call, Ctx, Route};
use super::query::Query;
use super::reply::Reply;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Render {
    /// The leader's RPC address as a JSON string, `""` when none is known.
    Leader,
    /// The voters' RPC addresses.
    Peers,
    /// The Raft configuration.
    Configuration,
}

pub(crate) fn route(method: &str, path: &str, q: &Query, ctx: &Ctx) -> Route {
    if let Err(r) = allow(method, &["GET"]) {
        return Route::Reply(r);
    }
    let (op, render) = match path {
        "status/leader" => (Op::StatusLeader, Render::Leader),
        "status/peers" => (Op::StatusPeers, Render::Peers),
        _ => (Op::RaftConfiguration, Render::Configuration),
    };
    Route::Call(Call {
        request: request(q.datacenter(ctx), op),
        render: api::Render::Status(render),
        pretty: q.pretty(),
    })
}

/// One server of Consul's `RaftConfigurationResponse`. Cairn knows a server's id,
/// address, leadership and vote; Consul's `Node`, `ProtocolVersion` and `LastIndex` have
/// no source here yet and are left out rather than invented.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Server<'a> {
    #[serde(rename = "ID")]
    id: String,
    address: &'a str,
    leader: bool,
    voter: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Configuration<'a> {
    servers: Vec<Server<'a>>,
}

fn configuration(servers: &[RaftServer]) -> Configuration<'_> {
    Configuration {
        servers: servers
            .iter()
            .map(|s| Server {
                id: s.id.to_string(),
                address: &s.address,
                leader: s.leader,
                voter: s.voter,
            })
            .collect(),
    }
}

pub(crate) fn render(r: &Render, resp: Response, pretty: bool) -> Reply {
    match (r, resp) {
        (Render::Leader, Response::Leader(l)) => {
            Reply::json(200, l.as_deref().unwrap_or(""), pretty)
        }
        (Render::Peers, Response::Peers(p)) => Reply::json(200, &p, pretty),
        (Render::Configuration, Response::Servers(s)) => {
            Reply::json(200, &configuration(&s), pretty)
        }
        (_, other) => api::unexpected(&other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_is_a_json_string_and_empty_without_one() {
        let r = render(
            &Render::Leader,
            Response::Leader(Some("10.0.0.1:8300".into())),
            false,
        );
        assert_eq!(&r.body[..], br#""10.0.0.1:8300""#);
        let r = render(&Render::Leader, Response::Leader(None), false);
        assert_eq!(&r.body[..], br#""""#);
    }

    #[test]
    fn peers_and_the_configuration_render_as_consuls_json() {
        let r = render(
            &Render::Peers,
            Response::Peers(vec!["a:1".into(), "b:2".into()]),
            false,
        );
        assert_eq!(&r.body[..], br#"["a:1","b:2"]"#);
        let r = render(
            &Render::Configuration,
            Response::Servers(vec![RaftServer {
                id: 7,
                address: "a:1".into(),
                leader: true,
                voter: true,
            }]),
            false,
        );
        assert_eq!(
            std::str::from_utf8(&r.body).unwrap(),
            r#"{"Servers":[{"ID":"7","Address":"a:1","Leader":true,"Voter":true}]}"#
        );
    }

    #[test]
    fn status_paths_route_to_their_ops() {
        let ctx = Ctx::for_tests();
        for (path, op) in [
            ("/v1/status/leader", Op::StatusLeader),
            ("/v1/status/peers", Op::StatusPeers),
            ("/v1/operator/raft/configuration", Op::RaftConfiguration),
        ] {
            match api::route("GET", path, None, &ctx) {
                Route::Call(c) => assert_eq!(c.request.op, op),
                other => panic!("{path}: {other:?}"),
            }
        }
    }
}
