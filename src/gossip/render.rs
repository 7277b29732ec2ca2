//! `cairn members`: the member list as a table or as JSON.

use super::{status_name, Member};
use cairn_net::gossip::Role;

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Client => "client",
        Role::Server => "server",
    }
}

fn tags(m: &Member) -> String {
    let t: Vec<String> = m
        .meta
        .tags
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    t.join(",")
}

/// Renders members sorted by name (then address) as Consul's `members` does: a table
/// of node, address, status (alive, suspect, failed, left), role, datacenter and tags,
/// or with `json` an array of objects with the same fields (tags as an object) plus
/// the incarnation, server RPC port and protocol version. Ends with a newline.
pub fn render_members(members: &[Member], json: bool) -> String {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
    if json {
        let list: Vec<serde_json::Value> = sorted
            .iter()
            .map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "addr": m.addr.to_string(),
                    "status": status_name(m.status),
                    "role": role_name(m.meta.role),
                    "datacenter": m.meta.datacenter,
                    "tags": m.meta.tags,
                    "incarnation": m.incarnation,
                    "rpc_port": m.meta.rpc_port,
                    "protocol_version": m.meta.protocol_version,
                })
            })
            .collect();
        let mut out = serde_json::to_string_pretty(&list).expect("JSON values always encode");
        out.push('\n');
        return out;
    }
    let header = ["Node", "Address", "Status", "Role", "DC", "Tags"];
    let rows: Vec<[String; 6]> = sorted
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.addr.to_string(),
                status_name(m.status).to_string(),
                role_name(m.meta.role).to_string(),
                m.meta.datacenter.clone(),
                tags(m),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(c);
                let pad = widths[i] + 2 - c.chars().count();
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_net::gossip::{NodeMeta, Status};

    fn member(name: &str, port: u16, status: Status, role: Role, tags: &[(&str, &str)]) -> Member {
        let meta = NodeMeta {
            name: name.into(),
            role,
            datacenter: "dc1".into(),
            rpc_port: if role == Role::Server { 8300 } else { 0 },
            protocol_version: 1,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        Member {
            name: name.into(),
            addr: format!("10.0.0.{port}:8301").parse().unwrap(),
            status,
            incarnation: 3,
            meta,
        }
    }

    fn sample() -> Vec<Member> {
        vec![
            member("web-2", 3, Status::Dead, Role::Client, &[]),
            member(
                "srv-1",
                1,
                Status::Alive,
                Role::Server,
                &[("rack", "a"), ("zone", "z1")],
            ),
            member("web-1", 2, Status::Suspect, Role::Client, &[("rack", "b")]),
            member("old", 4, Status::Left, Role::Client, &[]),
        ]
    }

    #[test]
    fn the_table_lists_members_by_name_with_every_column() {
        let out = render_members(&sample(), false);
        let expected = "\
Node   Address        Status   Role    DC   Tags
old    10.0.0.4:8301  left     client  dc1
srv-1  10.0.0.1:8301  alive    server  dc1  rack=a,zone=z1
web-1  10.0.0.2:8301  suspect  client  dc1  rack=b
web-2  10.0.0.3:8301  failed   client  dc1
";
        assert_eq!(out, expected);
    }

    #[test]
    fn json_has_the_same_members_and_fields() {
        let out = render_members(&sample(), true);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let list = v.as_array().unwrap();
        let names: Vec<&str> = list.iter().map(|m| m["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["old", "srv-1", "web-1", "web-2"]);
        let srv = &list[1];
        assert_eq!(srv["addr"], "10.0.0.1:8301");
        assert_eq!(srv["status"], "alive");
        assert_eq!(srv["role"], "server");
        assert_eq!(srv["datacenter"], "dc1");
        assert_eq!(srv["tags"]["zone"], "z1");
        assert_eq!(srv["rpc_port"], 8300);
        assert_eq!(srv["incarnation"], 3);
        assert_eq!(list[3]["status"], "failed");
    }

    #[test]
    fn an_empty_list_is_a_header_or_an_empty_array() {
        assert_eq!(
            render_members(&[], false),
            "Node  Address  Status  Role  DC  Tags\n"
        );
        assert_eq!(render_members(&[], true), "[]\n");
    }
}
