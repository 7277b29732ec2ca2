//! Consul-style agent configuration files (`--config-file FILE`, `--config-dir DIR`).
//!
//! A file is one JSON object. Agent keys Cairn supports: `datacenter`, `node_name`,
//! `data_dir`, `server`, `bootstrap_expect`, `bind_addr`, `client_addr`, `retry_join`,
//! `ports` (`http`, `dns`, `server`, `serf_lan`, `serf_wan`; -1 turns a listener off),
//! `enable_script_checks`, `encrypt`; and Consul's service and check definitions
//! (`service`, `services`, `check`, `checks`), parsed by [`crate::health::definition`].
//! Any other key is an error that names it and the file: a setting Cairn would silently
//! ignore is worse than one it refuses.
//!
//! Files are read in the order given (`--config-file`s first, then each directory's
//! `*.json` files in name order); a later file's value replaces an earlier one's, lists
//! (`retry_join`, services, checks) are appended, as Consul merges them. Command-line
//! flags override every file (the CLI applies that).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::health::definition::{self, Definitions};

/// `ports` in a configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    pub http: Option<i32>,
    pub dns: Option<i32>,
    pub server: Option<i32>,
    pub serf_lan: Option<i32>,
    /// Only -1 (off) is accepted: there is no WAN pool yet.
    pub serf_wan: Option<i32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    datacenter: Option<String>,
    node_name: Option<String>,
    data_dir: Option<PathBuf>,
    server: Option<bool>,
    bootstrap_expect: Option<u32>,
    bind_addr: Option<String>,
    client_addr: Option<String>,
    retry_join: Option<Vec<String>>,
    ports: Option<Ports>,
    enable_script_checks: Option<bool>,
    encrypt: Option<String>,
}

fn ip(file: &str, key: &str, v: Option<String>) -> Result<Option<IpAddr>, String> {
    v.map(|s| {
        s.parse()
            .map_err(|_| format!("{file}: {key}: {s:?} is not an IP address"))
    })
    .transpose()
}

/// Everything the files say, merged.
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    pub datacenter: Option<String>,
    pub node_name: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub server: Option<bool>,
    pub bootstrap_expect: Option<u32>,
    pub bind_addr: Option<IpAddr>,
    pub client_addr: Option<IpAddr>,
    pub retry_join: Vec<String>,
    pub ports: Ports,
    pub enable_script_checks: Option<bool>,
    pub encrypt: Option<String>,
    pub definitions: Definitions,
}

const DEFINITION_KEYS: [&str; 4] = ["service", "services", "check", "checks"];

fn port_ok(file: &str, name: &str, p: Option<i32>) -> Result<(), String> {
    match p {
        Some(p) if p == 0 || !(-1..=65535).contains(&p) => Err(format!(
            "{file}: ports.{name}: {p} is not a port (1-65535, or -1 to turn it off)"
        )),
        _ => Ok(()),
    }
}

impl FileConfig {
    /// Merges one file's contents (`file` names it in errors) over what is there.
    pub fn merge_json(&mut self, file: &str, json: &[u8]) -> Result<(), String> {
        let mut v: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("{file}: {e}"))?;
        let Some(obj) = v.as_object_mut() else {
            return Err(format!(
                "{file}: a configuration file holds one JSON object"
            ));
        };
        // Service and check definitions go to their own parser.
        let mut defs = serde_json::Map::new();
        for k in DEFINITION_KEYS {
            for key in [k.to_string(), capitalized(k)] {
                if let Some(d) = obj.remove(&key) {
                    defs.insert(key, d);
                }
            }
        }
        let raw: Raw = serde_json::from_value(v).map_err(|e| format!("{file}: {e}"))?;
        if let Some(p) = &raw.ports {
            for (name, port) in [
                ("http", p.http),
                ("dns", p.dns),
                ("server", p.server),
                ("serf_lan", p.serf_lan),
                ("serf_wan", p.serf_wan),
            ] {
                port_ok(file, name, port)?;
            }
            if matches!(p.serf_wan, Some(x) if x != -1) {
                return Err(format!(
                    "{file}: ports.serf_wan: Cairn has no WAN gossip pool yet; set it to -1 or \
                     leave it out"
                ));
            }
            if matches!(p.server, Some(-1)) {
                return Err(format!(
                    "{file}: ports.server: the server RPC port cannot be turned off"
                ));
            }
        }
        if !defs.is_empty() {
            let body = serde_json::to_vec(&serde_json::Value::Object(defs))
                .map_err(|e| format!("{file}: {e}"))?;
            let d = definition::parse_file(file, &body).map_err(|e| e.to_string())?;
            self.add_definitions(file, d)?;
        }
        let Raw {
            datacenter,
            node_name,
            data_dir,
            server,
            bootstrap_expect,
            bind_addr,
            client_addr,
            retry_join,
            ports,
            enable_script_checks,
            encrypt,
        } = raw;
        macro_rules! over {
            ($($f:ident),*) => { $( if $f.is_some() { self.$f = $f; } )* };
        }
        let bind_addr = ip(file, "bind_addr", bind_addr)?;
        let client_addr = ip(file, "client_addr", client_addr)?;
        over!(
            datacenter,
            node_name,
            data_dir,
            server,
            bootstrap_expect,
            bind_addr,
            client_addr,
            enable_script_checks,
            encrypt
        );
        self.retry_join.extend(retry_join.unwrap_or_default());
        if let Some(p) = ports {
            let o = &mut self.ports;
            o.http = p.http.or(o.http);
            o.dns = p.dns.or(o.dns);
            o.server = p.server.or(o.server);
            o.serf_lan = p.serf_lan.or(o.serf_lan);
            o.serf_wan = p.serf_wan.or(o.serf_wan);
        }
        Ok(())
    }

    fn add_definitions(&mut self, file: &str, d: Definitions) -> Result<(), String> {
        let services: BTreeSet<&str> = self
            .definitions
            .services
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        let checks: BTreeSet<&str> = self
            .definitions
            .all_checks()
            .map(|c| c.id.as_str())
            .collect();
        if let Some(s) = d.services.iter().find(|s| services.contains(s.id.as_str())) {
            return Err(format!(
                "{file}: service {:?}: id already defined in an earlier file",
                s.id
            ));
        }
        if let Some(c) = d.all_checks().find(|c| checks.contains(c.id.as_str())) {
            return Err(format!(
                "{file}: check {:?}: id already defined in an earlier file",
                c.id
            ));
        }
        self.definitions.services.extend(d.services);
        self.definitions.checks.extend(d.checks);
        Ok(())
    }

    /// Reads `files`, then every `*.json` in each of `dirs` in name order.
    pub fn load(files: &[PathBuf], dirs: &[PathBuf]) -> Result<FileConfig, String> {
        let mut all: Vec<PathBuf> = files.to_vec();
        for d in dirs {
            let entries =
                std::fs::read_dir(d).map_err(|e| format!("config dir {}: {e}", d.display()))?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
                .collect();
            found.sort();
            all.extend(found);
        }
        let mut cfg = FileConfig::default();
        for path in all {
            cfg.merge_file(&path)?;
        }
        Ok(cfg)
    }

    fn merge_file(&mut self, path: &Path) -> Result<(), String> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| format!("{file}: {e}"))?;
        self.merge_json(&file, &bytes)
    }
}

fn capitalized(k: &str) -> String {
    let mut c = k.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_keys_and_definitions_in_one_file() {
        let mut c = FileConfig::default();
        c.merge_json(
            "a.json",
            br#"{"datacenter": "east", "node_name": "n1", "server": true,
                 "bootstrap_expect": 3, "bind_addr": "10.0.0.1", "client_addr": "0.0.0.0",
                 "retry_join": ["10.0.0.2"], "ports": {"http": -1, "dns": 8653, "serf_wan": -1},
                 "enable_script_checks": true,
                 "service": {"name": "web", "port": 80, "check": {"ttl": "10s"}}}"#,
        )
        .unwrap();
        assert_eq!(c.datacenter.as_deref(), Some("east"));
        assert_eq!(c.server, Some(true));
        assert_eq!(c.ports.http, Some(-1));
        assert_eq!(c.ports.dns, Some(8653));
        assert_eq!(c.definitions.services.len(), 1);
        assert_eq!(c.definitions.services[0].checks.len(), 1);
    }

    #[test]
    fn later_files_override_scalars_and_append_lists() {
        let mut c = FileConfig::default();
        c.merge_json(
            "a.json",
            br#"{"datacenter": "a", "retry_join": ["x"], "services": [{"name": "s1"}]}"#,
        )
        .unwrap();
        c.merge_json(
            "b.json",
            br#"{"datacenter": "b", "retry_join": ["y"], "Service": {"Name": "s2"}}"#,
        )
        .unwrap();
        assert_eq!(c.datacenter.as_deref(), Some("b"));
        assert_eq!(c.retry_join, vec!["x".to_string(), "y".to_string()]);
        assert_eq!(c.definitions.services.len(), 2);
        // The same service id in a later file is refused, naming it.
        let e = c
            .merge_json("c.json", br#"{"service": {"name": "s1"}}"#)
            .unwrap_err();
        assert!(e.contains("c.json") && e.contains("s1"), "{e}");
    }

    #[test]
    fn unknown_keys_bad_values_and_unsupported_settings_are_errors_naming_the_file() {
        let cases: [(&[u8], &str); 7] = [
            (br#"{"datacenterr": "x"}"#, "datacenterr"),
            (br#"{"ports": {"grpc": 8502}}"#, "grpc"),
            (br#"{"ports": {"http": 0}}"#, "ports.http"),
            (br#"{"ports": {"serf_wan": 8302}}"#, "WAN"),
            (br#"{"bind_addr": "not-an-ip"}"#, "bind_addr"),
            (br#"[1, 2]"#, "one JSON object"),
            (br#"{"service": {"port": 80}}"#, "name"),
        ];
        for (json, says) in cases {
            let e = FileConfig::default()
                .merge_json("f.json", json)
                .unwrap_err();
            assert!(e.contains("f.json") && e.contains(says), "{e}");
        }
    }
}
