//! KV reads from the shard cores: one key from the core that owns it, a prefix as one
//! consistent cut across every core. Used by core 0 after the read's consistency barrier
//! and by the other cores for stale reads; both park blocking reads on the owning shards.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use cairn_net::rpc::frame::{encode_with, Kind as FrameKind};
use cairn_net::rpc::message::{Consistency, Meta, Op, Request, Response};

use super::{entry, MAX_WAIT};
use crate::kv::Stored;
use crate::runtime::shards::Shards;

/// Answers a stale, non-blocking `KvGet` of a key this core owns at once, without
/// awaiting anything: the answer frame (id `id`) is encoded into `out` straight from the
/// stored entry, so the connection needs no task for it (a spawned request carries a
/// future of several kilobytes and a trip through the shard's message path) and nothing
/// is built on the way (no entry handles, no response). Returns false for any other
/// request, which takes the usual path. `datacenter` is this agent's.
pub(crate) fn kv_get_now(
    shards: &Shards,
    req: &Request,
    datacenter: &str,
    meta: impl Fn(u64) -> Meta,
    out: &mut BytesMut,
    id: u64,
) -> bool {
    if !req.datacenter.is_empty() && req.datacenter != datacenter {
        return false;
    }
    let Op::KvGet { key, opts } = &req.op else {
        return false;
    };
    if opts.consistency != Consistency::Stale || opts.index > 0 {
        return false;
    }
    shards
        .get_now(key, |e, index| {
            let entry = e.map(Stored::fields);
            encode_with(out, FrameKind::Response, id, |b| {
                Response::encode_one_entry(b, entry.as_ref(), &meta(index))
            });
        })
        .is_some()
}

/// Answers a `KvGet` or `KvList` from the shards; `None` for any other request. `meta`
/// turns a result's index into the query metadata.
pub(crate) async fn kv_read(
    shards: &Shards,
    op: &Op,
    meta: impl Fn(u64) -> Meta,
) -> Option<Response> {
    Some(match op {
        Op::KvGet { key, opts } => {
            let wait = Duration::from_millis(opts.wait_ms).min(MAX_WAIT);
            let (e, index) = shards.get(key.clone(), opts.index, wait).await;
            Response::Entries {
                entries: e.iter().map(entry).collect(),
                meta: meta(index),
            }
        }
        Op::KvList {
            prefix,
            keys_only: false,
            opts,
            ..
        } => {
            let wait = Duration::from_millis(opts.wait_ms).min(MAX_WAIT);
            let l = if opts.index > 0 {
                shards.list_blocking(prefix.clone(), opts.index, wait).await
            } else {
                shards.list(prefix.clone()).await
            };
            Response::Entries {
                entries: l.entries.iter().map(entry).collect(),
                meta: meta(l.index),
            }
        }
        Op::KvList {
            prefix,
            keys_only: true,
            separator,
            opts,
        } => {
            let wait = Duration::from_millis(opts.wait_ms).min(MAX_WAIT);
            let deadline = Instant::now() + wait;
            loop {
                let (keys, index) = shards.keys(prefix.clone(), separator.clone()).await;
                let left = deadline.saturating_duration_since(Instant::now());
                if opts.index == 0 || index > opts.index || left.is_zero() {
                    break Response::Keys {
                        keys,
                        meta: meta(index),
                    };
                }
                shards.wait_prefix(prefix.clone(), opts.index, left).await;
            }
        }
        _ => return None,
    })
}
