use super::*;

fn parse(json: &str) -> Result<Definitions, DefinitionError> {
    parse_file("web.json", json.as_bytes())
}

/// The error's text, which must name the file and the field.
fn error(json: &str) -> String {
    let e = parse(json).expect_err("should be refused");
    let text = e.to_string();
    assert!(text.starts_with("web.json: "), "{text}");
    text
}

#[test]
fn a_snake_case_service_with_checks_parses_with_consuls_defaults() {
    let defs = parse(
        r#"{"service": {
            "name": "web", "tags": ["v1", "primary"], "address": "10.0.0.1", "port": 8080,
            "meta": {"version": "1.2"}, "weights": {"passing": 10, "warning": 1},
            "enable_tag_override": true,
            "checks": [
                {"http": "http://localhost:8080/health", "interval": "10s",
                 "method": "POST", "header": {"X-A": ["1", "2"]}, "body": "{}",
                 "tls_skip_verify": true, "timeout": "500ms",
                 "deregister_critical_service_after": "1m30s",
                 "success_before_passing": 2, "failures_before_critical": 3},
                {"tcp": "localhost:8080", "interval": "1m", "status": "passing"}
            ]
        }}"#,
    )
    .unwrap();
    assert!(defs.checks.is_empty());
    let s = &defs.services[0];
    assert_eq!(
        (s.id.as_str(), s.name.as_str(), s.port),
        ("web", "web", 8080)
    );
    assert_eq!(s.tags, ["v1", "primary"]);
    assert_eq!(
        s.weights,
        Weights {
            passing: 10,
            warning: 1
        }
    );
    assert!(s.enable_tag_override);
    assert_eq!(s.to_catalog().meta["version"], "1.2");
    let http = &s.checks[0];
    assert_eq!(http.id, "service:web:1");
    assert_eq!(http.name, "Service 'web' check");
    assert_eq!(
        (http.service_id.as_str(), http.service_name.as_str()),
        ("web", "web")
    );
    assert_eq!(http.initial_status, Status::Critical);
    assert_eq!(
        http.deregister_critical_service_after,
        Some(Duration::from_secs(90))
    );
    assert_eq!(
        (http.success_before_passing, http.failures_before_critical),
        (2, 3)
    );
    assert_eq!(
        http.kind,
        CheckKind::Periodic {
            probe: Probe::Http(HttpProbe {
                url: "http://localhost:8080/health".into(),
                method: "POST".into(),
                header: [("X-A".to_string(), vec!["1".to_string(), "2".to_string()])].into(),
                body: "{}".into(),
                tls_skip_verify: true,
            }),
            interval: Duration::from_secs(10),
            timeout: Duration::from_millis(500),
        }
    );
    let tcp = &s.checks[1];
    assert_eq!(tcp.id, "service:web:2");
    assert_eq!(tcp.initial_status, Status::Passing);
    assert_eq!(tcp.kind.type_name(), "tcp");
    assert_eq!(
        tcp.kind,
        CheckKind::Periodic {
            probe: Probe::Tcp {
                address: "localhost:8080".into()
            },
            interval: Duration::from_secs(60),
            timeout: DEFAULT_PROBE_TIMEOUT,
        }
    );
}

#[test]
fn the_agent_apis_camel_case_parses_to_the_same_definition() {
    let snake = parse(
        r#"{"service": {"id": "web-1", "name": "web", "tags": ["a"], "address": "x", "port": 80,
            "meta": {"k": "v"}, "weights": {"passing": 3, "warning": 2},
            "check": {"check_id": "c1", "name": "n", "notes": "why", "ttl": "30s",
                      "status": "warning", "deregister_critical_service_after": "10m"}}}"#,
    )
    .unwrap();
    let camel = parse(
        r#"{"Service": {"ID": "web-1", "Name": "web", "Tags": ["a"], "Address": "x", "Port": 80,
            "Meta": {"k": "v"}, "Weights": {"Passing": 3, "Warning": 2},
            "Check": {"CheckID": "c1", "Name": "n", "Notes": "why", "TTL": "30s",
                      "Status": "warning", "DeregisterCriticalServiceAfter": "10m"}}}"#,
    )
    .unwrap();
    assert_eq!(snake, camel);
    assert_eq!(
        camel.services[0].checks[0].kind,
        CheckKind::Ttl {
            ttl: Duration::from_secs(30)
        }
    );

    let http_api = parse_service(
        "request body",
        br#"{"Name": "api", "Port": 9000, "Checks": [
            {"HTTP": "https://127.0.0.1:9000/", "Interval": "5s", "Timeout": "1s",
             "Method": "PUT", "Header": {"A": ["b"]}, "Body": "x", "TLSSkipVerify": true,
             "SuccessBeforePassing": 1, "FailuresBeforeCritical": 4},
            {"Args": ["/bin/check", "--fast"], "Interval": "30s"},
            {"TCP": "[::1]:9000", "Interval": "2s", "ServiceID": "api"}]}"#,
    )
    .unwrap();
    assert_eq!(http_api.id, "api");
    let kinds: Vec<_> = http_api.checks.iter().map(|c| c.kind.type_name()).collect();
    assert_eq!(kinds, ["http", "script", "tcp"]);
    assert_eq!(http_api.checks[0].failures_before_critical, 4);
    assert_eq!(
        http_api.checks[1].kind,
        CheckKind::Periodic {
            probe: Probe::Script {
                args: vec!["/bin/check".into(), "--fast".into()]
            },
            interval: Duration::from_secs(30),
            timeout: DEFAULT_SCRIPT_TIMEOUT,
        }
    );

    let check = parse_check(
        "request body",
        br#"{"ID": "mem", "Name": "Memory", "ServiceID": "api", "TTL": "15s"}"#,
    )
    .unwrap();
    assert_eq!(
        (check.id.as_str(), check.service_id.as_str()),
        ("mem", "api")
    );
}

#[test]
fn a_single_check_in_a_service_is_service_colon_id_and_a_standalone_checks_id_is_its_name() {
    let defs = parse(
        r#"{"services": [{"name": "db", "id": "db-2", "check": {"ttl": "5s"}}],
            "checks": [{"name": "disk", "args": ["df"], "interval": "1m"},
                       {"name": "db-ping", "service_id": "db-2", "tcp": "h:5432", "interval": "5s"}]}"#,
    )
    .unwrap();
    assert_eq!(defs.services[0].checks[0].id, "service:db-2");
    assert_eq!(defs.checks[0].id, "disk");
    assert_eq!(defs.checks[0].service_id, "");
    // A standalone check names the service defined beside it.
    assert_eq!(defs.checks[1].service_name, "db");
    let ids: Vec<_> = defs.all_checks().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["service:db-2", "disk", "db-ping"]);
}

#[test]
fn unknown_keys_are_reported_at_every_level() {
    assert!(error(r#"{"service": {"name": "a"}, "servce": {}}"#).contains("unknown field `servce`"));
    assert!(error(r#"{"service": {"name": "a", "portt": 1}}"#).contains("unknown field `portt`"));
    assert!(error(
        r#"{"check": {"name": "a", "ttl": "1s", "deregister_critical_service_afer": "1m"}}"#
    )
    .contains("unknown field `deregister_critical_service_afer`"));
    assert!(
        error(r#"{"check": {"name": "a", "grpc": "x:1", "interval": "1s"}}"#)
            .contains("unknown field `grpc`")
    );
    assert!(error(r#"{"service": {"name": "a", "Name": "b"}}"#).contains("duplicate field"));
}

#[test]
fn every_validation_error_names_the_field() {
    let cases = [
        (r#"{}"#, "(top level): defines nothing"),
        (
            r#"{"service": {"port": 1}}"#,
            "service.name: a service needs a name",
        ),
        (
            r#"{"check": {"ttl": "1s"}}"#,
            "check.name: a check needs a name",
        ),
        (
            r#"{"check": {"name": "a"}}"#,
            "check: a check needs one of ttl, tcp, http or args",
        ),
        (
            r#"{"check": {"name": "a", "ttl": "1s", "tcp": "h:1"}}"#,
            "check: has ttl and tcp",
        ),
        (
            r#"{"check": {"name": "a", "tcp": "h:1"}}"#,
            "check.interval: a tcp check needs an interval",
        ),
        (
            r#"{"check": {"name": "a", "http": "http://h/"}}"#,
            "check.interval: an http check needs an interval",
        ),
        (
            r#"{"check": {"name": "a", "args": ["x"]}}"#,
            "check.interval: a script check needs an interval",
        ),
        (
            r#"{"check": {"name": "a", "args": [""], "interval": "1s"}}"#,
            "check.args: needs a program",
        ),
        (
            r#"{"check": {"name": "a", "tcp": "h:1", "interval": "0s"}}"#,
            "check.interval: must be more than zero",
        ),
        (
            r#"{"check": {"name": "a", "tcp": "h:1", "interval": "1s", "timeout": "0s"}}"#,
            "check.timeout: must be more than zero",
        ),
        (
            r#"{"check": {"name": "a", "tcp": "h:1", "interval": "10"}}"#,
            "check.interval: \"10\": missing unit",
        ),
        (
            r#"{"check": {"name": "a", "tcp": "h", "interval": "1s"}}"#,
            "check.tcp: \"h\": expected host:port",
        ),
        (
            r#"{"check": {"name": "a", "tcp": "h:0", "interval": "1s"}}"#,
            "check.tcp: \"h:0\": the port must be",
        ),
        (
            r#"{"check": {"name": "a", "http": "ftp://h/", "interval": "1s"}}"#,
            "check.http: \"ftp://h/\": expected an http://",
        ),
        (
            r#"{"check": {"name": "a", "http": "http://h/", "interval": "1s", "method": "get"}}"#,
            "check.method: \"get\"",
        ),
        (
            r#"{"check": {"name": "a", "http": "http://h/", "interval": "1s", "header": {"A B": []}}}"#,
            "check.header.A B: not a valid header name",
        ),
        (
            r#"{"check": {"name": "a", "http": "http://h/", "interval": "1s", "header": {"A": ["x\ny"]}}}"#,
            "check.header.A: a value has",
        ),
        (
            r#"{"check": {"name": "a", "tcp": "h:1", "interval": "1s", "method": "GET"}}"#,
            "check.method: only an http check has method (this is a tcp check)",
        ),
        (
            r#"{"check": {"name": "a", "ttl": "1s", "body": "x"}}"#,
            "check.body: only an http check",
        ),
        (
            r#"{"check": {"name": "a", "ttl": "1s", "interval": "1s"}}"#,
            "check.interval: a ttl check is updated by its application",
        ),
        (
            r#"{"check": {"name": "a", "ttl": "1s", "failures_before_critical": 2}}"#,
            "check.failures_before_critical: a ttl check",
        ),
        (
            r#"{"check": {"name": "a", "ttl": "0s"}}"#,
            "check.ttl: must be more than zero",
        ),
        (
            r#"{"check": {"name": "a", "ttl": "1s", "status": "ok"}}"#,
            "check.status: unknown check status \"ok\"",
        ),
        (
            r#"{"check": {"name": "a", "ttl": "1s", "deregister_critical_service_after": "1m"}}"#,
            "check.deregister_critical_service_after: only a service's check",
        ),
        (
            r#"{"check": {"name": "a", "tcp": "h:1", "interval": "1s", "success_before_passing": 1001}}"#,
            "check.success_before_passing: at most 1000",
        ),
        (
            r#"{"service": {"name": "a", "check": {"ttl": "1s", "service_id": "b"}}}"#,
            "service.check.service_id: \"b\", but the check is defined inside service \"a\"",
        ),
        (
            r#"{"service": {"name": "a", "weights": {"passing": 0}}}"#,
            "service.weights.passing: must be at least 1",
        ),
        (
            r#"{"service": {"name": "a", "meta": {"consul-x": "1"}}}"#,
            "service.meta.consul-x: the \"consul-\" prefix is reserved",
        ),
        (
            r#"{"service": {"name": "a", "meta": {"a b": "1"}}}"#,
            "service.meta.a b: a key has only",
        ),
        (
            r#"{"services": [{"name": "a"}, {"name": "a"}]}"#,
            "service \"a\": service id defined twice",
        ),
        (
            r#"{"checks": [{"name": "a", "ttl": "1s"}, {"name": "a", "ttl": "2s"}]}"#,
            "check \"a\": check id defined twice",
        ),
    ];
    for (json, expected) in cases {
        let text = error(json);
        assert!(
            text.contains(expected),
            "{json}\n  gave {text}\n  expected {expected}"
        );
    }
}

#[test]
fn limits_are_enforced() {
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    assert!(error(&format!(r#"{{"service": {{"name": "{long}"}}}}"#))
        .contains("service.name: 257 bytes, at most 256"));
    assert!(error(&format!(
        r#"{{"check": {{"name": "a", "id": "{long}", "ttl": "1s"}}}}"#
    ))
    .contains("check.id: 257 bytes"));
    let checks = vec![r#"{"ttl": "1s"}"#; MAX_CHECKS_PER_SERVICE + 1].join(",");
    assert!(error(&format!(
        r#"{{"service": {{"name": "a", "checks": [{checks}]}}}}"#
    ))
    .contains("service.checks: 65 checks, at most 64 per service"));
    let ok = vec![r#"{"ttl": "1s"}"#; MAX_CHECKS_PER_SERVICE].join(",");
    let defs = parse(&format!(
        r#"{{"service": {{"name": "a", "checks": [{ok}]}}}}"#
    ))
    .unwrap();
    assert_eq!(defs.services[0].checks[63].id, "service:a:64");
    let tags = vec![r#""t""#; MAX_TAGS + 1].join(",");
    assert!(error(&format!(
        r#"{{"service": {{"name": "a", "tags": [{tags}]}}}}"#
    ))
    .contains("service.tags: at most 64"));
    assert!(error(r#"{"service": {"name": "a", "port": 70000}}"#)
        .contains("invalid value: integer `70000`"));
}

#[test]
fn load_dir_reads_json_files_in_name_order_and_names_the_file_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.json"), r#"{"service": {"name": "b"}}"#).unwrap();
    std::fs::write(
        dir.path().join("a.json"),
        r#"{"check": {"name": "a", "service_id": "b", "ttl": "1s"}}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a definition").unwrap();
    let defs = load_dir(dir.path()).unwrap();
    assert_eq!(defs.services[0].name, "b");
    assert_eq!(defs.checks[0].service_name, "b", "filled across files");

    std::fs::write(dir.path().join("c.json"), r#"{"service": {"name": "b"}}"#).unwrap();
    let text = load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        text.contains("c.json: service \"b\": service id already defined in"),
        "{text}"
    );
    assert!(text.contains("b.json"), "{text}");

    std::fs::write(
        dir.path().join("c.json"),
        r#"{"service": {"name": "c", "check": {"tcp": "h:1"}}}"#,
    )
    .unwrap();
    let text = load_dir(dir.path()).unwrap_err().to_string();
    assert!(text.contains("c.json: service.check.interval"), "{text}");

    std::fs::write(dir.path().join("c.json"), "{not json").unwrap();
    let text = load_dir(dir.path()).unwrap_err().to_string();
    assert!(
        text.contains("c.json: key must be a string at line 1"),
        "{text}"
    );

    let missing = dir.path().join("nope");
    assert!(load_dir(&missing).unwrap_err().to_string().contains("nope"));
}

#[test]
fn empty_values_count_as_absent_as_go_clients_send_them() {
    let check = parse_check(
        "request body",
        br#"{"Name": "a", "TTL": "5s", "Interval": "", "Timeout": "", "HTTP": "", "TCP": "",
             "Args": [], "Header": {}, "Method": "", "Body": "", "Status": "", "ServiceID": "",
             "DeregisterCriticalServiceAfter": ""}"#,
    )
    .unwrap();
    assert_eq!(
        check.kind,
        CheckKind::Ttl {
            ttl: Duration::from_secs(5)
        }
    );
    assert_eq!(check.initial_status, Status::Critical);
}
