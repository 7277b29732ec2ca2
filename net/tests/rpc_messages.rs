//! RPC messages: every request and response decodes to itself, garbage never panics, and
//! limits are enforced on decode.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use cairn_net::rpc::catalog::*;
use cairn_net::rpc::message::*;
use proptest::prelude::*;

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9.:-]{0,20}"
}

fn opts() -> impl Strategy<Value = ReadOpts> {
    (0..3u8, any::<u64>(), any::<u64>()).prop_map(|(c, index, wait_ms)| ReadOpts {
        consistency: match c {
            0 => Consistency::Stale,
            1 => Consistency::Default,
            _ => Consistency::Consistent,
        },
        index,
        wait_ms,
    })
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        (bytes(20), bytes(40), any::<u64>()).prop_map(|(key, value, flags)| TxnOp::Set {
            key,
            value,
            flags
        }),
        (bytes(20), bytes(40), any::<u64>(), any::<u64>()).prop_map(
            |(key, value, flags, index)| TxnOp::Cas {
                key,
                value,
                flags,
                index
            }
        ),
        bytes(20).prop_map(|key| TxnOp::Get { key }),
        bytes(20).prop_map(|prefix| TxnOp::GetTree { prefix }),
        (bytes(20), any::<u64>()).prop_map(|(key, index)| TxnOp::CheckIndex { key, index }),
        bytes(20).prop_map(|key| TxnOp::CheckNotExists { key }),
        bytes(20).prop_map(|key| TxnOp::Delete { key }),
        (bytes(20), any::<u64>()).prop_map(|(key, index)| TxnOp::DeleteCas { key, index }),
        bytes(20).prop_map(|prefix| TxnOp::DeleteTree { prefix }),
    ]
}

fn string_map() -> impl Strategy<Value = std::collections::BTreeMap<String, String>> {
    prop::collection::btree_map(text(), text(), 0..3)
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        Just(Status::Passing),
        Just(Status::Warning),
        Just(Status::Critical)
    ]
}

fn node() -> impl Strategy<Value = Node> {
    (
        text(),
        text(),
        text(),
        text(),
        string_map(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(name, id, address, datacenter, meta, create_index, modify_index)| Node {
                name,
                id,
                address,
                datacenter,
                meta,
                create_index,
                modify_index,
            },
        )
}

fn service() -> impl Strategy<Value = Service> {
    (
        (text(), text(), prop::collection::vec(text(), 0..3), text()),
        (any::<u16>(), string_map(), any::<u32>(), any::<u32>()),
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |((id, name, tags, address), (port, meta, passing, warning), (c, m))| Service {
                id,
                name,
                tags,
                address,
                port,
                meta,
                weights: Weights { passing, warning },
                create_index: c,
                modify_index: m,
            },
        )
}

fn check() -> impl Strategy<Value = Check> {
    (
        (text(), text(), text(), status()),
        (".{0,40}", text(), text(), text()),
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |((id, name, node, status), (output, service_id, service_name, kind), (c, m))| Check {
                id,
                name,
                node,
                status,
                output,
                service_id,
                service_name,
                kind,
                create_index: c,
                modify_index: m,
            },
        )
}

fn session() -> impl Strategy<Value = SessionInfo> {
    (
        (text(), text(), text(), any::<bool>()),
        (
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(text(), 0..3),
            prop::collection::vec(text(), 0..3),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                (id, name, node, delete),
                (ttl_ms, lock_delay_ms, node_checks, service_checks, create_index),
            )| {
                SessionInfo {
                    id,
                    name,
                    node,
                    behavior: if delete {
                        SessionBehavior::Delete
                    } else {
                        SessionBehavior::Release
                    },
                    ttl_ms,
                    lock_delay_ms,
                    node_checks,
                    service_checks,
                    create_index,
                }
            },
        )
}

fn catalog_query() -> impl Strategy<Value = CatalogQuery> {
    prop_oneof![
        Just(CatalogQuery::Nodes),
        Just(CatalogQuery::Services),
        (text(), prop::option::of(text()), any::<bool>()).prop_map(|(name, tag, passing_only)| {
            CatalogQuery::Service {
                name,
                tag,
                passing_only,
            }
        }),
        text().prop_map(|node| CatalogQuery::NodeServices { node }),
        text().prop_map(|node| CatalogQuery::NodeChecks { node }),
        text().prop_map(|name| CatalogQuery::ServiceChecks { name }),
        prop::option::of(status()).prop_map(|state| CatalogQuery::ChecksInState { state }),
    ]
}

fn catalog_result() -> impl Strategy<Value = CatalogResult> {
    prop_oneof![
        prop::collection::vec(node(), 0..3).prop_map(CatalogResult::Nodes),
        prop::collection::vec((text(), prop::collection::vec(text(), 0..3)), 0..3)
            .prop_map(CatalogResult::Services),
        prop::collection::vec(
            (node(), service(), prop::collection::vec(check(), 0..3)).prop_map(
                |(node, service, checks)| Instance {
                    node,
                    service,
                    checks
                }
            ),
            0..3
        )
        .prop_map(CatalogResult::Instances),
        (
            prop::option::of(node()),
            prop::collection::vec(service(), 0..3)
        )
            .prop_map(|(n, s)| CatalogResult::NodeServices(n, s)),
        prop::collection::vec(check(), 0..3).prop_map(CatalogResult::Checks),
    ]
}

fn registration() -> impl Strategy<Value = Registration> {
    (
        (text(), text(), text(), text(), string_map()),
        prop::option::of(service()),
        prop::collection::vec(check(), 0..3),
    )
        .prop_map(
            |((node, id, address, datacenter, node_meta), service, checks)| Registration {
                node,
                id,
                address,
                datacenter,
                node_meta,
                service,
                checks,
            },
        )
}

fn catalog_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        registration().prop_map(|r| Op::CatalogRegister(Box::new(r))),
        (text(), prop::option::of(text()), prop::option::of(text())).prop_map(
            |(node, service_id, check_id)| Op::CatalogDeregister {
                node,
                service_id,
                check_id
            }
        ),
        (catalog_query(), opts()).prop_map(|(query, opts)| Op::CatalogRead { query, opts }),
        session().prop_map(Op::SessionCreate),
        text().prop_map(|id| Op::SessionDestroy { id }),
        text().prop_map(|id| Op::SessionRenew { id }),
        (
            prop_oneof![
                text().prop_map(|id| SessionQuery::Info { id }),
                text().prop_map(|node| SessionQuery::Node { node }),
                Just(SessionQuery::List),
            ],
            opts()
        )
            .prop_map(|(query, opts)| Op::SessionRead { query, opts }),
    ]
}

fn agent_op() -> impl Strategy<Value = Op> {
    let kind = || prop_oneof![Just(AgentKind::Service), Just(AgentKind::Check)];
    prop_oneof![
        (kind(), bytes(60)).prop_map(|(kind, definition)| Op::AgentRegister { kind, definition }),
        (kind(), text()).prop_map(|(kind, id)| Op::AgentDeregister { kind, id }),
        (text(), status(), ".{0,40}").prop_map(|(id, status, output)| Op::AgentCheckUpdate {
            id,
            status,
            output
        }),
        (prop::option::of(text()), any::<bool>(), ".{0,30}").prop_map(
            |(service_id, enable, reason)| Op::AgentMaintenance {
                service_id,
                enable,
                reason
            }
        ),
        kind().prop_map(|kind| Op::AgentLocal { kind }),
        text().prop_map(|node| Op::ForceLeave { node }),
        prop::collection::vec(text(), 0..3).prop_map(|addresses| Op::Join { addresses }),
        Just(Op::Leave),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![base_op(), catalog_op(), agent_op()]
}

fn base_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (bytes(30), opts()).prop_map(|(key, opts)| Op::KvGet { key, opts }),
        (bytes(30), any::<bool>(), prop::option::of(bytes(3)), opts()).prop_map(
            |(prefix, keys_only, separator, opts)| Op::KvList {
                prefix,
                keys_only,
                separator,
                opts
            }
        ),
        (
            bytes(30),
            bytes(100),
            any::<u64>(),
            prop::option::of(any::<u64>()),
            prop::option::of(text()),
            prop::option::of(text())
        )
            .prop_map(|(key, value, flags, cas, acquire, release)| Op::KvPut {
                key,
                value,
                flags,
                cas,
                acquire,
                release
            }),
        (bytes(30), any::<bool>(), prop::option::of(any::<u64>()))
            .prop_map(|(key, recurse, cas)| Op::KvDelete { key, recurse, cas }),
        prop::collection::vec(txn_op(), 0..10).prop_map(|ops| Op::Txn { ops }),
        Just(Op::StatusLeader),
        Just(Op::StatusPeers),
        (any::<u64>(), text()).prop_map(|(id, address)| Op::RaftAddVoter { id, address }),
        any::<u64>().prop_map(|id| Op::RaftRemovePeer { id }),
        prop::option::of(any::<u64>()).prop_map(|to| Op::RaftTransferLeader { to }),
        (any::<u8>(), bytes(40)).prop_map(|(kind, body)| Op::Internal { kind, body }),
        Just(Op::RaftConfiguration),
        Just(Op::Members),
        (0..4u8, prop::option::of(text())).prop_map(|(a, key)| Op::Keyring {
            action: [
                KeyringAction::List,
                KeyringAction::Install,
                KeyringAction::Use,
                KeyringAction::Remove
            ][a as usize],
            key
        }),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        bytes(20),
        bytes(50),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop::option::of(text()),
    )
        .prop_map(
            |(key, value, flags, create_index, modify_index, lock_index, session)| Entry {
                key,
                value,
                flags,
                create_index,
                modify_index,
                lock_index,
                session,
            },
        )
}

fn meta() -> impl Strategy<Value = Meta> {
    (any::<u64>(), any::<bool>(), any::<u64>()).prop_map(
        |(index, known_leader, last_contact_ms)| Meta {
            index,
            known_leader,
            last_contact_ms,
        },
    )
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (prop::collection::vec(entry(), 0..5), meta())
            .prop_map(|(entries, meta)| Response::Entries { entries, meta }),
        (prop::collection::vec(bytes(20), 0..5), meta())
            .prop_map(|(keys, meta)| Response::Keys { keys, meta }),
        any::<bool>().prop_map(Response::Bool),
        (
            prop::collection::vec(entry(), 0..4),
            prop::collection::vec((any::<u32>(), text()), 0..3),
            any::<u64>()
        )
            .prop_map(|(results, errors, index)| Response::Txn {
                results,
                errors,
                index
            }),
        prop::option::of(text()).prop_map(Response::Leader),
        prop::collection::vec(text(), 0..5).prop_map(Response::Peers),
        Just(Response::Done),
        bytes(40).prop_map(Response::Internal),
        prop::collection::vec(
            (any::<u64>(), text(), any::<bool>(), any::<bool>()).prop_map(
                |(id, address, leader, voter)| RaftServer {
                    id,
                    address,
                    leader,
                    voter
                }
            ),
            0..4
        )
        .prop_map(Response::Servers),
        prop::collection::vec(
            (
                text(),
                text(),
                text(),
                prop::collection::vec((text(), text()), 0..3)
            )
                .prop_map(|(name, address, status, tags)| MemberInfo {
                    name,
                    address,
                    status,
                    role: "server".into(),
                    datacenter: "dc1".into(),
                    tags
                }),
            0..4
        )
        .prop_map(Response::Members),
        prop::collection::vec(text(), 0..4).prop_map(Response::Keyring),
        (catalog_result(), meta()).prop_map(|(result, meta)| Response::Catalog { result, meta }),
        (prop::collection::vec(session(), 0..3), meta())
            .prop_map(|(sessions, meta)| Response::Sessions { sessions, meta }),
        (0..5usize, text(), prop::option::of(text())).prop_map(|(c, message, leader)| {
            Response::Error(RpcError {
                code: [
                    ErrorCode::NotLeader,
                    ErrorCode::Timeout,
                    ErrorCode::InvalidSession,
                    ErrorCode::NotFound,
                    ErrorCode::WrongServer,
                ][c],
                message,
                leader,
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn one_borrowed_entry_encodes_as_an_entries_response(e in proptest::option::of(entry()), m in meta()) {
        let mut want = BytesMut::new();
        Response::Entries { entries: e.iter().cloned().collect(), meta: m }.encode(&mut want);
        let r = e.as_ref().map(Entry::borrowed);
        let mut got = BytesMut::new();
        Response::encode_one_entry(&mut got, r.as_ref(), &m);
        prop_assert_eq!(got, want);
    }

    #[test]
    fn every_request_decodes_to_itself(op in op(), dc in text(), token in text()) {
        let req = Request { datacenter: dc, token, op };
        let mut b = BytesMut::new();
        req.encode(&mut b);
        prop_assert_eq!(Request::decode(&b.freeze(), &Limits::default()).unwrap(), req);
    }

    #[test]
    fn an_encoded_request_is_a_blocking_read_exactly_when_its_op_is(
        op in op(), dc in text(), token in text(), junk in bytes(300), cut in 0usize..80,
    ) {
        let blocking = op.is_blocking();
        let req = Request { datacenter: dc, token, op };
        let mut b = BytesMut::new();
        req.encode(&mut b);
        let b = b.freeze();
        prop_assert_eq!(Request::is_blocking_read(&b, &Limits::default()), blocking);
        if cut < b.len() {
            prop_assert!(!Request::is_blocking_read(&b.slice(..cut), &Limits::default()));
        }
        let _ = Request::is_blocking_read(&junk, &Limits::default());
    }

    #[test]
    fn every_response_decodes_to_itself(resp in response()) {
        let mut b = BytesMut::new();
        resp.encode(&mut b);
        prop_assert_eq!(Response::decode(&b.freeze(), &Limits::default()).unwrap(), resp);
    }

    #[test]
    fn a_shared_catalog_answer_is_a_catalog_answer_on_the_wire(
        result in catalog_result(),
        meta in meta(),
    ) {
        let plain = Response::Catalog { result: result.clone(), meta };
        let shared = Arc::new(SharedResult::new(result));
        let mut a = BytesMut::new();
        plain.encode(&mut a);
        // Encoded twice: the second time from the cached bytes.
        for _ in 0..2 {
            let mut b = BytesMut::new();
            Response::SharedCatalog { result: shared.clone(), meta }.encode(&mut b);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(Response::decode(&b.freeze(), &Limits::default()).unwrap(), plain.clone());
        }
        let owned = Response::SharedCatalog { result: shared, meta }.into_owned();
        prop_assert_eq!(owned, plain);
    }

    #[test]
    fn garbage_and_cut_messages_never_panic(junk in bytes(300), op in op(), cut in 0usize..80) {
        let _ = Request::decode(&junk, &Limits::default());
        let _ = Response::decode(&junk, &Limits::default());
        let req = Request { datacenter: String::new(), token: String::new(), op };
        let mut b = BytesMut::new();
        req.encode(&mut b);
        let b = b.freeze();
        if cut < b.len() {
            prop_assert!(Request::decode(&b.slice(..cut), &Limits::default()).is_err());
        }
    }
}

#[test]
fn oversize_values_keys_and_transactions_are_refused_on_decode() {
    let limits = Limits::default();
    let put = |key: usize, value: usize| {
        let mut b = BytesMut::new();
        Request {
            datacenter: String::new(),
            token: String::new(),
            op: Op::KvPut {
                key: Bytes::from(vec![b'k'; key]),
                value: Bytes::from(vec![0; value]),
                flags: 0,
                cas: None,
                acquire: None,
                release: None,
            },
        }
        .encode(&mut b);
        Request::decode(&b.freeze(), &limits)
    };
    assert!(put(10, 512 * 1024).is_ok());
    assert_eq!(
        put(10, 512 * 1024 + 1),
        Err(MessageError::Limit {
            what: "value",
            len: 512 * 1024 + 1,
            max: 512 * 1024
        })
    );
    assert!(matches!(
        put(8 * 1024 + 1, 1),
        Err(MessageError::Limit { what: "key", .. })
    ));
    let mut b = BytesMut::new();
    Request {
        datacenter: String::new(),
        token: String::new(),
        op: Op::Txn {
            ops: vec![
                TxnOp::Get {
                    key: Bytes::from_static(b"k")
                };
                129
            ],
        },
    }
    .encode(&mut b);
    assert!(matches!(
        Request::decode(&b.freeze(), &limits),
        Err(MessageError::Limit {
            what: "transaction operations",
            len: 129,
            ..
        })
    ));
}

#[test]
fn a_decoded_value_borrows_the_frame() {
    let mut b = BytesMut::new();
    Response::Entries {
        entries: vec![Entry {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![7u8; 4096]),
            flags: 0,
            create_index: 1,
            modify_index: 1,
            lock_index: 0,
            session: None,
        }],
        meta: Meta::default(),
    }
    .encode(&mut b);
    let frame = b.freeze();
    let Response::Entries { entries, .. } = Response::decode(&frame, &Limits::default()).unwrap()
    else {
        unreachable!()
    };
    let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
    assert!(range.contains(&(entries[0].value.as_ptr() as usize)));
}
