//! Consul's HTTP API (`/v1/...`) on the agent's HTTP port (8500 by default), served by
//! translating each HTTP request into the binary RPC protocol's [`Request`], asking the
//! agent's `Handler` (the server, or a client agent that forwards), and rendering the
//! [`Response`] as Consul's JSON. Consistency, forwarding to the leader, blocking reads
//! and typed errors are therefore exactly those of the RPC port.
//!
//! - `api`: routing (`api::route`) and rendering (`api::render`); pure.
//! - `kv`, `txn`, `status`, `agent`, `catalog`, `health`, `session`, `services`: one
//!   module per endpoint group; pure.
//! - `filter`: Consul's `?filter` expressions; `json`: Consul's JSON shapes and bodies;
//!   pure.
//! - `query`: query parameters, Consul's blocking-query defaults, Go durations; pure.
//! - `reply`: the HTTP answer as plain data, and RPC errors as Consul's statuses.
//! - `io`, `timer`: hyper's runtime traits on glommio (no tokio runtime).
//! - this file: the accept loop and the thin per-request driver.
//!
//! Left to others: enforcing ACL tokens (the token is read as Consul reads it and sent
//! on, but servers do not check it yet).
//!
//! [`Request`]: cairn_net::rpc::message::Request
//! [`Response`]: cairn_net::rpc::message::Response

mod agent;
mod api;
mod catalog;
mod filter;
mod health;
mod io;
mod json;
mod kv;
mod query;
mod reply;
mod services;
mod session;
mod status;
mod timer;
mod txn;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use glommio::net::{TcpListener, TcpStream};
use http_body_util::BodyExt;

use crate::agent::{AgentConfig, AgentError, Handler};
pub(crate) use api::Ctx;
use api::Route;

/// Consul's JSON for catalog items, exactly as the HTTP API renders them (the CLI's
/// `--format json` prints the same shapes).
pub mod consul_json {
    use crate::catalog::{Check, Instance, Node, Service};
    use serde_json::Value;

    pub fn node(n: &Node) -> Value {
        super::json::to_value(super::json::node_json(n))
    }
    pub fn service(s: &Service) -> Value {
        super::json::to_value(super::json::service_json(s))
    }
    pub fn check(c: &Check) -> Value {
        super::json::to_value(super::json::check_json(c))
    }
    pub fn instance(i: &Instance) -> Value {
        super::json::instance_json(i)
    }
}

/// Consul's HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 8500;
/// Most HTTP connections open at once; more are closed on accept, so a flood of
/// connections cannot exhaust file descriptors or memory.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// How long a client may take to send a request's headers (and, once they arrived, its
/// body), and how long an idle keep-alive connection stays open: a slow-loris client
/// that trickles bytes is cut off after this.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how the agent serves the HTTP API.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `--client` address and `--http-port`.
    pub addr: SocketAddr,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

impl HttpSettings {
    pub fn new(addr: SocketAddr) -> HttpSettings {
        HttpSettings {
            addr,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }
}

impl Ctx {
    pub(crate) fn of(cfg: &AgentConfig) -> Ctx {
        Ctx {
            limits: cfg.limits,
            datacenter: cfg
                .gossip
                .as_ref()
                .map_or_else(|| "dc1".to_string(), |g| g.datacenter.clone()),
            node: cfg.node.clone(),
            server: cfg.server,
        }
    }
}

/// Refuses an HTTP port another process listens on (see `probe_port`), with a message
/// that names the flag to change.
pub(crate) fn probe(addr: SocketAddr) -> Result<(), AgentError> {
    crate::agent::probe_port(addr).map_err(|e| match e {
        AgentError::PortInUse { addr, source } => AgentError::HttpPortInUse { addr, source },
        other => other,
    })
}

/// Binds the HTTP port and serves it on this executor in the background. Call once per
/// executor (glommio binds with SO_REUSEPORT, so each executor may have its own loop).
pub(crate) fn start<H: Handler>(
    h: Rc<H>,
    settings: &HttpSettings,
    ctx: Ctx,
) -> Result<(), AgentError> {
    let listener = TcpListener::bind(settings.addr).map_err(|e| match e {
        // The probe can miss a listener that never accepts (its backlog fills up and
        // the probe's connections time out); glommio's bind still refuses it.
        glommio::GlommioError::IoError(source)
            if source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            AgentError::HttpPortInUse {
                addr: settings.addr,
                source,
            }
        }
        other => AgentError::Io {
            what: format!("listening for HTTP on {}", settings.addr),
            source: std::io::Error::other(other.to_string()),
        },
    })?;
    glommio::spawn_local(timer::drive()).detach();
    glommio::spawn_local(serve_http(h, listener, settings.clone(), Rc::new(ctx))).detach();
    Ok(())
}

/// The accept loop: one task per connection, at most `max_connections` at once.
pub(crate) async fn serve_http<H: Handler>(
    h: Rc<H>,
    listener: TcpListener,
    settings: HttpSettings,
    ctx: Rc<Ctx>,
) {
    let open = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if open.get() >= settings.max_connections {
                    // Closed at once: the client sees a reset, not a hang.
                    drop(stream);
                    continue;
                }
                open.set(open.get() + 1);
                let (h, ctx, open, timeout) = (
                    h.clone(),
                    ctx.clone(),
                    open.clone(),
                    settings.header_read_timeout,
                );
                glommio::spawn_local(async move {
                    connection(h, ctx, stream, timeout).await;
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Err(e) => {
                eprintln!("cairn: HTTP accept on {}: {e}", settings.addr);
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one connection with hyper's HTTP/1 state machine; malformed requests get
/// hyper's 400 (431 for oversized headers) and a close of this connection only.
async fn connection<H: Handler>(h: Rc<H>, ctx: Rc<Ctx>, stream: TcpStream, timeout: Duration) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req| {
        let (h, ctx) = (h.clone(), ctx.clone());
        async move { handle(h, &ctx, req, timeout).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(timer::GlommioTimer)
        .header_read_timeout(timeout)
        .serve_connection(io::Io::new(stream), service)
        .await;
}

/// One request: route, read the body if needed, ask the agent, render. An error closes
/// the connection without an answer (a body that did not arrive in time).
async fn handle<H: Handler>(
    h: Rc<H>,
    ctx: &Ctx,
    req: hyper::Request<hyper::body::Incoming>,
    timeout: Duration,
) -> Result<hyper::Response<http_body_util::Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let route = api::route(
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query(),
        ctx,
    );
    let call = match route {
        Route::Reply(r) => Err(r),
        Route::Metrics { pretty } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Err(agent::metrics(h.parked_reads(), now, pretty))
        }
        Route::Call(c) => Ok(c),
        Route::Body(pending) => {
            let limit = pending.limit(ctx);
            let announced = parts
                .headers
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match announced {
                Some(len) if len > limit as u64 => Err(pending.too_large(Some(len), ctx)),
                _ => match read_body(body, limit, timeout).await? {
                    Some(bytes) => pending.finish(bytes, ctx),
                    None => Err(pending.too_large(None, ctx)),
                },
            }
        }
    };
    let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let token = api::token(
        parts.uri.query(),
        header("x-consul-token"),
        header(hyper::header::AUTHORIZATION.as_str()),
        ctx,
    );
    let reply = match (call, token) {
        (Err(r), _) | (_, Err(r)) => r,
        (Ok(mut call), Ok(token)) => {
            call.request.token = token;
            let resp = h.answer(call.request).await.into_owned();
            api::render(&call.render, resp, call.pretty, ctx)
        }
    };
    Ok(reply.into_response())
}

/// Reads a body of at most `limit` bytes within `timeout`: `None` if it is longer.
async fn read_body(
    body: hyper::body::Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<Option<Bytes>, std::io::Error> {
    let read = async {
        Some(
            http_body_util::Limited::new(body, limit)
                .collect()
                .await
                .map(|c| c.to_bytes()),
        )
    };
    let late = async {
        glommio::timer::sleep(timeout).await;
        None
    };
    match futures_lite::future::or(read, late).await {
        Some(Ok(bytes)) => Ok(Some(bytes)),
        Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Ok(None),
        Some(Err(e)) => Err(std::io::Error::other(format!("reading the body: {e}"))),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the request body did not arrive in time",
        )),
    }
}
