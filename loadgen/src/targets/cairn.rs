//! Cairn's binary RPC as a [`Session`]: the sans-IO client of `cairn-net` matches
//! responses by request id, so requests may complete out of order.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use cairn_net::rpc::client::{CallError, ClientConn, Completion};
use cairn_net::rpc::frame::FrameDecoder;
use cairn_net::rpc::message::{Consistency, ErrorCode, Limits, Op, ReadOpts, Request, Response};

use super::{Done, OpError, SendError, Session};
use crate::measure::ErrorKind;
use crate::workload::{key_name, Op as WOp};

/// The request for one workload operation.
pub fn build(op: WOp, value: &Bytes, consistency: Consistency) -> Request {
    let key = |k: u64| Bytes::from(key_name(k));
    let opts = ReadOpts {
        consistency,
        ..ReadOpts::default()
    };
    let op = match op {
        WOp::Read(k) => Op::KvGet { key: key(k), opts },
        WOp::Write(k) => Op::KvPut {
            key: key(k),
            value: value.clone(),
            flags: 0,
            cas: None,
            acquire: None,
            release: None,
        },
        // Check-and-set "only if absent" on a key that usually exists: measures the CAS
        // path and counts the expected refusals apart.
        WOp::Cas(k) => Op::KvPut {
            key: key(k),
            value: value.clone(),
            flags: 0,
            cas: Some(0),
            acquire: None,
            release: None,
        },
        WOp::List(k) => Op::KvList {
            prefix: Bytes::from(super::list_prefix(k)),
            keys_only: true,
            separator: None,
            opts,
        },
    };
    Request {
        datacenter: String::new(),
        token: String::new(),
        op,
    }
}

/// Sorts a response into success or an error kind.
pub fn classify(r: &Result<Response, CallError>) -> Result<(), OpError> {
    let kind = match r {
        Ok(Response::Error(e)) => match e.code {
            ErrorCode::NotLeader | ErrorCode::NoLeader => ErrorKind::NotLeader,
            ErrorCode::Timeout => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        },
        Ok(Response::Bool(false)) => ErrorKind::CasFailed,
        Ok(_) => return Ok(()),
        Err(CallError::Timeout) => ErrorKind::Timeout,
        Err(_) => ErrorKind::Other,
    };
    let detail = match kind {
        // The cas workload's expected outcome: no need to format each one.
        ErrorKind::CasFailed => "the key exists".to_string(),
        _ => format!("{r:?}"),
    };
    Err(OpError::new(kind, detail))
}

/// One connection to a Cairn server.
pub struct CairnSession {
    conn: ClientConn,
    value: Bytes,
    consistency: Consistency,
    failed: bool,
}

impl CairnSession {
    pub fn new(value: Bytes, consistency: Consistency, max_in_flight: usize) -> CairnSession {
        CairnSession {
            conn: ClientConn::new(
                max_in_flight.max(1),
                Limits::default(),
                FrameDecoder::for_responses(),
            ),
            value,
            consistency,
            failed: false,
        }
    }

    fn done(&mut self, completions: Vec<Completion>) -> Vec<Done> {
        completions
            .into_iter()
            .map(|c| {
                if matches!(c.result, Err(CallError::Connection(_))) {
                    self.failed = true;
                }
                Done {
                    id: c.id,
                    result: classify(&c.result),
                }
            })
            .collect()
    }
}

impl Session for CairnSession {
    fn send(&mut self, op: WOp, deadline: Instant) -> Result<u64, SendError> {
        let req = build(op, &self.value, self.consistency);
        match self.conn.send(&req, deadline) {
            Ok(id) => Ok(id),
            Err(CallError::TooManyInFlight { .. }) => Err(SendError::Full),
            Err(e) => {
                self.failed = true;
                Err(SendError::Failed(e.to_string()))
            }
        }
    }

    fn take_outgoing(&mut self) -> BytesMut {
        self.conn.take_outgoing()
    }

    fn receive(&mut self, bytes: &[u8]) -> Vec<Done> {
        let c = self.conn.receive(bytes);
        self.done(c)
    }

    fn expire(&mut self, now: Instant) -> Vec<Done> {
        let c = self.conn.expire(now);
        self.done(c)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.conn.next_deadline()
    }

    fn closed(&mut self, why: &str) -> Vec<Done> {
        self.failed = true;
        let c = self.conn.closed(why);
        self.done(c)
    }

    fn in_flight(&self) -> usize {
        self.conn.in_flight()
    }

    fn failed(&self) -> bool {
        self.failed
    }
}
