//! `cairn catalog ...` and `cairn health ...`: the service catalog through an agent.

use std::process::ExitCode;

use cairn::catalog::{CatalogQuery, CatalogResult, Check, Status};
use cairn::http::consul_json::{
    check as check_json, instance as instance_json, node as node_json, service as service_json,
};
use cairn_net::rpc::message::{Op, ReadOpts, Response};
use clap::{Args, Subcommand};

use crate::cli::{call, consistency, print_json, unexpected, Format, RpcArgs};

/// How fresh a catalog read must be, and how it prints.
#[derive(Args, Debug, Clone)]
pub struct ReadArgs {
    /// Read through a quorum-confirmed read index.
    #[arg(long, conflicts_with = "stale")]
    consistent: bool,
    /// Read the agent's server's local state without asking the leader.
    #[arg(long)]
    stale: bool,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
}

#[derive(Subcommand, Debug)]
pub enum CatalogCommand {
    /// Every node: name, address, datacenter.
    Nodes {
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Every service name (with its tags).
    Services {
        /// Show each service's tags.
        #[arg(long)]
        tags: bool,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// The instances of a service: node, address, port, tags, health.
    Service {
        name: String,
        /// Only instances whose checks all pass.
        #[arg(long)]
        passing: bool,
        /// Only instances with this tag.
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// A node's services.
    Node {
        name: String,
        #[command(flatten)]
        read: ReadArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum HealthCommand {
    /// A service's checks, on every node.
    Checks {
        service: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// A node's checks.
    Node {
        node: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Checks in a state: passing, warning, critical or any.
    State {
        state: String,
        #[command(flatten)]
        read: ReadArgs,
    },
}

fn read(query: CatalogQuery, r: &ReadArgs, rpc: &RpcArgs) -> Result<CatalogResult, ExitCode> {
    let opts = ReadOpts {
        consistency: consistency(r.consistent, r.stale),
        ..ReadOpts::default()
    };
    match call(rpc, Op::CatalogRead { query, opts })? {
        Response::Catalog { result, .. } => Ok(result),
        other => Err(unexpected(other)),
    }
}

fn print_checks(checks: &[Check], format: Format) {
    if format == Format::Json {
        print_json(&serde_json::Value::Array(
            checks.iter().map(check_json).collect(),
        ));
        return;
    }
    println!(
        "{:<20} {:<24} {:<20} {:<9} Output",
        "Node", "CheckID", "Service", "Status"
    );
    for c in checks {
        println!(
            "{:<20} {:<24} {:<20} {:<9} {}",
            c.node,
            c.id,
            c.service_name,
            c.status.as_str(),
            c.output.lines().next().unwrap_or("")
        );
    }
}

pub fn catalog(cmd: CatalogCommand, rpc: &RpcArgs) -> ExitCode {
    let run = || -> Result<(), ExitCode> {
        match cmd {
            CatalogCommand::Nodes { read: r } => match read(CatalogQuery::Nodes, &r, rpc)? {
                CatalogResult::Nodes(nodes) if r.format == Format::Json => print_json(
                    &serde_json::Value::Array(nodes.iter().map(node_json).collect()),
                ),
                CatalogResult::Nodes(nodes) => {
                    println!("{:<20} {:<16} DC", "Node", "Address");
                    for n in nodes {
                        println!("{:<20} {:<16} {}", n.name, n.address, n.datacenter);
                    }
                }
                other => return Err(unexpected_result(other)),
            },
            CatalogCommand::Services { tags, read: r } => {
                match read(CatalogQuery::Services, &r, rpc)? {
                    CatalogResult::Services(services) if r.format == Format::Json => {
                        let m: serde_json::Map<String, serde_json::Value> = services
                            .into_iter()
                            .map(|(name, tags)| (name, serde_json::json!(tags)))
                            .collect();
                        print_json(&serde_json::Value::Object(m));
                    }
                    CatalogResult::Services(services) => {
                        for (name, t) in services {
                            if tags {
                                println!("{name:<30} {}", t.join(","));
                            } else {
                                println!("{name}");
                            }
                        }
                    }
                    other => return Err(unexpected_result(other)),
                }
            }
            CatalogCommand::Service {
                name,
                passing,
                tag,
                read: r,
            } => {
                let q = CatalogQuery::Service {
                    name,
                    tag,
                    passing_only: passing,
                };
                match read(q, &r, rpc)? {
                    CatalogResult::Instances(instances) if r.format == Format::Json => print_json(
                        &serde_json::Value::Array(instances.iter().map(instance_json).collect()),
                    ),
                    CatalogResult::Instances(instances) => {
                        println!(
                            "{:<20} {:<20} {:<22} {:<9} Tags",
                            "Node", "ServiceID", "Address", "Health"
                        );
                        for i in instances {
                            let addr = if i.service.address.is_empty() {
                                &i.node.address
                            } else {
                                &i.service.address
                            };
                            println!(
                                "{:<20} {:<20} {:<22} {:<9} {}",
                                i.node.name,
                                i.service.id,
                                format!("{addr}:{}", i.service.port),
                                i.status().as_str(),
                                i.service.tags.join(",")
                            );
                        }
                    }
                    other => return Err(unexpected_result(other)),
                }
            }
            CatalogCommand::Node { name, read: r } => {
                match read(CatalogQuery::NodeServices { node: name.clone() }, &r, rpc)? {
                    CatalogResult::NodeServices(None, _) => {
                        eprintln!("Error! No node named {name:?} in the catalog");
                        return Err(ExitCode::FAILURE);
                    }
                    CatalogResult::NodeServices(Some(n), services) if r.format == Format::Json => {
                        let m: serde_json::Map<String, serde_json::Value> = services
                            .iter()
                            .map(|s| (s.id.clone(), service_json(s)))
                            .collect();
                        print_json(&serde_json::json!({"Node": node_json(&n), "Services": m}));
                    }
                    CatalogResult::NodeServices(Some(n), services) => {
                        println!(
                            "Node {} ({}), datacenter {}",
                            n.name, n.address, n.datacenter
                        );
                        println!("{:<20} {:<20} {:<6} Tags", "ID", "Service", "Port");
                        for s in services {
                            println!(
                                "{:<20} {:<20} {:<6} {}",
                                s.id,
                                s.name,
                                s.port,
                                s.tags.join(",")
                            );
                        }
                    }
                    other => return Err(unexpected_result(other)),
                }
            }
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}

pub fn health(cmd: HealthCommand, rpc: &RpcArgs) -> ExitCode {
    let (query, r) = match cmd {
        HealthCommand::Checks { service, read } => {
            (CatalogQuery::ServiceChecks { name: service }, read)
        }
        HealthCommand::Node { node, read } => (CatalogQuery::NodeChecks { node }, read),
        HealthCommand::State { state, read } => {
            let state = match state.as_str() {
                "any" => None,
                s => match s.parse::<Status>() {
                    Ok(s) => Some(s),
                    Err(e) => {
                        eprintln!("Error! {e} (or any)");
                        return ExitCode::from(2);
                    }
                },
            };
            (CatalogQuery::ChecksInState { state }, read)
        }
    };
    match read(query, &r, rpc) {
        Ok(CatalogResult::Checks(checks)) => {
            print_checks(&checks, r.format);
            ExitCode::SUCCESS
        }
        Ok(other) => unexpected_result(other),
        Err(code) => code,
    }
}

fn unexpected_result(r: CatalogResult) -> ExitCode {
    eprintln!("Error! unexpected answer from the agent: {r:?}");
    ExitCode::FAILURE
}

#[derive(Subcommand, Debug)]
pub enum ServicesCommand {
    /// Register the services in a definition file (Consul's format: `{"service": {...}}`
    /// or `{"services": [...]}`) with the agent; it runs their checks and keeps them in
    /// the catalog.
    Register { file: std::path::PathBuf },
    /// Remove a service (by id) from the agent, with its checks.
    Deregister { id: String },
    /// The agent's own services.
    List {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

pub fn services(cmd: ServicesCommand, rpc: &RpcArgs) -> ExitCode {
    use cairn_net::rpc::message::AgentKind;
    match cmd {
        ServicesCommand::Register { file } => {
            let text = match std::fs::read(&file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("Error! reading {}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            };
            let v: serde_json::Value = match serde_json::from_slice(&text) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("Error! {}: {e}", file.display());
                    return ExitCode::FAILURE;
                }
            };
            let mut defs = Vec::new();
            let get = |k: &str| {
                v.get(k)
                    .or_else(|| v.get(format!("{}{}", k[..1].to_uppercase(), &k[1..])))
            };
            if let Some(s) = get("service") {
                defs.push(s.clone());
            }
            if let Some(serde_json::Value::Array(list)) = get("services") {
                defs.extend(list.iter().cloned());
            }
            if defs.is_empty() {
                eprintln!(
                    "Error! {}: no \"service\" or \"services\" in the file",
                    file.display()
                );
                return ExitCode::FAILURE;
            }
            for d in defs {
                let op = Op::AgentRegister {
                    kind: AgentKind::Service,
                    definition: bytes::Bytes::from(d.to_string()),
                };
                match call(rpc, op) {
                    Ok(Response::Bool(true)) => {
                        let name = d
                            .get("name")
                            .or_else(|| d.get("Name"))
                            .and_then(|n| n.as_str())
                            .unwrap_or("?");
                        println!("Registered service: {name}");
                    }
                    Ok(other) => return unexpected(other),
                    Err(code) => return code,
                }
            }
            ExitCode::SUCCESS
        }
        ServicesCommand::Deregister { id } => {
            match call(
                rpc,
                Op::AgentDeregister {
                    kind: AgentKind::Service,
                    id: id.clone(),
                },
            ) {
                Ok(Response::Bool(true)) => {
                    println!("Deregistered service: {id}");
                    ExitCode::SUCCESS
                }
                Ok(other) => unexpected(other),
                Err(code) => code,
            }
        }
        ServicesCommand::List { format } => match call(
            rpc,
            Op::AgentLocal {
                kind: AgentKind::Service,
            },
        ) {
            Ok(Response::Catalog {
                result: CatalogResult::NodeServices(_, services),
                ..
            }) => {
                if format == Format::Json {
                    let m: serde_json::Map<String, serde_json::Value> = services
                        .iter()
                        .map(|s| (s.id.clone(), service_json(s)))
                        .collect();
                    print_json(&serde_json::Value::Object(m));
                } else {
                    println!("{:<20} {:<20} {:<6} Tags", "ID", "Service", "Port");
                    for s in services {
                        println!(
                            "{:<20} {:<20} {:<6} {}",
                            s.id,
                            s.name,
                            s.port,
                            s.tags.join(",")
                        );
                    }
                }
                ExitCode::SUCCESS
            }
            Ok(other) => unexpected(other),
            Err(code) => code,
        },
    }
}

/// `cairn maint`: put the node or one service in maintenance mode (a critical check
/// that takes it out of passing queries), or take it out.
pub fn maint(
    enable: bool,
    disable: bool,
    service: Option<String>,
    reason: String,
    rpc: &RpcArgs,
) -> ExitCode {
    if enable == disable {
        eprintln!("Error! give exactly one of --enable or --disable");
        return ExitCode::from(2);
    }
    let what = match &service {
        Some(s) => format!("service {s:?}"),
        None => "node".to_string(),
    };
    match call(
        rpc,
        Op::AgentMaintenance {
            service_id: service,
            enable,
            reason,
        },
    ) {
        Ok(Response::Bool(true)) => {
            println!(
                "Maintenance mode {} for the {what}",
                if enable { "enabled" } else { "disabled" }
            );
            ExitCode::SUCCESS
        }
        Ok(other) => unexpected(other),
        Err(code) => code,
    }
}

/// `cairn force-leave NODE`.
pub fn force_leave(node: &str, rpc: &RpcArgs) -> ExitCode {
    match call(
        rpc,
        Op::ForceLeave {
            node: node.to_string(),
        },
    ) {
        Ok(Response::Done) => ExitCode::SUCCESS,
        Ok(other) => unexpected(other),
        Err(code) => code,
    }
}

#[derive(Subcommand, Debug)]
pub enum SessionCommand {
    /// Create a session (its id is printed); bound to the node's serfHealth check.
    Create {
        /// The node (default: the agent's own).
        #[arg(long)]
        node: Option<String>,
        #[arg(long, default_value = "")]
        name: String,
        /// Seconds; 0 for no TTL (else 10 to 86,400).
        #[arg(long, default_value_t = 0)]
        ttl_s: u64,
        /// Seconds a released lock stays unavailable after the session ends.
        #[arg(long, default_value_t = 15)]
        lock_delay_s: u64,
        /// What happens to held keys when the session ends.
        #[arg(long, value_parser = ["release", "delete"], default_value = "release")]
        behavior: String,
    },
    /// Every session, or one node's.
    List {
        #[arg(long)]
        node: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// One session.
    Info {
        id: String,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Renew a TTL session.
    Renew { id: String },
    /// Destroy a session: its locks are released (or their keys deleted).
    Destroy { id: String },
}

fn session_json(s: &cairn::catalog::SessionInfo) -> serde_json::Value {
    serde_json::json!({
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "Behavior": match s.behavior {
            cairn::catalog::SessionBehavior::Release => "release",
            cairn::catalog::SessionBehavior::Delete => "delete",
        },
        "TTL": format!("{}s", s.ttl_ms / 1000),
        "LockDelay": format!("{}s", s.lock_delay_ms / 1000),
        "NodeChecks": s.node_checks,
        "ServiceChecks": s.service_checks,
        "CreateIndex": s.create_index,
    })
}

fn print_sessions(sessions: &[cairn::catalog::SessionInfo], format: Format) {
    if format == Format::Json {
        print_json(&serde_json::Value::Array(
            sessions.iter().map(session_json).collect(),
        ));
        return;
    }
    println!(
        "{:<38} {:<16} {:<16} {:<8} TTL",
        "ID", "Name", "Node", "Behavior"
    );
    for s in sessions {
        let j = session_json(s);
        println!(
            "{:<38} {:<16} {:<16} {:<8} {}",
            s.id,
            s.name,
            s.node,
            j["Behavior"].as_str().unwrap_or(""),
            j["TTL"].as_str().unwrap_or("")
        );
    }
}

pub fn session(cmd: SessionCommand, rpc: &RpcArgs) -> ExitCode {
    use cairn::catalog::{SessionBehavior, SessionInfo, SessionQuery};
    let run = || -> Result<ExitCode, ExitCode> {
        match cmd {
            SessionCommand::Create {
                node,
                name,
                ttl_s,
                lock_delay_s,
                behavior,
            } => {
                let node = match node {
                    Some(n) => n,
                    None => match call(
                        rpc,
                        Op::AgentLocal {
                            kind: cairn_net::rpc::message::AgentKind::Service,
                        },
                    )? {
                        Response::Catalog {
                            result: CatalogResult::NodeServices(Some(n), _),
                            ..
                        } => n.name,
                        other => return Err(unexpected(other)),
                    },
                };
                let info = SessionInfo {
                    name,
                    node,
                    behavior: if behavior == "delete" {
                        SessionBehavior::Delete
                    } else {
                        SessionBehavior::Release
                    },
                    ttl_ms: ttl_s.saturating_mul(1000),
                    lock_delay_ms: lock_delay_s.saturating_mul(1000),
                    node_checks: vec![cairn::catalog::reconcile::SERF_CHECK_ID.to_string()],
                    ..SessionInfo::default()
                };
                match call(rpc, Op::SessionCreate(info))? {
                    Response::Sessions { sessions, .. } if !sessions.is_empty() => {
                        println!("{}", sessions[0].id);
                        Ok(ExitCode::SUCCESS)
                    }
                    other => Err(unexpected(other)),
                }
            }
            SessionCommand::List { node, format } => {
                let query = match node {
                    Some(node) => SessionQuery::Node { node },
                    None => SessionQuery::List,
                };
                match call(
                    rpc,
                    Op::SessionRead {
                        query,
                        opts: ReadOpts::default(),
                    },
                )? {
                    Response::Sessions { sessions, .. } => {
                        print_sessions(&sessions, format);
                        Ok(ExitCode::SUCCESS)
                    }
                    other => Err(unexpected(other)),
                }
            }
            SessionCommand::Info { id, format } => match call(
                rpc,
                Op::SessionRead {
                    query: SessionQuery::Info { id: id.clone() },
                    opts: ReadOpts::default(),
                },
            )? {
                Response::Sessions { sessions, .. } if sessions.is_empty() => {
                    eprintln!("Error! No session {id:?}");
                    Ok(ExitCode::FAILURE)
                }
                Response::Sessions { sessions, .. } => {
                    print_sessions(&sessions, format);
                    Ok(ExitCode::SUCCESS)
                }
                other => Err(unexpected(other)),
            },
            SessionCommand::Renew { id } => match call(rpc, Op::SessionRenew { id })? {
                Response::Sessions { .. } => Ok(ExitCode::SUCCESS),
                other => Err(unexpected(other)),
            },
            SessionCommand::Destroy { id } => match call(rpc, Op::SessionDestroy { id })? {
                Response::Bool(_) => Ok(ExitCode::SUCCESS),
                other => Err(unexpected(other)),
            },
        }
    };
    run().unwrap_or_else(|code| code)
}
