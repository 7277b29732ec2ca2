//! The [`DnsView`] contract as a test any implementation can run: build the view over a
//! catalog holding [`registrations`], then `check(&view).await`. It runs against
//! [`CatalogView`](super::CatalogView) in this crate's tests; an agent's view over the
//! catalog RPC should run it too, so the DNS layer's assumptions hold for both.

use super::{DnsError, DnsView};
use crate::catalog::{Check, Registration, Service, Status};

/// What the catalog must hold for [`check`]: in datacenter `dc1`, node `Web-1`
/// (10.0.0.1) with service `Web` tagged `Primary` and a passing check, and node `web-2`
/// (10.0.0.2) with service `Web` tagged `backup` whose own check is critical.
pub fn registrations() -> Vec<Registration> {
    let reg = |node: &str, addr: &str, tag: &str, status| Registration {
        node: node.into(),
        address: addr.into(),
        datacenter: "dc1".into(),
        service: Some(Service {
            name: "Web".into(),
            tags: vec![tag.into()],
            port: 80,
            ..Service::default()
        }),
        checks: vec![Check {
            id: "web-check".into(),
            name: "web".into(),
            node: node.into(),
            status,
            output: String::new(),
            service_id: "Web".into(),
            service_name: "Web".into(),
            kind: "ttl".into(),
            create_index: 0,
            modify_index: 0,
        }],
        ..Registration::default()
    };
    vec![
        reg("Web-1", "10.0.0.1", "Primary", Status::Passing),
        reg("web-2", "10.0.0.2", "backup", Status::Critical),
    ]
}

/// Checks `view` (over [`registrations`]) against the contract; the error says which
/// clause failed.
pub async fn check<V: DnsView>(view: &V) -> Result<(), String> {
    let fail = |what: &str, got: &dyn std::fmt::Debug| Err(format!("{what}: got {got:?}"));
    let read_err = |e: DnsError| format!("a read failed on a readable catalog: {e}");
    if view.datacenter() != "dc1" {
        return fail("datacenter is dc1", &view.datacenter());
    }
    for stale in [true, false] {
        for name in ["Web-1", "web-1", "WEB-1"] {
            let node = view.node(name, stale).await.map_err(read_err)?;
            match node {
                Some(n) if n.name == "Web-1" && n.address == "10.0.0.1" => {}
                other => return fail(&format!("node {name:?} is Web-1, any case"), &other),
            }
        }
        let none = view.node("web-3", stale).await.map_err(read_err)?;
        if none.is_some() {
            return fail("an unknown node is None, not an error", &none);
        }
        let mut all = view.instances("web", None, stale).await.map_err(read_err)?;
        all.sort_by(|a, b| a.node.name.cmp(&b.node.name));
        let summary: Vec<(&str, Status)> = all
            .iter()
            .map(|i| (i.node.name.as_str(), i.status()))
            .collect();
        if summary != [("Web-1", Status::Passing), ("web-2", Status::Critical)] {
            return fail(
                "every instance of `web`, critical included, with its checks",
                &summary,
            );
        }
        for tag in ["primary", "PRIMARY"] {
            let tagged = view
                .instances("WEB", Some(tag), stale)
                .await
                .map_err(read_err)?;
            let nodes: Vec<&str> = tagged.iter().map(|i| i.node.name.as_str()).collect();
            if nodes != ["Web-1"] {
                return fail(&format!("tag {tag:?} narrows to Web-1, any case"), &nodes);
            }
        }
        let none = view.instances("db", None, stale).await.map_err(read_err)?;
        if !none.is_empty() {
            return fail("an unknown service has no instances, not an error", &none);
        }
    }
    Ok(())
}
