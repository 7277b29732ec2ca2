//! The client side of one RPC connection, without IO: requests go into an outgoing
//! buffer, received bytes come in, completions come out. The caller owns the socket and
//! the clock (`now` is passed in), so the same code runs over glommio, std sockets, or a
//! test's in-memory pipe.
//!
//! Many requests may be in flight (up to a limit); responses arrive in any order and are
//! matched by request id. A request past its deadline completes with `Timeout` (a late
//! response for it is then ignored). A request whose caller stops waiting is forgotten
//! ([`ClientConn::forget`]), freeing its slot at once, or cancelled
//! ([`ClientConn::cancel`]): forgotten, and a cancel frame tells the server to drop it if it
//! is a blocking read still waiting; a late answer to either is ignored. A stream that stops being valid RPC fails every
//! request in flight and the connection must be closed.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::BytesMut;

use super::frame::{encode_cancel, encode_with, FrameDecoder, FrameError, Kind};
use super::message::{Limits, MessageError, Request, Response};

/// Why a request did not get a response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no response before the deadline")]
    Timeout,
    #[error("{in_flight} requests already in flight on this connection (the limit)")]
    TooManyInFlight { in_flight: usize },
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("bad response: {0}")]
    BadResponse(MessageError),
}

/// A finished request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub id: u64,
    pub result: Result<Response, CallError>,
}

/// One connection's request bookkeeping.
#[derive(Debug)]
pub struct ClientConn {
    next_id: u64,
    max_in_flight: usize,
    limits: Limits,
    decoder: FrameDecoder,
    /// Bytes to write to the socket.
    outgoing: BytesMut,
    /// Bytes read from the socket, not yet decoded.
    incoming: BytesMut,
    in_flight: HashMap<u64, Instant>,
    /// Deadline → ids, to expire requests in deadline order.
    deadlines: BTreeMap<(Instant, u64), ()>,
    failed: Option<String>,
}

impl ClientConn {
    pub fn new(max_in_flight: usize, limits: Limits, decoder: FrameDecoder) -> ClientConn {
        ClientConn {
            next_id: 1,
            max_in_flight: max_in_flight.max(1),
            limits,
            decoder,
            outgoing: BytesMut::new(),
            incoming: BytesMut::new(),
            in_flight: HashMap::new(),
            deadlines: BTreeMap::new(),
            failed: None,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Queues a request; returns its id. Nothing is sent until the caller writes
    /// [`ClientConn::take_outgoing`] to the socket.
    pub fn send(&mut self, req: &Request, deadline: Instant) -> Result<u64, CallError> {
        if let Some(why) = &self.failed {
            return Err(CallError::Connection(why.clone()));
        }
        if self.in_flight.len() >= self.max_in_flight {
            return Err(CallError::TooManyInFlight {
                in_flight: self.in_flight.len(),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        encode_with(&mut self.outgoing, Kind::Request, id, |out| req.encode(out));
        self.in_flight.insert(id, deadline);
        self.deadlines.insert((deadline, id), ());
        Ok(id)
    }

    /// The caller of request `id` stopped waiting: its slot is free at once and its answer,
    /// if one comes, is ignored. False if `id` was not in flight (answered, expired, or
    /// the connection failed). The server is not told: see [`ClientConn::cancel`].
    pub fn forget(&mut self, id: u64) -> bool {
        let Some(deadline) = self.in_flight.remove(&id) else {
            return false;
        };
        self.deadlines.remove(&(deadline, id));
        true
    }

    /// [`ClientConn::forget`]s request `id` and queues a cancel frame for it, so the
    /// server drops it if it is a blocking read still waiting (anything else runs to its
    /// end there: a write may be applied anyway). False, and nothing queued, if `id` was
    /// not in flight. A server from before cancel frames closes the connection on one.
    pub fn cancel(&mut self, id: u64) -> bool {
        if self.failed.is_some() || !self.forget(id) {
            return false;
        }
        encode_cancel(&mut self.outgoing, id);
        true
    }

    /// The bytes to write; the caller writes all of them (or keeps the rest itself).
    pub fn take_outgoing(&mut self) -> BytesMut {
        self.outgoing.split()
    }

    /// Bytes read from the socket: returns the requests they complete.
    pub fn receive(&mut self, bytes: &[u8]) -> Vec<Completion> {
        let mut done = Vec::new();
        if self.failed.is_some() {
            return done;
        }
        self.incoming.extend_from_slice(bytes);
        loop {
            match self.decoder.decode(&mut self.incoming) {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    if frame.kind != Kind::Response {
                        let why = format!("server sent a {:?} frame", frame.kind);
                        self.fail(why, &mut done);
                        break;
                    }
                    let Some(deadline) = self.in_flight.remove(&frame.id) else {
                        continue; // late answer to a request that timed out or was cancelled
                    };
                    self.deadlines.remove(&(deadline, frame.id));
                    let result = Response::decode(&frame.payload, &self.limits)
                        .map_err(CallError::BadResponse);
                    done.push(Completion {
                        id: frame.id,
                        result,
                    });
                }
                Err(e) => {
                    self.fail(frame_error_text(&e), &mut done);
                    break;
                }
            }
        }
        done
    }

    /// Completes every request whose deadline is at or before `now` with `Timeout`.
    pub fn expire(&mut self, now: Instant) -> Vec<Completion> {
        let mut done = Vec::new();
        while let Some((&(deadline, id), _)) = self.deadlines.iter().next() {
            if deadline > now {
                break;
            }
            self.deadlines.remove(&(deadline, id));
            self.in_flight.remove(&id);
            done.push(Completion {
                id,
                result: Err(CallError::Timeout),
            });
        }
        done
    }

    /// The earliest deadline in flight: when to call [`ClientConn::expire`] next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(d, _)| *d)
    }

    /// The socket closed or failed: every request in flight fails.
    pub fn closed(&mut self, why: &str) -> Vec<Completion> {
        let mut done = Vec::new();
        self.fail(why.to_string(), &mut done);
        done
    }

    fn fail(&mut self, why: String, done: &mut Vec<Completion>) {
        let mut ids: Vec<u64> = self.in_flight.drain().map(|(id, _)| id).collect();
        ids.sort_unstable();
        self.deadlines.clear();
        for id in ids {
            done.push(Completion {
                id,
                result: Err(CallError::Connection(why.clone())),
            });
        }
        self.failed = Some(why);
    }
}

fn frame_error_text(e: &FrameError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::frame::encode;
    use crate::rpc::message::{Meta, Op};
    use std::time::Duration;

    fn req() -> Request {
        Request {
            datacenter: String::new(),
            token: String::new(),
            op: Op::StatusLeader,
        }
    }

    fn respond(id: u64, resp: &Response) -> BytesMut {
        let mut p = BytesMut::new();
        resp.encode(&mut p);
        let mut out = BytesMut::new();
        encode(&mut out, Kind::Response, id, &p);
        out
    }

    fn conn(max: usize) -> ClientConn {
        ClientConn::new(max, Limits::default(), FrameDecoder::default())
    }

    #[test]
    fn responses_are_matched_by_id_in_any_order() {
        let mut c = conn(8);
        let t = Instant::now() + Duration::from_secs(5);
        let a = c.send(&req(), t).unwrap();
        let b = c.send(&req(), t).unwrap();
        let wire = c.take_outgoing();
        let dec = FrameDecoder::default();
        let mut w = wire.clone();
        assert_eq!(dec.decode(&mut w).unwrap().unwrap().id, a);
        assert_eq!(dec.decode(&mut w).unwrap().unwrap().id, b);
        let mut bytes = respond(b, &Response::Bool(true));
        bytes.extend_from_slice(&respond(a, &Response::Leader(Some("10.0.0.1:8300".into()))));
        let done = c.receive(&bytes);
        assert_eq!(done.iter().map(|d| d.id).collect::<Vec<_>>(), vec![b, a]);
        assert_eq!(done[0].result, Ok(Response::Bool(true)));
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn a_request_past_its_deadline_times_out_and_its_late_answer_is_ignored() {
        let mut c = conn(8);
        let now = Instant::now();
        let slow = c.send(&req(), now + Duration::from_millis(10)).unwrap();
        let fast = c.send(&req(), now + Duration::from_secs(10)).unwrap();
        assert_eq!(c.next_deadline(), Some(now + Duration::from_millis(10)));
        let done = c.expire(now + Duration::from_millis(10));
        assert_eq!(
            done,
            vec![Completion {
                id: slow,
                result: Err(CallError::Timeout)
            }]
        );
        let done = c.receive(&respond(slow, &Response::Done));
        assert!(done.is_empty(), "late answer delivered");
        let done = c.receive(&respond(fast, &Response::Done));
        assert_eq!(done.len(), 1);
    }

    #[test]
    fn a_cancelled_request_frees_its_slot_at_once_and_its_late_answer_is_ignored() {
        let mut c = conn(1);
        let t = Instant::now() + Duration::from_secs(600);
        let id = c.send(&req(), t).unwrap();
        let _ = c.take_outgoing();
        assert!(c.cancel(id));
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.next_deadline(), None);
        let mut wire = c.take_outgoing();
        let f = FrameDecoder::default().decode(&mut wire).unwrap().unwrap();
        assert_eq!((f.kind, f.id, f.payload.len()), (Kind::Cancel, id, 0));
        assert!(wire.is_empty());
        // The freed slot takes the next request; the cancelled one's answer is ignored.
        let next = c.send(&req(), t).unwrap();
        assert!(c.receive(&respond(id, &Response::Done)).is_empty());
        assert!(!c.cancel(id), "cancelled twice");
        let done = c.receive(&respond(next, &Response::Done));
        assert_eq!(done.iter().map(|d| d.id).collect::<Vec<_>>(), vec![next]);
    }

    #[test]
    fn only_requests_in_flight_are_cancelled_and_forgetting_sends_nothing() {
        let mut c = conn(8);
        let now = Instant::now();
        let answered = c.send(&req(), now + Duration::from_secs(5)).unwrap();
        let expired = c.send(&req(), now + Duration::from_millis(1)).unwrap();
        let forgotten = c.send(&req(), now + Duration::from_secs(5)).unwrap();
        let _ = c.take_outgoing();
        assert_eq!(c.receive(&respond(answered, &Response::Done)).len(), 1);
        assert_eq!(c.expire(now + Duration::from_millis(1)).len(), 1);
        assert!(!c.cancel(answered));
        assert!(!c.cancel(expired));
        assert!(c.forget(forgotten));
        assert!(!c.cancel(forgotten));
        assert!(c.take_outgoing().is_empty());
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn nothing_is_cancelled_on_a_failed_connection() {
        let mut c = conn(8);
        let id = c
            .send(&req(), Instant::now() + Duration::from_secs(5))
            .unwrap();
        let _ = c.take_outgoing();
        assert_eq!(c.closed("gone").len(), 1);
        assert!(!c.cancel(id));
        assert!(c.take_outgoing().is_empty());
    }

    #[test]
    fn the_in_flight_limit_is_a_clear_error() {
        let mut c = conn(2);
        let t = Instant::now() + Duration::from_secs(5);
        c.send(&req(), t).unwrap();
        c.send(&req(), t).unwrap();
        assert_eq!(
            c.send(&req(), t),
            Err(CallError::TooManyInFlight { in_flight: 2 })
        );
    }

    #[test]
    fn garbage_from_the_server_fails_every_request_in_flight() {
        let mut c = conn(8);
        let t = Instant::now() + Duration::from_secs(5);
        let a = c.send(&req(), t).unwrap();
        let b = c.send(&req(), t).unwrap();
        let done = c.receive(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        assert_eq!(done.len(), 2);
        assert!(done
            .iter()
            .all(|d| matches!(d.result, Err(CallError::Connection(_)))));
        assert_eq!((done[0].id, done[1].id), (a, b));
        assert!(matches!(c.send(&req(), t), Err(CallError::Connection(_))));
    }

    #[test]
    fn a_response_split_across_reads_completes_once_whole() {
        let mut c = conn(8);
        let id = c
            .send(&req(), Instant::now() + Duration::from_secs(5))
            .unwrap();
        let bytes = respond(
            id,
            &Response::Entries {
                entries: Vec::new(),
                meta: Meta::default(),
            },
        );
        for (i, b) in bytes.iter().enumerate() {
            let done = c.receive(&[*b]);
            assert_eq!(done.len(), usize::from(i + 1 == bytes.len()));
        }
    }
}
