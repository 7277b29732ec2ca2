//! Consul's JSON service and check definitions: parsing, defaults and validation.
//!
//! A definition file holds one of `{"service": {...}}`, `{"services": [...]}`,
//! `{"check": {...}}` or `{"checks": [...]}` (several of these keys may appear together).
//! Every key is accepted in Consul's snake_case (`deregister_critical_service_after`) and in
//! the CamelCase its agent HTTP API sends (`DeregisterCriticalServiceAfter`, `ID`, `HTTP`).
//! Unknown keys are errors, at every level: a misspelt `deregister_critical_service_afer`
//! silently ignored would leave a service registered forever.
//!
//! Parsing is in two steps: serde reads the JSON into loose `Raw*` structs (every field
//! optional, durations as strings), then their `validate` methods turn them into the
//! checked [`ServiceDefinition`] and [`CheckDefinition`], applying Consul's defaults and
//! naming the file and the field of every error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::duration::parse_go_duration;
use crate::catalog::{Service, Status, Weights};

/// At most this many checks per service (`check` and `checks` together) and per file.
pub const MAX_CHECKS_PER_SERVICE: usize = 64;
/// Service and check names and ids, tags, header names: at most this many bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// At most this many tags per service.
pub const MAX_TAGS: usize = 64;
/// Consul's limits on service metadata: pairs, key bytes, value bytes.
pub const MAX_META_PAIRS: usize = 64;
pub const MAX_META_KEY_BYTES: usize = 128;
pub const MAX_META_VALUE_BYTES: usize = 512;
/// An HTTP check's URL, headers (names × values) and body.
pub const MAX_URL_BYTES: usize = 2048;
pub const MAX_HEADERS: usize = 64;
pub const MAX_HEADER_VALUE_BYTES: usize = 1024;
pub const MAX_HTTP_BODY_BYTES: usize = 64 * 1024;
/// A script check's argument count, and the bytes of notes.
pub const MAX_ARGS: usize = 64;
pub const MAX_NOTES_BYTES: usize = 4096;
/// `success_before_passing` and `failures_before_critical` at most.
pub const MAX_THRESHOLD: u32 = 1000;
/// Consul's default timeouts: TCP and HTTP probes 10 s, scripts 30 s.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);

/// A service as an agent runs it: the catalog record plus its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDefinition {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub weights: Weights,
    /// Kept for anti-entropy, which (as in Consul) leaves tags changed on the servers alone
    /// when this is set. The health module does not use it.
    pub enable_tag_override: bool,
    /// Each with `service_id`/`service_name` set to this service.
    pub checks: Vec<CheckDefinition>,
}

impl ServiceDefinition {
    /// The catalog's record of this service (indexes zero: the catalog sets them).
    pub fn to_catalog(&self) -> Service {
        Service {
            id: self.id.clone(),
            name: self.name.clone(),
            tags: self.tags.clone(),
            address: self.address.clone(),
            port: self.port,
            meta: self.meta.clone(),
            weights: self.weights,
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// A validated health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDefinition {
    pub id: String,
    pub name: String,
    pub notes: String,
    /// Empty: a node-level check.
    pub service_id: String,
    /// The service's name when the definition names it (a check inside a service, or a
    /// standalone check whose service is defined in the same directory); else empty.
    pub service_name: String,
    /// Status before the first result (Consul's default: critical).
    pub initial_status: Status,
    pub kind: CheckKind,
    /// Report "deregister this service" once the check has been critical this long.
    pub deregister_critical_service_after: Option<Duration>,
    /// Consecutive passing results needed to turn passing (0 and 1 both mean at once).
    pub success_before_passing: u32,
    /// Consecutive failing results needed to turn warning or critical (0 and 1: at once).
    pub failures_before_critical: u32,
}

/// How a check learns its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// The application reports; no report within `ttl` turns the check critical.
    Ttl { ttl: Duration },
    /// The agent probes every `interval`, giving up after `timeout`.
    Periodic {
        probe: Probe,
        interval: Duration,
        timeout: Duration,
    },
}

impl CheckKind {
    /// Consul's name for the check type, as the catalog's `Check::kind` holds it.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Periodic { probe, .. } => match probe {
                Probe::Tcp { .. } => "tcp",
                Probe::Http(_) => "http",
                Probe::Script { .. } => "script",
            },
        }
    }
}

/// What a periodic check does each interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Connect to `address` (`host:port`).
    Tcp {
        address: String,
    },
    Http(HttpProbe),
    /// Run `args[0]` with the rest as arguments (no shell).
    Script {
        args: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub url: String,
    /// Upper case; GET unless given.
    pub method: String,
    pub header: BTreeMap<String, Vec<String>>,
    pub body: String,
    pub tls_skip_verify: bool,
}

/// Everything a file (or a directory of files) defines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Definitions {
    pub services: Vec<ServiceDefinition>,
    /// Standalone checks (`check`/`checks` at the top level).
    pub checks: Vec<CheckDefinition>,
}

impl Definitions {
    /// Every check: the services' then the standalone ones.
    pub fn all_checks(&self) -> impl Iterator<Item = &CheckDefinition> {
        self.services
            .iter()
            .flat_map(|s| s.checks.iter())
            .chain(self.checks.iter())
    }
}

/// Why a definition was refused. Nothing was loaded then.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    #[error("{file}: {error}")]
    Io { file: String, error: std::io::Error },
    /// Malformed JSON, a wrong type, or an unknown key (serde's message names the key and
    /// the line).
    #[error("{file}: {error}")]
    Json {
        file: String,
        error: serde_json::Error,
    },
    #[error("{file}: {field}: {reason}")]
    Invalid {
        file: String,
        /// Path of the field, like `services[0].checks[1].interval`.
        field: String,
        reason: String,
    },
}

/// Parses one definition file's contents; `file` names it in errors.
pub fn parse_file(file: &str, json: &[u8]) -> Result<Definitions, DefinitionError> {
    let raw: RawFile = serde_json::from_slice(json).map_err(|error| DefinitionError::Json {
        file: file.to_string(),
        error,
    })?;
    let cx = Cx { file };
    let mut defs = Definitions::default();
    if raw.service.is_none()
        && raw.services.is_none()
        && raw.check.is_none()
        && raw.checks.is_none()
    {
        return Err(cx.invalid(
            "(top level)",
            "defines nothing: expected service, services, check or checks",
        ));
    }
    if let Some(s) = raw.service {
        defs.services.push(s.validate(&cx, "service")?);
    }
    for (i, s) in raw.services.into_iter().flatten().enumerate() {
        defs.services
            .push(s.validate(&cx, &format!("services[{i}]"))?);
    }
    if let Some(c) = raw.check {
        defs.checks.push(c.validate(&cx, "check", None)?);
    }
    for (i, c) in raw.checks.into_iter().flatten().enumerate() {
        defs.checks
            .push(c.validate(&cx, &format!("checks[{i}]"), None)?);
    }
    if defs.checks.len() > MAX_CHECKS_PER_SERVICE {
        return Err(cx.invalid(
            "checks",
            &format!("at most {MAX_CHECKS_PER_SERVICE} standalone checks per file"),
        ));
    }
    check_unique(&cx, &defs)?;
    fill_service_names(&mut defs);
    Ok(defs)
}

/// Parses a lone service object, as the body of `PUT /v1/agent/service/register`.
pub fn parse_service(source: &str, json: &[u8]) -> Result<ServiceDefinition, DefinitionError> {
    let raw: RawService = serde_json::from_slice(json).map_err(|error| DefinitionError::Json {
        file: source.to_string(),
        error,
    })?;
    raw.validate(&Cx { file: source }, "service")
}

/// Parses a lone check object, as the body of `PUT /v1/agent/check/register`.
pub fn parse_check(source: &str, json: &[u8]) -> Result<CheckDefinition, DefinitionError> {
    let raw: RawCheck = serde_json::from_slice(json).map_err(|error| DefinitionError::Json {
        file: source.to_string(),
        error,
    })?;
    raw.validate(&Cx { file: source }, "check", None)
}

/// Reads one definition file.
pub fn load_file(path: &Path) -> Result<Definitions, DefinitionError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| DefinitionError::Io {
        file: file.clone(),
        error,
    })?;
    parse_file(&file, &bytes)
}

/// Reads every `*.json` file in `dir` in name order (other files are skipped, as Consul
/// skips them). Service and check ids must be unique across the directory.
pub fn load_dir(dir: &Path) -> Result<Definitions, DefinitionError> {
    let io = |error| DefinitionError::Io {
        file: dir.display().to_string(),
        error,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut all = Definitions::default();
    // id → the file that defined it, to name both files in a clash.
    let mut service_ids: BTreeMap<String, String> = BTreeMap::new();
    let mut check_ids: BTreeMap<String, String> = BTreeMap::new();
    for path in paths {
        let file = path.display().to_string();
        let defs = load_file(&path)?;
        for s in &defs.services {
            if let Some(other) = service_ids.insert(s.id.clone(), file.clone()) {
                return Err(DefinitionError::Invalid {
                    file,
                    field: format!("service {:?}", s.id),
                    reason: format!("service id already defined in {other}"),
                });
            }
        }
        for c in defs.all_checks() {
            if let Some(other) = check_ids.insert(c.id.clone(), file.clone()) {
                return Err(DefinitionError::Invalid {
                    file,
                    field: format!("check {:?}", c.id),
                    reason: format!("check id already defined in {other}"),
                });
            }
        }
        all.services.extend(defs.services);
        all.checks.extend(defs.checks);
    }
    fill_service_names(&mut all);
    Ok(all)
}

/// Ids must be unique within one file: a second definition would silently replace the
/// first in the agent.
fn check_unique(cx: &Cx, defs: &Definitions) -> Result<(), DefinitionError> {
    let mut services = BTreeSet::new();
    for s in &defs.services {
        if !services.insert(&s.id) {
            return Err(cx.invalid(&format!("service {:?}", s.id), "service id defined twice"));
        }
    }
    let mut checks = BTreeSet::new();
    for c in defs.all_checks() {
        if !checks.insert(&c.id) {
            return Err(cx.invalid(&format!("check {:?}", c.id), "check id defined twice"));
        }
    }
    Ok(())
}

/// Gives standalone checks the name of the service they name, when it is defined here.
fn fill_service_names(defs: &mut Definitions) {
    let names: BTreeMap<String, String> = defs
        .services
        .iter()
        .map(|s| (s.id.clone(), s.name.clone()))
        .collect();
    for c in &mut defs.checks {
        if c.service_name.is_empty() {
            if let Some(name) = names.get(&c.service_id) {
                c.service_name = name.clone();
            }
        }
    }
}

/// Where errors point.
struct Cx<'a> {
    file: &'a str,
}

impl Cx<'_> {
    fn invalid(&self, field: &str, reason: &str) -> DefinitionError {
        DefinitionError::Invalid {
            file: self.file.to_string(),
            field: field.to_string(),
            reason: reason.to_string(),
        }
    }

    fn duration(
        &self,
        field: &str,
        value: Option<String>,
    ) -> Result<Option<Duration>, DefinitionError> {
        value
            .map(|s| parse_go_duration(&s).map_err(|e| self.invalid(field, &e)))
            .transpose()
    }

    fn name(&self, field: &str, value: &str) -> Result<(), DefinitionError> {
        if value.len() > MAX_NAME_BYTES {
            return Err(self.invalid(
                field,
                &format!("{} bytes, at most {MAX_NAME_BYTES}", value.len()),
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(alias = "Service")]
    service: Option<RawService>,
    #[serde(alias = "Services")]
    services: Option<Vec<RawService>>,
    #[serde(alias = "Check")]
    check: Option<RawCheck>,
    #[serde(alias = "Checks")]
    checks: Option<Vec<RawCheck>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(alias = "ID", alias = "Id")]
    id: Option<String>,
    #[serde(alias = "Name")]
    name: Option<String>,
    #[serde(alias = "Tags")]
    tags: Option<Vec<String>>,
    #[serde(alias = "Address")]
    address: Option<String>,
    #[serde(alias = "Port")]
    port: Option<u16>,
    #[serde(alias = "Meta")]
    meta: Option<BTreeMap<String, String>>,
    #[serde(alias = "Weights")]
    weights: Option<RawWeights>,
    #[serde(alias = "EnableTagOverride")]
    enable_tag_override: Option<bool>,
    #[serde(alias = "Check")]
    check: Option<RawCheck>,
    #[serde(alias = "Checks")]
    checks: Option<Vec<RawCheck>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeights {
    #[serde(alias = "Passing")]
    passing: Option<u32>,
    #[serde(alias = "Warning")]
    warning: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(
        alias = "ID",
        alias = "Id",
        alias = "check_id",
        alias = "CheckID",
        alias = "CheckId"
    )]
    id: Option<String>,
    #[serde(alias = "Name")]
    name: Option<String>,
    #[serde(alias = "Notes")]
    notes: Option<String>,
    #[serde(alias = "ServiceID", alias = "ServiceId")]
    service_id: Option<String>,
    #[serde(alias = "Status")]
    status: Option<String>,
    #[serde(alias = "Interval")]
    interval: Option<String>,
    #[serde(alias = "Timeout")]
    timeout: Option<String>,
    #[serde(alias = "TTL", alias = "Ttl")]
    ttl: Option<String>,
    #[serde(alias = "TCP", alias = "Tcp")]
    tcp: Option<String>,
    #[serde(alias = "HTTP", alias = "Http")]
    http: Option<String>,
    #[serde(alias = "Method")]
    method: Option<String>,
    #[serde(alias = "Header")]
    header: Option<BTreeMap<String, Vec<String>>>,
    #[serde(alias = "Body")]
    body: Option<String>,
    #[serde(alias = "TLSSkipVerify", alias = "TlsSkipVerify")]
    tls_skip_verify: Option<bool>,
    #[serde(alias = "Args", alias = "ScriptArgs", alias = "script_args")]
    args: Option<Vec<String>>,
    #[serde(alias = "DeregisterCriticalServiceAfter")]
    deregister_critical_service_after: Option<String>,
    #[serde(alias = "SuccessBeforePassing")]
    success_before_passing: Option<u32>,
    #[serde(alias = "FailuresBeforeCritical")]
    failures_before_critical: Option<u32>,
}

/// The service a check is defined inside: its id, its name, the check's position among
/// the service's checks and how many there are (for the default id).
struct Owner<'a> {
    id: &'a str,
    name: &'a str,
    position: usize,
    count: usize,
}

impl RawService {
    fn validate(self, cx: &Cx, at: &str) -> Result<ServiceDefinition, DefinitionError> {
        let f = |field: &str| format!("{at}.{field}");
        let name = self
            .name
            .filter(|n| !n.is_empty())
            .ok_or_else(|| cx.invalid(&f("name"), "a service needs a name"))?;
        cx.name(&f("name"), &name)?;
        let id = match self.id {
            Some(id) if !id.is_empty() => id,
            _ => name.clone(),
        };
        cx.name(&f("id"), &id)?;
        let tags = self.tags.unwrap_or_default();
        if tags.len() > MAX_TAGS {
            return Err(cx.invalid(&f("tags"), &format!("at most {MAX_TAGS} tags")));
        }
        for (i, t) in tags.iter().enumerate() {
            cx.name(&f(&format!("tags[{i}]")), t)?;
        }
        let address = self.address.unwrap_or_default();
        cx.name(&f("address"), &address)?;
        let meta = self.meta.unwrap_or_default();
        validate_meta(cx, &f("meta"), &meta)?;
        let mut weights = Weights::default();
        if let Some(w) = self.weights {
            weights.passing = w.passing.unwrap_or(weights.passing);
            weights.warning = w.warning.unwrap_or(weights.warning);
            if weights.passing == 0 {
                return Err(cx.invalid(&f("weights.passing"), "must be at least 1"));
            }
        }
        let raw_checks: Vec<(String, RawCheck)> = self
            .check
            .map(|c| (f("check"), c))
            .into_iter()
            .chain(
                self.checks
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(|(i, c)| (f(&format!("checks[{i}]")), c)),
            )
            .collect();
        if raw_checks.len() > MAX_CHECKS_PER_SERVICE {
            return Err(cx.invalid(
                &f("checks"),
                &format!(
                    "{} checks, at most {MAX_CHECKS_PER_SERVICE} per service",
                    raw_checks.len()
                ),
            ));
        }
        let count = raw_checks.len();
        let mut checks = Vec::with_capacity(count);
        for (position, (field, raw)) in raw_checks.into_iter().enumerate() {
            let owner = Owner {
                id: &id,
                name: &name,
                position,
                count,
            };
            checks.push(raw.validate(cx, &field, Some(owner))?);
        }
        Ok(ServiceDefinition {
            id,
            name,
            tags,
            address,
            port: self.port.unwrap_or(0),
            meta,
            weights,
            enable_tag_override: self.enable_tag_override.unwrap_or(false),
            checks,
        })
    }
}

fn validate_meta(
    cx: &Cx,
    field: &str,
    meta: &BTreeMap<String, String>,
) -> Result<(), DefinitionError> {
    if meta.len() > MAX_META_PAIRS {
        return Err(cx.invalid(field, &format!("at most {MAX_META_PAIRS} pairs")));
    }
    for (k, v) in meta {
        let at = format!("{field}.{k}");
        if k.is_empty() || k.len() > MAX_META_KEY_BYTES {
            return Err(cx.invalid(&at, &format!("a key has 1 to {MAX_META_KEY_BYTES} bytes")));
        }
        if !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(cx.invalid(&at, "a key has only letters, digits, '_' and '-'"));
        }
        if k.starts_with("consul-") {
            return Err(cx.invalid(&at, "the \"consul-\" prefix is reserved"));
        }
        if v.len() > MAX_META_VALUE_BYTES {
            return Err(cx.invalid(
                &at,
                &format!("a value has at most {MAX_META_VALUE_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

impl RawCheck {
    fn validate(
        mut self,
        cx: &Cx,
        at: &str,
        owner: Option<Owner>,
    ) -> Result<CheckDefinition, DefinitionError> {
        let f = |field: &str| format!("{at}.{field}");
        // Empty values are absent: Go clients of Consul's API send zero values, and Consul
        // reads "" as unset.
        for field in [
            &mut self.ttl,
            &mut self.tcp,
            &mut self.http,
            &mut self.interval,
            &mut self.timeout,
            &mut self.method,
            &mut self.body,
            &mut self.deregister_critical_service_after,
            &mut self.status,
            &mut self.service_id,
        ] {
            if field.as_ref().is_some_and(|v| v.is_empty()) {
                *field = None;
            }
        }
        if self.args.as_ref().is_some_and(|a| a.is_empty()) {
            self.args = None;
        }
        if self.header.as_ref().is_some_and(|h| h.is_empty()) {
            self.header = None;
        }

        // Which kind: exactly one of ttl, tcp, http, args.
        let mut kinds = Vec::new();
        if self.ttl.is_some() {
            kinds.push("ttl");
        }
        if self.tcp.is_some() {
            kinds.push("tcp");
        }
        if self.http.is_some() {
            kinds.push("http");
        }
        if self.args.is_some() {
            kinds.push("args");
        }
        let kind_name = match kinds.as_slice() {
            [one] => *one,
            [] => return Err(cx.invalid(
                at,
                "a check needs one of ttl, tcp, http or args (other check types are not supported)",
            )),
            several => {
                return Err(cx.invalid(
                    at,
                    &format!(
                        "has {}: a check is exactly one of ttl, tcp, http or args",
                        several.join(" and ")
                    ),
                ))
            }
        };
        // Fields that belong to another kind are mistakes, not options to ignore.
        let http_only = [
            ("method", self.method.is_some()),
            ("header", self.header.is_some()),
            ("body", self.body.is_some()),
            ("tls_skip_verify", self.tls_skip_verify.is_some()),
        ];
        if kind_name != "http" {
            if let Some((field, _)) = http_only.iter().find(|(_, set)| *set) {
                return Err(cx.invalid(
                    &f(field),
                    &format!(
                        "only an http check has {field} (this is a {} check)",
                        if kind_name == "args" {
                            "script"
                        } else {
                            kind_name
                        }
                    ),
                ));
            }
        }

        let interval = cx.duration(&f("interval"), self.interval)?;
        let timeout = cx.duration(&f("timeout"), self.timeout)?;
        let kind = if kind_name == "ttl" {
            let ttl = cx
                .duration(&f("ttl"), self.ttl)?
                .expect("kind ttl has a ttl");
            if ttl.is_zero() {
                return Err(cx.invalid(&f("ttl"), "must be more than zero"));
            }
            let periodic_only = [
                ("interval", interval.is_some()),
                ("timeout", timeout.is_some()),
                (
                    "success_before_passing",
                    self.success_before_passing.is_some(),
                ),
                (
                    "failures_before_critical",
                    self.failures_before_critical.is_some(),
                ),
            ];
            if let Some((field, _)) = periodic_only.iter().find(|(_, set)| *set) {
                return Err(cx.invalid(
                    &f(field),
                    "a ttl check is updated by its application: it has no interval, timeout or thresholds",
                ));
            }
            CheckKind::Ttl { ttl }
        } else {
            let interval = interval.ok_or_else(|| {
                let article = match kind_name {
                    "http" => "an http",
                    "args" => "a script",
                    _ => "a tcp",
                };
                cx.invalid(
                    &f("interval"),
                    &format!("{article} check needs an interval"),
                )
            })?;
            if interval.is_zero() {
                return Err(cx.invalid(&f("interval"), "must be more than zero"));
            }
            if timeout.is_some_and(|t| t.is_zero()) {
                return Err(cx.invalid(&f("timeout"), "must be more than zero"));
            }
            let probe = if let Some(address) = self.tcp {
                validate_tcp_address(&address).map_err(|e| cx.invalid(&f("tcp"), &e))?;
                Probe::Tcp { address }
            } else if let Some(url) = self.http {
                Probe::Http(validate_http(
                    cx,
                    at,
                    url,
                    self.method,
                    self.header,
                    self.body,
                    self.tls_skip_verify,
                )?)
            } else {
                let args = self.args.expect("kind args has args");
                if args.is_empty() || args[0].is_empty() {
                    return Err(cx.invalid(&f("args"), "needs a program to run"));
                }
                if args.len() > MAX_ARGS {
                    return Err(cx.invalid(&f("args"), &format!("at most {MAX_ARGS} arguments")));
                }
                Probe::Script { args }
            };
            let default_timeout = match probe {
                Probe::Script { .. } => DEFAULT_SCRIPT_TIMEOUT,
                _ => DEFAULT_PROBE_TIMEOUT,
            };
            CheckKind::Periodic {
                probe,
                interval,
                timeout: timeout.unwrap_or(default_timeout),
            }
        };

        let service_id = match (&owner, self.service_id) {
            (Some(o), Some(given)) if !given.is_empty() && given != o.id => {
                return Err(cx.invalid(
                    &f("service_id"),
                    &format!(
                        "{given:?}, but the check is defined inside service {:?}",
                        o.id
                    ),
                ))
            }
            (Some(o), _) => o.id.to_string(),
            (None, given) => given.unwrap_or_default(),
        };
        cx.name(&f("service_id"), &service_id)?;
        let service_name = owner
            .as_ref()
            .map(|o| o.name.to_string())
            .unwrap_or_default();

        // Consul's defaults: inside a service, "service:<id>" (numbered from 1 when the
        // service has several checks) and "Service '<name>' check"; alone, the id is the
        // name, which is then required.
        let name = match (self.name.filter(|n| !n.is_empty()), &owner) {
            (Some(n), _) => n,
            (None, Some(o)) => format!("Service '{}' check", o.name),
            (None, None) => return Err(cx.invalid(&f("name"), "a check needs a name")),
        };
        cx.name(&f("name"), &name)?;
        let id = match (self.id.filter(|i| !i.is_empty()), &owner) {
            (Some(id), _) => id,
            (None, Some(o)) if o.count > 1 => format!("service:{}:{}", o.id, o.position + 1),
            (None, Some(o)) => format!("service:{}", o.id),
            (None, None) => name.clone(),
        };
        cx.name(&f("id"), &id)?;

        let notes = self.notes.unwrap_or_default();
        if notes.len() > MAX_NOTES_BYTES {
            return Err(cx.invalid(&f("notes"), &format!("at most {MAX_NOTES_BYTES} bytes")));
        }
        let initial_status = match self.status.as_deref() {
            None | Some("") => Status::Critical,
            Some(s) => s
                .parse()
                .map_err(|e: String| cx.invalid(&f("status"), &e))?,
        };
        let deregister_critical_service_after = cx.duration(
            &f("deregister_critical_service_after"),
            self.deregister_critical_service_after,
        )?;
        if deregister_critical_service_after.is_some() && service_id.is_empty() {
            return Err(cx.invalid(
                &f("deregister_critical_service_after"),
                "only a service's check can deregister it: set service_id",
            ));
        }
        let success_before_passing = self.success_before_passing.unwrap_or(0);
        let failures_before_critical = self.failures_before_critical.unwrap_or(0);
        for (field, v) in [
            ("success_before_passing", success_before_passing),
            ("failures_before_critical", failures_before_critical),
        ] {
            if v > MAX_THRESHOLD {
                return Err(cx.invalid(&f(field), &format!("at most {MAX_THRESHOLD}")));
            }
        }
        Ok(CheckDefinition {
            id,
            name,
            notes,
            service_id,
            service_name,
            initial_status,
            kind,
            deregister_critical_service_after,
            success_before_passing,
            failures_before_critical,
        })
    }
}

/// `host:port`, `[v6]:port`: resolved only when the check runs.
fn validate_tcp_address(address: &str) -> Result<(), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address:?}: expected host:port"))?;
    if host.is_empty() || host.len() > MAX_NAME_BYTES {
        return Err(format!("{address:?}: expected host:port"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{address:?}: the port must be 1 to 65535")),
    }
}

fn validate_http(
    cx: &Cx,
    at: &str,
    url: String,
    method: Option<String>,
    header: Option<BTreeMap<String, Vec<String>>>,
    body: Option<String>,
    tls_skip_verify: Option<bool>,
) -> Result<HttpProbe, DefinitionError> {
    let f = |field: &str| format!("{at}.{field}");
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > MAX_URL_BYTES {
        return Err(cx.invalid(
            &f("http"),
            &format!(
                "{url:?}: expected an http:// or https:// URL of at most {MAX_URL_BYTES} bytes"
            ),
        ));
    }
    let method = method
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "GET".to_string());
    if method.len() > 32 || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(cx.invalid(
            &f("method"),
            &format!("{method:?}: expected an upper-case HTTP method such as GET or POST"),
        ));
    }
    let header = header.unwrap_or_default();
    let pairs: usize = header.values().map(|v| v.len().max(1)).sum();
    if pairs > MAX_HEADERS {
        return Err(cx.invalid(&f("header"), &format!("at most {MAX_HEADERS} values")));
    }
    for (name, values) in &header {
        let valid_name = !name.is_empty()
            && name.len() <= MAX_NAME_BYTES
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            return Err(cx.invalid(&f(&format!("header.{name}")), "not a valid header name"));
        }
        if values.iter().any(|v| {
            v.len() > MAX_HEADER_VALUE_BYTES || v.bytes().any(|b| b == b'\r' || b == b'\n')
        }) {
            return Err(cx.invalid(
                &f(&format!("header.{name}")),
                &format!("a value has at most {MAX_HEADER_VALUE_BYTES} bytes and no line breaks"),
            ));
        }
    }
    let body = body.unwrap_or_default();
    if body.len() > MAX_HTTP_BODY_BYTES {
        return Err(cx.invalid(&f("body"), &format!("at most {MAX_HTTP_BODY_BYTES} bytes")));
    }
    Ok(HttpProbe {
        url,
        method,
        header,
        body,
        tls_skip_verify: tls_skip_verify.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests;
