//! The catalog's semantics (Consul's catalog and health endpoints).

use cairn::catalog::{Catalog, CatalogError, Check, Registration, Service, Status};

fn reg(
    node: &str,
    addr: &str,
    service: Option<(&str, &str, &[&str])>,
    checks: Vec<Check>,
) -> Registration {
    Registration {
        node: node.into(),
        address: addr.into(),
        datacenter: "dc1".into(),
        service: service.map(|(id, name, tags)| Service {
            id: id.into(),
            name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            port: 8080,
            ..Service::default()
        }),
        checks,
        ..Registration::default()
    }
}

fn check(id: &str, service_id: &str, status: Status) -> Check {
    Check {
        id: id.into(),
        name: id.into(),
        node: String::new(),
        status,
        output: String::new(),
        service_id: service_id.into(),
        service_name: String::new(),
        kind: "ttl".into(),
        create_index: 0,
        modify_index: 0,
    }
}

#[test]
fn instances_of_a_service_filter_by_tag_and_by_passing_checks() {
    let mut c = Catalog::default();
    c.register(
        1,
        &reg(
            "n1",
            "10.0.0.1",
            Some(("web1", "web", &["v1", "blue"])),
            vec![check("c1", "web1", Status::Passing)],
        ),
    )
    .unwrap();
    c.register(
        2,
        &reg(
            "n2",
            "10.0.0.2",
            Some(("web2", "web", &["v2"])),
            vec![check("c2", "web2", Status::Critical)],
        ),
    )
    .unwrap();
    c.register(
        3,
        &reg("n3", "10.0.0.3", Some(("web3", "web", &["v1"])), vec![]),
    )
    .unwrap();
    let (all, idx) = c.instances("web", None, false);
    assert_eq!(all.len(), 3);
    assert_eq!(idx, 3);
    let (passing, _) = c.instances("web", None, true);
    let nodes: Vec<&str> = passing.iter().map(|i| i.node.name.as_str()).collect();
    assert_eq!(nodes, vec!["n1", "n3"]);
    let (v1, _) = c.instances("web", Some("v1"), false);
    assert_eq!(v1.len(), 2);
    let (services, _) = c.services();
    assert_eq!(
        services["web"].len(),
        3,
        "tags are the union over instances"
    );
}

#[test]
fn a_failing_node_level_check_takes_every_service_on_the_node_out_of_passing() {
    let mut c = Catalog::default();
    c.register(1, &reg("n1", "10.0.0.1", Some(("api", "api", &[])), vec![]))
        .unwrap();
    c.register(2, &reg("n1", "10.0.0.1", Some(("db", "db", &[])), vec![]))
        .unwrap();
    assert_eq!(c.instances("api", None, true).0.len(), 1);
    c.register(
        5,
        &reg(
            "n1",
            "10.0.0.1",
            None,
            vec![check("serfHealth", "", Status::Critical)],
        ),
    )
    .unwrap();
    assert!(c.instances("api", None, true).0.is_empty());
    assert!(c.instances("db", None, true).0.is_empty());
    assert_eq!(
        c.instances("api", None, false).1,
        5,
        "the service's index moved with the node check"
    );
}

#[test]
fn re_registering_without_changes_moves_no_index() {
    let mut c = Catalog::default();
    let r = reg(
        "n1",
        "10.0.0.1",
        Some(("web1", "web", &["a"])),
        vec![check("c1", "web1", Status::Passing)],
    );
    c.register(1, &r).unwrap();
    c.register(9, &r).unwrap();
    assert_eq!(c.instances("web", None, false).1, 1);
    assert_eq!(c.nodes().1, 1);
    let (inst, _) = c.instances("web", None, false);
    assert_eq!(inst[0].service.modify_index, 1);
    // A status change moves the check's and the service's indexes only.
    let mut r2 = r.clone();
    r2.checks[0].status = Status::Warning;
    c.register(12, &r2).unwrap();
    assert_eq!(c.instances("web", None, false).1, 12);
    assert_eq!(c.nodes().1, 1);
    assert_eq!(c.checks_in_state(Some(Status::Warning)).0.len(), 1);
}

#[test]
fn a_check_for_an_unknown_service_is_refused_and_nothing_changes() {
    let mut c = Catalog::default();
    let r = reg(
        "n1",
        "10.0.0.1",
        None,
        vec![check("c1", "ghost", Status::Passing)],
    );
    assert!(matches!(
        c.register(1, &r),
        Err(CatalogError::UnknownService { .. })
    ));
    assert!(c.nodes().0.is_empty());
    assert_eq!(
        c.register(2, &reg("", "x", None, vec![])),
        Err(CatalogError::MissingNode)
    );
    assert_eq!(
        c.register(2, &reg("n", "", None, vec![])),
        Err(CatalogError::MissingAddress)
    );
}

#[test]
fn deregistering_a_node_removes_its_services_and_checks() {
    let mut c = Catalog::default();
    c.register(
        1,
        &reg(
            "n1",
            "10.0.0.1",
            Some(("web1", "web", &[])),
            vec![
                check("c1", "web1", Status::Passing),
                check("node", "", Status::Passing),
            ],
        ),
    )
    .unwrap();
    c.register(
        2,
        &reg("n2", "10.0.0.2", Some(("web2", "web", &[])), vec![]),
    )
    .unwrap();
    c.deregister(7, "n1", None, None);
    let (inst, idx) = c.instances("web", None, false);
    assert_eq!(inst.len(), 1);
    assert_eq!(idx, 7);
    assert!(c.node_checks("n1").0.is_empty());
    assert_eq!(c.nodes().0.len(), 1);
    // Deregistering one service removes its checks; removing what is gone changes nothing.
    c.deregister(8, "n2", Some("web2"), None);
    assert!(c.instances("web", None, false).0.is_empty());
    c.deregister(9, "n2", Some("web2"), None);
    assert_eq!(c.instances("web", None, false).1, 8);
}

#[test]
fn a_service_registered_without_an_id_takes_its_name() {
    let mut c = Catalog::default();
    c.register(
        1,
        &reg(
            "n1",
            "10.0.0.1",
            Some(("", "redis", &[])),
            vec![check("c", "redis", Status::Passing)],
        ),
    )
    .unwrap();
    let (_, services, _) = c.node_services("n1");
    assert_eq!(services[0].id, "redis");
    assert_eq!(c.service_checks("redis").0.len(), 1);
}

mod codec {
    use super::*;
    use cairn::catalog::CatalogCommand;
    use proptest::prelude::*;

    fn s() -> impl Strategy<Value = String> {
        "[a-z0-9-]{0,12}"
    }

    fn command() -> impl Strategy<Value = CatalogCommand> {
        let meta = || prop::collection::btree_map(s(), s(), 0..3);
        let service = (
            s(),
            s(),
            prop::collection::vec(s(), 0..3),
            s(),
            any::<u16>(),
            meta(),
            0..10u32,
            0..10u32,
        )
            .prop_map(|(id, name, tags, address, port, meta, p, w)| Service {
                id,
                name,
                tags,
                address,
                port,
                meta,
                weights: cairn::catalog::Weights {
                    passing: p,
                    warning: w,
                },
                ..Service::default()
            });
        let chk = (s(), s(), 0..3u8, s(), s()).prop_map(|(id, name, st, output, service_id)| {
            Check {
                status: [Status::Passing, Status::Warning, Status::Critical][st as usize],
                output,
                ..check(&id, &service_id, Status::Passing)
            }
            .with_name(name)
        });
        prop_oneof![
            (
                s(),
                s(),
                s(),
                s(),
                meta(),
                prop::option::of(service),
                prop::collection::vec(chk, 0..3)
            )
                .prop_map(
                    |(node, id, address, datacenter, node_meta, service, checks)| {
                        CatalogCommand::Register(Box::new(Registration {
                            node,
                            id,
                            address,
                            datacenter,
                            node_meta,
                            service,
                            checks,
                        }))
                    }
                ),
            (s(), prop::option::of(s()), prop::option::of(s())).prop_map(
                |(node, service_id, check_id)| CatalogCommand::Deregister {
                    node,
                    service_id,
                    check_id
                }
            ),
        ]
    }

    trait WithName {
        fn with_name(self, name: String) -> Self;
    }
    impl WithName for Check {
        fn with_name(mut self, name: String) -> Self {
            self.name = name;
            self
        }
    }

    proptest! {
        #[test]
        fn every_catalog_command_decodes_to_itself(cmd in command()) {
            prop_assert_eq!(CatalogCommand::decode(&cmd.encode()).unwrap(), cmd);
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = CatalogCommand::decode(&bytes::Bytes::from(bytes.clone()));
            let _ = Catalog::decode_image(&bytes);
        }

        /// A snapshot's catalog image rebuilds exactly the catalog it was taken from
        /// (tables, indexes and the name index behind service queries).
        #[test]
        fn a_catalog_image_rebuilds_the_same_catalog(
            cmds in prop::collection::vec(command(), 0..30),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut cat = Catalog::default();
            for (i, c) in cmds.iter().enumerate() {
                let _ = cat.apply(i as u64 + 1, c);
            }
            let image = cat.encode_image();
            let back = Catalog::decode_image(&image).unwrap();
            prop_assert_eq!(&back, &cat);
            // A cut image is an error, never a panic or a partial catalog.
            let at = cut.index(image.len());
            if at > 0 {
                prop_assert!(Catalog::decode_image(&image[..at]).is_err());
            }
        }
    }

    #[test]
    fn an_applied_command_is_the_same_as_a_direct_registration() {
        let r = reg(
            "n1",
            "10.0.0.1",
            Some(("web1", "web", &["x"])),
            vec![check("c1", "web1", Status::Passing)],
        );
        let cmd = CatalogCommand::decode(&CatalogCommand::Register(Box::new(r.clone())).encode())
            .unwrap();
        let (mut a, mut b) = (Catalog::default(), Catalog::default());
        a.register(4, &r).unwrap();
        b.apply(4, &cmd).unwrap();
        assert_eq!(
            a.instances("web", None, false),
            b.instances("web", None, false)
        );
    }
}

#[test]
fn a_services_index_found_without_its_instances_is_the_one_its_query_returns() {
    use cairn_net::rpc::catalog::CatalogQuery;
    let mut c = Catalog::default();
    c.register(
        4,
        &reg(
            "n1",
            "10.0.0.1",
            Some(("web1", "web", &[])),
            vec![check("c1", "web1", Status::Passing)],
        ),
    )
    .unwrap();
    c.register(7, &reg("n2", "10.0.0.2", Some(("db1", "db", &[])), vec![]))
        .unwrap();
    // A check change moves its service's index and nothing else's.
    c.register(
        9,
        &reg(
            "n1",
            "10.0.0.1",
            None,
            vec![check("c1", "web1", Status::Critical)],
        ),
    )
    .unwrap();
    for name in ["web", "db", "missing"] {
        for passing_only in [false, true] {
            let q = CatalogQuery::Service {
                name: name.into(),
                tag: None,
                passing_only,
            };
            assert_eq!(c.query_index(&q), Some(c.query(&q).1), "{q:?}");
        }
    }
    assert_eq!(c.service_index_of("web"), 9);
    assert_eq!(c.service_index_of("db"), 7);
    assert_eq!(c.query_index(&CatalogQuery::Nodes), None);
}
