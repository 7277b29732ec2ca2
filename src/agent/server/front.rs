//! The server's other cores (thread-per-core): each accepts RPC and HTTP connections on
//! the same ports as core 0 (the kernel spreads connections over the cores' listeners
//! with SO_REUSEPORT), answers stale KV reads from the shard cores itself, and hands every
//! other request to core 0, which runs Raft, the catalog and everything else.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_net::rpc::message::{Consistency, ErrorCode, Limits, Meta, Op, Request, Response};
use glommio::net::TcpListener;

use super::kv_read::kv_read;
use super::{connection, error, Handler, MAX_CONNECTIONS};
use crate::runtime::shards::Shards;

/// A request handed to core 0, with where its answer goes.
pub(crate) type ToCore0 = (Request, futures_channel::oneshot::Sender<Response>);

/// What the other cores need to know of core 0's Raft state for query metadata, kept
/// current by core 0.
#[derive(Default)]
pub(crate) struct SharedMeta {
    pub(crate) known_leader: AtomicBool,
    pub(crate) last_contact_ms: AtomicU64,
}

struct Front {
    shards: Shards,
    to_core0: flume::Sender<ToCore0>,
    meta: Arc<SharedMeta>,
    limits: Limits,
    datacenter: String,
}

impl Front {
    fn meta(&self, index: u64) -> Meta {
        Meta {
            index,
            known_leader: self.meta.known_leader.load(Ordering::Relaxed),
            last_contact_ms: self.meta.last_contact_ms.load(Ordering::Relaxed),
        }
    }
}

impl Handler for Front {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn answer_now(&self, req: &Request, out: &mut bytes::BytesMut, id: u64) -> bool {
        super::kv_read::kv_get_now(
            &self.shards,
            req,
            &self.datacenter,
            |i| self.meta(i),
            out,
            id,
        )
    }

    fn parked_reads(&self) -> Option<usize> {
        Some(self.shards.parked_reads())
    }

    async fn answer(self: Rc<Self>, req: Request) -> Response {
        let local_dc = req.datacenter.is_empty() || req.datacenter == self.datacenter;
        let stale = matches!(
            &req.op,
            Op::KvGet { opts, .. } | Op::KvList { opts, .. }
                if opts.consistency == Consistency::Stale
        );
        if local_dc && stale {
            if let Some(r) = kv_read(&self.shards, &req.op, |i| self.meta(i)).await {
                return r;
            }
        }
        let (tx, rx) = futures_channel::oneshot::channel();
        if self.to_core0.send_async((req, tx)).await.is_err() {
            return error(ErrorCode::Unavailable, "the server's core 0 has stopped");
        }
        rx.await
            .unwrap_or_else(|_| error(ErrorCode::Unavailable, "the server's core 0 has stopped"))
    }
}

/// Serves RPC (and, if on, HTTP) connections on this core until the process ends.
pub(crate) async fn serve_front(
    cfg: crate::agent::AgentConfig,
    shards: Shards,
    to_core0: flume::Sender<ToCore0>,
    meta: Arc<SharedMeta>,
) {
    let core = shards.core();
    let addr = cfg.rpc_addr();
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "cairn: core {core}: listening on {addr}: {e}; this core serves no connections"
            );
            return;
        }
    };
    let front = Rc::new(Front {
        shards,
        to_core0,
        meta,
        limits: cfg.limits,
        datacenter: cfg.datacenter.clone(),
    });
    // The HTTP API on this core too (its listener shares the port like the RPC one's).
    if let Some(http) = &cfg.http {
        if let Err(e) = crate::http::start(front.clone(), http, crate::http::Ctx::of(&cfg)) {
            eprintln!("cairn: core {core}: {e}; this core serves no HTTP");
        }
    }
    let open = Rc::new(Cell::new(0usize));
    loop {
        match listener.accept().await {
            Ok(stream) => {
                if open.get() >= MAX_CONNECTIONS {
                    drop(stream);
                    continue;
                }
                open.set(open.get() + 1);
                let (f, open) = (front.clone(), open.clone());
                glommio::spawn_local(async move {
                    connection(f, stream).await;
                    open.set(open.get() - 1);
                })
                .detach();
            }
            Err(e) => {
                eprintln!("cairn: core {core}: accept on {addr}: {e}");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
