//! `cairn lock PREFIX -- COMMAND`: runs a command while holding a lock, as `consul lock`
//! does: a session on the agent's node (TTL, renewed while the command runs), the key
//! `PREFIX/.lock` acquired with it (waiting with blocking reads while another holder has
//! it), the command run as a child, then the lock released and the session destroyed. If
//! the lock is lost (the session was invalidated: its node failed, it was destroyed), the
//! command is sent SIGTERM and `cairn lock` exits 1. SIGINT/SIGTERM to `cairn lock` are
//! passed to the command. The exit status is the command's.

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn::catalog::{CatalogResult, SessionBehavior, SessionInfo};
use cairn_net::rpc::cluster::ClusterClient;
use cairn_net::rpc::message::{AgentKind, ErrorCode, Op, ReadOpts, Request, Response};

use crate::cli::{cluster_client, RpcArgs};

/// The session's TTL; it is renewed every third of it.
const SESSION_TTL: Duration = Duration::from_secs(15);
/// Longest one blocking wait for the lock to be free.
const WAIT: Duration = Duration::from_secs(30);

fn call(c: &mut ClusterClient, op: Op) -> Result<Response, String> {
    let req = Request {
        datacenter: String::new(),
        token: String::new(),
        op,
    };
    match c.call(&req) {
        Ok(Response::Error(e)) => Err(e.message),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

pub fn lock(prefix: &str, command: &[String], rpc: &RpcArgs) -> ExitCode {
    if command.is_empty() {
        eprintln!("Error! give the command to run after --");
        return ExitCode::from(2);
    }
    let key = format!("{}/.lock", prefix.trim_end_matches('/'));
    let timeout = Duration::from_millis(rpc.timeout_ms);
    let mut c = match cluster_client(rpc, timeout) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // The session lives on the agent's own node (sessions need a registered node).
    let node = match call(
        &mut c,
        Op::AgentLocal {
            kind: AgentKind::Service,
        },
    ) {
        Ok(Response::Catalog {
            result: CatalogResult::NodeServices(Some(n), _),
            ..
        }) => n.name,
        Ok(other) => {
            eprintln!("Error! unexpected answer from the agent: {other:?}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("Error! asking the agent for its node: {e}");
            return ExitCode::FAILURE;
        }
    };
    let session = match call(
        &mut c,
        Op::SessionCreate(SessionInfo {
            name: format!("cairn lock {prefix}"),
            node,
            behavior: SessionBehavior::Release,
            ttl_ms: SESSION_TTL.as_millis() as u64,
            lock_delay_ms: 15_000,
            node_checks: vec![cairn::catalog::reconcile::SERF_CHECK_ID.to_string()],
            ..SessionInfo::default()
        }),
    ) {
        Ok(Response::Sessions { sessions, .. }) if !sessions.is_empty() => sessions[0].id.clone(),
        Ok(other) => {
            eprintln!("Error! creating a session: unexpected answer {other:?}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("Error! creating a session: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = run_locked(rpc, &mut c, &key, &session, command);
    // Release (if held) and destroy: the session's end releases the lock anyway.
    let _ = call(
        &mut c,
        Op::KvPut {
            key: Bytes::from(key.clone()),
            value: Bytes::new(),
            flags: 0,
            cas: None,
            acquire: None,
            release: Some(session.clone()),
        },
    );
    let _ = call(&mut c, Op::SessionDestroy { id: session });
    code
}

fn run_locked(
    rpc: &RpcArgs,
    c: &mut ClusterClient,
    key: &str,
    session: &str,
    command: &[String],
) -> ExitCode {
    let Ok(mut waiter) = cluster_client(rpc, WAIT + Duration::from_secs(10)) else {
        return ExitCode::from(2);
    };
    let lost = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    // Renew the session while waiting and while the command runs.
    let renewer = {
        let (lost, stop) = (lost.clone(), stop.clone());
        let Ok(mut rc) = cluster_client(rpc, Duration::from_millis(rpc.timeout_ms)) else {
            return ExitCode::from(2);
        };
        let session = session.to_string();
        std::thread::spawn(move || {
            let mut next = Instant::now() + SESSION_TTL / 3;
            while !stop.load(Ordering::SeqCst) {
                if Instant::now() >= next {
                    let req = Request {
                        datacenter: String::new(),
                        token: String::new(),
                        op: Op::SessionRenew {
                            id: session.clone(),
                        },
                    };
                    match rc.call(&req) {
                        Ok(Response::Sessions { .. }) => next = Instant::now() + SESSION_TTL / 3,
                        Ok(Response::Error(e)) if e.code == ErrorCode::NotFound => {
                            lost.store(true, Ordering::SeqCst);
                            return;
                        }
                        // A leader change, a lost connection: try again soon, within
                        // the TTL.
                        _ => next = Instant::now() + Duration::from_secs(1),
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let finish = |code: ExitCode| {
        stop.store(true, Ordering::SeqCst);
        let _ = renewer.join();
        code
    };
    // Acquire, waiting for the holder to let go.
    let mut index = 0;
    loop {
        if lost.load(Ordering::SeqCst) {
            eprintln!("Error! the session ended before the lock was acquired");
            return finish(ExitCode::FAILURE);
        }
        match call(
            c,
            Op::KvPut {
                key: Bytes::from(key.to_string()),
                value: Bytes::from(format!("{{\"Session\":\"{session}\"}}")),
                flags: 0,
                cas: None,
                acquire: Some(session.to_string()),
                release: None,
            },
        ) {
            Ok(Response::Bool(true)) => break,
            Ok(Response::Bool(false)) => {}
            Ok(other) => {
                eprintln!("Error! acquiring {key}: unexpected answer {other:?}");
                return finish(ExitCode::FAILURE);
            }
            Err(e) => {
                eprintln!("Error! acquiring {key}: {e}");
                return finish(ExitCode::FAILURE);
            }
        }
        // Held by another session (or in its lock-delay): wait for the key to change.
        let seen = match call(
            &mut waiter,
            Op::KvGet {
                key: Bytes::from(key.to_string()),
                opts: ReadOpts {
                    index,
                    wait_ms: WAIT.as_millis() as u64,
                    ..ReadOpts::default()
                },
            },
        ) {
            Ok(Response::Entries { entries, meta }) => {
                let free = entries.first().is_none_or(|e| e.session.is_none());
                (meta.index, free)
            }
            Ok(_) | Err(_) => (index, false),
        };
        if seen.1 {
            // Free, but perhaps within the last holder's lock-delay: do not spin.
            std::thread::sleep(Duration::from_millis(250));
        }
        index = seen.0;
    }
    // Held: run the command; SIGINT/SIGTERM go to it.
    let mut child = match Command::new(&command[0]).args(&command[1..]).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error! starting {:?}: {e}", command[0]);
            return finish(ExitCode::FAILURE);
        }
    };
    let pid = child.id() as i32;
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ]) {
        std::thread::spawn(move || {
            for sig in signals.forever() {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid).expect("a child's pid is positive"),
                    if sig == signal_hook::consts::SIGINT {
                        rustix::process::Signal::INT
                    } else {
                        rustix::process::Signal::TERM
                    },
                );
            }
        });
    }
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let code = status.code().unwrap_or(1).clamp(0, 255) as u8;
                return finish(ExitCode::from(code));
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("Error! waiting for the command: {e}");
                return finish(ExitCode::FAILURE);
            }
        }
        if lost.load(Ordering::SeqCst) {
            eprintln!("Error! lock {key} lost (its session ended); stopping the command");
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).expect("a child's pid is positive"),
                rustix::process::Signal::TERM,
            );
            let _ = child.wait();
            return finish(ExitCode::FAILURE);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
